"""First-order passes of an MLP over row-major batches.

Cache layout: one buffer ``Z`` (and one ``A``) of ``N * width`` entries holds
every layer's pre-activations (activations) as consecutive row-major
``(N, n_l)`` blocks, layer l at ``N * h_off[l]``. A batch of k output-space
vectors is ``(k * N, n)``: block r holds vector r for every sample, so one
GEMM per layer carries all k through the transposed Jacobian.
"""
import numpy as np
cimport cython
cimport numpy as cnp

cnp.import_array()

from cbackprop._blas cimport _axpy, _dot
from cbackprop._activations cimport act_forward, IDENTITY
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


cdef void forward(const NetSpec* s, const floating* theta, const Batch* b,
                  Py_ssize_t N, floating* Z, floating* A) noexcept nogil:
    """Z_l = A_{l-1} W_l + b_l, A_l = f(Z_l) for the first N rows of b (A_0
    = X, dense or CSR); the output layer stays raw."""
    cdef int l, L = s.n_layers
    cdef floating* z
    for l in range(L):
        z = Z + N * s.h_off[l]
        input_forward(s, l, b, A, N, theta, <floating>0.0, z)
        if l < L - 1:
            # Bias and activation fused: one pass over the block.
            act_forward(s.act, z, A + N * s.h_off[l], theta + s.b_off[l], N,
                        s.sizes[l + 1])
        else:
            act_forward(IDENTITY, z, z, theta + s.b_off[l], N, s.sizes[l + 1])


cdef void backward(const NetSpec* s, const floating* theta, const Batch* b,
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
    cdef Py_ssize_t r, half = k * N * s.max_hidden, nout
    cdef const floating* cur = D
    cdef floating* nxt
    # One gradient: the hidden layers' bias parts (column sums of their
    # deltas) are summed in the pass that forms the deltas.
    cdef bint fuse = mode == GRAD and k == 1
    for l in range(L - 1, -1, -1):
        nout = s.sizes[l + 1]
        if mode == GRAD:
            for r in range(k):
                input_grad(s, l, b, A, N, cur + r * N * nout, False,
                           not (fuse and l < L - 1), out + r * s.n_params)
        elif mode == PER_SAMPLE:
            input_rows(s, l, b, A, cur, N, k, k, 1, out)
        if l == 0:
            break
        if mode == NO_REDUCE:
            nxt = work + k * N * s.h_off[l - 1]
        else:
            nxt = work + ((L - 1 - l) % 2) * half
        backward_step(s, l, theta, Z, A, cur, N, k, nxt,
                      out + s.b_off[l - 1] if fuse else <floating*>NULL)
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


cdef double loss_value(const NetSpec* s, const Batch* b, const floating* Z,
                       floating* D) noexcept nogil:
    """sum_i w_i l_i of the batch whose forward cache is Z; D (N, n_L) gets
    the output deltas (w_i / W) dl_i/dz_i.

    The one place a loss value comes from (objective, gradient, LM trial
    steps): the same rows give the same bits whether or not the gradient
    is wanted.
    """
    cdef Py_ssize_t N = b.N
    return loss_grad_rows(s.loss, Z + N * s.h_off[s.n_layers - 1],
                          <const floating*>b.Y, <const floating*>b.sw, N,
                          s.sizes[s.n_layers], 1.0 / b.sw_sum, D)


cdef double loss_grad_kernel(const NetSpec* s, const Batch* b,
                             const floating* theta, floating* ws,
                             const FirstLayout* lay,
                             floating* grad) noexcept nogil:
    """Objective and (if grad is not NULL) its gradient, in one pass.

    ws laid out by first_layout for at least b.N rows and k = 1.
    """
    cdef floating* Z = ws + lay.Z.off
    cdef floating* A = ws + lay.A.off
    cdef floating* D = ws + lay.D.off
    cdef double loss
    forward(s, theta, b, b.N, Z, A)
    loss = loss_value(s, b, Z, D)
    if grad != NULL:
        backward(s, theta, b, b.N, Z, A, D, 1, ws + lay.work.off, GRAD, grad)
    return loss / b.sw_sum + add_l2(s, theta, b.alpha / b.sw_sum, grad)


# -------------------------------------------------------------- workspaces
cdef Py_ssize_t first_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                             Py_ssize_t at, FirstLayout* lay) noexcept nogil:
    """Regions of the first-order kernels from entry `at`; returns the end."""
    if k < 1:
        k = 1
    at = put(&lay.Z, at, N * s.width)
    at = put(&lay.A, at, N * s.width)
    at = put(&lay.D, at, k * N * s.sizes[s.n_layers])
    return put(&lay.work, at, 2 * k * N * s.max_hidden)


cdef class Workspace:
    """One buffer holding the scratch arrays of a kernel family.

    Parameters
    ----------
    plan : NetPlan
    n_rows : int
        Rows (samples) the kernels may be called on: any batch of at most
        n_rows rows (and at most k vectors) fits.
    k : int
        Stacked vectors (products, Jacobian outputs); 1 for gradients.
    dtype : float32 or float64

    The layout (``layout``: name -> (offset, length) in entries) is a C
    struct of offsets the kernels read; ``fit`` relays the buffer out for
    another row count, reallocating only when it grows. A workspace serves
    one call at a time.
    """

    def __init__(self, NetPlan plan, Py_ssize_t n_rows, Py_ssize_t k=1,
                 dtype=np.float64):
        if n_rows < 0 or k < 0:
            raise ValueError(f"n_rows and k must be >= 0, got {n_rows}, {k}")
        self.plan = plan
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.itemsize = self.dtype.itemsize
        self.n_rows = -1
        self.capacity = 0
        self.fit(n_rows, k)

    cdef Py_ssize_t _layout(self, Py_ssize_t n_rows, Py_ssize_t k) noexcept:
        return 0

    cdef dict _regions(self):
        return {}

    cpdef Workspace fit(self, Py_ssize_t n_rows, Py_ssize_t k=1):
        """Lay the buffer out for n_rows rows and k vectors; returns self."""
        if n_rows == self.n_rows and k == self.k:
            return self
        self.size = self._layout(n_rows, k)
        if self.size > self.capacity:
            self._buffer = np.empty(self.size, self.dtype)
            self.capacity = self.size
            self.base = <char*><size_t>self._buffer.ctypes.data
        self.n_rows = n_rows
        self.k = k
        return self

    cdef int check(self, Py_ssize_t n_rows, Py_ssize_t k,
                   Py_ssize_t itemsize) except -1:
        if n_rows > self.n_rows or k > self.k or itemsize != self.itemsize:
            raise ValueError(
                f"{type(self).__name__} laid out for {self.n_rows} rows, k = "
                f"{self.k}, {self.dtype.name}: called with {n_rows} rows, k = {k}, "
                f"{itemsize}-byte floats")
        return 0

    @property
    def layout(self):
        """name -> (offset, length) in entries of the buffer."""
        out = {}
        _flatten(self._regions(), "", out)
        return out

    @property
    def nbytes(self):
        """Bytes the current layout uses (the buffer may be larger)."""
        return self.size * self.itemsize

    def array(self, name):
        """The region `name` as a 1-D view of the buffer."""
        off, n = self.layout[name]
        return self._buffer[off:off + n]


def _flatten(dict regions, str prefix, dict out):
    for name, r in regions.items():
        if "off" in r:
            out[prefix + name] = (r["off"], r["n"])
        else:
            _flatten(r, prefix + name + ".", out)


cdef class FirstOrderWorkspace(Workspace):
    """Forward cache Z, A (n_rows * width each), output deltas D
    (k * n_rows * n_L) and the backward pass's two delta buffers (2 k n_rows
    max_hidden): loss_grad, raw_output, per_sample_grads (k = 1), jacobian
    (k = n_L)."""

    cdef Py_ssize_t _layout(self, Py_ssize_t n_rows, Py_ssize_t k) noexcept:
        return first_layout(&self.plan.spec, n_rows, k, 0, &self.lay)

    cdef dict _regions(self):
        return self.lay


# ------------------------------------------------------------ Python layer
# Thin entry points: arrays arrive validated, C-contiguous and of one dtype;
# the caller passes a workspace laid out for at least the rows given.
cdef inline const floating* _opt_ptr(const floating[::1] v) noexcept:
    return NULL if v is None else &v[0]


cdef int set_input(Batch* b, object X, Py_ssize_t itemsize) except -1:
    """Point b's input at X: a C-contiguous 2-D ndarray, or CSR rows (an
    object with data, indices, indptr arrays: cbackprop._sparse.CSRRows) of
    `itemsize`-byte floats."""
    if isinstance(X, np.ndarray):
        if X.ndim != 2 or not X.flags.c_contiguous or X.dtype.itemsize != itemsize \
                or X.dtype.kind != "f":
            raise ValueError(f"X must be a C-contiguous 2-D array of {itemsize}-byte "
                             f"floats, got {X.dtype} of shape {X.shape}")
        b.X = cnp.PyArray_DATA(X)
        return 0
    data, indices, indptr = X.data, X.indices, X.indptr
    if data.dtype.itemsize != itemsize or data.dtype.kind != "f" \
            or indices.dtype != indptr.dtype or indices.dtype not in (np.int32, np.int64) \
            or not (data.flags.c_contiguous and indices.flags.c_contiguous
                    and indptr.flags.c_contiguous):
        raise ValueError(f"CSR X must hold contiguous {itemsize}-byte floats and int32 "
                         f"or int64 indices, got {data.dtype}, {indices.dtype}, "
                         f"{indptr.dtype}")
    b.X = NULL
    b.Xdata = cnp.PyArray_DATA(data)
    b.Xind = cnp.PyArray_DATA(indices)
    b.Xptr = cnp.PyArray_DATA(indptr)
    b.idx64 = indices.dtype == np.int64
    return 0


def loss_grad(NetPlan plan, const floating[::1] theta, X,
              const floating[:, ::1] Y, const floating[::1] sw, double sw_sum,
              double alpha, floating[::1] grad, FirstOrderWorkspace ws):
    """Objective value; writes its gradient into grad unless grad is None.
    X: (N, n_0) dense or CSR rows."""
    ws.check(X.shape[0], 1, sizeof(floating))
    cdef floating* g = NULL if grad is None else &grad[0]
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0], _opt_ptr(sw),
                              <Py_ssize_t>X.shape[0], sw_sum, alpha)
    set_input(&b, X, sizeof(floating))
    cdef double out
    with nogil:
        out = loss_grad_kernel(&plan.spec, &b, &theta[0], <floating*>ws.base,
                               &ws.lay, g)
    return out


def raw_output(NetPlan plan, const floating[::1] theta, X,
               floating[:, ::1] out, bint link, FirstOrderWorkspace ws):
    """out = z_L (raw) or link(z_L), shape (N, n_L); X dense or CSR rows."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], nL = s.sizes[s.n_layers], i
    ws.check(N, 0, sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, <const floating*>NULL,
                              <const floating*>NULL, N, 1.0, 0.0)
    set_input(&b, X, sizeof(floating))
    cdef floating* Z = <floating*>ws.base + ws.lay.Z.off
    cdef floating* zL = Z + N * s.h_off[s.n_layers - 1]
    with nogil:
        forward(s, &theta[0], &b, N, Z, <floating*>ws.base + ws.lay.A.off)
        if link:
            link_rows(s.loss, zL, &out[0, 0], N, nL)
        else:
            for i in range(N * nL):
                (&out[0, 0])[i] = zL[i]


def per_sample_grads(NetPlan plan, const floating[::1] theta, X,
                     const floating[:, ::1] Y, floating[:, ::1] out,
                     FirstOrderWorkspace ws):
    """out[i] = gradient of the raw per-sample loss l_i, shape (N, P); X
    dense or CSR rows."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0]
    ws.check(N, 1, sizeof(floating))
    cdef floating* w = <floating*>ws.base
    cdef Batch b = make_batch(<const floating*>NULL, &Y[0, 0],
                              <const floating*>NULL, N, 1.0, 0.0)
    set_input(&b, X, sizeof(floating))
    with nogil:
        forward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off)
        loss_value(s, &b, w + ws.lay.Z.off, w + ws.lay.D.off)
        backward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off,
                 w + ws.lay.D.off, 1, w + ws.lay.work.off, PER_SAMPLE,
                 &out[0, 0])


def jacobian(NetPlan plan, const floating[::1] theta, X, floating[:, ::1] out,
             FirstOrderWorkspace ws):
    """out[i * n_L + c] = d z_L(x_i)_c / d theta, shape (N * n_L, P); X
    dense or CSR rows."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], nL = s.sizes[s.n_layers], c
    ws.check(N, nL, sizeof(floating))
    cdef floating* w = <floating*>ws.base
    # Virtual output c: the unit vector e_c for every sample (block c of D).
    Dn = ws.array("D")[:nL * N * nL].reshape(nL, N, nL)
    Dn[...] = 0
    for c in range(nL):
        Dn[c, :, c] = 1
    cdef Batch b = make_batch(<const floating*>NULL, <const floating*>NULL,
                              <const floating*>NULL, N, 1.0, 0.0)
    set_input(&b, X, sizeof(floating))
    with nogil:
        forward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off)
        backward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off,
                 w + ws.lay.D.off, nL, w + ws.lay.work.off, PER_SAMPLE,
                 &out[0, 0])
