"""First-order passes of an MLP over row-major batches.

Cache layout: one buffer ``Z`` (and one ``A``) of ``N * width`` entries holds
every layer's pre-activations (activations) as consecutive row-major
``(N, n_l)`` blocks, layer l at ``N * h_off[l]``. A batch of k output-space
vectors is ``(k * N, n)``: block r holds vector r for every sample, so one
GEMM per layer carries all k through the transposed Jacobian.
"""
import os

import numpy as np
cimport cython
cimport numpy as cnp

cnp.import_array()

from cbackprop._blas cimport _axpy, _dot
from cbackprop._activations cimport act_forward, IDENTITY
from cbackprop._losses cimport loss_grad_rows, link_rows
from cbackprop._threads cimport (Team, team_open, team_close, blas_open,
                                 thread_limit, LOSS_GRAD, EPOCH, PREDICT)
from cython.parallel cimport prange


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
        # Cut k serves thread limits up to 2**k: 2**k row blocks, gradient
        # pieces for two per thread (one thread: whole layers).
        blocks = [1 << k for k in range(MAX_CUTS) if (1 << k) <= _machine_pieces()]
        tasks = [_gradient_tasks(sizes, 2 * p if p > 1 else 1) for p in blocks]
        for a in [sizes, w_off, b_off, h_off] + tasks:
            a.flags.writeable = False
        self._arrays = (sizes, w_off, b_off, h_off)
        self._tasks = tasks
        cdef const Py_ssize_t[::1] sv = sizes, wv = w_off, bv = b_off, hv = h_off
        cdef const Py_ssize_t[:, ::1] tv
        self.spec.n_cuts = len(blocks)
        for k, p in enumerate(blocks):
            tv = tasks[k]
            self.spec.cuts[k].max_blocks = p
            self.spec.cuts[k].n_tasks = tv.shape[0]
            self.spec.cuts[k].tasks = &tv[0, 0]
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

    def cut(self, threads):
        """How the blocked kernels cut work at a thread limit: (row blocks
        of a large batch, read-only (T, 3) intp rows (layer, p0, p1) of the
        gradient's pieces: rows p0 .. p1 of W_l, b_l with the last)."""
        cdef const Cut* c = cut_for(&self.spec, <int>threads)
        return c.max_blocks, self._tasks[c - &self.spec.cuts[0]]

    def row_blocks(self, threads, Py_ssize_t rows):
        """Row blocks of the first-order kernels over `rows` rows at a
        thread limit (cut_rows)."""
        return row_blocks(cut_rows(&self.spec, <int>threads, rows), rows)

    @property
    def offsets(self):
        """Read-only (sizes, w_off, b_off, h_off) intp arrays: layer widths,
        offsets of W_l and b_l in theta, and of layer l in stacked caches."""
        return self._arrays


cdef const Cut* cut_rows(const NetSpec* s, int limit, Py_ssize_t N) noexcept nogil:
    """The cut of the first-order kernels over N rows (loss, loss_grad,
    raw_output, the sgd/adam epoch's batches): the thread limit's (one
    thread: whole GEMMs), or the machine's where its finer row blocks bring
    every GEMM under SMALL_GEMM multiply-adds while the limit's leave one
    above it.

    Each row block packs the weights again: with the processor count's two
    blocks workload b's float32 epoch ran 7-15% slower at one thread on the
    AVX-512 VM, and halving a batch's GEMMs cost 2-10% at every shape
    measured but one. The exception is OpenBLAS's small-matrix kernels
    (M N K <= 1e6 on its SkylakeX build): digits' 200 x 64 x 100 GEMM takes
    53 us whole and 2 x 18 us in halves, and its epoch 1.2x less time
    with the machine's blocks and tasks (DESIGN.md, Threads)."""
    cdef const Cut* c = cut_for(s, limit)
    cdef const Cut* m = &s.cuts[s.n_cuts - 1]
    cdef Py_ssize_t B = row_blocks(m, N), b = row_blocks(c, N)
    if (B > b and _largest_gemm(s, _block_rows(N, b)) > SMALL_GEMM
            and _largest_gemm(s, _block_rows(N, B)) <= SMALL_GEMM):
        return m
    return c


cdef Py_ssize_t _block_rows(Py_ssize_t N, Py_ssize_t B) noexcept nogil:
    """Rows of the largest of B row blocks of N rows."""
    cdef Py_ssize_t j, most = 0
    for j in range(B):
        most = max(most, block_start(N, B, j + 1) - block_start(N, B, j))
    return most


cdef double _largest_gemm(const NetSpec* s, Py_ssize_t rows) noexcept nogil:
    """Multiply-adds of the largest layer GEMM over `rows` rows (forward,
    deltas and weight gradient of a layer share rows n_{l-1} n_l)."""
    cdef int l
    cdef double most = 0.0
    for l in range(s.n_layers):
        most = max(most, <double>rows * s.sizes[l] * s.sizes[l + 1])
    return most


def _machine_pieces():
    """Most row blocks of a large batch: the processor count rounded up
    to a power of two, at most MAX_BLOCKS (the machine's, not the process's
    affinity: a thread limit above the processors cuts like the processors)."""
    n = os.cpu_count() or 1
    pieces = 1
    while pieces < n and pieces < MAX_BLOCKS:
        pieces *= 2
    return pieces


@cython.wraparound(True)
def _gradient_tasks(sizes, pieces):
    """(T, 3) intp rows (layer, p0, p1): the gradient's pieces, rows p0 .. p1
    of one W_l, about 1/pieces of the weights each (at least 2048 entries)
    so that up to pieces / 2 threads share them evenly; at most MAX_TASKS."""
    entries = sizes[:-1] * sizes[1:]
    target = max(entries.sum() / float(pieces), 2048.0)
    while True:
        tasks = []
        for l, (nin, nout) in enumerate(zip(sizes[:-1], sizes[1:])):
            pieces = int(min(nin, max(1, round(nin * nout / target))))
            tasks += [(l, nin * i // pieces, nin * (i + 1) // pieces) for i in range(pieces)]
        if len(tasks) <= MAX_TASKS:
            return np.array(tasks, dtype=np.intp).reshape(-1, 3)
        target *= 2


cdef void forward_rows(const NetSpec* s, const floating* theta,
                       const Batch* b, Py_ssize_t N, Py_ssize_t r0,
                       Py_ssize_t nb, floating* Z, floating* A) noexcept nogil:
    """Rows r0 .. r0 + nb of the forward pass over the first N rows of b
    (A_0 = X, dense or CSR): Z_l = A_{l-1} W_l + b_l, A_l = f(Z_l); the
    output layer stays raw."""
    cdef int l, L = s.n_layers
    cdef floating* z
    cdef Py_ssize_t at
    for l in range(L):
        at = N * s.h_off[l] + r0 * s.sizes[l + 1]
        z = Z + at
        if l == 0:
            first_forward(s, b, r0, nb, theta, <floating>0.0, z)
        else:
            forward_linear(s, l, theta, A + N * s.h_off[l - 1] + r0 * s.sizes[l],
                           nb, <floating>0.0, z)
        if l < L - 1:
            # Bias and activation fused: one pass over the block.
            act_forward(s.act, z, A + at, theta + s.b_off[l], nb, s.sizes[l + 1])
        else:
            act_forward(IDENTITY, z, z, theta + s.b_off[l], nb, s.sizes[l + 1])


cdef void forward(const NetSpec* s, const floating* theta, const Batch* b,
                  Py_ssize_t N, floating* Z, floating* A) noexcept nogil:
    """The forward pass over the first N rows of b (see forward_rows)."""
    forward_rows(s, theta, b, N, 0, N, Z, A)


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


cdef inline double block_loss(const NetSpec* s, const Batch* b,
                              const floating* Z, floating* D, Py_ssize_t r0,
                              Py_ssize_t nb) noexcept nogil:
    """sum_i w_i l_i over rows r0 .. r0 + nb; D (N, n_L) gets their output
    deltas (w_i / W) dl_i/dz_i."""
    cdef Py_ssize_t nL = s.sizes[s.n_layers]
    cdef const floating* sw = <const floating*>b.sw
    return loss_grad_rows(s.loss, Z + b.N * s.h_off[s.n_layers - 1] + r0 * nL,
                          <const floating*>b.Y + r0 * nL,
                          NULL if sw == NULL else sw + r0, nb, nL,
                          1.0 / b.sw_sum, D + r0 * nL)


cdef double loss_value(const NetSpec* s, const Batch* b, const floating* Z,
                       floating* D) noexcept nogil:
    """sum_i w_i l_i of the batch whose forward cache is Z; D (N, n_L) gets
    the output deltas (w_i / W) dl_i/dz_i.

    The one reduction a loss value comes from (objective, gradient, LM
    trial steps): partial sums over the row blocks of the call's cut
    (cut_rows), added in block order, as the blocked kernels add them
    whatever their team.
    """
    return cut_loss(s, cut_rows(s, thread_limit(), b.N), b, Z, D)


cdef double cut_loss(const NetSpec* s, const Cut* c, const Batch* b,
                     const floating* Z, floating* D) noexcept nogil:
    """loss_value over the row blocks of cut c."""
    cdef Py_ssize_t N = b.N, B = row_blocks(c, N), j, r0
    cdef double total = 0.0
    for j in range(B):
        r0 = block_start(N, B, j)
        total += block_loss(s, b, Z, D, r0, block_start(N, B, j + 1) - r0)
    return total


# --------------------------------------------------------- blocked kernels
cdef Pass make_pass(const NetSpec* s, const Batch* b, floating* ws,
                    const FirstLayout* lay, const Cut* cut) noexcept nogil:
    """The blocked kernels' view of a first-order workspace (the work
    region holds the hidden deltas)."""
    cdef Pass p
    p.b = b
    p.Z = ws + lay.Z.off
    p.A = ws + lay.A.off
    p.D = ws + lay.D.off
    p.H = ws + lay.work.off
    p.N = b.N
    p.cut = cut
    p.G = ws + lay.part.off
    p.room = lay.part.n // s.n_params
    return p


cdef double rows_pass(const NetSpec* s, const Batch* b, const floating* theta,
                      const Pass* p, Py_ssize_t r0, Py_ssize_t nb,
                      bint deltas) noexcept nogil:
    """Forward, loss and (with deltas) every layer's deltas for rows r0 ..
    r0 + nb; returns their sum_i w_i l_i."""
    cdef int l, L = s.n_layers
    cdef Py_ssize_t N = p.N, nin, at
    cdef floating* Z = <floating*>p.Z
    cdef floating* A = <floating*>p.A
    cdef floating* H = <floating*>p.H
    cdef const floating* src
    cdef floating* dst
    forward_rows(s, theta, p.b, N, r0, nb, Z, A)
    cdef double loss = block_loss(s, b, Z, <floating*>p.D, r0, nb)
    if not deltas:
        return loss
    for l in range(L - 1, 0, -1):
        nin = s.sizes[l]
        if l == L - 1:
            src = <const floating*>p.D + r0 * s.sizes[L]
        else:
            src = H + N * s.h_off[l] + r0 * s.sizes[l + 1]
        at = N * s.h_off[l - 1] + r0 * nin
        dst = H + at
        backward_linear(s, l, theta, src, nb, <floating>0.0, dst)
        act_backward(s.act, Z + at, A + at, dst, nb, nin, 1)
    return loss


cdef double task_sq(const NetSpec* s, const Cut* c, Py_ssize_t t,
                    const floating* theta) noexcept nogil:
    """sum of squares of task t's weights (rows p0 .. p1 of W_l)."""
    cdef int l
    cdef Py_ssize_t p0, p1, nout
    task_range(c, t, &l, &p0, &p1)
    nout = s.sizes[l + 1]
    cdef const floating* w = theta + s.w_off[l] + p0 * nout
    return _dot(<int>((p1 - p0) * nout), w, 1, w, 1)


cdef void grad_task(const NetSpec* s, const Pass* p, Py_ssize_t t,
                    floating* grad) noexcept nogil:
    """Task t's part of the data term's gradient: rows p0 .. p1 of W_l's
    block, a_in[:, p0:p1]^T delta_l over all N rows, and b_l's column sums
    when p1 = n_{l-1} (a_in = X, dense or CSR, for the first layer)."""
    cdef int l, L = s.n_layers
    cdef Py_ssize_t p0, p1, N = p.N
    task_range(p.cut, t, &l, &p0, &p1)
    cdef Py_ssize_t nin = s.sizes[l], nout = s.sizes[l + 1]
    cdef const floating* d = _deltas(s, p, l, grad)
    if l == 0:
        first_grad_rows(s, p.b, N, d, p0, p1, grad)
    else:
        _gemm(Trans, NoTrans, <int>(p1 - p0), <int>nout, <int>N, <floating>1.0,
              <const floating*>p.A + N * s.h_off[l - 1] + p0, <int>nin, d,
              <int>nout, <floating>0.0, grad + s.w_off[l] + p0 * nout, <int>nout)
    if p1 == nin:
        col_sums(d, N, nout, grad + s.b_off[l], False)


cdef inline const floating* _deltas(const NetSpec* s, const Pass* p, int l,
                                    const floating* like) noexcept nogil:
    """Layer l's deltas in p, all N rows (`like` gives the dtype)."""
    if l == s.n_layers - 1:
        return <const floating*>p.D
    return <const floating*>p.H + p.N * s.h_off[l]


cdef void task_l2(const NetSpec* s, const Cut* c, Py_ssize_t t,
                  const floating* theta, double l2, floating* grad) noexcept nogil:
    """grad += l2 W on task t's weights (rows p0 .. p1 of W_l): the
    penalty's part of a task's gradient, whichever way its data term came."""
    cdef int l
    cdef Py_ssize_t p0, p1
    task_range(c, t, &l, &p0, &p1)
    cdef Py_ssize_t nout = s.sizes[l + 1], off = s.w_off[l] + p0 * nout
    _axpy(<int>((p1 - p0) * nout), <floating>l2, theta + off, 1, grad + off, 1)


cdef bint split_grad(const NetSpec* s, const Pass* p, Py_ssize_t B) noexcept nogil:
    """Whether the gradient of p's B row blocks is the sum of the blocks'
    own gradients (block_grad, each reduced by the thread that computed the
    block, from its cache; then sum_task) rather than cut into parameter
    tasks over all rows (grad_task, each reading every block, half of them
    from the other core): when the B - 1 extra gradients take no more room
    than the batch's activations, (B - 1) P <= N width, and p has it. It
    depends on the network, the rows and the cut, never on the team."""
    return B > 1 and B - 1 <= p.room and (B - 1) * s.n_params <= p.N * s.width


cdef Py_ssize_t part_entries(const NetSpec* s, Py_ssize_t N) noexcept nogil:
    """Room for the row-block gradients beyond the first that a split_grad
    call over at most N rows may need (B - 1 <= N width / P gradients of P
    entries, B at most the machine's)."""
    return (min(row_blocks(&s.cuts[s.n_cuts - 1], N), 1 + N * s.width // s.n_params)
            - 1) * s.n_params


cdef void block_grad(const NetSpec* s, const Pass* p, Py_ssize_t j, Py_ssize_t r0,
                     Py_ssize_t nb, floating* grad) noexcept nogil:
    """Row block j's (rows r0 .. r0 + nb) gradient of its loss sum, no
    penalty: every layer reduced over the block's own rows, into grad for
    block 0 and p.G's (j - 1)-th gradient else."""
    cdef int l
    cdef floating* g = grad if j == 0 else <floating*>p.G + (j - 1) * s.n_params
    for l in range(s.n_layers):
        rows_grad(s, l, p.b, <const floating*>p.A, p.N, r0, nb,
                  _deltas(s, p, l, grad) + r0 * s.sizes[l + 1], False, True, g)


cdef double block_pass(const NetSpec* s, const Batch* b, const floating* theta,
                       const Pass* p, Py_ssize_t j, Py_ssize_t B, bint split,
                       floating* grad) noexcept nogil:
    """Row block j of p's B: forward, loss and (grad not NULL) deltas by
    rows_pass, and with split the block's own gradient (block_grad);
    returns the block's loss sum."""
    cdef Py_ssize_t r0 = block_start(p.N, B, j), nb = block_start(p.N, B, j + 1) - r0
    cdef double loss = rows_pass(s, b, theta, p, r0, nb, grad != NULL)
    if split:
        block_grad(s, p, j, r0, nb, grad)
    return loss


cdef void task_grad(const NetSpec* s, const Pass* p, Py_ssize_t t, Py_ssize_t B,
                    bint split, floating* grad) noexcept nogil:
    """Task t's part of the data term's gradient, after block_pass over
    the B blocks: the sum of the blocks' own gradients (split), or its
    rows of the parameters reduced over all N rows."""
    if split:
        sum_task(s, p, t, B, grad)
    else:
        grad_task(s, p, t, grad)


cdef void sum_task(const NetSpec* s, const Pass* p, Py_ssize_t t, Py_ssize_t B,
                   floating* grad) noexcept nogil:
    """Task t's parameters of grad (block 0's gradient) += blocks 1 .. B -
    1's, in block order: grad_task's result from the blocks' gradients."""
    cdef int l
    cdef Py_ssize_t p0, p1
    task_range(p.cut, t, &l, &p0, &p1)
    cdef Py_ssize_t nout = s.sizes[l + 1], off = s.w_off[l] + p0 * nout
    _add_blocks(s, p, B, off, (p1 - p0) * nout, grad)
    if p1 == s.sizes[l]:
        _add_blocks(s, p, B, s.b_off[l], nout, grad)


cdef inline void _add_blocks(const NetSpec* s, const Pass* p, Py_ssize_t B,
                             Py_ssize_t off, Py_ssize_t n, floating* grad) noexcept nogil:
    add_parts(grad + off, <const floating*>p.G + off, B - 1, s.n_params, n)


cdef double work_flops(const NetSpec* s, Py_ssize_t N, double k) noexcept nogil:
    """k times the flops of one forward pass over N rows (a kernel's size
    class for the thread teams)."""
    cdef int l
    cdef double f = 0.0
    for l in range(s.n_layers):
        f += 2.0 * N * s.sizes[l] * s.sizes[l + 1]
    return f * k


cdef double batch_flops(const NetSpec* s, Py_ssize_t N, bint grad) noexcept nogil:
    """Flops of a loss (and gradient: three passes) over N rows."""
    return work_flops(s, N, 3.0 if grad else 1.0)


cdef double blocked_loss_grad(const NetSpec* s, const Batch* b,
                              const floating* theta, const Pass* p,
                              floating* grad) noexcept nogil:
    """Objective and (if grad is not NULL) its gradient on a team: row
    blocks, then gradient tasks of p's cut (see row_blocks)."""
    cdef const Cut* c = p.cut
    cdef Py_ssize_t N = b.N, B = row_blocks(c, N), j, t
    cdef double parts[MAX_BLOCKS]
    cdef double sq[MAX_TASKS]
    cdef double loss = 0.0, reg = 0.0, coef = b.alpha / b.sw_sum
    cdef bint split = grad != NULL and split_grad(s, p, B)
    cdef Team team
    team_open(&team, LOSS_GRAD, batch_flops(s, N, grad != NULL), max(B, c.n_tasks))
    for j in prange(B, num_threads=team.n, schedule="static", chunksize=1):
        parts[j] = block_pass(s, b, theta, p, j, B, split, grad)
    for t in prange(c.n_tasks, num_threads=team.n, schedule="static", chunksize=1):
        sq[t] = task_sq(s, c, t, theta) if coef != 0.0 else 0.0
        if grad != NULL:
            task_grad(s, p, t, B, split, grad)
            if coef != 0.0:
                task_l2(s, c, t, theta, coef, grad)
    team_close(&team)
    for j in range(B):
        loss += parts[j]
    for t in range(c.n_tasks):
        reg += sq[t]
    return loss / b.sw_sum + 0.5 * coef * reg


cdef double loss_grad_kernel(const NetSpec* s, const Batch* b,
                             const floating* theta, floating* ws,
                             const FirstLayout* lay,
                             floating* grad) noexcept nogil:
    """Objective and (if grad is not NULL) its gradient, in one pass.

    ws laid out by first_layout for at least b.N rows and k = 1.
    """
    cdef Pass p = make_pass(s, b, ws, lay, cut_rows(s, thread_limit(), b.N))
    return blocked_loss_grad(s, b, theta, &p, grad)


# -------------------------------------------------------------- workspaces
cdef Py_ssize_t first_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                             Py_ssize_t at, FirstLayout* lay) noexcept nogil:
    """Regions of the first-order kernels from entry `at`; returns the end."""
    if k < 1:
        k = 1
    at = put(&lay.Z, at, N * s.width)
    at = put(&lay.A, at, N * s.width)
    at = put(&lay.D, at, k * N * s.sizes[s.n_layers])
    # Two ping-pong delta buffers (backward), or every hidden layer's
    # deltas (the blocked kernels' H).
    at = put(&lay.work, at, k * N * max(2 * s.max_hidden, s.width - s.sizes[s.n_layers]))
    return put(&lay.part, at, part_entries(s, N))


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
            self._buffer = _aligned(self.size, self.dtype)
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


def _aligned(Py_ssize_t n, dtype):
    """n entries starting on a 64-byte boundary: every workspace (one per
    thread and family) then has the same alignment, and BLAS kernels,
    whose rounding can depend on it, give the same bits in all of them."""
    cdef Py_ssize_t item = np.dtype(dtype).itemsize, pad = 64 // item
    raw = np.empty(n + pad, dtype)
    cdef Py_ssize_t shift = ((-raw.ctypes.data) % 64) // item
    return raw[shift:shift + n]


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
    """out = z_L (raw) or link(z_L), shape (N, n_L); X dense or CSR rows;
    row blocks on a team."""
    cdef NetSpec* s = &plan.spec
    cdef Py_ssize_t N = X.shape[0], B, j
    ws.check(N, 0, sizeof(floating))
    cdef Batch b = make_batch(<const floating*>NULL, <const floating*>NULL,
                              <const floating*>NULL, N, 1.0, 0.0)
    set_input(&b, X, sizeof(floating))
    cdef floating* Z = <floating*>ws.base + ws.lay.Z.off
    cdef floating* A = <floating*>ws.base + ws.lay.A.off
    cdef Team team
    with nogil:
        B = row_blocks(cut_rows(s, thread_limit(), N), N)
        team_open(&team, PREDICT, work_flops(s, N, 1.0), B)
        for j in prange(B, num_threads=team.n, schedule="dynamic"):
            _output_rows(s, &theta[0], &b, N, block_start(N, B, j),
                         block_start(N, B, j + 1) - block_start(N, B, j), link,
                         Z, A, &out[0, 0])
        team_close(&team)


cdef void _output_rows(const NetSpec* s, const floating* theta, const Batch* b,
                       Py_ssize_t N, Py_ssize_t r0, Py_ssize_t nb, bint link,
                       floating* Z, floating* A, floating* out) noexcept nogil:
    """Rows r0 .. r0 + nb of raw_output."""
    cdef Py_ssize_t nL = s.sizes[s.n_layers], i
    cdef floating* zL = Z + N * s.h_off[s.n_layers - 1] + r0 * nL
    forward_rows(s, theta, b, N, r0, nb, Z, A)
    if link:
        link_rows(s.loss, zL, out + r0 * nL, nb, nL)
    else:
        for i in range(nb * nL):
            out[r0 * nL + i] = zL[i]


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
    cdef Team team
    with nogil:
        blas_open(&team)
        forward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off)
        loss_value(s, &b, w + ws.lay.Z.off, w + ws.lay.D.off)
        backward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off,
                 w + ws.lay.D.off, 1, w + ws.lay.work.off, PER_SAMPLE,
                 &out[0, 0])
        team_close(&team)


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
    cdef Team team
    with nogil:
        blas_open(&team)
        forward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off)
        backward(s, &theta[0], &b, N, w + ws.lay.Z.off, w + ws.lay.A.off,
                 w + ws.lay.D.off, nL, w + ws.lay.work.off, PER_SAMPLE,
                 &out[0, 0])
        team_close(&team)


# ------------------------------------------------------------------ validation
cdef inline bint _finite(const floating* x, Py_ssize_t n) noexcept nogil:
    # x - x is 0 for finite x and NaN for NaN or +-inf; the OR of integer
    # flags needs no reassociation of floating-point sums.
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        bad |= (x[i] - x[i]) != 0.0
    return not bad


def all_finite(cnp.ndarray a):
    """Whether a C-contiguous float32 or float64 array holds no NaN or inf
    (one pass, no temporary); None for any other array (the caller tests it
    with NumPy). For the validation of small arrays: the loop is scalar in
    float64 (0.57 ns an entry), slower than NumPy beyond about 2000 entries."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef int t = cnp.PyArray_TYPE(a)
    cdef bint ok
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        return None
    if t == cnp.NPY_DOUBLE:
        with nogil:
            ok = _finite(<const double*>cnp.PyArray_DATA(a), n)
    elif t == cnp.NPY_FLOAT:
        with nogil:
            ok = _finite(<const float*>cnp.PyArray_DATA(a), n)
    else:
        return None
    return ok
