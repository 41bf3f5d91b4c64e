"""Levenberg-Marquardt kernels: the quasi-Hessian by blocks of rows, the
damped Cholesky solve, and the whole trainlm loop with the GIL released.

Quasi-Hessian (Wilamowski and Yu, "Improved computation for Levenberg-
Marquardt training", 2010), generalized to every loss through the loss-
Hessian factor: for each block of ``nb`` rows,

* forward the block (one GEMM per layer);
* stack k = C + 1 output-space vectors per sample, ``(k, nb, C)``: the C
  columns of the factor ``sqrt(w_i / W) F_i`` (``F_i F_i^T = H_i``) and the
  weighted residual ``(w_i / W) dl_i/dz``;
* backpropagate all k at once (one GEMM per layer, deltas kept per layer)
  and reduce the residual into the gradient (one GEMM per layer);
* accumulate G from the backpropagated factor columns S_l, either
  - "rows": write the per-sample parameter rows ``J_i^T S_i e_r`` into
    ``Jb`` (``(C * nb, P)``) and ``G += Jb^T Jb`` with one ``?syrk``
    (upper triangle of the row-major G): ``C nb P^2`` flops; or
  - "kronecker": per pair of layers, ``sum_i (a~_l a~_m^T) (x) K_i`` with
    ``K_i = sum_c S_l[c, i]^T S_m[c, i]`` contracted over the C columns
    first, by GEMMs over pairs of inputs and a scatter into G, a quarter of
    each diagonal block by its two symmetries: about ``nb P^2 / 2``
    multiply-adds or fewer, a factor C and more below the rows.

So ``G = sum_i (w_i / W) J_i^T H_i J_i`` (+ ``alpha / W`` on the weight
entries of the diagonal) and memory is P^2 plus workspaces proportional to
``nb``, whatever N. For squared_error F_i = I and Jb holds plain Jacobian
rows: classic Levenberg-Marquardt on the residuals.

Damped solve: the GGN lives in the row-major upper triangle, its diagonal is
saved apart; each trial rebuilds ``G + mu I`` in the row-major lower triangle
(LAPACK's column-major upper) and factors it there with ``?potrf``, so one
P x P buffer serves G and its Cholesky factor.
"""
import numpy as np

from cython cimport floating
from libc.math cimport isfinite, fabs
from libc.string cimport memcpy, memset
from scipy.linalg.cython_lapack cimport dpotrf, dpotrs, spotrf, spotrs

from cbackprop._blas cimport _syrk, _axpy, blas_int, Trans, Upper
from cbackprop._losses cimport sqrt_hess_rows
from cbackprop._threads cimport Team, blas_open, team_close
from cbackprop._network cimport (NetPlan, NetSpec, Batch, Region, Workspace,
                                 make_batch, sub_batch, put, forward, backward,
                                 add_l2, loss_value, input_grad, input_rows,
                                 set_input, GRAD, NO_REDUCE)
from cbackprop._curvature cimport (KronLayout, kron_layout, kron_row_entries,
                                   kron_dims, kron_accumulate, add_l2_diag)
from cbackprop._interrupt cimport check_interrupt

# Status codes shared with cbackprop.optimize.TERMINATION_MESSAGES.
cpdef enum LMStatus:
    MU_MAX = -3
    CALLBACK = -2
    MAX_ITER = 0
    GTOL = 1
    FTOL = 2


cdef struct LMLayout:
    Py_ssize_t block        # rows per block (the workspace's n_rows)
    bint kron               # Kronecker accumulation (else syrk on rows)
    Region Z, A             # block * width each
    Region store            # k * block * width, k = C + 1 stacked vectors
    Region Jb               # rows: (C * block, P) Jacobian-factor rows
    KronLayout kr           # kronecker: K, Wt, aT, Mp
    Region gpart, diag, step, trial     # P each


cdef struct LMOptions:
    double mu, mu_dec, mu_inc, mu_max, mu_min, ftol, gtol
    Py_ssize_t max_iter
    # counters, written by the loop
    Py_ssize_t nit, nfev, njev, nhev


cdef Py_ssize_t _lm_fixed(const NetSpec* s, bint kron) noexcept nogil:
    """Entries of the block-independent regions, alignment included."""
    return 4 * s.n_params + (kron_dims(s).mp if kron else 0) + 8 * 11


cdef Py_ssize_t _lm_per_row(const NetSpec* s, bint kron) noexcept nogil:
    """Entries per row of a block: forward cache, the k = C + 1 stacked
    deltas, and the accumulation's per-row part."""
    cdef Py_ssize_t C = s.sizes[s.n_layers]
    return ((3 + C) * s.width
            + (kron_row_entries(s) if kron else C * s.n_params))


cdef void _lm_layout(const NetSpec* s, Py_ssize_t nb, bint kron,
                     LMLayout* lay) noexcept nogil:
    cdef Py_ssize_t C = s.sizes[s.n_layers], P = s.n_params, at = 0
    lay.block = nb
    lay.kron = kron
    at = put(&lay.Z, at, nb * s.width)
    at = put(&lay.A, at, nb * s.width)
    at = put(&lay.store, at, (C + 1) * nb * s.width)
    at = put(&lay.Jb, at, 0 if kron else C * nb * P)
    if kron:
        at = kron_layout(s, nb, at, &lay.kr)
    else:
        at = kron_layout(s, 0, at, &lay.kr)
        lay.kr.Mp.n = 0
    at = put(&lay.gpart, at, P)
    at = put(&lay.diag, at, P)
    at = put(&lay.step, at, P)
    put(&lay.trial, at, P)


cdef class LMWorkspace(Workspace):
    """Levenberg-Marquardt accumulation by blocks of n_rows rows, and the
    loop's P-vectors: see block_rows for its size.

    Parameters
    ----------
    plan : NetPlan
    n_rows : int, rows per block
    kron : bool, Kronecker accumulation (else syrk on Jacobian-factor rows)
    dtype : float32 or float64
    """
    cdef LMLayout lay
    cdef readonly bint kron

    def __init__(self, NetPlan plan, Py_ssize_t n_rows, bint kron=False,
                 dtype=np.float64):
        self.kron = kron
        Workspace.__init__(self, plan, n_rows, 1, dtype)

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        _lm_layout(&self.plan.spec, N, self.kron, &self.lay)
        return self.lay.trial.off + self.lay.trial.n

    cdef dict _regions(self):
        d = <dict>self.lay
        for key in ("block", "kron"):
            d.pop(key)
        d["kr"].pop("dims")
        return d


def block_rows(NetPlan plan, Py_ssize_t budget_bytes, Py_ssize_t itemsize,
               bint kron=False):
    """Most rows per block whose LMWorkspace takes at most budget_bytes (at
    least 1).

    An LMWorkspace of nb rows holds exactly ``fixed + nb * per_row``
    entries: per row, the forward cache (2 width), the C + 1 stacked
    deltas ((C + 1) width) and either the C Jacobian-factor rows (C P,
    'rows') or the Kronecker accumulation's K, Wt and aT rows; fixed, four
    P-vectors, Mp (kronecker) and the regions' alignment.
    """
    cdef const NetSpec* s = &plan.spec
    return max(1, (budget_bytes // itemsize - _lm_fixed(s, kron))
               // _lm_per_row(s, kron))


# ---------------------------------------------------------------- kernels
cdef inline const floating* _deltas(const NetSpec* s, int l,
                                    const floating* store,
                                    Py_ssize_t nb) noexcept nogil:
    """Layer l's deltas of the k = C + 1 stacked vectors of a block, in
    backward's NO_REDUCE layout; vector r's block is ``(nb, n_l)`` at
    offset ``r * nb * n_l``: r < C the loss factor's columns, r = C the
    weighted residual."""
    return store + (s.sizes[s.n_layers] + 1) * nb * s.h_off[l]


cdef double _block_pass(const NetSpec* s, const Batch* sub,
                        const floating* theta, floating* g, floating* G,
                        bint first, floating* w,
                        const LMLayout* lay) noexcept nogil:
    """The block's data loss; g += its gradient; G += its GGN (upper
    triangle), the block's forward cache already in Z, A."""
    cdef int l, L = s.n_layers
    cdef Py_ssize_t C = s.sizes[L], P = s.n_params, nb = sub.N
    cdef const floating* Z = w + lay.Z.off
    cdef const floating* A = w + lay.A.off
    cdef floating* store = w + lay.store.off
    cdef floating* D = store + (C + 1) * nb * s.h_off[L - 1]
    cdef double data
    sqrt_hess_rows(s.loss, Z + nb * s.h_off[L - 1], <const floating*>sub.Y,
                   <const floating*>sub.sw, nb, C, 1.0 / sub.sw_sum, D)
    data = loss_value(s, sub, Z, D + C * nb * C)
    backward(s, theta, sub, nb, Z, A, D, C + 1, store, NO_REDUCE,
             <floating*>NULL)
    for l in range(L):
        input_grad(s, l, sub, A, nb,
                   _deltas(s, l, store, nb) + C * nb * s.sizes[l + 1], True,
                   True, g)
    if lay.kron:
        kron_accumulate(s, sub, A, store, C + 1, C, nb, False, G, w, &lay.kr)
        return data
    for l in range(L):
        input_rows(s, l, sub, A, _deltas(s, l, store, nb), nb, C, 1, nb,
                   w + lay.Jb.off)
    # The first block overwrites G's upper triangle (beta = 0).
    _syrk(Upper, Trans, <int>P, <int>(C * nb), <floating>1.0, w + lay.Jb.off,
          <int>P, <floating>(0.0 if first else 1.0), G, <int>P)
    return data


cdef double accumulate(const NetSpec* s, const Batch* b, const floating* theta,
                       floating* G, floating* g, bint want_G, bint fresh,
                       floating* w, const LMLayout* lay) except? -1 nogil:
    """Objective at theta; g = its gradient; G (if want_G) = its GGN.

    G is written in the upper triangle (diagonal included) of the row-major
    (P, P) buffer only, by ``?syrk`` on the Jacobian-factor rows or by the
    Kronecker-contracted GEMMs (lay.kron). ``fresh``: Z, A already hold the
    forward pass of theta over all N rows (possible when N <= block); it is
    skipped. Pending signals are handled after every block (a Ctrl-C
    raises KeyboardInterrupt within a block's time).
    """
    cdef int L = s.n_layers
    cdef Py_ssize_t P = s.n_params, i0 = 0, nb
    cdef double total = 0.0, coef = b.alpha / b.sw_sum
    cdef floating* Z = w + lay.Z.off
    cdef floating* A = w + lay.A.off
    cdef floating* D = w + lay.store.off
    cdef Batch sub
    memset(g, 0, P * sizeof(floating))
    if want_G and lay.kron:
        memset(G, 0, P * P * sizeof(floating))
    while i0 < b.N:
        nb = lay.block if b.N - i0 > lay.block else b.N - i0
        sub = sub_batch(s, b, i0, nb)
        if not (fresh and nb == b.N):
            forward(s, theta, &sub, nb, Z, A)
        if want_G:
            total += _block_pass(s, &sub, theta, g, G, i0 == 0, w, lay)
        else:
            total += loss_value(s, &sub, Z, D)
            backward(s, theta, &sub, nb, Z, A, D, 1,
                     D + nb * s.sizes[L], GRAD, w + lay.gpart.off)
            _axpy(<int>P, <floating>1.0, w + lay.gpart.off, 1, g, 1)
        i0 += nb
        check_interrupt()
    if want_G:
        add_l2_diag(s, coef, False, G)
    return total / b.sw_sum + add_l2(s, theta, coef, g)


cdef double objective(const NetSpec* s, const Batch* b, const floating* theta,
                      floating* w, const LMLayout* lay) except? -1 nogil:
    """Objective only, block by block, by loss_value as every objective (the
    forward cache of the last block stays in Z, A); signals as in
    accumulate."""
    cdef Py_ssize_t i0 = 0, nb
    cdef double total = 0.0
    cdef Batch sub
    while i0 < b.N:
        nb = lay.block if b.N - i0 > lay.block else b.N - i0
        sub = sub_batch(s, b, i0, nb)
        forward(s, theta, &sub, nb, w + lay.Z.off,
                w + lay.A.off)
        total += loss_value(s, &sub, w + lay.Z.off, w + lay.store.off)
        i0 += nb
        check_interrupt()
    return total / b.sw_sum + add_l2(s, theta, b.alpha / b.sw_sum,
                                     <floating*>NULL)


cdef int damped_solve(Py_ssize_t P, floating* G, const floating* diag,
                      double mu, const floating* g, floating* d) noexcept nogil:
    """d = -(G + mu I)^{-1} g by Cholesky; returns LAPACK's info (0: done).

    G's row-major upper triangle (the GGN, left intact) is mirrored into the
    lower one with the diagonal ``diag + mu``; ?potrf('U') factors that
    (column-major upper = row-major lower) in place, ?potrs solves. A
    positive info means the damped matrix is not numerically positive
    definite; the caller raises mu. A non-finite solution returns -1000.
    """
    cdef Py_ssize_t i, j
    cdef char uplo = b'U'
    cdef blas_int n = <blas_int>P, nrhs = 1, info = 0
    for i in range(P):
        for j in range(i):
            G[i * P + j] = G[j * P + i]
        G[i * P + i] = <floating>(diag[i] + mu)
        d[i] = -g[i]
    if floating is double:
        dpotrf(&uplo, &n, G, &n, &info)
        if info == 0:
            dpotrs(&uplo, &n, &nrhs, G, &n, d, &n, &info)
    else:
        spotrf(&uplo, &n, G, &n, &info)
        if info == 0:
            spotrs(&uplo, &n, &nrhs, G, &n, d, &n, &info)
    if info != 0:
        return <int>info
    for i in range(P):
        if not isfinite(d[i]):
            return -1000
    return 0


cdef int _damped_step(const NetSpec* s, const Batch* b, floating* theta,
                      const floating* g, floating* G, double f,
                      double* f_try, LMOptions* o, floating* w,
                      const LMLayout* lay) except -1 nogil:
    """Solve (G + mu I) d = -g and try theta + d until the loss is finite
    and lower (mu *= mu_inc after each failure, Cholesky failures included,
    until mu > mu_max); on success theta moves and mu *= mu_dec (floored at
    mu_min). Returns whether a step was taken (1 or 0; -1 when a signal
    handler raised during a trial loss)."""
    cdef Py_ssize_t P = s.n_params, j
    cdef floating* diag = w + lay.diag.off
    cdef floating* step = w + lay.step.off
    cdef floating* trial = w + lay.trial.off
    for j in range(P):
        diag[j] = G[j * P + j]
    while True:
        if damped_solve(P, G, diag, o.mu, g, step) == 0:
            for j in range(P):
                trial[j] = theta[j] + step[j]
            f_try[0] = objective(s, b, trial, w, lay)
            o.nfev += 1
            if isfinite(f_try[0]) and f_try[0] < f:
                memcpy(theta, trial, P * sizeof(floating))
                o.mu *= o.mu_dec
                if o.mu < o.mu_min:
                    o.mu = o.mu_min
                return 1
        o.mu *= o.mu_inc
        if o.mu > o.mu_max:
            # Restore the diagonal the factorizations overwrote.
            for j in range(P):
                G[j * P + j] = diag[j]
            return 0


cdef double _max_abs(const floating* g, Py_ssize_t P) noexcept nogil:
    """max |g_j|, NaN-propagating."""
    cdef Py_ssize_t j
    cdef double m = 0.0
    for j in range(P):
        if fabs(g[j]) > m or not isfinite(g[j]):
            m = fabs(g[j])
    return m


cdef int _lm_run(const NetSpec* s, const Batch* b, floating* theta,
                 floating* g, floating* G, LMOptions* o, floating* w,
                 const LMLayout* lay, object report, double* fun) except? -10:
    """MATLAB trainlm's loop (see lm_loop); returns the status."""
    cdef double f, f_try = 0.0, f_old
    cdef bint accepted, want_G, stop_ftol
    with nogil:
        f = accumulate(s, b, theta, G, g, True, False, w, lay)
    o.nfev += 1
    o.njev += 1
    o.nhev += 1
    fun[0] = f
    if not isfinite(f):
        raise ValueError(f"the loss at theta0 is not finite ({f})")
    while True:
        if _max_abs(g, s.n_params) <= o.gtol:
            return GTOL
        if o.nit >= o.max_iter:
            return MAX_ITER
        with nogil:
            accepted = _damped_step(s, b, theta, g, G, f, &f_try, o, w, lay)
        if not accepted:
            return MU_MAX
        o.nit += 1
        f_old = f
        stop_ftol = f_old - f_try <= o.ftol * fabs(f_old)
        want_G = not stop_ftol and o.nit < o.max_iter
        with nogil:
            f = accumulate(s, b, theta, G, g, want_G, True, w, lay)
        fun[0] = f
        o.njev += 1
        if want_G:
            o.nhev += 1
        if report is not None and report(o.nit, f, o.mu):
            return CALLBACK
        if stop_ftol:
            return FTOL


# ------------------------------------------------------------ Python layer
cdef inline const floating* _opt(const floating[::1] v) noexcept:
    return NULL if v is None else &v[0]


def quasi_hessian(NetPlan plan, const floating[::1] theta, X,
                  const floating[:, ::1] Y,
                  const floating[::1] sw, double sw_sum, double alpha,
                  floating[:, ::1] G, floating[::1] g, LMWorkspace ws):
    """Objective; g = gradient; upper triangle of G = GGN, block by block
    of ws.n_rows rows, by the workspace's accumulation (ws.kron)."""
    ws.check(min(X.shape[0], ws.n_rows), 1, sizeof(floating))
    if ws.n_rows < 1:
        raise ValueError("the workspace has no rows")
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw),
                              <Py_ssize_t>X.shape[0], sw_sum, alpha)
    set_input(&b, X, sizeof(floating))
    cdef double f
    cdef Team team
    with nogil:
        blas_open(&team)
        try:
            f = accumulate(&plan.spec, &b, &theta[0], &G[0, 0], &g[0], True, False,
                           <floating*>ws.base, &ws.lay)
        finally:
            team_close(&team)
    return f


def lm_loop(NetPlan plan, floating[::1] theta, X, const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
            double alpha, dict options, floating[::1] g, floating[:, ::1] G,
            LMWorkspace ws, report):
    """MATLAB trainlm's loop; theta (the working copy) and g are updated in place.

    Every iteration: accumulate G and g at theta, then solve
    ``(G + mu I) d = -g`` and evaluate the loss at theta + d until it is
    finite and lower (mu *= mu_inc after each failure, Cholesky failures
    included; stop with MU_MAX once mu > mu_max); accept, mu *= mu_dec
    (floored at mu_min). ``report(nit, fun, mu)`` (or None) runs after each
    accepted step, with the GIL; a true return value stops (CALLBACK).
    Signals are handled after every block of rows: a Ctrl-C raises
    KeyboardInterrupt out of the loop within a block's time, theta holding
    the last accepted step.

    options: mu, mu_dec, mu_inc, mu_max, mu_min, max_iter, ftol, gtol.
    ws: LMWorkspace, blocks of ws.n_rows rows.

    Returns (status, nit, nfev, njev, nhev, fun, mu).
    """
    ws.check(min(X.shape[0], ws.n_rows), 1, sizeof(floating))
    if ws.n_rows < 1:
        raise ValueError("the workspace has no rows")
    cdef LMOptions o
    o.mu = options["mu"]
    o.mu_dec = options["mu_dec"]
    o.mu_inc = options["mu_inc"]
    o.mu_max = options["mu_max"]
    o.mu_min = options["mu_min"]
    o.max_iter = options["max_iter"]
    o.ftol = options["ftol"]
    o.gtol = options["gtol"]
    o.nit = o.nfev = o.njev = o.nhev = 0
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw),
                              <Py_ssize_t>X.shape[0], sw_sum, alpha)
    set_input(&b, X, sizeof(floating))
    cdef double f = 0.0
    status = _lm_run(&plan.spec, &b, &theta[0], &g[0], &G[0, 0], &o,
                     <floating*>ws.base, &ws.lay, report, &f)
    return status, o.nit, o.nfev, o.njev, o.nhev, f, o.mu
