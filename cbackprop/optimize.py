"""Second-order training of a :class:`cbackprop.Network`.

Full-batch optimizers over the flat parameter vector, each a pure
function of ``theta0`` (never modified) returning a
:class:`scipy.optimize.OptimizeResult`:

* :func:`levenberg_marquardt`: damped Gauss-Newton steps
  ``(G + mu I) d = -g`` with MATLAB trainlm's damping schedule; the GGN G is
  accumulated block of rows by block of rows (Wilamowski and Yu 2010) in one
  Cython kernel and factored by LAPACK's Cholesky. For squared_error this is
  classic Levenberg-Marquardt on the residuals.
* :func:`hessian_free`: Martens (2010) Hessian-free optimization: truncated,
  optionally preconditioned conjugate gradient on damped GGN-vector products
  (matrix-free), damping adapted by the reduction ratio.
* :func:`newton`: trust-region Newton with exact Hessian-vector products
  through :func:`scipy.optimize.minimize` ('trust-ncg' or 'trust-krylov').
* :func:`lbfgs`: L-BFGS with a strong-Wolfe line search, the whole loop
  compiled around the first-order kernel (in-memory data).

Conventions (scipy.optimize's): ``callback(intermediate_result)`` is called
after every iteration with an OptimizeResult holding at least ``x`` and
``fun``; raising ``StopIteration`` in it stops cleanly (status -2). The
result has ``x, fun, jac, nit, nfev, njev, nhev, status, success, message``;
``message`` is ``TERMINATION_MESSAGES[status]`` and ``success`` is
``status > 0``. A step whose loss is not finite is never accepted.

The objective is the network's: ``sum_i w_i l_i / W + alpha / (2 W)
sum_l ||W_l||^2`` (W the sum of sample weights), in the network's dtype.

X, y and sample_weight may be row-chunked dask arrays: every solver then runs
on the client over sums of per-worker results, the rows staying on the
workers (see :mod:`cbackprop.dask`).
"""
import functools
import math
import numbers
import time

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve
from scipy.optimize import OptimizeResult, minimize
from sklearn.utils import check_random_state

from cbackprop import _lm
from cbackprop._assembly import check_dense, diag_efisher, diag_ggn
from cbackprop._problem import Problem, make_problem, sum_over_parts
from cbackprop._validation import check_theta
from cbackprop._threads import blas_section

__all__ = ["levenberg_marquardt", "hessian_free", "newton", "kfac", "lbfgs", "quasi_hessian",
           "lm_iteration_cost", "SlowIterationWarning", "TERMINATION_MESSAGES"]

TERMINATION_MESSAGES = {
    -6: "The line search found no lower loss (L-BFGS-B's abnormal termination).",
    -5: "A linear algebra error occurred in the trust-region subproblem.",
    -4: "The quadratic model predicted no decrease: the trust-region step failed.",
    -3: "The damping exceeded its maximum without a step that lowered the loss.",
    -2: "Stopped because `callback` raised `StopIteration`.",
    0: "The maximum number of iterations is reached.",
    1: "`gtol` termination condition is satisfied.",
    2: "`ftol` termination condition is satisfied.",
}
# scipy's L-BFGS-B codes in this convention: 0 converged (its gradient or
# relative-reduction test), 1 an iteration or evaluation limit, 2 abnormal.
LBFGSB_STATUS = {0: 1, 1: 0, 2: -6}
# The LM kernel's codes are these.
assert {int(v): k for k, v in _lm.LMStatus.__members__.items()} == {
    -3: "MU_MAX", -2: "CALLBACK", 0: "MAX_ITER", 1: "GTOL", 2: "FTOL"}

MU_MIN = 1e-20            # floor of the LM damping after successful steps
BLOCK_BYTES = 16 << 20    # default LM block: workspaces near max(16 MiB, G's bytes / 4)
MIN_BLOCK = 64
LINE_SEARCH_STEPS = 60   # hessian_free's Armijo backtracking: at most 60 losses
NEWTON_METHODS = ("trust-krylov", "trust-ncg")
PRECONDITIONERS = (None, "diag_ggn", "diag_efisher")


# ------------------------------------------------------------ validation
def _check_real(value, name, *, gt=None, ge=None, lt=None, finite=True):
    if type(value) is not float and (  # fast path: a plain float
            isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or (finite and math.isinf(value)):
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    value = float(value)
    if gt is not None and not value > gt:
        raise ValueError(f"{name} must be > {gt}, got {value!r}")
    if ge is not None and not value >= ge:
        raise ValueError(f"{name} must be >= {ge}, got {value!r}")
    if lt is not None and not value < lt:
        raise ValueError(f"{name} must be < {lt}, got {value!r}")
    return value


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_callback(callback):
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable or None, got {callback!r}")
    return callback


def _prepare(net, theta0, X, y, sample_weight):
    """(a private working copy of theta0, the prepared problem).

    X, y, sample_weight may be in-memory arrays, dask collections (the rows
    stay on the cluster) or, X alone, an already prepared problem.
    """
    theta = check_theta(theta0, net.n_params, net.dtype)
    # A private working copy: theta0 is never written to, whatever its type.
    return np.array(theta, copy=True), make_problem(net, X, y, sample_weight)


def _gradient_converged(g, gtol):
    """The gradient test of every solver: ``max|g_j| <= gtol`` with g finite
    (the max-norm, as L-BFGS-B's ``pgtol`` and scikit-learn's ``tol``)."""
    gmax = float(np.max(np.abs(g)))
    return gmax <= gtol and math.isfinite(gmax)


def _stop_before_step(g, gtol, nit, max_iter):
    """Status 1 (gradient test) or 0 (max_iter reached) when the solver stops
    before its next step, else None."""
    if _gradient_converged(g, gtol):
        return 1
    return 0 if nit >= max_iter else None


def _stalled(f_old, f_new, ftol):
    """The loss test after an accepted step: ``f_old - f_new <= ftol * |f_old|``."""
    return f_old - f_new <= ftol * abs(f_old)


ACCUMULATIONS = ("auto", "rows", "kronecker")


@functools.lru_cache(maxsize=64)
def _accumulation_macs(layer_sizes):
    """Multiply-adds per sample of the two accumulations (see quasi_hessian).

    rows: ``C P^2 / 2`` (syrk on C factor rows). kronecker: for weight
    layers l < m with augmented inputs a_l, a_m and outputs n_l, n_m,
    ``a_l a_m n_l n_m``; for a diagonal block ``(a (a + 1) / 2)
    (n (n + 1) / 2)``; plus forming the K_i (C multiply-adds per entry).
    """
    s, L = layer_sizes, len(layer_sizes) - 1
    P = sum((s[l] + 1) * s[l + 1] for l in range(L))
    C = s[-1]
    kron = 0
    for l in range(L):
        al, nl = s[l] + 1, s[l + 1]
        for m in range(l, L):
            am, nm = s[m] + 1, s[m + 1]
            if l < m:
                kron += al * am * nl * nm + C * nl * nm
            else:
                kron += (al * (al + 1) // 2) * (nl * (nl + 1) // 2) + C * nl * (nl + 1) // 2
    return C * P * P / 2, kron


def _check_accumulation(accumulation, net):
    """True for the Kronecker-contracted accumulation, False for syrk on rows.

    'auto' takes 'kronecker' when P >= 100 and it needs at most 0.6 of the
    multiply-adds of 'rows' (its GEMMs are smaller and it scatters into G):
    multi-output networks, and one-output ones with a wide first layer.
    """
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"unknown accumulation {accumulation!r}; expected one of "
                         f"{list(ACCUMULATIONS)}")
    if accumulation == "auto":
        rows, kron = _accumulation_macs(net.layer_sizes)
        return net.n_params >= 100 and kron <= 0.6 * rows
    return accumulation == "kronecker"


def _block_rows(block_size, net, n_samples, kron=False):
    """Rows per accumulation block: the given size, or by a memory budget.

    Default: the block workspaces take max(16 MiB, a quarter of G's bytes):
    independent of N, a bounded overhead over G, and blocks long enough for
    efficient GEMMs and few passes over G.
    """
    if block_size is None:
        itemsize = np.dtype(net.dtype).itemsize
        budget = max(BLOCK_BYTES, net.n_params ** 2 // 4 * itemsize)
        block = max(MIN_BLOCK, _lm.block_rows(net._plan, budget, itemsize, kron))
    else:
        block = _check_int(block_size, "block_size", 1)
    return int(min(block, n_samples))


def _result(status, **fields):
    return OptimizeResult(status=status, success=status > 0,
                          message=TERMINATION_MESSAGES[status], **fields)


def _call(callback, res):
    """Call the user's callback; True when it raised StopIteration."""
    try:
        callback(res)
    except StopIteration:
        return True
    return False


# ------------------------------------------------------ Levenberg-Marquardt
class SlowIterationWarning(UserWarning):
    """One iteration of a solver is estimated, before it starts, to take long."""


RATE_ORDER = 256   # the GEMM timed by _gemm_rate: RATE_ORDER^3 multiply-adds


@functools.lru_cache(maxsize=1)
def _gemm_rate():
    """float64 multiply-adds per second of this machine's BLAS, measured once
    per process: the best of three square GEMMs of order RATE_ORDER (a few
    milliseconds), with the threads BLAS uses now."""
    a = np.random.default_rng(0).standard_normal((RATE_ORDER, RATE_ORDER))
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return RATE_ORDER ** 3 / max(best, 1e-9)


def lm_iteration_cost(net, n_rows, accumulation="auto"):
    """Estimated seconds and bytes of one :func:`levenberg_marquardt` iteration.

    Seconds: the accumulation's multiply-adds (``n_rows`` times the
    per-sample count of the chosen accumulation, see :func:`quasi_hessian`)
    plus two Cholesky factorizations (``P^3 / 6`` each: the accepted trial
    and about one rejected one), at the rate of a square GEMM measured once
    per process. The kernels' smaller GEMMs and ``?potrf`` run slower, so
    this is a lower bound: on digits with one hidden layer of 100 (P =
    7510), 5 to 7 s estimated against 9.4 s for a first iteration, on a shared
    machine. Bytes: G's ``P^2`` entries (the block workspaces add at most a
    quarter of that beyond 16 MiB).

    Returns
    -------
    seconds : float
    nbytes : int
    """
    per_sample = _accumulation_macs(net.layer_sizes)[int(_check_accumulation(accumulation, net))]
    P = net.n_params
    seconds = (n_rows * per_sample + P ** 3 / 3) / _gemm_rate()
    return seconds, P * P * np.dtype(net.dtype).itemsize


@blas_section
def quasi_hessian(net, theta, X, y, sample_weight=None, *, block_size=None,
                  accumulation="auto"):
    """Objective, gradient and GGN accumulated block of rows by block of rows.

    The kernel of :func:`levenberg_marquardt`, exposed for studies and tests:
    ``G = sum_i (w_i / W) J_i^T H_i J_i + alpha / W`` on the weight entries,
    the same matrix as ``net.ggn``, accumulated over blocks of
    ``block_size`` rows (default: workspaces of max(16 MiB, a quarter of
    G's bytes)).

    ``accumulation``: 'rows' backpropagates the C columns of the loss-Hessian
    factor and accumulates ``Jb^T Jb`` with ``?syrk`` on the ``(C * block,
    P)`` Jacobian-factor rows (Wilamowski and Yu's quasi-Hessian, ``C N P^2``
    flops); 'kronecker' contracts the C columns first, per pair of layers,
    ``sum_i (a~_l a~_m^T) (x) (S_l^T S_m)_i`` by GEMMs over the pairs of
    inputs, a quarter of each diagonal block by its two symmetries (about
    ``N P^2 / 2`` multiply-adds or fewer: a factor C and more below 'rows',
    in smaller GEMMs plus a scatter into G); 'auto' picks 'kronecker' when
    P >= 100 and its multiply-add count is at most 0.6 of the rows' (every
    multi-output network of some size; one output with a wide first layer).

    Returns
    -------
    loss : float
    grad : ndarray of shape (n_params,)
    G : ndarray of shape (n_params, n_params), symmetric
    """
    check_dense(net, None)
    kron = _check_accumulation(accumulation, net)
    theta, problem = _prepare(net, theta, X, y, sample_weight)
    f, g, G = sum_over_parts(problem, _accumulate, theta, block_size, kron)
    G += np.triu(G, 1).T
    return f, g, G


def _accumulate(problem, theta, block_size, kron):
    """(loss, gradient, upper triangle of the GGN) of an in-memory problem,
    lower triangle zero: one term of a sum over parts of the rows."""
    net = problem.net
    P = net.n_params
    block = _block_rows(block_size, net, problem.n_rows, kron)
    G = np.empty((P, P), net.dtype)
    g = np.empty(P, net.dtype)
    # The kernel adds alpha / W: the alpha that makes the problem's reg_coef.
    f = _lm.quasi_hessian(net._plan, theta, problem.X, problem.Y, problem.sw,
                          problem.weight_sum, problem.alpha, G, g,
                          _lm.LMWorkspace(net._plan, block, kron, net.dtype))
    return f, g, np.triu(G)


@blas_section
def levenberg_marquardt(net, theta0, X, y, sample_weight=None, *, mu=1e-3, mu_dec=0.1,
                        mu_inc=10.0, mu_max=1e10, max_iter=100, ftol=1e-12, gtol=1e-10,
                        block_size=None, accumulation="auto", max_bytes=None, callback=None):
    """Levenberg-Marquardt on the generalized Gauss-Newton matrix.

    Each iteration accumulates the GGN ``G`` of the objective (``alpha / W``
    on the weight entries included) and its gradient ``g`` over blocks of
    rows, then solves ``(G + mu I) d = -g`` by Cholesky (LAPACK ``?potrf`` /
    ``?potrs``) and evaluates the loss at ``theta + d``. MATLAB trainlm's
    schedule: a step that lowers the loss is taken and ``mu *= mu_dec``
    (floored at 1e-20); otherwise ``mu *= mu_inc`` and the step is solved
    again, until ``mu > mu_max`` (status -3). For squared_error, ``G`` is
    ``J^T J / W``: classic Levenberg-Marquardt on the residuals; for the log
    losses and poisson it is built from the loss-Hessian factor.

    Fallback when ``G + mu I`` is not numerically positive definite (Cholesky
    fails) or the solution is not finite: handled as a rejected step (mu is
    raised and the system solved again). A trial loss that is not finite
    (NaN, overflow) is likewise rejected.

    Memory: ``P^2`` entries (G and its factor share one buffer) plus
    workspaces proportional to ``block_size`` (by default max(16 MiB, a
    quarter of G's bytes)), whatever the number of samples.

    Parameters
    ----------
    net : Network
    theta0 : array of shape (n_params,)
        Starting point; not modified.
    X, y, sample_weight : the training data (see ``Network.loss``).
        Row-chunked dask arrays keep the rows on a dask.distributed cluster
        (see :mod:`cbackprop.dask`): G and g are then sums of per-worker
        accumulations (P x P each), and the damped solves and the schedule
        run on the client, one round of losses per trial step.
    mu : float > 0
        Initial damping.
    mu_dec : float in (0, 1)
        Factor applied to mu after a successful step. With ``mu_inc``,
        trainlm's values; the estimators' ``solver='lm'`` uses 0.5 and 4,
        which waste half as many rejected trials (rejections settle near
        ``log(1 / mu_dec) / log(mu_inc)`` per step; see the user guide).
    mu_inc : float > 1
        Factor applied to mu after a rejected step.
    mu_max : float > 0
        Stop (status -3) when mu exceeds it.
    max_iter : int >= 1
        Maximum number of accepted steps (status 0).
    ftol : float >= 0
        Stop (status 2) after a step with ``f_old - f_new <= ftol * f_old``.
    gtol : float >= 0
        Stop (status 1) when ``max|g| <= gtol`` (checked before each step).
    block_size : int >= 1, optional
        Rows per block of the accumulation; the default keeps the
        workspaces near max(16 MiB, P^2 / 4 entries). Results do not depend
        on it beyond rounding.
    accumulation : {'auto', 'rows', 'kronecker'}
        How G is accumulated (see :func:`quasi_hessian`): syrk on the
        Jacobian-factor rows (Wilamowski and Yu), or contracted over the
        outputs first; 'auto' chooses by multiply-add count.
    max_bytes : int >= 0, optional
        ValueError when G's ``P^2`` entries need more bytes (default 2 GiB,
        as for the dense matrices of :class:`cbackprop.Network`).
    callback : callable, optional
        ``callback(intermediate_result)`` after every accepted step, with
        ``x, fun, jac, nit, mu``. Raise ``StopIteration`` to stop.

    Returns
    -------
    OptimizeResult
        ``x, fun, jac, nit, nfev, njev, nhev, status, success, message`` and
        ``mu`` (the final damping). ``nfev`` counts loss evaluations (trial
        steps included), ``njev`` gradients and ``nhev`` GGN accumulations.
    """
    mu = _check_real(mu, "mu", gt=0)
    mu_dec = _check_real(mu_dec, "mu_dec", gt=0, lt=1)
    mu_inc = _check_real(mu_inc, "mu_inc", gt=1)
    mu_max = _check_real(mu_max, "mu_max", gt=0, finite=False)
    max_iter = _check_int(max_iter, "max_iter", 1)
    ftol = _check_real(ftol, "ftol", ge=0)
    gtol = _check_real(gtol, "gtol", ge=0)
    callback = _check_callback(callback)
    kron = _check_accumulation(accumulation, net)
    P = net.n_params
    check_dense(net, max_bytes)
    theta, problem = _prepare(net, theta0, X, y, sample_weight)
    G = np.empty((P, P), net.dtype)
    g = np.empty(P, net.dtype)

    report = None
    if callback is not None:
        def report(nit, fun, mu_now):
            return _call(callback, OptimizeResult(x=theta.copy(), fun=fun, jac=g.copy(),
                                                  nit=nit, mu=mu_now))

    schedule = dict(mu=mu, mu_dec=mu_dec, mu_inc=mu_inc, mu_max=mu_max, mu_min=MU_MIN,
                    max_iter=max_iter, ftol=ftol, gtol=gtol)
    if isinstance(problem, Problem):
        # In memory: the whole loop in one kernel call.
        block = _block_rows(block_size, net, problem.n_rows, kron)
        status, nit, nfev, njev, nhev, f, mu = _lm.lm_loop(
            net._plan, theta, problem.X, problem.Y, problem.sw, problem.weight_sum,
            problem.alpha, schedule, g, G, _lm.LMWorkspace(net._plan, block, kron, net.dtype),
            report)
    else:
        status, nit, nfev, njev, nhev, f, mu = _lm_loop_over_parts(
            problem, theta, block_size, kron, g=g, G=G, report=report, **schedule)
    return _result(int(status), x=theta, fun=float(f), jac=g, nit=nit, nfev=nfev,
                   njev=njev, nhev=nhev, mu=mu)


def _damped_solve(G, mu, g):
    """d = -(G + mu I)^{-1} g by Cholesky (G symmetric), or None when the
    damped matrix is not numerically positive definite or d is not finite."""
    A = G + mu * np.eye(G.shape[0], dtype=G.dtype)
    try:
        d = -cho_solve(cho_factor(A, check_finite=False), g, check_finite=False)
    except LinAlgError:
        return None
    return d if np.isfinite(d).all() else None


def _lm_loop_over_parts(problem, theta, block_size, kron, mu, mu_dec, mu_inc, mu_max,
                        mu_min, max_iter, ftol, gtol, g, G, report):
    """The loop of ``_lm.lm_loop`` on a problem whose rows are in parts
    (a cluster): each G and g is a sum of the parts' accumulations, the
    damped solves and trainlm's schedule run here, and each trial step costs
    one loss evaluation (a round over the parts). Same decisions, same
    counts, same return value as the kernel loop; theta and g in place."""
    def accumulate():
        f, g[:], upper = sum_over_parts(problem, _accumulate, theta, block_size, kron)
        np.copyto(G, upper)
        G[...] += np.triu(upper, 1).T
        return f

    f = accumulate()
    nfev = njev = nhev = 1
    if not math.isfinite(f):
        raise ValueError(f"the loss at theta0 is not finite ({f})")
    nit = 0
    while True:
        status = _stop_before_step(g, gtol, nit, max_iter)
        if status is not None:
            break
        trial = None
        while True:
            d = _damped_solve(G, mu, g)
            if d is not None:
                x = theta + d
                f_try = problem.loss(x)
                nfev += 1
                if math.isfinite(f_try) and f_try < f:
                    trial = x
                    break
            mu *= mu_inc
            if mu > mu_max:
                break
        if trial is None:
            status = -3
            break
        theta[:] = trial
        mu = max(mu * mu_dec, mu_min)
        nit += 1
        stop_ftol = _stalled(f, f_try, ftol)
        if not stop_ftol and nit < max_iter:
            f = accumulate()
            nhev += 1
        else:
            f = problem.loss_grad(theta, g)
        njev += 1
        if report is not None and report(nit, f, mu):
            status = -2
            break
        if stop_ftol:
            status = 2
            break
    return status, nit, nfev, njev, nhev, f, mu


# ----------------------------------------------------------- Hessian-free
class _GGN:
    """Damped-solver view of a problem's GGN: float64 products ``G v``.

    ``G`` includes the problem's regularizer (a curvature mini-batch from
    ``Problem.subsample`` keeps the full data's ``alpha / W``).
    """

    def __init__(self, problem, theta):
        self.problem, self.theta = problem, theta
        P, dtype = problem.net.n_params, problem.net.dtype
        self.V = np.empty((1, P), dtype)
        self.out = np.empty((1, P), dtype)

    def ggn_vp(self, v):
        self.V[0] = v
        self.problem.product("ggn_vp", self.theta, self.V, self.out)
        return self.out[0].astype(np.float64)

    def diagonal(self, kind):
        quantity = {"diag_ggn": diag_ggn, "diag_efisher": diag_efisher}[kind]
        return sum_over_parts(self.problem, quantity, self.theta).astype(np.float64)


def _check_batch(curvature_batch_size, n_samples):
    if curvature_batch_size is None:
        return None
    if isinstance(curvature_batch_size, numbers.Integral) and not isinstance(
            curvature_batch_size, bool):
        if curvature_batch_size < 1:
            raise ValueError(f"curvature_batch_size must be >= 1, got {curvature_batch_size}")
        size = int(curvature_batch_size)
    else:
        frac = _check_real(curvature_batch_size, "curvature_batch_size", gt=0)
        if frac > 1:
            raise ValueError("a float curvature_batch_size is a fraction of the samples "
                             f"in (0, 1], got {frac}")
        size = max(1, int(round(frac * n_samples)))
    return None if size >= n_samples else size


def _truncated_cg(curv, b, lam, x0, M, max_iter, tol):
    """Martens' truncated preconditioned CG on ``A = G + lam I``, ``A x = b``.

    Minimizes ``phi(x) = x^T A x / 2 - b^T x`` from x0 (or from 0 when
    ``phi(x0) >= 0``), stopping at ``max_iter`` or when the relative progress
    over the last ``k = max(10, i / 10)`` steps falls below ``k * tol``.
    Returns the iterates kept for backtracking, at steps ceil(1.3^j) and the
    last one: a list of (step, x, phi), and the number of products.
    """
    def A(v):
        return curv.ggn_vp(v) + lam * v

    products = 0
    if x0 is not None and np.any(x0):
        Ax0 = A(x0)
        products += 1
        phi0 = 0.5 * x0 @ Ax0 - b @ x0
        if phi0 < 0:
            x, r = x0.copy(), b - Ax0
        else:
            x, r, phi0 = np.zeros_like(b), b.copy(), 0.0
    else:
        x, r, phi0 = np.zeros_like(b), b.copy(), 0.0
    z = r / M
    p = z.copy()
    rz = r @ z
    phis = [phi0]
    kept = []
    next_keep = 1
    j = 0
    for i in range(1, max_iter + 1):
        if not rz > 0:       # exact solution (or a breakdown): stop here
            break
        Ap = A(p)
        products += 1
        pAp = p @ Ap
        if not pAp > 0:      # cannot happen for G + lam I, lam > 0, but guard
            break
        step = rz / pAp
        x += step * p
        r -= step * Ap
        # phi(x) = -x^T (b + r) / 2, since A x = b - r.
        phi = -0.5 * (x @ (b + r))
        phis.append(phi)
        if i == next_keep:
            kept.append((i, x.copy(), phi))
            while next_keep <= i:
                j += 1
                next_keep = int(math.ceil(1.3 ** j))
        k = max(10, i // 10)
        if tol > 0 and i > k and phi < 0 and (phi - phis[i - k]) / phi < k * tol:
            break
        z = r / M
        rz_new = r @ z
        p = z + (rz_new / rz) * p
        rz = rz_new
    if not phis[1:]:
        # no CG step taken: x is x0 (or 0)
        kept.append((0, x.copy(), phis[0]))
    elif kept[-1][0] != len(phis) - 1:
        kept.append((len(phis) - 1, x.copy(), phis[-1]))
    return kept, products


def _hf_direction(problem, theta, g, lam, x0, preconditioner, max_iter, tol):
    """Hessian-free's truncated CG on ``problem``'s GGN at theta, damped by
    lam: ``_truncated_cg``'s (kept iterates, number of products). A module
    function, so that a cluster problem can run it beside a mini-batch's rows."""
    curv = _GGN(problem, theta)
    if preconditioner is None:
        M = np.ones(problem.net.n_params)
    else:
        M = (np.maximum(curv.diagonal(preconditioner), 0.0) + lam) ** 0.75
    return _truncated_cg(curv, -g.astype(np.float64), lam, x0, M, max_iter, tol)


@blas_section
def hessian_free(net, theta0, X, y, sample_weight=None, *, max_iter=100, damping=1.0,
                 damping_max=1e10, cg_max_iter=250, cg_tol=5e-4, cg_decay=0.95,
                 preconditioner=None, curvature_batch_size=None, ftol=1e-12, gtol=1e-10,
                 random_state=None, callback=None):
    """Hessian-free optimization (Martens 2010) on GGN-vector products.

    Each outer iteration: the full-batch loss and gradient g; truncated
    (preconditioned) conjugate gradient on ``(G + lambda I) d = -g`` with G
    the GGN (on a random mini-batch of rows when ``curvature_batch_size`` is
    given; the regularizer keeps its full-batch weight ``alpha / W``), started
    from ``cg_decay`` times the previous run's last iterate and stopped by
    Martens' relative-progress criterion; backtracking over the CG iterates
    kept at steps ``ceil(1.3^j)`` (the best loss, scanning back from the last
    one); the reduction ratio ``rho`` of that step against the undamped
    quadratic model sets the damping (``lambda *= 3/2`` if ``rho < 1/4``,
    ``*= 2/3`` if ``rho > 3/4``); an Armijo backtracking line search
    (sufficient decrease 1e-2; the step shrinks by 0.8, or by 0.1 after a
    non-finite loss; at most 60 trials) then accepts a step with a finite,
    lower loss, or none (the iterate stays). Matrix-free: memory O(P) vectors
    and the network's activations, never a P x P matrix.

    Parameters
    ----------
    max_iter : int >= 1
        Outer iterations (CG runs), accepted or not (status 0).
    damping : float > 0
        Initial lambda.
    damping_max : float > 0
        Stop (status -3) when lambda exceeds it after a rejected step.
    cg_max_iter : int >= 1
        CG iterations per outer iteration.
    cg_tol : float >= 0
        Martens' epsilon (5e-4) of the relative-progress stopping test; 0
        runs CG to ``cg_max_iter`` (or to an exact solution).
    cg_decay : float in [0, 1]
        Warm start: CG starts from ``cg_decay`` times the previous final
        iterate (0: from zero).
    preconditioner : {None, 'diag_ggn', 'diag_efisher'}
        Diagonal preconditioner ``(diag + lambda)^0.75`` (Martens), from the
        exact GGN diagonal or the empirical Fisher diagonal of the curvature
        batch.
    curvature_batch_size : int >= 1 or float in (0, 1], optional
        Rows (or fraction of rows) drawn without replacement each outer
        iteration for the curvature products; None: all rows.
    ftol, gtol : float >= 0
        Stop after an accepted step with ``f_old - f_new <= ftol * f_old``
        (status 2), or when ``max|g| <= gtol`` (status 1).
    random_state : None, int or RandomState
        Draws of the curvature mini-batches.
    callback : callable, optional
        ``callback(intermediate_result)`` after every outer iteration, with
        ``x, fun, jac, nit, damping, cg_iter, accepted``.

    Returns
    -------
    OptimizeResult
        With ``damping`` (final lambda) and ``ncg`` (total CG iterations);
        ``nhev`` counts GGN-vector products.
    """
    max_iter = _check_int(max_iter, "max_iter", 1)
    lam = _check_real(damping, "damping", gt=0)
    damping_max = _check_real(damping_max, "damping_max", gt=0, finite=False)
    cg_max_iter = _check_int(cg_max_iter, "cg_max_iter", 1)
    cg_tol = _check_real(cg_tol, "cg_tol", ge=0)
    cg_decay = _check_real(cg_decay, "cg_decay", ge=0)
    if cg_decay > 1:
        raise ValueError(f"cg_decay must lie in [0, 1], got {cg_decay}")
    if preconditioner not in PRECONDITIONERS:
        raise ValueError(f"unknown preconditioner {preconditioner!r}; expected one of "
                         f"{list(PRECONDITIONERS)}")
    ftol = _check_real(ftol, "ftol", ge=0)
    gtol = _check_real(gtol, "gtol", ge=0)
    callback = _check_callback(callback)
    theta, problem = _prepare(net, theta0, X, y, sample_weight)
    N, P, dtype = problem.n_rows, net.n_params, net.dtype
    batch = _check_batch(curvature_batch_size, N)
    rs = check_random_state(random_state)

    g = np.empty(P, dtype)
    f = problem.loss_grad(theta, g)
    nfev = njev = 1
    if not math.isfinite(f):
        raise ValueError(f"the loss at theta0 is not finite ({f})")
    trial = np.empty(P, dtype)
    nhev = ncg = nit = 0
    d_prev = None
    while True:
        status = _stop_before_step(g, gtol, nit, max_iter)
        if status is not None:
            break
        # ---- the direction: CG on the (mini-batch) GGN at theta
        x0 = None if d_prev is None or cg_decay == 0 else cg_decay * d_prev
        cg_args = (theta, g, lam, x0, preconditioner, cg_max_iter, cg_tol)
        if batch is None:
            kept, products = _hf_direction(problem, *cg_args)
        else:
            idx = np.sort(rs.choice(N, batch, replace=False))
            kept, products = problem.on_subsample(idx, _hf_direction, *cg_args)
        nhev += products
        ncg += kept[-1][0]
        d_prev = kept[-1][1]
        # ---- backtracking over the CG iterates: the last, then earlier
        # ones while the loss keeps improving
        best = None
        for i, x, phi in reversed(kept):
            trial[:] = theta + x
            f_try = problem.loss(trial)
            nfev += 1
            if not math.isfinite(f_try):
                f_try = math.inf
            if best is not None and not f_try < best[0]:
                break
            best = (f_try, x, phi)
        f_p, p, phi = best
        # ---- damping: reduction ratio against the undamped model
        # q(p) = g.p + p^T G p / 2 = phi(p) - lam |p|^2 / 2
        q = phi - 0.5 * lam * (p @ p)
        rho = (f_p - f) / q if q < 0 else -math.inf
        if rho < 0.25:
            lam *= 1.5
        elif rho > 0.75:
            lam *= 2.0 / 3.0
        # ---- Armijo line search on p: x0.8 after an insufficient decrease,
        # x0.1 after a non-finite loss (an overflow is usually far off)
        slope = float(g.astype(np.float64) @ p)
        accepted = False
        if slope < 0:
            c, f_c = 1.0, f_p
            for _ in range(LINE_SEARCH_STEPS):
                if f_c <= f + 1e-2 * c * slope:
                    accepted = True
                    break
                c *= 0.8 if math.isfinite(f_c) else 0.1
                trial[:] = theta + c * p
                f_c = problem.loss(trial)
                nfev += 1
                if not math.isfinite(f_c):
                    f_c = math.inf
        nit += 1
        f_old = f
        if accepted:
            theta[:] = theta + c * p
            f = problem.loss_grad(theta, g)
            nfev += 1
            njev += 1
        if callback is not None and _call(callback, OptimizeResult(
                x=theta.copy(), fun=f, jac=g.copy(), nit=nit, damping=lam,
                cg_iter=kept[-1][0], accepted=accepted)):
            status = -2
            break
        if accepted and _stalled(f_old, f, ftol):
            status = 2
            break
        if not accepted and lam > damping_max:
            status = -3
            break
    return _result(status, x=theta, fun=float(f), jac=g, nit=nit, nfev=nfev,
                   njev=njev, nhev=nhev, damping=lam, ncg=ncg)


# ----------------------------------------------------------------- Newton
_SCIPY_STATUS = {0: 1, 1: 0, 2: -4, 3: -5}


@blas_section
def newton(net, theta0, X, y, sample_weight=None, *, method="trust-ncg", max_iter=100,
           gtol=1e-8, initial_trust_radius=1.0, max_trust_radius=1000.0, eta=0.15,
           callback=None):
    """Trust-region Newton with exact Hessian-vector products.

    :func:`scipy.optimize.minimize` with ``method`` ('trust-ncg': Steihaug
    CG subproblem; 'trust-krylov': GLTR Lanczos subproblem) and ``hessp``
    from the R-operator (``Network.hvp``), in float64 on scipy's side: float32
    networks evaluate in float32 and convert. A trial point whose loss is not
    finite is reported to scipy as ``+inf``: rejected, the trust region
    shrinks. For small networks and full batches.

    Parameters
    ----------
    method : {'trust-ncg', 'trust-krylov'}, default='trust-ncg'
        'trust-ncg' is bitwise reproducible. 'trust-krylov' is not across
        processes: SciPy's trlib starts the inverse iterations of its
        Lanczos subproblem from random vectors seeded by the clock
        (``time(NULL)``), so two runs agree only to the subproblem's
        tolerance and their iterates drift apart.
    max_iter : int >= 1
        Trust-region iterations, accepted or not (scipy's count; status 0).
    gtol : float >= 0
        Stop (status 1) when ``max|g| <= gtol``, the gradient test of every
        solver here (checked after each iteration, and at theta0).
    initial_trust_radius, max_trust_radius, eta : scipy's options.
    callback : callable, optional
        ``callback(intermediate_result)`` after every iteration, with ``x``
        (in the network's dtype), ``fun`` and ``nit``.

    Returns
    -------
    OptimizeResult
        ``nhev`` counts Hessian-vector products. scipy's failures map to
        status -4 (no predicted decrease) and -5 (linear algebra error),
        except that a step refused because its whole model change is within
        rounding of the loss (``|g.p| + |p.H p| / 2 <= 4 eps |f|``) is
        convergence, status 2 (the loss cannot resolve a further decrease).
        When 'trust-krylov' fails so (its inexact Lanczos step can raise the
        model after a rejected step), the remaining iterations run with
        'trust-ncg' from that point, whose Steihaug CG iterates lower the
        model.
    """
    if method not in NEWTON_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of "
                         f"{list(NEWTON_METHODS)}")
    max_iter = _check_int(max_iter, "max_iter", 1)
    gtol = _check_real(gtol, "gtol", ge=0)
    initial_trust_radius = _check_real(initial_trust_radius, "initial_trust_radius", gt=0)
    max_trust_radius = _check_real(max_trust_radius, "max_trust_radius", gt=0)
    if initial_trust_radius > max_trust_radius:
        raise ValueError("initial_trust_radius must not exceed max_trust_radius")
    eta = _check_real(eta, "eta", ge=0, lt=0.25)
    callback = _check_callback(callback)
    theta, problem = _prepare(net, theta0, X, y, sample_weight)
    P, dtype = net.n_params, net.dtype
    xbuf = np.empty(P, dtype)
    grad = np.empty(P, dtype)
    V = np.empty((1, P), dtype)
    HV = np.empty((1, P), dtype)
    counts = {"nfev": 0, "nhev": 0, "nit": 0, "stopped": False, "converged": False}
    last = {"x": None, "g": None}   # the last point evaluated, and its gradient

    def fun(x):
        xbuf[:] = x
        f = problem.loss_grad(xbuf, grad)
        counts["nfev"] += 1
        if not math.isfinite(f):
            if counts["nfev"] == 1:
                raise ValueError(f"the loss at theta0 is not finite ({f})")
            f = math.inf
        last["x"], last["g"] = np.array(x), grad.copy()
        return f, grad.astype(np.float64)

    def hessp(x, p):
        xbuf[:] = x
        V[0] = p
        problem.product("hvp", xbuf, V, HV)
        counts["nhev"] += 1
        return HV[0].astype(np.float64)

    def gradient_at(x):
        if last["x"] is None or not np.array_equal(last["x"], x):
            fun(x)
        return last["g"]

    def scipy_callback(intermediate_result):
        # The gradient test is cbackprop's (max|g| <= gtol), not scipy's
        # Euclidean one, so that gtol means the same for every solver.
        counts["nit"] += 1
        x = intermediate_result.x
        if callback is not None:
            res = OptimizeResult(x=x.astype(dtype), fun=float(intermediate_result.fun),
                                 nit=counts["nit"])
            if _call(callback, res):
                counts["stopped"] = True
                raise StopIteration
        if _gradient_converged(gradient_at(x), gtol):
            counts["converged"] = True
            raise StopIteration

    x0 = theta.astype(np.float64)
    if _gradient_converged(gradient_at(x0), gtol):
        f0 = problem.loss(theta)
        return _result(1, x=theta, fun=float(f0), jac=last["g"].astype(dtype), nit=0,
                       nfev=counts["nfev"], njev=counts["nfev"], nhev=0)
    options = dict(gtol=0.0, initial_trust_radius=initial_trust_radius,
                   max_trust_radius=max_trust_radius, eta=eta)
    nit = 0
    while True:
        res = minimize(fun, x0, jac=True, hessp=hessp, method=method, callback=scipy_callback,
                       options=dict(options, maxiter=max_iter - nit))
        nit += int(res.nit)
        status = _newton_status(res, counts, last, hessp, dtype)
        # trust-krylov's inexact Lanczos solution can raise the model after a
        # rejected step; Steihaug CG lowers it at every iterate: go on with it.
        if status != -4 or method != "trust-krylov" or nit >= max_iter:
            break
        method, x0 = "trust-ncg", res.x
    jac = gradient_at(res.x)
    return _result(status, x=res.x.astype(dtype), fun=float(res.fun), jac=jac.astype(dtype),
                   nit=nit, nfev=counts["nfev"], njev=counts["nfev"], nhev=counts["nhev"])


def _newton_status(res, counts, last, hessp, dtype):
    """cbackprop's status of one scipy trust-region run.

    scipy's 'no predicted decrease' (its status 2) is convergence (status 2)
    when the refused step's whole model change ``|g.p| + |p.H p| / 2`` is
    within rounding of the loss (4 eps |f|, eps the network dtype's): the
    loss cannot tell the step's decrease from its rounding. Otherwise it is
    a failure (-4). The refused step is ``p = x_trial - x``: scipy evaluates
    the loss at the trial point before it tests the predicted decrease.
    """
    if counts["stopped"]:
        return -2
    if counts["converged"]:
        return 1
    status = _SCIPY_STATUS.get(int(res.status), -4)
    if int(res.status) == 2 and last["x"] is not None:
        p = last["x"] - res.x
        g = res.jac
        change = abs(float(g @ p)) + 0.5 * abs(float(p @ hessp(res.x, p)))
        if change <= 4 * np.finfo(dtype).eps * abs(float(res.fun)):
            status = 2
    return status


# K-FAC and the compiled L-BFGS live in their own modules and use the helpers above.
from cbackprop._kfac import kfac  # noqa: E402
from cbackprop._quasi_newton import lbfgs  # noqa: E402
