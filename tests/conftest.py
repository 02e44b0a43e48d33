"""Fixtures and settings shared by the whole test suite.

- Tests marked ``slow`` (long fuzz runs) are skipped unless selected: ``-m slow`` (or any
  ``-m`` expression that names ``slow`` without ``not slow``), or ``P2PRT_SLOW=1``.
- Hypothesis runs derandomized by default, so every run of the default suite draws the
  same examples. When slow tests are selected it draws fresh random ones each run
  (give ``--hypothesis-seed=N`` to repeat a run).
- :func:`fuzz` runs a property twice: a few derandomized examples in the default run, and
  many more in its ``[slow]`` variant. It counts the examples really run (printed at the
  end) and fails when hypothesis ran fewer than asked.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

settings.register_profile("p2prt", derandomize=True, deadline=None)
settings.register_profile("p2prt-slow", derandomize=False, deadline=None, print_blob=True)

_EXAMPLES = pytest.StashKey["Counter[str]"]()


def slow_selected(config: pytest.Config) -> bool:
    """Whether this run includes the tests marked ``slow``."""
    markexpr = str(config.getoption("markexpr") or "")
    return bool(os.environ.get("P2PRT_SLOW")) or ("slow" in markexpr and "not slow" not in markexpr)


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("hypothesis_profile", None):  # an explicit --hypothesis-profile wins
        settings.load_profile("p2prt-slow" if slow_selected(config) else "p2prt")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if slow_selected(config):
        return
    skip = pytest.mark.skip(reason="slow: select with -m slow (or set P2PRT_SLOW=1)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fuzz_examples(pytestconfig: pytest.Config) -> Counter[str]:
    """Examples run per property (add to it in the test); summed up at the end of the run."""
    return pytestconfig.stash.setdefault(_EXAMPLES, Counter())


Fuzz = Callable[..., None]
"""``fuzz(strategy, check, default=N, slow=M)``: see :func:`fuzz`."""


@pytest.fixture(
    params=[
        pytest.param("default"),
        pytest.param("slow", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ]
)
def fuzz(request: pytest.FixtureRequest, fuzz_examples: Counter[str]) -> Fuzz:
    """Run ``check(value)`` for values drawn from ``strategy``: ``default`` examples in the
    default run (derandomized), ``slow`` examples in the test's ``[slow]`` variant.

    Fails when hypothesis stopped before running that many (a strategy too narrow to
    give them), so the counts the suite reports are the counts it ran.
    """
    long_run = request.param == "slow"

    def run(strategy: st.SearchStrategy[object], check: Callable[[object], None], *, default: int, slow: int) -> None:
        wanted = slow if long_run else default
        ran = 0

        @settings(
            max_examples=wanted, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
        )
        @given(strategy)
        def body(value: object) -> None:
            nonlocal ran
            ran += 1
            check(value)

        body()
        fuzz_examples[request.node.nodeid] += ran
        assert ran >= wanted, f"hypothesis ran {ran} of {wanted} examples (is the strategy too narrow?)"

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    counts = config.stash.get(_EXAMPLES, None)
    if counts:
        terminalreporter.write_sep("-", f"property examples run: {sum(counts.values()):,} in {len(counts)} properties")

_SCRUBBED_ENV = (
    "XDG_CONFIG_HOME",
    "P2PRT_KEY_PASSPHRASE",
    "P2PRT_USER",
    "P2PRT_BOARD",
    "P2PRT_KEY",
    "P2PRT_CLUSTER",
    "P2PRT_LARGE_OBJECT_THRESHOLD",
    "P2PRT_NAT_PATHS",
    "P2PRT_KEEPALIVE_TIMEOUT",
    "P2PRT_UPGRADE_INTERVAL",
    "SSH_AUTH_SOCK",
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME at a fresh empty folder and drop p2prt's environment variables.

    No test ever reads or writes the real ``~/.ssh`` or ``~/.config``, and a developer's
    own ``P2PRT_*`` settings cannot change a test's outcome. Returns the fake home.
    """
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in _SCRUBBED_ENV:
        monkeypatch.delenv(name, raising=False)
    return home
