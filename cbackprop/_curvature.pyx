"""Second-order backpropagation kernels.

Everything here is written over the per-layer calculus of ``_network``:
the forward cache (Z, A), the transposed-Jacobian backward pass of k stacked
output-space vectors, the activation derivatives f', f'' and the loss's
output-space Hessian (product or factor). Layouts:

* layer caches are stacked: layer l of a ``(k * N, n_l)`` quantity lives at
  ``k * N * h_off[l]`` (k = 1 for first-order quantities);
* a batch of k parameter-space vectors is ``(k, P)``, row r one vector;
* a layer's weights and bias form the augmented row-major matrix
  ``W~_l = [W_l; b_l]`` of shape ``(n_in + 1, n_out)``, contiguous in theta,
  whose gradient is ``a~^T delta`` with ``a~ = [a, 1]``.
"""
import numpy as np

from cython cimport floating
from cbackprop._blas cimport _gemm, _axpy, NoTrans, Trans
from cbackprop._activations cimport act_derivs
from cbackprop._losses cimport loss_grad_rows, hess_prod_rows, sqrt_hess_rows
from cbackprop._network cimport (NetPlan, NetSpec, forward, backward, GRAD,
                                 NO_REDUCE)


# ----------------------------------------------------------------- helpers
cdef inline void _add_row(floating* M, const floating* b, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    """M[i, :] += b for every row."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            M[i * cols + j] += b[j]


cdef inline void _col_sums_add(const floating* D, Py_ssize_t N, Py_ssize_t n,
                               floating* out, bint accumulate) noexcept nogil:
    cdef Py_ssize_t i, j
    if not accumulate:
        for j in range(n):
            out[j] = 0
    for i in range(N):
        for j in range(n):
            out[j] += D[i * n + j]


cdef inline void _scale_blocks(floating* D, const floating* F, Py_ssize_t n,
                               Py_ssize_t k) noexcept nogil:
    """D[r] *= F for each of the k blocks of n entries."""
    cdef Py_ssize_t r, j
    for r in range(k):
        for j in range(n):
            D[r * n + j] *= F[j]


cdef inline void _fma_blocks(floating* D, const floating* F1, const floating* Q,
                             const floating* R, Py_ssize_t n,
                             Py_ssize_t k) noexcept nogil:
    """D[r] = D[r] * F1 + Q * R[r]: the R-backward through an activation."""
    cdef Py_ssize_t r, j
    for r in range(k):
        for j in range(n):
            D[r * n + j] = D[r * n + j] * F1[j] + Q[j] * R[r * n + j]


cdef inline const floating* _layer_input(const NetSpec* s, int l,
                                         const floating* X, const floating* A,
                                         Py_ssize_t N) noexcept nogil:
    return X if l == 0 else A + N * s.h_off[l - 1]


cdef void _add_l2_blocks(const NetSpec* s, double coef, const floating* V,
                         floating* out, Py_ssize_t k) noexcept nogil:
    """out[r, W_l] += coef * V[r, W_l]: the regularizer's curvature."""
    cdef int l
    cdef Py_ssize_t r, P = s.n_params
    if coef == 0.0:
        return
    for r in range(k):
        for l in range(s.n_layers):
            _axpy(<int>(s.sizes[l] * s.sizes[l + 1]), <floating>coef,
                  V + r * P + s.w_off[l], 1, out + r * P + s.w_off[l], 1)


# ------------------------------------------------------- first-order state
cdef void first_order(const NetSpec* s, const floating* theta,
                      const floating* X, const floating* Y, const floating* sw,
                      Py_ssize_t N, double sw_sum, floating* Z, floating* A,
                      floating* F1, floating* F2, floating* DL,
                      floating* E) noexcept nogil:
    """Forward cache, f' and f'' of the hidden layers, and the deltas.

    DL (N * width): delta_l = dL/dz_l for every layer (weighted by
    w_i / W). E (N * width): for hidden layers, Q_l = (dL/da_l) * f''(z_l),
    the residual weight of the exact Hessian. F1, F2, E use the hidden
    part of the stacked layout only.
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t nin, nout, nL = s.sizes[L], hid = N * s.h_off[L - 1]
    cdef Py_ssize_t j
    forward(s, theta, X, N, Z, A)
    if hid > 0:
        act_derivs(s.act, Z, A, F1, F2, hid)
    loss_grad_rows(s.loss, Z + hid, Y, sw, N, nL, 1.0 / sw_sum, DL + hid)
    for l in range(L - 1, 0, -1):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        # e_{l-1} = delta_l W_l^T, then delta_{l-1} = e * f', Q = e * f''.
        _gemm(NoTrans, Trans, <int>N, <int>nin, <int>nout, <floating>1.0,
              DL + N * s.h_off[l], <int>nout, theta + s.w_off[l], <int>nout,
              <floating>0.0, E + N * s.h_off[l - 1], <int>nin)
        for j in range(N * s.h_off[l - 1], N * s.h_off[l - 1] + N * nin):
            DL[j] = E[j] * F1[j]
            E[j] = E[j] * F2[j]


# --------------------------------------------------------------- R-forward
cdef void r_forward(const NetSpec* s, const floating* theta, const floating* X,
                    Py_ssize_t N, const floating* A, const floating* F1,
                    const floating* V, Py_ssize_t k, floating* RZ,
                    floating* RA) noexcept nogil:
    """Directional derivatives of every z_l, a_l along the k rows of V.

    Rz_l = Ra_{l-1} W_l + a_{l-1} V_W + V_b; Ra_l = f'(z_l) * Rz_l.
    RZ, RA: k * N * width, layer l's (k*N, n_l) block at k * N * h_off[l].
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t r, nin, nout, P = s.n_params
    cdef const floating* a_in
    cdef floating* rz
    cdef Py_ssize_t j
    for l in range(L):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        a_in = _layer_input(s, l, X, A, N)
        rz = RZ + k * N * s.h_off[l]
        for r in range(k):
            _gemm(NoTrans, NoTrans, <int>N, <int>nout, <int>nin, <floating>1.0,
                  a_in, <int>nin, V + r * P + s.w_off[l], <int>nout,
                  <floating>0.0, rz + r * N * nout, <int>nout)
            _add_row(rz + r * N * nout, V + r * P + s.b_off[l], N, nout)
        if l > 0:
            _gemm(NoTrans, NoTrans, <int>(k * N), <int>nout, <int>nin,
                  <floating>1.0, RA + k * N * s.h_off[l - 1], <int>nin,
                  theta + s.w_off[l], <int>nout, <floating>1.0, rz, <int>nout)
        if l < L - 1:
            for j in range(k * N * nout):
                RA[k * N * s.h_off[l] + j] = rz[j]
            _scale_blocks(RA + k * N * s.h_off[l], F1 + N * s.h_off[l],
                          N * nout, k)


# --------------------------------------------------- Hessian-vector product
cdef void hvp_kernel(const NetSpec* s, const floating* theta,
                     const floating* X, const floating* Y, const floating* sw,
                     Py_ssize_t N, double sw_sum, double alpha,
                     const floating* V, Py_ssize_t k, floating* out,
                     floating* Z, floating* A, floating* F1, floating* F2,
                     floating* DL, floating* E, floating* RZ, floating* RA,
                     floating* RD) noexcept nogil:
    """out (k, P) = H V^T rows: Pearlmutter's R-operator, k vectors at once.

    RD holds two ping-pong buffers of k * N * max(max_hidden, n_L).
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t r, nin, nout, P = s.n_params, nL = s.sizes[L]
    cdef Py_ssize_t half = k * N * (s.max_hidden if s.max_hidden > nL else nL)
    cdef floating* cur = RD
    cdef floating* nxt
    cdef const floating* a_in
    cdef const floating* delta
    cdef floating* o
    first_order(s, theta, X, Y, sw, N, sw_sum, Z, A, F1, F2, DL, E)
    r_forward(s, theta, X, N, A, F1, V, k, RZ, RA)
    hess_prod_rows(s.loss, Z + N * s.h_off[L - 1], Y, sw, N, nL, 1.0 / sw_sum,
                   RZ + k * N * s.h_off[L - 1], cur, k)
    for l in range(L - 1, -1, -1):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        a_in = _layer_input(s, l, X, A, N)
        delta = DL + N * s.h_off[l]
        for r in range(k):
            o = out + r * P
            # R(grad W_l) = a^T R(delta) + R(a)^T delta.
            _gemm(Trans, NoTrans, <int>nin, <int>nout, <int>N, <floating>1.0,
                  a_in, <int>nin, cur + r * N * nout, <int>nout,
                  <floating>0.0, o + s.w_off[l], <int>nout)
            if l > 0:
                _gemm(Trans, NoTrans, <int>nin, <int>nout, <int>N,
                      <floating>1.0, RA + k * N * s.h_off[l - 1] + r * N * nin,
                      <int>nin, delta, <int>nout, <floating>1.0,
                      o + s.w_off[l], <int>nout)
            _col_sums_add(cur + r * N * nout, N, nout, o + s.b_off[l], False)
        if l == 0:
            break
        nxt = RD + half if cur == RD else RD
        # R(e_{l-1}) = R(delta_l) W_l^T + delta_l V_W^T.
        _gemm(NoTrans, Trans, <int>(k * N), <int>nin, <int>nout, <floating>1.0,
              cur, <int>nout, theta + s.w_off[l], <int>nout, <floating>0.0,
              nxt, <int>nin)
        for r in range(k):
            _gemm(NoTrans, Trans, <int>N, <int>nin, <int>nout, <floating>1.0,
                  delta, <int>nout, V + r * P + s.w_off[l], <int>nout,
                  <floating>1.0, nxt + r * N * nin, <int>nin)
        _fma_blocks(nxt, F1 + N * s.h_off[l - 1], E + N * s.h_off[l - 1],
                    RZ + k * N * s.h_off[l - 1], N * nin, k)
        cur = nxt
    _add_l2_blocks(s, alpha / sw_sum, V, out, k)


cdef void ggn_vp_kernel(const NetSpec* s, const floating* theta,
                        const floating* X, const floating* Y,
                        const floating* sw, Py_ssize_t N, double sw_sum,
                        double alpha, const floating* V, Py_ssize_t k,
                        floating* out, floating* Z, floating* A, floating* F1,
                        floating* F2, floating* RZ, floating* RA,
                        floating* RD, floating* work) noexcept nogil:
    """out (k, P) = G V^T rows: J^T (H_loss (J v)), k vectors at once.

    RD: k * N * n_L; work: 2 * k * N * max_hidden.
    """
    cdef int L = s.n_layers
    cdef Py_ssize_t nL = s.sizes[L], hid = N * s.h_off[L - 1]
    forward(s, theta, X, N, Z, A)
    if hid > 0:
        act_derivs(s.act, Z, A, F1, F2, hid)
    r_forward(s, theta, X, N, A, F1, V, k, RZ, RA)
    hess_prod_rows(s.loss, Z + hid, Y, sw, N, nL, 1.0 / sw_sum,
                   RZ + k * hid, RD, k)
    backward(s, theta, X, N, Z, A, RD, k, work, GRAD, out)
    _add_l2_blocks(s, alpha / sw_sum, V, out, k)


# ------------------------------------------------- empirical Fisher product
cdef void efisher_vp_kernel(const NetSpec* s, const floating* theta,
                            const floating* X, const floating* Y,
                            const floating* sw, Py_ssize_t N, double sw_sum,
                            double alpha, const floating* V, Py_ssize_t k,
                            floating* out, floating* Z, floating* A,
                            floating* DL, floating* T, floating* U,
                            floating* work) noexcept nogil:
    """out (k, P) = F V^T rows, F = sum_i c_i g_i g_i^T, no (N, P) matrix.

    g_i . v = sum_l a~_i^T V~_l delta_li (GEMMs), then sum_i c_i (g_i . v) g_i
    is a gradient with deltas scaled per row. DL: N * width (unweighted
    deltas), T: N * max layer width, U: k * N, work: N * max layer width.
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t r, i, q, nin, nout, P = s.n_params, nL = s.sizes[L]
    cdef const floating* a_in
    cdef const floating* d
    cdef double acc
    forward(s, theta, X, N, Z, A)
    loss_grad_rows(s.loss, Z + N * s.h_off[L - 1], Y, <const floating*>NULL,
                   N, nL, 1.0, DL + N * s.h_off[L - 1])
    backward(s, theta, X, N, Z, A, DL + N * s.h_off[L - 1], 1, DL, NO_REDUCE,
             <floating*>NULL)
    for r in range(k):
        for i in range(N):
            U[r * N + i] = 0
        for l in range(L):
            nin = s.sizes[l]
            nout = s.sizes[l + 1]
            a_in = _layer_input(s, l, X, A, N)
            d = DL + N * s.h_off[l]
            _gemm(NoTrans, NoTrans, <int>N, <int>nout, <int>nin, <floating>1.0,
                  a_in, <int>nin, V + r * P + s.w_off[l], <int>nout,
                  <floating>0.0, T, <int>nout)
            for i in range(N):
                acc = 0.0
                for q in range(nout):
                    acc += (T[i * nout + q] + V[r * P + s.b_off[l] + q]) * d[i * nout + q]
                U[r * N + i] += acc
        for i in range(N):
            U[r * N + i] *= (1.0 if sw == NULL else sw[i]) / sw_sum
        for l in range(L):
            nin = s.sizes[l]
            nout = s.sizes[l + 1]
            a_in = _layer_input(s, l, X, A, N)
            d = DL + N * s.h_off[l]
            for i in range(N):
                for q in range(nout):
                    work[i * nout + q] = U[r * N + i] * d[i * nout + q]
            _gemm(Trans, NoTrans, <int>nin, <int>nout, <int>N, <floating>1.0,
                  a_in, <int>nin, work, <int>nout, <floating>0.0,
                  out + r * P + s.w_off[l], <int>nout)
            _col_sums_add(work, N, nout, out + r * P + s.b_off[l], False)
    _add_l2_blocks(s, alpha / sw_sum, V, out, k)


# ----------------------------------------------- backpropagated loss factor
cdef void factor_backprop(const NetSpec* s, const floating* theta,
                          const floating* X, const floating* Y,
                          const floating* sw, Py_ssize_t N, double sw_sum,
                          floating* Z, floating* A, floating* S) noexcept nogil:
    """S_l = B_l^T F: the loss-Hessian factor carried down to every z_l.

    S (C * N * width): layer l's block ``(C, N, n_l)`` at C * N * h_off[l];
    ``sum_c S_l[c, i] S_l[c, i]^T = c_i B_li^T H_i B_li`` with c_i = w_i / W.
    """
    cdef int L = s.n_layers
    cdef Py_ssize_t C = s.sizes[L], hid = N * s.h_off[L - 1]
    forward(s, theta, X, N, Z, A)
    sqrt_hess_rows(s.loss, Z + hid, Y, sw, N, C, 1.0 / sw_sum, S + C * hid)
    backward(s, theta, X, N, Z, A, S + C * hid, C, S, NO_REDUCE,
             <floating*>NULL)


# ------------------------------------------------------------ Python layer
# Entry points on validated C-contiguous arrays of one dtype; the caller
# allocates outputs and workspaces (sizes from `curvature_workspace`).
cdef inline const floating* _opt(const floating[::1] v) noexcept:
    return NULL if v is None else &v[0]


def product_sizes(NetPlan plan, Py_ssize_t N, Py_ssize_t k, kind):
    """Entries of each workspace array of hvp / ggn_vp / efisher_vp."""
    cdef NetSpec* s = &plan.spec
    w, nL, mh = s.width, s.sizes[s.n_layers], s.max_hidden
    if kind == "hvp":
        return (N * w,) * 6 + (k * N * w, k * N * w, 2 * k * N * max(mh, nL))
    if kind == "ggn_vp":
        return (N * w,) * 4 + (k * N * w, k * N * w, k * N * nL, 2 * k * N * mh)
    widest = max(mh, nL)
    return (N * w, N * w, N * w, N * widest, k * N, N * widest)


def hvp(NetPlan plan, const floating[::1] theta, const floating[:, ::1] X,
        const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
        double alpha, const floating[:, ::1] V, floating[:, ::1] out, ws):
    """out (k, P) = rows of H V for V (k, P); ws from product_sizes."""
    cdef Py_ssize_t N = X.shape[0], k = V.shape[0]
    cdef floating[::1] Z, A, F1, F2, DL, E, RZ, RA, RD
    Z, A, F1, F2, DL, E, RZ, RA, RD = ws
    cdef const floating* swp = _opt(sw)
    with nogil:
        hvp_kernel(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp, N,
                   sw_sum, alpha, &V[0, 0], k, &out[0, 0], &Z[0], &A[0],
                   &F1[0], &F2[0], &DL[0], &E[0], &RZ[0], &RA[0], &RD[0])


def ggn_vp(NetPlan plan, const floating[::1] theta, const floating[:, ::1] X,
           const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
           double alpha, const floating[:, ::1] V, floating[:, ::1] out, ws):
    """out (k, P) = rows of G V for V (k, P); ws from product_sizes."""
    cdef Py_ssize_t N = X.shape[0], k = V.shape[0]
    cdef floating[::1] Z, A, F1, F2, RZ, RA, RD, work
    Z, A, F1, F2, RZ, RA, RD, work = ws
    cdef const floating* swp = _opt(sw)
    with nogil:
        ggn_vp_kernel(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp, N,
                      sw_sum, alpha, &V[0, 0], k, &out[0, 0], &Z[0], &A[0],
                      &F1[0], &F2[0], &RZ[0], &RA[0], &RD[0], &work[0])


def efisher_vp(NetPlan plan, const floating[::1] theta,
               const floating[:, ::1] X, const floating[:, ::1] Y,
               const floating[::1] sw, double sw_sum, double alpha,
               const floating[:, ::1] V, floating[:, ::1] out, ws):
    """out (k, P) = rows of F V for V (k, P), F the empirical Fisher."""
    cdef Py_ssize_t N = X.shape[0], k = V.shape[0]
    cdef floating[::1] Z, A, DL, T, U, work
    Z, A, DL, T, U, work = ws
    cdef const floating* swp = _opt(sw)
    with nogil:
        efisher_vp_kernel(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp,
                          N, sw_sum, alpha, &V[0, 0], k, &out[0, 0], &Z[0],
                          &A[0], &DL[0], &T[0], &U[0], &work[0])


def first_order_state(NetPlan plan, const floating[::1] theta,
                      const floating[:, ::1] X, const floating[:, ::1] Y,
                      const floating[::1] sw, double sw_sum, ws):
    """Fill ws = (Z, A, F1, F2, DL, Q), stacked arrays of N * width each."""
    cdef Py_ssize_t N = X.shape[0]
    cdef floating[::1] Z, A, F1, F2, DL, E
    Z, A, F1, F2, DL, E = ws
    cdef const floating* swp = _opt(sw)
    with nogil:
        first_order(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp, N,
                    sw_sum, &Z[0], &A[0], &F1[0], &F2[0], &DL[0], &E[0])
    return ws


def loss_factors(NetPlan plan, const floating[::1] theta,
                 const floating[:, ::1] X, const floating[:, ::1] Y,
                 const floating[::1] sw, double sw_sum, ws):
    """Fill ws = (Z, A, S): activations (N * width) and the backpropagated
    loss factor (C * N * width, layer l's (C, N, n_l) block at C N h_off[l])."""
    cdef Py_ssize_t N = X.shape[0]
    cdef floating[::1] Z, A, S
    Z, A, S = ws
    cdef const floating* swp = _opt(sw)
    with nogil:
        factor_backprop(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp,
                        N, sw_sum, &Z[0], &A[0], &S[0])
    return ws


# ----------------------------------------------- Kronecker-sum scattering
def scatter_sym(const floating[:, ::1] G, const Py_ssize_t[:, ::1] ta,
                const Py_ssize_t[:, ::1] tn, floating[:, ::1] out, Py_ssize_t off):
    """out[off + (p, q), off + (p', q')] = G[ta[p, p'], tn[q, q']].

    G holds the sums over samples for the upper triangles of both symmetric
    index pairs (ta, tn map a pair to its triangle position); the block of
    a layer with itself is written in Kronecker order (p * n + q).
    """
    cdef Py_ssize_t a = ta.shape[0], n = tn.shape[0]
    cdef Py_ssize_t p, q, p2, q2
    cdef const floating* g
    cdef floating* o
    with nogil:
        for p in range(a):
            for q in range(n):
                o = &out[off + p * n + q, off]
                for p2 in range(a):
                    g = &G[ta[p, p2], 0]
                    for q2 in range(n):
                        o[p2 * n + q2] = g[tn[q, q2]]


def scatter_pair(const floating[:, ::1] G, Py_ssize_t al, Py_ssize_t am,
                 Py_ssize_t nl, Py_ssize_t nm, floating[:, ::1] out,
                 Py_ssize_t ol, Py_ssize_t om):
    """Write block (l, m) = G[(p, p'), (q, q')] in Kronecker order, and its
    transpose as block (m, l)."""
    cdef Py_ssize_t p, q, p2, q2, r, c
    cdef floating v
    with nogil:
        for p in range(al):
            for p2 in range(am):
                for q in range(nl):
                    r = ol + p * nl + q
                    for q2 in range(nm):
                        c = om + p2 * nm + q2
                        v = G[p * am + p2, q * nm + q2]
                        out[r, c] = v
                        out[c, r] = v
