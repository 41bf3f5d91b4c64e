"""Identities across the entry points of cbackprop: one quantity, several routes.

The same objective, gradient and curvature products are reachable through
``Network``, the curvature operators, the second-order solvers' internal products
(``optimize.quasi_hessian``, hessian-free's GGN products on the full data and on a
curvature mini-batch, Newton's Hessian-vector products) and the estimators'
L-BFGS objective and predictions. Every route must give the Network's numbers:
compared within the 'rounding' tolerance of ``common.assert_close`` (two paths of
the package in one dtype), in float64 and float32, with sample weights and
``alpha > 0``.
"""
import numpy as np
import pytest
from sklearn.preprocessing import LabelBinarizer

import cbackprop
import common
import reference as ref
from cbackprop import _network, _problem, curvature, optimize
from cbackprop._problem import Problem
from common import ARCHS, DTYPES, assert_close

ACTIVATIONS = ("tanh", "relu", "swish")
ALPHA = 0.3
N = 11
KINDS = {"hessian": (curvature.HessianOperator, "hvp"),
         "ggn": (curvature.GGNOperator, "ggn_vp"),
         "efisher": (curvature.EFisherOperator, "efisher_vp")}


def _case(act, loss, dtype, arch="hidden2", n=N):
    """(net, theta, X, y, sw): a weighted problem with float32-exact values."""
    sizes = ARCHS[arch]
    data = ref.make_problem(sizes, loss, n=n, seed=common.seed("id", act, loss, arch),
                            weighted=True)
    theta, X, y, sw = (a.astype(np.float32).astype(dtype) for a in data)
    net = cbackprop.Network(list(sizes), activation=act, loss=loss, alpha=ALPHA, dtype=dtype)
    return net, theta, X, y, sw


def _block(P, dtype, k=3, tag=""):
    """(P, k) vectors exact in both dtypes."""
    rng = np.random.default_rng(common.seed("V", P, k, tag))
    return rng.standard_normal((P, k)).astype(np.float32).astype(dtype)


def _product_scale(M, V):
    """Floor of a product's tolerance: |M| times the largest column sum of |V|."""
    return float(np.abs(M).max() * np.abs(V).sum(axis=0).max())


def _regularizer(net, weight_sum):
    """(P,) diagonal of the regularizer ``alpha / W`` on the weight entries."""
    return net.alpha / weight_sum * ref.weight_mask(net.layer_sizes)


GRID = [pytest.param(act, loss, id=f"{act}-{loss}")
        for act in ACTIVATIONS for loss in ref.LOSSES]


# ======================================================================================
# Levenberg-Marquardt's quasi-Hessian
# ======================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["nohidden", "hidden2"])
@pytest.mark.parametrize("act,loss", GRID)
def test_quasi_hessian_is_the_ggn(act, loss, arch, dtype):
    """Both accumulations, for blocks of 1, a few and all rows: net.ggn, and the
    loss and gradient of net.loss_grad."""
    net, theta, X, y, sw = _case(act, loss, dtype, arch)
    G_net = net.ggn(theta, X, y, sw)
    f_net, g_net = net.loss_grad(theta, X, y, sw)
    for block in (1, 4, N):
        forms = {}
        for accumulation in ("rows", "kronecker"):
            f, g, G = optimize.quasi_hessian(net, theta, X, y, sw, block_size=block,
                                             accumulation=accumulation)
            what = f"{accumulation} block {block}"
            assert G.dtype == g.dtype == dtype, what
            assert_close(G, G_net, dtype, "rounding", err_msg=f"G {what}")
            assert_close(g, g_net, dtype, "rounding", err_msg=f"g {what}")
            assert_close(f, f_net, dtype, "rounding", err_msg=f"f {what}")
            forms[accumulation] = G
        assert_close(forms["rows"], forms["kronecker"], dtype, "rounding",
                     err_msg=f"rows == kronecker, block {block}")


# ======================================================================================
# curvature operators
# ======================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [None, 1, 4], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("act,loss", GRID)
def test_operator_products_are_the_network_products(act, loss, kind, batch_size, dtype):
    """op @ V and op.matvec equal the Network's product and its dense matrix,
    chunked or not."""
    net, theta, X, y, sw = _case(act, loss, dtype)
    Operator, product = KINDS[kind]
    op = Operator(net, theta, X, y, sample_weight=sw, batch_size=batch_size)
    M = getattr(net, kind)(theta, X, y, sample_weight=sw).astype(np.float64)
    V = _block(net.n_params, dtype, tag=kind)
    scale = _product_scale(M, V)
    expected = getattr(net, product)(theta, X, y, V, sample_weight=sw)
    for name, out in (("op @ V", op @ V), ("matmat", op.matmat(V))):
        assert out.dtype == dtype, name
        assert_close(out, expected, dtype, "rounding", scale=scale, err_msg=f"{name} vs net")
        assert_close(out, M @ V.astype(np.float64), dtype, "rounding", scale=scale,
                     err_msg=f"{name} vs dense")
    v = V[:, 0]
    assert_close(op.matvec(v), getattr(net, product)(theta, X, y, v, sample_weight=sw),
                 dtype, "rounding", scale=scale, err_msg="matvec vs net")


# ======================================================================================
# the solvers' products
# ======================================================================================
def _rows_of(X_sub, X):
    """The indices in X of the rows of X_sub, in order (the rows of X are distinct)."""
    idx = [int(np.flatnonzero((X == row).all(axis=1))[0]) for row in X_sub]
    return np.array(idx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [None, 5], ids=["full", "minibatch5"])
@pytest.mark.parametrize("act,loss", GRID)
def test_hessian_free_ggn_products(act, loss, batch, dtype, monkeypatch):
    """The GGN products hessian_free's CG runs on: net.ggn_vp on its rows (all, or
    the curvature mini-batch with the full data's regularizer alpha / W)."""
    net, theta, X, y, sw = _case(act, loss, dtype)
    W = float(sw.sum(dtype=np.float64))
    real_cg = optimize._truncated_cg
    seen = []

    def spy(curv, b, lam, x0, M, max_iter, tol):
        # curv.theta is the solver's working array: compare at this point
        at = curv.theta.copy()
        v = _block(net.n_params, np.float64, k=1, tag=len(seen))[:, 0]
        out = curv.ggn_vp(v)
        assert out.dtype == np.float64
        idx = _rows_of(curv.problem.X, X)
        assert len(idx) == (N if batch is None else batch)
        vd = v.astype(dtype)
        expected = net.ggn_vp(at, X[idx], y[idx], vd, sample_weight=sw[idx]).astype(np.float64)
        # the subset's own regularizer alpha / W_b, replaced by the full data's
        correction = _regularizer(net, W) - _regularizer(net, float(sw[idx].sum(dtype=np.float64)))
        G = net.ggn(at, X[idx], y[idx], sample_weight=sw[idx]).astype(np.float64)
        G += np.diag(correction)
        scale = _product_scale(G, v[:, None])
        assert_close(out, expected + correction * v, dtype, "rounding", scale=scale,
                     err_msg=f"ggn_vp on {len(idx)} rows")
        assert_close(out, G @ v, dtype, "rounding", scale=scale,
                     err_msg=f"dense GGN of {len(idx)} rows")
        seen.append(len(idx))
        return real_cg(curv, b, lam, x0, M, max_iter, tol)

    monkeypatch.setattr(optimize, "_truncated_cg", spy)
    res = optimize.hessian_free(net, theta, X, y, sw, max_iter=2, curvature_batch_size=batch,
                                random_state=0)
    assert len(seen) == res.nit == 2


def test_subsample_keeps_the_full_regularizer():
    """Problem.subsample: normalized by the subset's weights, regularized by the
    full data's alpha / W."""
    net, theta, X, y, sw = _case("tanh", "log_loss", np.float64)
    problem = Problem(net, X, y, sw)
    idx = np.array([1, 4, 5, 9])
    sub = problem.subsample(idx)
    assert sub.n_rows == 4
    assert sub.weight_sum == pytest.approx(sw[idx].sum(), rel=1e-15)
    assert sub.reg_coef == problem.reg_coef == pytest.approx(ALPHA / sw.sum(), rel=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,loss", GRID)
def test_newton_products(act, loss, dtype, monkeypatch):
    """Newton's objective, gradient and Hessian-vector products (Problem.product
    'hvp', the hessp it gives scipy) are net.loss_grad, net.hvp and net.hessian."""
    net, theta, X, y, sw = _case(act, loss, dtype)
    H = net.hessian(theta, X, y, sample_weight=sw).astype(np.float64)
    V = _block(net.n_params, dtype, tag="newton")
    scale = _product_scale(H, V)
    HV = Problem(net, X, y, sw).product("hvp", theta, np.ascontiguousarray(V.T),
                                        np.empty_like(V.T, order="C"))
    assert_close(HV.T, net.hvp(theta, X, y, V, sample_weight=sw), dtype, "rounding",
                 scale=scale, err_msg="Problem.product")
    assert_close(HV.T, H @ V.astype(np.float64), dtype, "rounding", scale=scale,
                 err_msg="Problem.product vs dense")

    real_minimize = optimize.minimize
    seen = {}

    def spy(fun, x0, jac=None, hessp=None, **kw):
        f, g = fun(x0)
        f_net, g_net = net.loss_grad(theta, X, y, sample_weight=sw)
        assert_close(f, f_net, dtype, "rounding", err_msg="newton fun")
        assert_close(g, g_net, dtype, "rounding", err_msg="newton jac")
        for j in range(V.shape[1]):
            p = V[:, j].astype(np.float64)
            assert_close(hessp(x0, p), H @ p, dtype, "rounding", scale=scale,
                         err_msg=f"newton hessp column {j}")
        seen["called"] = True
        return real_minimize(fun, x0, jac=jac, hessp=hessp, **kw)

    monkeypatch.setattr(optimize, "minimize", spy)
    optimize.newton(net, theta, X, y, sw, max_iter=1, gtol=0.0)
    assert seen["called"]


# ======================================================================================
# the two loss-value paths of the Network
# ======================================================================================
# float32 log_loss: Network.loss and Network.loss_grad evaluate the value by two
# kernel paths that round differently (2.6e-9 relative apart); one path is expected
LOSS_VALUE_CASES = [
    pytest.param(act, loss, dtype, id=f"{act}-{loss}-{common.dtype_id(dtype)}")
    for act in ACTIVATIONS for loss in ref.LOSSES for dtype in common.FLOATS]


@pytest.mark.parametrize("act,loss,dtype", LOSS_VALUE_CASES)
def test_loss_is_the_value_of_loss_grad(act, loss, dtype):
    """Bit for bit, as the docstring of Network.loss promises."""
    net, theta, X, y, sw = _case(act, loss, dtype)
    assert net.loss(theta, X, y, sample_weight=sw) == net.loss_grad(theta, X, y, sw)[0]
    assert net.loss(theta, X, y) == net.loss_grad(theta, X, y)[0]


# ======================================================================================
# the estimators: L-BFGS objective and predictions
# ======================================================================================
def _estimator_data(target, n=150, seed=0):
    """(estimator class, its loss kwargs, X, y, the Network's targets Y (n, n_L))."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    if target == "multiclass":
        y = np.argmax(X[:, :3] + 0.5 * rng.standard_normal((n, 3)), axis=1)
        return cbackprop.MLPClassifier, {}, X, y, LabelBinarizer().fit_transform(y)
    if target == "multilabel":
        y = (X[:, :3] + 0.5 * rng.standard_normal((n, 3)) > 0).astype(int)
        return cbackprop.MLPClassifier, {}, X, y, y
    if target == "regression":
        y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(n)
        return cbackprop.MLPRegressor, {}, X, y, y[:, None]
    y = rng.poisson(np.exp(0.5 * X[:, 0])).astype(float)
    return cbackprop.MLPRegressor, {"loss": "poisson"}, X, y, y[:, None]


TARGETS = {"multiclass": "log_loss", "multilabel": "binary_log_loss",
           "regression": "squared_error", "poisson": "poisson"}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_lbfgs_objective_and_predictions(target, act, dtype, monkeypatch):
    """The L-BFGS objective scipy sees is net.loss_grad on the training data; loss_
    is the loss at theta_; predictions in row chunks are net.predict."""
    Est, kw, X, y, Y = _estimator_data(target)
    X = X.astype(dtype)
    sw = np.random.default_rng(1).uniform(0.5, 2.0, X.shape[0]).astype(dtype)
    est = Est(hidden_layer_sizes=(5,), activation=act, solver="lbfgs", alpha=ALPHA,
              max_iter=1, random_state=0, **kw)
    real_minimize = cbackprop._estimator_base.scipy.optimize.minimize
    seen = []

    def spy(fun, x0, **options):
        seen.append((x0.copy(), fun(x0)))
        return real_minimize(fun, x0, **options)

    monkeypatch.setattr(cbackprop._estimator_base.scipy.optimize, "minimize", spy)
    est.fit(X, y, sample_weight=sw)
    net = est.network_
    assert net.loss_name == TARGETS[target] and net.dtype == dtype
    Y = Y.astype(dtype)
    (x0, (f, g)), = seen
    f_net, g_net = net.loss_grad(x0.astype(dtype), X, Y, sample_weight=sw)
    assert_close(f, f_net, dtype, "rounding", err_msg="lbfgs objective")
    assert_close(g, g_net, dtype, "rounding", err_msg="lbfgs gradient")
    assert_close(est.loss_, net.loss(est.theta_, X, Y, sample_weight=sw), dtype,
                 "rounding", err_msg="loss_")

    whole = net.predict(est.theta_, X).reshape(X.shape[0], -1)
    calls = []
    real_raw_output = _network.raw_output
    monkeypatch.setattr(_network, "raw_output",
                        lambda *a: calls.append(a[2].shape[0]) or real_raw_output(*a))
    monkeypatch.setattr(_problem, "PREDICT_ENTRIES", 1)  # chunks of the fewest rows
    if Est is cbackprop.MLPClassifier:
        out = est.predict_proba(X)   # (n, 3): softmax or three logistic outputs
    else:
        out = est.predict(X).reshape(-1, 1)
    assert len(calls) >= 2 and sum(calls) == X.shape[0], calls
    assert out.dtype == dtype
    assert_close(out, whole, dtype, "rounding", err_msg="predictions in row chunks")
