"""Tests of ``cbackprop.curvature``: the LinearOperators and the spectral tools.

The operators of a ``cb.Network`` are compared with its dense matrices (themselves
checked against ``tests/reference.py`` in ``tests/test_curvature.py``), chunking
included.

``eigenvalues``, ``trace`` and ``spectral_density`` are also checked on plain
``aslinearoperator`` matrices with a known spectrum.
"""
import collections

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.sparse.linalg import LinearOperator, aslinearoperator

import common
import reference as ref
import cbackprop as cb
from cbackprop import _curvature, curvature
from common import ARCHS, DTYPES, assert_close

KINDS = ("hessian", "ggn", "efisher")
OPERATORS = {"hessian": curvature.HessianOperator, "ggn": curvature.GGNOperator,
             "efisher": curvature.EFisherOperator}
PRODUCTS = {"hessian": "hvp", "ggn": "ggn_vp", "efisher": "efisher_vp"}
N = 6
# operators against the Network's dense matrices (products of another algorithm, and
# float64 matrix products of the rounded matrix): rounding times OPERATOR_FACTOR
OPERATOR_FACTOR = 50


# ======================================================================================
# the networks and their dense matrices
# ======================================================================================
def _dense(net, kind, theta, X, y, sw):
    """The Network's own dense matrix (float64); tests/test_curvature.py checks
    those against the references of tests/reference.py."""
    return np.asarray(getattr(net, kind)(theta, X, y, sample_weight=sw), dtype=np.float64)


def _make_net(sizes, act, loss, alpha, dtype):
    return cb.Network(list(sizes), activation=act, loss=loss, alpha=alpha, dtype=dtype)


def _problem(sizes, loss, weighted, *seed_parts, n=N):
    """A reference problem, rounded to float32 values (exact in both dtypes)."""
    theta, X, y, sw = ref.make_problem(sizes, loss, n=n, seed=common.seed(*seed_parts),
                                       weighted=weighted)
    return tuple(None if a is None else a.astype(np.float32).astype(np.float64)
                 for a in (theta, X, y, sw))


# the operator problem: two hidden layers, a nonlinear activation, a curved loss
ARCH, ACT, LOSS = ARCHS["hidden2"], "tanh", "log_loss"


# ======================================================================================
# operators equal their dense matrices
# ======================================================================================
@pytest.mark.parametrize("batch_size", [None, 1, 4, 100], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("weighted,alpha", [(False, 0.0), (True, 0.3)],
                         ids=["unweighted-alpha0", "weighted-alpha0.3"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_operator_matches_dense(kind, dtype, weighted, alpha, batch_size):
    theta, X, y, sw = _problem(ARCH, LOSS, weighted, "op", kind)
    net = _make_net(ARCH, ACT, LOSS, alpha, dtype)
    M = _dense(net, kind, theta, X, y, sw)
    op = OPERATORS[kind](net, theta, X, y, sample_weight=sw, batch_size=batch_size)
    P = net.n_params
    assert op.shape == (P, P) and op.dtype == np.dtype(dtype)
    assert op.H is op and op.T is op and op.adjoint() is op
    rng = np.random.default_rng(common.seed("V", kind))
    v, V = rng.standard_normal(P), rng.standard_normal((P, 3))
    for name, out, expected in [
            ("matvec", op.matvec(v), M @ v),
            ("matvec (P, 1)", op.matvec(v[:, None]), (M @ v)[:, None]),
            ("rmatvec", op.rmatvec(v), M @ v),
            ("@ vector", op @ v, M @ v),
            ("dot", op.dot(v), M @ v),
            ("adjoint", op.H @ v, M @ v),
            ("matmat", op.matmat(V), M @ V),
            ("rmatmat", op.rmatmat(V), M @ V),
            ("@ matrix", op @ V, M @ V),
            ("matmat of a strided block", op.matmat(np.asfortranarray(V)[:, ::2]),
             M @ V[:, ::2])]:
        assert out.dtype == np.dtype(dtype), name
        assert_close(out, expected, dtype, "rounding", factor=OPERATOR_FACTOR, err_msg=name)


def test_chunked_equals_unchunked_to_rounding():
    """Chunks of 1, 2, 4 and 5 rows (uneven) with weights and alpha: the same product."""
    theta, X, y, sw = _problem(ARCH, LOSS, True, "chunks")
    net = _make_net(ARCH, ACT, LOSS, 0.7, np.float64)
    V = np.random.default_rng(1).standard_normal((net.n_params, 4))
    for kind in KINDS:
        full = OPERATORS[kind](net, theta, X, y, sample_weight=sw) @ V
        for bs in (1, 2, 4, 5, N, 2 * N):
            op = OPERATORS[kind](net, theta, X, y, sample_weight=sw, batch_size=bs)
            assert_close(op @ V, full, np.float64, "rounding", factor=0.1,
                         err_msg=f"{kind} batch_size={bs}")


def test_zero_weight_chunk_is_skipped():
    theta, X, y, _ = _problem(ARCH, LOSS, False, "zero-chunk")
    sw = np.array([1.0, 2.0, 0.0, 0.0, 0.5, 1.5])
    net = _make_net(ARCH, ACT, LOSS, 0.3, np.float64)
    V = np.random.default_rng(2).standard_normal((net.n_params, 2))
    M = _dense(net, "ggn", theta, X, y, sw)
    op = curvature.GGNOperator(net, theta, X, y, sample_weight=sw, batch_size=2)
    assert_close(op @ V, M @ V, np.float64, "rounding", factor=10)


def _counting(monkeypatch):
    """Count the curvature kernels' calls (one per chunk of rows)."""
    calls = collections.Counter()
    for kind, kernel in PRODUCTS.items():
        original = getattr(_curvature, kernel)

        def counted(*args, _original=original, _kind=kind):
            calls[_kind] += 1
            return _original(*args)

        monkeypatch.setattr(_curvature, kernel, counted)
    return calls


def test_one_call_per_chunk_and_none_at_construction(monkeypatch):
    """k vectors go through the network together: one kernel call per chunk; the
    constructor (dtype given) computes nothing."""
    theta, X, y, sw = _problem(ARCH, LOSS, True, "calls")
    net = _make_net(ARCH, ACT, LOSS, 0.3, np.float64)
    calls = _counting(monkeypatch)
    ops = {kind: OPERATORS[kind](net, theta, X, y, sample_weight=sw) for kind in KINDS}
    chunked = {kind: OPERATORS[kind](net, theta, X, y, sample_weight=sw, batch_size=4)
               for kind in KINDS}
    assert sum(calls.values()) == 0
    V = np.ones((net.n_params, 5))
    for kind in KINDS:
        ops[kind] @ V
        assert calls[kind] == 1, (kind, calls)
        chunked[kind] @ V  # rows 0-3 and 4-5
        assert calls[kind] == 3, (kind, calls)
        ops[kind] @ V[:, 0]
        assert calls[kind] == 4, (kind, calls)


def test_operator_validates_once_at_construction():
    theta, X, y, sw = _problem(ARCH, LOSS, True, "validate")
    net = _make_net(ARCH, ACT, LOSS, 0.3, np.float32)
    op = curvature.GGNOperator(net, theta.tolist(), X, y, sample_weight=sw.tolist())
    assert op.theta.dtype == np.float32 and op.X.dtype == np.float32
    assert op.sample_weight.dtype == np.float32
    assert op.sample_weight_sum == pytest.approx(sw.sum(), rel=1e-6)
    assert op.batch_size is None
    assert "GGNOperator" in repr(op) and "float32" in repr(op)


@pytest.mark.parametrize("kind", KINDS)
def test_operator_bad_input(kind):
    theta, X, y, sw = _problem(ARCH, LOSS, True, "bad")
    net = _make_net(ARCH, ACT, LOSS, 0.3, np.float64)
    P = net.n_params
    op = OPERATORS[kind](net, theta, X, y, sample_weight=sw)
    bad = {
        "too long": (op.matvec, np.ones(P + 1), "shape"),
        "too short": (op.matvec, np.ones(P - 1), "shape"),
        "3-d": (op.matvec, np.ones((P, 1, 1)), "shape"),
        "matmat 1-d": (op.matmat, np.ones(P), "shape"),
        "matmat wrong rows": (op.matmat, np.ones((P + 1, 2)), "shape"),
        "k = 0": (op.matmat, np.ones((P, 0)), "k = 0"),
        "k = 0 via @": (op.__matmul__, np.ones((P, 0)), "k = 0"),
        "3-d via @": (op.__matmul__, np.ones((P, 2, 2)), "shape"),
        "wrong length via dot": (op.dot, np.ones(P + 2), "shape"),
        "strings": (op.matvec, np.array(["a"] * P), "numeric"),
        "object": (op.matvec, np.array([object()] * P), "numeric"),
        "complex": (op.matmat, np.ones((P, 2), complex), "numeric"),
    }
    for name, (method, V, words) in bad.items():
        with pytest.raises(ValueError, match=words):
            method(V)
    # integer and bool vectors are numbers
    assert_allclose(op.matvec(np.arange(P)), op.matvec(np.arange(P, dtype=float)))
    for batch_size in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="batch_size"):
            OPERATORS[kind](net, theta, X, y, batch_size=batch_size)


# ======================================================================================
# eigenvalues
# ======================================================================================
def _known_spectrum(P=40, seed=0, lam=None):
    """A symmetric matrix with eigenvalues spread over both signs."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    if lam is None:
        lam = np.concatenate([np.geomspace(50, 0.01, P - 5), [-0.5, -1, -3, -8, -20]])
    M = (Q * lam) @ Q.T
    return 0.5 * (M + M.T)


@pytest.mark.parametrize("which", ["LA", "SA", "LM", "SM", "BE"])
def test_eigenvalues_known_matrix(which):
    if which == "SM":
        # ARPACK without shift-invert finds the smallest magnitudes only when they
        # are well separated relative to the spread
        M = _known_spectrum(lam=np.arange(1.0, 41.0) * (-1.0) ** np.arange(40))
    else:
        M = _known_spectrum()
    lam = np.linalg.eigvalsh(M)
    k = 4
    w, V = curvature.eigenvalues(aslinearoperator(M), k=k, which=which, random_state=0)
    expected = {"LA": lam[::-1][:k], "SA": lam[:k],
                "LM": lam[np.argsort(-np.abs(lam))][:k],
                "SM": lam[np.argsort(np.abs(lam))][:k],
                "BE": np.sort(np.concatenate([lam[:k // 2], lam[-(k - k // 2):]]))[::-1]}
    assert_allclose(w, expected[which], rtol=1e-9, atol=1e-9)
    assert V.shape == (M.shape[0], k)
    assert_allclose(M @ V, V * w, atol=1e-7)
    assert_allclose(V.T @ V, np.eye(k), atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_eigenvalues_match_eigvalsh(kind, dtype):
    theta, X, y, sw = _problem(ARCH, LOSS, True, "eig", kind)
    net = _make_net(ARCH, ACT, LOSS, 0.3, dtype)
    M = _dense(net, kind, theta, X, y, sw)
    lam = np.linalg.eigvalsh(M)
    op = OPERATORS[kind](net, theta, X, y, sample_weight=sw, batch_size=4)
    k = 5
    w, V = curvature.eigenvalues(op, k=k, which="LA", random_state=0)
    assert w.dtype == np.float64 and V.shape == (net.n_params, k)
    scale = np.abs(lam).max()  # the smallest eigenvalues of the GGN are 0 to rounding
    assert_close(w, lam[::-1][:k], dtype, "rounding", factor=OPERATOR_FACTOR, scale=scale)
    if kind == "hessian" or dtype == np.float64:
        # (the 'SA' end of the GGN and Fisher is a cluster at 0, out of ARPACK's reach
        # in float32: see the Notes of `eigenvalues`)
        assert_close(curvature.eigenvalues(op, k=3, which="SA", random_state=0,
                                           return_eigenvectors=False), lam[:3], dtype,
                     "rounding", factor=OPERATOR_FACTOR, scale=scale)


def test_eigenvalues_reproducible_and_bad_input():
    op = aslinearoperator(_known_spectrum())
    w1, V1 = curvature.eigenvalues(op, k=3, random_state=7)
    w2, V2 = curvature.eigenvalues(op, k=3, random_state=7)
    assert_array_equal(w1, w2)
    assert_array_equal(V1, V2)
    w3, _ = curvature.eigenvalues(op, k=3, random_state=np.random.RandomState(7))
    assert_allclose(w3, w1, rtol=1e-10)
    P = op.shape[0]
    with pytest.raises(ValueError, match="which"):
        curvature.eigenvalues(op, k=3, which="largest")
    for k in (0, -1, P, P + 1, 2.0):
        with pytest.raises(ValueError, match="k must"):
            curvature.eigenvalues(op, k=k)
    with pytest.raises(ValueError, match="square"):
        curvature.eigenvalues(aslinearoperator(np.ones((4, 3))), k=1)


# ======================================================================================
# trace
# ======================================================================================
def _psd_decaying(P=60, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((P, P)))
    return (Q * (10.0 / np.arange(1, P + 1) ** 2)) @ Q.T


def _hutchinson_std(M, n):
    """Standard deviation of Hutchinson's mean of n Rademacher probes."""
    return np.sqrt(2.0 * (np.sum(M * M) - np.sum(np.diag(M) ** 2)) / n)


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_trace_exact_with_full_budget(method):
    M = _known_spectrum(30)
    for n_matvecs, block_size in [(30, None), (31, 7), (90, 4), (200, None)]:
        t = curvature.trace(aslinearoperator(M), n_matvecs=n_matvecs, method=method,
                            block_size=block_size, random_state=0)
        assert isinstance(t, float)
        assert_allclose(t, np.trace(M), rtol=1e-12, atol=1e-12)


def test_hutchpp_exact_when_sketch_spans_everything():
    """Internally (P < n_matvecs // 3 columns in S): exact, whatever the probes."""
    M = _known_spectrum(12)
    rng = np.random.default_rng(0)
    t = curvature._hutchpp(aslinearoperator(M), 3 * 12, rng, None)
    assert_allclose(t, np.trace(M), rtol=1e-12)


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_trace_unbiased_and_within_statistical_tolerance(method):
    M = _known_spectrum(50)
    op = aslinearoperator(M)
    n = 15
    est = np.array([curvature.trace(op, n_matvecs=n, method=method, random_state=s)
                    for s in range(200)])
    # Hutch++'s variance is below that of Hutchinson on the leftover n - 2 (n // 3) probes
    std = _hutchinson_std(M, n if method == "hutchinson" else n - 2 * (n // 3))
    assert np.all(np.abs(est - np.trace(M)) <= 6 * std)
    assert abs(est.mean() - np.trace(M)) <= 5 * est.std(ddof=1) / np.sqrt(est.size)


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum():
    M = _psd_decaying()
    op = aslinearoperator(M)
    err = {m: np.mean([(curvature.trace(op, n_matvecs=24, method=m, random_state=s)
                        - np.trace(M)) ** 2 for s in range(50)])
           for m in ("hutch++", "hutchinson")}
    assert err["hutch++"] < 0.1 * err["hutchinson"], err


@pytest.mark.parametrize("dtype", DTYPES)
def test_trace_of_curvature_operators(dtype):
    theta, X, y, sw = _problem(ARCH, LOSS, True, "trace")
    net = _make_net(ARCH, ACT, LOSS, 0.3, dtype)
    for kind in KINDS:
        M = _dense(net, kind, theta, X, y, sw)
        op = OPERATORS[kind](net, theta, X, y, sample_weight=sw, batch_size=4)
        P = net.n_params
        assert_close(curvature.trace(op, n_matvecs=P, block_size=20), np.trace(M), dtype,
                     "rounding", factor=OPERATOR_FACTOR)
        for method in ("hutch++", "hutchinson"):
            t1 = curvature.trace(op, n_matvecs=21, method=method, random_state=3)
            assert t1 == curvature.trace(op, n_matvecs=21, method=method, random_state=3)
            assert abs(t1 - np.trace(M)) <= 6 * _hutchinson_std(M, 7) + 1e-6


def test_trace_bad_input():
    op = aslinearoperator(_known_spectrum(10))
    with pytest.raises(ValueError, match="method"):
        curvature.trace(op, method="girard")
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_matvecs"):
            curvature.trace(op, n_matvecs=n, method="hutchinson")
    with pytest.raises(ValueError, match="n_matvecs"):
        curvature.trace(op, n_matvecs=2, method="hutch++")
    with pytest.raises(ValueError, match="block_size"):
        curvature.trace(op, block_size=0)


# ======================================================================================
# spectral density
# ======================================================================================
def _trapezoid(y, x):
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def test_slq_nodes_are_eigenvalues_with_full_lanczos():
    """n_iter = P: each probe's quadrature is exact, its nodes with non-negligible
    weight are eigenvalues, and the weights are (v . u_j)^2."""
    M = _known_spectrum(25)
    lam = np.linalg.eigvalsh(M)
    nodes, weights = curvature.stochastic_lanczos_quadrature(
        aslinearoperator(M), n_probes=3, n_iter=25, random_state=0)
    assert_allclose(weights.sum(), 1.0, rtol=1e-12)
    assert np.all(weights >= 0)
    big = weights > 1e-8
    dist = np.abs(nodes[big][:, None] - lam[None, :]).min(axis=1)
    assert dist.max() < 1e-8 * np.abs(lam).max()
    # quadrature of f(x) = x^2: exact, sum_j w_j lambda_j^2 = mean ||A v||^2 = ||A||_F^2 / P
    # in expectation; for the same probes exactly the mean of v^T A^2 v / (v^T v)
    V0 = curvature._rademacher(curvature._rng(0), (25, 3))
    V0 /= np.linalg.norm(V0, axis=0)
    assert_allclose(weights @ nodes ** 2, np.mean(np.sum((M @ V0) ** 2, axis=0)),
                    rtol=1e-10)
    assert_allclose(weights @ nodes, np.mean(np.sum(V0 * (M @ V0), axis=0)), rtol=1e-10)


def test_slq_invariant_subspace_stops_early():
    """A rank-2 matrix: the Krylov space is exhausted after 3 steps, no breakdown."""
    u = np.linalg.qr(np.random.default_rng(0).standard_normal((20, 2)))[0]
    M = (u * [3.0, 1.0]) @ u.T
    nodes, weights = curvature.stochastic_lanczos_quadrature(
        aslinearoperator(M), n_probes=2, n_iter=10, random_state=1)
    assert nodes.size <= 2 * 3 and np.isfinite(nodes).all()
    assert_allclose(weights.sum(), 1.0, rtol=1e-12)
    # every node carrying weight is an eigenvalue: 3, 1 or 0
    dist = np.abs(nodes[weights > 1e-10][:, None] - np.array([0.0, 1.0, 3.0])).min(axis=1)
    assert dist.max() < 1e-10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_spectral_density_of_curvature(kind, dtype):
    theta, X, y, sw = _problem(ARCH, LOSS, True, "slq", kind)
    net = _make_net(ARCH, ACT, LOSS, 0.3, dtype)
    M = _dense(net, kind, theta, X, y, sw)
    P = net.n_params
    op = OPERATORS[kind](net, theta, X, y, sample_weight=sw)
    n_probes = 8
    grid, density = curvature.spectral_density(op, n_probes=n_probes, n_iter=20,
                                               random_state=0)
    assert grid.shape == density.shape == (512,)
    assert np.all(density >= 0) and np.all(np.diff(grid) > 0)
    assert _trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    lam = np.linalg.eigvalsh(M)
    assert grid[0] < lam[0] + 1e-6 * abs(lam).max() and grid[-1] > lam[-1] * (1 - 1e-3)
    mean = _trapezoid(grid * density, grid)
    # the mean is the average Rayleigh quotient of the probes: tr(M) / P in expectation
    se = np.sqrt(2.0 * np.sum(M * M) / n_probes) / P
    assert abs(mean - np.trace(M) / P) <= 5 * se, (mean, np.trace(M) / P, se)
    # reproducible
    assert_array_equal(curvature.spectral_density(op, n_probes=n_probes, n_iter=20,
                                                  random_state=0)[1], density)


def test_spectral_density_known_matrix_options():
    M = _known_spectrum(40)
    lam = np.linalg.eigvalsh(M)
    op = aslinearoperator(M)
    # full Lanczos and many probes: the density is close to the broadened true density
    x = np.linspace(lam[0] - 8, lam[-1] + 8, 2001)
    grid, density = curvature.spectral_density(op, n_probes=100, n_iter=40, grid=x,
                                               sigma=1.0, random_state=0)
    assert_array_equal(grid, x)
    true = curvature._gaussian_mixture(x, lam, np.full(lam.size, 1 / lam.size), 1.0)
    assert np.abs(density - true).max() < 0.25 * true.max()
    assert _trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    # the mean is that of the quadrature (the kernel is symmetric), tr(M) / P within
    # the Rayleigh quotients' standard error
    nodes, weights = curvature.stochastic_lanczos_quadrature(op, n_probes=100, n_iter=40,
                                                             random_state=0)
    mean = _trapezoid(grid * density, grid)
    assert mean == pytest.approx(weights @ nodes, abs=1e-6 * np.abs(lam).max())
    se = np.sqrt(2 * (np.sum(M * M) - np.sum(np.diag(M) ** 2)) / 100) / M.shape[0]
    assert abs(mean - lam.mean()) <= 5 * se
    # an int grid; a point spectrum (c I) still gives a sensible density
    g, d = curvature.spectral_density(aslinearoperator(2.0 * np.eye(10)), n_probes=2,
                                      n_iter=5, grid=101, random_state=0)
    assert g.shape == (101,) and _trapezoid(d, g) == pytest.approx(1.0, abs=1e-6)
    assert g[np.argmax(d)] == pytest.approx(2.0, rel=1e-3)
    g, d = curvature.spectral_density(aslinearoperator(np.zeros((5, 5))), n_probes=1,
                                      n_iter=3, random_state=0)
    assert np.isfinite(d).all() and _trapezoid(d, g) == pytest.approx(1.0, abs=1e-6)


def test_spectral_density_bad_input():
    op = aslinearoperator(_known_spectrum(10))
    for kwargs, words in [({"n_probes": 0}, "n_probes"), ({"n_iter": 0}, "n_iter"),
                          ({"grid": 1}, "grid"), ({"grid": np.ones((2, 2))}, "grid"),
                          ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"),
                          ({"block_size": 0}, "block_size")]:
        with pytest.raises(ValueError, match=words):
            curvature.spectral_density(op, **kwargs)


def test_float64_view_of_float32_operator():
    M = _known_spectrum(8).astype(np.float32)
    op32 = LinearOperator(M.shape, matvec=lambda v: M @ v.astype(np.float32),
                          matmat=lambda V: M @ V.astype(np.float32), dtype=np.float32)
    view = curvature._float64(op32)
    assert view.dtype == np.float64
    v = np.arange(8.0)
    out = view.matvec(v)
    assert out.dtype == np.float64
    assert_allclose(out, M.astype(np.float64) @ v, rtol=1e-6)
    assert curvature._float64(aslinearoperator(M.astype(np.float64))).dtype == np.float64
