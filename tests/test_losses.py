"""Loss kernels on raw predictions (``cbackprop._losses``) against NumPy/SciPy.

Per-sample losses on raw z (row i of Z), y = row i of Y:

* squared_error    0.5 ||y - z||^2                        link identity
* poisson          sum xlogy(y, y) - y z - y + exp(z)     link exp
* log_loss         sum(y) logsumexp(z) - y . z            link softmax
* binary_log_loss  sum softplus(z) - y z                  link logistic

``loss_grad_memview`` returns ``(sum_i w_i l_i, G)`` with
``G[i] = scale w_i dl_i/dz_i``; ``hess_prod_memview`` returns
``scale H_i V[r, i]``; ``sqrt_hess_memview`` returns S (C, N, C) with
``sum_c S[c, i] S[c, i]^T = scale H_i``.
"""
import warnings

import numpy as np
import pytest
from scipy.special import expit, logsumexp, softmax, xlogy

from cbackprop._losses import (Loss, hess_prod_memview, link_memview,
                               loss_grad_memview, sqrt_hess_memview)
from common import DTYPES, assert_close

LOSSES = [pytest.param(l, id=l.name.lower()) for l in Loss]
SHAPES = [pytest.param(s, id="N{}xC{}".format(*s)) for s in [(1, 1), (1, 3), (5, 1), (6, 4)]]


# ---------------------------------------------------------------- reference
def ref_rows(loss, Z, Y):
    """Per-sample losses l_i, float64."""
    Z, Y = np.asarray(Z, np.float64), np.asarray(Y, np.float64)
    if loss == Loss.SQUARED_ERROR:
        return 0.5 * ((Y - Z) ** 2).sum(1)
    if loss == Loss.POISSON:
        return (xlogy(Y, Y) - Y * Z - Y + np.exp(Z)).sum(1)
    if loss == Loss.LOG_LOSS:
        return Y.sum(1) * logsumexp(Z, axis=1) - (Y * Z).sum(1)
    return (np.logaddexp(0.0, Z) - Y * Z).sum(1)


def ref_magnitude(loss, Z, Y):
    """Per-sample sum of the absolute values of the terms of l_i: the scale
    of the rounding errors of any evaluation of l_i (cancellation-aware)."""
    Z, Y = np.asarray(Z, np.float64), np.asarray(Y, np.float64)
    if loss == Loss.SQUARED_ERROR:
        return ref_rows(loss, Z, Y)
    if loss == Loss.POISSON:
        return (np.abs(xlogy(Y, Y)) + np.abs(Y * Z) + Y + np.exp(Z)).sum(1)
    if loss == Loss.LOG_LOSS:
        return (np.abs(Y) * (np.abs(logsumexp(Z, axis=1))[:, None] + np.abs(Z))).sum(1)
    return (np.logaddexp(0.0, Z) + np.abs(Y * Z)).sum(1)


def ref_link(loss, Z):
    Z = np.asarray(Z, np.float64)
    if loss == Loss.SQUARED_ERROR:
        return Z.copy()
    if loss == Loss.POISSON:
        return np.exp(Z)
    if loss == Loss.LOG_LOSS:
        return softmax(Z, axis=1)
    return expit(Z)


def ref_grad(loss, Z, Y):
    """dl_i/dz_i, float64 (log_loss: sum(y) p - y)."""
    Y = np.asarray(Y, np.float64)
    mu = ref_link(loss, Z)
    if loss == Loss.LOG_LOSS:
        mu = Y.sum(1, keepdims=True) * mu
    return mu - Y


def ref_hess(loss, Z, Y):
    """H_i = d^2 l_i / dz_i^2, shape (N, C, C), float64."""
    Z, Y = np.asarray(Z, np.float64), np.asarray(Y, np.float64)
    N, C = Z.shape
    if loss == Loss.LOG_LOSS:
        p = softmax(Z, axis=1)
        H = np.einsum("ij,jk->ijk", p, np.eye(C)) - np.einsum("ij,ik->ijk", p, p)
        return Y.sum(1)[:, None, None] * H
    if loss == Loss.SQUARED_ERROR:
        d = np.ones_like(Z)
    elif loss == Loss.POISSON:
        d = np.exp(Z)
    else:
        d = expit(Z) * expit(-Z)
    return np.einsum("ij,jk->ijk", d, np.eye(C))


def amplification(loss, Z):
    """Relative-error factor of the link, (N, C).

    The softmax is evaluated as exp(z_k - lse(z)): the absolute rounding error
    of lse and of the subtraction becomes a relative error of p_k, so p_k is
    good to ~eps (1 + |z_k| + 2 |lse|), not to a few eps (SciPy's softmax
    divides by the sum instead). The other links are plain libm calls."""
    Z = np.asarray(Z, np.float64)
    if loss != Loss.LOG_LOSS:
        return np.ones_like(Z)
    return 1.0 + np.abs(Z) + 2.0 * np.abs(logsumexp(Z, axis=1, keepdims=True))


def grad_magnitude(loss, Z, Y):
    """Elementwise error scale of dl/dz = (sum(y)) mu - y."""
    Y = np.abs(np.asarray(Y, np.float64))
    mu = np.abs(ref_link(loss, Z)) * amplification(loss, Z)
    if loss == Loss.LOG_LOSS:
        mu = mu * Y.sum(1, keepdims=True)
    return mu + Y


def make_data(loss, N, C, dtype, seed=0):
    """Raw predictions and valid targets, rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(scale=1.5, size=(N, C))
    if loss == Loss.SQUARED_ERROR:
        Y = rng.normal(scale=2.0, size=(N, C))
    elif loss == Loss.POISSON:
        Y = rng.poisson(np.exp(rng.normal(size=(N, C)))).astype(np.float64)
        Y.flat[::3] = 0.0  # always some y = 0 (0 log 0 = 0)
        Y.flat[1::4] = 2.5  # and a non-integer count
    elif loss == Loss.LOG_LOSS:
        Y = np.zeros((N, C))
        Y[np.arange(N), rng.integers(C, size=N)] = 1.0  # one-hot rows
        if N > 1:
            Y[-1] = rng.dirichlet(np.ones(C))  # a soft-label row
    else:
        Y = (rng.uniform(size=(N, C)) < 0.5).astype(np.float64)
        Y.flat[::3] = 0.3  # soft binary targets
    return Z.astype(dtype), Y.astype(dtype)


def fd1(fun, x, h):
    """4th-order central difference of fun at x (scalar step)."""
    return (fun(x - 2 * h) - 8 * fun(x - h) + 8 * fun(x + h) - fun(x + 2 * h)) / (12 * h)


# ------------------------------------------------------------ value, gradient
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_value_and_gradient_match_reference(loss, dtype, shape):
    Z, Y = make_data(loss, *shape, dtype)
    total, G = loss_grad_memview(loss, Z, Y)
    assert G.shape == Z.shape and G.dtype == dtype
    assert np.isscalar(total) and np.isfinite(total)
    assert_close(total, ref_rows(loss, Z, Y).sum(), dtype, "eps", factor=8,
                 scale=ref_magnitude(loss, Z, Y).sum(), tiny=True, err_msg="loss")
    assert_close(G, ref_grad(loss, Z, Y), dtype, "eps", factor=8,
                 scale=grad_magnitude(loss, Z, Y), tiny=True, err_msg="gradient")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_matches_fd(loss, shape):
    """G against a 4th-order central difference of the kernel's per-sample loss
    (one row at a time), float64."""
    Z, Y = make_data(loss, *shape, np.float64, seed=1)
    G = loss_grad_memview(loss, Z, Y)[1]
    fd = np.empty_like(Z)
    for i in range(Z.shape[0]):
        for k in range(Z.shape[1]):
            def row_loss(t, i=i, k=k):
                z = Z[i:i + 1].copy()
                z[0, k] = t
                return loss_grad_memview(loss, z, Y[i:i + 1])[0]
            fd[i, k] = fd1(row_loss, Z[i, k], 1e-3)
    np.testing.assert_allclose(G, fd, rtol=5e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_rows_are_independent(loss, dtype):
    """The batch total is the sum of single-row totals, and G row i only
    depends on row i."""
    Z, Y = make_data(loss, 6, 3, dtype, seed=2)
    total, G = loss_grad_memview(loss, Z, Y)
    parts = [loss_grad_memview(loss, Z[i:i + 1], Y[i:i + 1]) for i in range(6)]
    assert_close(total, sum(p[0] for p in parts), dtype, "eps", factor=8, scale=0.0)
    np.testing.assert_array_equal(G, np.concatenate([p[1] for p in parts]))


@pytest.mark.parametrize("scale", [1.0, 0.37], ids=["scale1", "scale0.37"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_sample_weight_and_scale(loss, dtype, scale):
    """total = sum_i w_i l_i (scale does not enter); G[i] = scale w_i dl_i/dz_i;
    a zero weight zeroes its row of G."""
    Z, Y = make_data(loss, 6, 3, dtype, seed=3)
    w = np.array([0.5, 2.0, 0.0, 1.0, 3.25, 0.125], dtype=dtype)
    total, G = loss_grad_memview(loss, Z, Y, sample_weight=w, scale=scale)
    rows = ref_rows(loss, Z, Y)
    w64 = w.astype(np.float64)
    assert_close(total, (w64 * rows).sum(), dtype, "eps", factor=8,
                 scale=(w64 * ref_magnitude(loss, Z, Y)).sum(), tiny=True,
                 err_msg="weighted loss")
    g = ref_grad(loss, Z, Y)
    mag = grad_magnitude(loss, Z, Y)
    assert_close(G, scale * w64[:, None] * g, dtype, "eps", factor=8,
                 scale=scale * w64[:, None] * mag, tiny=True, err_msg="weighted gradient")
    assert (G[2] == 0).all()
    # unweighted with a scale: the total is unscaled
    total1, G1 = loss_grad_memview(loss, Z, Y, scale=scale)
    assert_close(total1, rows.sum(), dtype, "eps", factor=8,
                 scale=ref_magnitude(loss, Z, Y).sum(), tiny=True, err_msg="unweighted loss")
    assert_close(G1, scale * g, dtype, "eps", factor=8, scale=scale * mag, tiny=True,
                 err_msg="scaled gradient")
    # all-ones weights are the unweighted case
    total2, G2 = loss_grad_memview(loss, Z, Y, sample_weight=np.ones(6, dtype), scale=scale)
    assert total2 == total1
    np.testing.assert_array_equal(G2, G1)


# ----------------------------------------------------------------------- link
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_link(loss, dtype):
    Z, _ = make_data(loss, 6, 4, dtype, seed=4)
    Z[0] = [-30.0, 30.0, 0.0, 1e-3]  # saturated entries too
    P = link_memview(loss, Z)
    assert P.shape == Z.shape and P.dtype == dtype
    mu = ref_link(loss, Z)
    assert_close(P, mu, dtype, "eps", factor=4, scale=np.abs(mu) * amplification(loss, Z),
                 tiny=True, err_msg="link")
    if loss == Loss.LOG_LOSS:
        assert_close(P.sum(1), np.ones(P.shape[0]), dtype, "eps", factor=16, scale=0.0)
    if loss == Loss.SQUARED_ERROR:
        np.testing.assert_array_equal(P, Z)


# -------------------------------------------------------------------- Hessian
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_hess_prod_matches_closed_form(loss, dtype, shape):
    Z, Y = make_data(loss, *shape, dtype, seed=5)
    k, scale = 3, 0.7
    V = np.random.default_rng(6).normal(size=(k,) + shape).astype(dtype)
    HV = hess_prod_memview(loss, Z, Y, V, scale)
    assert HV.shape == V.shape and HV.dtype == dtype
    H = ref_hess(loss, Z, Y)
    want = scale * np.einsum("icd,rid->ric", H, V.astype(np.float64))
    mag = scale * np.einsum("icd,rid->ric", np.abs(H), np.abs(V.astype(np.float64)))
    if loss == Loss.LOG_LOSS:  # sy (p * v - p (p.v)): cancels in p.v
        p = softmax(Z.astype(np.float64), axis=1) * amplification(loss, Z)
        sy = Y.astype(np.float64).sum(1)
        pv = np.einsum("ic,ric->ri", p, np.abs(V.astype(np.float64)))
        mag = mag + scale * sy[None, :, None] * p[None] * (np.abs(V) + pv[..., None])
    assert_close(HV, want, dtype, "eps", factor=16, scale=mag, tiny=True, err_msg="H V")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_hess_prod_matches_fd_jacobian(loss, shape):
    """H_i V against (a 4th-order FD Jacobian of the kernel's gradient) V,
    float64. Row i of G depends on row i of Z only, so column c of every
    row's Jacobian comes from one perturbation of Z[:, c]."""
    Z, Y = make_data(loss, *shape, np.float64, seed=7)
    N, C = shape
    scale = 1.3
    J = np.empty((N, C, C))  # J[i, :, c] = dG_i / dz_ic
    for c in range(C):
        def grad(t, c=c):
            z = Z.copy()
            z[:, c] += t
            return loss_grad_memview(loss, z, Y, scale=scale)[1]
        J[:, :, c] = fd1(grad, 0.0, 1e-3)
    np.testing.assert_allclose(J, scale * ref_hess(loss, Z, Y), rtol=5e-6, atol=1e-9,
                               err_msg="FD Jacobian of G vs closed-form H")
    V = np.random.default_rng(8).normal(size=(2, N, C))
    HV = hess_prod_memview(loss, Z, Y, V, scale)
    np.testing.assert_allclose(HV, np.einsum("icd,rid->ric", J, V), rtol=5e-6, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_sqrt_hess_factorizes_hessian(loss, dtype, shape):
    """sum_c S[c, i] S[c, i]^T = scale H_i: float64 to 1e-12, float32 to a
    few eps, and the documented factor itself."""
    Z, Y = make_data(loss, *shape, dtype, seed=9)
    scale = 0.6
    S = sqrt_hess_memview(loss, Z, Y, scale)
    N, C = shape
    assert S.shape == (C, N, C) and S.dtype == dtype
    S64 = S.astype(np.float64)
    HH = np.einsum("cij,cik->ijk", S64, S64)
    H = scale * ref_hess(loss, Z, Y)
    tol = 1e-12 if dtype == np.float64 else 16 * np.finfo(dtype).eps
    np.testing.assert_allclose(HH, H, rtol=tol, atol=tol * np.abs(H).max())
    # the factor: column c of F_i is S[c, i]
    if loss == Loss.LOG_LOSS:
        p = softmax(Z.astype(np.float64), axis=1)
        sy = Y.astype(np.float64).sum(1)
        F = np.sqrt(scale * sy[None, :, None] * p.T[:, :, None]) * (
            np.eye(C)[:, None, :] - p[None, :, :])
    else:
        d = np.sqrt(scale * np.einsum("ijj->ij", ref_hess(loss, Z, Y)))
        F = np.eye(C)[:, None, :] * d.T[:, :, None]
    amp = amplification(loss, Z).max()
    assert_close(S64, F, dtype, "eps", factor=8 * amp)
    if loss != Loss.LOG_LOSS:
        off = ~np.eye(C, dtype=bool)[:, None, :].repeat(N, axis=1)
        assert (S[off] == 0).all()


# --------------------------------------------------- log_loss, unnormalized y
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_loss_unnormalized_targets(dtype):
    """Rows of y that do not sum to 1 (or are all zero): l = sum(y) lse - y.z,
    G = sum(y) p - y, H = sum(y) (diag p - p p^T)."""
    Z = np.array([[0.3, -1.2, 2.0], [1.0, 0.5, -0.5], [0.0, 4.0, -3.0], [2.0, 1.0, 0.0]])
    Y = np.array([[0.2, 0.5, 0.1], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    Z, Y = Z.astype(dtype), Y.astype(dtype)
    loss = Loss.LOG_LOSS
    total, G = loss_grad_memview(loss, Z, Y)
    z, y = Z.astype(np.float64), Y.astype(np.float64)
    sy = y.sum(1)
    lse = logsumexp(z, axis=1)
    p = softmax(z, axis=1)
    assert_close(total, (sy * lse - (y * z).sum(1)).sum(), dtype, "eps", factor=8,
                 scale=ref_magnitude(loss, Z, Y).sum(), tiny=True)
    assert_close(G, sy[:, None] * p - y, dtype, "eps", factor=8,
                 scale=grad_magnitude(loss, Z, Y), tiny=True)
    assert (G[2] == 0).all()  # y = 0: no loss, no gradient
    H = ref_hess(loss, Z, Y)
    V = np.random.default_rng(10).normal(size=(1, 4, 3)).astype(dtype)
    HV = hess_prod_memview(loss, Z, Y, V, 1.0)
    amp = amplification(loss, Z).max()
    assert_close(HV, np.einsum("icd,rid->ric", H, V.astype(np.float64)), dtype, "eps",
                 factor=16, scale=amp * sy[None, :, None] * 3 * np.abs(V).max(), tiny=True)
    S = sqrt_hess_memview(loss, Z, Y, 1.0).astype(np.float64)
    assert_close(np.einsum("cij,cik->ijk", S, S), H, dtype, "eps", factor=16,
                 scale=amp * sy.max(), tiny=True)
    if dtype == np.float64:
        for i in range(4):
            for k in range(3):
                def row_loss(t, i=i, k=k):
                    zz = Z[i:i + 1].copy()
                    zz[0, k] = t
                    return loss_grad_memview(loss, zz, Y[i:i + 1])[0]
                np.testing.assert_allclose(G[i, k], fd1(row_loss, Z[i, k], 1e-3),
                                           rtol=5e-6, atol=1e-9)


# ----------------------------------------------------------------- poisson y=0
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_zero_targets(dtype):
    """0 log 0 = 0: with y = 0 the loss is exp(z) and G = exp(z)."""
    Z = np.array([[-2.0, 0.0, 1.5], [3.0, -40.0, 0.25]], dtype=dtype)
    Y = np.zeros_like(Z)
    total, G = loss_grad_memview(Loss.POISSON, Z, Y)
    ez = np.exp(Z.astype(np.float64))
    assert_close(total, ez.sum(), dtype, "eps", factor=8, scale=0.0, tiny=True)
    assert_close(G, ez, dtype, "eps", factor=8, scale=0.0, tiny=True)
    Y[0] = [0.0, 2.0, 0.0]
    total = loss_grad_memview(Loss.POISSON, Z, Y)[0]
    assert_close(total, ref_rows(Loss.POISSON, Z, Y).sum(), dtype, "eps", factor=8,
                 scale=ref_magnitude(Loss.POISSON, Z, Y).sum(), tiny=True)


# ------------------------------------------------------------------ stability
BIG = {np.float64: 1e4, np.float32: 80.0}


def extreme_data(loss, dtype):
    """Z with entries +-BIG mixed with ordinary values, valid Y."""
    L = BIG[dtype]
    Z, Y = make_data(loss, 6, 4, dtype, seed=11)
    Z[0] = [L, -L, 0.0, 1.0]
    Z[1] = [-L, L, -L, L]
    Z[2] = [L, L, L, L]
    Z[3] = [-L, -L, -L, -L]
    if loss == Loss.POISSON and dtype == np.float64:
        # exp(1e4) overflows any double: the true loss is not representable.
        # Stay below log(DBL_MAX / (N C)) on the positive side.
        Z = np.where(Z > 700.0, 700.0, Z)
    if loss == Loss.LOG_LOSS:
        Y[:4] = np.eye(4)[[2, 0, 3, 1]]  # one-hot on losing / tied classes
    return np.ascontiguousarray(Z, dtype), np.ascontiguousarray(Y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_extreme_predictions_finite_without_warnings(loss, dtype):
    Z, Y = extreme_data(loss, dtype)
    V = np.ones((2,) + Z.shape, dtype=dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        total, G = loss_grad_memview(loss, Z, Y, sample_weight=np.full(6, 0.5), scale=0.5)
        P = link_memview(loss, Z)
        HV = hess_prod_memview(loss, Z, Y, V, 1.0)
        S = sqrt_hess_memview(loss, Z, Y, 1.0)
        assert np.isfinite(total)
        for name, a in [("G", G), ("link", P), ("HV", HV), ("S", S)]:
            assert np.isfinite(a).all(), (name, a)
    # the values still match the (finite) reference; NumPy's own exp
    # underflows here, so this is outside the errstate block
    with np.errstate(under="ignore"):
        ref = ref_rows(loss, Z, Y)
        mag = ref_magnitude(loss, Z, Y)
        mu = ref_link(loss, Z)
        g = ref_grad(loss, Z, Y)
        H = ref_hess(loss, Z, Y)
        amp = amplification(loss, Z)
        gmag = grad_magnitude(loss, Z, Y)
    assert_close(total, 0.5 * ref.sum(), dtype, "eps", factor=8, scale=0.5 * mag.sum(),
                 tiny=True, err_msg="loss")
    assert_close(G, 0.25 * g, dtype, "eps", factor=8, scale=0.25 * gmag, tiny=True,
                 err_msg="gradient")
    assert_close(P, mu, dtype, "eps", factor=4, scale=np.abs(mu) * amp, tiny=True,
                 err_msg="link")
    HH = np.einsum("cij,cik->ijk", S.astype(np.float64), S.astype(np.float64))
    assert_close(HH, H, dtype, "eps", factor=16, scale=np.abs(H).max() * amp.max(), tiny=True,
                 err_msg="S S^T")


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_loss_dominant_class_on_losing_label(dtype):
    """softmax with a hugely dominant class, y one-hot on a losing class: a
    large finite loss (no log(0)), G = p - y exactly saturated."""
    L = BIG[dtype]
    Z = np.array([[L, -L, 0.0], [L, 0.0, -L]], dtype=dtype)
    Y = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    total, G = loss_grad_memview(Loss.LOG_LOSS, Z, Y)
    assert_close(total, 2 * L + L, dtype, "eps", factor=4, scale=0.0)
    # p = (1, e^-2L, e^-L) and (1, e^-L, e^-2L): exact saturation up to e^-L
    np.testing.assert_allclose(G, [[1.0, -1.0, 0.0], [1.0, -1.0, 0.0]], rtol=0,
                               atol=2 * np.exp(-L))
    # and y on the winning class: loss ~ exp(-L) ~ 0, G ~ 0
    total, G = loss_grad_memview(Loss.LOG_LOSS, Z, np.array([[1, 0, 0], [1, 0, 0]], dtype))
    assert 0.0 <= total <= 4 * np.exp(-L)
    assert np.abs(G).max() <= 2 * np.exp(-L)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_log_loss_saturated(dtype):
    """softplus(z) - y z at z = +-BIG: confidently wrong costs BIG, confidently
    right costs ~exp(-BIG); G = sigmoid(z) - y."""
    L = BIG[dtype]
    Z = np.array([[L, -L, L, -L]], dtype=dtype)
    Y = np.array([[0.0, 1.0, 1.0, 0.0]], dtype=dtype)
    total, G = loss_grad_memview(Loss.BINARY_LOG_LOSS, Z, Y)
    assert_close(total, 2 * L, dtype, "eps", factor=4, scale=0.0)
    np.testing.assert_allclose(G, [[1.0, -1.0, 0.0, 0.0]], rtol=0, atol=2 * np.exp(-L))
    S = sqrt_hess_memview(Loss.BINARY_LOG_LOSS, Z, Y, 1.0)
    assert np.isfinite(S).all() and np.abs(S).max() <= 2 * np.exp(-L / 2)
