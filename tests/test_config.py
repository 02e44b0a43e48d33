"""One configuration story: flag > environment (P2PRT_*) > config.toml > default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2prt.cli.main import main
from p2prt.config import SETTINGS, config_file, resolve, setting
from p2prt.errors import ConfigError


def _write(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_for_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [s.name for s in SETTINGS]
    for s in SETTINGS:
        assert resolve(s.name) == (s.default, "default")
    path = _write("".join(f'{n} = "from-file-{n}"\n' for n in names))
    for s in SETTINGS:
        assert resolve(s.name) == (f"from-file-{s.name}", f"file {path}")
        monkeypatch.setenv(s.env, f"from-env-{s.name}")
        assert resolve(s.name) == (f"from-env-{s.name}", f"env {s.env}")
        assert resolve(s.name, flag="from-flag") == ("from-flag", "flag")


def test_numbers_may_be_numbers_in_the_file() -> None:
    _write("keepalive_timeout = 4\nlarge_object_threshold = 0\n")
    assert setting("keepalive_timeout") == "4" and setting("large_object_threshold") == "0"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("board = \n", "not valid TOML"),
        ('colour = "blue"\n', "unknown setting.*colour.*known:"),
        ("user = 5\n", 'user must be a string, e.g. user = "..."'),
        ("nat_paths = [1]\n", "nat_paths must be a string or a number"),
    ],
)
def test_a_broken_file_says_what_is_wrong(text: str, match: str) -> None:
    path = _write(text)
    with pytest.raises(ConfigError, match=match) as info:
        resolve("board")
    assert str(path) in str(info.value)


def test_the_knobs_are_read_through_the_story(monkeypatch: pytest.MonkeyPatch) -> None:
    from p2prt._api import _hold_over
    from p2prt.client.paths import nat_paths, upgrade_interval
    from p2prt.transport.keepalive import keepalive_timeout

    _write('nat_paths = "relay"\nkeepalive_timeout = 7\nupgrade_interval = "2.5"\nlarge_object_threshold = 10\n')
    assert nat_paths() == ("relay",) and keepalive_timeout() == 7.0 and upgrade_interval() == 2.5
    assert _hold_over(None) == 10 and _hold_over(5) == 5  # the argument is the flag
    monkeypatch.setenv("P2PRT_NAT_PATHS", "direct,punch")
    assert nat_paths() == ("direct", "punch")
    monkeypatch.setenv("P2PRT_LARGE_OBJECT_THRESHOLD", "lots")
    with pytest.raises(ConfigError, match=r"large_object_threshold \(env P2PRT_LARGE_OBJECT_THRESHOLD\)"):
        _hold_over(None)


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from p2prt.errors import KeyNotFoundError
    from p2prt.identity.lookup import find_key_path

    monkeypatch.setenv("P2PRT_KEY", str(tmp_path / "missing"))
    with pytest.raises(KeyNotFoundError, match="no key file at"):
        find_key_path()
    (tmp_path / "missing").write_text("x")
    assert find_key_path() == tmp_path / "missing"


def test_p2prt_config_shows_values_and_sources(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _write('user = "alice"\n')
    monkeypatch.setenv("P2PRT_BOARD", "board.example.org:7790")
    assert main(["config", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["settings"]}
    assert rows["board"]["value"] == "board.example.org:7790" and rows["board"]["source"] == "env P2PRT_BOARD"
    assert rows["user"]["value"] == "alice" and rows["user"]["source"].startswith("file ")
    assert rows["keepalive_timeout"] == {**rows["keepalive_timeout"], "value": "15", "source": "default"}
    assert main(["config"]) == 0
    assert "board.example.org:7790" in capsys.readouterr().out
