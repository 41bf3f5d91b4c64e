"""cbackprop.MLPClassifier / MLPRegressor against scikit-learn's estimators.

For the same random_state the drop-ins must draw the same initial weights,
the same epoch permutations and the same early-stopping split, and so give
the same numbers as ``sklearn.neural_network`` (up to rounding).
"""
import contextlib
import io
import pickle
import os
import re
import threading
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn import neural_network as sknn
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cbackprop as cb
import common
from cbackprop import MLPClassifier, MLPRegressor
from common import assert_close

import reference

SMALL = dict(hidden_layer_sizes=(12, 6))
RTOL = common.rtol(np.float64, "reference")  # float64 agreement with scikit-learn


_data = reference.estimator_data


def _pair(kind):
    return ((sknn.MLPRegressor, MLPRegressor) if kind in ("regression", "multioutput", "poisson")
            else (sknn.MLPClassifier, MLPClassifier))


def _fit_both(kind, fit_kw=None, **params):
    X, y = _data(kind)
    params = {**SMALL, "random_state": 0, **params}
    if kind == "poisson":
        params["loss"] = "poisson"
    SK, CB = _pair(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SK(**params).fit(X, y, **(fit_kw or {}))
        ours = CB(**params).fit(X, y, **(fit_kw or {}))
    return ref, ours, X, y


def _assert_same_params(ref, ours, rtol=RTOL):
    assert len(ref.coefs_) == len(ours.coefs_)
    for a, b in zip(ref.coefs_ + ref.intercepts_, ours.coefs_ + ours.intercepts_):
        assert a.shape == b.shape
        assert_close(b, a, np.float64, "reference", factor=rtol / RTOL)


def _assert_same_fit(ref, ours, rtol=RTOL):
    _assert_same_params(ref, ours, rtol)
    for name in ("n_iter_", "t_", "n_layers_", "n_outputs_", "out_activation_",
                 "n_features_in_"):
        assert getattr(ours, name) == getattr(ref, name), name
    assert_allclose(ours.loss_, ref.loss_, rtol=rtol)
    if hasattr(ref, "loss_curve_"):
        assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=rtol)
        assert ours.best_loss_ == pytest.approx(ref.best_loss_, rel=rtol) \
            if ref.best_loss_ is not None else ours.best_loss_ is None


# ---------------------------------------------------------------- same numbers
@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_same_initial_weights(activation):
    # A vanishing step leaves the initial weights bit for bit.
    ref, ours, _, _ = _fit_both("multiclass", solver="sgd", momentum=0, max_iter=1,
                                learning_rate_init=1e-300, activation=activation)
    for a, b in zip(ref.coefs_ + ref.intercepts_, ours.coefs_ + ours.intercepts_):
        assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression",
                                  "poisson"])
def test_one_sgd_epoch_matches_sklearn(kind):
    ref, ours, _, _ = _fit_both(kind, solver="sgd", shuffle=False, momentum=0, max_iter=1,
                                learning_rate_init=0.05, batch_size=25)
    _assert_same_fit(ref, ours)


@pytest.mark.parametrize("params", [
    dict(solver="sgd"),
    dict(solver="sgd", nesterovs_momentum=False, momentum=0.5),
    dict(solver="sgd", momentum=0),
    dict(solver="adam"),
    dict(solver="adam", batch_size=32, beta_1=0.8, beta_2=0.99, epsilon=1e-6),
], ids=["sgd-nesterov", "sgd-momentum", "sgd-plain", "adam", "adam-options"])
@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression",
                                  "poisson"])
def test_loss_curve_matches_sklearn(kind, params):
    ref, ours, X, _ = _fit_both(kind, max_iter=8, learning_rate_init=0.01, alpha=1e-3,
                                **params)
    _assert_same_fit(ref, ours, rtol=1e-9)
    assert_allclose(ours.predict(X), ref.predict(X), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n_features, hidden, partials", [
    pytest.param(6, (12, 6), 2, id="row-block-gradients"),
    pytest.param(150, (20,), 1, id="parameter-tasks"),
])
def test_both_epoch_gradient_schemes_match_sklearn(n_features, hidden, partials):
    # Batches of 120 rows are two row blocks (with two processors or more).
    # A small network sums the blocks' gradients; one with more parameters
    # than the batch has activations cuts the gradient into parameter tasks.
    from sklearn.datasets import make_classification
    from cbackprop import _train
    X, y = make_classification(120, n_features, n_informative=4, n_redundant=0, n_classes=3,
                               random_state=0)
    params = dict(hidden_layer_sizes=hidden, solver="adam", max_iter=6, alpha=1e-3,
                  learning_rate_init=0.01, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = sknn.MLPClassifier(**params).fit(X, y)
        ours = MLPClassifier(**params).fit(X, y)
    _assert_same_fit(ref, ours, rtol=1e-9)
    net = ours.network_
    extra = net._scratch(_train.EpochWorkspace, 120, 1).layout["first.part"][1]
    assert extra == net.n_params * ((partials if os.cpu_count() >= 2 else 1) - 1)


@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
def test_sklearn_activations_match(activation):
    ref, ours, _, _ = _fit_both("multiclass", solver="sgd", max_iter=5,
                                learning_rate_init=0.05, activation=activation)
    _assert_same_fit(ref, ours, rtol=1e-9)


def test_multioutput_regression_trajectory_matches():
    # The weights follow scikit-learn's; only the reported loss differs: the
    # data term is not divided by n_outputs here (see the docstring).
    ref, ours, X, y = _fit_both("multioutput", solver="adam", max_iter=5, alpha=0.0,
                                learning_rate_init=0.01, tol=0, n_iter_no_change=np.inf)
    _assert_same_params(ref, ours, rtol=1e-9)
    assert_allclose(ours.loss_curve_, np.array(ref.loss_curve_) * y.shape[1], rtol=1e-9)
    assert ours.predict(X).shape == y.shape


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel", "regression",
                                  "poisson"])
def test_lbfgs_matches_sklearn(kind):
    # Rounding differences grow along the L-BFGS path (a line-search decision
    # can flip after ~25 iterations on the multilabel problem): few iterations.
    ref, ours, X, _ = _fit_both(kind, solver="lbfgs", max_iter=15, alpha=1e-3)
    assert ours.n_iter_ == ref.n_iter_
    _assert_same_params(ref, ours, rtol=1e-7)
    assert_allclose(ours.loss_, ref.loss_, rtol=1e-9)
    assert not hasattr(ours, "loss_curve_") and not hasattr(ours, "best_loss_")


def test_lbfgs_row_chunks_give_the_same_fit(monkeypatch):
    # Large N: the full-batch objective runs in row chunks (bounded memory).
    import cbackprop._problem as problem

    X, y = _data("multiclass", n=300)
    sw = np.random.RandomState(3).uniform(0.5, 2, 300)
    kw = dict(solver="lbfgs", max_iter=15, alpha=0.1, random_state=0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        monkeypatch.setattr(problem, "CHUNK_ENTRIES", 1)   # chunks of 256 rows
        chunked = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        ref = sknn.MLPClassifier(**kw).fit(X, y, sample_weight=sw)
    _assert_same_params(whole, chunked, rtol=1e-8)
    _assert_same_params(ref, chunked, rtol=1e-7)


def test_lbfgs_max_fun_and_convergence_warning():
    X, y = _data("multiclass")
    with pytest.warns(ConvergenceWarning, match="lbfgs failed to converge"):
        ours = MLPClassifier(solver="lbfgs", max_fun=5, random_state=0, **SMALL).fit(X, y)
    with pytest.warns(ConvergenceWarning):
        ref = sknn.MLPClassifier(solver="lbfgs", max_fun=5, random_state=0, **SMALL).fit(X, y)
    assert ours.n_iter_ == ref.n_iter_
    _assert_same_params(ref, ours, rtol=1e-9)


def test_lbfgs_objective_is_pure(monkeypatch):
    # Evaluating the objective at other points must not touch the estimator.
    import cbackprop._estimator_base as base

    X, y = _data("multiclass")
    est = MLPClassifier(solver="lbfgs", max_iter=5, random_state=0, **SMALL)
    real_minimize = base.scipy.optimize.minimize
    seen = {}

    def spy(fun, x0, **kw):
        before = [c.copy() for c in est.coefs_ + est.intercepts_]
        f0, g0 = fun(x0)
        for scale in (1.0, 10.0):
            fun(x0 + scale * np.random.RandomState(0).standard_normal(x0.shape))
        for a, b in zip(before, est.coefs_ + est.intercepts_):
            assert_array_equal(a, b)
        f1, g1 = fun(x0)
        assert f1 == f0 and np.array_equal(g1, g0) and g1 is not g0
        assert g0.dtype == np.float64
        seen["called"] = True
        return real_minimize(fun, x0, **kw)

    monkeypatch.setattr(base.scipy.optimize, "minimize", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
    assert seen["called"]


@pytest.mark.parametrize("kind,solver", [("multiclass", "adam"), ("binary", "sgd"),
                                         ("multilabel", "adam"), ("regression", "sgd")])
def test_early_stopping_matches_sklearn(kind, solver):
    ref, ours, X, _ = _fit_both(kind, solver=solver, early_stopping=True, max_iter=300,
                                learning_rate_init=0.01, n_iter_no_change=4)
    _assert_same_fit(ref, ours, rtol=1e-9)
    assert ref.n_iter_ < 300  # it did stop early
    assert_allclose(ours.validation_scores_, ref.validation_scores_, rtol=1e-12)
    assert ours.best_validation_score_ == pytest.approx(ref.best_validation_score_)
    assert ours.best_loss_ is None


def test_early_stopping_with_sample_weight_matches_sklearn():
    sw = np.random.RandomState(1).uniform(0.2, 2.0, 120)
    ref, ours, _, _ = _fit_both("multiclass", fit_kw=dict(sample_weight=sw), solver="adam",
                                early_stopping=True, max_iter=60, learning_rate_init=0.01)
    _assert_same_fit(ref, ours, rtol=1e-9)
    assert_allclose(ours.validation_scores_, ref.validation_scores_)


@pytest.mark.parametrize("params", [
    dict(learning_rate="invscaling", learning_rate_init=0.2, power_t=0.3),
    dict(learning_rate="adaptive", learning_rate_init=0.2, tol=1e-2, n_iter_no_change=2,
         max_iter=150),
])
def test_learning_rate_schedules_match_sklearn(params):
    params = {"max_iter": 15, **params}
    ref, ours, _, _ = _fit_both("multiclass", solver="sgd", **params)
    _assert_same_fit(ref, ours, rtol=1e-9)
    assert ours._optimizer.learning_rate == pytest.approx(ref._optimizer.learning_rate)
    if params["learning_rate"] == "adaptive":
        assert ref._optimizer.learning_rate < params["learning_rate_init"] / 5


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_sample_weight_matches_sklearn(solver):
    sw = np.random.RandomState(2).uniform(0, 3, 120)
    kw = dict(max_iter=6, learning_rate_init=0.01) if solver != "lbfgs" else dict(max_iter=20)
    ref, ours, _, _ = _fit_both("multiclass", fit_kw=dict(sample_weight=sw), solver=solver,
                                **kw)
    _assert_same_params(ref, ours, rtol=1e-7 if solver == "lbfgs" else RTOL)
    assert_allclose(ours.loss_, ref.loss_, rtol=1e-9)


def test_integer_sample_weight_equals_repetition_for_full_batch():
    X, y = _data("regression", n=40)
    sw = np.random.RandomState(0).randint(0, 4, 40)
    kw = dict(solver="lbfgs", max_iter=30, random_state=0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPRegressor(**kw).fit(X, y, sample_weight=sw)
        b = MLPRegressor(**kw).fit(np.repeat(X, sw, axis=0), np.repeat(y, sw))
    assert_allclose(a.predict(X), b.predict(X), rtol=1e-6, atol=1e-9)


def test_verbose_output_matches_sklearn():
    X, y = _data("binary")
    outs = []
    for cls in (sknn.MLPClassifier, MLPClassifier):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            cls(solver="sgd", verbose=True, early_stopping=True, max_iter=200,
                n_iter_no_change=3, random_state=0, **SMALL).fit(X, y)
        outs.append(buf.getvalue())
    assert outs[0] == outs[1]
    assert re.match(r"Iteration 1, loss = \d+\.\d{8}\nValidation score: ", outs[1])
    assert "Validation score did not improve" in outs[1]


def test_max_iter_convergence_warning_as_sklearn():
    X, y = _data("multiclass")
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        est = MLPClassifier(max_iter=3, random_state=0, **SMALL).fit(X, y)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3


# ---------------------------------------------------------------- incremental
def test_partial_fit_matches_sklearn():
    X, y = _data("multiclass")
    classes = np.unique(y)
    ref = sknn.MLPClassifier(solver="sgd", random_state=0, **SMALL)
    ours = MLPClassifier(solver="sgd", random_state=0, **SMALL)
    for start in range(0, 120, 40):
        sl = slice(start, start + 40)
        ref.partial_fit(X[sl], y[sl], classes=classes)
        ours.partial_fit(X[sl], y[sl], classes=classes)
    _assert_same_fit(ref, ours)
    assert_array_equal(ours.classes_, classes)


def test_partial_fit_regressor_and_adam_state():
    X, y = _data("regression")
    ref = sknn.MLPRegressor(solver="adam", random_state=0, learning_rate_init=0.01, **SMALL)
    ours = MLPRegressor(solver="adam", random_state=0, learning_rate_init=0.01, **SMALL)
    for _ in range(4):
        ref.partial_fit(X, y)
        ours.partial_fit(X, y)
    _assert_same_fit(ref, ours)
    assert ours._optimizer.t == ref._optimizer.t


def test_partial_fit_availability_and_errors():
    X, y = _data("multiclass")
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    with pytest.raises(ValueError, match="classes must be passed"):
        MLPClassifier(solver="sgd").partial_fit(X, y)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y.astype(float))
    est = MLPClassifier(solver="sgd", **SMALL).partial_fit(X[:20], y[:20], classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes not in"):
        est.partial_fit(X[:20], y[:20] + 5)


def test_warm_start_matches_sklearn():
    X, y = _data("multiclass")
    kw = dict(solver="adam", warm_start=True, max_iter=4, random_state=0, **SMALL)
    ref, ours = sknn.MLPClassifier(**kw), MLPClassifier(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in (ref, ours):
            est.fit(X, y)
            est.fit(X, y)
    assert len(ours.loss_curve_) == 8
    _assert_same_fit(ref, ours)
    with pytest.raises(ValueError, match="warm_start"):
        ours.fit(X, (y + 1) % 4)


# ---------------------------------------------------------------- targets, dtypes
def test_target_types_and_output_shapes():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for kind, out, n_out in [("binary", "logistic", 1), ("multiclass", "softmax", 3),
                                 ("multilabel", "logistic", 3), ("regression", "identity", 1),
                                 ("multioutput", "identity", 2), ("poisson", "exp", 1)]:
            X, y = _data(kind)
            est = _pair(kind)[1](max_iter=3, random_state=0,
                                 **({"loss": "poisson"} if kind == "poisson" else {})).fit(X, y)
            assert est.out_activation_ == out and est.n_outputs_ == n_out
            assert est.predict(X).shape == np.shape(y)
            if isinstance(est, MLPClassifier):
                proba = est.predict_proba(X)
                assert proba.shape == (len(y), max(2, n_out))
                assert_allclose(est.predict_log_proba(X), np.log(proba))
                assert set(np.unique(est.predict(X))) <= set(np.unique(y))
            if kind == "poisson":
                assert (est.predict(X) > 0).all()


def test_string_labels_and_score():
    X, y = _data("multiclass")
    labels = np.array(["ant", "bee", "cat"])[y]
    est = MLPClassifier(solver="lbfgs", random_state=0, max_iter=200, **SMALL).fit(X, labels)
    assert_array_equal(est.classes_, ["ant", "bee", "cat"])
    assert est.score(X, labels) > 0.9


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_float32_stays_float32(solver):
    X, y = _data("multiclass")
    X32 = X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(solver=solver, max_iter=20, random_state=0, **SMALL).fit(X32, y)
        est64 = MLPClassifier(solver=solver, max_iter=20, random_state=0, **SMALL).fit(X, y)
        reg = MLPRegressor(solver=solver, max_iter=5, random_state=0, **SMALL).fit(
            X32, X[:, 0].astype(np.float32))
    assert est.network_.dtype == np.float32 and est.theta_.dtype == np.float32
    assert all(c.dtype == np.float32 for c in est.coefs_ + est.intercepts_)
    assert est.predict_proba(X32).dtype == np.float32
    assert est.predict_proba(X).dtype == np.float32  # the model's dtype
    assert reg.predict(X32).dtype == np.float32
    assert est64.coefs_[0].dtype == np.float64
    assert MLPClassifier(max_iter=2, **SMALL).fit(X.astype(int), y).coefs_[0].dtype == np.float64
    # float32 training follows the float64 one closely.
    assert_allclose(est.loss_, est64.loss_, rtol=2e-3 if solver != "lbfgs" else 5e-2)


def test_float32_loss_curve_close_to_sklearn():
    X, y = _data("multiclass")
    kw = dict(solver="adam", max_iter=6, random_state=0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = sknn.MLPClassifier(**kw).fit(X.astype(np.float32), y)
        ours = MLPClassifier(**kw).fit(X.astype(np.float32), y)
    assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-5)


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("cls,kind,solver", [(MLPClassifier, "multiclass", "sgd"),
                                             (MLPClassifier, "binary", "adam"),
                                             (MLPRegressor, "regression", "sgd"),
                                             (MLPRegressor, "poisson", "adam")])
def test_divergence_warns_and_keeps_finite_predictions(cls, kind, solver):
    X, y = _data(kind)
    kw = {"loss": "poisson"} if kind == "poisson" else {}
    est = cls(solver=solver, learning_rate_init=1e6, max_iter=50, random_state=0, **kw)
    with pytest.warns(ConvergenceWarning, match="diverged.*learning_rate_init"):
        est.fit(X * 10, y)
    assert np.isfinite(est.theta_).all() and np.isfinite(est.loss_)
    assert np.isfinite(est.predict(X)).all()
    if hasattr(est, "predict_proba"):
        assert np.isfinite(est.predict_proba(X)).all()
    assert all(np.isfinite(est.loss_curve_))
    assert len(est.loss_curve_) == est.n_iter_ < 50


def test_divergence_in_partial_fit_restores_weights():
    X, y = _data("regression")
    est = MLPRegressor(solver="sgd", learning_rate_init=0.01, batch_size=10, random_state=0,
                       **SMALL)
    est.partial_fit(X, y)
    before = est.theta_.copy()
    est.set_params(learning_rate_init=1e8)
    est._optimizer.learning_rate = 1e8
    with pytest.warns(ConvergenceWarning, match="diverged"):
        est.partial_fit(X * 1e3, y)
    assert_array_equal(est.theta_, before)


def test_lbfgs_without_finite_loss_raises_clear_error():
    X, y = _data("poisson")
    with pytest.raises(ValueError, match="finite"):
        MLPRegressor(loss="poisson", solver="lbfgs", random_state=0).fit(X * 1e6, y)


@pytest.mark.parametrize("param,value", [
    ("solver", "newton-cg"), ("activation", "softmax"), ("hidden_layer_sizes", (0,)),
    ("hidden_layer_sizes", (10, 0)), ("hidden_layer_sizes", (10, -3)),
    ("hidden_layer_sizes", (2.5,)), ("learning_rate_init", 0.0), ("momentum", 1.5),
    ("learning_rate", "fast"), ("batch_size", 0), ("max_iter", 0), ("alpha", -1.0),
    ("validation_fraction", 1.0), ("beta_1", 1.0), ("n_iter_no_change", 0),
    ("max_fun", 0), ("epsilon", 0.0), ("tol", -1.0),
])
def test_bad_parameters_raise_value_error(param, value):
    X, y = _data("multiclass")
    for cls in (MLPClassifier, MLPRegressor):
        with pytest.raises(ValueError):
            cls(**{param: value}).fit(X, y)
    with pytest.raises(ValueError):
        MLPRegressor(loss="absolute_error").fit(X, y)
    with pytest.raises(ValueError, match="non-negative"):
        MLPRegressor(loss="poisson").fit(X, y - 5.0)


@pytest.mark.parametrize("activation", ["softplus", "swish", "mish"])
def test_new_activations_train(activation):
    # As well as scikit-learn's activations on the same problem (relu: adam
    # reaches 0.93, lbfgs 0.99).
    X, y = _data("multiclass", n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(activation=activation, solver="adam", learning_rate_init=0.01,
                            max_iter=200, random_state=0, **SMALL).fit(X, y)
        lb = MLPClassifier(activation=activation, solver="lbfgs", max_iter=200,
                           random_state=0, **SMALL).fit(X, y)
    assert est.loss_curve_[-1] < 0.2 * est.loss_curve_[0]
    assert est.score(X, y) > 0.83 and lb.score(X, y) > 0.95
    assert est.network_.activation == activation
    assert_allclose(est.loss_, est.network_.loss(est.theta_, X, np.eye(3)[y]), rtol=0.2)


# ---------------------------------------------------------------- API
def test_network_and_theta_describe_the_fitted_model():
    for kind in ("multiclass", "binary", "multilabel", "regression", "poisson"):
        X, y = _data(kind)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = _pair(kind)[1](max_iter=5, random_state=0, **SMALL,
                                 **({"loss": "poisson"} if kind == "poisson" else {})).fit(X, y)
        net, theta = est.network_, est.theta_
        assert isinstance(net, cb.Network)
        assert net.layer_sizes == (6, 12, 6, est.n_outputs_)
        assert net.alpha == est.alpha
        assert_array_equal(theta, net.pack(est.coefs_, est.intercepts_))
        assert all(np.shares_memory(c, theta) for c in est.coefs_ + est.intercepts_)
        out = net.predict(theta, X)
        if kind == "binary":
            assert_allclose(out, est.predict_proba(X)[:, 1])
        elif hasattr(est, "predict_proba"):
            assert_allclose(out, est.predict_proba(X))
        else:
            assert_allclose(out, est.predict(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_edited_coefs_are_used():
    X, y = _data("regression")
    est = MLPRegressor(solver="lbfgs", max_iter=20, random_state=0, **SMALL).fit(X, y)
    est.intercepts_[-1] += 1.0  # in place: a view of theta_
    p1 = est.predict(X)
    est.coefs_ = [c.copy() for c in est.coefs_]  # replaced: packed on demand
    est.coefs_[-1] *= 0
    assert_allclose(est.predict(X), est.intercepts_[-1][0])
    assert not np.allclose(p1, est.predict(X))


def test_pickle_round_trip():
    X, y = _data("multiclass")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(solver="sgd", max_iter=5, random_state=0, **SMALL).fit(X, y)
    copy = pickle.loads(pickle.dumps(est))
    assert_array_equal(copy.predict_proba(X), est.predict_proba(X))
    assert_array_equal(copy.predict(X), est.predict(X))
    assert all(np.shares_memory(c, copy.theta_) for c in copy.coefs_)
    # Training continues identically from the copy.
    est.partial_fit(X, y)
    copy.partial_fit(X, y)
    assert_array_equal(copy.theta_, est.theta_)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_clone_params_and_pipeline():
    est = MLPClassifier(hidden_layer_sizes=(7,), activation="mish", solver="lbfgs", alpha=0.1)
    params = est.get_params()
    assert params["activation"] == "mish" and params["hidden_layer_sizes"] == (7,)
    # scikit-learn's parameters, plus the second-order solvers' options
    assert params.keys() == sknn.MLPClassifier().get_params().keys() | {"solver_options"}
    assert MLPRegressor().get_params().keys() == (sknn.MLPRegressor().get_params().keys()
                                                  | {"solver_options"})
    c = clone(est).set_params(alpha=1.0)
    assert c.alpha == 1.0 and est.alpha == 0.1
    X, y = _data("multiclass")
    pipe = make_pipeline(StandardScaler(), clone(est).set_params(max_iter=100)).fit(X, y)
    assert pipe.score(X, y) > 0.8


def test_defaults_match_sklearn():
    for ours, ref in ((MLPClassifier(), sknn.MLPClassifier()),
                      (MLPRegressor(), sknn.MLPRegressor())):
        params = ours.get_params()
        assert params.pop("solver_options") is None
        assert params == ref.get_params()


def test_grid_search_n_jobs_2():
    X, y = _data("multiclass", n=90)
    gs = GridSearchCV(MLPClassifier(solver="lbfgs", max_iter=30, random_state=0, **SMALL),
                      {"alpha": [1e-4, 1.0]}, cv=2, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gs.fit(X, y)
    assert gs.best_params_["alpha"] in (1e-4, 1.0)
    assert hasattr(gs.best_estimator_, "network_")


def test_concurrent_predict_from_two_threads():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(40,), max_iter=3, random_state=0).fit(X, y)
    expected = est.predict_proba(X)
    parts = [X[:900], X[900:]]
    results, errors = [[], []], []

    def work(i):
        try:
            for _ in range(15):
                results[i].append(est.predict_proba(parts[i]))
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, part in enumerate((expected[:900], expected[900:])):
        for r in results[i]:
            assert_array_equal(r, part)


def test_digits_adam_accuracy_like_sklearn():
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X / 16, y, random_state=0)
    kw = dict(hidden_layer_sizes=(50,), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = MLPClassifier(**kw).fit(Xtr, ytr)
        ref = sknn.MLPClassifier(**kw).fit(Xtr, ytr)
    assert ours.score(Xte, yte) == pytest.approx(ref.score(Xte, yte), abs=0.01)
    assert ours.score(Xte, yte) > 0.93


def test_main_runs_and_checks_the_gradient(capsys):
    from cbackprop.__main__ import main

    assert main(["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "epoch    3   loss" in out
    assert re.search(r"cbackprop\s+0\.\d{4}\s+\d+\.\d{3}s", out)
    assert "scikit-learn" in out and "speed-up" in out
    assert "identical to scikit-learn's" in out
    assert re.search(r"gradient check .* OK", out)
