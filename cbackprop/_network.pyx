"""First-order passes of an MLP over row-major batches.

Cache layout: one buffer ``Z`` (and one ``A``) of ``N * width`` entries holds
every layer's pre-activations (activations) as consecutive row-major
``(N, n_l)`` blocks, layer l at ``N * h_off[l]``. A batch of k output-space
vectors is ``(k * N, n)``: block r holds vector r for every sample, so one
GEMM per layer carries all k through the transposed Jacobian.
"""
import numpy as np
cimport cython

from cbackprop._blas cimport _gemm, _axpy, _dot, BLAS_Trans, NoTrans, Trans
from cbackprop._activations cimport (act_forward, act_backward, act_backward_sum,
                                     IDENTITY)
from cbackprop._losses cimport loss_grad_rows, link_rows


cdef class NetPlan:
    """Immutable description of an architecture for the kernels.

    Parameters
    ----------
    sizes : sequence of int, length L + 1
    activation : Activation
    loss : Loss
    """

    @cython.wraparound(True)
    def __init__(self, sizes, Activation activation, Loss loss):
        sizes = np.asarray(sizes, dtype=np.intp)
        L = sizes.shape[0] - 1
        fan = sizes[:-1] * sizes[1:]
        per_layer = fan + sizes[1:]
        starts = np.concatenate([[0], np.cumsum(per_layer)[:-1]]).astype(np.intp)
        w_off = starts
        b_off = (starts + fan).astype(np.intp)
        h_off = np.concatenate([[0], np.cumsum(sizes[1:])[:-1]]).astype(np.intp)
        for a in (sizes, w_off, b_off, h_off):
            a.flags.writeable = False
        self._arrays = (sizes, w_off, b_off, h_off)
        cdef const Py_ssize_t[::1] sv = sizes, wv = w_off, bv = b_off, hv = h_off
        self.spec.n_layers = <int>L
        self.spec.sizes = &sv[0]
        self.spec.w_off = &wv[0]
        self.spec.b_off = &bv[0]
        self.spec.h_off = &hv[0]
        self.spec.width = int(sizes[1:].sum())
        self.spec.max_hidden = int(sizes[1:-1].max()) if L > 1 else 1
        self.spec.n_params = int(per_layer.sum())
        self.spec.act = activation
        self.spec.loss = loss

    @property
    def n_params(self):
        return self.spec.n_params

    @property
    def width(self):
        return self.spec.width

    @property
    def max_hidden(self):
        return self.spec.max_hidden

    @property
    def offsets(self):
        """Read-only (sizes, w_off, b_off, h_off) intp arrays: layer widths,
        offsets of W_l and b_l in theta, and of layer l in stacked caches."""
        return self._arrays


cdef void forward(const NetSpec* s, const floating* theta, const floating* X,
                  Py_ssize_t N, floating* Z, floating* A) noexcept nogil:
    """Z_l = A_{l-1} W_l + b_l, A_l = f(Z_l); the output layer stays raw."""
    cdef int l, L = s.n_layers
    cdef Py_ssize_t nin, nout
    cdef const floating* a_in = X
    cdef floating* z
    for l in range(L):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        z = Z + N * s.h_off[l]
        _gemm(NoTrans, NoTrans, <int>N, <int>nout, <int>nin, <floating>1.0,
              a_in, <int>nin, theta + s.w_off[l], <int>nout, <floating>0.0,
              z, <int>nout)
        if l < L - 1:
            # Bias and activation fused: one pass over the block.
            act_forward(s.act, z, A + N * s.h_off[l], theta + s.b_off[l], N, nout)
            a_in = A + N * s.h_off[l]
        else:
            act_forward(IDENTITY, z, z, theta + s.b_off[l], N, nout)


cdef inline void _col_sums(const floating* D, Py_ssize_t N, Py_ssize_t n,
                           floating* out) noexcept nogil:
    cdef Py_ssize_t i, j
    for j in range(n):
        out[j] = 0
    for i in range(N):
        for j in range(n):
            out[j] += D[i * n + j]


cdef void _reduce_layer(const NetSpec* s, int l, Reduce mode,
                        const floating* a_in, const floating* D, Py_ssize_t N,
                        Py_ssize_t k, bint bias_done, floating* out) noexcept nogil:
    """Turn layer l's input and output deltas into parameter quantities
    (with bias_done, GRAD's bias part is already in out: see backward)."""
    cdef Py_ssize_t nin = s.sizes[l], nout = s.sizes[l + 1], P = s.n_params
    cdef Py_ssize_t r, i, p, q
    cdef floating* o
    cdef const floating* d
    cdef const floating* a
    if mode == GRAD:
        for r in range(k):
            o = out + r * P
            d = D + r * N * nout
            _gemm(Trans, NoTrans, <int>nin, <int>nout, <int>N, <floating>1.0,
                  a_in, <int>nin, d, <int>nout, <floating>0.0,
                  o + s.w_off[l], <int>nout)
            if not bias_done:
                _col_sums(d, N, nout, o + s.b_off[l])
        return
    for r in range(k):
        for i in range(N):
            o = out + (i * k + r) * P
            a = a_in + i * nin
            d = D + (r * N + i) * nout
            for p in range(nin):
                for q in range(nout):
                    o[s.w_off[l] + p * nout + q] = a[p] * d[q]
            for q in range(nout):
                o[s.b_off[l] + q] = d[q]


cdef void backward(const NetSpec* s, const floating* theta, const floating* X,
                   Py_ssize_t N, const floating* Z, const floating* A,
                   const floating* D, Py_ssize_t k, floating* work,
                   Reduce mode, floating* out) noexcept nogil:
    """Backpropagate k stacked output deltas D (k*N, n_L) and reduce.

    With mode GRAD or PER_SAMPLE, ``work`` holds two ping-pong delta
    buffers of k * N * max_hidden. With NO_REDUCE, ``work`` is a store of
    k * N * width: layer l's deltas (k*N, n_l) are kept at k * N * h_off[l]
    (the output layer's block is left alone: D holds it). D is read only.
    """
    cdef int l, L = s.n_layers
    cdef Py_ssize_t nin, nout, half = k * N * s.max_hidden
    cdef const floating* cur = D
    cdef floating* nxt
    cdef const floating* a_in
    # One gradient: the hidden layers' bias parts (column sums of their
    # deltas) are summed in the pass that forms the deltas.
    cdef bint fuse = mode == GRAD and k == 1
    for l in range(L - 1, -1, -1):
        nin = s.sizes[l]
        nout = s.sizes[l + 1]
        a_in = X if l == 0 else A + N * s.h_off[l - 1]
        if mode != NO_REDUCE:
            _reduce_layer(s, l, mode, a_in, cur, N, k, fuse and l < L - 1, out)
        if l == 0:
            break
        if mode == NO_REDUCE:
            nxt = work + k * N * s.h_off[l - 1]
        else:
            nxt = work + ((L - 1 - l) % 2) * half
        # delta_{l-1} = (delta_l W_l^T) * f'(z_{l-1}), all k blocks at once.
        _gemm(NoTrans, Trans, <int>(k * N), <int>nin, <int>nout,
              <floating>1.0, cur, <int>nout, theta + s.w_off[l], <int>nout,
              <floating>0.0, nxt, <int>nin)
        if fuse:
            act_backward_sum(s.act, Z + N * s.h_off[l - 1], A + N * s.h_off[l - 1],
                             nxt, N, nin, out + s.b_off[l - 1])
        else:
            act_backward(s.act, Z + N * s.h_off[l - 1], A + N * s.h_off[l - 1],
                         nxt, N, nin, k)
        cur = nxt


cdef double add_l2(const NetSpec* s, const floating* theta, double coef,
                   floating* grad) noexcept nogil:
    """Return coef/2 sum ||W_l||^2; add coef * W_l to grad (if not NULL)."""
    cdef int l
    cdef Py_ssize_t n
    cdef double reg = 0.0
    if coef == 0.0:
        return 0.0
    for l in range(s.n_layers):
        n = s.sizes[l] * s.sizes[l + 1]
        reg += _dot(<int>n, theta + s.w_off[l], 1, theta + s.w_off[l], 1)
        if grad != NULL:
            _axpy(<int>n, <floating>coef, theta + s.w_off[l], 1,
                  grad + s.w_off[l], 1)
    return 0.5 * coef * reg


cdef double loss_grad_kernel(const NetSpec* s, const floating* theta,
                             const floating* X, const floating* Y,
                             const floating* sw, Py_ssize_t N, double sw_sum,
                             double alpha, floating* Z, floating* A,
                             floating* D, floating* work,
                             floating* grad) noexcept nogil:
    """Objective and (if grad is not NULL) its gradient, in one pass.

    Needs Z, A of N * width, D of N * n_L and work of 2 * N * max_hidden.
    """
    cdef Py_ssize_t nL = s.sizes[s.n_layers]
    cdef double loss
    forward(s, theta, X, N, Z, A)
    loss = loss_grad_rows(s.loss, Z + N * s.h_off[s.n_layers - 1], Y, sw, N,
                          nL, 1.0 / sw_sum, D if grad != NULL else NULL)
    if grad != NULL:
        backward(s, theta, X, N, Z, A, D, 1, work, GRAD, grad)
    return loss / sw_sum + add_l2(s, theta, alpha / sw_sum, grad)


# ------------------------------------------------------------ Python layer
# Thin entry points: arrays arrive validated, C-contiguous and of one dtype;
# the caller passes the (Z, A, D, work) workspace (see workspace_sizes).
cdef inline const floating* _opt_ptr(const floating[::1] v) noexcept:
    return NULL if v is None else &v[0]


def workspace_sizes(NetPlan plan, Py_ssize_t N, Py_ssize_t k):
    """Entries of the (Z, A, D, work) buffers for N samples, k vectors."""
    s = &plan.spec
    nL = s.sizes[s.n_layers]
    return (N * s.width, N * s.width, max(k, 1) * N * nL,
            2 * max(k, 1) * N * s.max_hidden)


def loss_grad(NetPlan plan, const floating[::1] theta, const floating[:, ::1] X,
              const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
              double alpha, floating[::1] grad, ws):
    """Objective value; writes its gradient into grad unless grad is None."""
    cdef floating[::1] Z, A, D, work
    Z, A, D, work = ws
    cdef floating* g = NULL if grad is None else &grad[0]
    cdef const floating* swp = _opt_ptr(sw)
    cdef double out
    with nogil:
        out = loss_grad_kernel(&plan.spec, &theta[0], &X[0, 0], &Y[0, 0], swp,
                               X.shape[0], sw_sum, alpha, &Z[0], &A[0],
                               &D[0], &work[0], g)
    return out


def raw_output(NetPlan plan, const floating[::1] theta,
               const floating[:, ::1] X, floating[:, ::1] out, bint link, ws):
    """out = z_L (raw) or link(z_L), shape (N, n_L)."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], nL = s.sizes[s.n_layers]
    cdef floating[::1] Z, A, D, work
    Z, A, D, work = ws
    cdef floating* zL = &Z[0] + N * s.h_off[s.n_layers - 1]
    cdef Py_ssize_t i
    with nogil:
        forward(s, &theta[0], &X[0, 0], N, &Z[0], &A[0])
        if link:
            link_rows(s.loss, zL, &out[0, 0], N, nL)
        else:
            for i in range(N * nL):
                (&out[0, 0])[i] = zL[i]


def per_sample_grads(NetPlan plan, const floating[::1] theta,
                     const floating[:, ::1] X, const floating[:, ::1] Y,
                     floating[:, ::1] out, ws):
    """out[i] = gradient of the raw per-sample loss l_i, shape (N, P)."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], nL = s.sizes[s.n_layers]
    cdef floating[::1] Z, A, D, work
    Z, A, D, work = ws
    with nogil:
        forward(s, &theta[0], &X[0, 0], N, &Z[0], &A[0])
        loss_grad_rows(s.loss, &Z[0] + N * s.h_off[s.n_layers - 1], &Y[0, 0],
                       <const floating*>NULL, N, nL, 1.0, &D[0])
        backward(s, &theta[0], &X[0, 0], N, &Z[0], &A[0], &D[0], 1, &work[0],
                 PER_SAMPLE, &out[0, 0])


def jacobian(NetPlan plan, const floating[::1] theta, const floating[:, ::1] X,
             floating[:, ::1] out, ws):
    """out[i * n_L + c] = d z_L(x_i)_c / d theta, shape (N * n_L, P)."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], nL = s.sizes[s.n_layers], c, i
    cdef floating[::1] Z, A, D, work
    Z, A, D, work = ws
    # Virtual output c: the unit vector e_c for every sample (block c of D).
    Dn = np.asarray(D).reshape(nL, N, nL)
    Dn[...] = 0
    for c in range(nL):
        Dn[c, :, c] = 1
    with nogil:
        forward(s, &theta[0], &X[0, 0], N, &Z[0], &A[0])
        backward(s, &theta[0], &X[0, 0], N, &Z[0], &A[0], &D[0], nL, &work[0],
                 PER_SAMPLE, &out[0, 0])
