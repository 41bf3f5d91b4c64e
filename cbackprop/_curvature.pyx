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
from libc.math cimport sqrt, fabs
from libc.string cimport memset
from cbackprop._blas cimport _gemm, _axpy, NoTrans
from cbackprop._activations cimport act_derivs
from cbackprop._losses cimport hess_prod_rows, sqrt_hess_rows
from libc.stdint cimport int32_t, int64_t
from cbackprop._interrupt cimport check_interrupt
from cbackprop._threads cimport (Team, blas_open, team_open, team_close, thread_limit,
                                 PRODUCTS)
from cbackprop._network cimport (NetPlan, NetSpec, Batch, Region, Workspace,
                                 FirstLayout, make_batch, sub_batch, put, part_entries, forward,
                                 backward, loss_value, loss_grad_kernel,
                                 layer_input, forward_linear,
                                 backward_linear, backward_step, layer_grad,
                                 input_forward, input_grad, set_input,
                                 csr_index, GRAD, NO_REDUCE, Cut, cut_for, row_blocks,
                                 block_start, work_flops, add_parts)
from cython.parallel cimport prange


# ----------------------------------------------------------------- layouts
cdef struct StateLayout:
    # forward cache, f', f'', deltas, Q = (dL/da) f'': N * width each
    Region Z, A, F1, F2, DL, Q

cdef struct HvpLayout:
    StateLayout st
    Region RZ, RA       # k * N * width each
    Region RD           # two ping-pong buffers of k * N * max(max_hidden, n_L)

cdef struct GgnVpLayout:
    Region Z, A, F1, F2     # N * width each
    Region RZ, RA           # k * N * width each
    Region RD               # k * N * n_L
    Region work             # 2 k N max_hidden, at least N (width - n_L): batch_state's H
    Region part             # batch_state's row-block gradients (part_entries)

cdef struct EfisherLayout:
    Region Z, A, DL         # N * width each
    Region T, work          # N * max layer width each
    Region U                # k * N

cdef struct FactorLayout:
    Region Z, A             # N * width each
    Region S                # C * N * width: layer l's (C, N, n_l) at C N h_off[l]

cdef struct DenseLayout:
    FactorLayout f
    KronLayout kron

cdef struct HessFactors:
    StateLayout st
    Region S            # C * N * width: the loss factor at every layer
    Region R            # max_hidden * N * width: one layer's residual factor going down

cdef struct HessianLayout:
    # dense_hessian (dense or blocks); kron.Mp grown to the widest cross-term
    # GEMM row when that is longer (HessianWorkspace._layout)
    HessFactors h
    KronLayout kron

cdef struct DiagHessLayout:
    HessFactors h
    Region D2           # N * width: diag(Hz_l) of every sample
    Region sq           # N * max(n_0, max_hidden): a layer's squared inputs


cdef Py_ssize_t state_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t at,
                             StateLayout* lay) noexcept nogil:
    cdef Py_ssize_t n = N * s.width
    at = put(&lay.Z, at, n)
    at = put(&lay.A, at, n)
    at = put(&lay.F1, at, n)
    at = put(&lay.F2, at, n)
    at = put(&lay.DL, at, n)
    return put(&lay.Q, at, n)


cdef Py_ssize_t factor_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t at,
                              FactorLayout* lay) noexcept nogil:
    at = put(&lay.Z, at, N * s.width)
    at = put(&lay.A, at, N * s.width)
    return put(&lay.S, at, s.sizes[s.n_layers] * N * s.width)


cdef inline Py_ssize_t _widest(const NetSpec* s) noexcept nogil:
    cdef Py_ssize_t nL = s.sizes[s.n_layers]
    return s.max_hidden if s.max_hidden > nL else nL


cdef Py_ssize_t hvp_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                           HvpLayout* lay) noexcept nogil:
    cdef Py_ssize_t at = state_layout(s, N, 0, &lay.st)
    at = put(&lay.RZ, at, k * N * s.width)
    at = put(&lay.RA, at, k * N * s.width)
    return put(&lay.RD, at, 2 * k * N * _widest(s))


cdef Py_ssize_t ggn_vp_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                              GgnVpLayout* lay) noexcept nogil:
    cdef Py_ssize_t at = 0, n = N * s.width
    at = put(&lay.Z, at, n)
    at = put(&lay.A, at, n)
    at = put(&lay.F1, at, n)
    at = put(&lay.F2, at, n)
    at = put(&lay.RZ, at, k * n)
    at = put(&lay.RA, at, k * n)
    at = put(&lay.RD, at, k * N * s.sizes[s.n_layers])
    # batch_state's backward keeps every hidden layer's deltas there.
    at = put(&lay.work, at, max(2 * k * N * s.max_hidden,
                                N * (s.width - s.sizes[s.n_layers])))
    return put(&lay.part, at, part_entries(s, N))


cdef Py_ssize_t efisher_vp_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                                  EfisherLayout* lay) noexcept nogil:
    cdef Py_ssize_t at = 0
    at = put(&lay.Z, at, N * s.width)
    at = put(&lay.A, at, N * s.width)
    at = put(&lay.DL, at, N * s.width)
    at = put(&lay.T, at, N * _widest(s))
    at = put(&lay.work, at, N * _widest(s))
    return put(&lay.U, at, k * N)


# ----------------------------------------------------------------- helpers
cdef inline void _add_row(floating* M, const floating* b, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    """M[i, :] += b for every row."""
    cdef Py_ssize_t i, j
    for i in range(rows):
        for j in range(cols):
            M[i * cols + j] += b[j]


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


cdef inline void _keep_deltas(const NetSpec* s, const Batch* b,
                              const floating* theta, const floating* Z,
                              const floating* A, const floating* D,
                              Py_ssize_t k, floating* store) noexcept nogil:
    """Backpropagate the batch's k stacked output vectors D (k N, n_L) and
    keep every layer's (k N, n_l) block in store at k N h_off[l]
    (backward's NO_REDUCE)."""
    backward(s, theta, b, b.N, Z, A, D, k, store,
             NO_REDUCE, <floating*>NULL)


cdef inline void _raw_deltas(const NetSpec* s, const Batch* b,
                             const floating* theta, floating* Z, floating* A,
                             floating* store) noexcept nogil:
    """Forward pass, then every layer's deltas of the raw per-sample losses
    l_i (unweighted, unscaled) into store (N * width; layer l at N h_off[l]):
    the empirical Fisher's rows g_i = (a~_i delta_li)_l."""
    cdef Py_ssize_t N = b.N
    cdef floating* out = store + N * s.h_off[s.n_layers - 1]
    cdef Batch raw = b[0]
    raw.sw = NULL
    raw.sw_sum = 1.0
    forward(s, theta, b, N, Z, A)
    loss_value(s, &raw, Z, out)
    _keep_deltas(s, b, theta, Z, A, out, 1, store)


# ------------------------------------------------------- first-order state
cdef void first_order(const NetSpec* s, const Batch* b, const floating* theta,
                      floating* w, const StateLayout* lay) noexcept nogil:
    """Forward cache, f' and f'' of the hidden layers, and the deltas.

    DL: delta_l = dL/dz_l for every layer (weighted by w_i / W). Q: for
    hidden layers, Q_l = (dL/da_l) * f''(z_l), the residual weight of the
    exact Hessian. F1, F2, Q use the hidden part of the stacked layout only.
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t N = b.N, j, h
    cdef Py_ssize_t hid = N * s.h_off[L - 1]
    cdef floating* Z = w + lay.Z.off
    cdef floating* A = w + lay.A.off
    cdef floating* F1 = w + lay.F1.off
    cdef floating* F2 = w + lay.F2.off
    cdef floating* DL = w + lay.DL.off
    cdef floating* E = w + lay.Q.off
    forward(s, theta, b, N, Z, A)
    if hid > 0:
        act_derivs(s.act, Z, A, F1, F2, hid)
    loss_value(s, b, Z, DL + hid)
    for l in range(L - 1, 0, -1):
        h = N * s.h_off[l - 1]
        # e_{l-1} = delta_l W_l^T, then delta_{l-1} = e * f', Q = e * f''.
        backward_linear(s, l, theta, DL + N * s.h_off[l], N, <floating>0.0,
                        E + h)
        for j in range(h, h + N * s.sizes[l]):
            DL[j] = E[j] * F1[j]
            E[j] = E[j] * F2[j]


# --------------------------------------------------------------- R-forward
cdef void r_forward(const NetSpec* s, const floating* theta, const Batch* b,
                    Py_ssize_t N, const floating* A, const floating* F1,
                    const floating* V, Py_ssize_t k, floating* RZ,
                    floating* RA) noexcept nogil:
    """Directional derivatives of every z_l, a_l along the k rows of V.

    Rz_l = Ra_{l-1} W_l + a_{l-1} V_W + V_b; Ra_l = f'(z_l) * Rz_l.
    RZ, RA: k * N * width, layer l's (k*N, n_l) block at k * N * h_off[l].
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t r, j, nout, P = s.n_params
    cdef floating* rz
    for l in range(L):
        nout = s.sizes[l + 1]
        rz = RZ + k * N * s.h_off[l]
        for r in range(k):
            input_forward(s, l, b, A, N, V + r * P, <floating>0.0,
                          rz + r * N * nout)
            _add_row(rz + r * N * nout, V + r * P + s.b_off[l], N, nout)
        if l > 0:
            forward_linear(s, l, theta, RA + k * N * s.h_off[l - 1], k * N,
                           <floating>1.0, rz)
        if l < L - 1:
            for j in range(k * N * nout):
                RA[k * N * s.h_off[l] + j] = rz[j]
            _scale_blocks(RA + k * N * s.h_off[l], F1 + N * s.h_off[l],
                          N * nout, k)


# --------------------------------------------------- Hessian-vector product
cdef void hvp_kernel(const NetSpec* s, const Batch* b, const floating* theta,
                     const floating* V, Py_ssize_t k, floating* out,
                     floating* w, const HvpLayout* lay) noexcept nogil:
    """out (k, P) = H V^T rows: Pearlmutter's R-operator, k vectors at once.

    The R-backward is the backward step of the gradient applied to R(delta)
    (``R(delta_l) W_l^T``) plus its own terms: ``delta_l V_W^T`` (the same
    backward linear map, with V's weights), ``Q * R(z)`` through the
    activation, and ``R(a)^T delta`` in the reduction.
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t r, nin, nout, N = b.N, P = s.n_params, nL = s.sizes[L]
    cdef Py_ssize_t half = k * N * _widest(s)
    cdef const floating* A = w + lay.st.A.off
    cdef const floating* DL = w + lay.st.DL.off
    cdef floating* RZ = w + lay.RZ.off
    cdef floating* RA = w + lay.RA.off
    cdef floating* RD = w + lay.RD.off
    cdef floating* cur = RD
    cdef floating* nxt
    cdef const floating* delta
    first_order(s, b, theta, w, &lay.st)
    r_forward(s, theta, b, N, A, w + lay.st.F1.off, V, k, RZ, RA)
    hess_prod_rows(s.loss, w + lay.st.Z.off + N * s.h_off[L - 1],
                   <const floating*>b.Y, <const floating*>b.sw, N, nL,
                   1.0 / b.sw_sum, RZ + k * N * s.h_off[L - 1], cur, k)
    for l in range(L - 1, -1, -1):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        delta = DL + N * s.h_off[l]
        for r in range(k):
            # R(grad W_l) = a^T R(delta) + R(a)^T delta.
            input_grad(s, l, b, A, N, cur + r * N * nout, False, True,
                       out + r * P)
            if l > 0:
                layer_grad(s, l, RA + k * N * s.h_off[l - 1] + r * N * nin,
                           delta, N, True, False, out + r * P)
        if l == 0:
            break
        nxt = RD + half if cur == RD else RD
        # R(e_{l-1}) = R(delta_l) W_l^T + delta_l V_W^T.
        backward_linear(s, l, theta, cur, k * N, <floating>0.0, nxt)
        for r in range(k):
            backward_linear(s, l, V + r * P, delta, N, <floating>1.0,
                            nxt + r * N * nin)
        _fma_blocks(nxt, w + lay.st.F1.off + N * s.h_off[l - 1],
                    w + lay.st.Q.off + N * s.h_off[l - 1],
                    RZ + k * N * s.h_off[l - 1], N * nin, k)
        cur = nxt
    _add_l2_blocks(s, b.alpha / b.sw_sum, V, out, k)


cdef void ggn_vp_kernel(const NetSpec* s, const Batch* b, const floating* theta,
                        const floating* V, Py_ssize_t k, floating* out,
                        floating* w, const GgnVpLayout* lay) noexcept nogil:
    """out (k, P) = G V^T rows: J^T (H_loss (J v)), k vectors at once."""
    cdef int L = s.n_layers
    cdef Py_ssize_t N = b.N, nL = s.sizes[L], hid = N * s.h_off[L - 1]
    cdef floating* Z = w + lay.Z.off
    cdef floating* A = w + lay.A.off
    cdef floating* RZ = w + lay.RZ.off
    cdef floating* RD = w + lay.RD.off
    forward(s, theta, b, N, Z, A)
    if hid > 0:
        act_derivs(s.act, Z, A, w + lay.F1.off, w + lay.F2.off, hid)
    r_forward(s, theta, b, N, A, w + lay.F1.off, V, k, RZ, w + lay.RA.off)
    hess_prod_rows(s.loss, Z + hid, <const floating*>b.Y,
                   <const floating*>b.sw, N, nL, 1.0 / b.sw_sum, RZ + k * hid,
                   RD, k)
    backward(s, theta, b, N, Z, A, RD, k, w + lay.work.off, GRAD, out)
    _add_l2_blocks(s, b.alpha / b.sw_sum, V, out, k)


# ------------------------------------------------- empirical Fisher product
cdef void efisher_vp_kernel(const NetSpec* s, const Batch* b,
                            const floating* theta, const floating* V,
                            Py_ssize_t k, floating* out, floating* w,
                            const EfisherLayout* lay) noexcept nogil:
    """out (k, P) = F V^T rows, F = sum_i c_i g_i g_i^T, no (N, P) matrix.

    g_i . v = sum_l a~_i^T V~_l delta_li (GEMMs), then sum_i c_i (g_i . v) g_i
    is a gradient with deltas scaled per row (DL: unweighted deltas).
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t r, i, q, nout, N = b.N, P = s.n_params
    cdef const floating* sw = <const floating*>b.sw
    cdef floating* Z = w + lay.Z.off
    cdef floating* A = w + lay.A.off
    cdef floating* DL = w + lay.DL.off
    cdef floating* T = w + lay.T.off
    cdef floating* U = w + lay.U.off
    cdef floating* work = w + lay.work.off
    cdef const floating* d
    cdef double acc
    _raw_deltas(s, b, theta, Z, A, DL)
    for r in range(k):
        for i in range(N):
            U[r * N + i] = 0
        for l in range(L):
            nout = s.sizes[l + 1]
            d = DL + N * s.h_off[l]
            input_forward(s, l, b, A, N, V + r * P, <floating>0.0, T)
            for i in range(N):
                acc = 0.0
                for q in range(nout):
                    acc += (T[i * nout + q] + V[r * P + s.b_off[l] + q]) * d[i * nout + q]
                U[r * N + i] += acc
        for i in range(N):
            U[r * N + i] *= (1.0 if sw == NULL else sw[i]) / b.sw_sum
        for l in range(L):
            nout = s.sizes[l + 1]
            d = DL + N * s.h_off[l]
            for i in range(N):
                for q in range(nout):
                    work[i * nout + q] = U[r * N + i] * d[i * nout + q]
            input_grad(s, l, b, A, N, work, False, True, out + r * P)
    _add_l2_blocks(s, b.alpha / b.sw_sum, V, out, k)


# ------------------------------------------- products on a thread team
# A product is a sum over rows: on a team, row block j of B runs the whole
# kernel on its rows into its own output (block 0 into out, with the
# regularizer; the others into the workspace, added to out in block order
# after the team's barrier). B follows the thread limit (row_blocks of its
# cut, as the loss and gradient), never the team, so a fixed limit gives
# the same bits whoever runs; one thread keeps one block: the whole-batch
# kernel. Each block's workspace is laid out for the largest block, one
# after the other, then the B - 1 outputs: about the whole batch's layout,
# which the product workspaces reserve for every cut (_reserve).
cdef enum ProductKind:
    HVP = 0
    GGN_VP = 1
    EFISHER_VP = 2

cdef union ProductLayout:
    HvpLayout hvp
    GgnVpLayout ggn
    EfisherLayout ef

cdef struct Blocks:
    Py_ssize_t n          # row blocks B
    Py_ssize_t stride     # workspace entries of one block (its base: j * stride)
    Py_ssize_t parts      # blocks 1 .. B - 1's outputs (k P each) start here
    ProductLayout lay     # one block's regions, from its base


cdef Py_ssize_t product_layout(int kind, const NetSpec* s, Py_ssize_t N,
                               Py_ssize_t k, ProductLayout* lay) noexcept nogil:
    if kind == HVP:
        return hvp_layout(s, N, k, &lay.hvp)
    if kind == GGN_VP:
        return ggn_vp_layout(s, N, k, &lay.ggn)
    return efisher_vp_layout(s, N, k, &lay.ef)


cdef Py_ssize_t product_blocks(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                               const Cut* c) noexcept nogil:
    """row_blocks of the cut, fewer while the B - 1 extra outputs would take
    more room than the batch's activations (split_grad's bound)."""
    cdef Py_ssize_t B = row_blocks(c, N)
    while B > 1 and (B - 1) * k * s.n_params > N * s.width:
        B //= 2
    return B


cdef Py_ssize_t plan_blocks(int kind, const NetSpec* s, Py_ssize_t N,
                            Py_ssize_t k, const Cut* c, Blocks* bl) noexcept nogil:
    """Lay a product over N rows and k vectors out for cut c; returns the
    entries it needs."""
    cdef Py_ssize_t B = product_blocks(s, N, k, c), j, rows = 0
    for j in range(B):
        rows = max(rows, block_start(N, B, j + 1) - block_start(N, B, j))
    bl.n = B
    bl.stride = product_layout(kind, s, rows, k, &bl.lay)
    bl.parts = B * bl.stride
    return bl.parts + (B - 1) * k * s.n_params


cdef Py_ssize_t _reserve(int kind, const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                         Py_ssize_t whole) noexcept nogil:
    """Entries a product workspace for at most N rows and k vectors needs:
    the whole-batch layout (``whole`` entries) and every blocked call's.
    A call over fewer rows has no more blocks; its blocks are at most
    N / B + 16 rows (block_start), so B blocks of N / B + 17 cover it."""
    cdef Py_ssize_t B = 2, need = whole
    cdef Py_ssize_t most = product_blocks(s, N, k, &s.cuts[s.n_cuts - 1])
    cdef ProductLayout lay
    while B <= most:
        need = max(need, B * product_layout(kind, s, min(N, N // B + 17), k, &lay)
                   + (B - 1) * k * s.n_params)
        B *= 2
    return need


cdef double product_flops(int kind, const NetSpec* s, Py_ssize_t N,
                          Py_ssize_t k) noexcept nogil:
    """Flops of a product, in forward passes: the first-order state and
    per vector the R-forward and the R-backward with its reductions."""
    if kind == HVP:
        return work_flops(s, N, 2.0 + 6.0 * k)
    if kind == GGN_VP:
        return work_flops(s, N, 1.0 + 4.0 * k)
    return work_flops(s, N, 2.0 + 3.0 * k)


cdef void product_rows(int kind, const NetSpec* s, const Batch* b,
                       const floating* theta, const floating* V, Py_ssize_t k,
                       floating* out, floating* w, const ProductLayout* lay) noexcept nogil:
    """out (k, P) = the rows of b's product with V (k, P), workspace w."""
    if kind == HVP:
        hvp_kernel(s, b, theta, V, k, out, w, &lay.hvp)
    elif kind == GGN_VP:
        ggn_vp_kernel(s, b, theta, V, k, out, w, &lay.ggn)
    else:
        efisher_vp_kernel(s, b, theta, V, k, out, w, &lay.ef)


cdef void _product_block(int kind, const NetSpec* s, const Batch* b,
                         const floating* theta, const floating* V, Py_ssize_t k,
                         Py_ssize_t j, floating* out, floating* w,
                         const Blocks* bl) noexcept nogil:
    cdef Py_ssize_t r0 = block_start(b.N, bl.n, j)
    cdef Batch rows = sub_batch(s, b, r0, block_start(b.N, bl.n, j + 1) - r0)
    if j > 0:
        rows.alpha = 0.0
        out = w + bl.parts + (j - 1) * k * s.n_params
    product_rows(kind, s, &rows, theta, V, k, out, w + j * bl.stride, &bl.lay)


cdef void blocked_product(int kind, const NetSpec* s, const Batch* b,
                          const floating* theta, const floating* V, Py_ssize_t k,
                          floating* out, floating* w, const Blocks* bl) noexcept nogil:
    """out (k, P) = the product over b's rows in bl.n row blocks, on a team
    (see the section notes)."""
    cdef Py_ssize_t j, n = k * s.n_params
    cdef Team team
    if bl.n == 1:
        blas_open(&team)
        product_rows(kind, s, b, theta, V, k, out, w, &bl.lay)
        team_close(&team)
        return
    team_open(&team, PRODUCTS, product_flops(kind, s, b.N, k), bl.n)
    for j in prange(bl.n, num_threads=team.n, schedule="static", chunksize=1):
        _product_block(kind, s, b, theta, V, k, j, out, w, bl)
    add_parts(out, w + bl.parts, bl.n - 1, n, n)
    team_close(&team)


# ----------------------------------------------- backpropagated loss factor
cdef void factor_backprop(const NetSpec* s, const Batch* b,
                          const floating* theta, floating* w,
                          const FactorLayout* lay) noexcept nogil:
    """S_l = B_l^T F: the loss-Hessian factor carried down to every z_l.

    S: layer l's block ``(C, N, n_l)`` at C * N * h_off[l];
    ``sum_c S_l[c, i] S_l[c, i]^T = c_i B_li^T H_i B_li`` with c_i = w_i / W.
    """
    forward(s, theta, b, b.N, w + lay.Z.off, w + lay.A.off)
    _factor_down(s, b, theta, w + lay.Z.off, w + lay.A.off, w + lay.S.off)


cdef void _factor_down(const NetSpec* s, const Batch* b, const floating* theta,
                       const floating* Z, const floating* A,
                       floating* S) noexcept nogil:
    """S = the loss factor at every z_l (factor_backprop's layout), from the
    forward cache Z, A."""
    cdef int L = s.n_layers
    cdef Py_ssize_t N = b.N, C = s.sizes[L], hid = N * s.h_off[L - 1]
    sqrt_hess_rows(s.loss, Z + hid, <const floating*>b.Y,
                   <const floating*>b.sw, N, C, 1.0 / b.sw_sum, S + C * hid)
    _keep_deltas(s, b, theta, Z, A, S + C * hid, C, S)


cdef void _units_down(const NetSpec* s, const Batch* b, const floating* theta,
                      int j, int lo, const floating* U, bint root, floating* w,
                      const HessFactors* lay) noexcept nogil:
    """R = n_j stacked columns ``U[i, u] e_u`` (with root ``sqrt|U[i, u]|
    e_u``) at hidden layer j, U (N, n_j), carried down to layer lo by
    backward steps: layer t's (n_j, N, n_t) block at ``n_j N h_off[t]`` of
    lay.R (lay.st's forward cache)."""
    cdef Py_ssize_t N = b.N, nj = s.sizes[j + 1], h = N * s.h_off[j], i, u
    cdef const floating* Z = w + lay.st.Z.off
    cdef const floating* A = w + lay.st.A.off
    cdef floating* R = w + lay.R.off
    cdef int t
    memset(R + nj * h, 0, nj * N * nj * sizeof(floating))
    for u in range(nj):
        for i in range(N):
            R[nj * h + (u * N + i) * nj + u] = (
                <floating>sqrt(fabs(U[i * nj + u])) if root else U[i * nj + u])
    for t in range(j, lo, -1):
        backward_step(s, t, theta, Z, A, R + nj * N * s.h_off[t], N, nj,
                      R + nj * N * s.h_off[t - 1], <floating*>NULL)


cdef inline void _residual_down(const NetSpec* s, const Batch* b,
                                const floating* theta, int j, int lo,
                                floating* w, const HessFactors* lay) noexcept nogil:
    """The signed square-root factor of hidden layer j's residual diag(Q_j),
    ``sqrt|Q_j[i, u]| e_u``, carried down to layer lo (_units_down's R;
    their products are weighted by the sign of Q_j)."""
    _units_down(s, b, theta, j, lo, w + lay.st.Q.off + b.N * s.h_off[j], True,
                w, lay)


# ------------------------------------------------------- Hessian diagonal
cdef void _add_squares(const floating* S, Py_ssize_t k, Py_ssize_t N,
                       Py_ssize_t n, const floating* sign, Py_ssize_t ns,
                       floating* D2) noexcept nogil:
    """D2 (N, n) += sum_r sign_ri S[r, i]^2 over the k stacked (N, n)
    blocks of S; sign (N, ns) picks column r of its row (all +1 if NULL)."""
    cdef Py_ssize_t r, i, q
    cdef floating v, g
    for r in range(k):
        for i in range(N):
            g = 1
            if sign != NULL and sign[i * ns + r] < 0:
                g = -1
            for q in range(n):
                v = S[(r * N + i) * n + q]
                D2[i * n + q] += g * (v * v)


cdef void diag_hessian_kernel(const NetSpec* s, const Batch* b,
                              const floating* theta, floating* out,
                              floating* w, const DiagHessLayout* lay) noexcept nogil:
    """out (P,) = the exact Hessian's diagonal (regularizer excluded).

    Per layer, diag H_l = (a~^2)^T diag(Hz_l) with the z-Hessian
    Hz_l = B^T H_out B + sum_{j >= l} B_jl^T diag(Q_j) B_jl (B_jl = dz_j/dz_l,
    Q_j = (dL/da_j) f''(z_j)). Both parts are squares of backpropagated
    factors: the loss factor's C columns, and for each hidden layer j the
    signed square roots sqrt|Q_j| e_u of its residual, carried down by the
    backward step of the gradient (BackPACK's DiagHessian); Q_j's sign
    weights their squares.
    """
    cdef int l, j, L = s.n_layers
    cdef Py_ssize_t N = b.N, C = s.sizes[L]
    cdef Py_ssize_t i, n, nj, h
    cdef const floating* X = <const floating*>b.X
    cdef const floating* Z = w + lay.h.st.Z.off
    cdef const floating* A = w + lay.h.st.A.off
    cdef const floating* Q = w + lay.h.st.Q.off
    cdef floating* S = w + lay.h.S.off
    cdef floating* R = w + lay.h.R.off
    cdef floating* D2 = w + lay.D2.off
    cdef floating* sq = w + lay.sq.off
    cdef const floating* a_in
    first_order(s, b, theta, w, &lay.h.st)
    _factor_down(s, b, theta, Z, A, S)
    memset(D2, 0, N * s.width * sizeof(floating))
    for l in range(L):
        _add_squares(S + C * N * s.h_off[l], C, N, s.sizes[l + 1],
                     <const floating*>NULL, 0, D2 + N * s.h_off[l])
    for j in range(L - 1):
        nj = s.sizes[j + 1]
        h = N * s.h_off[j]
        for i in range(N * nj):
            D2[h + i] += Q[h + i]
        if j == 0:
            continue
        _residual_down(s, b, theta, j, 0, w, &lay.h)
        for l in range(j):
            _add_squares(R + nj * N * s.h_off[l], nj, N, s.sizes[l + 1],
                         Q + h, nj, D2 + N * s.h_off[l])
    for l in range(L):
        n = s.sizes[l]
        a_in = layer_input(s, l, X, A, N)
        for i in range(N * n):
            sq[i] = a_in[i] * a_in[i]
        layer_grad(s, l, sq, D2 + N * s.h_off[l], N, False, True, out)


# ----------------------------------------------- Kronecker-sum accumulation
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


cdef KronDims kron_dims(const NetSpec* s) noexcept nogil:
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


cdef Py_ssize_t kron_row_entries(const NetSpec* s) noexcept nogil:
    """Entries per row of a block in kron_layout (the rest is Mp)."""
    cdef KronDims d = kron_dims(s)
    return d.nn_max + d.chunk_max + d.inputs


cdef Py_ssize_t kron_layout(const NetSpec* s, Py_ssize_t nb, Py_ssize_t at,
                            KronLayout* lay) noexcept nogil:
    """K (nb, nn_max), Wt (chunk_max, nb), aT (inputs, nb), Mp (mp)."""
    lay.dims = kron_dims(s)
    at = put(&lay.K, at, nb * lay.dims.nn_max)
    at = put(&lay.Wt, at, lay.dims.chunk_max * nb)
    at = put(&lay.aT, at, lay.dims.inputs * nb)
    return put(&lay.Mp, at, lay.dims.mp)


cdef inline Py_ssize_t _block_params(const NetSpec* s, int l) noexcept nogil:
    return (s.sizes[l] + 1) * s.sizes[l + 1]


cdef void _transpose_inputs(const NetSpec* s, const Batch* b,
                            const floating* A, Py_ssize_t nb,
                            floating* aT) noexcept nogil:
    """aT: every layer's augmented input transposed, (n_l + 1, nb) each, the
    ones row last: the columns of A2 become contiguous products. CSR X is
    scattered into its (dense) block."""
    cdef int l
    cdef Py_ssize_t al, i, p, off = 0
    cdef const floating* a_in
    for l in range(s.n_layers):
        al = s.sizes[l] + 1
        if l == 0 and b.X == NULL:
            memset(aT, 0, (al - 1) * nb * sizeof(floating))
            if b.idx64:
                _csr_transpose(<const int64_t*>b.Xptr, <const int64_t*>b.Xind,
                               <const floating*>b.Xdata, nb, aT)
            else:
                _csr_transpose(<const int32_t*>b.Xptr, <const int32_t*>b.Xind,
                               <const floating*>b.Xdata, nb, aT)
            for i in range(nb):
                aT[(al - 1) * nb + i] = 1
            off += al * nb
            continue
        a_in = layer_input(s, l, <const floating*>b.X, A, nb)
        for i in range(nb):
            for p in range(al - 1):
                aT[off + p * nb + i] = a_in[i * (al - 1) + p]
        for i in range(nb):
            aT[off + (al - 1) * nb + i] = 1
        off += al * nb


cdef void _csr_transpose(const csr_index* ptr, const csr_index* ind,
                         const floating* val, Py_ssize_t nb,
                         floating* xT) noexcept nogil:
    """xT[j, i] = x_ij for the nonzeros of nb CSR rows (xT zeroed before)."""
    cdef Py_ssize_t i
    cdef csr_index p
    for i in range(nb):
        for p in range(ptr[i], ptr[i + 1]):
            xT[<Py_ssize_t>ind[p] * nb + i] = val[p]


cdef inline Py_ssize_t _aT_off(const NetSpec* s, int l, Py_ssize_t nb) noexcept nogil:
    cdef int j
    cdef Py_ssize_t off = 0
    for j in range(l):
        off += (s.sizes[j] + 1) * nb
    return off


cdef void _add_outer(const floating* S_l, const floating* S_m, Py_ssize_t k,
                     Py_ssize_t nb, Py_ssize_t nl, Py_ssize_t nm, bint diag,
                     const floating* sign, Py_ssize_t ns,
                     floating* K) noexcept nogil:
    """K_i += sum_r sign_ri S_l[r, i]^T S_m[r, i] for the k stacked (nb, n)
    blocks (sign (nb, ns), column r; all +1 if NULL). K (nb, nn): all
    (q, q'), or with diag (S_l is S_m) the upper triangle q <= q' only (row
    q of the triangle at tri(q) = q nl - q (q - 1) / 2)."""
    cdef Py_ssize_t i, r, q, qq, t, q0, nn = nl * (nl + 1) // 2 if diag else nl * nm
    cdef const floating* sl
    cdef const floating* sm
    cdef floating* kk
    cdef floating v
    for i in range(nb):
        kk = K + i * nn
        for r in range(k):
            sl = S_l + (r * nb + i) * nl
            sm = S_m + (r * nb + i) * nm
            t = 0
            for q in range(nl):
                v = sl[q]
                if sign != NULL and sign[i * ns + r] < 0:
                    v = -v
                q0 = q if diag else 0
                for qq in range(q0, nm):
                    kk[t + qq - q0] += v * sm[qq]
                t += nm - q0


cdef void _pair_scatter(const NetSpec* s, int l, int m, const floating* aT,
                        const floating* K, Py_ssize_t nb, floating* Gb,
                        Py_ssize_t ld, floating* w,
                        const KronLayout* lay) noexcept nogil:
    """Gb (the block (l, m) of a row-major matrix of leading dimension ld)
    += sum_i (a~_l a~_m^T)_i (x) K_i, K as _add_outer's.

    Rows (p, p') of M = A2^T K, p' >= p on a diagonal block, taken `chunk`
    at a time in order: one GEMM per chunk (Wt holds ``A2^T``'s rows, built
    from the transposed inputs aT), then each row scattered into the
    block's rows (p, q). A diagonal block is symmetric in (p, p') and, K_i
    being symmetric, separately in (q, q'): a quarter of it is computed.
    Writes the upper triangle (and some lower entries of diagonal blocks,
    which are scratch).
    """
    cdef Py_ssize_t nl = s.sizes[l + 1], nm = s.sizes[m + 1]
    cdef Py_ssize_t al = s.sizes[l] + 1, am = s.sizes[m] + 1
    cdef Py_ssize_t nn = _pair_nn(s, l, m), chunk = _pair_chunk(s, l, m, lay.dims.budget)
    cdef Py_ssize_t off_l = _aT_off(s, l, nb), off_m = _aT_off(s, m, nb)
    cdef Py_ssize_t p = 0, pp = 0, p_s, pp_s, r, i, j, q, qq, t
    cdef floating* Wt = w + lay.Wt.off
    cdef floating* Mp = w + lay.Mp.off
    cdef floating* wr
    cdef floating* dst
    cdef const floating* x
    cdef const floating* y
    cdef const floating* src
    while p < al:
        p_s = p
        pp_s = pp
        r = 0
        while r < chunk and p < al:
            # Wt[r, :] = a~_l[:, p] * a~_m[:, pp]
            wr = Wt + r * nb
            x = aT + off_l + p * nb
            y = aT + off_m + pp * nb
            for i in range(nb):
                wr[i] = x[i] * y[i]
            r += 1
            pp += 1
            if pp == am:
                p += 1
                pp = p if l == m else 0
        _gemm(NoTrans, NoTrans, <int>r, <int>nn, <int>nb, <floating>1.0, Wt,
              <int>nb, K, <int>nn, <floating>0.0, Mp, <int>nn)
        # replay the cursor to scatter row j = (p, pp)
        p = p_s
        pp = pp_s
        for j in range(r):
            src = Mp + j * nn
            for q in range(nl):
                dst = Gb + (p * nl + q) * ld + pp * nm
                if l < m:
                    for qq in range(nm):
                        dst[qq] += src[q * nm + qq]
                    continue
                # diagonal block: (q, q') from the triangle, both orders
                # when p' > p, the upper one when p' == p
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


cdef inline floating* _block_of(const NetSpec* s, int l, int m, bint diag_only,
                                floating* G, Py_ssize_t* ld) noexcept nogil:
    """Block (l, m) of G: the (P, P) matrix, or with diag_only the diagonal
    blocks (P_l, P_l) one after the other."""
    cdef int j
    cdef Py_ssize_t off = 0
    if not diag_only:
        ld[0] = s.n_params
        return G + s.w_off[l] * s.n_params + s.w_off[m]
    for j in range(l):
        off += _block_params(s, j) * _block_params(s, j)
    ld[0] = _block_params(s, l)
    return G + off


cdef void kron_accumulate(const NetSpec* s, const Batch* b,
                          const floating* A, const floating* S, Py_ssize_t k,
                          Py_ssize_t C, Py_ssize_t nb, bint diag_only,
                          floating* G, floating* w,
                          const KronLayout* lay) noexcept nogil:
    """G += a block's sum_i sum_c J_i^T s_ic s_ic^T J_i (the GGN, or with one
    column sqrt(c_i) delta_i the empirical Fisher), contracted over the C
    factor columns first.

    S: the k >= C stacked backpropagated vectors of the block in backward's
    NO_REDUCE layout (layer l's (k, nb, n_l) at k * nb * h_off[l]), the
    first C the factor's columns. G: the row-major (P, P) matrix
    (upper triangle), or with diag_only the L diagonal blocks (P_l, P_l)
    one after the other.

    Block (l, m), rows (p, q) of layer l's augmented weights ``[W_l; b_l]``
    (input p, output q) and columns (p', q') of layer m's:
    ``sum_i a~_l[i, p] a~_m[i, p'] K_i[q, q']`` with ``K_i = sum_c
    S_l[c, i]^T S_m[c, i]`` (``a~ = [a, 1]``): K by _add_outer, then
    ``A2^T K`` by _pair_scatter (``A2[i, (p, p')] = a~_l[i, p] a~_m[i, p']``).
    """
    cdef int l, m, L = s.n_layers
    cdef Py_ssize_t ld, nn
    cdef floating* K = w + lay.K.off
    cdef floating* aT = w + lay.aT.off
    cdef floating* Gb
    _transpose_inputs(s, b, A, nb, aT)
    for l in range(L):
        for m in range(l, L if not diag_only else l + 1):
            nn = _pair_nn(s, l, m)
            memset(K, 0, nb * nn * sizeof(floating))
            _add_outer(S + k * nb * s.h_off[l], S + k * nb * s.h_off[m], C, nb,
                       s.sizes[l + 1], s.sizes[m + 1], l == m,
                       <const floating*>NULL, 0, K)
            Gb = _block_of(s, l, m, diag_only, G, &ld)
            _pair_scatter(s, l, m, aT, K, nb, Gb, ld, w, lay)


# ------------------------------------------------------------ exact Hessian
cdef void _add_outer_units(const floating* S_l, const floating* U_m,
                           Py_ssize_t nb, Py_ssize_t nl, Py_ssize_t nm,
                           const floating* sign, floating* K) noexcept nogil:
    """_add_outer (l < m, k = nm, sign (nb, nm)) when block u of U_m is
    ``d_iu e_u``, a residual factor at its own layer: only q' == u, so
    ``K_i[q, u] += sign_iu d_iu S_l[u, i, q]`` (n_m times fewer products)."""
    cdef Py_ssize_t i, u, q
    cdef const floating* sl
    cdef floating* kk
    cdef floating v
    for i in range(nb):
        kk = K + i * nl * nm
        for u in range(nm):
            v = U_m[(u * nb + i) * nm + u]
            if sign[i * nm + u] < 0:
                v = -v
            sl = S_l + (u * nb + i) * nl
            for q in range(nl):
                kk[q * nm + u] += v * sl[q]


cdef void _z_hessian(const NetSpec* s, const Batch* b, const floating* theta,
                     int l, int m, floating* w,
                     const HessianLayout* lay) noexcept nogil:
    """K (N, nn) = the z-Hessians ``Hz_lm,i = d^2 L_i / dz_l dz_m`` (l <= m)
    in _add_outer's layout (the upper triangle when l == m).

    Hessian backpropagation gives ``Hz_m = B^T H_out B + sum_{j >= m}
    B_jm^T diag(Q_j) B_jm`` (B_jm = dz_j/dz_m) and ``Hz_lm = B_ml^T Hz_m``:
    signed outer products of backpropagated factors, each taken at layers l
    and m. The loss factor's C columns; diag(Q_l) itself when l == m is
    hidden; for each hidden layer j >= m (j > l) the signed square roots of
    Q_j carried down to layer l (at layer j == m they are the square roots
    themselves).
    """
    cdef int j, L = s.n_layers
    cdef Py_ssize_t N = b.N, C = s.sizes[L], nl = s.sizes[l + 1]
    cdef Py_ssize_t nm = s.sizes[m + 1], nn = _pair_nn(s, l, m), nj, i, q
    cdef Py_ssize_t h = N * s.h_off[l]
    cdef const floating* S = w + lay.h.S.off
    cdef const floating* Q = w + lay.h.st.Q.off
    cdef const floating* R = w + lay.h.R.off
    cdef floating* K = w + lay.kron.K.off
    memset(K, 0, N * nn * sizeof(floating))
    _add_outer(S + C * h, S + C * N * s.h_off[m], C, N, nl, nm, l == m,
               <const floating*>NULL, 0, K)
    if l == m and l < L - 1:
        for i in range(N):
            for q in range(nl):
                K[i * nn + q * nl - q * (q - 1) // 2] += Q[h + i * nl + q]
    for j in range(m if m > l else l + 1, L - 1):
        nj = s.sizes[j + 1]
        _residual_down(s, b, theta, j, l, w, &lay.h)
        if j == m:
            _add_outer_units(R + nj * h, R + nj * N * s.h_off[m], N, nl, nm,
                             Q + N * s.h_off[j], K)
        else:
            _add_outer(R + nj * h, R + nj * N * s.h_off[m], nj, N, nl, nm,
                       l == m, Q + N * s.h_off[j], nj, K)


cdef inline Py_ssize_t _cross_cols(const NetSpec* s, int l, int m) noexcept nogil:
    """Columns (p', q) of the cross-term GEMM of the pair l < m: only
    p' == q when m == l + 1 (d a_l / dz_l is diagonal)."""
    return s.sizes[l + 1] if m == l + 1 else s.sizes[m] * s.sizes[l + 1]


cdef void _cross_scatter(const NetSpec* s, const Batch* b, const floating* theta,
                         int l, int m, floating* G, floating* w,
                         const HessianLayout* lay) noexcept nogil:
    """G (the (P, P) matrix, block (l, m), l < m) += the terms of layer m's
    input depending on z_l: at row (p, q) of layer l's augmented weights and
    column (p', q') of layer m's weights,
    ``sum_i a~_l[i, p] delta_m[i, q'] J_i[p', q]``, J_i = d a_{m-1} / dz_l.

    Rows (p, q') of ``a~_l (x) delta_m``, `chunk` at a time in Wt, times J
    by GEMMs into Mp, each row then scattered: for m == l + 1, J_i =
    diag(f'_l) (only p' == q), one GEMM against f'_l; else J from the units
    ``f'_{m-1}[i, p'] e_p'`` carried down from layer m - 1 to l (_units_down),
    one GEMM per p' into columns (p', q).
    """
    cdef Py_ssize_t N = b.N, P = s.n_params, nl = s.sizes[l + 1]
    cdef Py_ssize_t nm = s.sizes[m + 1], nin = s.sizes[m], al = s.sizes[l] + 1
    cdef Py_ssize_t cols = _cross_cols(s, l, m), rows = al * nm
    cdef Py_ssize_t chunk = lay.kron.Mp.n // cols, r0 = 0, nr, r, i, p, qq, q, u
    cdef bint adj = m == l + 1
    cdef const floating* aT = w + lay.kron.aT.off + _aT_off(s, l, N)
    cdef const floating* D = w + lay.h.st.DL.off + N * s.h_off[m]
    cdef const floating* F1 = w + lay.h.st.F1.off
    cdef const floating* J = w + lay.h.R.off + nin * N * s.h_off[l]
    cdef floating* Wt = w + lay.kron.Wt.off
    cdef floating* Mp = w + lay.kron.Mp.off
    cdef floating* wr
    cdef floating* dst
    cdef const floating* src
    chunk = min(chunk, lay.kron.dims.chunk_max, rows)
    if not adj:
        _units_down(s, b, theta, m - 1, l, F1 + N * s.h_off[m - 1], False, w,
                    &lay.h)
    while r0 < rows:
        nr = min(chunk, rows - r0)
        for r in range(nr):
            # Wt[r, :] = a~_l[:, p] * delta_m[:, q'] for row r0 + r = (p, q')
            wr = Wt + r * N
            p = (r0 + r) // nm
            qq = (r0 + r) % nm
            for i in range(N):
                wr[i] = aT[p * N + i] * D[i * nm + qq]
        if adj:
            _gemm(NoTrans, NoTrans, <int>nr, <int>nl, <int>N, <floating>1.0, Wt,
                  <int>N, F1 + N * s.h_off[l], <int>nl, <floating>0.0, Mp, <int>nl)
        else:
            for u in range(nin):
                _gemm(NoTrans, NoTrans, <int>nr, <int>nl, <int>N, <floating>1.0,
                      Wt, <int>N, J + u * N * nl, <int>nl, <floating>0.0,
                      Mp + u * nl, <int>cols)
        for r in range(nr):
            p = (r0 + r) // nm
            qq = (r0 + r) % nm
            src = Mp + r * cols
            for q in range(nl):
                dst = G + (s.w_off[l] + p * nl + q) * P + s.w_off[m] + qq
                if adj:
                    dst[q * nm] += src[q]
                else:
                    for u in range(nin):
                        dst[u * nm] += src[u * nl + q]
        r0 += nr


cdef void _hessian_rows(const NetSpec* s, const Batch* b, const floating* theta,
                        bint diag_only, floating* G, floating* w,
                        const HessianLayout* lay) noexcept nogil:
    """G (the upper triangle; with diag_only of each diagonal block) += the
    rows' exact Hessian.

    Block (l, m), l <= m: the Kronecker sum ``sum_i (a~_l a~_m^T)_i (x)
    Hz_lm,i`` (_z_hessian, then _pair_scatter as for the GGN) and, for
    l < m, the terms of layer m's input depending on z_l (_cross_scatter).
    """
    cdef int l, m, L = s.n_layers
    cdef Py_ssize_t ld
    cdef floating* aT = w + lay.kron.aT.off
    cdef floating* Gb
    first_order(s, b, theta, w, &lay.h.st)
    _factor_down(s, b, theta, w + lay.h.st.Z.off, w + lay.h.st.A.off,
                 w + lay.h.S.off)
    _transpose_inputs(s, b, w + lay.h.st.A.off, b.N, aT)
    for l in range(L):
        for m in range(l, l + 1 if diag_only else L):
            _z_hessian(s, b, theta, l, m, w, lay)
            Gb = _block_of(s, l, m, diag_only, G, &ld)
            _pair_scatter(s, l, m, aT, w + lay.kron.K.off, b.N, Gb, ld, w,
                          &lay.kron)
            if m > l:
                _cross_scatter(s, b, theta, l, m, G, w, lay)


cdef void _finish_blocks(const NetSpec* s, double coef, bint diag_only,
                         floating* G) noexcept nogil:
    """Mirror the upper triangles (of each diagonal block with diag_only)
    and add coef on the weight entries of the diagonal."""
    cdef int l
    cdef Py_ssize_t n, off = 0
    if diag_only:
        for l in range(s.n_layers):
            n = _block_params(s, l)
            _mirror_upper(G + off, n)
            off += n * n
    else:
        _mirror_upper(G, s.n_params)
    add_l2_diag(s, coef, diag_only, G)


cdef Py_ssize_t _dense_entries(const NetSpec* s, bint diag_only) noexcept nogil:
    cdef int l
    cdef Py_ssize_t total = 0
    if not diag_only:
        return s.n_params * s.n_params
    for l in range(s.n_layers):
        total += _block_params(s, l) * _block_params(s, l)
    return total


cdef int hessian_kernel(const NetSpec* s, const Batch* b, const floating* theta,
                        bint diag_only, floating* G, Py_ssize_t block,
                        floating* w, const HessianLayout* lay) except -1 nogil:
    """G = the exact Hessian (P, P) or, with diag_only, its diagonal blocks
    (P_l, P_l) one after the other, symmetric, + alpha / W on the weight
    entries of the diagonal; blocks of `block` rows, pending signals
    handled after each (-1: a handler raised, G incomplete)."""
    cdef Py_ssize_t i0 = 0, nb
    cdef Batch sub
    memset(G, 0, _dense_entries(s, diag_only) * sizeof(floating))
    while i0 < b.N:
        nb = block if b.N - i0 > block else b.N - i0
        sub = sub_batch(s, b, i0, nb)
        _hessian_rows(s, &sub, theta, diag_only, G, w, lay)
        i0 += nb
        check_interrupt()
    _finish_blocks(s, b.alpha / b.sw_sum, diag_only, G)
    return 0


cdef void add_l2_diag(const NetSpec* s, double coef, bint diag_only,
                      floating* G) noexcept nogil:
    """coef on the weight entries of the diagonal (biases excluded), G as
    in kron_accumulate."""
    cdef int l
    cdef Py_ssize_t j, nw, ld, off = 0
    if coef == 0.0:
        return
    for l in range(s.n_layers):
        nw = s.sizes[l] * s.sizes[l + 1]
        if diag_only:
            ld = _block_params(s, l)
            for j in range(nw):
                G[off + j * ld + j] += <floating>coef
            off += ld * ld
        else:
            for j in range(s.w_off[l], s.w_off[l] + nw):
                G[j * s.n_params + j] += <floating>coef


cdef void _mirror_upper(floating* G, Py_ssize_t n) noexcept nogil:
    """Copy the upper triangle of the row-major (n, n) G onto the lower one,
    tile by tile (both sides stay in cache)."""
    cdef Py_ssize_t ib, jb, i, j, j0, T = 64
    for ib in range(0, n, 64):
        for jb in range(ib, n, 64):
            for i in range(ib, min(ib + T, n)):
                j0 = jb if jb > i + 1 else i + 1
                for j in range(j0, min(jb + T, n)):
                    G[j * n + i] = G[i * n + j]


cdef void _fisher_factor(const NetSpec* s, const Batch* b,
                         const floating* theta, floating* w,
                         const FactorLayout* lay) noexcept nogil:
    """S (1, N, width) = sqrt(c_i) delta_i at every layer, c_i = w_i / W,
    delta_i the raw per-sample deltas: ``sum_i c_i g_i g_i^T`` is the
    Kronecker sum of this one factor column."""
    cdef int l, L = s.n_layers
    cdef Py_ssize_t N = b.N, i, q, n
    cdef const floating* sw = <const floating*>b.sw
    cdef floating* Z = w + lay.Z.off
    cdef floating* A = w + lay.A.off
    cdef floating* S = w + lay.S.off
    cdef floating* row
    cdef floating r
    _raw_deltas(s, b, theta, Z, A, S)
    for l in range(L):
        n = s.sizes[l + 1]
        for i in range(N):
            r = <floating>sqrt((1.0 if sw == NULL else sw[i]) / b.sw_sum)
            row = S + N * s.h_off[l] + i * n
            for q in range(n):
                row[q] *= r


cdef int dense_ggn_kernel(const NetSpec* s, const Batch* b,
                          const floating* theta, bint diag_only, bint fisher,
                          floating* G, Py_ssize_t block, floating* w,
                          const DenseLayout* lay) except -1 nogil:
    """G = the dense GGN or, with fisher, empirical Fisher (diag_only: its
    diagonal blocks, one after the other), symmetric, + alpha / W on the weight entries of the diagonal;
    blocks of `block` rows, backpropagated loss factor then Kronecker
    accumulation; pending signals handled after each block (-1: a handler
    raised, G incomplete)."""
    cdef Py_ssize_t i0 = 0, nb
    cdef Batch sub
    memset(G, 0, _dense_entries(s, diag_only) * sizeof(floating))
    while i0 < b.N:
        nb = block if b.N - i0 > block else b.N - i0
        sub = sub_batch(s, b, i0, nb)
        if fisher:
            _fisher_factor(s, &sub, theta, w, &lay.f)
            kron_accumulate(s, &sub, w + lay.f.A.off,
                            w + lay.f.S.off, 1, 1, nb, diag_only, G, w, &lay.kron)
        else:
            factor_backprop(s, &sub, theta, w, &lay.f)
            kron_accumulate(s, &sub, w + lay.f.A.off,
                            w + lay.f.S.off, s.sizes[s.n_layers],
                            s.sizes[s.n_layers], nb, diag_only, G, w, &lay.kron)
        i0 += nb
        check_interrupt()
    _finish_blocks(s, b.alpha / b.sw_sum, diag_only, G)
    return 0


# -------------------------------------------------------------- workspaces
cdef class HvpWorkspace(Workspace):
    """hvp: the first-order state (6 x n_rows width), RZ, RA (k n_rows width
    each), RD (2 k n_rows max(max_hidden, n_L)); the buffer also holds a
    blocked call's row blocks (``blocks``)."""
    cdef HvpLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        return _reserve(HVP, &self.plan.spec, N, k,
                        hvp_layout(&self.plan.spec, N, k, &self.lay))

    cdef dict _regions(self):
        return self.lay

    def blocks(self, Py_ssize_t n_rows, int threads):
        return _blocks_info(HVP, self.plan, n_rows, self.k, threads)


cdef class GgnVpWorkspace(Workspace):
    """ggn_vp: Z, A, F1, F2 (n_rows width each), RZ, RA (k n_rows width),
    RD (k n_rows n_L), work (2 k n_rows max_hidden, and at least n_rows
    times the hidden widths' sum: batch_state's deltas), part (batch_state's
    row-block gradients); the buffer also holds a blocked call's row blocks
    (``blocks``)."""
    cdef GgnVpLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        return _reserve(GGN_VP, &self.plan.spec, N, k,
                        ggn_vp_layout(&self.plan.spec, N, k, &self.lay))

    cdef dict _regions(self):
        return self.lay

    def blocks(self, Py_ssize_t n_rows, int threads):
        return _blocks_info(GGN_VP, self.plan, n_rows, self.k, threads)


cdef class EfisherVpWorkspace(Workspace):
    """efisher_vp: Z, A, DL (n_rows width each), T and work (n_rows times
    the widest layer), U (k n_rows); the buffer also holds a blocked call's
    row blocks (``blocks``)."""
    cdef EfisherLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        return _reserve(EFISHER_VP, &self.plan.spec, N, k,
                        efisher_vp_layout(&self.plan.spec, N, k, &self.lay))

    cdef dict _regions(self):
        return self.lay

    def blocks(self, Py_ssize_t n_rows, int threads):
        return _blocks_info(EFISHER_VP, self.plan, n_rows, self.k, threads)


def _blocks_info(int kind, NetPlan plan, Py_ssize_t n_rows, Py_ssize_t k, int threads):
    """(row blocks, entries per block, offset of blocks 1 .. B - 1's outputs)
    of a product over n_rows rows at a thread limit (see Blocks)."""
    cdef Blocks bl
    plan_blocks(kind, &plan.spec, n_rows, k, cut_for(&plan.spec, threads), &bl)
    return bl.n, bl.stride, bl.parts


cdef class StateWorkspace(Workspace):
    """first_order_state: Z, A, F1, F2, DL, Q (n_rows width each; k unused)."""
    cdef StateLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        return state_layout(&self.plan.spec, N, 0, &self.lay)

    cdef dict _regions(self):
        return self.lay


cdef class FactorWorkspace(Workspace):
    """loss_factors: Z, A (n_rows width each), S (n_L n_rows width; k
    unused)."""
    cdef FactorLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        return factor_layout(&self.plan.spec, N, 0, &self.lay)

    cdef dict _regions(self):
        return self.lay


cdef class HessianWorkspace(Workspace):
    """hessian and block_hessian, block by block of n_rows rows: the
    first-order state, the loss factor S (n_L n_rows width), a residual
    factor R (max_hidden n_rows width) and the Kronecker accumulation's
    regions (see dense_block_rows; k unused)."""
    cdef HessianLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        cdef const NetSpec* s = &self.plan.spec
        cdef Py_ssize_t at = _hess_factors(s, N, &self.lay.h)
        at = kron_layout(s, N, at, &self.lay.kron)
        # A cross-term GEMM writes at least one row of _cross_cols entries
        # into Mp, the last region: grow it when a row is longer.
        if _widest_cross(s) > self.lay.kron.Mp.n:
            at = put(&self.lay.kron.Mp, self.lay.kron.Mp.off, _widest_cross(s))
        return at

    cdef dict _regions(self):
        d = <dict>self.lay
        d["kron"].pop("dims")
        return d


cdef Py_ssize_t _widest_cross(const NetSpec* s) noexcept nogil:
    """The longest cross-term GEMM row (_cross_cols) over the pairs l < m."""
    cdef int l, m
    cdef Py_ssize_t c = 0
    for l in range(s.n_layers):
        for m in range(l + 1, s.n_layers):
            c = max(c, _cross_cols(s, l, m))
    return c


cdef inline Py_ssize_t _residual_width(const NetSpec* s) noexcept nogil:
    """Columns of a residual factor carried below its layer (none with
    fewer than two hidden layers)."""
    return s.max_hidden if s.n_layers > 2 else 0


cdef Py_ssize_t _hess_factors(const NetSpec* s, Py_ssize_t N,
                              HessFactors* lay) noexcept nogil:
    """The first-order state, the loss factor and a residual factor from
    entry 0; returns the end."""
    cdef Py_ssize_t at = state_layout(s, N, 0, &lay.st)
    at = put(&lay.S, at, s.sizes[s.n_layers] * N * s.width)
    return put(&lay.R, at, _residual_width(s) * N * s.width)


cdef class DiagHessianWorkspace(Workspace):
    """diag_hessian: the first-order state, the loss factor S (n_L n_rows
    width), a residual factor R (max_hidden n_rows width), the diagonals D2
    (n_rows width) and squared inputs (n_rows max(n_0, max_hidden)); k
    unused."""
    cdef DiagHessLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        cdef const NetSpec* s = &self.plan.spec
        cdef Py_ssize_t at = _hess_factors(s, N, &self.lay.h)
        at = put(&self.lay.D2, at, N * s.width)
        return put(&self.lay.sq, at, N * max(s.sizes[0], s.max_hidden))

    cdef dict _regions(self):
        return self.lay


cdef class DenseGgnWorkspace(Workspace):
    """dense_ggn, block by block of n_rows rows: the loss factor's regions
    (FactorWorkspace's) and the Kronecker accumulation's K (n_rows,
    nn_max), Wt (chunk_max, n_rows), aT (sum_l (n_l + 1), n_rows) and Mp
    (see dense_block_rows; k unused)."""
    cdef DenseLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        cdef Py_ssize_t at = factor_layout(&self.plan.spec, N, 0, &self.lay.f)
        return kron_layout(&self.plan.spec, N, at, &self.lay.kron)

    cdef dict _regions(self):
        d = <dict>self.lay
        d["kron"].pop("dims")
        return d


def dense_block_rows(NetPlan plan, Py_ssize_t budget_bytes, Py_ssize_t itemsize,
                     bint hessian=False):
    """Rows per block of dense_ggn (hessian: dense_hessian) whose workspace
    (DenseGgnWorkspace, HessianWorkspace) holds at most budget_bytes
    in its per-row regions (at least 1 row).

    Per row: the forward cache and loss factor, (2 + n_L) width entries
    (hessian: the first-order state and a residual factor too, (6 + n_L +
    max_hidden) width), and nn_max + chunk_max + sum_l (n_l + 1) of the
    Kronecker accumulation. On top, whatever the rows: the GEMM output Mp
    (max(2^20, P^2 / 8) entries at most, beside the P^2 of G; for the
    Hessian at least one cross-term row, n_{m-1} n_l entries) and at most
    8 entries of alignment per region.
    """
    cdef const NetSpec* s = &plan.spec
    cdef Py_ssize_t per_row = (2 + s.sizes[s.n_layers]) * s.width + kron_row_entries(s)
    if hessian:
        per_row += (4 + _residual_width(s)) * s.width
    return max(1, (budget_bytes // itemsize) // per_row)


# ------------------------------------------------------------ Python layer
# Entry points on validated C-contiguous arrays of one dtype; the caller
# allocates outputs and passes a workspace laid out for at least N rows and
# k vectors.
cdef inline const floating* _opt(const floating[::1] v) noexcept:
    return NULL if v is None else &v[0]


cdef int _product(int kind, NetPlan plan, const floating[::1] theta, X,
                  const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
                  double alpha, const floating[:, ::1] V, floating[:, ::1] out,
                  Workspace ws) except -1:
    """out (k, P) = rows of the product with V (k, P), in row blocks at the
    thread limit of the call."""
    ws.check(X.shape[0], V.shape[0], sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw),
                              <Py_ssize_t>X.shape[0], sw_sum, alpha)
    set_input(&b, X, sizeof(floating))
    cdef Blocks bl
    cdef Py_ssize_t need = plan_blocks(kind, &plan.spec, b.N, V.shape[0],
                                       cut_for(&plan.spec, thread_limit()), &bl)
    if need > ws.size:   # _reserve's bound broken: a bug, never a write past the buffer
        raise RuntimeError(f"{type(ws).__name__} holds {ws.size} entries, the call "
                           f"needs {need}")
    with nogil:
        blocked_product(kind, &plan.spec, &b, &theta[0], &V[0, 0], V.shape[0],
                        &out[0, 0], <floating*>ws.base, &bl)
    return 0


def hvp(NetPlan plan, const floating[::1] theta, X,
        const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
        double alpha, const floating[:, ::1] V, floating[:, ::1] out,
        HvpWorkspace ws):
    """out (k, P) = rows of H V for V (k, P)."""
    _product(HVP, plan, theta, X, Y, sw, sw_sum, alpha, V, out, ws)


def ggn_vp(NetPlan plan, const floating[::1] theta, X,
           const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
           double alpha, const floating[:, ::1] V, floating[:, ::1] out,
           GgnVpWorkspace ws):
    """out (k, P) = rows of G V for V (k, P)."""
    _product(GGN_VP, plan, theta, X, Y, sw, sw_sum, alpha, V, out, ws)


def efisher_vp(NetPlan plan, const floating[::1] theta, X,
               const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
               double alpha, const floating[:, ::1] V, floating[:, ::1] out,
               EfisherVpWorkspace ws):
    """out (k, P) = rows of F V for V (k, P), F the empirical Fisher."""
    _product(EFISHER_VP, plan, theta, X, Y, sw, sw_sum, alpha, V, out, ws)


def first_order_state(NetPlan plan, const floating[::1] theta, X,
                      const floating[:, ::1] Y,
                      const floating[::1] sw, double sw_sum, StateWorkspace ws):
    """Fill ws and return views (Z, A, F1, F2, DL, Q) of N * width each."""
    cdef Py_ssize_t N = X.shape[0]
    ws.check(N, 0, sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw), N,
                              sw_sum, 0.0)
    set_input(&b, X, sizeof(floating))
    cdef Team team
    with nogil:
        blas_open(&team)
        first_order(&plan.spec, &b, &theta[0], <floating*>ws.base, &ws.lay)
        team_close(&team)
    return tuple(ws.array(name)[:N * plan.spec.width]
                 for name in ("Z", "A", "F1", "F2", "DL", "Q"))


def loss_factors(NetPlan plan, const floating[::1] theta, X,
                 const floating[:, ::1] Y,
                 const floating[::1] sw, double sw_sum, FactorWorkspace ws):
    """Fill ws and return views (Z, A, S): activations (N * width) and the
    backpropagated loss factor (C * N * width, layer l's (C, N, n_l) block
    at C N h_off[l])."""
    cdef Py_ssize_t N = X.shape[0], n = N * plan.spec.width
    ws.check(N, 0, sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw), N,
                              sw_sum, 0.0)
    set_input(&b, X, sizeof(floating))
    cdef Team team
    with nogil:
        blas_open(&team)
        factor_backprop(&plan.spec, &b, &theta[0], <floating*>ws.base, &ws.lay)
        team_close(&team)
    return (ws.array("Z")[:n], ws.array("A")[:n],
            ws.array("S")[:plan.spec.sizes[plan.spec.n_layers] * n])


def dense_hessian(NetPlan plan, const floating[::1] theta, X,
                  const floating[:, ::1] Y,
                  const floating[::1] sw, double sw_sum, double alpha,
                  bint diag_only, floating[::1] G, Py_ssize_t block,
                  HessianWorkspace ws):
    """G = the exact Hessian (P * P entries, row-major) or, with diag_only,
    its L diagonal blocks (P_l, P_l) one after the other (sum_l P_l^2
    entries); symmetric, + alpha / W on the weight entries of the diagonal.
    Blocks of `block` rows (1 <= block <= ws.n_rows)."""
    _check_dense_out(&plan.spec, diag_only, G.shape[0])
    _check_block(block, ws, sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw),
                              <Py_ssize_t>X.shape[0], sw_sum, alpha)
    set_input(&b, X, sizeof(floating))
    cdef Team team
    with nogil:
        blas_open(&team)
        try:
            hessian_kernel(&plan.spec, &b, &theta[0], diag_only, &G[0], block,
                           <floating*>ws.base, &ws.lay)
        finally:
            team_close(&team)


cdef int _check_block(Py_ssize_t block, Workspace ws, Py_ssize_t itemsize) except -1:
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    return ws.check(block, 0, itemsize)


cdef int _check_dense_out(const NetSpec* s, bint diag_only, Py_ssize_t n) except -1:
    cdef Py_ssize_t need = _dense_entries(s, diag_only)
    if n != need:
        raise ValueError(f"G must have {need} entries, got {n}")
    return 0


def diag_hessian(NetPlan plan, const floating[::1] theta, const floating[:, ::1] X,
                 const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
                 floating[::1] out, DiagHessianWorkspace ws):
    """out (P,) = the rows' part of the exact Hessian's diagonal (data term
    over W = sw_sum, no regularizer)."""
    ws.check(X.shape[0], 0, sizeof(floating))
    cdef Batch b = make_batch(&X[0, 0], &Y[0, 0], _opt(sw), X.shape[0], sw_sum,
                              0.0)
    cdef Team team
    with nogil:
        blas_open(&team)
        diag_hessian_kernel(&plan.spec, &b, &theta[0], &out[0],
                            <floating*>ws.base, &ws.lay)
        team_close(&team)


def dense_ggn(NetPlan plan, const floating[::1] theta, X,
              const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
              double alpha, bint diag_only, floating[::1] G, Py_ssize_t block,
              DenseGgnWorkspace ws, bint fisher=False):
    """G = the dense GGN (P * P entries, row-major), or with diag_only its
    L diagonal blocks (P_l, P_l) one after the other (sum_l P_l^2 entries);
    symmetric, + alpha / W on the weight entries of the diagonal. Blocks of
    `block` rows (1 <= block <= ws.n_rows). fisher: the empirical Fisher
    ``sum_i (w_i / W) g_i g_i^T`` instead of the GGN."""
    cdef const NetSpec* s = &plan.spec
    _check_dense_out(s, diag_only, G.shape[0])
    _check_block(block, ws, sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt(sw),
                              <Py_ssize_t>X.shape[0], sw_sum, alpha)
    set_input(&b, X, sizeof(floating))
    cdef Team team
    with nogil:
        blas_open(&team)
        try:
            dense_ggn_kernel(s, &b, &theta[0], diag_only, fisher, &G[0], block,
                             <floating*>ws.base, &ws.lay)
        finally:
            team_close(&team)


# ------------------------------------------------ one batch, one forward pass
# K-FAC's step needs, on one batch at one theta, the objective and gradient,
# the layer inputs and f' (its Kronecker factors), a backward pass of sampled
# output deltas and the GGN's quadratic form on a few directions: these entry
# points share the forward cache of a GgnVpWorkspace instead of redoing the
# forward pass per quantity.
# batch_state fills it; the other two read it and are valid only for the
# theta and rows batch_state was last called with on that workspace.
cdef inline void _ggn_quadratic_from_state(const NetSpec* s, const Batch* b,
                                           const floating* theta,
                                           const floating* V, Py_ssize_t k,
                                           double* out, floating* w,
                                           const GgnVpLayout* lay) noexcept nogil:
    """out (k, k) = V G V^T = (J V)^T H_loss (J V) + coef V_W . V_W, with the
    forward cache of the batch at theta in w: the R-forward pass and the
    loss Hessian only (no backward pass), accumulated in double."""
    cdef int l, L = s.n_layers
    cdef Py_ssize_t N = b.N, nL = s.sizes[L], hid = N * s.h_off[L - 1]
    cdef Py_ssize_t n = N * nL, P = s.n_params, r, q, j
    cdef floating* RZ = w + lay.RZ.off
    cdef const floating* JV = RZ + k * hid
    cdef const floating* HJV = w + lay.RD.off
    cdef const floating* vr
    cdef const floating* vq
    cdef double acc, reg, coef = b.alpha / b.sw_sum
    r_forward(s, theta, b, N, w + lay.A.off, w + lay.F1.off,
              V, k, RZ, w + lay.RA.off)
    hess_prod_rows(s.loss, w + lay.Z.off + hid, <const floating*>b.Y,
                   <const floating*>b.sw, N, nL, 1.0 / b.sw_sum, JV,
                   w + lay.RD.off, k)
    for r in range(k):
        for q in range(r, k):
            acc = 0.0
            for j in range(n):
                acc += <double>JV[r * n + j] * HJV[q * n + j]
            reg = 0.0
            if coef != 0.0:
                vr = V + r * P
                vq = V + q * P
                for l in range(L):
                    for j in range(s.w_off[l], s.w_off[l] + s.sizes[l] * s.sizes[l + 1]):
                        reg += <double>vr[j] * vq[j]
            out[r * k + q] = out[q * k + r] = acc + coef * reg


def batch_state(NetPlan plan, const floating[::1] theta, const floating[:, ::1] X,
                const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
                double alpha, floating[::1] grad, GgnVpWorkspace ws):
    """Objective (and its gradient into grad unless None), as
    ``_network.loss_grad``, leaving Z, A, F1, F2 of the rows in ws."""
    cdef const NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], hid = N * s.h_off[s.n_layers - 1]
    ws.check(N, 1, sizeof(floating))
    cdef floating* w = <floating*>ws.base
    cdef floating* g = NULL if grad is None else &grad[0]
    cdef Batch b = make_batch(&X[0, 0], &Y[0, 0], _opt(sw), N, sw_sum, alpha)
    # The first-order kernel's regions inside this workspace: Z, A as they
    # are, the output deltas in RD and the backward buffers in work.
    cdef FirstLayout fl
    fl.Z = ws.lay.Z
    fl.A = ws.lay.A
    fl.D = ws.lay.RD
    fl.work = ws.lay.work
    fl.part = ws.lay.part
    cdef double out
    cdef Team team
    with nogil:
        blas_open(&team)
        out = loss_grad_kernel(s, &b, &theta[0], w, &fl, g)
        if hid > 0:
            act_derivs(s.act, w + ws.lay.Z.off, w + ws.lay.A.off,
                       w + ws.lay.F1.off, w + ws.lay.F2.off, hid)
        team_close(&team)
    return out


def state_backprop(NetPlan plan, const floating[::1] theta,
                   const floating[:, ::1] X, const floating[:, ::1] D,
                   GgnVpWorkspace ws):
    """Backpropagate output deltas D (N, n_L) through batch_state's cache.

    Returns a view of N * width entries (in ws's RZ region): the hidden
    layers' (N, n_l) deltas at N * h_off[l]; the output block is not
    written (D is the output layer's).
    """
    cdef const NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0]
    ws.check(N, 1, sizeof(floating))
    if D.shape[0] != N or D.shape[1] != s.sizes[s.n_layers]:
        raise ValueError(f"D must have shape ({N}, {s.sizes[s.n_layers]}), got "
                         f"({D.shape[0]}, {D.shape[1]})")
    cdef floating* w = <floating*>ws.base
    cdef Batch b = make_batch(&X[0, 0], <const floating*>NULL, <const floating*>NULL,
                              N, 1.0, 0.0)
    cdef Team team
    with nogil:
        blas_open(&team)
        backward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off,
                 &D[0, 0], 1, w + ws.lay.RZ.off, NO_REDUCE, <floating*>NULL)
        team_close(&team)
    return ws.array("RZ")[:N * s.width]


def state_ggn_quadratic(NetPlan plan, const floating[::1] theta,
                        const floating[:, ::1] X, const floating[:, ::1] Y,
                        const floating[::1] sw, double sw_sum, double alpha,
                        const floating[:, ::1] V, double[:, ::1] out,
                        GgnVpWorkspace ws):
    """out (k, k) = V G V^T for V (k, P), from batch_state's cache: the
    quadratic form of the GGN on span(V) without the products G V."""
    cdef Py_ssize_t k = V.shape[0]
    ws.check(X.shape[0], k, sizeof(floating))
    if out.shape[0] != k or out.shape[1] != k:
        raise ValueError(f"out must have shape ({k}, {k}), got "
                         f"({out.shape[0]}, {out.shape[1]})")
    cdef Batch b = make_batch(&X[0, 0], &Y[0, 0], _opt(sw), X.shape[0], sw_sum,
                              alpha)
    cdef Team team
    with nogil:
        blas_open(&team)
        _ggn_quadratic_from_state(&plan.spec, &b, &theta[0], &V[0, 0], k,
                                  &out[0, 0], <floating*>ws.base, &ws.lay)
        team_close(&team)
