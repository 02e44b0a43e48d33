"""Small socket probes run inside the lab's namespaces (``python probe.py CMD ...``).

Plain blocking sockets, standard library only; every wait has a timeout. Output is one
line per fact, so the test reads it with :meth:`lab.LabProcess.read_line`.

observer [--bind IP] [--port N]
    TCP server. Prints ``ready PORT``; tells every client ``IP PORT`` (the address it
    sees, i.e. after NAT) and holds the connection until the client closes it.
observe IP PORT [--count N] [--hold]
    N connections to an observer, each from a fresh local port, all held open until the
    end. Prints ``LOCAL_PORT OBSERVED_IP OBSERVED_PORT`` per connection; with ``--hold``
    then prints ``holding`` and keeps them open until stdin closes.
connect IP PORT [--timeout T]
    One connection attempt. Prints ``connected``, ``refused``, ``timeout``,
    ``unreachable`` or ``error NAME``.
punch IP PORT LABEL [--timeout T]
    TCP simultaneous open as DESIGN.md §6 describes: a listener, an observer ("board")
    connection and the punch socket all on one local port (SO_REUSEADDR+SO_REUSEPORT).
    Prints ``observed IP PORT LOCAL_PORT``, reads ``go PEER_IP PEER_PORT`` from stdin,
    connects there (accepting on the listener meanwhile), exchanges LABEL with the peer
    and prints ``result ok connect|accept PEER_LABEL`` or ``result fail REASON``.
"""

from __future__ import annotations

import argparse
import errno
import select
import socket
import sys
import threading
import time


def _line(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(256)
        if not chunk:
            raise ConnectionError("closed before a full line")
        data += chunk
    return data.decode().strip()


def _reusable() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return s


def _errname(code: int) -> str:
    if code in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "refused"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    if code == errno.ETIMEDOUT:
        return "timeout"
    return "error " + errno.errorcode.get(code, str(code))


def observer(bind: str, port: int) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((bind, port))
    server.listen(128)
    print("ready", server.getsockname()[1], flush=True)

    def serve(conn: socket.socket, addr: tuple[str, int]) -> None:
        with conn:
            try:
                conn.sendall(f"{addr[0]} {addr[1]}\n".encode())
                while conn.recv(4096):
                    pass
            except OSError:
                pass

    while True:
        conn, addr = server.accept()
        threading.Thread(target=serve, args=(conn, addr), daemon=True).start()


def observe(ip: str, port: int, count: int, hold: bool, timeout: float) -> None:
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect((ip, port))
        seen = _line(s, timeout)
        print(s.getsockname()[1], seen, flush=True)
        held.append(s)
    if hold:
        print("holding", flush=True)
        sys.stdin.read()
    for s in held:
        s.close()


def connect(ip: str, port: int, timeout: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
    except TimeoutError:
        print("timeout", flush=True)
    except OSError as e:
        print(_errname(e.errno or 0), flush=True)
    else:
        print("connected", flush=True)
    finally:
        s.close()


def punch(ip: str, port: int, label: str, timeout: float) -> None:
    listener = _reusable()
    listener.bind(("0.0.0.0", 0))
    listener.listen(8)
    local = listener.getsockname()[1]
    board = _reusable()
    board.bind(("0.0.0.0", local))
    board.settimeout(timeout)
    board.connect((ip, port))
    seen = _line(board, timeout)
    print("observed", seen, local, flush=True)

    words = sys.stdin.readline().split()
    if len(words) != 3 or words[0] != "go":
        print("result fail bad-go-line", flush=True)
        return
    peer = (words[1], int(words[2]))
    sock = _reusable()
    sock.bind(("0.0.0.0", local))
    sock.setblocking(False)
    code = sock.connect_ex(peer)
    connecting = code in (errno.EINPROGRESS, 0)
    failure = "timeout" if connecting else _errname(code)
    deadline = time.monotonic() + timeout
    conn: socket.socket | None = None
    how = ""
    while conn is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, writable, _ = select.select([listener], [sock] if connecting else [], [], remaining)
        if sock in writable:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                conn, how = sock, "connect"
            else:
                connecting, failure = False, _errname(err)
        elif listener in readable:
            conn, _addr = listener.accept()
            how = "accept"
    if conn is None:
        print("result fail", failure, flush=True)
        return
    try:
        conn.setblocking(True)
        conn.sendall(f"{label}\n".encode())
        got = _line(conn, max(0.5, deadline - time.monotonic()))
    except (OSError, ConnectionError) as e:
        print("result fail exchange", type(e).__name__, flush=True)
        return
    print("result ok", how, got, flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="probe.py")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("observer")
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--port", type=int, default=0)
    for name in ("observe", "connect", "punch"):
        p = sub.add_parser(name)
        p.add_argument("ip")
        p.add_argument("port", type=int)
        if name == "punch":
            p.add_argument("label")
        if name == "observe":
            p.add_argument("--count", type=int, default=1)
            p.add_argument("--hold", action="store_true")
        p.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.cmd == "observer":
        observer(args.bind, args.port)
    elif args.cmd == "observe":
        observe(args.ip, args.port, args.count, args.hold, args.timeout)
    elif args.cmd == "connect":
        connect(args.ip, args.port, args.timeout)
    else:
        punch(args.ip, args.port, args.label, args.timeout)


if __name__ == "__main__":
    main(sys.argv[1:])
