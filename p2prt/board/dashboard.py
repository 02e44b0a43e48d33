"""The board's read-only web dashboard (``p2prt board --dashboard PORT``).

A small Starlette app served by Hypercorn on the board's own trio loop: ``/`` is a page
rendered on the server (it reloads itself every 5 s; no script, no resource from the
internet), ``/api/status.json`` the same data as JSON. GET only. It shows the operator
every cluster on the board — workers with reachability and load, leases per user,
waiting requests, tasks per second over the last hour, recent failures — so it binds
to loopback unless told otherwise; what it shows is metadata only (see
docs/security.md, "What the board sees").

A failing request is answered with an error page; nothing here can stop the board.
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["serve_dashboard", "render_page"]

log = logging.getLogger(__name__)

Snapshot = Callable[[], dict[str, Any]]


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _table(title: str, headers: list[str], rows: list[list[object]], *, empty: str) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{_e(empty)}</td></tr>'
    return f"<h2>{_e(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(rates: list[dict[str, float]], width: int = 900, height: int = 160) -> str:
    """Tasks per second (and failures per second) as an inline SVG drawn here."""
    if not rates:
        return '<p class="empty">No tasks finished yet.</p>'
    if len(rates) == 1:  # one sample draws no line: start from zero a bucket earlier
        rates = [{"time": rates[0]["time"] - 5.0, "tasks_per_s": 0.0, "failed_per_s": 0.0}, *rates]
    peak = max(max(r["tasks_per_s"], r["failed_per_s"]) for r in rates) or 1.0
    t0, t1 = rates[0]["time"], max(rates[-1]["time"], rates[0]["time"] + 1)

    def points(key: str) -> str:
        return " ".join(
            f"{(r['time'] - t0) / (t1 - t0) * (width - 20) + 10:.1f},{height - 10 - r[key] / peak * (height - 30):.1f}"
            for r in rates
        )

    last = rates[-1]
    peak_text, done_text, failed_text = f"{peak:.1f}", f"{last['tasks_per_s']:.1f}", f"{last['failed_per_s']:.1f}"
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="tasks per second">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
        f'<polyline fill="none" stroke="#2a7" stroke-width="2" points="{points("tasks_per_s")}"/>'
        f'<polyline fill="none" stroke="#c33" stroke-width="2" points="{points("failed_per_s")}"/>'
        f'<text x="12" y="16" font-size="12">peak {_e(peak_text)} tasks/s</text></svg>'
        f"<p>Last 5 s: <b>{_e(done_text)}</b> tasks/s, "
        f"{_e(failed_text)} failed/s (green: finished, red: failed).</p>"
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; }
td.empty, p.empty { color: #888; }
.public { color: #2a7; } .full { font-weight: bold; }
"""


def render_page(snap: dict[str, Any]) -> str:
    """The dashboard page for one snapshot (see ``BoardServer.dashboard_snapshot``)."""
    board = snap.get("board", {})
    workers = [
        [w["cluster"], w["user"], w["host"], w.get("address") or "", w["slots"], f"{w['busy']}/{w['slots']}",
         w.get("reachability", ""), w["peer_id"][:12]]
        for w in snap["workers"]
    ]
    leases = [[u["cluster"], u["user"], u["leases"], u["cpus"]] for u in snap["leases"]]
    waiting = [[r["cluster"], r["user"], r["count"], r["num_cpus"]] for r in snap["waiting"]]
    failures = [
        [time.strftime("%H:%M:%S", time.localtime(f["time"])), f["cluster"], f["worker"], f["task"], f["kind"],
         f["message"]]
        for f in snap.get("failures", [])
    ]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='refresh' content='5'><title>p2prt board</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>p2prt board</h1>",
        f"<p>Key {_e(board.get('fingerprint', ''))} · {_e(board.get('sessions', 0))} sessions · "
        f"{_e(board.get('relays', 0))} relayed connections · {_e(board.get('punches', 0))} hole punches</p>",
        "<h2>Tasks per second</h2>",
        _chart(snap.get("rates", [])),
        _table("Workers", ["cluster", "user", "host", "address", "slots", "load", "reachability", "peer"], workers,
               empty="No worker is connected."),
        _table("Leases per user", ["cluster", "user", "leases", "cpus"], leases, empty="No leases."),
        _table("Waiting lease requests", ["cluster", "user", "count", "cpus each"], waiting, empty="Nothing waits."),
        _table("Recent failures", ["time", "cluster", "worker", "task", "kind", "message"], failures,
               empty="No failures."),
        "</body></html>",
    ]
    return "".join(parts)


def _app(snapshot: Snapshot) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(snapshot()))

    async def status(request: Request) -> Response:
        return JSONResponse(snapshot())

    async def failed(request: Request, exc: Exception) -> Response:
        log.exception("dashboard request %s failed", request.url.path)
        return HTMLResponse("<h1>500</h1><p>The dashboard failed to render; see the board's log.</p>", 500)

    return Starlette(
        routes=[Route("/", page, methods=["GET"]), Route("/api/status.json", status, methods=["GET"])],
        exception_handlers={Exception: failed},
    )


async def serve_dashboard(
    snapshot: Snapshot,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard until cancelled; ``task_status.started(url)``. Errors of the
    HTTP server are logged and end only the dashboard."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2prt.board.dashboard.http")
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("the dashboard listens on %s: everyone who can reach it sees every cluster's workers", host)
    started = False

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(_app(snapshot), config, task_status=task_status)

    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(run)
            started = True
            task_status.started(f"{binds[0]}/")
    except Exception:
        if not started:
            raise
        log.exception("the dashboard stopped; the board goes on")
