"""Ctrl-C during any solver: a warning, and a usable model with the best weights seen.

The interrupt is simulated by raising KeyboardInterrupt where a real one would
surface: inside the objective (a signal arrives while Python code runs), after a
few evaluations or iterations.
"""
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

import cbackprop as cb
from cbackprop import _problem

SOLVERS = ["lbfgs", "lm", "hessian-free", "newton", "adam", "sgd"]


def _digits(n=120):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


@pytest.fixture
def interrupt_after(monkeypatch):
    """Make the n-th loss-and-gradient evaluation raise KeyboardInterrupt."""
    def arm(n):
        real = _problem.Problem.loss_grad
        calls = [0]

        def loss_grad(self, theta, out=None):
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt
            return real(self, theta, out)
        monkeypatch.setattr(_problem.Problem, "loss_grad", loss_grad)
        return calls
    return arm


@pytest.mark.parametrize("solver", [s for s in SOLVERS if s not in ("adam", "sgd", "lm")])
def test_interrupt_keeps_the_best_weights_seen(solver, interrupt_after):
    X, y = _digits()
    clf = cb.MLPClassifier((8,), solver=solver, max_iter=50, random_state=0)
    calls = interrupt_after(6)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf.fit(X, y)
    assert calls[0] == 6
    assert np.isfinite(clf.loss_) and clf.n_iter_ >= 1
    # the model is fitted and its loss_ is the loss of the weights it keeps
    Y = clf.network_targets(y) if hasattr(clf, "network_targets") else np.eye(10)[y]
    assert clf.network_.loss(clf.theta_, X, Y) == pytest.approx(clf.loss_, rel=1e-12)
    assert clf.predict(X).shape == (X.shape[0],)


@pytest.fixture
def interrupt_at_record(monkeypatch):
    """Raise KeyboardInterrupt right after the n-th epoch or iteration is
    recorded (where the solvers' loops hand control back to Python)."""
    def arm(n):
        real = cb.MLPClassifier._record
        seen = []

        def record(self, loss, *args):
            seen.append(loss)
            real(self, loss, *args)
            if len(seen) == n:
                raise KeyboardInterrupt
        monkeypatch.setattr(cb.MLPClassifier, "_record", record)
        return seen
    return arm


def test_interrupt_during_lm_iterations(interrupt_at_record):
    """LM's loop runs in one kernel call; an interrupt surfaces at the callback
    between iterations."""
    X, y = _digits()
    clf = cb.MLPClassifier((6,), solver="lm", max_iter=50, random_state=0)
    seen = interrupt_at_record(3)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf.fit(X, y)
    assert clf.n_iter_ == 3 and clf.loss_ == min(seen)
    assert clf.predict(X).shape == (X.shape[0],)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_interrupt_stochastic(solver, interrupt_at_record):
    X, y = _digits()
    clf = cb.MLPClassifier((8,), solver=solver, max_iter=50, random_state=0)
    interrupt_at_record(2)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf.fit(X, y)
    assert clf.n_iter_ == 2 and np.isfinite(clf.coefs_[0]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.predict(X)
