"""Sparse X: every quantity, solver and estimator equals its value on X.toarray().

The first layer's kernels read CSR X directly (the other layers never see X), and
the quantities built from dense per-sample inputs densify one row chunk at a time:
either way the numbers are those of the dense input up to rounding ("rounding"
kind: 1e-12 relative in float64).
"""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import neural_network as sknn
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import KBinsDiscretizer

import cbackprop as cb
from cbackprop import optimize
from cbackprop.curvature import EFisherOperator, GGNOperator, HessianOperator
from common import DTYPES, assert_close, dtype_id, seed

SIZES = (9, 5, 4, 3)
N = 23

# scipy.sparse containers, and the index width the conversion keeps.
FORMS = {
    "csr_matrix": sp.csr_matrix, "csc_matrix": sp.csc_matrix,
    "csr_array": sp.csr_array, "csc_array": sp.csc_array,
}
FORM_PARAMS = [pytest.param(f, id=f) for f in FORMS]
INDEX = [pytest.param(np.int32, id="int32"), pytest.param(np.int64, id="int64")]


def _dense(rng, n=N, n0=SIZES[0]):
    """Rows with about 40% non-zeros, one empty row and one empty column."""
    X = rng.standard_normal((n, n0)) * (rng.random((n, n0)) < 0.4)
    X[3] = 0
    X[:, 2] = 0
    return X


def _sparse(X, form, index=np.int32):
    S = FORMS[form](X)
    S.indices = S.indices.astype(index)
    S.indptr = S.indptr.astype(index)
    return S


def _targets(rng, loss, n_out, n=N):
    if loss == "log_loss":
        return np.eye(n_out)[rng.integers(0, n_out, n)]
    return rng.standard_normal((n, n_out))


def _flat(result):
    """Every array of a result (arrays, tuples, lists of pairs) in one vector."""
    if isinstance(result, (tuple, list)):
        return np.concatenate([_flat(r) for r in result])
    return np.ravel(np.asarray(result, dtype=np.float64))


def _case(dtype, loss="log_loss", activation="tanh", key=()):
    rng = np.random.default_rng(seed("sparse", dtype_id(dtype), loss, activation, *key))
    net = cb.Network(SIZES, activation=activation, loss=loss, alpha=0.3, dtype=dtype)
    X = _dense(rng)
    y = _targets(rng, loss, SIZES[-1])
    sw = rng.random(N) + 0.5
    V = rng.standard_normal((net.n_params, 3))
    return net, net.init_params(0), X, y, sw, V


# ------------------------------------------------------------------ Network
PRODUCTS = ("hvp", "ggn_vp", "efisher_vp")
MATRICES = ("loss", "loss_grad", "ggn", "hessian", "efisher", "diag_hessian", "diag_ggn",
            "diag_efisher", "block_hessian", "block_ggn", "kfac", "per_sample_grads")
UNSUPERVISED = ("predict", "raw_output", "jacobian")
METHODS = PRODUCTS + MATRICES + UNSUPERVISED + ("diag_ggn_mc",)


def _call(net, name, theta, X, y, sw, V):
    f = getattr(net, name)
    if name in UNSUPERVISED:
        return f(theta, X)
    if name in PRODUCTS:
        return f(theta, X, y, V, sample_weight=sw)
    if name == "diag_ggn_mc":
        return f(theta, X, y, sample_weight=sw, mc_samples=2, random_state=0)
    if name == "per_sample_grads":
        return f(theta, X, y)
    return f(theta, X, y, sample_weight=sw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", FORM_PARAMS)
@pytest.mark.parametrize("name", METHODS)
def test_network_method_equals_dense(name, form, dtype):
    net, theta, X, y, sw, V = _case(dtype)
    want = _call(net, name, theta, X, y, sw, V)
    got = _call(net, name, theta, _sparse(X, form), y, sw, V)
    assert_close(_flat(got), _flat(want), dtype, "rounding", err_msg=name)


@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("loss,activation", [("squared_error", "relu"),
                                             ("binary_log_loss", "logistic"),
                                             ("poisson", "softplus")])
@pytest.mark.parametrize("name", ("loss_grad", "hvp", "ggn_vp", "efisher_vp", "ggn",
                                  "jacobian", "per_sample_grads"))
def test_kernels_over_losses_and_index_widths(name, loss, activation, index):
    dtype = np.float64
    net, theta, X, y, sw, V = _case(dtype, loss, activation)
    if loss == "binary_log_loss":
        y = (y > 0).astype(float)
    if loss == "poisson":
        y = np.abs(y)
    want = _call(net, name, theta, X, y, sw, V)
    got = _call(net, name, theta, _sparse(X, "csr_matrix", index), y, sw, V)
    assert_close(_flat(got), _flat(want), dtype, "rounding", err_msg=name)


def test_chunked_sparse_sums_equal_dense():
    """Row chunks of 5 (views of the CSR offsets) sum to the dense whole."""
    from cbackprop import _assembly
    from cbackprop._problem import Problem
    net, theta, X, y, sw, V = _case(np.float64, key=("chunks",))
    dense = Problem(net, X, y, sw)
    chunked = Problem(net, sp.csr_matrix(X), y, sw, max_rows=5)
    assert len(chunked.chunks(1)) == 5
    P = net.n_params
    g1, g2 = np.empty(P), np.empty(P)
    assert_close(chunked.loss_grad(theta, g1), dense.loss_grad(theta, g2), np.float64,
                 "rounding")
    assert_close(g1, g2, np.float64, "rounding")
    Vk = np.ascontiguousarray(V.T)
    assert_close(chunked.product("hvp", theta, Vk, np.empty_like(Vk)),
                 dense.product("hvp", theta, Vk, np.empty_like(Vk)), np.float64, "rounding")
    out = np.empty((N, SIZES[-1]))
    assert_close(chunked.raw_output(theta, out.copy(), True),
                 dense.raw_output(theta, out, True), np.float64, "rounding")
    for quantity in (_assembly.diag_ggn, _assembly.kfac, _assembly.ggn):
        assert_close(_flat(quantity(chunked, theta)), _flat(quantity(dense, theta)),
                     np.float64, "rounding", err_msg=quantity.__name__)


@pytest.mark.parametrize("op", [HessianOperator, GGNOperator, EFisherOperator],
                         ids=lambda o: o.__name__)
def test_curvature_operators(op):
    net, theta, X, y, sw, V = _case(np.float64, key=("operators",))
    want = op(net, theta, X, y, sample_weight=sw, batch_size=7) @ V
    got = op(net, theta, sp.csr_array(X), y, sample_weight=sw, batch_size=7) @ V
    assert_close(got, want, np.float64, "rounding")


def test_unsorted_duplicate_entries_are_summed():
    net, theta, X, y, sw, V = _case(np.float64, key=("canonical",))
    S = sp.csr_matrix(X)
    # Each value split in two halves, the row's columns stored in reverse
    # order twice: unsorted, with duplicates.
    indices, data, indptr = [], [], [0]
    for i in range(N):
        cols = S.indices[S.indptr[i]:S.indptr[i + 1]][::-1]
        vals = S.data[S.indptr[i]:S.indptr[i + 1]][::-1] / 2
        indices += [cols, cols]
        data += [vals, vals]
        indptr.append(indptr[-1] + 2 * len(cols))
    raw = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=X.shape)
    assert not raw.has_canonical_format
    before = raw.indices.copy()
    assert_close(net.loss_grad(theta, raw, y)[1], net.loss_grad(theta, X, y)[1],
                 np.float64, "rounding")
    assert (raw.indices == before).all()  # the caller's matrix is left alone


# ------------------------------------------------------------------ bad input
def test_bad_sparse_input_gets_clear_errors():
    net, theta, X, y, sw, V = _case(np.float64, key=("bad",))
    with pytest.raises(ValueError, match="features"):
        net.loss(theta, sp.csr_matrix(X[:, :-1]), y)
    with pytest.raises(ValueError, match="different numbers of samples"):
        net.loss(theta, sp.csr_matrix(X[:-1]), y)
    bad = sp.csr_matrix(X)
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        net.loss(theta, bad, y)
    net32 = cb.Network(SIZES, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinity"):  # overflows in float32
        net32.loss(net32.init_params(0), sp.csr_matrix(X * 1e300), y)
    for fmt in ("coo", "lil", "dok", "bsr", "dia"):
        with pytest.raises(TypeError, match=fmt.upper() + " format.*CSR and CSC"):
            net.loss(theta, sp.csr_matrix(X).asformat(fmt), y)
    with pytest.raises(ValueError, match="0 samples"):
        net.predict(theta, sp.csr_matrix((0, SIZES[0])))
    with pytest.raises(TypeError, match="sparse"):
        net.loss(theta, X, sp.csr_matrix(y))  # targets stay dense


# ------------------------------------------------------------------ solvers
SOLVERS = {
    "levenberg_marquardt": dict(max_iter=3),
    "hessian_free": dict(max_iter=3, cg_tol=0.0, cg_max_iter=5),
    "newton": dict(max_iter=3),
    "kfac-full": dict(max_iter=3),
    "kfac-minibatch-mc": dict(max_iter=4, batch_size=8, curvature="mc", random_state=0),
    "kfac-minibatch-empirical": dict(max_iter=4, batch_size=8, curvature="empirical",
                                     random_state=0),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_solver_equals_dense(solver, dtype):
    net, theta, X, y, sw, V = _case(dtype, key=("solver",))
    fn = getattr(optimize, solver.split("-")[0])
    want = fn(net, theta, X, y, sample_weight=sw, **SOLVERS[solver])
    got = fn(net, theta, sp.csr_matrix(X), y, sample_weight=sw, **SOLVERS[solver])
    assert got.nit == want.nit and got.status == want.status
    assert_close(got.x, want.x, dtype, "rounding", factor=10)
    assert_close(got.fun, want.fun, dtype, "rounding", factor=10)


def test_quasi_hessian_equals_dense():
    net, theta, X, y, sw, V = _case(np.float64, key=("quasi",))
    for accumulation in ("rows", "kronecker"):
        want = optimize.quasi_hessian(net, theta, X, y, sw, accumulation=accumulation)
        got = optimize.quasi_hessian(net, theta, sp.csc_matrix(X), y, sw,
                                     accumulation=accumulation, block_size=5)
        assert_close(_flat(got), _flat(want), np.float64, "rounding", err_msg=accumulation)


# ------------------------------------------------------------------ estimators
EST_SOLVERS = ["sgd", "adam", "lbfgs", "lm", "hessian-free", "newton", "kfac"]


def _estimator_options(solver):
    if solver == "hessian-free":
        return {"cg_tol": 0.0, "cg_max_iter": 5}
    return None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "stored-order"])
@pytest.mark.parametrize("solver", EST_SOLVERS)
def test_classifier_equals_dense(solver, shuffle, dtype):
    rng = np.random.default_rng(seed("classifier", solver, dtype_id(dtype)))
    X = _dense(rng, 40).astype(dtype)
    y = rng.integers(0, 3, 40)
    kw = dict(hidden_layer_sizes=(5,), solver=solver, max_iter=3, random_state=0,
              shuffle=shuffle, batch_size=16, solver_options=_estimator_options(solver))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = cb.MLPClassifier(**kw).fit(X, y)
        got = cb.MLPClassifier(**kw).fit(sp.csr_matrix(X), y)
    assert got.n_iter_ == want.n_iter_
    assert_close(_flat(got.coefs_ + got.intercepts_), _flat(want.coefs_ + want.intercepts_),
                 dtype, "rounding", factor=10)
    for form in FORMS.values():
        assert_close(got.predict_proba(form(X)), want.predict_proba(X), dtype, "rounding",
                     factor=10)
        assert (got.predict(form(X)) == want.predict(X)).all()
    assert got.score(sp.csr_array(X), y) == want.score(X, y)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs", "lm"])
def test_regressor_and_partial_fit_equal_dense(solver):
    rng = np.random.default_rng(seed("regressor", solver))
    X = _dense(rng, 40)
    y = rng.standard_normal(40)
    sw = rng.random(40) + 0.5
    kw = dict(hidden_layer_sizes=(4,), solver=solver, max_iter=3, random_state=0,
              batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = cb.MLPRegressor(**kw).fit(X, y, sample_weight=sw)
        got = cb.MLPRegressor(**kw).fit(sp.csc_matrix(X), y, sample_weight=sw)
    assert_close(got.predict(sp.csr_matrix(X)), want.predict(X), np.float64, "rounding",
                 factor=10)
    if solver in ("sgd", "adam"):
        a, b = cb.MLPRegressor(**kw), cb.MLPRegressor(**kw)
        for rows in (slice(0, 20), slice(20, 40)):
            a.partial_fit(X[rows], y[rows])
            b.partial_fit(sp.csr_matrix(X[rows]), y[rows])
        assert_close(b.predict(sp.csr_matrix(X)), a.predict(X), np.float64, "rounding",
                     factor=10)


def test_estimator_tags_say_sparse():
    assert cb.MLPClassifier().__sklearn_tags__().input_tags.sparse
    assert cb.MLPRegressor().__sklearn_tags__().input_tags.sparse


def test_pipeline_matches_sklearn_cross_val_scores():
    """One-hot bins (sparse output) into the MLP: scikit-learn's own scores."""
    X, y = load_iris(return_X_y=True)
    kw = dict(hidden_layer_sizes=(8,), max_iter=40, random_state=0)

    def scores(mlp):
        pipe = make_pipeline(KBinsDiscretizer(n_bins=5, quantile_method="averaged_inverted_cdf"),
                             mlp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return cross_val_score(pipe, X, y, cv=3)

    want = scores(sknn.MLPClassifier(**kw))
    got = scores(cb.MLPClassifier(**kw))
    assert sp.issparse(KBinsDiscretizer(n_bins=5, quantile_method="averaged_inverted_cdf")
                       .fit_transform(X))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_dask_sparse_chunks_are_refused_clearly():
    da = pytest.importorskip("dask.array")
    from cbackprop._dask_problem import as_row_chunked
    X = da.from_array(np.eye(8), chunks=(4, 8)).map_blocks(sp.csr_matrix)
    with pytest.raises(TypeError, match="sparse chunks"):
        as_row_chunked(X, da.zeros(8, chunks=4), None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("form", FORM_PARAMS)
def test_conversion_keeps_index_width_and_takes_the_dtype(form, index, dtype):
    from cbackprop._sparse import check_sparse_X
    X = _dense(np.random.default_rng(0))
    rows = check_sparse_X(_sparse(X, form, index), dtype)
    assert rows.indices.dtype == index and rows.indptr.dtype == index
    assert rows.data.dtype == dtype
    np.testing.assert_array_equal(rows.toarray(), X.astype(dtype))
    # Row slices are views of the offsets; gathers copy the rows asked for.
    assert np.shares_memory(rows[5:9].indptr, rows.indptr)
    np.testing.assert_array_equal(rows[5:9].toarray(), X[5:9].astype(dtype))
    np.testing.assert_array_equal(rows[[7, 0, 3, 7]].toarray(), X[[7, 0, 3, 7]].astype(dtype))


def test_early_stopping_on_sparse_equals_dense():
    rng = np.random.default_rng(seed("early"))
    X = _dense(rng, 60)
    y = rng.integers(0, 2, 60)
    kw = dict(hidden_layer_sizes=(4,), solver="adam", max_iter=5, random_state=0,
              early_stopping=True, validation_fraction=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = cb.MLPClassifier(**kw).fit(X, y)
        got = cb.MLPClassifier(**kw).fit(sp.csr_matrix(X), y)
    assert got.validation_scores_ == want.validation_scores_
    assert_close(got.predict_proba(X), want.predict_proba(X), np.float64, "rounding",
                 factor=10)


NEVER_DENSIFIED = ("loss_grad", "predict", "jacobian", "per_sample_grads", "ggn", "efisher",
                   "block_ggn", "block_hessian", "diag_ggn", "diag_efisher",
                   "diag_ggn_mc") + PRODUCTS


def _refuse_toarray(monkeypatch):
    from cbackprop._sparse import CSRRows

    def refuse(self):
        raise AssertionError("CSR rows densified")
    monkeypatch.setattr(CSRRows, "toarray", refuse)


@pytest.mark.parametrize("name", NEVER_DENSIFIED)
def test_sparse_kernels_never_densify(name, monkeypatch):
    net, theta, X, y, sw, V = _case(np.float64, key=("never",))
    S = sp.csr_matrix(X)
    _refuse_toarray(monkeypatch)
    got = _call(net, name, theta, S, y, sw, V)
    monkeypatch.undo()
    assert_close(_flat(got), _flat(_call(net, name, theta, X, y, sw, V)), np.float64,
                 "rounding", err_msg=name)


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs", "lm", "hessian-free", "newton"])
def test_estimator_fits_never_densify(solver, monkeypatch):
    rng = np.random.default_rng(seed("never-fit", solver))
    X = sp.csr_matrix(_dense(rng, 40))
    y = rng.integers(0, 3, 40)
    _refuse_toarray(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = cb.MLPClassifier(hidden_layer_sizes=(5,), solver=solver, max_iter=2,
                               random_state=0, batch_size=16).fit(X, y)
    assert est.predict_proba(X).shape == (40, 3)
