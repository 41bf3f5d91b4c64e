"""Compiled L-BFGS (:func:`lbfgs`): the loop of :mod:`cbackprop._lbfgs`.

The two-loop recursion, the strong-Wolfe line search and every objective
evaluation run in Cython with the GIL released; Python runs once per fit
(validation, buffers) and, when a callback is given, once per iteration.
The estimators keep scipy's L-BFGS-B (their results equal scikit-learn's);
this solver is the library's own, on the network's objective.
"""
import numpy as np
from scipy.optimize import OptimizeResult

from cbackprop import _lbfgs, _network
from cbackprop._problem import Problem
from cbackprop._threads import blas_section
from cbackprop.optimize import (TERMINATION_MESSAGES, _call, _check_callback, _check_int,
                                _check_real, _prepare, _result)

__all__ = ["lbfgs"]

assert {int(v) for v in _lbfgs.LbfgsStatus.__members__.values()} <= set(TERMINATION_MESSAGES)

# scipy's L-BFGS-B defaults: ftol = factr * eps with factr = 1e7, gtol 1e-5,
# 15000 iterations, 20 evaluations per line search.
FTOL = 1e7 * np.finfo(np.float64).eps


@blas_section
def lbfgs(net, theta0, X, y, sample_weight=None, *, m=10, gtol=1e-5, ftol=FTOL,
          max_iter=15000, max_ls=20, c1=1e-4, c2=0.9, callback=None):
    """Minimize the network's objective by L-BFGS with a strong-Wolfe search.

    Nocedal and Wright's L-BFGS (Algorithm 7.4, scaling ``s.y / y.y``) and
    line search (Algorithms 3.5 and 3.6, cubic interpolation), the loop
    compiled around the first-order kernel: no Python work inside an
    iteration (the rows are visited in blocks of the kernels' memory budget).
    The loop runs in float64, for float32 networks too (their result is
    returned in float32).

    Parameters
    ----------
    net : Network
    theta0 : array of shape (n_params,)
        Starting point; not modified.
    X, y, sample_weight : the training data in memory (see ``Network.loss``),
        or X a prepared problem.
    m : int >= 1
        Stored correction pairs.
    gtol : float >= 0
        Stop when ``max|g| <= gtol`` (status 1).
    ftol : float >= 0
        Stop when ``f_old - f <= ftol max(|f_old|, |f|, 1)`` (status 2), as
        L-BFGS-B.
    max_iter : int >= 1
        Iterations (status 0).
    max_ls : int >= 1
        Objective evaluations per line search; none satisfying the strong
        Wolfe conditions: status -6.
    c1, c2 : float, 0 < c1 < c2 < 1
        Sufficient decrease and curvature constants.
    callback : callable, optional
        ``callback(intermediate_result)`` after every iteration with ``x,
        fun, jac, nit``; raise StopIteration to stop (status -2).

    Returns
    -------
    OptimizeResult
        ``x, fun, jac, nit, nfev, njev, status, success, message``
        (:data:`cbackprop.optimize.TERMINATION_MESSAGES`).
    """
    options = dict(m=_check_int(m, "m", 1), max_iter=_check_int(max_iter, "max_iter", 1),
                   max_ls=_check_int(max_ls, "max_ls", 1),
                   gtol=_check_real(gtol, "gtol", ge=0), ftol=_check_real(ftol, "ftol", ge=0),
                   c1=_check_real(c1, "c1", gt=0, lt=1), c2=_check_real(c2, "c2", gt=0, lt=1))
    if not options["c1"] < options["c2"]:
        raise ValueError(f"need c1 < c2, got {c1} and {c2}")
    callback = _check_callback(callback)
    theta, problem = _prepare(net, theta0, X, y, sample_weight)
    if not isinstance(problem, Problem):
        raise ValueError("lbfgs needs the rows in memory; on cluster data use "
                         "scipy.optimize.minimize on Network.loss_grad")
    x = theta.astype(np.float64)
    g = np.empty_like(x)
    status, nit, nfev, f = _run(net, problem, x, g, options, callback)
    if net.dtype != np.float64:
        x = x.astype(net.dtype)
        g = np.empty_like(x)
        f = problem.loss_grad(x, g)
    return _result(status, x=x, fun=float(f), jac=g, nit=nit, nfev=nfev, njev=nfev)


def _run(net, problem, x, g, options, callback):
    """The compiled loop on the problem's rows (float64): (status, nit, nfev, f)."""
    as64 = lambda a: None if a is None else np.ascontiguousarray(a, dtype=np.float64)
    X, Y, sw = as64(problem.X), as64(problem.Y), as64(problem.sw)
    first = problem.chunks(2 * net._plan.width)[0]
    ws = _network.FirstOrderWorkspace(net._plan, first.stop - first.start, 1, np.float64)
    P, k = net.n_params, options["m"]
    S, Yh = np.zeros((k, P)), np.zeros((k, P))
    report = None
    if callback is not None:
        def report(nit, fun):
            return _call(callback, OptimizeResult(x=x.astype(net.dtype), fun=float(fun),
                                                  jac=g.astype(net.dtype), nit=nit))
    return _lbfgs.lbfgs_loop(net._plan, x, X, Y, sw, problem.weight_sum, problem.alpha,
                             options, g, S, Yh, np.empty((4, P)), np.empty(2 * k), ws,
                             report)
