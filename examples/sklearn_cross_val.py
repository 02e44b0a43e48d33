"""scikit-learn's cross-validation on a p2prt cluster through the joblib backend.

    python examples/sklearn_cross_val.py                  # the embedded local cluster
    python examples/sklearn_cross_val.py alice/friends    # a shared cluster (p2prt.init's lookup)

Needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

import sys

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.svm import SVC

import p2prt
import p2prt.joblib  # noqa: F401  (registers the joblib backend "p2prt")


def main() -> None:
    p2prt.init(sys.argv[1] if len(sys.argv) > 1 else None)
    X, y = load_digits(return_X_y=True)
    model = SVC(gamma=0.001)
    with joblib.parallel_backend("p2prt"):
        scores = cross_val_score(model, X, y, cv=10, n_jobs=-1)
    print(f"10-fold accuracy on the digits: {scores.mean():.3f} (+/- {scores.std():.3f})")
    p2prt.shutdown()


if __name__ == "__main__":
    main()
