"""The joblib backend: ``joblib.Parallel`` and scikit-learn's ``n_jobs`` on the cluster.

A subprocess per test (the embedded cluster with two slots), so that the backend's own
start of the runtime is what is tested. Skipped with the reason when joblib or
scikit-learn is missing (``pip install -e '.[test]'`` installs both).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .procs import ROOT, run_python

pytestmark = pytest.mark.timeout(150)

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")


def test_parallel_runs_on_the_cluster_and_n_jobs_minus_one_is_its_cpus(tmp_path: Path) -> None:
    code = """
import json, os
import joblib
import p2prt, p2prt.joblib

def where(i):
    return i * i, os.getpid()

p2prt.init(num_cpus=2)
backend = p2prt.joblib.P2prtBackend()
with joblib.parallel_backend("p2prt"):
    out = joblib.Parallel(n_jobs=-1)(joblib.delayed(where)(i) for i in range(40))
print(json.dumps({"values": [v for v, _ in out], "here": os.getpid() in {p for _, p in out},
                  "n_jobs": backend.effective_n_jobs(-1), "minus_two": backend.effective_n_jobs(-2)}))
p2prt.shutdown()
"""
    res = run_python(code, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["values"] == [i * i for i in range(40)]
    assert not report["here"]  # every call ran in a p2prt executor, none in this process
    assert report["n_jobs"] == 2  # the embedded worker's two slots
    assert report["minus_two"] == 2  # one less, but never 1 (joblib would then run here)


def test_cross_val_score_matches_the_sequential_scores(tmp_path: Path) -> None:
    code = """
import json
import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
import p2prt, p2prt.joblib

X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=500)
sequential = cross_val_score(model, X, y, cv=5, n_jobs=1).tolist()
with joblib.parallel_backend("p2prt"):
    parallel = cross_val_score(model, X, y, cv=5, n_jobs=-1).tolist()
print(json.dumps({"sequential": sequential, "parallel": parallel, "running": p2prt.is_initialized()}))
p2prt.shutdown()
"""
    res = run_python(code, cwd=tmp_path, timeout=140)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["parallel"] == report["sequential"] and len(report["parallel"]) == 5
    assert report["running"]  # the backend started the embedded cluster and left it running


def test_the_example_runs_as_written(tmp_path: Path) -> None:
    res = run_python(Path(ROOT, "examples", "sklearn_cross_val.py").read_text(), cwd=tmp_path, timeout=140)
    assert res.returncode == 0, res.stderr
    assert "10-fold accuracy on the digits: 0.9" in res.stdout
