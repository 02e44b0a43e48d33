"""Tests of the board's SQLite store: accounts, keys, clusters, members."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2prt.board.store import (
    DB_FILENAME,
    NAME_RULE,
    SCHEMA_VERSION,
    ClusterRecord,
    KeyRecord,
    Store,
    UserRecord,
    parse_cluster_name,
    validate_name,
)
from p2prt.errors import (
    BoardError,
    BoardStoreError,
    ClusterExistsError,
    ClusterRuleError,
    InvalidNameError,
    KeyInUseError,
    KeyLoadError,
    NotClusterOwnerError,
    P2prtError,
    UnknownClusterError,
    UnknownKeyError,
    UnknownUserError,
    UserExistsError,
)
from p2prt.identity.keys import SshPublicKey, generate_ed25519

NOW = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]


def new_key() -> SshPublicKey:
    return generate_ed25519().public


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "board"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    with Store.open(data_dir) as s:
        yield s


@pytest.fixture
def people(store: Store) -> Store:
    """alice, bob, carol and dave, one key each; alice/friends with bob as member."""
    for name in ("alice", "bob", "carol", "dave"):
        store.add_user(name, [new_key()], now=NOW)
    store.create_cluster("alice", "friends", now=NOW + 1)
    store.add_members("alice/friends", ["bob"], by="alice")
    return store


# -- opening ---------------------------------------------------------------------------


def test_open_creates_private_folder_and_wal_database(data_dir: Path) -> None:
    with Store.open(data_dir / "nested") as store:
        assert store.path == data_dir / "nested" / DB_FILENAME
        assert stat.S_IMODE((data_dir / "nested").stat().st_mode) == 0o700
        assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    raw = sqlite3.connect(data_dir / "nested" / DB_FILENAME)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"users", "keys", "clusters", "members"} <= tables
    finally:
        raw.close()


def test_open_accepts_str_and_existing_folder(data_dir: Path) -> None:
    data_dir.mkdir()
    with Store.open(str(data_dir)) as store:
        assert store.path.exists()


def test_close_is_idempotent_and_use_after_close_fails(data_dir: Path) -> None:
    store = Store.open(data_dir)
    assert not store.closed
    store.close()
    store.close()
    assert store.closed
    assert "closed" in repr(store)
    with pytest.raises(BoardStoreError, match="closed"):
        store.user_exists("alice")
    with pytest.raises(BoardStoreError, match="closed"):
        store.data_version()


def test_context_manager_closes(data_dir: Path) -> None:
    with Store.open(data_dir) as store:
        pass
    assert store.closed


def test_newer_schema_is_refused(data_dir: Path) -> None:
    Store.open(data_dir).close()
    raw = sqlite3.connect(data_dir / DB_FILENAME)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(BoardStoreError, match="newer"):
        Store.open(data_dir)


def test_not_a_database_is_refused(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / DB_FILENAME).write_bytes(b"this is not an SQLite database at all" * 100)
    with pytest.raises(BoardStoreError, match=DB_FILENAME):
        Store.open(data_dir)


def test_unusable_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BoardStoreError, match="cannot use board data folder"):
        Store.open(tmp_path / "file")


def test_errors_are_board_errors() -> None:
    for cls in (BoardStoreError, InvalidNameError, UnknownUserError, KeyInUseError, ClusterRuleError):
        assert issubclass(cls, BoardError)
    assert issubclass(BoardError, P2prtError)


# -- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "_", "alice", "bob.smith", "x-1_2", "a" * 32, "_9"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", "9lives", "-x", ".x", "a" * 33, "a b", "a/b", "é", "a\n"])
def test_invalid_names_say_the_rule(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        validate_name(name)
    assert NAME_RULE in str(info.value)


def test_parse_cluster_name() -> None:
    assert parse_cluster_name("alice/friends") == ("alice", "friends")
    assert parse_cluster_name("alice/personal") == ("alice", "personal")


@pytest.mark.parametrize("cluster", ["alice", "alice/", "/friends", "a/b/c", "Alice/x", "alice/Friends", ""])
def test_parse_cluster_name_rejects_bad_forms(cluster: str) -> None:
    with pytest.raises(InvalidNameError, match="cluster name"):
        parse_cluster_name(cluster)


def test_parse_cluster_name_explains_the_form() -> None:
    with pytest.raises(InvalidNameError, match="owner/name"):
        parse_cluster_name("friends")


# -- users and keys --------------------------------------------------------------------


def test_add_user_with_parsed_keys_and_lines(store: Store) -> None:
    k1, k2 = new_key(), new_key()
    record = store.add_user("alice", [k1, f"{k2.line} alice@laptop"], now=NOW)
    assert record == UserRecord(
        "alice",
        (KeyRecord(k1.fingerprint, k1.line, "ssh-ed25519"), KeyRecord(k2.fingerprint, k2.line, "ssh-ed25519")),
        NOW,
    )
    assert store.get_user("alice") == record
    assert store.user_exists("alice")


def test_add_user_accepts_one_key_and_no_keys(store: Store) -> None:
    key = new_key()
    assert store.add_user("alice", key.line, now=NOW).keys == (KeyRecord(key.fingerprint, key.line, key.key_type),)
    assert store.add_user("bob", now=NOW).keys == ()


def test_add_user_drops_duplicate_keys(store: Store) -> None:
    key = new_key()
    record = store.add_user("alice", [key, key.line, f"{key.line} comment"], now=NOW)
    assert len(record.keys) == 1


def test_add_user_twice_fails(store: Store) -> None:
    store.add_user("alice", [new_key()], now=NOW)
    with pytest.raises(UserExistsError, match="alice"):
        store.add_user("alice", [new_key()], now=NOW)


def test_add_user_invalid_name(store: Store) -> None:
    with pytest.raises(InvalidNameError, match="Alice"):
        store.add_user("Alice", [new_key()], now=NOW)
    assert store.list_users() == []


def test_add_user_bad_key_line_creates_nothing(store: Store) -> None:
    with pytest.raises(KeyLoadError):
        store.add_user("alice", [new_key(), "ssh-ed25519 not-base64!"], now=NOW)
    assert not store.user_exists("alice")


def test_a_key_belongs_to_one_user(store: Store) -> None:
    shared = new_key()
    store.add_user("bob", [shared], now=NOW)
    with pytest.raises(KeyInUseError, match="'bob'") as info:
        store.add_user("alice", [new_key(), shared], now=NOW)
    assert shared.fingerprint in str(info.value)
    assert not store.user_exists("alice")
    assert store.user_for_fingerprint(shared.fingerprint) == "bob"


def test_add_keys(store: Store) -> None:
    k1, k2, k3 = new_key(), new_key(), new_key()
    store.add_user("alice", [k1], now=NOW)
    assert store.add_keys("alice", [k1, k2.line, k3]) == [k2.fingerprint, k3.fingerprint]
    assert store.add_keys("alice", [k2]) == []
    assert [k.fingerprint for k in store.get_user("alice").keys] == [k1.fingerprint, k2.fingerprint, k3.fingerprint]


def test_add_keys_unknown_user(store: Store) -> None:
    with pytest.raises(UnknownUserError, match="alice"):
        store.add_keys("alice", [new_key()])


def test_add_keys_of_another_user_adds_nothing(store: Store) -> None:
    bobs = new_key()
    store.add_user("bob", [bobs], now=NOW)
    store.add_user("alice", now=NOW)
    fresh = new_key()
    with pytest.raises(KeyInUseError, match="'bob'"):
        store.add_keys("alice", [fresh, bobs])
    assert store.get_user("alice").keys == ()
    assert store.user_for_fingerprint(fresh.fingerprint) is None


def test_remove_key(store: Store) -> None:
    k1, k2 = new_key(), new_key()
    store.add_user("alice", [k1, k2], now=NOW)
    store.add_user("bob", now=NOW)
    store.remove_key("alice", k1.fingerprint)
    assert store.user_for_fingerprint(k1.fingerprint) is None
    assert [k.fingerprint for k in store.get_user("alice").keys] == [k2.fingerprint]
    with pytest.raises(UnknownKeyError, match="alice"):
        store.remove_key("alice", k1.fingerprint)
    with pytest.raises(UnknownKeyError):
        store.remove_key("bob", k2.fingerprint)  # alice's key, not bob's
    assert store.user_for_fingerprint(k2.fingerprint) == "alice"
    with pytest.raises(UnknownUserError):
        store.remove_key("zed", k2.fingerprint)


def test_list_users_sorted_with_keys(store: Store) -> None:
    kb, ka = new_key(), new_key()
    store.add_user("bob", [kb], now=NOW + 1)
    store.add_user("alice", [ka], now=NOW)
    store.add_user("carol", now=NOW + 2)
    users = store.list_users()
    assert [u.name for u in users] == ["alice", "bob", "carol"]
    assert users[0].keys == (KeyRecord(ka.fingerprint, ka.line, ka.key_type),)
    assert users[1].created == NOW + 1
    assert users[2].keys == ()


def test_user_lookups(store: Store) -> None:
    key = new_key()
    store.add_user("alice", [key], now=NOW)
    assert store.user_for_fingerprint(key.fingerprint) == "alice"
    assert store.user_for_fingerprint(new_key().fingerprint) is None
    assert store.user_exists("alice")
    assert not store.user_exists("bob")
    assert not store.user_exists("Not A Name")
    with pytest.raises(UnknownUserError, match="bob"):
        store.get_user("bob")


def test_remove_user_removes_keys_memberships_and_owned_clusters(people: Store) -> None:
    bobs_keys = people.get_user("bob").keys
    people.create_cluster("bob", "lab", now=NOW)
    people.add_members("bob/lab", ["carol"], by="bob")
    people.remove_user("bob")
    assert not people.user_exists("bob")
    assert people.user_for_fingerprint(bobs_keys[0].fingerprint) is None
    assert people.members("alice/friends") == ["alice"]
    assert not people.cluster_exists("bob/lab")
    assert not people.cluster_exists("bob/personal")
    assert [c.name for c in people.clusters_for("carol")] == ["carol/personal"]
    # The name and the key are free again.
    people.add_user("bob", [bobs_keys[0].line], now=NOW)
    assert people.members("alice/friends") == ["alice"]


def test_remove_unknown_user(store: Store) -> None:
    with pytest.raises(UnknownUserError, match="zed"):
        store.remove_user("zed")


# -- clusters --------------------------------------------------------------------------


def test_create_cluster(people: Store) -> None:
    record = people.create_cluster("carol", "lab", now=NOW + 5)
    assert record == ClusterRecord("carol/lab", "carol", 1, NOW + 5)
    assert people.get_cluster("carol/lab") == record
    assert people.cluster_exists("carol/lab")
    assert people.members("carol/lab") == ["carol"]


def test_create_cluster_twice(people: Store) -> None:
    with pytest.raises(ClusterExistsError, match="alice/friends"):
        people.create_cluster("alice", "friends", now=NOW)


def test_same_cluster_name_for_different_owners(people: Store) -> None:
    people.create_cluster("bob", "friends", now=NOW)
    assert people.members("bob/friends") == ["bob"]
    assert people.members("alice/friends") == ["alice", "bob"]


def test_personal_is_reserved(people: Store) -> None:
    with pytest.raises(ClusterExistsError, match="implicitly"):
        people.create_cluster("alice", "personal", now=NOW)


def test_create_cluster_unknown_owner_or_bad_names(people: Store) -> None:
    with pytest.raises(UnknownUserError, match="zed"):
        people.create_cluster("zed", "lab", now=NOW)
    with pytest.raises(InvalidNameError, match="cluster name"):
        people.create_cluster("alice", "Lab!", now=NOW)
    with pytest.raises(InvalidNameError):
        people.create_cluster("Alice", "lab", now=NOW)


def test_delete_cluster(people: Store) -> None:
    people.delete_cluster("alice/friends", by="alice")
    assert not people.cluster_exists("alice/friends")
    assert not people.is_member("alice/friends", "bob")
    # Re-created, it starts empty: the memberships went with it.
    people.create_cluster("alice", "friends", now=NOW)
    assert people.members("alice/friends") == ["alice"]


def test_delete_cluster_errors(people: Store) -> None:
    with pytest.raises(NotClusterOwnerError, match="alice"):
        people.delete_cluster("alice/friends", by="bob")
    assert people.cluster_exists("alice/friends")
    with pytest.raises(UnknownClusterError, match="alice/nope"):
        people.delete_cluster("alice/nope", by="alice")
    with pytest.raises(ClusterRuleError, match="implicitly"):
        people.delete_cluster("alice/personal", by="alice")
    with pytest.raises(NotClusterOwnerError):
        people.delete_cluster("alice/personal", by="bob")
    with pytest.raises(UnknownClusterError):
        people.delete_cluster("zed/personal", by="zed")
    with pytest.raises(InvalidNameError):
        people.delete_cluster("friends", by="alice")


def test_add_members(people: Store) -> None:
    added = people.add_members("alice/friends", ["dave", "carol", "bob", "alice", "carol"], by="alice")
    assert added == ["dave", "carol"]
    assert people.members("alice/friends") == ["alice", "bob", "carol", "dave"]
    assert people.add_members("alice/friends", "dave", by="alice") == []


def test_add_members_only_by_owner(people: Store) -> None:
    with pytest.raises(NotClusterOwnerError, match="only alice"):
        people.add_members("alice/friends", ["carol"], by="bob")
    assert people.members("alice/friends") == ["alice", "bob"]


def test_add_members_is_all_or_nothing(people: Store) -> None:
    with pytest.raises(UnknownUserError) as info:
        people.add_members("alice/friends", ["carol", "zed", "yann"], by="alice")
    assert "'yann'" in str(info.value)
    assert "'zed'" in str(info.value)
    assert "nobody was added" in str(info.value)
    assert people.members("alice/friends") == ["alice", "bob"]


def test_add_members_errors(people: Store) -> None:
    with pytest.raises(ClusterRuleError, match="admits only alice"):
        people.add_members("alice/personal", ["bob"], by="alice")
    with pytest.raises(UnknownClusterError):
        people.add_members("alice/nope", ["bob"], by="alice")
    with pytest.raises(InvalidNameError):
        people.add_members("alice", ["bob"], by="alice")


def test_remove_members(people: Store) -> None:
    people.add_members("alice/friends", ["carol", "dave"], by="alice")
    assert people.remove_members("alice/friends", ["bob", "dave", "bob"], by="alice") == ["bob", "dave"]
    assert people.members("alice/friends") == ["alice", "carol"]
    assert people.remove_members("alice/friends", "bob", by="alice") == []


def test_remove_members_errors_change_nothing(people: Store) -> None:
    with pytest.raises(NotClusterOwnerError):
        people.remove_members("alice/friends", ["bob"], by="bob")
    with pytest.raises(UnknownUserError, match="'zed'"):
        people.remove_members("alice/friends", ["bob", "zed"], by="alice")
    with pytest.raises(ClusterRuleError, match="cannot be removed"):
        people.remove_members("alice/friends", ["bob", "alice"], by="alice")
    with pytest.raises(ClusterRuleError):
        people.remove_members("alice/personal", ["bob"], by="alice")
    with pytest.raises(UnknownClusterError):
        people.remove_members("alice/nope", ["bob"], by="alice")
    assert people.members("alice/friends") == ["alice", "bob"]


def test_members(people: Store) -> None:
    assert people.members("alice/friends") == ["alice", "bob"]
    assert people.members("bob/personal") == ["bob"]
    with pytest.raises(UnknownClusterError, match="zed/personal"):
        people.members("zed/personal")
    with pytest.raises(UnknownClusterError):
        people.members("alice/nope")
    with pytest.raises(InvalidNameError):
        people.members("nope")


def test_get_cluster(people: Store) -> None:
    assert people.get_cluster("alice/friends") == ClusterRecord("alice/friends", "alice", 2, NOW + 1)
    assert people.get_cluster("bob/personal") == ClusterRecord("bob/personal", "bob", 1, NOW)
    with pytest.raises(UnknownClusterError):
        people.get_cluster("zed/personal")
    with pytest.raises(UnknownClusterError):
        people.get_cluster("alice/nope")


def test_clusters_for(people: Store) -> None:
    people.create_cluster("carol", "lab", now=NOW + 2)
    people.add_members("carol/lab", ["bob", "dave"], by="carol")
    people.create_cluster("bob", "home", now=NOW + 3)
    assert people.clusters_for("bob") == [
        ClusterRecord("bob/personal", "bob", 1, NOW),
        ClusterRecord("alice/friends", "alice", 2, NOW + 1),
        ClusterRecord("bob/home", "bob", 1, NOW + 3),
        ClusterRecord("carol/lab", "carol", 3, NOW + 2),
    ]
    assert [c.name for c in people.clusters_for("alice")] == ["alice/personal", "alice/friends"]
    assert [c.name for c in people.clusters_for("dave")] == ["dave/personal", "carol/lab"]
    with pytest.raises(UnknownUserError, match="zed"):
        people.clusters_for("zed")


def test_is_member(people: Store) -> None:
    assert people.is_member("alice/friends", "alice")
    assert people.is_member("alice/friends", "bob")
    assert not people.is_member("alice/friends", "carol")
    assert not people.is_member("alice/friends", "zed")
    assert people.is_member("bob/personal", "bob")
    assert not people.is_member("bob/personal", "alice")
    assert not people.is_member("zed/personal", "zed")
    assert not people.is_member("alice/nope", "alice")
    assert not people.is_member("not a cluster", "alice")


def test_cluster_exists(people: Store) -> None:
    assert people.cluster_exists("alice/friends")
    assert people.cluster_exists("carol/personal")
    assert not people.cluster_exists("zed/personal")
    assert not people.cluster_exists("alice/nope")
    assert not people.cluster_exists("alice")


def test_membership_change_takes_effect_at_once(people: Store) -> None:
    assert people.is_member("alice/friends", "bob")
    people.remove_members("alice/friends", ["bob"], by="alice")
    assert not people.is_member("alice/friends", "bob")


# -- several connections and processes -------------------------------------------------


def test_second_connection_changes_data_version_and_is_visible(people: Store, data_dir: Path) -> None:
    before = people.data_version()
    assert people.data_version() == before  # nothing happened
    people.add_members("alice/friends", ["carol"], by="alice")
    assert people.data_version() == before  # own commits do not count
    with Store.open(data_dir) as cli:
        assert cli.is_member("alice/friends", "carol")
        cli.add_user("erin", [new_key()], now=NOW)
        cli.add_members("alice/friends", ["erin"], by="alice")
    after = people.data_version()
    assert after != before
    assert people.user_exists("erin")
    assert people.is_member("alice/friends", "erin")
    assert people.data_version() == after


def test_another_process_writes_while_open(people: Store, data_dir: Path) -> None:
    before = people.data_version()
    script = textwrap.dedent(
        f"""
        from p2prt.board.store import Store
        from p2prt.identity.keys import generate_ed25519
        with Store.open({str(data_dir)!r}) as store:
            store.add_user("frank", [generate_ed25519().public], now=1.0)
            store.remove_members("alice/friends", ["bob"], by="alice")
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True, timeout=60)
    assert people.data_version() != before
    assert people.user_exists("frank")
    assert not people.is_member("alice/friends", "bob")


def test_writer_waits_for_another_writer(people: Store, data_dir: Path) -> None:
    other = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        # Commit from another thread a little later; the store's write must wait for it.
        timer = threading.Timer(0.2, other.execute, ["COMMIT"])
        timer.start()
        people.add_members("alice/friends", ["carol"], by="alice")
        timer.join()
    finally:
        other.close()
    assert people.is_member("alice/friends", "carol")


def test_writer_gives_up_after_busy_timeout(people: Store, data_dir: Path) -> None:
    other = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with Store.open(data_dir, busy_timeout=0.05) as impatient:
            assert impatient.is_member("alice/friends", "bob")  # reads still work
            with pytest.raises(BoardStoreError, match="busy"):
                impatient.add_members("alice/friends", ["carol"], by="alice")
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert not people.is_member("alice/friends", "carol")


def test_usable_from_another_thread(people: Store) -> None:
    result: list[list[str]] = []
    thread = threading.Thread(target=lambda: result.append(people.members("alice/friends")))
    thread.start()
    thread.join(timeout=10)
    assert result == [["alice", "bob"]]


def test_everything_persists_across_reopen(data_dir: Path) -> None:
    key = new_key()
    with Store.open(data_dir) as store:
        store.add_user("alice", [key], now=NOW)
        store.add_user("bob", now=NOW + 1)
        store.create_cluster("alice", "friends", now=NOW + 2)
        store.add_members("alice/friends", ["bob"], by="alice")
        users = store.list_users()
    with Store.open(data_dir) as store:
        assert store.list_users() == users
        assert store.user_for_fingerprint(key.fingerprint) == "alice"
        assert store.members("alice/friends") == ["alice", "bob"]
        assert store.get_cluster("alice/friends") == ClusterRecord("alice/friends", "alice", 2, NOW + 2)
        assert [c.name for c in store.clusters_for("bob")] == ["bob/personal", "alice/friends"]
        # Foreign keys are on again after reopening: removing a user still cascades.
        store.remove_user("alice")
        assert not store.cluster_exists("alice/friends")
        assert store.clusters_for("bob")[1:] == []
