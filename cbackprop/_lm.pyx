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

from cbackprop._blas cimport (_gemm, _syrk, _axpy, blas_int, NoTrans, Trans,
                              Upper)
from cbackprop._losses cimport loss_grad_rows, sqrt_hess_rows
from cbackprop._network cimport (NetPlan, NetSpec, forward, backward, add_l2,
                                 GRAD, NO_REDUCE)

# Status codes shared with cbackprop.optimize.TERMINATION_MESSAGES.
cpdef enum LMStatus:
    MU_MAX = -3
    CALLBACK = -2
    MAX_ITER = 0
    GTOL = 1
    FTOL = 2


cdef struct KronDims:
    Py_ssize_t nn_max      # widest K_i (entries per sample) over the pairs
    Py_ssize_t chunk_max   # most (p, p') rows of one GEMM (rows of Wt)
    Py_ssize_t mp          # entries of Mp
    Py_ssize_t budget      # target entries of one GEMM output
    Py_ssize_t inputs      # sum_l (n_l + 1): the transposed inputs aT


cdef inline Py_ssize_t _pair_nn(const NetSpec* s, int l, int m) noexcept nogil:
    """Entries of K_i for the pair (l, m): all (q, q'), or q <= q' if l == m."""
    cdef Py_ssize_t nl = s.sizes[l + 1], nm = s.sizes[m + 1]
    return nl * nm if l < m else nl * (nl + 1) // 2


cdef inline Py_ssize_t _pair_chunk(const NetSpec* s, int l, int m,
                                   Py_ssize_t budget) noexcept nogil:
    """(p, p') rows per GEMM of the pair: its output near `budget` entries,
    at most 4096 rows and at most the rows there are."""
    cdef Py_ssize_t al = s.sizes[l] + 1, am = s.sizes[m] + 1
    cdef Py_ssize_t rows = al * am if l < m else al * (al + 1) // 2
    cdef Py_ssize_t chunk = budget // _pair_nn(s, l, m)
    if chunk > 4096:
        chunk = 4096
    if chunk > rows:
        chunk = rows
    return chunk if chunk > 1 else 1


cdef KronDims _kron_dims(const NetSpec* s) noexcept nogil:
    """Workspace dimensions of the Kronecker accumulation.

    A GEMM output (Mp) of max(2^20, P^2 / 8) entries: whole pairs in one
    GEMM when that is affordable next to G, K packed once per chunk.
    """
    cdef KronDims d
    cdef int l, m
    cdef Py_ssize_t nn, chunk
    d.budget = s.n_params * s.n_params // 8
    if d.budget < (1 << 20):
        d.budget = 1 << 20
    d.nn_max = 1
    d.chunk_max = 1
    d.mp = 1
    d.inputs = 0
    for l in range(s.n_layers):
        d.inputs += s.sizes[l] + 1
        for m in range(l, s.n_layers):
            nn = _pair_nn(s, l, m)
            chunk = _pair_chunk(s, l, m, d.budget)
            if nn > d.nn_max:
                d.nn_max = nn
            if chunk > d.chunk_max:
                d.chunk_max = chunk
            if chunk * nn > d.mp:
                d.mp = chunk * nn
    return d


def workspace_sizes(NetPlan plan, Py_ssize_t block, bint kron=False):
    """Entries of the (Z, A, D, store, scratch) buffers for blocks of rows.

    scratch: Jb ``(C * block, P)`` for the row (syrk) accumulation; for the
    Kronecker one K ``(block, nn_max)``, Wt ``(chunk_max, block)``, the
    transposed augmented inputs ``(sum_l (n_l + 1), block)`` and Mp (see
    _kron_dims). At least P (the gradient-only pass uses it).
    """
    s = &plan.spec
    C = s.sizes[s.n_layers]
    k = C + 1
    cdef KronDims d
    if kron:
        d = _kron_dims(s)
        scratch = block * (d.nn_max + d.chunk_max + d.inputs) + d.mp
    else:
        scratch = block * C * s.n_params
    return (block * s.width, block * s.width, k * block * C,
            k * block * s.width, max(scratch, s.n_params))


# ---------------------------------------------------------------- kernels
cdef inline const floating* _layer_in(const NetSpec* s, int l,
                                      const floating* Xb, const floating* A,
                                      Py_ssize_t nb) noexcept nogil:
    return Xb if l == 0 else A + nb * s.h_off[l - 1]


cdef inline const floating* _deltas(const NetSpec* s, int l,
                                    const floating* D, const floating* store,
                                    Py_ssize_t nb) noexcept nogil:
    """Layer l's deltas of the k = C + 1 stacked vectors of a block.

    The output layer's are D itself, the others in ``store`` at
    ``k * nb * h_off[l]`` (backward's NO_REDUCE layout); vector r's block is
    ``(nb, n_l)`` at offset ``r * nb * n_l``.
    """
    cdef Py_ssize_t k = s.sizes[s.n_layers] + 1
    return D if l == s.n_layers - 1 else store + k * nb * s.h_off[l]


cdef void _block_gradient(const NetSpec* s, const floating* Xb,
                          const floating* A, const floating* D,
                          const floating* store, Py_ssize_t nb,
                          floating* g) noexcept nogil:
    """g += the block's gradient (vector C): a^T delta_C and column sums."""
    cdef int l
    cdef Py_ssize_t C = s.sizes[s.n_layers], nin, nout, i, q
    cdef const floating* dC
    cdef floating* o
    for l in range(s.n_layers):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        dC = _deltas(s, l, D, store, nb) + C * nb * nout
        _gemm(Trans, NoTrans, <int>nin, <int>nout, <int>nb, <floating>1.0,
              _layer_in(s, l, Xb, A, nb), <int>nin, dC, <int>nout,
              <floating>1.0, g + s.w_off[l], <int>nout)
        o = g + s.b_off[l]
        for i in range(nb):
            for q in range(nout):
                o[q] += dC[i * nout + q]


cdef void _block_rows(const NetSpec* s, const floating* Xb,
                      const floating* A, const floating* D,
                      const floating* store, Py_ssize_t nb,
                      floating* Jb) noexcept nogil:
    """Jb row ``r * nb + i`` = J_i^T (factor column r of sample i), (C * nb, P).

    Per layer the row is the outer product a_i d_ri^T (weights) and d_ri
    (bias), written in theta order.
    """
    cdef int l
    cdef Py_ssize_t C = s.sizes[s.n_layers], P = s.n_params
    cdef Py_ssize_t nin, nout, r, i, p, q
    cdef const floating* a_in
    cdef const floating* dl
    cdef const floating* a
    cdef const floating* d
    cdef floating* row
    cdef floating* o
    cdef floating ap
    for l in range(s.n_layers):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        a_in = _layer_in(s, l, Xb, A, nb)
        dl = _deltas(s, l, D, store, nb)
        for r in range(C):
            for i in range(nb):
                row = Jb + (r * nb + i) * P
                a = a_in + i * nin
                d = dl + (r * nb + i) * nout
                for p in range(nin):
                    ap = a[p]
                    o = row + s.w_off[l] + p * nout
                    for q in range(nout):
                        o[q] = ap * d[q]
                o = row + s.b_off[l]
                for q in range(nout):
                    o[q] = d[q]


cdef void _block_kron(const NetSpec* s, const floating* Xb,
                      const floating* A, const floating* D,
                      const floating* store, Py_ssize_t nb, floating* G,
                      floating* K, floating* Wt, floating* Mp,
                      floating* aT, Py_ssize_t budget) noexcept nogil:
    """G += the block's GGN, contracted over the C factor columns first.

    Block (l, m) of G, rows (p, q) of layer l's augmented weights
    ``[W_l; b_l]`` (input p, output q) and columns (p', q') of layer m's:
    ``sum_i a~_l[i, p] a~_m[i, p'] K_i[q, q']`` with ``K_i = sum_c
    S_l[c, i]^T S_m[c, i]`` (``a~ = [a, 1]``, S the backpropagated factor).
    With ``A2[i, (p, p')] = a~_l[i, p] a~_m[i, p']`` the block is
    ``M = A2^T K`` reordered: GEMMs over chunks of (p, p') rows (Wt holds
    ``A2^T``'s rows, built from the transposed inputs aT), each row of Mp
    scattered into G's rows (p, q). A diagonal block (l = m) is symmetric
    in (p, p') and, K_i being symmetric, separately in (q, q'): its GEMMs
    run over p <= p' and q <= q' only (a quarter of the block). About
    ``nb P^2`` flops in all, a factor C or more below ``Jb^T Jb``. Writes
    the upper triangle (and some lower entries of the diagonal blocks,
    which are scratch).
    """
    cdef int l, m, L = s.n_layers
    cdef Py_ssize_t C = s.sizes[L], P = s.n_params
    cdef Py_ssize_t nl, nm, al, am, i, c, q, qq, p, pp, p_s, pp_s, j, r, nn
    cdef Py_ssize_t chunk, off, t, q0
    cdef const floating* a_in
    cdef const floating* S_l
    cdef const floating* S_m
    cdef const floating* sl
    cdef const floating* sm
    cdef const floating* src
    cdef const floating* x
    cdef const floating* y
    cdef floating* kk
    cdef floating* dst
    cdef floating* w
    cdef floating v
    # aT: every layer's augmented input transposed, (n_l + 1, nb) each, the
    # ones row last: the columns of A2 become contiguous products.
    off = 0
    for l in range(L):
        al = s.sizes[l] + 1
        a_in = _layer_in(s, l, Xb, A, nb)
        for i in range(nb):
            for p in range(al - 1):
                aT[off + p * nb + i] = a_in[i * (al - 1) + p]
        for i in range(nb):
            aT[off + (al - 1) * nb + i] = 1
        off += al * nb
    cdef Py_ssize_t off_l = 0, off_m
    for l in range(L):
        nl = s.sizes[l + 1]
        al = s.sizes[l] + 1
        S_l = _deltas(s, l, D, store, nb)
        off_m = off_l
        for m in range(l, L):
            nm = s.sizes[m + 1]
            am = s.sizes[m] + 1
            S_m = _deltas(s, m, D, store, nb)
            # K_i = sum_c S_l[c, i]^T S_m[c, i], (nb, nn): all (q, q') when
            # l < m; on a diagonal block K_i is symmetric and only q <= q'
            # is kept (row q of the triangle at tri(q) = q nl - q (q - 1) / 2).
            nn = nl * nm if l < m else nl * (nl + 1) // 2
            for i in range(nb):
                kk = K + i * nn
                for j in range(nn):
                    kk[j] = 0
                for c in range(C):
                    sl = S_l + (c * nb + i) * nl
                    sm = S_m + (c * nb + i) * nm
                    t = 0
                    for q in range(nl):
                        v = sl[q]
                        q0 = 0 if l < m else q
                        for qq in range(q0, nm):
                            kk[t + qq - q0] += v * sm[qq]
                        t += nm - q0
            # Rows (p, p') of M = A2^T K, p' >= p on a diagonal block, taken
            # `chunk` at a time in order: one GEMM per chunk, then each row
            # scattered into G's rows (p, q).
            chunk = _pair_chunk(s, l, m, budget)
            p = 0
            pp = 0
            while p < al:
                p_s = p
                pp_s = pp
                r = 0
                while r < chunk and p < al:
                    # Wt[r, :] = a~_l[:, p] * a~_m[:, pp]
                    w = Wt + r * nb
                    x = aT + off_l + p * nb
                    y = aT + off_m + pp * nb
                    for i in range(nb):
                        w[i] = x[i] * y[i]
                    r += 1
                    pp += 1
                    if pp == am:
                        p += 1
                        pp = p if l == m else 0
                _gemm(NoTrans, NoTrans, <int>r, <int>nn, <int>nb,
                      <floating>1.0, Wt, <int>nb, K, <int>nn, <floating>0.0,
                      Mp, <int>nn)
                # replay the cursor to scatter row j = (p, pp)
                p = p_s
                pp = pp_s
                for j in range(r):
                    src = Mp + j * nn
                    for q in range(nl):
                        dst = (G + (s.w_off[l] + p * nl + q) * P
                               + s.w_off[m] + pp * nm)
                        if l < m:
                            for qq in range(nm):
                                dst[qq] += src[q * nm + qq]
                            continue
                        # diagonal block: (q, q') from the triangle, both
                        # orders when p' > p, the upper one when p' == p
                        t = q * nl - q * (q - 1) // 2
                        for qq in range(q, nl):
                            dst[qq] += src[t + qq - q]
                        if pp > p:
                            for qq in range(q):
                                dst[qq] += src[qq * nl - qq * (qq - 1) // 2 + q - qq]
                    pp += 1
                    if pp == am:
                        p += 1
                        pp = p if l == m else 0
            off_m += am * nb
        off_l += al * nb


cdef double accumulate(const NetSpec* s, const floating* theta,
                       const floating* X, const floating* Y,
                       const floating* sw, Py_ssize_t N, double sw_sum,
                       double alpha, Py_ssize_t block, floating* G,
                       floating* g, floating* Z, floating* A, floating* D,
                       floating* store, floating* scratch, bint want_G,
                       bint fresh, bint kron) noexcept nogil:
    """Objective at theta; g = its gradient; G (if want_G) = its GGN.

    G is written in the upper triangle (diagonal included) of the row-major
    (P, P) buffer only, by ``?syrk`` on the Jacobian-factor rows (``kron``
    false; scratch holds Jb) or by the Kronecker-contracted GEMMs (scratch
    holds K, Wt, aT, Mp; see workspace_sizes). ``fresh``: Z, A already hold the
    forward pass of theta over all N rows (possible when N <= block); it is
    skipped.
    """
    cdef int L = s.n_layers
    cdef Py_ssize_t C = s.sizes[L], k = C + 1, P = s.n_params
    cdef Py_ssize_t n0 = s.sizes[0], i0, nb, hid, j, l, nw
    cdef KronDims kd = _kron_dims(s)
    cdef double total = 0.0, scale = 1.0 / sw_sum, coef = alpha / sw_sum
    cdef const floating* Xb
    cdef const floating* Yb
    cdef const floating* swb
    cdef bint first = True
    memset(g, 0, P * sizeof(floating))
    if want_G and kron:
        memset(G, 0, P * P * sizeof(floating))
    i0 = 0
    while i0 < N:
        nb = block if N - i0 > block else N - i0
        Xb = X + i0 * n0
        Yb = Y + i0 * C
        swb = NULL if sw == NULL else sw + i0
        if not (fresh and nb == N):
            forward(s, theta, Xb, nb, Z, A)
        hid = nb * s.h_off[L - 1]
        if want_G:
            sqrt_hess_rows(s.loss, Z + hid, Yb, swb, nb, C, scale, D)
            total += loss_grad_rows(s.loss, Z + hid, Yb, swb, nb, C, scale,
                                    D + C * nb * C)
            backward(s, theta, Xb, nb, Z, A, D, k, store, NO_REDUCE,
                     <floating*>NULL)
            _block_gradient(s, Xb, A, D, store, nb, g)
            if kron:
                # scratch: K (block, nn_max), Wt (chunk_max, block),
                # aT (inputs, block), Mp (mp)
                _block_kron(s, Xb, A, D, store, nb, G, scratch,
                            scratch + block * kd.nn_max,
                            scratch + block * (kd.nn_max + kd.chunk_max
                                               + kd.inputs),
                            scratch + block * (kd.nn_max + kd.chunk_max),
                            kd.budget)
            else:
                _block_rows(s, Xb, A, D, store, nb, scratch)
                # The first block overwrites G's upper triangle (beta = 0).
                _syrk(Upper, Trans, <int>P, <int>(C * nb), <floating>1.0,
                      scratch, <int>P, <floating>(0.0 if first else 1.0), G,
                      <int>P)
            first = False
        else:
            total += loss_grad_rows(s.loss, Z + hid, Yb, swb, nb, C, scale, D)
            backward(s, theta, Xb, nb, Z, A, D, 1, store, GRAD, scratch)
            _axpy(<int>P, <floating>1.0, scratch, 1, g, 1)
        i0 += nb
    if want_G and coef != 0.0:
        for l in range(L):
            nw = s.sizes[l] * s.sizes[l + 1]
            for j in range(s.w_off[l], s.w_off[l] + nw):
                G[j * P + j] += <floating>coef
    return total / sw_sum + add_l2(s, theta, coef, g)


cdef double objective(const NetSpec* s, const floating* theta,
                      const floating* X, const floating* Y,
                      const floating* sw, Py_ssize_t N, double sw_sum,
                      double alpha, Py_ssize_t block, floating* Z,
                      floating* A) noexcept nogil:
    """Objective only, block by block (the forward cache of the last block
    stays in Z, A)."""
    cdef int L = s.n_layers
    cdef Py_ssize_t C = s.sizes[L], n0 = s.sizes[0], i0, nb
    cdef double total = 0.0
    i0 = 0
    while i0 < N:
        nb = block if N - i0 > block else N - i0
        forward(s, theta, X + i0 * n0, nb, Z, A)
        total += loss_grad_rows(s.loss, Z + nb * s.h_off[L - 1], Y + i0 * C,
                                NULL if sw == NULL else sw + i0, nb, C, 1.0,
                                <floating*>NULL)
        i0 += nb
    return total / sw_sum + add_l2(s, theta, alpha / sw_sum, <floating*>NULL)


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


# ------------------------------------------------------------ Python layer
cdef inline const floating* _opt(const floating[::1] v) noexcept:
    return NULL if v is None else &v[0]


def _buffers(NetPlan plan, Py_ssize_t block, dtype, bint kron=False):
    return [np.empty(max(n, 1), dtype) for n in workspace_sizes(plan, block, kron)]


def quasi_hessian(NetPlan plan, const floating[::1] theta,
                  const floating[:, ::1] X, const floating[:, ::1] Y,
                  const floating[::1] sw, double sw_sum, double alpha,
                  Py_ssize_t block, floating[:, ::1] G, floating[::1] g,
                  bint kron=False, ws=None):
    """Objective; g = gradient; upper triangle of G = GGN, block by block.

    ``kron``: Kronecker-contracted accumulation instead of syrk on rows.
    ``ws``: optional (Z, A, D, store, scratch) buffers from
    ``workspace_sizes(plan, block, kron)`` (reused across calls by
    benchmarks); allocated here otherwise.
    """
    cdef floating[::1] Z, A, D, store, Jb
    if ws is None:
        ws = _buffers(plan, block, np.asarray(theta).dtype, kron)
    Z, A, D, store, Jb = ws
    cdef const floating* swp = _opt(sw)
    cdef double f
    with nogil:
        f = accumulate(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp,
                       X.shape[0], sw_sum, alpha, block, &G[0, 0], &g[0],
                       &Z[0], &A[0], &D[0], &store[0], &Jb[0], True, False,
                       kron)
    return f


def lm_loop(NetPlan plan, floating[::1] theta, const floating[:, ::1] X,
            const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
            double alpha, Py_ssize_t block, double mu, double mu_dec,
            double mu_inc, double mu_max, double mu_min, Py_ssize_t max_iter,
            double ftol, double gtol, floating[::1] g, floating[:, ::1] G,
            bint kron, report):
    """MATLAB trainlm's loop; theta (the working copy) and g are updated in place.

    Every iteration: accumulate G and g at theta, then solve
    ``(G + mu I) d = -g`` and evaluate the loss at theta + d until it is
    finite and lower (mu *= mu_inc after each failure, Cholesky failures
    included; stop with MU_MAX once mu > mu_max); accept, mu *= mu_dec
    (floored at mu_min). ``report(nit, fun, mu)`` (or None) runs after each
    accepted step, with the GIL; a true return value stops (CALLBACK).

    Returns (status, nit, nfev, njev, nhev, fun, mu).
    """
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], P = s.n_params, j
    dtype = np.asarray(theta).dtype
    cdef floating[::1] Z, A, D, store, Jb
    Z, A, D, store, Jb = _buffers(plan, block, dtype, kron)
    cdef floating[::1] diag = np.empty(P, dtype), step = np.empty(P, dtype)
    cdef floating[::1] trial = np.empty(P, dtype)
    cdef const floating* swp = _opt(sw)
    cdef floating* th = &theta[0]
    cdef floating* Gp = &G[0, 0]
    cdef floating* gp = &g[0]
    cdef floating* dp = &step[0]
    cdef floating* tp = &trial[0]
    cdef floating* diagp = &diag[0]
    cdef double f, f_try = 0.0, f_old, gnorm
    cdef Py_ssize_t nit = 0, nfev = 0, njev = 0, nhev = 0
    cdef int info, status = MAX_ITER
    cdef bint accepted, want_G = True, fresh = False, stop_ftol

    with nogil:
        f = accumulate(s, th, &X[0, 0], &Y[0, 0], swp, N, sw_sum, alpha,
                       block, Gp, gp, &Z[0], &A[0], &D[0], &store[0], &Jb[0],
                       True, False, kron)
    nfev += 1
    njev += 1
    nhev += 1
    if not isfinite(f):
        raise ValueError(f"the loss at theta0 is not finite ({f})")
    while True:
        with nogil:
            gnorm = 0.0
            for j in range(P):
                if fabs(gp[j]) > gnorm or not isfinite(gp[j]):
                    gnorm = fabs(gp[j])
        if gnorm <= gtol:
            status = GTOL
            break
        if nit >= max_iter:
            status = MAX_ITER
            break
        accepted = False
        with nogil:
            for j in range(P):
                diagp[j] = Gp[j * P + j]
            while True:
                info = damped_solve(P, Gp, diagp, mu, gp, dp)
                if info == 0:
                    for j in range(P):
                        tp[j] = th[j] + dp[j]
                    f_try = objective(s, tp, &X[0, 0], &Y[0, 0], swp, N,
                                      sw_sum, alpha, block, &Z[0], &A[0])
                    nfev += 1
                    if isfinite(f_try) and f_try < f:
                        accepted = True
                        break
                mu *= mu_inc
                if mu > mu_max:
                    break
            if accepted:
                memcpy(th, tp, P * sizeof(floating))
                mu *= mu_dec
                if mu < mu_min:
                    mu = mu_min
        if not accepted:
            # Restore the diagonal the factorizations overwrote.
            for j in range(P):
                Gp[j * P + j] = diagp[j]
            status = MU_MAX
            break
        nit += 1
        f_old = f
        stop_ftol = f_old - f_try <= ftol * fabs(f_old)
        want_G = not stop_ftol and nit < max_iter
        with nogil:
            f = accumulate(s, th, &X[0, 0], &Y[0, 0], swp, N, sw_sum, alpha,
                           block, Gp, gp, &Z[0], &A[0], &D[0], &store[0],
                           &Jb[0], want_G, True, kron)
        njev += 1
        if want_G:
            nhev += 1
        if report is not None and report(nit, f, mu):
            status = CALLBACK
            break
        if stop_ftol:
            status = FTOL
            break
    return status, nit, nfev, njev, nhev, f, mu
