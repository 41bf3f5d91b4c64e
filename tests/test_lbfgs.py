"""The compiled L-BFGS (``cbackprop.optimize.lbfgs``).

References: the least-squares solution of a linear network with squared
error (a convex quadratic), scipy's L-BFGS-B minimizer of strictly convex
problems (logistic and softmax regression with an L2 penalty), and the strong
Wolfe conditions checked from the callbacks' iterates at every accepted step.
"""
import numpy as np
import pytest
from scipy.optimize import minimize

import reference as ref
from common import assert_close, seed

opt = pytest.importorskip("cbackprop.optimize")


def convex(cb, loss, n=40, n_in=5, n_out=3, alpha=0.5, dtype=np.float64):
    """A strictly convex problem: no hidden layer, an L2 penalty (and, for
    squared error, full-rank inputs)."""
    rng = np.random.default_rng(seed(loss, n_in, n_out))
    X = rng.standard_normal((n, n_in))
    y = ref.make_targets(loss, n, n_out, rng)
    net = cb.Network([n_in, n_out], activation="identity", loss=loss, alpha=alpha,
                     dtype=dtype)
    return net, X, y, rng.uniform(0.5, 2.0, n)


def scipy_minimum(net, X, y, sw):
    res = minimize(lambda t: net.loss_grad(t, X, y, sw), net.init_params(0), jac=True,
                   method="L-BFGS-B", options=dict(gtol=1e-12, ftol=0, maxiter=10000))
    return res.x


@pytest.mark.parametrize("loss", ["squared_error", "binary_log_loss", "log_loss",
                                  "poisson"])
def test_convex_minimum_is_scipys(cb, loss):
    net, X, y, sw = convex(cb, loss, n_out=1 if loss == "binary_log_loss" else 3)
    # gtol 1e-7: the loss still decreases visibly (by about |g|^2 / lambda,
    # above the rounding of f) and x is then within about 1e-5 of the minimum.
    res = opt.lbfgs(net, net.init_params(0), X, y, sw, gtol=1e-7, ftol=0)
    assert res.status == 1 and res.success and np.max(np.abs(res.jac)) <= 1e-7
    assert_close(res.x, scipy_minimum(net, X, y, sw), np.float64, "reference", factor=1e5)
    f, g = net.loss_grad(res.x, X, y, sw)
    assert res.fun == f and np.array_equal(res.jac, g)


def test_quadratic_minimum_is_the_least_squares_solution(cb):
    net, X, y, _ = convex(cb, "squared_error", alpha=0.0)
    res = opt.lbfgs(net, net.init_params(0), X, y, gtol=1e-7, ftol=0)
    assert res.status == 1
    Xa = np.hstack([X, np.ones((len(X), 1))])
    W = np.linalg.lstsq(Xa, y, rcond=None)[0]         # rows: weights, then bias
    assert_close(res.x, W.ravel(), np.float64, "reference", factor=1e5)


def iterates(cb, **kw):
    """(net, X, y, [(x, f, g)] from theta0 through every iteration, result)."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 3))
    y = np.sin(X @ rng.standard_normal((3, 2)))
    net = cb.Network([3, 6, 2], activation="tanh", loss="squared_error", alpha=0.01)
    theta0 = net.init_params(0)
    seen = [(theta0, *net.loss_grad(theta0, X, y))]
    res = opt.lbfgs(net, theta0, X, y, callback=lambda r: seen.append((r.x, r.fun, r.jac)),
                    **kw)
    return net, X, y, seen, res


def test_strong_wolfe_conditions_at_every_step(cb):
    c1, c2 = 1e-4, 0.9
    net, X, y, seen, res = iterates(cb, max_iter=60, c1=c1, c2=c2)
    assert res.nit == len(seen) - 1 >= 20
    for k, ((x0, f0, g0), (x1, f1, g1)) in enumerate(zip(seen, seen[1:])):
        s = x1 - x0
        slope = g0 @ s
        assert slope < 0, k
        assert f1 <= f0 + c1 * slope, k
        assert abs(g1 @ s) <= c2 * abs(slope) * (1 + 1e-12), k
        f, g = net.loss_grad(x1, X, y)
        assert f1 == f and np.array_equal(g1, g)


def test_nonconvex_run_matches_scipy_in_loss(cb):
    """The same algorithm as L-BFGS-B (unbounded): it reaches the same
    stationary loss level on a small tanh network."""
    net, X, y, seen, res = iterates(cb, max_iter=2000, gtol=1e-8, ftol=0)
    theta0 = net.init_params(0)
    ref_res = minimize(lambda t: net.loss_grad(t, X, y), theta0, jac=True,
                       method="L-BFGS-B", options=dict(gtol=1e-8, ftol=0, maxiter=2000))
    assert res.status == 1 and np.max(np.abs(res.jac)) <= 1e-8
    assert res.fun <= 1.5 * ref_res.fun + 1e-6


def test_callback_stop_iteration_and_max_iter(cb):
    calls = []

    def stop(r):
        calls.append(r)
        if r.nit == 3:
            raise StopIteration

    net, X, y, _, _ = iterates(cb, max_iter=1)
    res = opt.lbfgs(net, net.init_params(0), X, y, callback=stop)
    assert res.status == -2 and not res.success and res.nit == 3 == len(calls)
    assert res.message == opt.TERMINATION_MESSAGES[-2]
    assert [r.nit for r in calls] == [1, 2, 3]
    assert not np.shares_memory(calls[-1].x, res.x)
    res = opt.lbfgs(net, net.init_params(0), X, y, max_iter=4)
    assert res.status == 0 and res.nit == 4 and res.nfev >= 4 and res.njev == res.nfev


def test_ftol_and_line_search_statuses(cb):
    net, X, y, _, _ = iterates(cb, max_iter=1)
    calls = []
    res = opt.lbfgs(net, net.init_params(0), X, y, ftol=0.5, callback=calls.append)
    assert res.status == 2 and res.nit >= 1 and len(calls) == res.nit
    assert opt.lbfgs(net, net.init_params(0), X, y, ftol=0.5).nit == res.nit
    # One evaluation per search: the first trial must satisfy both
    # conditions, which a steep tanh problem soon refuses.
    res = opt.lbfgs(net, net.init_params(0), X, y, max_ls=1, gtol=0, ftol=0,
                    max_iter=500)
    assert res.status == -6 and res.message == opt.TERMINATION_MESSAGES[-6]


def test_row_blocks_equal_one_block(cb):
    from cbackprop._problem import Problem
    net, X, y, sw = convex(cb, "log_loss", n=50, alpha=0.1)
    whole = opt.lbfgs(net, net.init_params(0), X, y, sw, max_iter=8, gtol=0, ftol=0)
    blocks = opt.lbfgs(net, net.init_params(0), Problem(net, X, y, sw, max_rows=7), None,
                       max_iter=8, gtol=0, ftol=0)
    assert whole.nit == blocks.nit == 8
    assert_close(blocks.x, whole.x, np.float64, "rounding", factor=1e3)


def test_float32_network_and_theta0_untouched(cb):
    net, X, y, sw = convex(cb, "log_loss", dtype=np.float32)
    theta0 = net.init_params(0)
    before = theta0.copy()
    res = opt.lbfgs(net, theta0, X, y, sw)
    net64 = cb.Network([5, 3], activation="identity", loss="log_loss", alpha=0.5)
    res64 = opt.lbfgs(net64, theta0.astype(np.float64), X, y, sw)
    assert res.x.dtype == np.float32 and res.jac.dtype == np.float32
    assert_close(res.fun, res64.fun, np.float32, "reference")
    np.testing.assert_array_equal(theta0, before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(m=0), "m must be"), (dict(gtol=-1.0), "gtol"), (dict(max_ls=0), "max_ls"),
    (dict(c1=0.9, c2=0.5), "c1 < c2"), (dict(callback=3), "callback"),
    (dict(max_iter=0), "max_iter")], ids=["m", "gtol", "max_ls", "c1c2", "callback",
                                          "max_iter"])
def test_bad_arguments(cb, kwargs, match):
    net, X, y, _ = convex(cb, "log_loss")
    with pytest.raises(ValueError, match=match):
        opt.lbfgs(net, net.init_params(0), X, y, **kwargs)


def test_non_finite_initial_loss_raises(cb):
    net = cb.Network([2, 2], activation="identity", loss="poisson")
    X = np.array([[1e3, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="not finite"):
        opt.lbfgs(net, np.full(net.n_params, 1.0), X, np.ones((2, 2)))
