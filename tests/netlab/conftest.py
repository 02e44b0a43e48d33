"""Fixtures for the NAT lab (see lab.py and docs/netlab.md).

* ``netlab``: a freshly built lab per test, parametrised over the four variants
  ``a``..``d``; pick some with ``@pytest.mark.parametrize("netlab", ["a"], indirect=True)``.
* ``make_netlab``: a factory ``make_netlab(variant, backend=None) -> NetLab`` for tests
  that want several labs or a chosen firewall backend; all are torn down after the test.

Tests marked ``netlab`` (and every test using these fixtures) are skipped with the reason
when the lab cannot run here (not root, a tool missing, no namespaces) — except under CI
(``CI=true``), where that is an error instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .lab import ALL_VARIANTS, VARIANT_IDS, Backend, NetLab, Variant, build_lab, in_ci, requirements_problem


def require_netlab() -> None:
    """Skip (locally) or fail (under CI=true) when the lab cannot be built here."""
    problem = requirements_problem()
    if problem is None:
        return
    if in_ci():
        pytest.fail(f"netlab: {problem}. CI=true, so the NAT lab tests must run: .ci/run installs "
                    "iproute2 nftables iptables conntrack and runs as root", pytrace=False)
    pytest.skip(f"netlab: {problem}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netlab") is not None:
        require_netlab()


@pytest.fixture(params=ALL_VARIANTS, ids=[VARIANT_IDS[v] for v in ALL_VARIANTS])
def netlab(request: pytest.FixtureRequest) -> Iterator[NetLab]:
    """A NAT lab of one variant, built for this test and deleted after it (also when the
    test fails)."""
    require_netlab()
    variant: Variant = request.param
    lab = build_lab(variant)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def make_netlab() -> Iterator[Callable[..., NetLab]]:
    """``make_netlab(variant, backend=None)`` builds labs that are deleted after the test."""
    require_netlab()
    labs: list[NetLab] = []

    def make(variant: Variant, backend: Backend | None = None) -> NetLab:
        lab = build_lab(variant, backend=backend)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        errors = []
        for lab in reversed(labs):
            try:
                lab.close()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
