"""Curvature quantities of ``cbackprop.Network`` against the dense reference.

References (``tests/reference.py``, independent of the package, float64):

* GGN and empirical Fisher: from the reference Jacobian and per-sample gradients.
* Hessian: 4th-order central differences (eps 1e-3) of the reference's own
  per-sample gradients, one (N, P, P) sweep per problem, weighted and regularized
  afterwards (``reference.hessian_from_per_sample``; checked against
  ``reference.hessian``, the differences of the reference ``loss_grad``, below). Its
  truncation error reaches 2.5e-10 of the largest entry on these problems (tanh,
  poisson), hence the comparison kind 'fd' (float64 tolerance 1e-9) for it and
  'reference' (1e-10) for the exact GGN and empirical Fisher (relu: the data are
  re-drawn until no hidden pre-activation lies within 0.05 of the kink, so that no
  difference stencil crosses it).

All inputs are rounded to float32 values first, so one float64 reference serves
both dtypes; tolerances are those of ``common.assert_close`` (relative, with a floor
of the same tolerance times the largest entry, as entries can cancel): float32
results to ``100 * eps32`` (1.2e-5; measured errors <= 3e-7), identities (the
package against itself) to the 'rounding' kind (1e-12, ``20 * eps32``).

The grid over activation x loss x sample_weight x alpha x architecture x dtype
runs in full for the products, the dense matrices, the diagonals and the blocks;
the identities run over a subset.
"""
import functools
import re

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import common
import reference as ref
from common import ARCHS, DTYPES, FLOATS, assert_close, dtype_id

N = 6
RELU_MARGIN = 0.05

GRID = [pytest.param(act, loss, weighted, alpha, arch, dtype,
                     id=f"{act}-{loss}-{'weighted' if weighted else 'unweighted'}"
                        f"-alpha{alpha}-{arch}-{dtype_id(dtype)}")
        for act in ref.ACTIVATIONS for loss in ref.LOSSES
        for weighted in (False, True) for alpha in (0.0, 0.3)
        for arch in ARCHS for dtype in FLOATS]
GRID_ARGS = "act,loss,weighted,alpha,arch,dtype"

# for identities: every activation, loss, architecture and dtype, weights and alpha on
SUBSET = [pytest.param(act, loss, arch, dtype, id=f"{act}-{loss}-{arch}-{dtype_id(dtype)}")
          for act in ref.ACTIVATIONS for loss in ref.LOSSES for arch in ARCHS
          for dtype in FLOATS]
SUBSET_ARGS = "act,loss,arch,dtype"


# ======================================================================================
# problems and references (cached: computed once per problem)
# ======================================================================================
def _hidden_preactivations(sizes, act, theta, X):
    zs, _ = ref.forward(sizes, act, theta, X)
    return np.concatenate([z.ravel() for z in zs[:-1]]) if len(zs) > 1 else np.ones(1)


@functools.lru_cache(maxsize=None)
def _data(arch, act, loss, n=N):
    """(theta, X, y, sw) in float64 holding float32 values; relu kinks avoided."""
    sizes = ARCHS[arch]
    for attempt in range(100):
        theta, X, y, sw = ref.make_problem(sizes, loss, n=n, weighted=True,
                                           seed=common.seed(arch, act, loss, n, attempt))
        theta, X, y, sw = (a.astype(np.float32).astype(np.float64) for a in (theta, X, y, sw))
        z = _hidden_preactivations(sizes, act, theta, X)
        if act != "relu" or np.abs(z).min() > RELU_MARGIN:
            return theta, X, y, sw
    raise AssertionError("no relu problem away from the kinks")


@functools.lru_cache(maxsize=None)
def _per_sample_hessians(arch, act, loss):
    theta, X, y, _ = _data(arch, act, loss)
    return ref.per_sample_hessians(ARCHS[arch], act, loss, theta, X, y, eps=1e-3)


@functools.lru_cache(maxsize=None)
def _expected(arch, act, loss, weighted, alpha):
    """Dense float64 references {'hessian', 'ggn', 'efisher'} (P, P)."""
    sizes = ARCHS[arch]
    theta, X, y, sw = _data(arch, act, loss)
    sw = sw if weighted else None
    return {"hessian": ref.hessian_from_per_sample(sizes, _per_sample_hessians(arch, act, loss),
                                                   sw, alpha),
            "ggn": ref.ggn(sizes, act, loss, theta, X, y, sw, alpha),
            "efisher": ref.efisher(sizes, act, loss, theta, X, y, sw, alpha)}


def _case(cb, act, loss, weighted, alpha, arch, dtype):
    """(net, theta, X, y, sw) for the package (inputs in ``dtype``)."""
    theta, X, y, sw = _data(arch, act, loss)
    net = cb.Network(list(ARCHS[arch]), activation=act, loss=loss, alpha=alpha, dtype=dtype)
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    return net, cast(theta), cast(X), cast(y), cast(sw) if weighted else None


def _vectors(P, dtype, k=3):
    """A vector (P,) and a block (P, k) holding values exact in both dtypes."""
    rng = np.random.default_rng(common.seed("V", P, k))
    v = rng.standard_normal(P).astype(np.float32).astype(dtype)
    V = rng.standard_normal((P, k)).astype(np.float32).astype(dtype)
    return v, V


# the comparison kind of each reference: the Hessian's comes from finite differences
REFERENCE_KIND = {"hessian": "fd", "ggn": "reference", "efisher": "reference"}
PRODUCTS = {"hessian": "hvp", "ggn": "ggn_vp", "efisher": "efisher_vp"}
DIAGONALS = {"hessian": "diag_hessian", "ggn": "diag_ggn", "efisher": "diag_efisher"}
BLOCKS = {"hessian": "block_hessian", "ggn": "block_ggn"}


# ======================================================================================
# the reference's own curvature additions
# ======================================================================================
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ["tanh", "relu", "mish"])
def test_reference_per_sample_hessians(act, loss, arch):
    """The per-sample route equals differences of the reference ``loss_grad``."""
    sizes = ARCHS[arch]
    theta, X, y, sw = _data(arch, act, loss)
    H = ref.hessian(sizes, act, loss, theta, X, y, sw, 0.3)
    assert_allclose(ref.hessian_from_per_sample(sizes, _per_sample_hessians(arch, act, loss),
                                                sw, 0.3),
                    H, rtol=1e-9, atol=1e-9 * np.abs(H).max())
    if len(sizes) == 2:  # linear in theta: the Hessian is the GGN
        G = ref.ggn(sizes, act, loss, theta, X, y, sw, 0.3)
        assert_allclose(H, G, rtol=1e-9, atol=1e-9 * np.abs(G).max())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_reference_hessian_backprop(act, loss, arch):
    """The exact twin (Hessian backpropagation) equals the differences of the
    reference's per-sample gradients."""
    sizes = ARCHS[arch]
    theta, X, y, sw = _data(arch, act, loss)
    H = ref.hessian_from_per_sample(sizes, _per_sample_hessians(arch, act, loss), sw, 0.3)
    assert_close(ref.hessian_backprop(sizes, act, loss, theta, X, y, sw, 0.3), H,
                 np.float64, "fd")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_reference_kfac_single_sample(loss, arch):
    sizes = ARCHS[arch]
    theta, X, y, _ = _data(arch, "softplus", loss)
    G = ref.ggn(sizes, "softplus", loss, theta, X[:1], y[:1])
    factors = ref.kfac(sizes, "softplus", loss, theta, X[:1], y[:1])
    for (A, Gl), block in zip(factors, ref.diagonal_blocks(sizes, G)):
        assert_allclose(np.kron(A, Gl), block, rtol=1e-12, atol=1e-14)


# ======================================================================================
# the full grid against the reference
# ======================================================================================
@pytest.mark.parametrize(GRID_ARGS, GRID)
def test_products(cb, act, loss, weighted, alpha, arch, dtype):
    """hvp, ggn_vp, efisher_vp with V of shape (P,) and (P, 3)."""
    net, theta, X, y, sw = _case(cb, act, loss, weighted, alpha, arch, dtype)
    expected = _expected(arch, act, loss, weighted, alpha)
    v, V = _vectors(net.n_params, dtype)
    for kind, method in PRODUCTS.items():
        M = expected[kind]
        for W in (v, V):
            out = getattr(net, method)(theta, X, y, W, sample_weight=sw)
            assert isinstance(out, np.ndarray) and out.dtype == dtype, (method, out.dtype)
            # the scale of the product: |M| |W| (entries of M W can cancel)
            assert_close(out, M @ W.astype(np.float64), dtype, REFERENCE_KIND[kind],
                         err_msg=f"{method} {W.shape}",
                         scale=np.abs(M).max() * np.abs(W).sum(axis=0).max())


@pytest.mark.parametrize(GRID_ARGS, GRID)
def test_dense_matrices(cb, act, loss, weighted, alpha, arch, dtype):
    """hessian, ggn, efisher (P, P): the reference, symmetric to rounding."""
    net, theta, X, y, sw = _case(cb, act, loss, weighted, alpha, arch, dtype)
    expected = _expected(arch, act, loss, weighted, alpha)
    P = net.n_params
    for kind, M in expected.items():
        out = getattr(net, kind)(theta, X, y, sample_weight=sw)
        assert out.shape == (P, P) and out.dtype == dtype, (kind, out.shape, out.dtype)
        assert_close(out, M, dtype, REFERENCE_KIND[kind], err_msg=kind)
        assert_close(out, out.T, dtype, "rounding", err_msg=f"{kind} symmetric",
                     scale=float(np.abs(out).max()))


@pytest.mark.parametrize(GRID_ARGS, GRID)
def test_diagonals(cb, act, loss, weighted, alpha, arch, dtype):
    """diag_hessian, diag_ggn, diag_efisher (P,): the reference's diagonals."""
    net, theta, X, y, sw = _case(cb, act, loss, weighted, alpha, arch, dtype)
    expected = _expected(arch, act, loss, weighted, alpha)
    for kind, method in DIAGONALS.items():
        out = getattr(net, method)(theta, X, y, sample_weight=sw)
        assert out.shape == (net.n_params,) and out.dtype == dtype, (method, out.shape)
        assert_close(out, np.diag(expected[kind]), dtype, REFERENCE_KIND[kind],
                     err_msg=method, scale=np.abs(expected[kind]).max())


@pytest.mark.parametrize(GRID_ARGS, GRID)
def test_blocks_and_kfac(cb, act, loss, weighted, alpha, arch, dtype):
    """block_hessian, block_ggn: the reference's per-layer diagonal blocks; kfac: the
    factors' definition (regularizer excluded)."""
    net, theta, X, y, sw = _case(cb, act, loss, weighted, alpha, arch, dtype)
    sizes = ARCHS[arch]
    expected = _expected(arch, act, loss, weighted, alpha)
    for kind, method in BLOCKS.items():
        out = getattr(net, method)(theta, X, y, sample_weight=sw)
        refs = ref.diagonal_blocks(sizes, expected[kind])
        assert isinstance(out, list) and len(out) == len(sizes) - 1, method
        for l, (B, R) in enumerate(zip(out, refs)):
            assert B.shape == R.shape == ((sizes[l] + 1) * sizes[l + 1],) * 2
            assert B.dtype == dtype
            assert_close(B, R, dtype, REFERENCE_KIND[kind], err_msg=f"{method}[{l}]",
                         scale=np.abs(expected[kind]).max())
    theta64, X64, y64, sw64 = _data(arch, act, loss)
    factors = ref.kfac(sizes, act, loss, theta64, X64, y64, sw64 if weighted else None)
    out = net.kfac(theta, X, y, sample_weight=sw)
    assert len(out) == len(factors)
    for l, ((A, G), (RA, RG)) in enumerate(zip(out, factors)):
        assert A.shape == RA.shape == (sizes[l] + 1,) * 2 and A.dtype == dtype
        assert G.shape == RG.shape == (sizes[l + 1],) * 2 and G.dtype == dtype
        assert_close(A, RA, dtype, "reference", err_msg=f"kfac A[{l}]")
        assert_close(G, RG, dtype, "reference", err_msg=f"kfac G[{l}]")


# ======================================================================================
# identities: the package against itself
# ======================================================================================
@pytest.mark.parametrize(SUBSET_ARGS, SUBSET)
def test_identities(cb, act, loss, arch, dtype):
    """Products, diagonals and blocks are those of the dense matrices; GGN and
    empirical Fisher are PSD; Hessian == GGN when the model is linear in theta
    (no hidden layer) and its diagonal equals the GGN's for relu and identity."""
    net, theta, X, y, sw = _case(cb, act, loss, True, 0.3, arch, dtype)
    sizes = ARCHS[arch]
    dense = {kind: getattr(net, kind)(theta, X, y, sample_weight=sw).astype(np.float64)
             for kind in PRODUCTS}
    scale = {kind: np.abs(M).max() for kind, M in dense.items()}
    v, V = _vectors(net.n_params, dtype, k=4)
    for kind, M in dense.items():
        out = getattr(net, PRODUCTS[kind])(theta, X, y, V, sample_weight=sw)
        assert_close(out, M @ V, dtype, "rounding", err_msg=f"{kind} product",
                     scale=scale[kind] * np.abs(V).sum(0).max())
        # a block of columns is the columns done one by one
        cols = np.stack([getattr(net, PRODUCTS[kind])(theta, X, y, V[:, j], sample_weight=sw)
                         for j in range(V.shape[1])], axis=1)
        assert_close(out, cols, dtype, "rounding", err_msg=f"{kind} columns",
                     scale=scale[kind] * np.abs(V).sum(0).max())
        assert_close(getattr(net, DIAGONALS[kind])(theta, X, y, sample_weight=sw), np.diag(M),
                     dtype, "rounding", err_msg=f"{kind} diagonal", scale=scale[kind])
    for kind, method in BLOCKS.items():
        for l, (B, R) in enumerate(zip(getattr(net, method)(theta, X, y, sample_weight=sw),
                                       ref.diagonal_blocks(sizes, dense[kind]))):
            assert_close(B, R, dtype, "rounding", err_msg=f"{method}[{l}]", scale=scale[kind])
    for kind in ("ggn", "efisher"):
        lam = np.linalg.eigvalsh(dense[kind])
        assert lam.min() >= -common.rtol(dtype, "rounding") * 10 * lam.max(), \
            (kind, lam.min(), lam.max())
    if len(sizes) == 2:
        assert_close(dense["hessian"], dense["ggn"], dtype, "rounding",
                     err_msg="hessian == ggn", scale=scale["ggn"])
    else:
        assert np.abs(dense["hessian"] - dense["ggn"]).max() > 1e-4 * scale["ggn"]
    if len(sizes) == 2 or act in ("relu", "identity"):
        assert_close(net.diag_hessian(theta, X, y, sample_weight=sw),
                     net.diag_ggn(theta, X, y, sample_weight=sw), dtype, "rounding",
                     err_msg="diag_hessian == diag_ggn", scale=scale["ggn"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_kfac_exact_for_one_sample(cb, act, loss, arch, dtype):
    """kron(A_l, G_l) == the (W_l, b_l) GGN block for a single (weighted) sample;
    the regularizer is not in the factors."""
    sizes = ARCHS[arch]
    theta64, X64, y64, _ = _data(arch, act, loss)
    net, theta, X, y, _ = _case(cb, act, loss, False, 0.3, arch, dtype)
    x1, y1, w1 = X[:1], y[:1], np.array([2.5], dtype=dtype)
    G_ref = ref.ggn(sizes, act, loss, theta64, X64[:1], y64[:1])  # alpha excluded
    G_net = net.block_ggn(theta, x1, y1, sample_weight=w1)
    factors = net.kfac(theta, x1, y1, sample_weight=w1)
    net0 = cb.Network(list(sizes), activation=act, loss=loss, alpha=0.0, dtype=dtype)
    for l, ((A, G), R, B) in enumerate(zip(factors, ref.diagonal_blocks(sizes, G_ref), G_net)):
        assert_close(np.kron(A.astype(np.float64), G.astype(np.float64)), R, dtype,
                     "reference", err_msg=f"layer {l}")
        # the block of the regularized net differs by alpha / W on the weights only
        nw = sizes[l] * sizes[l + 1]
        reg = np.diag(np.r_[np.full(nw, 0.3 / 2.5), np.zeros(sizes[l + 1])])
        assert_close(B, R + reg, dtype, "reference", err_msg=f"block_ggn layer {l}")
        A0, G0 = net0.kfac(theta, x1, y1, sample_weight=w1)[l]
        assert_close(A, A0, dtype, "rounding")
        assert_close(G, G0, dtype, "rounding")


# ======================================================================================
# Monte-Carlo GGN diagonal
# ======================================================================================
@pytest.mark.parametrize("arch", ["nohidden", "hidden2"])
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_diag_ggn_mc_unbiased(cb, loss, arch):
    """Over R random states with M samples each: the mean is within a few standard
    errors of diag_ggn, entry by entry and in the aggregate ``sum_j draw_j / exact_j``
    (which exposes a relative bias of a few percent); the mean squared error of one
    sample is ~M times that of M samples (errors shrink like 1 / sqrt(M))."""
    net, theta, X, y, sw = _case(cb, "tanh", loss, True, 0.3, arch, np.float64)
    exact = net.diag_ggn(theta, X, y, sample_weight=sw)
    R, M = 100, 256

    def draws(mc_samples, offset):
        return np.array([net.diag_ggn_mc(theta, X, y, sample_weight=sw,
                                         mc_samples=mc_samples, random_state=offset + s)
                         for s in range(R)])

    one, many = draws(1, 0), draws(M, 10_000)
    assert one.shape == many.shape == (R, net.n_params)
    tiny = 1e-12 * np.abs(exact).max()
    assert np.all(one >= -tiny) and np.all(many >= -tiny)
    mean, se = many.mean(axis=0), many.std(axis=0, ddof=1) / np.sqrt(R)
    assert np.all(np.abs(mean - exact) <= 5 * se + tiny), \
        np.max(np.abs(mean - exact) / (se + tiny))
    live = exact > 1e-6 * exact.max()
    ratio = (many[:, live] / exact[live]).sum(axis=1)
    assert abs(ratio.mean() - live.sum()) <= 5 * ratio.std(ddof=1) / np.sqrt(R), \
        (ratio.mean(), live.sum(), ratio.std(ddof=1) / np.sqrt(R))
    mse1, mseM = np.mean((one - exact) ** 2), np.mean((many - exact) ** 2)
    assert M / 3 < mse1 / mseM < 3 * M, (mse1, mseM)


@pytest.mark.parametrize("dtype", DTYPES)
def test_diag_ggn_mc_reproducible(cb, dtype):
    net, theta, X, y, sw = _case(cb, "swish", "log_loss", True, 0.3, "hidden2", dtype)
    a = net.diag_ggn_mc(theta, X, y, sample_weight=sw, mc_samples=3, random_state=42)
    b = net.diag_ggn_mc(theta, X, y, sample_weight=sw, mc_samples=3, random_state=42)
    c = net.diag_ggn_mc(theta, X, y, sample_weight=sw, mc_samples=3, random_state=43)
    assert a.shape == (net.n_params,) and a.dtype == dtype
    assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(net.diag_ggn_mc(theta, X, y, sample_weight=sw)).all()
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="mc_samples"):
            net.diag_ggn_mc(theta, X, y, mc_samples=bad)


# ======================================================================================
# bad input
# ======================================================================================
@pytest.mark.parametrize("method", list(PRODUCTS.values()))
def test_products_bad_V(cb, method):
    net, theta, X, y, sw = _case(cb, "tanh", "log_loss", True, 0.3, "hidden1", np.float64)
    P = net.n_params
    f = getattr(net, method)
    for name, V in {"too long": np.ones(P + 1), "too short": np.ones(P - 1),
                    "wrong rows": np.ones((P + 1, 2)), "3-d": np.ones((P, 2, 1)),
                    "0-d": np.float64(1.0), "transposed": np.ones((2, P)),
                    "k = 0": np.ones((P, 0)), "strings": np.array(["x"] * P),
                    "objects": np.array([None] * P), "complex": np.ones(P, complex)}.items():
        with pytest.raises(ValueError) as info:
            f(theta, X, y, V, sample_weight=sw)
        msg = str(info.value)
        assert re.search(r"\bV\b|shape|numeric|k = 0|dtype", msg), (name, msg)
    # integer V is a numeric V
    assert_allclose(f(theta, X, y, np.arange(P), sample_weight=sw),
                    f(theta, X, y, np.arange(P, dtype=float), sample_weight=sw))


def _few_rows(net, hessian, monkeypatch):
    """Dense kernels' blocks of at most 4 rows (6 rows: blocks of 4 and 2, or 3
    and 3): the workspace budget shrunk until dense_block_rows gives that."""
    from cbackprop import _assembly, _curvature
    itemsize = np.dtype(net.dtype).itemsize
    budget = 1 << 24
    while _curvature.dense_block_rows(net._plan, budget, itemsize, hessian) > 4:
        budget = budget * 7 // 8
    assert 1 <= _curvature.dense_block_rows(net._plan, budget, itemsize, hessian) < 6
    monkeypatch.setattr(_assembly, "DENSE_BLOCK_BYTES", budget)


TWIN_ARCHS = dict(ARCHS, **common.DEEP_ARCHS)


def _twin_case(cb, act, loss, arch, dtype):
    """(net, theta, X, y, sw, H): a weighted, regularized problem of TWIN_ARCHS
    (float32 values) and its exact float64 Hessian (reference.hessian_backprop)."""
    sizes = TWIN_ARCHS[arch]
    data = ref.make_problem(sizes, loss, n=N, weighted=True,
                            seed=common.seed("twin", arch, act, loss))
    theta, X, y, sw = (a.astype(np.float32).astype(np.float64) for a in data)
    H = ref.hessian_backprop(sizes, act, loss, theta, X, y, sw, 0.3)
    net = cb.Network(list(sizes), activation=act, loss=loss, alpha=0.3, dtype=dtype)
    return (net,) + tuple(a.astype(dtype) for a in (theta, X, y, sw)) + (H,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", TWIN_ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_hessian_against_backprop_twin(cb, act, loss, arch, dtype):
    """hessian and block_hessian (one nogil kernel) against the exact NumPy twin
    of Hessian backpropagation, deeper networks included (cross terms and
    residual factors over up to four layers)."""
    net, theta, X, y, sw, H = _twin_case(cb, act, loss, arch, dtype)
    out = net.hessian(theta, X, y, sample_weight=sw)
    assert out.shape == H.shape and out.dtype == dtype
    assert_close(out, H, dtype, "reference", err_msg="hessian")
    assert_array_equal(out, out.T)
    for l, (B, R) in enumerate(zip(net.block_hessian(theta, X, y, sample_weight=sw),
                                   ref.diagonal_blocks(TWIN_ARCHS[arch], H))):
        assert_close(B, R, dtype, "reference", err_msg=f"block_hessian[{l}]",
                     scale=np.abs(H).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["hidden1", "hidden2", *common.DEEP_ARCHS])
def test_hessian_by_blocks_of_rows(cb, arch, dtype, monkeypatch):
    """The dense Hessian accumulated over blocks of a few rows (the last one
    shorter): the exact twin, the regularizer added once; the same matrix as
    in one block to rounding."""
    net, theta, X, y, sw, H = _twin_case(cb, "mish", "log_loss", arch, dtype)
    whole = net.hessian(theta, X, y, sample_weight=sw)
    _few_rows(net, True, monkeypatch)
    out = net.hessian(theta, X, y, sample_weight=sw)
    assert_close(out, H, dtype, "reference", err_msg="hessian by blocks")
    assert_close(out, whole, dtype, "rounding", err_msg="blocks vs one block")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ["hidden1", "hidden2"])
def test_dense_ggn_by_blocks_of_rows(cb, arch, dtype, monkeypatch):
    """ggn, efisher, block_ggn and block_hessian accumulated over blocks of a few rows
    (the last one shorter): the reference, the regularizer added once."""
    net, theta, X, y, sw = _case(cb, "tanh", "log_loss", True, 0.3, arch, dtype)
    expected = _expected(arch, "tanh", "log_loss", True, 0.3)

    def few_rows(hessian):
        _few_rows(net, hessian, monkeypatch)

    few_rows(False)
    for kind in ("ggn", "efisher"):
        assert_close(getattr(net, kind)(theta, X, y, sample_weight=sw), expected[kind], dtype,
                     scale=np.abs(expected[kind]).max(), err_msg=kind)
    for kind, method in BLOCKS.items():
        few_rows(kind == "hessian")
        scale = np.abs(expected[kind]).max()
        for B, R in zip(getattr(net, method)(theta, X, y, sample_weight=sw),
                        ref.diagonal_blocks(ARCHS[arch], expected[kind])):
            assert_close(B, R, dtype, REFERENCE_KIND[kind], scale=scale, err_msg=method)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["hessian", "ggn", "efisher"])
def test_dense_size_limit(cb, method, dtype):
    net, theta, X, y, sw = _case(cb, "tanh", "log_loss", True, 0.3, "hidden1", dtype)
    nbytes = net.n_params ** 2 * np.dtype(dtype).itemsize
    f = getattr(net, method)
    with pytest.raises(ValueError, match="bytes") as info:
        f(theta, X, y, sample_weight=sw, max_bytes=nbytes - 1)
    assert str(nbytes) in str(info.value).replace(",", "")
    assert f(theta, X, y, sample_weight=sw, max_bytes=nbytes).shape == (net.n_params,) * 2


def test_operators_bad_input(cb):
    """Through the real Network: bad V, batch_size < 1, unknown which."""
    from cbackprop import curvature

    net, theta, X, y, sw = _case(cb, "tanh", "log_loss", True, 0.3, "hidden1", np.float64)
    P = net.n_params
    for cls in (curvature.HessianOperator, curvature.GGNOperator, curvature.EFisherOperator):
        for batch_size in (0, -2):
            with pytest.raises(ValueError, match="batch_size"):
                cls(net, theta, X, y, sample_weight=sw, batch_size=batch_size)
        op = cls(net, theta, X, y, sample_weight=sw, batch_size=4)
        for V, words in [(np.ones(P + 1), "shape"), (np.ones((P, 0)), "k = 0"),
                         (np.array(["a"] * P), "numeric"), (np.ones((P, 2, 2)), "shape")]:
            with pytest.raises(ValueError, match=words):
                op @ V
        with pytest.raises(ValueError, match="which"):
            curvature.eigenvalues(op, k=2, which="XL")
