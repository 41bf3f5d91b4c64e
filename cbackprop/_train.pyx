"""Whole-epoch minibatch training loops (SGD with momentum, Adam).

One call runs a full epoch with the GIL released: gather the batch rows in
the epoch's order, forward, backward, parameter update, loss accumulation.
Python runs once per epoch (shuffling, verbose output, stopping tests).
The updates reproduce scikit-learn's SGDOptimizer and AdamOptimizer
operation for operation, on the flat parameter vector.
"""
import numpy as np
from cython cimport floating
from libc.math cimport sqrt, sqrtf, pow, isfinite
from libc.string cimport memcpy
from libc.stdint cimport int32_t, int64_t

from cython.parallel cimport prange
from cbackprop._network cimport (NetPlan, NetSpec, Batch, Region, FirstLayout,
                                 Workspace, Pass, make_batch, make_pass, sub_batch,
                                 put, first_layout, row_blocks, block_start, Cut, task_range,
                                 task_sq, block_pass, task_grad, split_grad, batch_flops,
                                 set_input, csr_index, cut_rows, MAX_BLOCKS, MAX_TASKS)
from cbackprop._interrupt cimport check_interrupt
from cbackprop._threads cimport (Team, team_open, team_close, blas_open,
                                 thread_limit, LOSS_GRAD, EPOCH, PREDICT)

cdef enum:
    INTERRUPT_EVERY = 8      # batches between two signal checks

cdef struct Optim:
    bint adam
    double lr           # SGD learning rate, or Adam's learning_rate_init
    double momentum
    bint nesterov
    double beta1
    double beta2
    double eps
    long t              # Adam time step: updates done so far


cdef void _sgd_range(const Optim* o, floating* theta, const floating* g,
                     floating* vel, Py_ssize_t n, floating l2) noexcept nogil:
    """vel = momentum vel - lr (g + l2 theta); theta += vel, or Nesterov's
    look-ahead step."""
    cdef Py_ssize_t j
    cdef floating mom = <floating>o.momentum, lr = <floating>o.lr, u, gj
    if o.nesterov:
        for j in range(n):
            gj = g[j] + l2 * theta[j]
            u = mom * vel[j] - lr * gj
            vel[j] = u
            theta[j] += mom * u - lr * gj
    else:
        for j in range(n):
            u = mom * vel[j] - lr * (g[j] + l2 * theta[j])
            vel[j] = u
            theta[j] += u


cdef void _adam_range(const Optim* o, floating lr, floating* theta,
                      const floating* g, floating* m, floating* v,
                      Py_ssize_t n, floating l2) noexcept nogil:
    """Adam on n parameters whose gradient is g + l2 theta."""
    cdef Py_ssize_t j
    cdef floating b1 = <floating>o.beta1, b2 = <floating>o.beta2
    cdef floating c1 = <floating>(1 - o.beta1), c2 = <floating>(1 - o.beta2)
    cdef floating eps = <floating>o.eps, gj
    for j in range(n):
        gj = g[j] + l2 * theta[j]
        m[j] = b1 * m[j] + c1 * gj
        v[j] = b2 * v[j] + c2 * (gj * gj)
        # sqrtf for float32: C's sqrt would widen the whole expression to
        # double (conversions, half-width vectors) and round differently.
        if floating is float:
            theta[j] += -lr * m[j] / (sqrtf(v[j]) + eps)
        else:
            theta[j] += -lr * m[j] / (sqrt(v[j]) + eps)


cdef double _step_size(Optim* o) noexcept nogil:
    """Adam: count the step and return its learning rate with the bias
    corrections folded in (0 for SGD)."""
    if not o.adam:
        return 0
    o.t += 1
    return o.lr * sqrt(1 - pow(o.beta2, o.t)) / (1 - pow(o.beta1, o.t))


cdef void _update_task(const NetSpec* s, const Cut* c, const Optim* o,
                       floating lr, Py_ssize_t t, floating* theta, const floating* g,
                       floating* s1, floating* s2, double l2) noexcept nogil:
    """One step on gradient task t's parameters (rows p0 .. p1 of W_l, and
    b_l with the last rows) of the objective whose gradient is g plus the
    L2 penalty's l2 W: the penalty is added in the update's own pass."""
    cdef int l
    cdef Py_ssize_t p0, p1
    task_range(c, t, &l, &p0, &p1)
    cdef Py_ssize_t nout = s.sizes[l + 1]
    _update_range(o, lr, theta, g, s1, s2, s.w_off[l] + p0 * nout,
                  (p1 - p0) * nout, <floating>l2)
    if p1 == s.sizes[l]:
        _update_range(o, lr, theta, g, s1, s2, s.b_off[l], nout, 0)


cdef inline void _update_range(const Optim* o, floating lr, floating* theta,
                               const floating* g, floating* s1, floating* s2,
                               Py_ssize_t off, Py_ssize_t n,
                               floating l2) noexcept nogil:
    if o.adam:
        _adam_range(o, lr, theta + off, g + off, s1 + off, s2 + off, n, l2)
    else:
        _sgd_range(o, theta + off, g + off, s1 + off, n, l2)


cdef void _gather_rows(const floating* src, const Py_ssize_t* idx,
                       Py_ssize_t n, Py_ssize_t d, floating* dst) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        memcpy(dst + i * d, src + idx[i] * d, d * sizeof(floating))


cdef void _label_rows(const unsigned char* src, const Py_ssize_t* idx,
                      Py_ssize_t start, Py_ssize_t n, Py_ssize_t d,
                      floating* dst) noexcept nogil:
    """dst = rows idx[0:n] (or start:start+n) of 0/1 labels, as floating."""
    cdef Py_ssize_t i, j, r
    for i in range(n):
        r = idx[i] if idx != NULL else start + i
        for j in range(d):
            dst[i * d + j] = src[r * d + j]


cdef void _gather_csr(const csr_index* ptr, const csr_index* ind,
                      const floating* val, const Py_ssize_t* idx, Py_ssize_t n,
                      csr_index* bptr, csr_index* bind,
                      floating* bval) noexcept nogil:
    """The CSR rows idx[0:n], packed into bptr (n + 1), bind, bval."""
    cdef Py_ssize_t i, r, c, at = 0
    bptr[0] = 0
    for i in range(n):
        r = idx[i]
        c = ptr[r + 1] - ptr[r]
        memcpy(bind + at, ind + ptr[r], c * sizeof(csr_index))
        memcpy(bval + at, val + ptr[r], c * sizeof(floating))
        at += c
        bptr[i + 1] = <csr_index>at


cdef struct CsrBuffer:
    # A batch's gathered CSR rows: batch + 1 offsets, and room for the
    # indices and values of the `batch` longest rows.
    void* ptr
    void* ind
    void* val


cdef void _csr_batch(const NetSpec* s, const Batch* data,
                     const floating* val, const Py_ssize_t* idx,
                     Py_ssize_t start, Py_ssize_t nb, const CsrBuffer* cb,
                     Batch* mb) noexcept nogil:
    """mb's input = CSR rows idx[0:nb] of data (values val), gathered into
    cb, or rows start .. start + nb in place when idx is NULL."""
    cdef Batch part
    if idx == NULL:
        part = sub_batch(s, data, start, nb)
        mb.Xptr = part.Xptr
    elif data.idx64:
        _gather_csr(<const int64_t*>data.Xptr, <const int64_t*>data.Xind,
                    val, idx, nb, <int64_t*>cb.ptr,
                    <int64_t*>cb.ind, <floating*>cb.val)
        mb.Xptr = cb.ptr
    else:
        _gather_csr(<const int32_t*>data.Xptr, <const int32_t*>data.Xind,
                    val, idx, nb, <int32_t*>cb.ptr,
                    <int32_t*>cb.ind, <floating*>cb.val)
        mb.Xptr = cb.ptr
    mb.X = NULL
    mb.idx64 = data.idx64
    mb.Xind = data.Xind if idx == NULL else cb.ind
    mb.Xdata = data.Xdata if idx == NULL else cb.val


cdef struct Schedule:
    const Py_ssize_t* order       # visiting order, or NULL: stored order, no gather
    const unsigned char* Y8       # 0/1 labels (N, n_L) as bytes, or NULL (Y floating)
    Py_ssize_t batch              # rows per update
    CsrBuffer csr                 # batch rows of CSR X
    const Cut* cut                # the epoch's cut (cut_rows of a batch)


cdef struct EpochLayout:
    FirstLayout first           # loss_grad_kernel's regions, batch rows
    Region Xb, Yb, swb          # gathered batch rows (batch n_0, batch n_L, batch)
    Region grad                 # P


cdef class EpochWorkspace(Workspace):
    """run_epoch's buffers for batches of at most n_rows rows: the
    first-order regions (FirstOrderWorkspace's), the gathered rows Xb, Yb,
    swb and the batch gradient. k = 1 for dense X; k = 0 for CSR X, whose
    batches need no dense Xb (the region is empty)."""
    cdef EpochLayout lay

    cdef Py_ssize_t _layout(self, Py_ssize_t N, Py_ssize_t k) noexcept:
        cdef const NetSpec* s = &self.plan.spec
        cdef Py_ssize_t at = first_layout(s, N, 1, 0, &self.lay.first)
        at = put(&self.lay.Xb, at, N * s.sizes[0] if k > 0 else 0)
        at = put(&self.lay.Yb, at, N * s.sizes[s.n_layers])
        at = put(&self.lay.swb, at, N)
        return put(&self.lay.grad, at, s.n_params)

    cdef dict _regions(self):
        return self.lay


cdef void _batch_rows(const NetSpec* s, const Batch* data, const Schedule* sc,
                      Py_ssize_t start, Py_ssize_t r0, Py_ssize_t nb,
                      floating* Xb, floating* Yb) noexcept nogil:
    """Rows r0 .. r0 + nb of the batch starting at `start`: gathered into
    Xb, Yb in the epoch's order, and 0/1 labels made floating."""
    cdef Py_ssize_t n0 = s.sizes[0], nL = s.sizes[s.n_layers]
    cdef const Py_ssize_t* order = sc.order
    if order != NULL:
        if data.X != NULL:
            _gather_rows(<const floating*>data.X, order + start + r0, nb, n0, Xb + r0 * n0)
        if sc.Y8 == NULL:
            _gather_rows(<const floating*>data.Y, order + start + r0, nb, nL, Yb + r0 * nL)
    if sc.Y8 != NULL:
        # Class labels stay 0/1 bytes (an eighth of float64 targets)
        # and become floating rows batch by batch.
        _label_rows(sc.Y8, order + start + r0 if order != NULL else NULL, start + r0,
                    nb, nL, Yb + r0 * nL)


cdef Batch _batch(const NetSpec* s, const Batch* data, const Schedule* sc,
                  Py_ssize_t start, Py_ssize_t nb, floating* w,
                  const EpochLayout* lay) noexcept nogil:
    """The batch of rows start .. start + nb (sample weights gathered, their
    sum W; alpha 0: the penalty's gradient is added by the update)."""
    cdef Py_ssize_t n0 = s.sizes[0], nL = s.sizes[s.n_layers], i
    cdef const floating* sw = <const floating*>data.sw
    cdef floating* swb = w + lay.swb.off
    cdef const floating* xp = w + lay.Xb.off
    cdef const floating* yp = w + lay.Yb.off
    cdef const floating* wp = NULL
    cdef double wsum = nb
    if data.X == NULL:
        xp = NULL
    elif sc.order == NULL:
        xp = <const floating*>data.X + start * n0
    if sc.order == NULL and sc.Y8 == NULL:
        yp = <const floating*>data.Y + start * nL
    if sw != NULL:
        if sc.order != NULL:
            _gather_rows(sw, sc.order + start, nb, 1, swb)
            wp = swb
        else:
            wp = sw + start
        wsum = 0.0
        for i in range(nb):
            wsum += wp[i]
    cdef Batch mb = make_batch(xp, yp, wp, nb, wsum, 0.0)
    if data.X == NULL:
        # CSR rows are gathered here, before the row blocks: a block's
        # offsets depend on the rows before it.
        _csr_batch(s, data, <const floating*>data.Xdata,
                   sc.order + start if sc.order != NULL else NULL, start, nb,
                   &sc.csr, &mb)
    return mb


cdef double _train_batch(const NetSpec* s, const Batch* data, const Schedule* sc,
                         Optim* o, Py_ssize_t start, Py_ssize_t nb,
                         floating* theta, floating* s1, floating* s2,
                         floating* w, const EpochLayout* lay) noexcept nogil:
    """One update on the batch at `start` on a team (row blocks: gather,
    forward, loss, deltas, and with split_grad the block's gradient;
    gradient tasks: their parameters' gradient, or sum of the blocks', and
    update); returns the batch objective before the update (NaN or inf: no
    update)."""
    cdef Batch mb = _batch(s, data, sc, start, nb, w, lay)
    cdef const Cut* c = sc.cut
    cdef Pass p = make_pass(s, &mb, w, &lay.first, c)
    cdef floating* grad = w + lay.grad.off
    cdef Py_ssize_t B = row_blocks(c, nb), j, t, r0
    cdef double parts[MAX_BLOCKS]
    cdef double sq[MAX_TASKS]
    cdef double loss = 0.0, reg = 0.0, l2 = data.alpha / mb.sw_sum
    cdef floating lr
    cdef Team team
    cdef bint split = split_grad(s, &p, B)
    team_open(&team, EPOCH, batch_flops(s, nb, True), max(B, c.n_tasks))
    # Static schedules: block j and task t stay on one thread from batch
    # to batch, with their rows, partial gradient and optimizer state.
    for j in prange(B, num_threads=team.n, schedule="static", chunksize=1):
        r0 = block_start(nb, B, j)
        _batch_rows(s, data, sc, start, r0, block_start(nb, B, j + 1) - r0,
                    w + lay.Xb.off, w + lay.Yb.off)
        parts[j] = block_pass(s, &mb, theta, &p, j, B, split, grad)
    for j in range(B):
        loss += parts[j]
    if not isfinite(loss):
        team_close(&team)
        return loss
    lr = <floating>_step_size(o)
    for t in prange(c.n_tasks, num_threads=team.n, schedule="static", chunksize=1):
        sq[t] = task_sq(s, c, t, theta) if l2 != 0.0 else 0.0
        task_grad(s, &p, t, B, split, grad)
        _update_task(s, c, o, lr, t, theta, grad, s1, s2, l2)
    team_close(&team)
    for t in range(c.n_tasks):
        reg += sq[t]
    return loss / mb.sw_sum + 0.5 * l2 * reg


cdef double _epoch(const NetSpec* s, const Batch* data, const Schedule* sc,
                   Optim* o, floating* theta, floating* s1, floating* s2,
                   floating* w, const EpochLayout* lay) except? -1 nogil:
    """Sum over batches of batch objective * batch size; NaN on divergence.

    Pending signals are handled every INTERRUPT_EVERY batches (Ctrl-C
    within an epoch of seconds; one GIL round trip per check), a
    KeyboardInterrupt propagating with theta as the last update left it."""
    cdef Py_ssize_t start = 0, nb, N = data.N, count = 0
    cdef double loss, total = 0.0
    while start < N:
        count += 1
        if count % INTERRUPT_EVERY == 0:
            check_interrupt()
        nb = sc.batch if start + sc.batch <= N else N - start
        loss = _train_batch(s, data, sc, o, start, nb, theta, s1, s2, w, lay)
        if not isfinite(loss):
            return loss
        total += loss * nb
        start += nb
    return total


def run_epoch(NetPlan plan, floating[::1] theta, X, Y, const floating[::1] sw,
              const Py_ssize_t[::1] order, Py_ssize_t batch_size, double alpha,
              dict opt, floating[::1] state1, floating[::1] state2,
              EpochWorkspace ws):
    """Run one epoch in place on theta and the optimizer state.

    Parameters
    ----------
    plan : NetPlan
    theta : (P,) parameters, updated in place
    X, Y : (N, n_0), (N, n_L) training data, X dense or CSR rows (each
        batch's rows gathered into a batch CSR buffer), Y of X's dtype or
        0/1 labels as uint8 (converted batch by batch); sw : (N,) or None
    order : (N,) visiting order, or None for the stored order (no gather)
    batch_size : rows per update
    alpha : L2 penalty of the objective
    opt : dict with 'solver' ('sgd' or 'adam'), 'learning_rate', 'momentum',
        'nesterov', 'beta_1', 'beta_2', 'epsilon', 't'
    state1, state2 : (P,) SGD velocity (state2 unused) or Adam m, v
    ws : EpochWorkspace of at least batch_size rows (k = 1 for dense X)

    Returns
    -------
    accumulated : float, sum of batch objective times batch size (NaN or
        inf as soon as a batch diverges; the epoch stops there)
    t : int, Adam's time step after the epoch
    """
    cdef bint dense = isinstance(X, np.ndarray)
    ws.check(min(batch_size, X.shape[0]), dense, sizeof(floating))
    cdef Optim o
    o.adam = opt["solver"] == "adam"
    o.lr = opt["learning_rate"]
    o.momentum = opt.get("momentum", 0.0)
    o.nesterov = opt.get("nesterov", False)
    o.beta1 = opt.get("beta_1", 0.9)
    o.beta2 = opt.get("beta_2", 0.999)
    o.eps = opt.get("epsilon", 1e-8)
    o.t = opt.get("t", 0)
    cdef Schedule sc
    sc.order = NULL if order is None else &order[0]
    sc.batch = batch_size
    sc.Y8 = NULL
    sc.cut = cut_rows(&plan.spec, thread_limit(), min(batch_size, X.shape[0]))
    cdef floating* s2 = &state2[0] if o.adam else NULL
    cdef const floating[:, ::1] Yf
    cdef const unsigned char[:, ::1] Yu
    cdef const floating* yp = NULL
    if Y.dtype == np.uint8:
        Yu = Y
        sc.Y8 = &Yu[0, 0]
    else:
        Yf = Y
        yp = &Yf[0, 0]
    cdef const floating* swp = NULL if sw is None else &sw[0]
    cdef Py_ssize_t N = X.shape[0]
    cdef Batch data = make_batch(<const floating*>NULL, yp, swp, N, N, alpha)
    set_input(&data, X, sizeof(floating))
    if not dense and order is not None:
        buffers = _csr_buffers(X, batch_size)
        sc.csr.ptr = <void*><size_t>buffers[0].ctypes.data
        sc.csr.ind = <void*><size_t>buffers[1].ctypes.data
        sc.csr.val = <void*><size_t>buffers[2].ctypes.data
    cdef double total
    with nogil:
        total = _epoch(&plan.spec, &data, &sc, &o, &theta[0], &state1[0], s2,
                       <floating*>ws.base, &ws.lay)
    return total, o.t


def _csr_buffers(X, Py_ssize_t batch_size):
    """Arrays for one gathered batch of CSR rows: offsets (batch + 1),
    indices and values sized for the batch_size longest rows."""
    counts = np.diff(X.indptr)
    b = min(batch_size, counts.shape[0])
    cap = int(np.partition(counts, counts.shape[0] - b)[counts.shape[0] - b:].sum())
    return (np.empty(b + 1, X.indptr.dtype), np.empty(max(cap, 1), X.indices.dtype),
            np.empty(max(cap, 1), X.data.dtype))
