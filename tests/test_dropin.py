"""The drop-in surface: namespace and ``__all__``, array inputs of the spectral
tools, operator docs, ``network_targets`` and models built from hand-set
weights (against scikit-learn given the same weights)."""
import importlib
import inspect
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from scipy.sparse.linalg import aslinearoperator
from sklearn import neural_network as sknn
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.preprocessing import LabelBinarizer

import cbackprop as cb
from cbackprop import MLPClassifier, MLPRegressor, curvature

import reference

# Public modules that must declare __all__ (network.py joins once it has one).
PUBLIC_MODULES = ["cbackprop", "cbackprop.curvature", "cbackprop.optimize",
                  "cbackprop.estimators", "cbackprop.network"]
KINDS = ["multiclass", "binary", "multilabel", "regression", "multioutput", "poisson"]


def _data(kind, n=60):
    return reference.estimator_data(kind, n=n)


def _estimator(kind, **params):
    params = {"hidden_layer_sizes": (4,), "random_state": 0, **params}
    if kind == "poisson":
        params["loss"] = "poisson"
    return (MLPClassifier if kind in ("multiclass", "binary", "multilabel")
            else MLPRegressor)(**params)


def _fit(kind, **params):
    X, y = _data(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _estimator(kind, **params).fit(X, y), X, y


# ----------------------------------------------------------------- namespace
def test_submodules_are_attributes_of_the_package():
    assert cb.curvature is importlib.import_module("cbackprop.curvature")
    assert cb.optimize is importlib.import_module("cbackprop.optimize")
    assert callable(cb.curvature.trace) and callable(cb.optimize.levenberg_marquardt)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name):
    module = importlib.import_module(name)
    assert all(hasattr(module, n) for n in module.__all__), name
    assert len(set(module.__all__)) == len(module.__all__)
    defined_here = {n for n, obj in vars(module).items()
                    if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                    and obj.__module__ == name}
    assert defined_here <= set(module.__all__), defined_here - set(module.__all__)


IMPORT_EXTRAS = ("dask", "distributed", "matplotlib", "sphinx", "jax", "torch", "pandas",
                 "pyarrow")
# Run in a fresh interpreter: with MISSING set, an import finder refuses the
# extras as if they were not installed; prints the top-level modules imported.
_IMPORT_SCRIPT = """
import importlib.abc, sys
MISSING = {missing!r}

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in MISSING:
            raise ImportError(f"{{name}} is not installed")
        return None

sys.meta_path.insert(0, Missing())
{code}
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def _top_level_modules(code, missing=()):
    script = _IMPORT_SCRIPT.format(missing=tuple(missing), code=code)
    return set(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True).stdout.split())


def test_import_needs_only_numpy_scipy_sklearn():
    # What scikit-learn imports itself where installed (pandas, pyarrow) is not ours.
    own = (_top_level_modules("import cbackprop")
           - _top_level_modules("import numpy, scipy, sklearn"))
    assert not own & set(IMPORT_EXTRAS), own & set(IMPORT_EXTRAS)
    # With the extras missing, the import works.
    out = _top_level_modules("import cbackprop", missing=IMPORT_EXTRAS)
    assert {"numpy", "scipy", "sklearn", "cbackprop"} <= out


# ----------------------------------------------------------------- spectral tools
def _symmetric(P=12, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(P, P))
    return B @ B.T / P + np.diag(np.linspace(0, 3, P))


@pytest.mark.parametrize("form", ["ndarray", "sparse", "int-ndarray"])
def test_trace_accepts_arrays(form):
    A = _symmetric()
    if form == "int-ndarray":
        A = np.round(10 * A).astype(np.int64)
        A = A + A.T
    M = sp.csr_matrix(A) if form == "sparse" else A
    op = aslinearoperator(A.astype(float))
    for method in ("hutch++", "hutchinson"):
        assert curvature.trace(M, 9, method, random_state=3) == pytest.approx(
            curvature.trace(op, 9, method, random_state=3), rel=1e-12)
    assert curvature.trace(M, A.shape[0]) == pytest.approx(np.trace(A), rel=1e-12)


@pytest.mark.parametrize("form", ["ndarray", "sparse"])
def test_spectral_tools_accept_arrays(form):
    A = _symmetric()
    M = sp.csr_matrix(A) if form == "sparse" else A
    op = aslinearoperator(A)
    nodes, weights = curvature.stochastic_lanczos_quadrature(M, 3, 12, random_state=1)
    ref_nodes, ref_weights = curvature.stochastic_lanczos_quadrature(op, 3, 12,
                                                                     random_state=1)
    assert_allclose(nodes, ref_nodes, rtol=1e-10, atol=1e-12)
    assert_allclose(weights, ref_weights, rtol=1e-10, atol=1e-12)
    # n_iter = P: the Ritz values of each probe are A's eigenvalues.
    assert_allclose(np.sort(nodes)[::3], np.linalg.eigvalsh(A), rtol=1e-8, atol=1e-10)
    grid, density = curvature.spectral_density(M, 3, 12, grid=64, random_state=1)
    assert_allclose(density, curvature.spectral_density(op, 3, 12, grid=64,
                                                        random_state=1)[1], rtol=1e-10)
    w = curvature.eigenvalues(M, k=2, random_state=0, return_eigenvectors=False)
    assert_allclose(w, np.linalg.eigvalsh(A)[::-1][:2], rtol=1e-10)


@pytest.mark.parametrize("bad, error", [(np.ones((3, 4)), ValueError),
                                        ("not a matrix", TypeError),
                                        (np.ones(5), ValueError)])
def test_spectral_tools_reject_non_square_or_non_operators(bad, error):
    for tool in (curvature.trace, curvature.stochastic_lanczos_quadrature,
                 curvature.spectral_density):
        with pytest.raises(error):
            tool(bad)


# ----------------------------------------------------------------- operator docs
@pytest.mark.parametrize("name", ["CurvatureOperator", "HessianOperator", "GGNOperator",
                                  "EFisherOperator"])
def test_operators_have_their_own_numpydoc(name):
    cls = getattr(curvature, name)
    base_doc = curvature.LinearOperator.__init__.__doc__ or ""
    for doc in (cls.__doc__, cls.__init__.__doc__):
        assert doc and doc != base_doc
        for param in ("net :", "theta : array-like of shape (P,)",
                      "X : array-like of shape (N, n_0)", "sample_weight :", "batch_size :"):
            assert param in doc, (name, param)
    assert list(inspect.signature(cls.__init__).parameters) == [
        "self", "net", "theta", "X", "y", "sample_weight", "batch_size"]


@pytest.mark.parametrize("name, dense", [("HessianOperator", "hessian"),
                                         ("GGNOperator", "ggn"),
                                         ("EFisherOperator", "efisher")])
def test_subclass_init_builds_the_operator(name, dense):
    net = cb.Network([3, 4, 2], activation="tanh", loss="log_loss", alpha=0.2)
    theta = net.init_params(0)
    X, labels = _data("multiclass", n=15)
    Y = np.eye(2)[labels % 2]  # one-hot rows of two classes
    op = getattr(curvature, name)(net, theta, X[:, :3], Y, batch_size=4)
    assert_allclose(op @ np.eye(net.n_params), getattr(net, dense)(theta, X[:, :3], Y),
                    rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- network_targets
@pytest.mark.parametrize("kind", KINDS)
def test_network_targets_give_the_lbfgs_training_loss(kind):
    est, X, y = _fit(kind, solver="lbfgs", max_iter=15)
    Y = est.network_targets(y)
    assert Y.shape == (X.shape[0], est.n_outputs_) and Y.dtype == est.network_.dtype
    assert Y.flags.c_contiguous
    assert est.network_.loss(est.theta_, X, Y) == pytest.approx(est.loss_, rel=1e-12)


@pytest.mark.parametrize("kind", ["multiclass", "binary", "multilabel"])
def test_classifier_targets_are_the_label_indicators(kind):
    est, X, y = _fit(kind, max_iter=2)
    Y = est.network_targets(y)
    if kind == "multiclass":
        assert_array_equal(Y, y[:, None] == est.classes_[None, :])
    elif kind == "binary":
        assert_array_equal(Y[:, 0], y == est.classes_[1])
    else:
        assert_array_equal(Y, y)
    # The network's prediction is predict_proba (its positive column if binary).
    P = est.predict_proba(X)
    assert_allclose(est.network_.predict(est.theta_, X).reshape(len(X), -1),
                    P[:, 1:] if kind == "binary" else P, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_network_targets_feed_any_network_method(kind):
    """hvp on network_targets against central differences of the gradient."""
    est, X, y = _fit(kind, solver="lbfgs", max_iter=5)
    net, theta, Y = est.network_, est.theta_, est.network_targets(y)
    v = np.random.default_rng(0).normal(size=net.n_params)
    eps = 1e-5
    fd = (net.loss_grad(theta + eps * v, X, Y)[1]
          - net.loss_grad(theta - eps * v, X, Y)[1]) / (2 * eps)
    hv = net.hvp(theta, X, Y, v)
    assert_allclose(hv, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_network_targets_in_float32():
    X, y = _data("multiclass")
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X.astype(np.float32), y)
    assert est.network_targets(y).dtype == np.float32


def test_network_targets_reject_bad_targets():
    clf, _, y = _fit("multiclass", max_iter=1)
    with pytest.raises(ValueError, match="not in classes_"):
        clf.network_targets(np.r_[y[:3], 7])
    reg, _, Y = _fit("multioutput", max_iter=1)
    with pytest.raises(ValueError, match=r"shape \(n_samples,\) or \(n_samples, 2\)"):
        reg.network_targets(Y[:, 0])
    with pytest.raises(ValueError):
        reg.network_targets(np.full((3, 2), np.nan))
    for est, target in ((MLPClassifier(), y), (MLPRegressor(), Y)):
        with pytest.raises(NotFittedError):
            est.network_targets(target)


# ----------------------------------------------------------------- hand-set weights
def _hand_set(est, kind, X, y, seed=0):
    """Set by hand the fitted attributes scikit-learn needs for predict and
    partial_fit, with random weights of layers (n_features, 4, n_outputs)."""
    rng = np.random.default_rng(seed)
    classifier = kind in ("multiclass", "binary", "multilabel")
    if classifier:
        lb = LabelBinarizer().fit(y)
        est._label_binarizer, est.classes_ = lb, lb.classes_
        n_out = lb.transform(y[:2]).shape[1]
        est.out_activation_ = "softmax" if kind == "multiclass" else "logistic"
    else:
        n_out = 1 if y.ndim == 1 else y.shape[1]
        est.out_activation_ = "exp" if kind == "poisson" else "identity"
    sizes = [X.shape[1], 4, n_out]
    est.coefs_ = [rng.normal(scale=0.5, size=(a, b)) for a, b in zip(sizes, sizes[1:])]
    est.intercepts_ = [rng.normal(scale=0.5, size=b) for b in sizes[1:]]
    est.n_layers_, est.n_outputs_, est.n_features_in_ = len(sizes), n_out, X.shape[1]
    est.t_ = est.n_iter_ = 0
    est.loss_curve_, est.best_loss_, est._no_improvement_count = [], np.inf, 0
    return est


def _sk_pair(kind, **params):
    params = {"hidden_layer_sizes": (4,), "random_state": 0, **params}
    if kind == "poisson":
        params["loss"] = "poisson"
    classifier = kind in ("multiclass", "binary", "multilabel")
    SK = sknn.MLPClassifier if classifier else sknn.MLPRegressor
    CB = MLPClassifier if classifier else MLPRegressor
    return SK(**params), CB(**params)


def _outputs(est, X):
    return est.predict_proba(X) if hasattr(est, "predict_proba") else est.predict(X)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("kind", KINDS)
def test_partial_fit_from_hand_set_weights_matches_sklearn(kind, solver):
    X, y = _data(kind)
    ref, ours = _sk_pair(kind, solver=solver, learning_rate_init=0.05, batch_size=16)
    _hand_set(ref, kind, X, y)
    _hand_set(ours, kind, X, y)
    if kind in ("multiclass", "binary", "multilabel"):
        assert_array_equal(ours.predict(X), ref.predict(X))
    assert_allclose(_outputs(ours, X), _outputs(ref, X), rtol=1e-12, atol=1e-14)
    ref.partial_fit(X, y)
    ours.partial_fit(X, y)
    for a, b in zip(ref.coefs_ + ref.intercepts_, ours.coefs_ + ours.intercepts_):
        assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())
    if kind != "multioutput":  # scikit-learn divides that loss by n_outputs (see Notes)
        assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-12)
    assert (ours.t_, ours.n_iter_) == (ref.t_, ref.n_iter_)
    assert_allclose(_outputs(ours, X), _outputs(ref, X), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("kind", ["multiclass", "regression"])
def test_warm_start_fit_from_hand_set_weights_matches_sklearn(kind):
    X, y = _data(kind)
    ref, ours = _sk_pair(kind, solver="adam", warm_start=True, max_iter=4,
                         learning_rate_init=0.05)
    for est in (ref, ours):
        _hand_set(est, kind, X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, y)
    for a, b in zip(ref.coefs_ + ref.intercepts_, ours.coefs_ + ours.intercepts_):
        assert_allclose(b, a, rtol=1e-11, atol=1e-12 * np.abs(a).max())


def test_network_follows_replaced_weights():
    """coefs_ of another architecture, set over a fitted model, define it."""
    X, y = _data("multiclass")
    ours, _, _ = _fit("multiclass", max_iter=2)
    ref = sknn.MLPClassifier(hidden_layer_sizes=(3, 2), max_iter=3, random_state=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref.fit(X, y)
    ours.coefs_ = [c.copy() for c in ref.coefs_]
    ours.intercepts_ = [b.copy() for b in ref.intercepts_]
    ours.hidden_layer_sizes = (3, 2)
    assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-12)
    assert ours.network_.layer_sizes == (6, 3, 2, 3)
    assert ours.theta_.shape == (ours.network_.n_params,)
    # float32 weights make a float32 model
    ours.coefs_ = [c.astype(np.float32) for c in ref.coefs_]
    ours.intercepts_ = [b.astype(np.float32) for b in ref.intercepts_]
    assert ours.predict_proba(X).dtype == np.float32
    assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-5)
