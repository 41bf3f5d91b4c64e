"""Tests of ``cbackprop.Network`` against the dense NumPy reference (tests/reference.py).

Tests whose name contains ``reference`` check the reference itself (against finite
differences and scikit-learn) and run without the package:
``python -m pytest tests/test_network.py -k reference``.
"""
import itertools
import re
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import common
import reference as ref
from common import ARCHS, DTYPES, HIDDEN_ARCHS, assert_close

SKLEARN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
N = 9


def _rounded(dtype, *arrays):
    """``arrays`` cast to ``dtype`` (what the package is given) -- None passes through."""
    return tuple(None if a is None else np.asarray(a, dtype=dtype) for a in arrays)


def _f64(*arrays):
    return tuple(None if a is None else np.asarray(a, dtype=np.float64) for a in arrays)


def _problem(sizes, loss, dtype, weighted, *seed_parts, n=N):
    """(theta, X, y, sw) in ``dtype`` and the same values in float64 for the reference."""
    theta, X, y, sw = ref.make_problem(sizes, loss, n=n, seed=common.seed(*seed_parts),
                                       weighted=weighted)
    pkg = _rounded(dtype, theta, X, y, sw)
    return pkg, _f64(*pkg)


# ======================================================================================
# The reference itself
# ======================================================================================
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_reference_activation_derivatives(act):
    z = np.linspace(-6.0, 6.0, 121) + 0.013  # avoid exactly 0 (relu's kink)
    f, d1, d2 = ref.activation(act, z)
    eps = 1e-4
    fd1 = sum(c * ref.activation(act, z + k * eps)[0] for k, c in
              ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12))) / eps
    fd2 = sum(c * ref.activation(act, z + k * eps)[1] for k, c in
              ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12))) / eps
    assert_allclose(fd1, d1, rtol=1e-8, atol=1e-10)
    assert_allclose(fd2, d2, rtol=1e-8, atol=1e-10)


def test_reference_activation_values():
    z = np.array([-30.0, -2.0, -0.5, 0.0, 0.7, 3.0, 30.0])
    sp = np.log1p(np.exp(z))
    s = 1.0 / (1.0 + np.exp(-z))
    expected = {
        "identity": z,
        "logistic": s,
        "tanh": np.tanh(z),
        "relu": np.where(z > 0, z, 0.0),
        "softplus": sp,
        "swish": z * s,
        "mish": z * np.tanh(sp),
    }
    for act, val in expected.items():
        assert_allclose(ref.activation(act, z)[0], val, rtol=1e-14, atol=1e-300, err_msg=act)


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_reference_per_sample_loss_definitions(loss):
    """The raw-z forms equal the textbook forms of design.md section 1."""
    rng = np.random.default_rng(common.seed("defs", loss))
    z = rng.standard_normal((7, 3))
    y = ref.make_targets(loss, 7, 3, rng)
    if loss == "squared_error":
        expected = 0.5 * np.sum((y - z) ** 2, axis=1)
    elif loss == "poisson":
        mu = np.exp(z)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(y > 0, y * np.log(y / mu), 0.0)
        expected = np.sum(term - y + mu, axis=1)
    elif loss == "log_loss":
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        expected = -np.sum(y * np.log(p), axis=1)
    else:
        s = 1.0 / (1.0 + np.exp(-z))
        expected = -np.sum(y * np.log(s) + (1 - y) * np.log(1 - s), axis=1)
    assert_allclose(ref.per_sample_loss(loss, z, y), expected, rtol=1e-12)


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_reference_loss_derivatives_out_fd(loss):
    rng = np.random.default_rng(common.seed("out", loss))
    C = 3
    z = rng.standard_normal((5, C))
    y = ref.make_targets(loss, 5, C, rng)
    g = ref.loss_grad_out(loss, z, y)
    H = ref.loss_hessian_out(loss, z, y)
    for i in range(5):
        fd_g = ref.fd_grad(lambda zi: ref.per_sample_loss(loss, zi[None], y[i:i + 1])[0], z[i])
        fd_H = ref.fd_grad(lambda zi: ref.loss_grad_out(loss, zi[None], y[i:i + 1])[0], z[i])
        assert_allclose(fd_g, g[i], rtol=1e-9, atol=1e-11)
        assert_allclose(fd_H, H[i], rtol=1e-9, atol=1e-11)


def _fd_eps(act):
    # relu is piecewise polynomial in theta: a tiny stencil avoids straddling a kink
    return 1e-5 if act == "relu" else 1e-3


# for the reference checks, weights and regularizer together or neither
WEIGHTED_ALPHA = [(False, 0.0), (True, 0.3)]
WEIGHTED_ALPHA_IDS = ["unweighted-alpha0", "weighted-alpha0.3"]


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("weighted,alpha", WEIGHTED_ALPHA, ids=WEIGHTED_ALPHA_IDS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_reference_loss_grad_matches_fd(act, loss, weighted, alpha, arch):
    theta, X, y, sw = ref.make_problem(arch, loss, n=N, weighted=weighted,
                                       seed=common.seed("fd", act, loss, weighted, alpha, arch))
    value, grad = ref.loss_grad(arch, act, loss, theta, X, y, sw, alpha)
    assert value == ref.loss(arch, act, loss, theta, X, y, sw, alpha)
    fd = ref.fd_grad(lambda t: ref.loss(arch, act, loss, t, X, y, sw, alpha), theta,
                     eps=_fd_eps(act))
    assert_allclose(fd, grad, rtol=5e-6, atol=1e-8 * max(1.0, np.abs(grad).max()))


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_reference_per_sample_grads_and_jacobian_fd(act, loss, arch):
    theta, X, y, sw = ref.make_problem(arch, loss, n=5, weighted=True,
                                       seed=common.seed("psg", act, loss, arch))
    G = ref.per_sample_grads(arch, act, loss, theta, X, y)
    fd = ref.fd_grad(lambda t: ref.per_sample_loss(loss, ref.forward(arch, act, t, X)[0][-1], y),
                     theta, eps=_fd_eps(act))
    assert_allclose(fd, G, rtol=5e-6, atol=1e-8 * max(1.0, np.abs(G).max()))
    # the weighted mean of the rows plus the regularizer is the gradient
    alpha = 0.3
    c, W = ref.sample_coefficients(sw, X.shape[0])
    grad = c @ G + alpha / W * np.where(ref.weight_mask(arch), theta, 0.0)
    assert_allclose(grad, ref.loss_grad(arch, act, loss, theta, X, y, sw, alpha)[1],
                    rtol=1e-12, atol=1e-14)
    # the Jacobian of the raw outputs
    J = ref.jacobian(arch, act, theta, X)
    fdJ = ref.fd_grad(lambda t: ref.forward(arch, act, t, X)[0][-1], theta, eps=_fd_eps(act))
    assert_allclose(fdJ, J, rtol=5e-6, atol=1e-8 * max(1.0, np.abs(J).max()))
    # chain rule: per-sample gradient = J_i^T dl/dz
    z = ref.forward(arch, act, theta, X)[0][-1]
    assert_allclose(np.einsum("icp,ic->ip", J, ref.loss_grad_out(loss, z, y)), G,
                    rtol=1e-12, atol=1e-14)


def _sklearn_init(sizes, act, random_state, dtype):
    from sklearn.neural_network import MLPRegressor

    est = MLPRegressor(hidden_layer_sizes=list(sizes[1:-1]), activation=act)
    est._random_state = (np.random.RandomState(random_state)
                         if not isinstance(random_state, np.random.RandomState)
                         else random_state)
    est._initialize(np.zeros((1, sizes[-1])), list(sizes), dtype)
    return est.coefs_, est.intercepts_


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 42])
@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("act", ["relu", "logistic", "tanh", "mish"])
def test_reference_init_matches_sklearn(act, arch, seed, dtype):
    coefs, intercepts = _sklearn_init(arch, act, seed, dtype)
    theta = ref.init_params(arch, act, random_state=seed, dtype=dtype)
    assert theta.dtype == dtype
    rc, ri = ref.unpack(arch, theta)
    for a, b in zip(rc + ri, coefs + intercepts):
        assert_array_equal(a, b)
    # a RandomState instance continues its own stream
    rs1, rs2 = np.random.RandomState(seed), np.random.RandomState(seed)
    rs1.uniform(size=3), rs2.uniform(size=3)
    coefs, intercepts = _sklearn_init(arch, act, rs1, dtype)
    assert_array_equal(ref.init_params(arch, act, random_state=rs2, dtype=dtype),
                       ref.pack(coefs, intercepts))


def _sklearn_loss_grad(sizes, act, loss, theta, X, y, sw, alpha):
    """scikit-learn's own MLP objective and gradient (``_backprop``), theta in our layout."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    hidden = list(sizes[1:-1])
    if loss in ("squared_error", "poisson"):
        est = MLPRegressor(hidden_layer_sizes=hidden, activation=act, alpha=alpha, loss=loss)
        est.out_activation_ = "identity" if loss == "squared_error" else "exp"
    else:
        est = MLPClassifier(hidden_layer_sizes=hidden, activation=act, alpha=alpha)
        est.out_activation_ = "softmax" if loss == "log_loss" else "logistic"
    est.n_layers_ = len(sizes)
    est.n_outputs_ = sizes[-1]
    coefs, intercepts = ref.unpack(sizes, theta.copy())
    est.coefs_, est.intercepts_ = list(coefs), list(intercepts)
    activations = [X] + [None] * (len(sizes) - 1)
    deltas = [None] * (len(sizes) - 1)
    cg = [np.empty_like(c) for c in coefs]
    ig = [np.empty_like(b) for b in intercepts]
    value, cg, ig = est._backprop(X, y, sw, activations, deltas, cg, ig)
    return value, ref.pack(cg, ig)


@pytest.mark.parametrize("arch", [[5, 1], [5, 7, 1], [5, 7, 3], [4, 6, 5, 2]],
                         ids=["nohidden1", "hidden1-1", "hidden1", "hidden2"])
@pytest.mark.parametrize("weighted,alpha", WEIGHTED_ALPHA, ids=WEIGHTED_ALPHA_IDS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", SKLEARN_ACTIVATIONS)
def test_reference_matches_sklearn_backprop(act, loss, weighted, alpha, arch):
    if loss == "log_loss" and arch[-1] == 1:
        pytest.skip("softmax over one output is degenerate")
    theta, X, y, sw = ref.make_problem(arch, loss, n=N, weighted=weighted,
                                       seed=common.seed("skl", act, loss, weighted, alpha, arch))
    value, grad = ref.loss_grad(arch, act, loss, theta, X, y, sw, alpha)
    sk_value, sk_grad = _sklearn_loss_grad(arch, act, loss, theta, X, y, sw, alpha)
    assert_allclose(grad, sk_grad, rtol=1e-10, atol=1e-13)
    if loss == "squared_error" and arch[-1] > 1:
        # scikit-learn reports the data term of the squared loss divided by n_outputs
        c, W = ref.sample_coefficients(sw, N)
        reg = value - np.sum(c * ref.per_sample_loss(loss, ref.forward(arch, act, theta, X)[0][-1], y))
        value = (value - reg) / arch[-1] + reg
    assert_allclose(value, sk_value, rtol=1e-10)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ["identity", "tanh"])
def test_reference_curvature(act, loss, weighted):
    """GGN/EFisher/Hessian of the reference: shapes, symmetry, PSD, regularizer; the
    Hessian equals the GGN for a model linear in theta (no hidden layer)."""
    alpha = 0.3
    for arch in ([5, 3], [3, 4, 2]):
        theta, X, y, sw = ref.make_problem(arch, loss, n=6, weighted=weighted,
                                           seed=common.seed("curv", act, loss, weighted, arch))
        P = ref.n_params(arch)
        G = ref.ggn(arch, act, loss, theta, X, y, sw, alpha)
        F = ref.efisher(arch, act, loss, theta, X, y, sw, alpha)
        H = ref.hessian(arch, act, loss, theta, X, y, sw, alpha)
        c, W = ref.sample_coefficients(sw, X.shape[0])
        for M in (G, F, H):
            assert M.shape == (P, P)
            assert_allclose(M, M.T, atol=1e-12)
        for M in (G, F):
            assert np.linalg.eigvalsh(M).min() >= -1e-10
        G0 = ref.ggn(arch, act, loss, theta, X, y, sw, 0.0)
        assert_allclose(np.diag(G - G0), alpha / W * ref.weight_mask(arch), atol=1e-14)
        if len(arch) == 2:
            # without hidden layer the model is linear in theta: H == GGN
            assert_allclose(H, G, rtol=1e-7, atol=1e-8 * np.abs(G).max())
        else:
            # with a hidden layer the residual term is not zero
            assert np.abs(H - G).max() > 1e-6
        # GGN-vector products via the Jacobian agree with the definition
        J = ref.jacobian(arch, act, theta, X)
        v = np.random.default_rng(0).standard_normal(P)
        Hout = ref.loss_hessian_out(loss, ref.forward(arch, act, theta, X)[0][-1], y)
        Gv = sum(c[i] * J[i].T @ (Hout[i] @ (J[i] @ v)) for i in range(X.shape[0]))
        Gv += alpha / W * ref.weight_mask(arch) * v
        assert_allclose(G @ v, Gv, rtol=1e-10, atol=1e-12)


# ======================================================================================
# The package against the reference
# ======================================================================================
def _net(cb, sizes, act="tanh", loss="squared_error", alpha=0.0, dtype=np.float64):
    return cb.Network(list(sizes), activation=act, loss=loss, alpha=alpha, dtype=dtype)


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_n_params(cb, arch):
    assert _net(cb, arch).n_params == ref.n_params(arch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("act", ["relu", "logistic", "tanh", "swish"])
def test_init_params_matches_sklearn(cb, act, arch, dtype):
    net = _net(cb, arch, act=act, dtype=dtype)
    theta = net.init_params(random_state=0)
    assert isinstance(theta, np.ndarray) and theta.ndim == 1
    assert theta.dtype == dtype and theta.flags.c_contiguous
    coefs, intercepts = _sklearn_init(arch, act, 0, dtype)
    assert_array_equal(theta, ref.pack(coefs, intercepts))
    assert_array_equal(theta, ref.init_params(arch, act, 0, dtype))
    # a RandomState instance is used as is (its stream continues)
    rs = np.random.RandomState(7)
    rs.uniform(size=5)
    expected_rs = np.random.RandomState(7)
    expected_rs.uniform(size=5)
    assert_array_equal(net.init_params(rs), ref.init_params(arch, act, expected_rs, dtype))
    # same seed, same draws
    assert_array_equal(net.init_params(random_state=3), net.init_params(random_state=3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_pack_unpack(cb, arch, dtype):
    net = _net(cb, arch, dtype=dtype)
    rng = np.random.default_rng(common.seed("pack", arch))
    theta = rng.standard_normal(net.n_params).astype(dtype)
    coefs, intercepts = net.unpack(theta)
    rc, ri = ref.unpack(arch, theta)
    assert len(coefs) == len(intercepts) == len(arch) - 1
    for l, (W, b) in enumerate(zip(coefs, intercepts)):
        assert W.shape == (arch[l], arch[l + 1]) and b.shape == (arch[l + 1],)
        assert_array_equal(W, rc[l])
        assert_array_equal(b, ri[l])
        assert np.shares_memory(W, theta) and np.shares_memory(b, theta)
    # unpack gives views: writing through them changes theta
    coefs[0][0, 0] = 123.0
    assert theta[0] == 123.0
    intercepts[-1][-1] = -7.0
    assert theta[-1] == -7.0
    # round trips
    packed = net.pack(coefs, intercepts)
    assert packed.ndim == 1 and packed.dtype == dtype and packed.flags.c_contiguous
    assert_array_equal(packed, theta)
    c2, i2 = net.unpack(net.pack([np.array(W) for W in rc], [np.array(b) for b in ri]))
    for a, b in zip(c2 + i2, rc + ri):
        assert_array_equal(a, b)


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("alpha", [0.0, 0.3], ids=["alpha0", "alpha0.3"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_loss_and_grad(cb, act, loss, dtype, weighted, alpha, arch):
    (theta, X, y, sw), (theta64, X64, y64, sw64) = _problem(
        arch, loss, dtype, weighted, "lg", act, loss, weighted, alpha, arch)
    net = _net(cb, arch, act, loss, alpha, dtype)
    exp_value, exp_grad = ref.loss_grad(arch, act, loss, theta64, X64, y64, sw64, alpha)

    value = net.loss(theta, X, y, sample_weight=sw)
    assert np.ndim(value) == 0
    assert_close(value, exp_value, dtype, err_msg="loss")

    value2, grad = net.loss_grad(theta, X, y, sample_weight=sw)
    assert np.ndim(value2) == 0
    assert_close(value2, exp_value, dtype, err_msg="loss_grad value")
    assert isinstance(grad, np.ndarray) and grad.dtype == dtype
    assert_close(grad, exp_grad, dtype, err_msg="loss_grad gradient")
    if sw is None:  # unit weights are the same as no weights
        v3, g3 = net.loss_grad(theta, X, y, sample_weight=np.ones(N, dtype=dtype))
        assert_close(v3, exp_value, dtype)
        assert_close(g3, exp_grad, dtype)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_loss_value_is_one_code_path(cb, loss, dtype, weighted):
    # The value must not depend on whether a gradient (or a GGN, in the
    # Levenberg-Marquardt accumulation over one block) is computed with it.
    from cbackprop import optimize as opt
    arch = ARCHS["hidden1"]
    (theta, X, y, sw), _ = _problem(arch, loss, dtype, weighted, "one-path", loss, weighted,
                                    n=70)
    net = _net(cb, arch, "tanh", loss, 0.3, dtype)
    value = net.loss(theta, X, y, sample_weight=sw)
    assert value == net.loss_grad(theta, X, y, sample_weight=sw)[0]
    for accumulation in ("rows", "kronecker"):
        qh = opt.quasi_hessian(net, theta, X, y, sw, block_size=X.shape[0],
                               accumulation=accumulation)[0]
        assert value == qh, accumulation


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_per_sample_grads(cb, act, loss, dtype, weighted, arch):
    # alpha > 0 on purpose: rows carry neither the regularizer nor the weights
    (theta, X, y, sw), (theta64, X64, y64, _) = _problem(
        arch, loss, dtype, weighted, "psg", act, loss, weighted, arch)
    net = _net(cb, arch, act, loss, 0.3, dtype)
    G = net.per_sample_grads(theta, X, y, sample_weight=sw)
    assert isinstance(G, np.ndarray) and G.dtype == dtype
    assert_close(G, ref.per_sample_grads(arch, act, loss, theta64, X64, y64), dtype)


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["squared_error", "log_loss"])
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_jacobian(cb, act, loss, dtype, arch):
    (theta, X, _, _), (theta64, X64, _, _) = _problem(arch, loss, dtype, False, "jac", act, arch)
    net = _net(cb, arch, act, loss, 0.3, dtype)
    J = net.jacobian(theta, X)
    assert isinstance(J, np.ndarray) and J.dtype == dtype
    assert_close(J, ref.jacobian(arch, act, theta64, X64), dtype)


def _check_predict_shape(P, n, n_out):
    if n_out == 1:
        assert P.shape in ((n,), (n, 1)), P.shape
        return P.reshape(n, 1)
    assert P.shape == (n, n_out), P.shape
    return P


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_predict(cb, act, loss, dtype, arch):
    (theta, X, _, _), (theta64, X64, _, _) = _problem(arch, loss, dtype, False, "pred", act,
                                                      loss, arch)
    net = _net(cb, arch, act, loss, 0.0, dtype)
    P = net.predict(theta, X)
    assert isinstance(P, np.ndarray) and P.dtype == dtype
    P = _check_predict_shape(P, N, arch[-1])
    expected = ref.predict(arch, act, loss, theta64, X64)
    assert_close(P, expected, dtype)
    if loss == "log_loss":
        assert_close(P.sum(axis=1), np.ones(N), dtype, factor=10, scale=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["squared_error", "poisson", "binary_log_loss"])
@pytest.mark.parametrize("arch", [[4, 1], [4, 5, 1]], ids=["nohidden", "hidden1"])
def test_single_output_1d_y(cb, arch, loss, dtype):
    """n_L == 1: 1-D y gives the same as (N, 1) y; predict is (N,) or (N, 1)."""
    act = "softplus"
    (theta, X, y, sw), (theta64, X64, y64, sw64) = _problem(arch, loss, dtype, True, "1d",
                                                            arch, loss)
    net = _net(cb, arch, act, loss, 0.3, dtype)
    exp_value, exp_grad = ref.loss_grad(arch, act, loss, theta64, X64, y64, sw64, 0.3)
    exp_G = ref.per_sample_grads(arch, act, loss, theta64, X64, y64)
    for yy in (y, y.ravel()):
        assert_close(net.loss(theta, X, yy, sample_weight=sw), exp_value, dtype)
        v, g = net.loss_grad(theta, X, yy, sample_weight=sw)
        assert_close(v, exp_value, dtype)
        assert_close(g, exp_grad, dtype)
        assert_close(net.per_sample_grads(theta, X, yy, sample_weight=sw), exp_G, dtype)
    assert_close(net.jacobian(theta, X), ref.jacobian(arch, act, theta64, X64), dtype)
    P = _check_predict_shape(net.predict(theta, X), N, 1)
    assert_close(P, ref.predict(arch, act, loss, theta64, X64), dtype)


# --------------------------------------------------------------------------------------
# input conversions
# --------------------------------------------------------------------------------------
def _x_variants(X, rng):
    """name -> (X as given, the same values as a C-contiguous float64 array)."""
    n, p = X.shape
    wide = np.empty((n, 2 * p))
    wide[:, ::2] = X
    wide[:, 1::2] = np.nan  # any read of the gaps would poison the result
    rev = np.ascontiguousarray(X[::-1])
    ro = X.copy()
    ro.setflags(write=False)
    Xi = rng.integers(-3, 4, X.shape)
    X16 = X.astype(np.float16)
    X32 = X.astype(np.float32)
    return {
        "X-strided": (wide[:, ::2], X),
        "X-negstride": (rev[::-1], X),
        "X-fortran": (np.asfortranarray(X), X),
        "X-readonly": (ro, X),
        "X-int": (Xi, Xi.astype(np.float64)),
        "X-float16": (X16, X16.astype(np.float64)),
        "X-float32": (X32, X32.astype(np.float64)),
        "X-list": (X.tolist(), X),
    }


X_VARIANTS = ["X-strided", "X-negstride", "X-fortran", "X-readonly", "X-int", "X-float16",
              "X-float32", "X-list"]
THETA_VARIANTS = ["theta-readonly", "theta-strided", "theta-otherdtype"]
OTHER_VARIANTS = ["y-strided", "y-readonly-fortran", "y-int", "sw-int",
                  "sw-readonly-strided"]
METHODS = ["loss", "loss_grad", "per_sample_grads", "jacobian", "predict"]
Y_METHODS = ["loss", "loss_grad", "per_sample_grads"]


def _call(net, method, theta, X, y, sw):
    """Run ``method``; return a tuple of float64 arrays."""
    if method == "loss":
        return (np.asarray(net.loss(theta, X, y, sample_weight=sw), dtype=np.float64),)
    if method == "loss_grad":
        v, g = net.loss_grad(theta, X, y, sample_weight=sw)
        return np.asarray(v, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if method == "per_sample_grads":
        return (np.asarray(net.per_sample_grads(theta, X, y, sample_weight=sw), dtype=np.float64),)
    if method == "jacobian":
        return (np.asarray(net.jacobian(theta, X), dtype=np.float64),)
    if method == "predict":
        return (np.asarray(net.predict(theta, X), dtype=np.float64),)
    raise AssertionError(method)


_CONVERSION_CASES = [(m, v) for m in METHODS for v in X_VARIANTS + THETA_VARIANTS] + [
    (m, v) for m in Y_METHODS for v in OTHER_VARIANTS]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method,variant", _CONVERSION_CASES,
                         ids=[f"{m}-{v}" for m, v in _CONVERSION_CASES])
def test_input_conversions(cb, method, variant, dtype):
    """Odd layouts, read-only and other dtypes give the answer of a C-contiguous copy
    converted once to the Network's dtype."""
    arch, act, loss = [5, 7, 3], "tanh", "binary_log_loss"
    rng = np.random.default_rng(common.seed("conv", method, variant))
    theta, X, y, sw = ref.make_problem(arch, loss, n=N, weighted=True,
                                       seed=common.seed("conv", method, variant))
    theta = theta.astype(dtype)
    net = _net(cb, arch, act, loss, 0.3, dtype)
    theta_in, X_in, y_in, sw_in = theta, X, y, sw
    X_base, y_base, sw_base = X, y, sw
    if variant.startswith("X-"):
        X_in, X_base = _x_variants(X, rng)[variant]
    elif variant == "theta-readonly":
        theta_in = theta.copy()
        theta_in.setflags(write=False)
    elif variant == "theta-strided":
        wide = np.full(2 * theta.size, np.nan, dtype=dtype)
        wide[::2] = theta
        theta_in = wide[::2]
    elif variant == "theta-otherdtype":
        # float32 values given to a float64 network and vice versa
        theta = theta.astype(np.float32).astype(dtype)
        theta_in = theta.astype(np.float64 if dtype == np.float32 else np.float32)
    elif variant == "y-strided":
        wide = np.full((N, 2 * arch[-1]), np.nan)
        wide[:, ::2] = y
        y_in = wide[:, ::2]
    elif variant == "y-readonly-fortran":
        y_in = np.asfortranarray(y)
        y_in.setflags(write=False)
    elif variant == "y-int":
        y_in = y.astype(np.int64)
    elif variant == "sw-int":
        sw_in = rng.integers(1, 4, N)
        sw_base = sw_in.astype(np.float64)
    elif variant == "sw-readonly-strided":
        wide = np.full(2 * N, np.nan)
        wide[::2] = sw
        sw_in = wide[::2]
        sw_in.setflags(write=False)
    expected = _call(net, method, theta, np.ascontiguousarray(X_base, dtype=dtype),
                     np.ascontiguousarray(y_base, dtype=dtype),
                     None if sw_base is None else np.ascontiguousarray(sw_base, dtype=dtype))
    actual = _call(net, method, theta_in, X_in, y_in, sw_in)
    for a, e in zip(actual, expected):
        assert np.all(np.isfinite(a))
        # the same computation on the same values: (almost) bit-identical
        assert_close(a, e, dtype, factor=0.1 if dtype == np.float32 else 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pure_and_deterministic(cb, dtype):
    """No method modifies its inputs; repeated calls give identical results."""
    arch, act, loss = [4, 6, 5, 2], "mish", "log_loss"
    theta, X, y, sw = _problem(arch, loss, dtype, True, "pure")[0]
    net = _net(cb, arch, act, loss, 0.3, dtype)
    copies = [a.copy() for a in (theta, X, y, sw)]
    for method in METHODS:
        first = _call(net, method, theta, X, y, sw)
        second = _call(net, method, theta, X, y, sw)
        for a, b in zip(first, second):
            assert_array_equal(a, b, err_msg=method)
        for a, c in zip((theta, X, y, sw), copies):
            assert_array_equal(a, c, err_msg=f"{method} modified an input")


@pytest.mark.parametrize("dtype", DTYPES)
def test_larger_batch(cb, dtype):
    """An odd, larger N (blocked kernels, chunking) against the reference."""
    arch, act, loss, n = [6, 11, 7, 3], "swish", "log_loss", 257
    (theta, X, y, sw), (t64, X64, y64, sw64) = _problem(arch, loss, dtype, True, "big", n=n)
    net = _net(cb, arch, act, loss, 0.3, dtype)
    v, g = net.loss_grad(theta, X, y, sample_weight=sw)
    ev, eg = ref.loss_grad(arch, act, loss, t64, X64, y64, sw64, 0.3)
    assert_close(v, ev, dtype)
    assert_close(g, eg, dtype)
    assert_close(net.per_sample_grads(theta, X, y, sample_weight=sw),
                 ref.per_sample_grads(arch, act, loss, t64, X64, y64), dtype)
    assert_close(net.jacobian(theta, X), ref.jacobian(arch, act, t64, X64), dtype)
    assert_close(net.predict(theta, X), ref.predict(arch, act, loss, t64, X64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varying_batch_sizes_on_one_network(cb, dtype):
    """Calls with different N (and methods) on one Network do not leak state."""
    arch, act, loss = [5, 7, 3], "tanh", "poisson"
    net = _net(cb, arch, act, loss, 0.3, dtype)
    for i, n in enumerate([9, 40, 1, 2, 40, 9, 3]):
        (theta, X, y, sw), (t64, X64, y64, sw64) = _problem(arch, loss, dtype, True, "vary",
                                                            i, n=n)
        G = net.per_sample_grads(theta, X, y, sample_weight=sw)
        J = net.jacobian(theta, X)
        v, g = net.loss_grad(theta, X, y, sample_weight=sw)
        P = net.predict(theta, X)
        assert_close(v, ref.loss(arch, act, loss, t64, X64, y64, sw64, 0.3), dtype)
        assert_close(g, ref.loss_grad(arch, act, loss, t64, X64, y64, sw64, 0.3)[1], dtype)
        assert_close(G, ref.per_sample_grads(arch, act, loss, t64, X64, y64), dtype)
        assert_close(J, ref.jacobian(arch, act, t64, X64), dtype)
        assert_close(P, ref.predict(arch, act, loss, t64, X64), dtype)


def test_concurrent_calls_on_one_network(cb):
    """Threads sharing one Network get the answers of sequential calls."""
    from concurrent.futures import ThreadPoolExecutor

    arch, act, loss = [6, 30, 20, 3], "mish", "squared_error"
    net = _net(cb, arch, act, loss, 0.3)
    problems = [ref.make_problem(arch, loss, n=50 + 7 * i, weighted=True, seed=i)
                for i in range(8)]

    def work(p):
        theta, X, y, sw = p
        return [net.loss_grad(theta, X, y, sample_weight=sw)[1],
                net.per_sample_grads(theta, X, y), net.jacobian(theta, X)]

    expected = [work(p) for p in problems]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for got, exp in zip(pool.map(work, problems), expected):
                for a, b in zip(got, exp):
                    assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_sample_weights_drop_samples(cb, dtype):
    arch, act, loss = [5, 7, 3], "softplus", "binary_log_loss"
    (theta, X, y, sw), _ = _problem(arch, loss, dtype, True, "zero")
    sw = sw.copy()
    keep = np.ones(N, dtype=bool)
    keep[[1, 4, 5]] = False
    sw[~keep] = 0
    net = _net(cb, arch, act, loss, 0.3, dtype)
    v0, g0 = net.loss_grad(theta, X, y, sample_weight=sw)
    v1, g1 = net.loss_grad(theta, X[keep], y[keep], sample_weight=sw[keep])
    assert_close(v0, v1, dtype)
    assert_close(g0, g1, dtype)


# --------------------------------------------------------------------------------------
# invalid input
# --------------------------------------------------------------------------------------
def _re(*alternatives):
    """A case-insensitive regex matching any of ``alternatives``."""
    return re.compile("|".join(a.pattern if isinstance(a, re.Pattern) else a
                               for a in alternatives), re.IGNORECASE)


RE_FINITE = _re("nan", "finite", "inf")
RE_LENGTH = _re("sample", "length", "shape", "inconsistent", "match", "rows", "size", "number")
RE_EMPTY = _re("empty", "0 sample", "zero", "at least", "minimum", "no sample", "no data")
RE_NDIM = _re("dim", "2d", "2-d", "1d", "1-d", "shape")
RE_FEATURES = _re("feature", "column", "shape", "expect", "n_0", "input")
RE_OUTPUTS = _re("output", "column", "shape", "target", "n_l", "class", "expect")
RE_THETA = _re("theta", "param", "length", "size", "shape", "expect")
RE_WEIGHT = _re("negative", "non-negative", "positive", "weight")
RE_SIZES = _re("layer", "size", "positive", "at least", ">= ?1")
RE_COUNT = _re("layer", "size", "at least", "two", "2")

# name -> (methods it applies to, function (theta, X, y, sw) -> (theta, X, y, sw), regex)
_BAD_INPUTS = {
    "X-nan": ("all", lambda t, X, y, w: (t, _set(X, (0, 0), np.nan), y, w), RE_FINITE),
    "X-inf": ("all", lambda t, X, y, w: (t, _set(X, (1, 2), np.inf), y, w), RE_FINITE),
    "X-neginf": ("all", lambda t, X, y, w: (t, _set(X, (2, 1), -np.inf), y, w), RE_FINITE),
    "y-nan": ("y", lambda t, X, y, w: (t, X, _set(y, (0, 1), np.nan), w), RE_FINITE),
    "y-inf": ("y", lambda t, X, y, w: (t, X, _set(y, (3, 0), np.inf), w), RE_FINITE),
    "sw-nan": ("y", lambda t, X, y, w: (t, X, y, _set(w, (2,), np.nan)), RE_FINITE),
    "theta-nan": ("all", lambda t, X, y, w: (_set(t, (3,), np.nan), X, y, w), RE_FINITE),
    "theta-inf": ("all", lambda t, X, y, w: (_set(t, (-1,), np.inf), X, y, w), RE_FINITE),
    "y-too-short": ("y", lambda t, X, y, w: (t, X, y[:-1], w), RE_LENGTH),
    "X-too-short": ("y", lambda t, X, y, w: (t, X[:-1], y, w), RE_LENGTH),
    "sw-too-short": ("y", lambda t, X, y, w: (t, X, y, w[:-1]), RE_LENGTH),
    "sw-too-long": ("y", lambda t, X, y, w: (t, X, y, np.r_[w, 1.0]), RE_LENGTH),
    "sw-2d": ("y", lambda t, X, y, w: (t, X, y, w[:, None]), _re(RE_NDIM, "weight")),
    "sw-negative": ("y", lambda t, X, y, w: (t, X, y, _set(w, (1,), -0.5)), RE_WEIGHT),
    "X-empty": ("all", lambda t, X, y, w: (t, X[:0], y[:0], w[:0]), RE_EMPTY),
    "X-1d": ("all", lambda t, X, y, w: (t, X[0], y, w), RE_NDIM),
    "X-3d": ("all", lambda t, X, y, w: (t, X[None], y, w), RE_NDIM),
    "X-scalar": ("all", lambda t, X, y, w: (t, np.float64(1.0), y, w), RE_NDIM),
    "y-3d": ("y", lambda t, X, y, w: (t, X, y[None], w), _re(RE_NDIM, "output")),
    "X-too-few-features": ("all", lambda t, X, y, w: (t, X[:, :-1], y, w), RE_FEATURES),
    "X-too-many-features": ("all", lambda t, X, y, w: (t, np.c_[X, X[:, :1]], y, w),
                            RE_FEATURES),
    "y-wrong-outputs": ("y", lambda t, X, y, w: (t, X, np.c_[y, y[:, :1]], w), RE_OUTPUTS),
    "y-1d-multioutput": ("y", lambda t, X, y, w: (t, X, y[:, 0], w),
                         _re(RE_OUTPUTS, RE_NDIM)),
    "theta-too-short": ("all", lambda t, X, y, w: (t[:-1], X, y, w), RE_THETA),
    "theta-too-long": ("all", lambda t, X, y, w: (np.r_[t, 0.0], X, y, w), RE_THETA),
    "theta-2d": ("all", lambda t, X, y, w: (t[None], X, y, w), _re(RE_THETA, RE_NDIM)),
}


def _set(a, index, value):
    a = np.array(a, dtype=np.float64)
    a[index] = value
    return a


_BAD_CASES = [(m, name) for name, (which, _, _) in _BAD_INPUTS.items()
              for m in (METHODS if which == "all" else Y_METHODS)]


@pytest.mark.parametrize("method,bad", _BAD_CASES, ids=[f"{m}-{b}" for m, b in _BAD_CASES])
def test_bad_input_raises(cb, method, bad):
    arch, act, loss = [3, 4, 2], "tanh", "squared_error"
    theta, X, y, sw = ref.make_problem(arch, loss, n=5, weighted=True, seed=1)
    net = _net(cb, arch, act, loss)
    _, make, regex = _BAD_INPUTS[bad]
    theta, X, y, sw = make(theta, X, y, sw)
    with pytest.raises((ValueError, TypeError), match=regex):
        _call(net, method, theta, X, y, sw)


# (the package's float32 conversion warns "overflow encountered in cast" before it
# raises; harmless, not part of what is tested here)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("what", ["X", "y", "theta", "sample_weight"])
def test_float32_overflow_raises(cb, what):
    """Finite float64 values that overflow float32 are caught after conversion."""
    arch, loss = [3, 4, 2], "squared_error"
    theta, X, y, sw = ref.make_problem(arch, loss, n=5, weighted=True, seed=2)
    args = dict(theta=theta, X=X, y=y, sample_weight=sw)
    args[what] = _set(args[what], (0,) * args[what].ndim, 1e300)
    net = _net(cb, arch, "tanh", loss, 0.0, np.float32)
    with pytest.raises((ValueError, TypeError), match=RE_FINITE):
        net.loss_grad(args["theta"], args["X"], args["y"], sample_weight=args["sample_weight"])


@pytest.mark.parametrize("n_rows", [4, 40000], ids=["small", "large"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e308],
                         ids=["nan", "inf", "-inf", "huge-finite"])
def test_finiteness_check_both_paths(cb, value, n_rows):
    """Small arrays are tested entry by entry, large ones by a float64 sum
    first; either way a NaN or infinity anywhere is refused and finite values
    whose sum overflows are accepted, without a warning."""
    arch, loss = [3, 4, 2], "squared_error"
    theta, X, y, _ = ref.make_problem(arch, loss, n=n_rows, seed=3)
    X[:2, 0] = value  # two of them: a huge finite pair overflows the sum
    net = _net(cb, arch, "tanh", loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if np.isfinite(value):
            net.predict(theta, X)
        else:
            with pytest.raises(ValueError, match=RE_FINITE):
                net.predict(theta, X)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_scan(dtype):
    """The nogil scan behind the small-array check: NaN and +-inf anywhere,
    the largest finite values accepted; other arrays are left to NumPy."""
    from cbackprop._network import all_finite
    a = np.full(37, np.finfo(dtype).max, dtype)
    assert all_finite(a) is True
    for i, v in itertools.product([0, 17, 36], [np.nan, np.inf, -np.inf]):
        b = a.copy()
        b[i] = v
        assert all_finite(b) is False
    assert all_finite(np.ones((4, 4), dtype)[:, ::2]) is None
    assert all_finite(np.ones(3, np.float16)) is None


_BAD_NETWORKS = {
    "activation-unknown": (dict(activation="sigmoid"), _re("activation")),
    "activation-none": (dict(activation=None), _re("activation")),
    "loss-unknown": (dict(loss="hinge"), _re("loss")),
    "loss-none": (dict(loss=None), _re("loss")),
    "alpha-negative": (dict(alpha=-0.1), _re("alpha")),
    "alpha-nan": (dict(alpha=np.nan), _re("alpha")),
    "sizes-zero": (dict(layer_sizes=[3, 0, 2]), RE_SIZES),
    "sizes-negative": (dict(layer_sizes=[3, -4, 2]), RE_SIZES),
    "sizes-zero-output": (dict(layer_sizes=[3, 0]), RE_SIZES),
    "sizes-one": (dict(layer_sizes=[3]), RE_COUNT),
    "sizes-empty": (dict(layer_sizes=[]), RE_COUNT),
    "dtype-int32": (dict(dtype=np.int32), _re("dtype", "float")),
    "dtype-complex": (dict(dtype=np.complex128), _re("dtype", "float")),
}


@pytest.mark.parametrize("bad", _BAD_NETWORKS.keys())
def test_bad_network_raises(cb, bad):
    kwargs = dict(layer_sizes=[3, 4, 2], activation="tanh", loss="squared_error", alpha=0.0,
                  dtype=np.float64)
    change, regex = _BAD_NETWORKS[bad]
    kwargs.update(change)
    sizes = kwargs.pop("layer_sizes")
    with pytest.raises((ValueError, TypeError), match=regex):
        cb.Network(sizes, **kwargs)


def test_valid_network_arguments(cb):
    """The good counterparts of the bad ones above are accepted."""
    for act, loss in itertools.product(ref.ACTIVATIONS, ref.LOSSES):
        cb.Network([3, 2], activation=act, loss=loss)
    cb.Network((3, 1), alpha=0.0)
    cb.Network(np.array([3, 4, 1]), alpha=1e3, dtype=np.float32)
    cb.Network([3, 4, 1], dtype="float64")


# --------------------------------------------------------------------------------------
# numerical stability
# --------------------------------------------------------------------------------------
SATURATING = ("logistic", "tanh", "softplus", "swish", "mish")
_STABILITY_CASES = [
    (act, loss) for act in SATURATING for loss in ref.LOSSES
    # exp(z_L) of an unbounded hidden activation truly overflows for huge inputs
    if not (loss == "poisson" and act in ("softplus", "swish", "mish"))
]


@pytest.mark.parametrize("arch", HIDDEN_ARCHS.values(), ids=HIDDEN_ARCHS.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,loss", _STABILITY_CASES,
                         ids=[f"{a}-{l}" for a, l in _STABILITY_CASES])
def test_huge_inputs_stay_finite(cb, act, loss, dtype, arch):
    theta, X, y, sw = ref.make_problem(arch, loss, n=N, weighted=True,
                                       seed=common.seed("huge", act, loss, arch))
    X = X * (1e4 if dtype == np.float64 else 80.0)
    theta, X, y, sw = _rounded(dtype, theta, X, y, sw)
    net = _net(cb, arch, act, loss, 0.3, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = net.loss_grad(theta, X, y, sample_weight=sw)
        G = net.per_sample_grads(theta, X, y, sample_weight=sw)
        J = net.jacobian(theta, X)
        P = net.predict(theta, X)
    for name, out in (("loss", value), ("grad", grad), ("per_sample_grads", G),
                      ("jacobian", J), ("predict", P)):
        assert np.all(np.isfinite(out)), name
    if dtype == np.float64:
        # and the values are right, not merely finite
        t64, X64, y64, sw64 = _f64(theta, X, y, sw)
        exp_value, exp_grad = ref.loss_grad(arch, act, loss, t64, X64, y64, sw64, 0.3)
        assert_close(value, exp_value, dtype, factor=1e4)
        assert_close(grad, exp_grad, dtype, factor=1e4)
        assert_close(_check_predict_shape(P, N, arch[-1]),
                     ref.predict(arch, act, loss, t64, X64), dtype, factor=1e4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["log_loss", "binary_log_loss"])
def test_huge_raw_outputs_log_losses(cb, loss, dtype):
    """Log losses on raw outputs of +-1e4 (1e2 in float32): finite, and right."""
    arch = [2, 3]
    big = 1e4 if dtype == np.float64 else 1e2
    theta = np.zeros(ref.n_params(arch))
    coefs, intercepts = ref.unpack(arch, theta)
    coefs[0][:] = [[big, -big, 0.0], [0.0, big, -big]]
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    if loss == "binary_log_loss":
        y = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    theta, X, y = _rounded(dtype, theta, X, y)
    net = _net(cb, arch, "identity", loss, 0.0, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = net.loss_grad(theta, X, y)
        G = net.per_sample_grads(theta, X, y)
        P = net.predict(theta, X)
    t64, X64, y64 = _f64(theta, X, y)
    exp_value, exp_grad = ref.loss_grad(arch, "identity", loss, t64, X64, y64)
    assert_close(value, exp_value, dtype)
    assert_close(grad, exp_grad, dtype)
    assert_close(G, ref.per_sample_grads(arch, "identity", loss, t64, X64, y64), dtype)
    assert_close(P, ref.predict(arch, "identity", loss, t64, X64), dtype)
