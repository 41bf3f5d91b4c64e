"""MLPClassifier / MLPRegressor with solver='lm', 'hessian-free', 'newton', 'kfac'."""
import functools
import pickle
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils.estimator_checks import parametrize_with_checks

from cbackprop import MLPClassifier, MLPRegressor

SECOND_ORDER = ["lm", "hessian-free", "newton", "kfac"]


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return train_test_split(d.data / 16.0, d.target, random_state=0)


@pytest.fixture(scope="module")
def adam_accuracy(digits):
    X, Xt, y, yt = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((100,), solver="adam", batch_size=200, max_iter=200, tol=0.0,
                            n_iter_no_change=np.inf, random_state=0).fit(X, y)
    return clf.score(Xt, yt)


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


@pytest.mark.parametrize("solver, hidden, max_iter", [
    pytest.param("lm", (32,), 15, id="lm"),
    pytest.param("hessian-free", (100,), 40, id="hessian-free"),
    pytest.param("kfac", (100,), 40, id="kfac"),
])
def test_digits_reach_adam_accuracy_in_few_iterations(digits, adam_accuracy, solver, hidden,
                                                       max_iter):
    X, Xt, y, yt = digits
    clf = _fit(MLPClassifier(hidden, solver=solver, max_iter=max_iter, random_state=0), X, y)
    assert clf.n_iter_ <= max_iter
    assert clf.score(Xt, yt) >= adam_accuracy - 0.01


@pytest.mark.parametrize("solver", SECOND_ORDER)
def test_fitted_attributes(solver, digits):
    X, Xt, y, yt = digits
    clf = _fit(MLPClassifier((16,), solver=solver, max_iter=6, random_state=0), X[:300], y[:300])
    assert clf.n_iter_ == len(clf.loss_curve_) <= 6
    assert clf.loss_ == pytest.approx(clf.loss_curve_[-1])
    assert all(np.isfinite(clf.loss_curve_))
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.validation_scores_ is None and clf.best_loss_ == min(clf.loss_curve_)
    proba = clf.predict_proba(Xt)
    assert np.allclose(proba.sum(axis=1), 1.0)
    # the model's network reproduces predict_proba
    assert np.allclose(clf.network_.predict(clf.theta_, Xt), proba)


@pytest.mark.parametrize("solver", SECOND_ORDER)
def test_regression_sin(solver):
    x = np.linspace(-3, 3, 200)[:, None]
    reg = _fit(MLPRegressor(hidden_layer_sizes=(10,), activation="tanh", solver=solver,
                            alpha=0.0, max_iter=100, tol=1e-12, random_state=0), x, np.sin(x[:, 0]))
    mse = np.mean((reg.predict(x) - np.sin(x[:, 0])) ** 2)
    assert mse < (1e-5 if solver == "lm" else 1e-2)


def test_verbose_prints_loss_and_damping(capsys, digits):
    X, _, y, _ = digits
    _fit(MLPClassifier((8,), solver="lm", max_iter=2, verbose=True, random_state=0), X[:100], y[:100])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Iteration 1, loss = ") and "mu = " in out[0]


@pytest.mark.parametrize("solver", ["lm", "hessian-free"])
def test_early_stopping_keeps_best_validation_weights(solver, digits):
    X, _, y, _ = digits
    clf = _fit(MLPClassifier((16,), solver=solver, max_iter=30, early_stopping=True,
                             n_iter_no_change=3, random_state=0), X, y)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    # the kept weights are the best-scoring ones: rescoring the split agrees
    assert clf.n_iter_ < 30 or clf.best_validation_score_ >= clf.validation_scores_[-1]


def test_warm_start_continues(digits):
    X, _, y, _ = digits
    clf = _fit(MLPClassifier((16,), solver="lm", max_iter=3, warm_start=True, random_state=0),
               X[:300], y[:300])
    first = list(clf.loss_curve_)
    _fit(clf, X[:300], y[:300])
    assert clf.loss_curve_[:3] == first and len(clf.loss_curve_) == 6
    assert clf.loss_curve_[-1] <= first[-1]


def test_partial_fit_unavailable():
    assert not hasattr(MLPClassifier(solver="lm"), "partial_fit")


def test_pickle_round_trip(digits):
    X, Xt, y, _ = digits
    clf = _fit(MLPClassifier((8,), solver="newton", max_iter=3, random_state=0), X[:200], y[:200])
    again = pickle.loads(pickle.dumps(clf))
    assert np.array_equal(again.predict_proba(Xt), clf.predict_proba(Xt))


def test_lm_too_large_suggests_hessian_free(monkeypatch, digits):
    from cbackprop import _assembly
    monkeypatch.setattr(_assembly, "DEFAULT_MAX_BYTES", 1000)
    X, _, y, _ = digits
    with pytest.raises(ValueError, match="bytes.*hessian-free"):
        MLPClassifier((8,), solver="lm", max_iter=2).fit(X[:50], y[:50])


@parametrize_with_checks([
    MLPClassifier((5,), solver="lm", max_iter=5, random_state=0),
    MLPRegressor(hidden_layer_sizes=(5,), solver="hessian-free", max_iter=5, random_state=0),
    MLPRegressor(hidden_layer_sizes=(5,), solver="newton", max_iter=5, random_state=0),
    MLPClassifier((5,), solver="kfac", max_iter=5, random_state=0),
    MLPRegressor(hidden_layer_sizes=(5,), solver="kfac", max_iter=30, random_state=0),
])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_kfac_mini_batches_count_epochs(digits):
    """batch_size rows per K-FAC step: n_iter_ and loss_curve_ count epochs, as for adam."""
    X, Xt, y, yt = digits
    clf = _fit(MLPClassifier((32,), solver="kfac", batch_size=128, max_iter=8,
                             random_state=0), X, y)
    assert clf.n_iter_ == len(clf.loss_curve_) == 8
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(Xt, yt) > 0.9


# ---------------------------------------------------------------- solver_options
@pytest.mark.parametrize("solver, options", [
    pytest.param("lm", {"mu": 0.5, "mu_dec": 0.5, "accumulation": "rows"}, id="lm"),
    pytest.param("hessian-free", {"cg_max_iter": 1, "damping": 3.0}, id="hessian-free"),
    pytest.param("kfac", {"damping": 7.0, "inverse_every": 2}, id="kfac"),
])
def test_solver_options_reach_the_solver(monkeypatch, digits, solver, options):
    from cbackprop import optimize
    calls = []
    name = {"lm": "levenberg_marquardt", "hessian-free": "hessian_free"}.get(solver, solver)
    original = getattr(optimize, name)

    @functools.wraps(original)   # the signature tells the allowed keys
    def spy(*args, **kwargs):
        calls.append((kwargs, original(*args, **kwargs)))
        return calls[-1][1]
    monkeypatch.setattr(optimize, name, spy)
    X, _, y, _ = digits
    given = dict(options)
    _fit(MLPClassifier((4,), solver=solver, max_iter=2, solver_options=given, random_state=0),
         X[:60], y[:60])
    assert given == options                      # the user's dict is not modified
    kwargs, res = calls[-1]
    assert {k: kwargs[k] for k in options} == options
    assert kwargs["max_iter"] == 2 and kwargs["gtol"] == 1e-4
    if solver == "hessian-free":                 # one CG step per outer iteration
        assert res.ncg == res.nit == 2


def test_newton_solver_options_reach_scipy(monkeypatch, digits):
    import scipy.optimize
    from cbackprop import optimize
    seen = {}
    original = scipy.optimize.minimize

    def spy(*args, **kwargs):
        seen.update(method=kwargs["method"], **kwargs["options"])
        return original(*args, **kwargs)
    monkeypatch.setattr(optimize, "minimize", spy)
    X, _, y, _ = digits
    _fit(MLPClassifier((4,), solver="newton", max_iter=2, random_state=0,
                       solver_options={"method": "trust-ncg", "eta": 0.1}), X[:60], y[:60])
    assert seen["method"] == "trust-ncg" and seen["eta"] == 0.1


@pytest.mark.parametrize("solver, options, match", [
    pytest.param("lm", {"damping": 1.0}, r"unknown.*'damping'.*solver='lm'.*'mu_dec'",
                 id="lm-unknown"),
    pytest.param("hessian-free", {"mu": 1.0}, r"unknown.*'mu'.*'cg_max_iter'", id="hf-unknown"),
    pytest.param("newton", {"max_iter": 3}, r"'max_iter'.*set by the estimator.*'max_iter'",
                 id="newton-max_iter"),
    pytest.param("lm", {"gtol": 1e-3}, r"'gtol'.*set by the estimator.*'tol'", id="lm-gtol"),
    pytest.param("kfac", {"callback": print}, r"'callback'.*set by the estimator",
                 id="kfac-callback"),
    pytest.param("kfac", {"batch_size": 10}, r"'batch_size'.*set by the estimator",
                 id="kfac-batch_size"),
    pytest.param("adam", {"mu": 1.0}, r"solver='adam' takes none", id="adam"),
    pytest.param("lbfgs", {"maxls": 5}, r"solver='lbfgs' takes none", id="lbfgs"),
])
def test_solver_options_refused(digits, solver, options, match):
    X, _, y, _ = digits
    with pytest.raises(ValueError, match=match):
        MLPClassifier((4,), solver=solver, max_iter=2, solver_options=options).fit(X[:40], y[:40])


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_empty_solver_options_accepted_by_first_order_solvers(digits, solver):
    X, _, y, _ = digits
    _fit(MLPClassifier((4,), solver=solver, max_iter=2, solver_options={}), X[:40], y[:40])


def test_solver_options_documented():
    from cbackprop._estimator_base import solver_option_names
    doc = MLPRegressor.__doc__.split("solver_options :")[1].split("Attributes")[0]
    for solver in SECOND_ORDER:
        for key in solver_option_names(solver):
            assert f"``{key}``" in doc, (solver, key)


def test_solver_options_refuses_non_dict():
    with pytest.raises(ValueError, match="solver_options"):
        MLPRegressor(solver="lm", solver_options=[("mu", 1.0)]).fit([[0.0], [1.0]], [0.0, 1.0])


# ---------------------------------------------------------------- LM cost check
def test_lm_iteration_cost_counts_accumulation_and_cholesky(monkeypatch):
    from cbackprop import Network, optimize
    monkeypatch.setattr(optimize, "_gemm_rate", lambda: 1e6)
    net = Network([3, 4, 2], activation="tanh", loss="log_loss")
    P = net.n_params                     # 26 < 100: 'auto' accumulates rows
    seconds, nbytes = optimize.lm_iteration_cost(net, 50)
    assert seconds == pytest.approx((50 * 2 * P * P / 2 + P ** 3 / 3) / 1e6)
    assert nbytes == P * P * 8
    kron = optimize._accumulation_macs(net.layer_sizes)[1]
    assert optimize.lm_iteration_cost(net, 50, "kronecker")[0] == pytest.approx(
        (50 * kron + P ** 3 / 3) / 1e6)


def test_gemm_rate_is_measured_once():
    from cbackprop import optimize
    rate = optimize._gemm_rate()
    assert rate > 0 and optimize._gemm_rate() is rate


@pytest.mark.parametrize("rate, warns", [pytest.param(1e3, True, id="slow"),
                                         pytest.param(1e15, False, id="fast")])
def test_lm_warns_when_an_iteration_is_slow(monkeypatch, digits, rate, warns):
    from cbackprop import optimize
    monkeypatch.setattr(optimize, "_gemm_rate", lambda: rate)
    X, _, y, _ = digits
    clf = MLPClassifier((4,), solver="lm", max_iter=1, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(X[:60], y[:60])
    slow = [w for w in caught if issubclass(w.category, optimize.SlowIterationWarning)]
    assert len(slow) == int(warns)
    if warns:
        P = clf.network_.n_params
        message = str(slow[0].message)
        assert f"{P} parameters" in message and " s and a " in message
        assert "hessian-free" in message and "kfac" in message


# ---------------------------------------------------------------- LM schedule
def _lm_calls(monkeypatch):
    from cbackprop import optimize
    calls = []
    original = optimize.levenberg_marquardt

    @functools.wraps(original)
    def spy(*args, **kwargs):
        calls.append((kwargs, original(*args, **kwargs)))
        return calls[-1][1]
    monkeypatch.setattr(optimize, "levenberg_marquardt", spy)
    return calls


@pytest.mark.parametrize("options, expected", [
    pytest.param(None, (0.5, 4.0), id="estimator-default"),
    pytest.param({"mu_dec": 0.1, "mu_inc": 10.0}, (0.1, 10.0), id="trainlm-by-options"),
])
def test_lm_schedule_of_the_estimator(monkeypatch, options, expected):
    calls = _lm_calls(monkeypatch)
    x = np.linspace(-3, 3, 80)[:, None]
    _fit(MLPRegressor(hidden_layer_sizes=(6,), activation="tanh", solver="lm", max_iter=40,
                      tol=0.0, random_state=0, solver_options=options), x, np.sin(x[:, 0]))
    kwargs, res = calls[-1]
    assert (kwargs["mu_dec"], kwargs["mu_inc"]) == expected
    dec, inc = expected
    # mu = 1e-3 dec^accepted inc^raised, each rejected trial loss raising it
    # once (a failed Cholesky raises it with no loss): what the schedule costs
    raised = (np.log(res.mu / 1e-3) + res.nit * np.log(1 / dec)) / np.log(inc)
    assert res.nfev - 1 - res.nit <= raised + 1e-6


def test_kfac_mini_batches_stop_without_improvement(digits):
    """scikit-learn's rule on the epoch losses: more than n_iter_no_change epochs
    without an improvement of tol end the fit, as for adam."""
    X, Xt, y, yt = digits
    clf = _fit(MLPClassifier((16,), solver="kfac", batch_size=128, max_iter=50, tol=10.0,
                             n_iter_no_change=2, random_state=0), X, y)
    # the first epoch sets best_loss_; three more without improvement: 3 > 2
    assert clf.n_iter_ == len(clf.loss_curve_) == 4
