"""K-FAC (``cbackprop._kfac``): factors, damped inverse, quadratic model, solver.

References: the dense NumPy twin (``tests/reference.py``: GGN, per-sample
gradients, K-FAC factors by their definition), dense Kronecker solves, a
least-squares solve, and scipy's minimizer for the 2 x 2 model, compared
by ``common.assert_close`` (float64 identities to its 'reference' tolerance,
1e-10 relative with the largest entry as floor; the solver's results
against the loss at its x to 'rounding'); the Monte-Carlo factors are tested against the exact ones within five standard
errors estimated from the draws themselves.
"""
import numpy as np
import pytest
from scipy.optimize import OptimizeResult, minimize

import reference as ref
from common import assert_close

kf = pytest.importorskip("cbackprop._kfac")

ARCHS = {"nohidden": (4, 3), "hidden1": (4, 5, 3), "hidden2": (3, 4, 5, 2)}


def problem(cb, act, loss, arch, n=7, weighted=True, alpha=0.0, seed=0):
    sizes = ARCHS[arch] if isinstance(arch, str) else arch
    theta, X, y, sw = ref.make_problem(sizes, loss, n=n, seed=seed, weighted=weighted)
    net = cb.Network(list(sizes), activation=act, loss=loss, alpha=alpha)
    return net, sizes, theta, X, y, sw


def classification(cb, n=48, sizes=(4, 6, 3), dtype=np.float64, seed=2):
    """A learnable problem: labels from a random linear map of X, weights."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0]))
    y = np.eye(sizes[-1])[np.argmax(X @ rng.standard_normal((sizes[0], sizes[-1])), 1)]
    net = cb.Network(list(sizes), activation="tanh", loss="log_loss", dtype=dtype)
    return net, X, y, rng.uniform(0.5, 2.0, n)


def linear_problem(n=40, n_in=3, n_out=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    Y = X @ rng.standard_normal((n_in, n_out)) + 0.1 * rng.standard_normal((n, n_out))
    return X, Y


# =========================================================================== factors
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_exact_factors_are_the_definition(cb, loss, arch):
    net, sizes, theta, X, y, sw = problem(cb, "tanh", loss, arch)
    for l, ((A, G), (RA, RG)) in enumerate(zip(
            kf.kfac_factors(net, theta, X, y, sw, curvature="exact"),
            ref.kfac(sizes, "tanh", loss, theta, X, y, sw))):
        assert_close(A, RA, np.float64, err_msg=f"A[{l}]")
        assert_close(G, RG, np.float64, err_msg=f"G[{l}]")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("act", ["tanh", "softplus"])
def test_exact_kfac_is_the_block_ggn_for_one_datum(cb, act, loss, arch):
    net, sizes, theta, X, y, _ = problem(cb, act, loss, arch, weighted=False)
    G = ref.ggn(sizes, act, loss, theta, X[:1], y[:1])
    factors = kf.kfac_factors(net, theta, X[:1], y[:1], curvature="exact")
    for l, ((A, Gl), R) in enumerate(zip(factors, ref.diagonal_blocks(sizes, G))):
        assert_close(np.kron(A, Gl), R, np.float64, err_msg=f"layer {l}")


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_kfac_is_the_block_ggn_of_deep_linear_least_squares(cb, arch):
    """Identity activations and squared error: dz_L/dz_l is the same matrix for
    every sample and H = I, so G_l does not depend on the sample and
    sum_i c_i (a a^T) (x) G_l = A_l (x) G_l exactly, for any number of samples."""
    net, sizes, theta, X, y, sw = problem(cb, "identity", "squared_error", arch, n=9)
    factors = kf.kfac_factors(net, theta, X, y, sw, curvature="exact")
    blocks = net.block_ggn(theta, X, y, sample_weight=sw)
    ref_blocks = ref.diagonal_blocks(sizes, ref.ggn(sizes, "identity", "squared_error",
                                                    theta, X, y, sw))
    for l, ((A, G), B, R) in enumerate(zip(factors, blocks, ref_blocks)):
        assert_close(np.kron(A, G), R, np.float64, err_msg=f"layer {l} against the reference")
        assert_close(np.kron(A, G), B, np.float64, err_msg=f"layer {l} against block_ggn")


def test_kfac_is_not_the_block_ggn_of_a_nonlinear_network(cb):
    """The identity above is specific: with tanh and several samples it fails."""
    net, sizes, theta, X, y, sw = problem(cb, "tanh", "squared_error", "hidden1", n=9)
    (A, G), _ = kf.kfac_factors(net, theta, X, y, sw, curvature="exact")
    B = net.block_ggn(theta, X, y, sample_weight=sw)[0]
    assert np.max(np.abs(np.kron(A, G) - B)) > 1e-3 * np.max(np.abs(B))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("loss", ref.LOSSES)
def test_empirical_factors_from_per_sample_gradients(cb, loss, arch):
    """G_l = sum_i c_i d_i d_i^T with d_i the bias part of sample i's gradient."""
    net, sizes, theta, X, y, sw = problem(cb, "softplus", loss, arch)
    c, _ = ref.sample_coefficients(sw, X.shape[0])
    grads = ref.per_sample_grads(sizes, "softplus", loss, theta, X, y)
    factors = kf.kfac_factors(net, theta, X, y, sw, curvature="empirical")
    exact = ref.kfac(sizes, "softplus", loss, theta, X, y, sw)
    for l, ((A, G), s, (RA, _)) in enumerate(zip(factors, ref.layer_slices(sizes), exact)):
        d = grads[:, s.stop - sizes[l + 1]:s.stop]
        assert_close(G, np.einsum("i,ip,iq->pq", c, d, d), np.float64, err_msg=f"G[{l}]")
        assert_close(A, RA, np.float64, err_msg=f"A[{l}]")


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_monte_carlo_factors_converge_to_the_exact_ones(cb, loss):
    """The mean of M draws is within 5 standard errors (from the draws) of the
    exact factor, entrywise, and within 10% of its largest entry."""
    net, sizes, theta, X, y, sw = problem(cb, "tanh", loss, "hidden2", n=5, seed=3)
    exact = [G for _, G in kf.kfac_factors(net, theta, X, y, sw, curvature="exact")]
    rs = np.random.RandomState(0)
    draws = [[G for _, G in kf.kfac_factors(net, theta, X, y, sw, curvature="mc",
                                            random_state=rs)] for _ in range(2000)]
    for l, R in enumerate(exact):
        D = np.array([d[l] for d in draws])
        mean, se = D.mean(axis=0), D.std(axis=0, ddof=1) / np.sqrt(len(D))
        assert np.all(np.abs(mean - R) <= 5 * se + 1e-12 * np.abs(R).max()), f"layer {l}"
        assert np.abs(mean - R).max() < 0.1 * np.abs(R).max()


def test_monte_carlo_factors_are_reproducible(cb):
    net, _, theta, X, y, sw = problem(cb, "tanh", "log_loss", "hidden1")
    a = kf.kfac_factors(net, theta, X, y, sw, curvature="mc", random_state=4)
    b = kf.kfac_factors(net, theta, X, y, sw, curvature="mc", random_state=4)
    for (A1, G1), (A2, G2) in zip(a, b):
        np.testing.assert_array_equal(G1, G2)
        np.testing.assert_array_equal(A1, A2)


# ===================================================================== damped inverse
@pytest.mark.parametrize("damping", [1e-3, 0.5, 20.0])
@pytest.mark.parametrize("arch", ARCHS)
def test_pi_damped_inverse_is_a_dense_kronecker_solve(cb, arch, damping):
    net, sizes, theta, X, y, sw = problem(cb, "tanh", "log_loss", arch)
    factors = kf.kfac_factors(net, theta, X, y, sw, curvature="exact")
    v = np.random.default_rng(1).standard_normal(net.n_params)
    out = kf.damped_inverse_apply(net, factors, v, damping)
    r = np.sqrt(damping)
    for l, ((A, G), s) in enumerate(zip(factors, ref.layer_slices(sizes))):
        pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
        K = np.kron(A + pi * r * np.eye(A.shape[0]), G + r / pi * np.eye(G.shape[0]))
        assert_close(out[s], np.linalg.solve(K, v[s]), np.float64, err_msg=f"layer {l}")


# ==================================================================== quadratic model
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2])
def test_quadratic_coefficients_minimize_the_model(k, seed):
    rng = np.random.default_rng(seed)
    P = 9
    B = rng.standard_normal((P, P))
    G, V, g = B @ B.T / P, rng.standard_normal((P, k)), rng.standard_normal(P)
    damping = 0.3
    VGV, VV, Vg = V.T @ G @ V, V.T @ V, V.T @ g
    coef, change = kf.quadratic_coefficients(VGV, VV, Vg, damping)

    def model(c):
        d = V @ c
        return g @ d + 0.5 * d @ (G + damping * np.eye(P)) @ d

    best = minimize(model, np.zeros(k), method="BFGS", options={"gtol": 1e-12})
    assert_close(coef, best.x, np.float64, factor=1e4)  # BFGS's gtol
    d = V @ coef
    assert_close(change, g @ d + 0.5 * d @ G @ d, np.float64)


def test_quadratic_coefficients_with_a_parallel_previous_update():
    """delta0 parallel to Delta: the 2 x 2 system is singular, Delta alone."""
    G, D, g = np.diag([2.0, 1.0]), np.array([1.0, 2.0]), np.array([-1.0, 0.5])
    V = np.stack([D, 3 * D], axis=1)
    coef, _ = kf.quadratic_coefficients(V.T @ G @ V, V.T @ V, V.T @ g, 0.0)
    assert_close(coef, [-(D @ g) / (D @ G @ D), 0.0], np.float64)


# ============================================================================ solver
def test_one_layer_least_squares_step_is_the_gauss_newton_step(cb):
    """No hidden layer, squared error: G = I and A (x) I is the GGN, so the
    first step (no damping, no momentum, step size from the exact model) is
    the Gauss-Newton step, which solves the least-squares problem."""
    X, Y = linear_problem()
    net = cb.Network([3, 2], activation="identity")
    res = kf.kfac(net, net.init_params(0), X, Y, max_iter=1, damping=1e-20,
                  min_damping=1e-20)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    sol = np.linalg.lstsq(Xa, Y, rcond=None)[0]       # (n_in + 1, n_out), bias last
    assert_close(res.x, sol.ravel(), np.float64, factor=100)
    assert res.nit == 1 and res.status == 1     # the gradient vanishes after it


@pytest.mark.parametrize("curvature", ["exact", "mc", "empirical"])
@pytest.mark.parametrize("batch_size", [None, 16])
def test_kfac_decreases_the_loss(cb, curvature, batch_size):
    net, X, y, sw = classification(cb)
    theta0 = net.init_params(0)
    res = kf.kfac(net, theta0, X, y, sw, max_iter=60, batch_size=batch_size,
                  curvature=curvature, random_state=0)
    f0 = net.loss(theta0, X, y, sw)
    assert res.fun < 0.5 * f0
    assert_close(res.fun, net.loss(res.x, X, y, sw), np.float64, "rounding")
    assert_close(res.jac, net.loss_grad(res.x, X, y, sw)[1], np.float64, "rounding")


def test_full_batch_converges_on_least_squares(cb):
    X, Y = linear_problem()
    net = cb.Network([3, 4, 2], activation="identity")
    res = kf.kfac(net, net.init_params(0), X, Y, max_iter=500, gtol=1e-8, ftol=0.0)
    assert res.status == 1 and res.success
    Xa = np.hstack([X, np.ones((len(X), 1))])
    best = net.loss(np.zeros(net.n_params), X, Y) - 0.5 * np.sum(
        (Xa @ np.linalg.lstsq(Xa, Y, rcond=None)[0] - Y) ** 2) / len(X)
    assert_close(res.fun, net.loss(np.zeros(net.n_params), X, Y) - best, np.float64, factor=1e4)


def test_fixed_learning_rate_with_kl_clipping(cb):
    """With kl_clip the proposal is scaled so that lr^2 |g.Delta| <= kl_clip."""
    net, _, _, X, y, _ = problem(cb, "tanh", "squared_error", (4, 6, 2), n=30, seed=1)
    seen = []
    res = kf.kfac(net, net.init_params(0), X, y, max_iter=20, learning_rate=1.0,
                  momentum=0.5, kl_clip=1e-3, callback=lambda r: seen.append(r))
    assert all(r.momentum == 0.5 and 0 < r.learning_rate <= 1.0 for r in seen)
    assert any(r.learning_rate < 1.0 for r in seen)   # the clip was active
    assert res.fun < net.loss(net.init_params(0), X, y)


def test_callback_every_step_and_stop_iteration(cb):
    net, _, _, X, y, _ = problem(cb, "tanh", "log_loss", (4, 6, 3), n=30)
    seen = []

    def callback(r):
        seen.append(r)
        if r.nit == 4:
            raise StopIteration

    res = kf.kfac(net, net.init_params(0), X, y, max_iter=50, callback=callback)
    assert res.status == -2 and not res.success and res.nit == 4
    assert res.message == kf.TERMINATION_MESSAGES[-2]
    assert [r.nit for r in seen] == [1, 2, 3, 4]
    for r in seen:
        assert isinstance(r, OptimizeResult)
        assert_close(r.fun, net.loss(r.x, X, y), np.float64, "rounding")
        assert {"x", "fun", "nit", "epoch", "damping", "learning_rate", "momentum",
                "accepted", "rows"} <= set(r)
    np.testing.assert_array_equal(res.x, seen[-1].x)


def test_result_fields_and_max_iter(cb):
    net, _, _, X, y, _ = problem(cb, "tanh", "squared_error", (4, 6, 2), n=30)
    res = kf.kfac(net, net.init_params(0), X, y, max_iter=7)
    assert res.status == 0 and res.nit == 7 and not res.success
    assert {"x", "fun", "jac", "nit", "nfev", "njev", "nhev", "status", "success",
            "message", "damping", "epochs", "rejected"} <= set(res)
    assert res.nhev == 2 * 7 - 1     # one product on the first step, two after


def test_mini_batches_epochs_and_reproducibility(cb):
    net, _, _, X, y, sw = problem(cb, "tanh", "log_loss", (4, 6, 3), n=50, seed=4)
    kw = dict(max_iter=12, batch_size=16, random_state=3)
    a = kf.kfac(net, net.init_params(0), X, y, sw, **kw)
    b = kf.kfac(net, net.init_params(0), X, y, sw, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.epochs == 3       # 4 batches per epoch (16, 16, 16, 2)
    rows = []
    kf.kfac(net, net.init_params(0), X, y, sw, callback=lambda r: rows.append(r.rows), **kw)
    assert rows == [16, 16, 16, 2] * 3


def test_epoch_callback_averages_batch_losses(cb):
    net, _, _, X, y, _ = problem(cb, "tanh", "log_loss", (4, 6, 3), n=50, seed=4)
    steps, epochs = [], []
    inner = kf.epoch_callback(epochs.append, 50)
    kf.kfac(net, net.init_params(0), X, y, max_iter=8, batch_size=16, random_state=0,
            callback=lambda r: (steps.append((r.fun, r.rows)), inner(r)))
    assert [e.nit for e in epochs] == [1, 2]
    first = steps[:4]
    assert_close(epochs[0].fun, sum(f * n for f, n in first) / 50, np.float64)


def test_non_finite_steps_are_rejected(cb):
    """A huge fixed learning rate on a Poisson net overflows the loss: the step
    is rejected, the damping grows tenfold, the iterate stays finite."""
    net, _, _, X, y, _ = problem(cb, "tanh", "poisson", (4, 6, 2), n=30)
    seen = []
    res = kf.kfac(net, net.init_params(0), X, y, max_iter=5, learning_rate=1e8,
                  damping=1e-3, callback=lambda r: seen.append(r))
    assert not seen[0].accepted and seen[0].damping == pytest.approx(1e-2)
    assert res.rejected >= 1 and np.isfinite(res.fun) and np.isfinite(res.x).all()


def test_rejections_stop_at_max_damping(cb):
    net, _, _, X, y, _ = problem(cb, "tanh", "poisson", (4, 6, 2), n=30)
    res = kf.kfac(net, net.init_params(0), X, y, max_iter=50, learning_rate=1e300,
                  damping=1e-3, max_damping=1.0)
    assert res.status == -3 and res.rejected == 4 and res.nit == 4   # 1e-3 -> 10


def test_non_finite_initial_loss_raises(cb):
    net = cb.Network([2, 2], activation="identity", loss="poisson")
    X = np.array([[1e3, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="not finite"):
        kf.kfac(net, np.full(net.n_params, 1.0), X, np.ones((2, 2)))


def test_theta0_is_not_modified(cb):
    net, _, theta, X, y, _ = problem(cb, "tanh", "log_loss", "hidden1")
    before = theta.copy()
    res = kf.kfac(net, theta, X, y, max_iter=3)
    np.testing.assert_array_equal(theta, before)
    assert not np.shares_memory(res.x, theta)


@pytest.mark.parametrize("batch_size", [None, 10])
def test_float32_networks(cb, batch_size):
    net64, X, y, _ = classification(cb)
    net, _, _, _ = classification(cb, dtype=np.float32)
    theta0 = net.init_params(0)
    res = kf.kfac(net, theta0, X, y, max_iter=20, batch_size=batch_size, random_state=0)
    assert res.x.dtype == np.float32 and res.jac.dtype == np.float32
    assert res.fun < 0.5 * net.loss(theta0, X, y)
    assert_close(res.fun, net64.loss(res.x.astype(np.float64), X, y), np.float32)


BAD = [({"max_iter": 0}, "max_iter"), ({"max_iter": 2.5}, "max_iter"),
       ({"batch_size": 0}, "batch_size"), ({"damping": 0.0}, "damping"),
       ({"damping": float("nan")}, "damping"), ({"min_damping": -1.0}, "min_damping"),
       ({"damping": 1e-12}, "min_damping <= damping"),
       ({"damping_decay": 1.0}, "damping_decay"), ({"ema_decay": 1.0}, "ema_decay"),
       ({"damping_every": 0}, "damping_every"), ({"inverse_every": True}, "inverse_every"),
       ({"momentum": 0.9}, "momentum"), ({"kl_clip": 1e-3}, "kl_clip"),
       ({"learning_rate": -1.0}, "learning_rate"),
       ({"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
       ({"curvature": "fisher"}, "curvature"), ({"burnin": -1}, "burnin"),
       ({"shuffle": "yes"}, "shuffle"), ({"ftol": -1.0}, "ftol"), ({"gtol": "x"}, "gtol"),
       ({"callback": 3}, "callback")]


@pytest.mark.parametrize("kwargs,match", BAD,
                         ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))
                              if len(k) == 1 else "+".join(k) for k, _ in BAD])
def test_bad_arguments(cb, kwargs, match):
    net, _, theta, X, y, _ = problem(cb, "tanh", "log_loss", "hidden1")
    with pytest.raises(ValueError, match=match):
        kf.kfac(net, theta, X, y, **kwargs)


def test_zero_weight_mini_batch(cb):
    """A mini-batch whose sample weights are all zero has no objective: a
    clear error naming it (the full batch of those weights is fine)."""
    net, _, theta, X, y, sw = problem(cb, "tanh", "log_loss", "hidden1")
    sw = sw.copy()
    sw[:3] = 0.0
    with pytest.raises(ValueError, match="zero total sample weight"):
        kf.kfac(net, theta, X, y, sw, batch_size=3, shuffle=False, max_iter=2)


def test_kfac_factors_bad_curvature(cb):
    net, _, theta, X, y, _ = problem(cb, "tanh", "log_loss", "hidden1")
    with pytest.raises(ValueError, match="curvature"):
        kf.kfac_factors(net, theta, X, y, curvature="auto")


# ======================================================================== estimators
class _Est:
    def __init__(self, **kw):
        self.__dict__.update(dict(batch_size="auto", max_iter=200, tol=1e-4, shuffle=True,
                                  random_state=None), **kw)


@pytest.mark.parametrize("params,n,expected", [
    ({}, 100, dict(batch_size=None, max_iter=200, gtol=1e-4)),
    ({"batch_size": 500}, 100, dict(batch_size=None, max_iter=200, gtol=1e-4)),
    ({"batch_size": 32, "max_iter": 3}, 100, dict(batch_size=32, max_iter=12, gtol=0.0)),
    ({"batch_size": 50, "shuffle": False, "random_state": 7}, 100,
     dict(batch_size=50, max_iter=400, shuffle=False, random_state=7)),
], ids=["auto", "batch-above-n", "mini-batch", "no-shuffle"])
def test_estimator_kwargs(params, n, expected):
    kw = kf.estimator_kwargs(_Est(**params), n)
    assert {k: kw[k] for k in expected} == expected
    kf._check_options(dict(kw, curvature="auto", learning_rate=None, momentum=None,
                           kl_clip=None, damping=1.0, min_damping=1e-8, max_damping=1e10,
                           damping_decay=0.9, damping_every=5, ema_decay=0.95,
                           inverse_every=5, burnin=None, ftol=0.0, callback=None),
                      type("N", (), {"n_outputs": 1})())
