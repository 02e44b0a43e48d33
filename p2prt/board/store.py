"""The board's durable state: accounts, SSH keys, clusters and members, in SQLite.

Theory of operation
-------------------
One file, ``DATA_DIR/board.sqlite3``, is shared by two kinds of process: the running
board server and operator commands (``p2prt board add-user ...``) started while it runs.
Both open it through :meth:`Store.open`, which sets:

- ``journal_mode=WAL``: readers never block the writer and the writer never blocks
  readers, so the server keeps answering while a CLI command writes;
- ``busy_timeout``: a writer that finds another writer waits (default 5 s) instead of
  failing at once;
- ``foreign_keys=ON``: removing a user cascades to their keys, memberships and the
  clusters they own; deleting a cluster cascades to its memberships.

The connection is in autocommit mode and every method is one short transaction. Writes
start with ``BEGIN IMMEDIATE`` so that they take the write lock before reading (a
deferred transaction that upgrades to a write lock fails with ``SQLITE_BUSY`` without
waiting). Reads that need several queries run inside one ``BEGIN`` so they see one
snapshot. Nothing is held open between calls, so another process's commit is visible to
the next call.

:meth:`Store.data_version` returns SQLite's ``PRAGMA data_version``, which changes when
*another* connection commits; the server polls it (a cheap, file-header read) and
re-checks memberships and leases when it moves. The store's own commits do not change
it: the server knows what it changed itself.

The store is synchronous; a lock serialises calls from several threads. Every query uses
a primary key or an index. Schema changes go through :data:`_MIGRATIONS`; the applied
version is ``PRAGMA user_version``.

Naming rules: user names and cluster names match ``[a-z_][a-z0-9_.-]{0,31}``; a cluster
is named ``owner/name``; ``owner/personal`` exists implicitly for every user, admits only
its owner, and can be neither created, deleted nor shared.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from ..errors import (
    BoardStoreError,
    ClusterExistsError,
    ClusterRuleError,
    InvalidNameError,
    KeyInUseError,
    NotClusterOwnerError,
    UnknownClusterError,
    UnknownKeyError,
    UnknownUserError,
    UserExistsError,
)
from ..identity.keys import SshPublicKey

__all__ = [
    "DB_FILENAME",
    "NAME_RULE",
    "PERSONAL",
    "SCHEMA_VERSION",
    "ClusterRecord",
    "KeyRecord",
    "Store",
    "UserRecord",
    "parse_cluster_name",
    "validate_name",
]

log = logging.getLogger(__name__)

DB_FILENAME = "board.sqlite3"
PERSONAL = "personal"
NAME_RULE = (
    "1 to 32 characters from a-z, 0-9, '_', '.', '-', starting with a letter or '_' (pattern ^[a-z_][a-z0-9_.-]{0,31}$)"
)
_NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")

# _MIGRATIONS[v] takes the schema from version v to v + 1; append, never edit.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            created REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE keys (
            fingerprint TEXT PRIMARY KEY,
            username TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            line TEXT NOT NULL,
            key_type TEXT NOT NULL
        )""",
        "CREATE INDEX keys_by_user ON keys(username)",
        """CREATE TABLE clusters (
            owner TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            name TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (owner, name)
        ) WITHOUT ROWID""",
        """CREATE TABLE members (
            owner TEXT NOT NULL,
            cluster TEXT NOT NULL,
            member TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
            PRIMARY KEY (owner, cluster, member),
            FOREIGN KEY (owner, cluster) REFERENCES clusters(owner, name) ON DELETE CASCADE
        ) WITHOUT ROWID""",
        "CREATE INDEX members_by_user ON members(member)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_MEMBER_COUNT = "1 + (SELECT count(*) FROM members m WHERE m.owner = c.owner AND m.cluster = c.name)"


@dataclass(frozen=True)
class KeyRecord:
    """One SSH public key of an account: ``line`` is ``"<type> <base64>"`` (no comment)."""

    fingerprint: str
    line: str
    key_type: str


@dataclass(frozen=True)
class UserRecord:
    """An account: its name, its keys in the order they were added, and its creation time."""

    name: str
    keys: tuple[KeyRecord, ...]
    created: float


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster: ``name`` is the full ``owner/name``; ``members_count`` counts the owner."""

    name: str
    owner: str
    members_count: int
    created: float


def validate_name(name: str, what: str = "user name") -> str:
    """Return ``name`` if it follows :data:`NAME_RULE`; else raise :class:`InvalidNameError`.

    ``what`` names the thing in the message, e.g. ``"cluster name"``.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidNameError(f"invalid {what} {name!r}: use {NAME_RULE}")
    return name


def parse_cluster_name(cluster: str) -> tuple[str, str]:
    """Split ``"alice/friends"`` into ``("alice", "friends")``.

    Raises :class:`InvalidNameError` unless the name is ``owner/name`` with both parts
    following :data:`NAME_RULE`.
    """
    if not isinstance(cluster, str) or cluster.count("/") != 1:
        raise InvalidNameError(
            f"invalid cluster name {cluster!r}: clusters are named 'owner/name', e.g. 'alice/friends'"
        )
    owner, _, name = cluster.partition("/")
    validate_name(owner, f"owner in cluster name {cluster!r}:")
    validate_name(name, f"name in cluster name {cluster!r}:")
    return owner, name


def _parse_keys(keys: Iterable[SshPublicKey | str] | SshPublicKey | str) -> list[SshPublicKey]:
    """Parse key lines (raising :class:`KeyLoadError`) and drop duplicates, keeping order."""
    items: Iterable[SshPublicKey | str] = (keys,) if isinstance(keys, (str, SshPublicKey)) else keys
    seen: dict[str, SshPublicKey] = {}
    for item in items:
        key = item if isinstance(item, SshPublicKey) else SshPublicKey.parse(item)
        seen.setdefault(key.fingerprint, key)
    return list(seen.values())


def _names(users: Iterable[str] | str) -> list[str]:
    """The user names in ``users`` without duplicates, keeping order (a str is one name)."""
    return list(dict.fromkeys((users,) if isinstance(users, str) else users))


class Store:
    """The board's accounts and clusters in ``DATA_DIR/board.sqlite3``.

    Open with :meth:`Store.open`; use as a context manager or call :meth:`close`::

        with Store.open(Path("/var/lib/p2prt")) as store:
            store.add_user("alice", [key_line], now=time.time())
            store.create_cluster("alice", "friends", now=time.time())
            store.add_members("alice/friends", ["bob"], by="alice")

    Every method may also raise :class:`BoardStoreError` when the database cannot be
    used (still locked by another writer after the busy timeout, corrupt, closed).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, busy_timeout: float) -> None:
        """Wrap an open connection; use :meth:`Store.open` instead."""
        self._conn: sqlite3.Connection | None = conn
        self._path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()

    # -- opening and closing ----------------------------------------------------------

    @classmethod
    def open(cls, data_dir: Path | str, *, busy_timeout: float = 5.0) -> Store:
        """Open (creating if needed) the store in ``data_dir``.

        Creates the folder (mode 0700) and ``board.sqlite3`` (mode 0600), switches to WAL,
        and brings the schema to :data:`SCHEMA_VERSION`. ``busy_timeout`` (seconds) is how
        long a write waits for another process's write to finish.
        Raises :class:`BoardStoreError` when the folder or file cannot be used, is not a
        database, or was written by a newer p2prt.
        """
        folder = Path(data_dir)
        path = folder / DB_FILENAME
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise BoardStoreError(f"cannot use board data folder {folder}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BoardStoreError(f"cannot open board database {path}: {exc}") from None
        store = cls(conn, path, busy_timeout)
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self) -> None:
        conn = self._connection()
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise self._mapped(exc) from None
        if str(mode).lower() != "wal":
            log.warning("board database %s: WAL unavailable, journal mode is %s", self._path, mode)
        with self._read() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION` in one write transaction (the version
        is read again inside it, in case another process migrated meanwhile)."""
        with self._write() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise BoardStoreError(
                    f"board database {self._path} has schema version {version}, newer than this"
                    f" p2prt understands ({SCHEMA_VERSION}); upgrade p2prt"
                )
            for step in range(version, SCHEMA_VERSION):
                log.info("board database %s: migrating schema %d -> %d", self._path, step, step + 1)
                for statement in _MIGRATIONS[step]:
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._conn is None

    def close(self) -> None:
        """Close the database; calling it again does nothing."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self._path}{' closed' if self.closed else ''}>"

    # -- transactions -----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BoardStoreError(f"board database {self._path} is closed")
        return self._conn

    def _mapped(self, exc: sqlite3.Error) -> BoardStoreError:
        text = str(exc)
        if "locked" in text or "busy" in text:
            return BoardStoreError(
                f"board database {self._path} stayed busy for {self._busy_timeout:g} s"
                f" (another process is writing): {text}"
            )
        return BoardStoreError(f"board database {self._path}: {text}")

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute(begin)
            except sqlite3.Error as exc:
                raise self._mapped(exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):  # keep the original error
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._mapped(exc) from exc
                raise

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN")

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits.

        Cheap enough to poll often. Raises :class:`BoardStoreError` when closed.
        """
        with self._lock:
            try:
                (version,) = self._connection().execute("PRAGMA data_version").fetchone()
            except sqlite3.Error as exc:
                raise self._mapped(exc) from None
        return int(version)

    # -- users and keys ---------------------------------------------------------------

    def add_user(
        self,
        name: str,
        public_keys: Iterable[SshPublicKey | str] | SshPublicKey | str = (),
        *,
        now: float,
    ) -> UserRecord:
        """Create the account ``name`` with ``public_keys`` (lines or parsed keys).

        ``public_keys`` may be empty: such a user can be a member but cannot log in until
        :meth:`add_keys`. Raises :class:`InvalidNameError` (the rule is in the message),
        :class:`UserExistsError`, :class:`KeyInUseError` when a key belongs to another
        user (nothing is created), :class:`KeyLoadError` for a line that is not a key.
        """
        validate_name(name)
        keys = _parse_keys(public_keys)
        with self._write() as db:
            if _user_exists(db, name):
                raise UserExistsError(f"user {name!r} already exists")
            db.execute("INSERT INTO users (name, created) VALUES (?, ?)", (name, now))
            _insert_keys(db, name, keys)
            return _get_user(db, name)

    def add_keys(self, name: str, public_keys: Iterable[SshPublicKey | str] | SshPublicKey | str) -> list[str]:
        """Add keys to the existing user ``name``; return the fingerprints that were new.

        Keys the user already has are skipped. Raises :class:`UnknownUserError`,
        :class:`KeyInUseError` when a key belongs to another user (nothing is added),
        :class:`KeyLoadError` for a line that is not a key.
        """
        keys = _parse_keys(public_keys)
        with self._write() as db:
            _require_user(db, name)
            return _insert_keys(db, name, keys)

    def remove_key(self, name: str, fingerprint: str) -> None:
        """Remove the key with ``fingerprint`` (``SHA256:...``) from user ``name``.

        Raises :class:`UnknownUserError`, or :class:`UnknownKeyError` when ``name`` has
        no such key.
        """
        with self._write() as db:
            _require_user(db, name)
            cur = db.execute("DELETE FROM keys WHERE fingerprint = ? AND username = ?", (fingerprint, name))
            if cur.rowcount == 0:
                raise UnknownKeyError(f"user {name!r} has no key {fingerprint}")

    def remove_user(self, name: str) -> None:
        """Delete user ``name`` with their keys, their memberships and the clusters they own
        (and those clusters' memberships). Raises :class:`UnknownUserError`.
        """
        with self._write() as db:
            _require_user(db, name)
            db.execute("DELETE FROM users WHERE name = ?", (name,))

    def user_exists(self, name: str) -> bool:
        """True when the account ``name`` exists (False for a malformed name)."""
        with self._read() as db:
            return _user_exists(db, name)

    def get_user(self, name: str) -> UserRecord:
        """The account ``name``; raises :class:`UnknownUserError`."""
        with self._read() as db:
            _require_user(db, name)
            return _get_user(db, name)

    def list_users(self) -> list[UserRecord]:
        """Every account, sorted by name, each with its keys in the order added."""
        with self._read() as db:
            keys: dict[str, list[KeyRecord]] = {}
            for username, fp, line, key_type in db.execute(
                "SELECT username, fingerprint, line, key_type FROM keys ORDER BY rowid"
            ):
                keys.setdefault(username, []).append(KeyRecord(fp, line, key_type))
            return [
                UserRecord(name, tuple(keys.get(name, ())), created)
                for name, created in db.execute("SELECT name, created FROM users ORDER BY name")
            ]

    def user_for_fingerprint(self, fingerprint: str) -> str | None:
        """The user owning the key with ``fingerprint`` (``SHA256:...``), or None."""
        with self._read() as db:
            row = db.execute("SELECT username FROM keys WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return None if row is None else str(row[0])

    # -- clusters ---------------------------------------------------------------------

    def create_cluster(self, owner: str, name: str, *, now: float) -> ClusterRecord:
        """Create the cluster ``owner/name`` with no members but its owner.

        Raises :class:`InvalidNameError`, :class:`ClusterExistsError` (also for
        ``personal``, which exists implicitly), :class:`UnknownUserError` for the owner.
        """
        validate_name(owner)
        validate_name(name, "cluster name")
        if name == PERSONAL:
            raise ClusterExistsError(
                f"{owner}/{PERSONAL} exists implicitly for every user and admits only its owner;"
                " choose another name to share a cluster"
            )
        with self._write() as db:
            _require_user(db, owner)
            if _cluster_exists(db, owner, name):
                raise ClusterExistsError(f"cluster {owner}/{name} already exists")
            db.execute("INSERT INTO clusters (owner, name, created) VALUES (?, ?, ?)", (owner, name, now))
            return ClusterRecord(f"{owner}/{name}", owner, 1, now)

    def delete_cluster(self, cluster: str, *, by: str) -> None:
        """Delete ``cluster`` (``owner/name``) and its memberships; only its owner may.

        Raises :class:`InvalidNameError`, :class:`UnknownClusterError`,
        :class:`NotClusterOwnerError` when ``by`` is not the owner, :class:`ClusterRuleError`
        for ``owner/personal``.
        """
        owner, name = parse_cluster_name(cluster)
        with self._write() as db:
            _require_owner(db, owner, name, by)
            if name == PERSONAL:
                raise ClusterRuleError(f"{cluster} exists implicitly and cannot be deleted")
            db.execute("DELETE FROM clusters WHERE owner = ? AND name = ?", (owner, name))

    def add_members(self, cluster: str, users: Iterable[str] | str, *, by: str) -> list[str]:
        """Add ``users`` to ``cluster``; only its owner (``by``) may. All or nothing.

        Returns the users who were not members before (the owner and existing members are
        skipped). Raises :class:`InvalidNameError`, :class:`UnknownClusterError`,
        :class:`NotClusterOwnerError`, :class:`ClusterRuleError` for ``owner/personal``,
        :class:`UnknownUserError` naming every unknown user (then nobody is added).
        """
        owner, name = parse_cluster_name(cluster)
        names = _names(users)
        with self._write() as db:
            _require_owner(db, owner, name, by)
            if name == PERSONAL:
                raise ClusterRuleError(f"{cluster} admits only {owner}; create another cluster to share machines")
            _require_users(db, names, f"nobody was added to {cluster}")
            added = []
            for user in names:
                if user == owner:
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO members (owner, cluster, member) VALUES (?, ?, ?)",
                    (owner, name, user),
                )
                if cur.rowcount:
                    added.append(user)
            return added

    def remove_members(self, cluster: str, users: Iterable[str] | str, *, by: str) -> list[str]:
        """Remove ``users`` from ``cluster``; only its owner (``by``) may. All or nothing.

        Returns the users who were members (others are skipped). Raises
        :class:`InvalidNameError`, :class:`UnknownClusterError`,
        :class:`NotClusterOwnerError`, :class:`ClusterRuleError` for ``owner/personal`` or
        when ``users`` names the owner, :class:`UnknownUserError` naming every unknown user
        (then nobody is removed).
        """
        owner, name = parse_cluster_name(cluster)
        names = _names(users)
        with self._write() as db:
            _require_owner(db, owner, name, by)
            if name == PERSONAL:
                raise ClusterRuleError(f"{cluster} admits only {owner} and has no members to remove")
            if owner in names:
                raise ClusterRuleError(
                    f"{owner} owns {cluster} and cannot be removed from it; delete the cluster instead"
                )
            _require_users(db, names, f"nobody was removed from {cluster}")
            removed = []
            for user in names:
                cur = db.execute(
                    "DELETE FROM members WHERE owner = ? AND cluster = ? AND member = ?",
                    (owner, name, user),
                )
                if cur.rowcount:
                    removed.append(user)
            return removed

    def members(self, cluster: str) -> list[str]:
        """The members of ``cluster``: its owner first, then the others sorted.

        ``X/personal`` gives ``[X]``. Raises :class:`InvalidNameError`,
        :class:`UnknownClusterError`.
        """
        owner, name = parse_cluster_name(cluster)
        with self._read() as db:
            if not _cluster_exists(db, owner, name):
                raise UnknownClusterError(f"no cluster {cluster}")
            rows = db.execute(
                "SELECT member FROM members WHERE owner = ? AND cluster = ? ORDER BY member",
                (owner, name),
            ).fetchall()
        return [owner] + [str(member) for (member,) in rows]

    def get_cluster(self, cluster: str) -> ClusterRecord:
        """The record of ``cluster``; raises :class:`InvalidNameError`, :class:`UnknownClusterError`."""
        owner, name = parse_cluster_name(cluster)
        with self._read() as db:
            if name == PERSONAL:
                row = db.execute("SELECT created FROM users WHERE name = ?", (owner,)).fetchone()
                if row is not None:
                    return ClusterRecord(cluster, owner, 1, row[0])
            else:
                row = db.execute(
                    f"SELECT {_MEMBER_COUNT}, c.created FROM clusters c WHERE c.owner = ? AND c.name = ?",
                    (owner, name),
                ).fetchone()
                if row is not None:
                    return ClusterRecord(cluster, owner, row[0], row[1])
        raise UnknownClusterError(f"no cluster {cluster}")

    def clusters_for(self, user: str) -> list[ClusterRecord]:
        """The clusters ``user`` may use: ``user/personal`` first, then the clusters they
        own or are a member of, sorted by name. Raises :class:`UnknownUserError`.
        """
        with self._read() as db:
            row = db.execute("SELECT created FROM users WHERE name = ?", (user,)).fetchone()
            if row is None:
                raise UnknownUserError(f"unknown user {user!r}")
            rows = db.execute(
                f"""SELECT c.owner, c.name, {_MEMBER_COUNT}, c.created FROM clusters c
                    WHERE c.owner = :user
                    UNION
                    SELECT c.owner, c.name, {_MEMBER_COUNT}, c.created
                    FROM members j JOIN clusters c ON c.owner = j.owner AND c.name = j.cluster
                    WHERE j.member = :user
                    ORDER BY 1, 2""",
                {"user": user},
            ).fetchall()
        personal = ClusterRecord(f"{user}/{PERSONAL}", user, 1, row[0])
        return [personal] + [ClusterRecord(f"{o}/{n}", o, count, created) for o, n, count, created in rows]

    def is_member(self, cluster: str, user: str) -> bool:
        """True when ``user`` may use ``cluster``: for ``X/personal`` only X (who must
        exist), otherwise the owner and the members. False for an unknown or malformed
        cluster name (use :func:`parse_cluster_name` to report a malformed one).
        """
        try:
            owner, name = parse_cluster_name(cluster)
        except InvalidNameError:
            return False
        with self._read() as db:
            if name == PERSONAL:
                return user == owner and _user_exists(db, user)
            if user == owner:
                return _cluster_exists(db, owner, name)
            row = db.execute(
                "SELECT 1 FROM members WHERE owner = ? AND cluster = ? AND member = ?",
                (owner, name, user),
            ).fetchone()
            return row is not None

    def cluster_exists(self, cluster: str) -> bool:
        """True when ``cluster`` exists (``X/personal`` exists when user X does); False
        for a malformed name."""
        try:
            owner, name = parse_cluster_name(cluster)
        except InvalidNameError:
            return False
        with self._read() as db:
            return _cluster_exists(db, owner, name)


# -- queries used inside a transaction ---------------------------------------------------


def _user_exists(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None


def _require_user(db: sqlite3.Connection, name: str) -> None:
    if not _user_exists(db, name):
        raise UnknownUserError(f"unknown user {name!r}")


def _require_users(db: sqlite3.Connection, names: list[str], consequence: str) -> None:
    unknown = sorted(name for name in names if not _user_exists(db, name))
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise UnknownUserError(f"unknown user{'s' if len(unknown) > 1 else ''} {listed}; {consequence}")


def _cluster_exists(db: sqlite3.Connection, owner: str, name: str) -> bool:
    if name == PERSONAL:
        return _user_exists(db, owner)
    row = db.execute("SELECT 1 FROM clusters WHERE owner = ? AND name = ?", (owner, name)).fetchone()
    return row is not None


def _require_owner(db: sqlite3.Connection, owner: str, name: str, by: str) -> None:
    if not _cluster_exists(db, owner, name):
        raise UnknownClusterError(f"no cluster {owner}/{name}")
    if by != owner:
        raise NotClusterOwnerError(f"only {owner} can change {owner}/{name}; {by!r} is not its owner")


def _get_user(db: sqlite3.Connection, name: str) -> UserRecord:
    (created,) = db.execute("SELECT created FROM users WHERE name = ?", (name,)).fetchone()
    keys = tuple(
        KeyRecord(fp, line, key_type)
        for fp, line, key_type in db.execute(
            "SELECT fingerprint, line, key_type FROM keys WHERE username = ? ORDER BY rowid", (name,)
        )
    )
    return UserRecord(name, keys, created)


def _insert_keys(db: sqlite3.Connection, name: str, keys: list[SshPublicKey]) -> list[str]:
    """Insert the keys ``name`` does not have yet; raise :class:`KeyInUseError` first if
    any belongs to another user. Returns the new fingerprints."""
    new: list[SshPublicKey] = []
    for key in keys:
        row = db.execute("SELECT username FROM keys WHERE fingerprint = ?", (key.fingerprint,)).fetchone()
        if row is None:
            new.append(key)
        elif row[0] != name:
            raise KeyInUseError(
                f"key {key.fingerprint} already belongs to user {row[0]!r}; a key can belong to one user only"
            )
    db.executemany(
        "INSERT INTO keys (fingerprint, username, line, key_type) VALUES (?, ?, ?, ?)",
        [(key.fingerprint, name, key.line, key.key_type) for key in new],
    )
    return [key.fingerprint for key in new]
