"""Ctrl-C during any solver: a warning, and a usable model with the best weights seen.

The interrupt is simulated by raising KeyboardInterrupt where a real one would
surface: inside the objective (a signal arrives while Python code runs), after a
few evaluations or iterations. A real SIGINT, sent from a timer thread, checks
that long nogil kernels (Levenberg-Marquardt's accumulation, the dense
Kronecker-sum matrices) stop within a block of rows.
"""
import contextlib
import signal
import threading
import time
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits

import cbackprop as cb
from cbackprop import _kfac, _problem

SOLVERS = ["lbfgs", "lm", "hessian-free", "newton", "kfac", "adam", "sgd"]


def _digits(n=120):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


@pytest.fixture
def interrupt_after(monkeypatch):
    """Make the n-th loss-and-gradient evaluation raise KeyboardInterrupt:
    of a prepared problem, or of K-FAC's batch state (its fused kernel; the
    loads without a gradient, for the factors of the burn-in or after a
    rejected trial, are not evaluations of the objective)."""
    def arm(n):
        calls = [0]

        def count():
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt

        real_problem, real_state = _problem.Problem.loss_grad, _kfac._BatchState.load

        def loss_grad(self, theta, out=None):
            count()
            return real_problem(self, theta, out)

        def load(self, theta, batch, grad=None):
            if grad is not None:
                count()
            return real_state(self, theta, batch, grad)
        monkeypatch.setattr(_problem.Problem, "loss_grad", loss_grad)
        monkeypatch.setattr(_kfac._BatchState, "load", load)
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


# ---------------------------------------------------------------- real signals
# One LM iteration on these rows (20-90-1, P = 1981) takes about 1.5 s on a
# quiet core: the signal, sent after SIGNAL_DELAY, lands in the first
# accumulation; a block of rows takes well under 0.1 s.
SIGNAL_DELAY = 0.3
LATENCY = 1.0


@pytest.fixture(scope="module")
def long_problem():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30000, 20))
    return X, np.tanh(X[:, :3].sum(axis=1)) + 0.1 * rng.standard_normal(30000)


@contextlib.contextmanager
def sigint_after(delay=SIGNAL_DELAY):
    """Send SIGINT to the main thread ``delay`` seconds after entering, from a
    timer thread; yields a dict whose "sent" is then the time it was sent.
    Python's default handling (KeyboardInterrupt) applies inside the block;
    a signal handled after it is ignored, so that a late one cannot end the
    session."""
    state = {"armed": True, "sent": None}

    def handler(signum, frame):
        if state["armed"]:
            raise KeyboardInterrupt

    def send():
        state["sent"] = time.perf_counter()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, handler)
    timer = threading.Timer(delay, send)
    timer.start()
    try:
        yield state
    finally:
        timer.cancel()
        timer.join()
        state["armed"] = False
        signal.signal(signal.SIGINT, previous)  # runs the pending handlers first


def _latency(state):
    assert state["sent"] is not None, "the signal was not sent"
    return time.perf_counter() - state["sent"]


def test_sigint_inside_lm_accumulation(long_problem):
    X, y = long_problem
    reg = cb.MLPRegressor(hidden_layer_sizes=(90,), activation="tanh", solver="lm",
                          max_iter=20, random_state=0)
    with pytest.warns(UserWarning, match="Training interrupted by user"), \
            sigint_after() as state:
        reg.fit(X, y)
    assert _latency(state) < LATENCY
    # Interrupted in the first accumulation: the starting weights, rated.
    assert reg.n_iter_ == 0 and reg.loss_curve_ == []
    start = reg.network_.init_params(np.random.RandomState(0))
    np.testing.assert_array_equal(reg.theta_, start)
    assert reg.loss_ == reg.network_.loss(reg.theta_, X, y)
    assert reg.predict(X[:5]).shape == (5,)


@pytest.mark.parametrize("method", ["ggn", "block_hessian", "hessian"])
def test_sigint_inside_dense_curvature(method, long_problem):
    X, y = long_problem
    net = cb.Network([20, 90, 1], activation="tanh")
    theta = net.init_params(0)
    with pytest.raises(KeyboardInterrupt), sigint_after() as state:
        getattr(net, method)(theta, X, y)
    assert _latency(state) < LATENCY


def test_lm_function_interrupted_keeps_theta0(long_problem):
    """The exception leaves cbackprop.optimize.levenberg_marquardt; theta0 is
    untouched (the loop works on a copy)."""
    X, y = long_problem
    net = cb.Network([20, 90, 1], activation="tanh")
    theta0 = net.init_params(0)
    kept = theta0.copy()
    with pytest.raises(KeyboardInterrupt), sigint_after() as state:
        cb.optimize.levenberg_marquardt(net, theta0, X, y, max_iter=20)
    assert _latency(state) < LATENCY
    np.testing.assert_array_equal(theta0, kept)


def test_sigint_inside_an_adam_epoch():
    """One epoch of seconds (a single nogil call): the signal is handled
    between its batches, and the fitted model is usable."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60000, 40))
    y = (X[:, 0] > 0).astype(int)
    clf = cb.MLPClassifier(hidden_layer_sizes=(512, 512), batch_size=64, max_iter=3,
                           random_state=0)
    with pytest.warns(UserWarning, match="Training interrupted by user"), \
            sigint_after() as state:
        clf.fit(X, y)
    assert _latency(state) < LATENCY
    assert clf.predict(X[:5]).shape == (5,)


def test_sigint_inside_the_compiled_lbfgs(long_problem):
    """The compiled L-BFGS runs its iterations in one nogil call without a
    callback: the signal is handled between iterations."""
    X, y = long_problem
    net = cb.Network([20, 90, 1], activation="tanh")
    theta0 = net.init_params(0)
    with pytest.raises(KeyboardInterrupt), sigint_after() as state:
        cb.optimize.lbfgs(net, theta0, X, y, max_iter=100000, gtol=0.0, ftol=0.0)
    assert _latency(state) < LATENCY
