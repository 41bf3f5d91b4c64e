"""L-BFGS around the first-order kernel, the whole loop with the GIL released.

Nocedal and Wright, Numerical Optimization (2nd ed.): the two-loop recursion
(Algorithm 7.4) with the initial scaling ``gamma = s.y / y.y`` of the newest
pair (7.20), and a line search for the strong Wolfe conditions (Algorithms
3.5 and 3.6: bracketing, then zoom by safeguarded cubic interpolation).
Every objective evaluation is ``loss_grad_kernel`` over the rows in blocks of
the workspace's rows (the regularizer on the first block only, each block
normalized by the global weight W): no Python call inside an iteration.
The loop runs in float64 (the caller passes float64 rows and theta).
A pair with ``s.y <= eps y.y`` is not stored (the update would not be
positive definite).
"""
from libc.math cimport fabs, sqrt, isfinite

from cbackprop._network cimport (NetPlan, NetSpec, Batch, FirstLayout,
                                 FirstOrderWorkspace, make_batch, sub_batch,
                                 loss_grad_kernel)
from cbackprop._lm cimport _max_abs
from cbackprop._threads cimport Team, blas_open, team_close

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from cbackprop._interrupt cimport check_interrupt

cdef double INTERRUPT_SECONDS = 0.1

cpdef enum LbfgsStatus:
    LINE_SEARCH = -6      # no step satisfying the Wolfe conditions was found
    CALLBACK = -2
    MAX_ITER = 0
    GTOL = 1
    FTOL = 2

cdef struct Options:
    double c1, c2         # sufficient decrease and curvature constants
    double ftol, gtol
    Py_ssize_t max_iter, max_ls, m
    Py_ssize_t nit, nfev, count, head   # counters; stored pairs, newest pair
    int pending           # a status to return after the caller's report


cdef struct Search:
    const NetSpec* s
    const Batch* b
    const double* x
    const double* d
    double* xt          # the trial point
    double* gt          # its gradient
    double* part
    double* w
    const FirstLayout* lay
    Py_ssize_t rows       # rows per kernel call
    double f0, df0        # phi(0), phi'(0)
    double f_new          # phi at the last evaluated step



# ------------------------------------------------------------- objective
cdef double _fg(const Search* ls, const double* x, double* g) noexcept nogil:
    """Objective at x and its gradient into g, block by block."""
    cdef const NetSpec* s = ls.s
    cdef const Batch* b = ls.b
    cdef Py_ssize_t i0 = 0, nb, j, rows = ls.rows, P = s.n_params
    cdef double total = 0.0
    cdef Batch sub
    while i0 < b.N:
        nb = rows if b.N - i0 > rows else b.N - i0
        sub = sub_batch(s, b, i0, nb)
        if i0 > 0:
            sub.alpha = 0.0
        total += loss_grad_kernel(s, &sub, x, ls.w, ls.lay,
                                  g if i0 == 0 else ls.part)
        if i0 > 0:
            for j in range(P):
                g[j] += ls.part[j]
        i0 += nb
    return total


cdef inline double _dot(const double* a, const double* b, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef double acc = 0.0
    for j in range(n):
        acc += <double>a[j] * b[j]
    return acc


# ------------------------------------------------------------- direction
cdef void _direction(const double* g, const double* S, const double* Y,
                     double* rho, double* a, Py_ssize_t P, const Options* o,
                     double* d) noexcept nogil:
    """d = -H g by the two-loop recursion over the stored pairs."""
    cdef Py_ssize_t i, j, t
    cdef double beta, gamma = 1.0, yy
    for j in range(P):
        d[j] = -g[j]
    for t in range(o.count):                      # newest to oldest
        i = (o.head - t + o.m) % o.m
        a[i] = rho[i] * _dot(S + i * P, d, P)
        for j in range(P):
            d[j] -= <double>(a[i]) * Y[i * P + j]
    if o.count > 0:
        yy = _dot(Y + o.head * P, Y + o.head * P, P)
        gamma = 1.0 / (rho[o.head] * yy)
    for j in range(P):
        d[j] *= <double>gamma
    for t in range(o.count - 1, -1, -1):          # oldest to newest
        i = (o.head - t + o.m) % o.m
        beta = rho[i] * _dot(Y + i * P, d, P)
        for j in range(P):
            d[j] += <double>(a[i] - beta) * S[i * P + j]


# ----------------------------------------------------------- line search
cdef struct Point:
    double alpha, f, df           # step, phi(alpha), phi'(alpha)


cdef inline double _cubic_min(const Point* p, const Point* q) noexcept nogil:
    """Minimizer of the cubic through p and q (values and slopes), or NaN."""
    cdef double d1 = p.df + q.df - 3.0 * (p.f - q.f) / (p.alpha - q.alpha)
    cdef double r = d1 * d1 - p.df * q.df
    cdef double d2
    if not r >= 0.0:
        return -1.0                                 # no real minimizer
    d2 = sqrt(r) if q.alpha > p.alpha else -sqrt(r)
    return q.alpha - (q.alpha - p.alpha) * (q.df + d2 - d1) / (q.df - p.df + 2.0 * d2)


cdef Point _evaluate(Search* ls, double alpha, Options* o) noexcept nogil:
    cdef Py_ssize_t j, P = ls.s.n_params
    cdef Point p
    for j in range(P):
        ls.xt[j] = ls.x[j] + <double>alpha * ls.d[j]
    p.alpha = alpha
    p.f = _fg(ls, ls.xt, ls.gt)
    p.df = _dot(ls.gt, ls.d, P)
    ls.f_new = p.f
    o.nfev += 1
    return p


cdef inline bint _armijo_fails(const Search* ls, const Point* p, const Options* o) noexcept nogil:
    return not (p.f <= ls.f0 + o.c1 * p.alpha * ls.df0)   # NaN fails too


cdef bint _zoom(Search* ls, Point lo, Point hi, Py_ssize_t left,
                Options* o) noexcept nogil:
    """Algorithm 3.6; True with xt, gt at the accepted point."""
    cdef double a, width
    cdef Point p
    while left > 0:
        left -= 1
        width = hi.alpha - lo.alpha
        a = _cubic_min(&lo, &hi) if isfinite(hi.f) else -1.0
        # Safeguard: stay 10% inside the bracket, else bisect.
        if not (fabs(a - lo.alpha) >= 0.1 * fabs(width)
                and fabs(hi.alpha - a) >= 0.1 * fabs(width)
                and (a - lo.alpha) * (hi.alpha - a) > 0):
            a = lo.alpha + 0.5 * width
        p = _evaluate(ls, a, o)
        if _armijo_fails(ls, &p, o) or p.f >= lo.f:
            hi = p
        else:
            if fabs(p.df) <= -o.c2 * ls.df0:
                return True
            if p.df * width >= 0:
                hi = lo
            lo = p
    return False


cdef bint _line_search(Search* ls, double alpha, Options* o) noexcept nogil:
    """Algorithm 3.5 from the step alpha; True with xt, gt at the step."""
    cdef Point prev, p
    cdef Py_ssize_t i
    prev.alpha = 0.0
    prev.f = ls.f0
    prev.df = ls.df0
    for i in range(o.max_ls):
        p = _evaluate(ls, alpha, o)
        if _armijo_fails(ls, &p, o) or (i > 0 and p.f >= prev.f):
            return _zoom(ls, prev, p, o.max_ls - i - 1, o)
        if fabs(p.df) <= -o.c2 * ls.df0:
            return True
        if p.df >= 0:
            return _zoom(ls, p, prev, o.max_ls - i - 1, o)
        prev = p
        alpha *= 2.0
    return False


# ------------------------------------------------------------------ loop
cdef int _push(double* S, double* Y, double* rho, const double* x,
               const double* xt, const double* g, const double* gt,
               Py_ssize_t P, Options* o) noexcept nogil:
    """Store s = xt - x, y = gt - g when s.y > eps y.y."""
    cdef Py_ssize_t i = (o.head + 1) % o.m, j
    cdef double sy, yy
    for j in range(P):
        S[i * P + j] = xt[j] - x[j]
        Y[i * P + j] = gt[j] - g[j]
    sy = _dot(S + i * P, Y + i * P, P)
    yy = _dot(Y + i * P, Y + i * P, P)
    if not sy > 2.220446049250313e-16 * yy:
        # Slot i held the oldest pair when the history was full: it is gone.
        if o.count == o.m:
            o.count -= 1
        return 0
    rho[i] = 1.0 / sy
    o.head = i
    if o.count < o.m:
        o.count += 1
    return 1


def lbfgs_loop(NetPlan plan, double[::1] x, const double[:, ::1] X,
               const double[:, ::1] Y, const double[::1] sw, double sw_sum,
               double alpha, dict options, double[::1] g, double[:, ::1] S,
               double[:, ::1] Yh, double[:, ::1] scratch, double[::1] rho_a,
               FirstOrderWorkspace ws, report):
    """L-BFGS from x (the working copy, updated in place with g).

    options: m, max_iter, max_ls, c1, c2, ftol, gtol. S, Yh: (m, P) pair
    history; scratch: (4, P) (direction, trial point, its gradient, a block's
    gradient); rho_a: (2 m,). ws: FirstOrderWorkspace, blocks of ws.n_rows
    rows. ``report(nit, fun)`` (or None) runs after each iteration with the
    GIL; a true return value stops (CALLBACK).

    Returns (status, nit, nfev, fun).
    """
    cdef const NetSpec* s = &plan.spec
    ws.check(min(X.shape[0], ws.n_rows), 1, sizeof(double))
    if ws.n_rows < 1:
        raise ValueError("the workspace has no rows")
    # A dict with every field converts to the struct (a missing one raises).
    cdef Options o = dict(options, nit=0, nfev=0, count=0, pending=0,
                          head=options["m"] - 1)
    cdef Batch b = make_batch(&X[0, 0], &Y[0, 0], NULL if sw is None else &sw[0],
                              X.shape[0], sw_sum, alpha)
    cdef Search ls
    ls.s = s
    ls.b = &b
    ls.x = &x[0]
    ls.d = &scratch[0, 0]
    ls.xt = &scratch[1, 0]
    ls.gt = &scratch[2, 0]
    ls.part = &scratch[3, 0]
    ls.w = <double*>ws.base
    ls.lay = &ws.lay
    ls.rows = ws.n_rows
    cdef double f
    cdef int status
    cdef bint many = report is None
    # Single-threaded BLAS while the loop runs (see _threads).
    cdef Team team
    with nogil:
        blas_open(&team)
        f = _fg(&ls, &x[0], &g[0])
        team_close(&team)
    o.nfev += 1
    if not isfinite(f):
        raise ValueError(f"the loss at theta0 is not finite ({f})")
    while True:
        with nogil:
            blas_open(&team)
            try:
                status = _iterate(&ls, &f, &g[0], &S[0, 0], &Yh[0, 0], &rho_a[0],
                                  &o, many)
            finally:
                team_close(&team)
        if status != -100:
            return status, o.nit, o.nfev, f
        if report(o.nit, f):
            return CALLBACK, o.nit, o.nfev, f
        if o.pending:
            return o.pending, o.nit, o.nfev, f


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef int _iterate(Search* ls, double* f, double* g, double* S, double* Yh,
                  double* rho_a, Options* o, bint many) except -200 nogil:
    """Iterations until a stop (its status) or, unless ``many``, one
    iteration done (-100: the caller reports and calls again). Pending
    signals are handled every INTERRUPT_SECONDS (a KeyboardInterrupt
    propagates; an iteration of a tiny problem is microseconds, so a clock
    read, not a GIL round trip, per iteration)."""
    cdef Py_ssize_t P = ls.s.n_params, j
    cdef double* x = <double*>ls.x
    cdef double f_old, step, checked = _now(), now
    while True:
        now = _now()
        if now - checked > INTERRUPT_SECONDS:
            checked = now
            check_interrupt()
        if _max_abs(g, P) <= o.gtol:
            return GTOL
        if o.nit >= o.max_iter:
            return MAX_ITER
        _direction(g, S, Yh, rho_a, rho_a + o.m, P, o, <double*>ls.d)
        ls.f0 = f[0]
        ls.df0 = _dot(g, ls.d, P)
        if not ls.df0 < 0:           # not a descent direction: restart
            o.count = 0
            for j in range(P):
                (<double*>ls.d)[j] = -g[j]
            ls.df0 = -_dot(g, g, P)
        # The first step of a steepest-descent direction: unit length at most.
        step = 1.0 if o.count > 0 else min(1.0, 1.0 / sqrt(-ls.df0))
        if not _line_search(ls, step, o):
            return LINE_SEARCH
        o.nit += 1
        _push(S, Yh, rho_a, x, ls.xt, g, ls.gt, P, o)
        f_old = f[0]
        for j in range(P):
            x[j] = ls.xt[j]
            g[j] = ls.gt[j]
        f[0] = ls.f_new
        if f_old - f[0] <= o.ftol * max(fabs(f_old), fabs(f[0]), 1.0):
            if many:
                return FTOL
            o.pending = FTOL
        if not many:
            return -100
