"""Fixtures for the runtime tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import p2prt

_SCRUBBED = ("XDG_CONFIG_HOME", "P2PRT_KEY_PASSPHRASE", "P2PRT_USER", "P2PRT_BOARD", "P2PRT_KEY", "P2PRT_CLUSTER",
             "SSH_AUTH_SOCK")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[p2prt.ClusterInfo]:
    """The module's embedded cluster with two slots, started with a fake HOME."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for name in _SCRUBBED:
            mp.delenv(name, raising=False)
        info = p2prt.init(num_cpus=2)
    try:
        yield info
    finally:
        p2prt.shutdown()
