"""Second-order optimizers of ``cbackprop.optimize``.

References: the normal equations of ridge least squares (``np.linalg.lstsq``
on the augmented system), the package's dense ``net.ggn`` / ``net.loss_grad``
for the blocked quasi-Hessian, and the loss itself (monotone decrease,
convergence) for the nonlinear problems.
"""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from common import DTYPES, assert_close

cb = pytest.importorskip("cbackprop")
opt = pytest.importorskip("cbackprop.optimize")

SOLVERS = {
    "lm": opt.levenberg_marquardt,
    "hessian_free": opt.hessian_free,
    "newton": opt.newton,
}


# ---------------------------------------------------------------- problems
def linear_problem(weighted, alpha=0.7, n=60, n_in=3, n_out=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    Y = X @ rng.standard_normal((n_in, n_out)) + 0.3 * rng.standard_normal((n, n_out))
    sw = rng.uniform(0.2, 2.0, n) if weighted else None
    net = cb.Network([n_in, n_out], "identity", "squared_error", alpha=alpha)
    return net, X, Y, sw


def ridge_solution(X, Y, sw, alpha):
    """argmin sum_i w_i |[x_i, 1] T - y_i|^2 / 2 + alpha / 2 |W|^2 by lstsq."""
    n, n_in = X.shape
    w = np.ones(n) if sw is None else sw
    Xa = np.hstack([X, np.ones((n, 1))]) * np.sqrt(w)[:, None]
    Ya = Y * np.sqrt(w)[:, None]
    R = np.sqrt(alpha) * np.eye(n_in + 1)[:n_in]          # no penalty on the bias
    A = np.vstack([Xa, R])
    B = np.vstack([Ya, np.zeros((n_in, Y.shape[1]))])
    T = np.linalg.lstsq(A, B, rcond=None)[0]               # (n_in + 1, n_out)
    return np.concatenate([T[:n_in].ravel(), T[n_in]])     # theta order: W, b


def sin_problem():
    X = np.linspace(-3, 3, 200).reshape(-1, 1)
    return X, np.sin(X[:, 0])


def classification_problem(loss, seed=0, n=80):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    if loss == "log_loss":
        Y = np.eye(3)[np.argmax(X[:, :3] + 0.5 * rng.standard_normal((n, 3)), axis=1)]
        sizes = [4, 6, 3]
    elif loss == "binary_log_loss":
        Y = (X[:, :2] + 0.5 * rng.standard_normal((n, 2)) > 0).astype(float)
        sizes = [4, 6, 2]
    else:  # poisson
        Y = rng.poisson(np.exp(0.5 * X[:, :1]))[:, :1].astype(float)
        sizes = [4, 6, 1]
    return sizes, X, Y


def recorder():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)
    return seen, callback


# ------------------------------------------------ exact linear least squares
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("solver", ["lm", "newton"])
def test_normal_equations(solver, weighted):
    net, X, Y, sw = linear_problem(weighted)
    theta_star = ridge_solution(X, Y, sw, net.alpha)
    theta0 = net.init_params(0)
    if solver == "lm":
        res = opt.levenberg_marquardt(net, theta0, X, Y, sw, gtol=1e-14, ftol=0.0)
        assert res.status in (1, -3)   # gradient zero, or no lower loss is left
    else:
        res = opt.newton(net, theta0, X, Y, sw, gtol=1e-12)
        assert res.status == 1 and res.success
        assert res.nhev > 0
    assert_allclose(res.x, theta_star, rtol=0, atol=1e-8)
    assert_allclose(res.fun, net.loss(theta_star, X, Y, sw), rtol=1e-12)


def test_lm_default_tolerances_solve_linear_least_squares():
    net, X, Y, sw = linear_problem(False)
    res = opt.levenberg_marquardt(net, net.init_params(0), X, Y)
    assert res.success and res.nit < 10
    assert_allclose(res.x, ridge_solution(X, Y, None, net.alpha), atol=1e-8)


@pytest.mark.parametrize("preconditioner", [None, "diag_ggn", "diag_efisher"])
@pytest.mark.parametrize("batch", [None, 0.5, 30], ids=["full", "half", "30rows"])
def test_hessian_free_solves_linear_least_squares(preconditioner, batch):
    # Mini-batch curvature with the full gradient still converges to the
    # minimizer: the fixed point of theta -= (G_b + lambda)^-1 g is g = 0.
    net, X, Y, sw = linear_problem(True, n=200)
    res = opt.hessian_free(net, net.init_params(0), X, Y, sw, gtol=1e-12, ftol=0.0,
                           max_iter=60, preconditioner=preconditioner,
                           curvature_batch_size=batch, random_state=0)
    assert res.status in (1, 2), res.message
    assert_allclose(res.x, ridge_solution(X, Y, sw, net.alpha), atol=1e-7)


# -------------------------------------------------------- the sin workload
def test_lm_fits_sin_for_most_seeds():
    X, y = sin_problem()
    net = cb.Network([1, 10, 1], "tanh", "squared_error")
    mses = []
    for seed in range(5):
        res = opt.levenberg_marquardt(net, net.init_params(seed), X, y, max_iter=200)
        assert res.nit <= 200
        mses.append(np.mean((net.predict(res.x, X) - y) ** 2))
    assert sum(m < 1e-6 for m in mses) >= 4, mses


# --------------------------------------- monotone decrease, every loss
@pytest.mark.parametrize("loss", ["log_loss", "binary_log_loss", "poisson"])
def test_lm_decreases_loss_monotonically(loss):
    sizes, X, Y = classification_problem(loss)
    net = cb.Network(sizes, "tanh", loss, alpha=1e-2)
    theta0 = net.init_params(0)
    seen, callback = recorder()
    res = opt.levenberg_marquardt(net, theta0, X, Y, max_iter=25, callback=callback)
    funs = [net.loss(theta0, X, Y)] + [r.fun for r in seen]
    assert len(seen) == res.nit >= 5
    assert np.all(np.diff(funs) < 0), funs
    assert funs[-1] < 0.7 * funs[0]
    assert_allclose(res.fun, net.loss(res.x, X, Y), rtol=1e-12)
    loss_, grad = net.loss_grad(res.x, X, Y)
    assert_allclose(res.jac, grad, rtol=1e-10, atol=1e-14)


# -------------------------------------- blocked quasi-Hessian = dense GGN
@pytest.mark.parametrize("accumulation", ["rows", "kronecker"])
@pytest.mark.parametrize("loss", ["squared_error", "log_loss", "binary_log_loss", "poisson"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_quasi_hessian_equals_ggn(loss, dtype, accumulation):
    sizes, X, Y = classification_problem("log_loss" if loss == "squared_error" else loss)
    if loss == "squared_error":
        Y = np.random.default_rng(3).standard_normal((X.shape[0], 3))
    sizes = [4, 5, 3, sizes[-1]]
    rng = np.random.default_rng(1)
    sw = rng.uniform(0.0, 2.0, X.shape[0])
    net = cb.Network(sizes, "tanh", loss, alpha=0.3, dtype=dtype)
    theta = net.init_params(0)
    G_ref = net.ggn(theta, X, Y, sw)
    f_ref, g_ref = net.loss_grad(theta, X, Y, sw)
    for block in (1, 7, X.shape[0], None):
        f, g, G = opt.quasi_hessian(net, theta, X, Y, sw, block_size=block,
                                    accumulation=accumulation)
        assert G.dtype == g.dtype == dtype
        assert_allclose(G, G.T, rtol=0, atol=0)
        assert_close(G, G_ref, dtype, "rounding", factor=4, err_msg=f"G block {block}")
        assert_close(g, g_ref, dtype, "rounding", factor=4, err_msg=f"g block {block}")
        assert_close(f, f_ref, dtype, "rounding", factor=4, err_msg=f"f block {block}")


def test_quasi_hessian_without_hidden_layers_and_wide_layers():
    # no hidden layer (one weight layer) and a layer wider than the Kronecker
    # chunk logic's defaults: both accumulations agree with net.ggn
    rng = np.random.default_rng(0)
    for sizes in ([5, 3], [3, 40, 4]):
        net = cb.Network(sizes, "relu", "log_loss", alpha=0.1)
        X = rng.standard_normal((50, sizes[0]))
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], 50)]
        theta = net.init_params(1)
        G_ref = net.ggn(theta, X, Y)
        for acc in ("rows", "kronecker"):
            G = opt.quasi_hessian(net, theta, X, Y, block_size=17, accumulation=acc)[2]
            assert_allclose(G, G_ref, rtol=0, atol=1e-12 * np.abs(G_ref).max())


@pytest.mark.parametrize("accumulation", ["rows", "kronecker"])
def test_lm_does_not_depend_on_block_size(accumulation):
    sizes, X, Y = classification_problem("log_loss")
    net = cb.Network(sizes, "tanh", "log_loss", alpha=1e-3)
    theta0 = net.init_params(0)
    runs = [opt.levenberg_marquardt(net, theta0, X, Y, max_iter=8, block_size=b,
                                    accumulation=accumulation)
            for b in (1, 9, 80, None)]
    for res in runs[1:]:
        assert (res.nit, res.nfev, res.status) == (runs[0].nit, runs[0].nfev, runs[0].status)
        assert_allclose(res.x, runs[0].x, rtol=1e-9, atol=1e-12)
        assert_allclose(res.fun, runs[0].fun, rtol=1e-12)


def test_lm_integer_weights_equal_repeated_rows():
    sizes, X, Y = classification_problem("binary_log_loss")
    net = cb.Network(sizes, "tanh", "binary_log_loss", alpha=0.1)
    counts = np.random.default_rng(2).integers(1, 4, X.shape[0])
    theta0 = net.init_params(0)
    a = opt.levenberg_marquardt(net, theta0, X, Y, counts.astype(float), max_iter=5)
    b = opt.levenberg_marquardt(net, theta0, np.repeat(X, counts, 0), np.repeat(Y, counts, 0),
                                max_iter=5)
    assert_allclose(a.x, b.x, rtol=1e-8, atol=1e-11)


# ------------------------------------------------- callbacks, termination
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_callback_every_iteration_and_stop_iteration(solver):
    X, y = sin_problem()
    net = cb.Network([1, 4, 1], "tanh", "squared_error")
    theta0 = net.init_params(0)
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)
        assert_allclose(intermediate_result.fun, net.loss(intermediate_result.x, X, y),
                        rtol=1e-12)
        if len(seen) == 3:
            raise StopIteration

    res = SOLVERS[solver](net, theta0, X, y, callback=callback)
    assert res.status == -2 and not res.success
    assert res.message == opt.TERMINATION_MESSAGES[-2]
    assert "StopIteration" in res.message
    assert len(seen) == res.nit == 3
    assert [r.nit for r in seen] == [1, 2, 3]
    assert_allclose(res.x, seen[-1].x)
    assert res.fun == seen[-1].fun
    # the callback's x is a copy, not the optimizer's working array
    assert not np.shares_memory(seen[0].x, seen[1].x)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_result_fields_and_max_iter(solver):
    X, y = sin_problem()
    net = cb.Network([1, 4, 1], "tanh", "squared_error")
    res = SOLVERS[solver](net, net.init_params(0), X, y, max_iter=2)
    for key in ("x", "fun", "jac", "nit", "nfev", "njev", "nhev", "status", "success",
                "message"):
        assert key in res, key
    assert res.status == 0 and not res.success and res.nit == 2
    assert res.message == opt.TERMINATION_MESSAGES[0]
    assert res.x.dtype == res.jac.dtype == np.float64
    assert res.nfev >= 3 and res.njev >= 2 and res.nhev >= 2


def test_lm_mu_max_exceeded():
    # At the minimum no step lowers the loss (beyond a rounding-level first
    # step or two): mu climbs past mu_max.
    net, X, Y, _ = linear_problem(False)
    theta_star = ridge_solution(X, Y, None, net.alpha)
    res = opt.levenberg_marquardt(net, theta_star, X, Y, mu=1.0, mu_max=1e4, gtol=0.0,
                                  ftol=0.0)
    assert res.status == -3 and not res.success
    assert res.message == opt.TERMINATION_MESSAGES[-3]
    assert "damping" in res.message
    assert res.mu > 1e4 and res.nit <= 3
    assert res.nfev - 1 - res.nit >= 5     # the rejected trials of the last iteration
    assert_allclose(res.x, theta_star, atol=1e-12)


def test_lm_rejects_non_finite_trial_loss():
    # Poisson with exp(z) ~ 1e-13 at theta0: the GGN is ~0, the first damped
    # Gauss-Newton step is huge and exp overflows (loss = inf).
    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 1.5, (40, 1))
    y = rng.poisson(50.0, 40).astype(float)
    net = cb.Network([1, 1], "identity", "poisson")
    theta0 = np.array([0.0, -30.0])
    f0, g0, G0 = opt.quasi_hessian(net, theta0, X, y)
    first = theta0 + np.linalg.solve(G0 + 1e-3 * np.eye(2), -g0)
    with np.errstate(over="ignore"):
        assert not np.isfinite(net.loss(first, X, y))
    seen, callback = recorder()
    res = opt.levenberg_marquardt(net, theta0, X, y, mu=1e-3, max_iter=30, callback=callback)
    assert np.isfinite(res.x).all() and np.isfinite(res.fun)
    assert res.nfev > res.nit + 1          # trials were rejected
    funs = [f0] + [r.fun for r in seen]
    assert np.all(np.isfinite(funs)) and np.all(np.diff(funs) < 0)
    assert res.fun < 0.1 * f0


def test_hessian_free_and_newton_reject_non_finite_losses():
    rng = np.random.default_rng(0)
    X = rng.uniform(0.5, 1.5, (40, 1))
    y = rng.poisson(50.0, 40).astype(float)
    net = cb.Network([1, 1], "identity", "poisson")
    theta0 = np.array([0.0, -30.0])
    f0 = net.loss(theta0, X, y)
    hf = opt.hessian_free(net, theta0, X, y, damping=1e-3, max_iter=20)
    assert hf.nfev > 2 * hf.nit        # line-search trials, the overflowing ones included
    nt = opt.newton(net, theta0, X, y, initial_trust_radius=1e3, max_trust_radius=1e4,
                    max_iter=50)
    for res in (hf, nt):
        assert np.isfinite(res.x).all() and np.isfinite(res.fun)
        assert res.fun < 0.1 * f0


def test_non_finite_initial_loss_raises():
    X = np.ones((5, 1))
    y = np.ones(5)
    net = cb.Network([1, 1], "identity", "poisson")
    theta0 = np.array([800.0, 0.0])
    for solver in SOLVERS.values():
        with pytest.raises(ValueError, match="not finite"):
            solver(net, theta0, X, y)


# ------------------------------------------------------------ arguments
@pytest.mark.parametrize("kwargs", [
    dict(mu=-1.0), dict(mu=0.0), dict(mu=np.nan), dict(mu_dec=1.0), dict(mu_dec=1.5),
    dict(mu_dec=0.0), dict(mu_inc=1.0), dict(mu_inc=0.5), dict(mu_max=0.0),
    dict(max_iter=0), dict(max_iter=2.5), dict(max_iter=True), dict(ftol=-1.0),
    dict(gtol=-1e-3), dict(block_size=0), dict(callback=3), dict(accumulation="dense"),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_lm_bad_arguments(kwargs):
    net, X, Y, _ = linear_problem(False)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        opt.levenberg_marquardt(net, net.init_params(0), X, Y, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(max_iter=0), dict(damping=-1.0), dict(damping=0.0), dict(cg_max_iter=0),
    dict(cg_tol=-1.0), dict(cg_decay=1.5), dict(preconditioner="jacobi"),
    dict(curvature_batch_size=0), dict(curvature_batch_size=1.5),
    dict(curvature_batch_size=-0.5), dict(gtol=-1.0),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_hessian_free_bad_arguments(kwargs):
    net, X, Y, _ = linear_problem(False)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        opt.hessian_free(net, net.init_params(0), X, Y, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(method="bfgs"), dict(method="trust-exact"), dict(max_iter=0), dict(gtol=-1.0),
    dict(initial_trust_radius=0.0), dict(eta=0.5),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_newton_bad_arguments(kwargs):
    net, X, Y, _ = linear_problem(False)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        opt.newton(net, net.init_params(0), X, Y, **kwargs)


# ------------------------------------------------------ purity, dtypes
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_theta0_is_not_modified(solver):
    X, y = sin_problem()
    net = cb.Network([1, 4, 1], "tanh", "squared_error")
    theta0 = net.init_params(0)
    theta0.flags.writeable = False
    copy = theta0.copy()
    res = SOLVERS[solver](net, theta0, X, y, max_iter=3)
    assert_array_equal(theta0, copy)
    assert not np.shares_memory(res.x, theta0)
    # a list (converted on the way in) works too
    res2 = SOLVERS[solver](net, list(copy), X, y, max_iter=3)
    assert_allclose(res2.x, res.x)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_float32_networks(solver):
    X, y = sin_problem()
    net = cb.Network([1, 6, 1], "tanh", "squared_error", dtype=np.float32)
    theta0 = net.init_params(0)
    f0 = net.loss(theta0, X, y)
    res = SOLVERS[solver](net, theta0, X, y, max_iter=15)
    assert res.x.dtype == res.jac.dtype == np.float32
    assert np.isfinite(res.x).all()
    assert res.fun < 0.1 * f0
    assert_allclose(res.fun, net.loss(res.x, X, y), rtol=1e-5)


# ---------------------------------------------------------- hessian_free
@pytest.mark.parametrize("preconditioner", [None, "diag_ggn", "diag_efisher"])
@pytest.mark.parametrize("batch", [None, 0.5, 30], ids=["full", "half", "30rows"])
def test_hessian_free_decreases_and_converges(preconditioner, batch):
    sizes, X, Y = classification_problem("log_loss")
    net = cb.Network(sizes, "tanh", "log_loss", alpha=1e-2)
    theta0 = net.init_params(0)
    seen, callback = recorder()
    res = opt.hessian_free(net, theta0, X, Y, max_iter=40, preconditioner=preconditioner,
                           curvature_batch_size=batch, random_state=0, callback=callback)
    funs = [net.loss(theta0, X, Y)] + [r.fun for r in seen]
    assert len(seen) == res.nit == 40
    assert np.all(np.diff(funs) <= 0), funs          # rejected steps keep the loss
    assert all(r.accepted for r in seen[:3])
    assert_allclose(res.fun, net.loss(res.x, X, Y), rtol=1e-12)
    assert res.nhev >= res.ncg > 0
    # converging: the gradient is small against the start's (measured 6e-3
    # to 2.3e-2 with full-batch curvature, 0.02 to 0.19 with mini-batches,
    # over three random states)
    g0 = net.loss_grad(theta0, X, Y)[1]
    ratio = np.abs(res.jac).max() / np.abs(g0).max()
    assert ratio < (0.06 if batch is None else 0.4), ratio
    assert res.fun < 0.1 * funs[0]


def test_hessian_free_mini_batches_are_reproducible():
    sizes, X, Y = classification_problem("binary_log_loss")
    net = cb.Network(sizes, "tanh", "binary_log_loss")
    kw = dict(max_iter=5, curvature_batch_size=20)
    a = opt.hessian_free(net, net.init_params(0), X, Y, random_state=3, **kw)
    b = opt.hessian_free(net, net.init_params(0), X, Y, random_state=3, **kw)
    assert_array_equal(a.x, b.x)


# ---------------------------------------------------------------- newton
@pytest.mark.parametrize("method", ["trust-krylov", "trust-ncg"])
def test_newton_converges_and_counts_hessian_products(method, monkeypatch):
    sizes, X, Y = classification_problem("log_loss")
    net = cb.Network(sizes, "tanh", "log_loss", alpha=1e-2)
    from cbackprop import _curvature
    calls = []
    real = _curvature.hvp
    monkeypatch.setattr(_curvature, "hvp", lambda *a: calls.append(1) or real(*a))
    # gtol well above the rounding floor of the trust-region model (predicted
    # decreases ~ |g|^2 / lambda must stay far above eps * |f|): at 1e-7 the
    # outcome of the last step depends on the BLAS build.
    res = opt.newton(net, net.init_params(0), X, Y, method=method, gtol=1e-6)
    assert res.status == 1 and res.success, res.message
    # gtol is the max-norm test of every solver (lm, hessian-free, newton)
    assert np.max(np.abs(res.jac)) <= 1e-6
    assert res.nhev == len(calls) > 0
    assert_allclose(res.fun, net.loss(res.x, X, Y), rtol=1e-12)


_SOLVER_RUNS = """
import hashlib, sys, time
import numpy as np
import cbackprop as cb
from cbackprop import optimize as opt
from sklearn.datasets import load_digits
X, y = load_digits(return_X_y=True)
X, Y = X[:300] / 16.0, np.eye(10)[y[:300]]
net = cb.Network((64, 16, 10), "tanh", "log_loss")
theta = net.init_params(0)
kw = dict(max_iter=30) if len(sys.argv) < 2 else dict(max_iter=30, method=sys.argv[1])
runs = [opt.newton(net, theta, X, Y, **kw),
        opt.hessian_free(net, theta, X, Y, max_iter=10, random_state=0),
        opt.levenberg_marquardt(net, theta, X, Y, max_iter=5),
        opt.kfac(net, theta, X, Y, max_iter=10, random_state=0)]
print(int(time.time()), *[hashlib.sha256(r.x.tobytes()).hexdigest() for r in runs])
"""


def _solver_runs_in_a_process(*args):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _SOLVER_RUNS, *args], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), out[1:]


def test_solvers_are_reproducible_across_processes_and_clock_seconds():
    # In a 64-16-10 digits fit, newton's 30 iterations reach the subproblems
    # whose inverse iterations 'trust-krylov' (SciPy's trlib) would start
    # from clock-seeded random vectors: the default must not depend on them.
    import time
    first, hashes = _solver_runs_in_a_process()
    time.sleep(max(0.0, first + 1.05 - time.time()))
    second, again = _solver_runs_in_a_process()
    assert second > first
    assert again == hashes


def _newton_with_failed_first_run(monkeypatch, method, step):
    """newton whose first scipy run stops after 2 iterations with scipy's
    'no predicted decrease' (status 2) after a refused trial at x + step(x),
    the later runs left alone; returns the result and the runs' (method,
    maxiter)."""
    sizes, X, Y = classification_problem("log_loss")
    net = cb.Network(sizes, "tanh", "log_loss", alpha=1e-2)
    runs = []
    real = opt.minimize

    def minimize(fun, x0, **kw):
        runs.append((kw["method"], kw["options"]["maxiter"]))
        if len(runs) > 1:
            return real(fun, x0, **kw)
        res = real(fun, x0, **dict(kw, options=dict(kw["options"], maxiter=2)))
        fun(res.x + step(res.x))          # the refused trial, as scipy evaluates it
        res.status = 2
        return res
    monkeypatch.setattr(opt, "minimize", minimize)
    return opt.newton(net, net.init_params(0), X, Y, method=method, gtol=1e-6,
                      max_iter=50), runs


def test_newton_continues_with_trust_ncg_after_a_krylov_failure(monkeypatch):
    res, runs = _newton_with_failed_first_run(monkeypatch, "trust-krylov", lambda x: 0.5)
    assert runs == [("trust-krylov", 50), ("trust-ncg", 48)]
    assert res.status == 1 and res.nit > 2 and np.max(np.abs(res.jac)) <= 1e-6


@pytest.mark.parametrize("step, status", [
    pytest.param(lambda x: 0.5, -4, id="real-failure"),
    pytest.param(lambda x: 1e-6, -4, id="small-but-resolved"),
    pytest.param(lambda x: 0.0, 2, id="no-step"),
    pytest.param(lambda x: 2 * np.spacing(x), 2, id="two-ulps"),
])
def test_newton_no_predicted_decrease_is_convergence_only_within_rounding(monkeypatch, step,
                                                                          status):
    res, runs = _newton_with_failed_first_run(monkeypatch, "trust-ncg", step)
    assert runs == [("trust-ncg", 50)] and res.nit == 2
    assert res.status == status and res.message == opt.TERMINATION_MESSAGES[status]
