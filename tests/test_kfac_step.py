"""K-FAC's one-forward-pass step (``cbackprop._kfac._BatchState``).

The shared batch state's entry points (``_curvature.batch_state``,
``state_backprop``, ``state_ggn_quadratic``) against the package's own
single-purpose paths (``Network.loss_grad``, ``Network.ggn_vp``, the NumPy
'mc' factors) and the dense NumPy GGN of ``reference.py``; the solver on the
shared state against the solver on the chunked data loop; the damped inverse
against a dense Kronecker solve across damping changes.
"""
import numpy as np
import pytest

import reference as ref
from common import ARCHS, DTYPES, assert_close, seed

kf = pytest.importorskip("cbackprop._kfac")
curv = pytest.importorskip("cbackprop._curvature")


def prepared(cb, loss, arch, dtype=np.float64, n=9, weighted=True, alpha=0.3):
    """(net, theta, problem) of a small random problem, validated once."""
    from cbackprop._problem import Problem
    sizes = ARCHS[arch]
    theta, X, y, sw = ref.make_problem(sizes, loss, n=n, seed=seed(loss, arch),
                                       weighted=weighted)
    net = cb.Network(list(sizes), activation="tanh", loss=loss, alpha=alpha, dtype=dtype)
    return net, theta.astype(dtype), Problem(net, X, y, sw)


def loaded(net, theta, p):
    state = kf._BatchState(net, p.n_rows)
    g = np.empty(net.n_params, net.dtype)
    f = state.load(theta, p, g)
    return state, f, g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_batch_state_is_the_loss_and_gradient(cb, loss, arch, dtype):
    net, theta, p = prepared(cb, loss, arch, dtype)
    _, f, g = loaded(net, theta, p)
    f_ref, g_ref = net.loss_grad(theta, p.X, p.Y, p.sw)
    assert_close(f, f_ref, dtype, "rounding")
    assert_close(g, g_ref, dtype, "rounding")
    assert kf._BatchState(net, p.n_rows).load(theta, p) == f


@pytest.mark.parametrize("n", [9, 120], ids=["9rows", "120rows"])
def test_batch_state_of_a_deep_network_fits_its_workspace(cb, n):
    # Six hidden layers of 4: the backward keeps 24 deltas per row, more
    # than the products' ping-pong buffers (2 k max_hidden = 16); 120 rows
    # make two row blocks where the machine has two processors.
    from cbackprop._problem import Problem
    sizes = (3, 4, 4, 4, 4, 4, 4, 2)
    theta, X, y, sw = ref.make_problem(sizes, "log_loss", n=n, seed=seed("deep-state"))
    net = cb.Network(list(sizes), activation="tanh", loss="log_loss", alpha=0.3)
    p = Problem(net, X, y, sw)
    state, f, g = loaded(net, theta, p)
    off, size = state.ws.layout["work"]
    assert size >= n * sum(sizes[1:-1])
    assert off + size <= state.ws.layout["part"][0]
    f_ref, g_ref = net.loss_grad(theta, p.X, p.Y, p.sw)
    assert_close(f, f_ref, np.float64, "rounding")
    assert_close(g, g_ref, np.float64, "rounding")


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_batch_state_of_a_subsample_keeps_its_regularizer(cb, loss):
    """A batch is any prepared problem: a subsample (its own normalizer, the
    full data's regularizer coefficient) gives its own loss, gradient and
    quadratic form."""
    net, theta, p = prepared(cb, loss, "hidden1", n=12)
    sub = p.subsample(np.array([0, 2, 3, 7, 11]))
    state = kf._BatchState(net, sub.n_rows)
    g, g_ref = np.empty(net.n_params), np.empty(net.n_params)
    assert_close(state.load(theta, sub, g), sub.loss_grad(theta, g_ref), np.float64,
                 "rounding")
    assert_close(g, g_ref, np.float64, "rounding")
    V = np.random.default_rng(seed(loss)).standard_normal((2, net.n_params))
    GV = sub.product("ggn_vp", theta, V, np.empty_like(V))
    assert_close(state.quadratic(theta, V), V @ GV.T, np.float64, "rounding")


@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_state_quadratic_is_v_ggn_v(cb, loss, arch, k, weighted):
    """V G V^T from the R-forward pass equals V (G V) and the dense GGN."""
    net, theta, p = prepared(cb, loss, arch, weighted=weighted)
    V = np.random.default_rng(seed(loss, arch, k)).standard_normal((k, net.n_params))
    state, _, _ = loaded(net, theta, p)
    Q = state.quadratic(theta, V)
    assert_close(Q, V @ net.ggn_vp(theta, p.X, p.Y, V.T, p.sw), np.float64, "rounding")
    G = ref.ggn(ARCHS[arch], "tanh", loss, theta, p.X, p.Y, p.sw, alpha=net.alpha)
    assert_close(Q, V @ G @ V.T, np.float64, "reference")
    assert np.array_equal(Q, Q.T)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_state_mc_factors_are_the_numpy_mc_factors(cb, loss, dtype):
    """The same draws backpropagated by the kernel and by NumPy."""
    net, theta, p = prepared(cb, loss, "hidden2", dtype, n=11)
    state, _, _ = loaded(net, theta, p)
    got = state.mc_factors(theta, np.random.RandomState(5))
    want = kf._batch_factors(p, theta, "mc", np.random.RandomState(5))
    for l, ((A, G), (RA, RG)) in enumerate(zip(got, want)):
        assert_close(A, RA, dtype, "rounding", err_msg=f"A[{l}]")
        assert_close(G, RG, dtype, "rounding", err_msg=f"G[{l}]")


def test_state_entry_points_check_shapes(cb):
    net, theta, p = prepared(cb, "log_loss", "hidden1")
    state, _, _ = loaded(net, theta, p)
    with pytest.raises(ValueError, match="out must have shape"):
        curv.state_ggn_quadratic(net._plan, theta, p.X, p.Y, p.sw, p.weight_sum,
                                 net.alpha, np.ones((2, net.n_params)), np.empty((1, 1)),
                                 state.ws)
    with pytest.raises(ValueError, match="D must have shape"):
        curv.state_backprop(net._plan, theta, p.X, np.ones((p.n_rows, 1)), state.ws)


def run_pair(cb, monkeypatch, **kw):
    """kfac on the shared batch state and on the chunked data loop."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 4))
    Y = (X @ rng.standard_normal((4, 5)) > 0).astype(float)
    net = cb.Network([4, 6, 5], activation="tanh", loss="binary_log_loss", alpha=0.1)
    fused = kf.kfac(net, net.init_params(0), X, Y, random_state=0, **kw)
    monkeypatch.setattr(kf, "CHUNK_ENTRIES", 0)        # no batch fits: chunked path
    assert not kf._BatchState.fits(net, 1)
    chunked = kf.kfac(net, net.init_params(0), X, Y, random_state=0, **kw)
    return fused, chunked


@pytest.mark.parametrize("curvature", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("batch_size", [None, 16], ids=["full", "mini"])
@pytest.mark.parametrize("rate", [None, 0.5], ids=["adaptive", "fixed"])
def test_shared_state_run_is_the_chunked_run(cb, monkeypatch, curvature, batch_size, rate):
    fused, chunked = run_pair(cb, monkeypatch, max_iter=12, curvature=curvature,
                              batch_size=batch_size, learning_rate=rate)
    assert_close(fused.x, chunked.x, np.float64, "rounding", factor=100)
    assert (fused.nfev, fused.njev, fused.nhev, fused.nit) == (
        chunked.nfev, chunked.njev, chunked.nhev, chunked.nit)
    assert fused.nhev > 0


def test_shared_state_after_a_rejected_full_batch_trial(cb, monkeypatch):
    """A rejected trial leaves the state at the trial point: the next step
    reloads it at theta, as the chunked path recomputes everything."""
    from cbackprop import Network
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 4))
    y = rng.poisson(1.0, (30, 2)).astype(float)
    net = Network([4, 6, 2], activation="tanh", loss="poisson")
    kw = dict(max_iter=6, learning_rate=1e8, damping=1e-3)
    fused = kf.kfac(net, net.init_params(0), X, y, **kw)
    monkeypatch.setattr(kf, "CHUNK_ENTRIES", 0)
    chunked = kf.kfac(net, net.init_params(0), X, y, **kw)
    assert fused.rejected >= 1 and fused.rejected == chunked.rejected
    assert_close(fused.x, chunked.x, np.float64, "rounding", factor=100)


@pytest.mark.parametrize("arch", ARCHS)
def test_damped_inverse_follows_damping_changes(cb, arch):
    """One decomposition solved at several gammas (its damped eigenvalue
    products are cached per gamma) equals dense Kronecker solves."""
    net, theta, p = prepared(cb, "log_loss", arch)
    factors = kf.kfac_factors(net, theta, p.X, p.Y, p.sw)
    eig = [kf._Eigen(A, G) for A, G in factors]
    v = np.random.default_rng(seed(arch)).standard_normal(net.n_params)
    for gamma in (0.5, 1e-2, 0.5, 3.0):
        got = kf._precondition(net, eig, v, gamma)
        start, want = 0, []
        for (A, G), e in zip(factors, eig):
            r, n = np.sqrt(gamma), A.shape[0] * G.shape[0]
            M = np.kron(A + e.pi * r * np.eye(len(A)), G + r / e.pi * np.eye(len(G)))
            want.append(np.linalg.solve(M, v[start:start + n]))
            start += n
        assert_close(got, np.concatenate(want), np.float64, "reference",
                     err_msg=f"gamma {gamma}")
