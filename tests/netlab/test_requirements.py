"""When the NAT lab cannot run: a clear skip locally, a failure under CI=true.

These run everywhere (no ``netlab`` marker): they only fake the checks.
"""

from __future__ import annotations

import os
import shutil

import pytest

from . import conftest as netlab_conftest
from . import lab


def test_not_root_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    problem = lab._check_requirements()
    assert problem is not None and "needs root" in problem and "uid 1000" in problem


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool in ("conntrack", "nft", "iptables-restore") else f"/usr/sbin/{tool}")
    monkeypatch.delenv("P2PRT_NETLAB_BACKEND", raising=False)
    problem = lab._check_requirements()
    assert problem is not None
    assert "conntrack" in problem and "nft or iptables" in problem and "apt-get install" in problem


@pytest.mark.parametrize(("ci", "outcome"), [(None, "skip"), ("true", "fail"), ("false", "skip")])
def test_skip_locally_fail_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None, outcome: str) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(netlab_conftest, "requirements_problem", lambda: "the NAT lab needs conntrack")
    expected = pytest.fail.Exception if outcome == "fail" else pytest.skip.Exception
    with pytest.raises(expected, match="netlab: the NAT lab needs conntrack"):
        netlab_conftest.require_netlab()


def test_rulesets_match_the_variants() -> None:
    """The firewall rules each variant asks for (checked without building anything)."""
    built = {v: lab.NetLab(v, backend="nft", prefix="p2l0x0-") for v in lab.ALL_VARIANTS}
    a, b, c, d = (built[v] for v in lab.ALL_VARIANTS)
    assert "drop" in lab.nft_ruleset(a.home_a) and "fully-random" not in lab.nft_ruleset(a.home_b)
    assert "drop" not in lab.nft_ruleset(b.home_a) and "masquerade" in lab.nft_ruleset(b.home_b)
    assert "fully-random" not in lab.nft_ruleset(c.home_a) and "fully-random" in lab.nft_ruleset(c.home_b)
    assert all("fully-random" in lab.nft_ruleset(h) for h in d.homes)
    assert "--random-fully" in lab.iptables_ruleset(d.home_a) and "DROP" in lab.iptables_ruleset(d.home_a)
    assert "DROP" not in lab.iptables_ruleset(b.home_a)
    for v in lab.ALL_VARIANTS:
        addresses = [built[v].board_ip, *(x for h in built[v].homes for x in (h.public_ip, h.router_lan_ip, h.host_ip))]
        assert all(x.startswith(("192.0.2.", "198.51.100.", "203.0.113.")) for x in addresses)
