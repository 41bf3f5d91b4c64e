# The network description, the per-layer calculus every kernel is written
# over, the problem a kernel runs on (Batch) and the typed workspaces.
#
# Per-layer calculus (cdef inline, below): with a_in the layer's input
# (layer_input), a layer's
#   forward linear map    z = a_in W_l (+ beta z)            forward_linear
#   backward linear map   e = delta W_l^T (+ beta e)         backward_linear
#   backward step         delta_{l-1} = e * f'(z_{l-1})      backward_step
#   reduction to theta    (a_in^T delta, col sums of delta)  layer_grad (GRAD)
#                         (a_i delta_i^T, delta_i) per row    layer_rows (PER_SAMPLE)
# W is any parameter-space vector laid out as theta (theta itself, or a
# direction V of the R-operator).
from cython cimport floating
from libc.stdint cimport int32_t, int64_t
from cbackprop._blas cimport _gemm, NoTrans, Trans
from cbackprop._activations cimport Activation, act_backward, act_backward_sum
from cbackprop._losses cimport Loss

cdef enum:
    SMALL_GEMM = 1000000   # M N K of OpenBLAS's small-matrix kernels (cut_rows)
    MAX_BLOCKS = 16
    MAX_TASKS = 64
    MAX_CUTS = 5      # 1, 2, 4, 8, 16 row blocks

cdef struct Cut:
    Py_ssize_t max_blocks        # row blocks of a large batch
    Py_ssize_t n_tasks           # pieces of a gradient
    const Py_ssize_t* tasks      # piece t: layer, first and end row of W_l

cdef struct NetSpec:
    int n_layers                 # L weight layers
    const Py_ssize_t* sizes      # L + 1 layer widths, n_0 .. n_L
    const Py_ssize_t* w_off      # offset of W_l (row-major n_{l-1} x n_l) in theta
    const Py_ssize_t* b_off      # offset of b_l in theta
    const Py_ssize_t* h_off      # column offset of layer l in the stacked cache
    Py_ssize_t width             # sum of n_1 .. n_L: cache holds N * width
    Py_ssize_t max_hidden        # widest hidden layer (1 when there is none)
    Py_ssize_t n_params
    Cut cuts[MAX_CUTS]           # cuts[k]: how the blocked kernels cut work
    int n_cuts                   # for a thread limit of up to 2**k threads
    Activation act
    Loss loss

cpdef enum Reduce:
    GRAD = 0          # out[r] = sum_i (a_i d_ri^T, d_ri): one gradient per block
    PER_SAMPLE = 1    # out[i * k + r] = (a_i d_ri^T, d_ri): one row per sample
    NO_REDUCE = 2     # deltas only (kept in `store`)

cdef class NetPlan:
    cdef NetSpec spec
    cdef object _arrays
    cdef object _tasks


# ------------------------------------------------------------- the problem
cdef struct Batch:
    # Rows of one problem, of one dtype (`itemsize` bytes): kernels cast the
    # pointers to their floating type (a struct cannot be fused).
    const void* X         # (N, n_0) row-major, or NULL when X is CSR:
    const void* Xdata     #   the values (floating),
    const void* Xind      #   their column indices (sorted within a row),
    const void* Xptr      #   N + 1 offsets of the rows into Xdata / Xind
    bint idx64            #   Xind, Xptr are int64 (else int32)
    const void* Y         # (N, n_L), or NULL when no loss is involved
    const void* sw        # (N,) sample weights, or NULL for unit weights
    Py_ssize_t N
    double sw_sum         # W: the objective divides by it (global, chunks too)
    double alpha          # L2 penalty: alpha / (2 W) sum ||W_l||^2
    Py_ssize_t itemsize

cdef inline Batch make_batch(const floating* X, const floating* Y,
                             const floating* sw, Py_ssize_t N, double sw_sum,
                             double alpha) noexcept nogil:
    cdef Batch b
    b.X = X
    b.Xdata = NULL
    b.Xind = NULL
    b.Xptr = NULL
    b.idx64 = False
    b.Y = Y
    b.sw = sw
    b.N = N
    b.sw_sum = sw_sum
    b.alpha = alpha
    b.itemsize = sizeof(floating)
    return b

cdef inline void add_parts(floating* out, const floating* parts, Py_ssize_t n_parts,
                           Py_ssize_t stride, Py_ssize_t n) noexcept nogil:
    """out[:n] += parts[j stride : j stride + n] for j = 0 .. n_parts - 1 in
    order: row blocks 1 .. B - 1's partial sums added to block 0's in block
    order, so that a fixed cut gives the same bits whoever computed them."""
    cdef Py_ssize_t j, i
    cdef const floating* q
    for j in range(n_parts):
        q = parts + j * stride
        for i in range(n):
            out[i] += q[i]


cdef inline Batch sub_batch(const NetSpec* s, const Batch* b, Py_ssize_t i0,
                            Py_ssize_t nb) noexcept nogil:
    """Rows i0 .. i0 + nb of b (same W and alpha)."""
    cdef Batch r = b[0]
    cdef Py_ssize_t z = b.itemsize
    if b.X != NULL:
        r.X = <const char*>b.X + i0 * s.sizes[0] * z
    else:
        r.Xptr = <const char*>b.Xptr + i0 * (8 if b.idx64 else 4)
    r.Y = NULL if b.Y == NULL else <const char*>b.Y + i0 * s.sizes[s.n_layers] * z
    r.sw = NULL if b.sw == NULL else <const char*>b.sw + i0 * z
    r.N = nb
    return r


# -------------------------------------------------------------- workspaces
cdef struct Region:
    Py_ssize_t off        # first entry in the workspace buffer
    Py_ssize_t n          # entries

cdef struct FirstLayout:
    # forward cache (N * width each), output deltas (k N n_L), two ping-pong
    # delta buffers (2 k N max_hidden), the gradients of row blocks 1 .. B - 1
    # (split_grad; empty where a kernel never splits)
    Region Z, A, D, work, part

cdef inline Py_ssize_t put(Region* r, Py_ssize_t at, Py_ssize_t n) noexcept nogil:
    """Place a region of n entries at `at`; return the next 64-byte aligned
    position (at most 8 entries of padding)."""
    r.off = at
    r.n = n
    return at + ((n + 7) // 8) * 8

cdef Py_ssize_t first_layout(const NetSpec* s, Py_ssize_t N, Py_ssize_t k,
                             Py_ssize_t at, FirstLayout* lay) noexcept nogil
cdef Py_ssize_t part_entries(const NetSpec* s, Py_ssize_t N) noexcept nogil

cdef int set_input(Batch* b, object X, Py_ssize_t itemsize) except -1

cdef class Workspace:
    cdef readonly NetPlan plan
    cdef readonly object dtype
    cdef readonly Py_ssize_t n_rows
    cdef readonly Py_ssize_t k
    cdef Py_ssize_t itemsize
    cdef Py_ssize_t capacity     # entries allocated
    cdef Py_ssize_t size         # entries the current layout uses
    cdef object _buffer
    cdef char* base
    cdef Py_ssize_t _layout(self, Py_ssize_t n_rows, Py_ssize_t k) noexcept
    cdef dict _regions(self)
    cpdef Workspace fit(self, Py_ssize_t n_rows, Py_ssize_t k=*)
    cdef int check(self, Py_ssize_t n_rows, Py_ssize_t k,
                   Py_ssize_t itemsize) except -1

cdef class FirstOrderWorkspace(Workspace):
    cdef FirstLayout lay


# ---------------------------------------------------- the per-layer calculus
cdef inline const floating* layer_input(const NetSpec* s, int l,
                                        const floating* X, const floating* A,
                                        Py_ssize_t N) noexcept nogil:
    """Layer l's input: X for the first layer, else the stacked activations."""
    return X if l == 0 else A + N * s.h_off[l - 1]

cdef inline void col_sums(const floating* D, Py_ssize_t N, Py_ssize_t n,
                          floating* out, bint accumulate) noexcept nogil:
    """out (+)= the column sums of the row-major (N, n) block D."""
    cdef Py_ssize_t i, j
    if not accumulate:
        for j in range(n):
            out[j] = 0
    for i in range(N):
        for j in range(n):
            out[j] += D[i * n + j]

cdef inline void forward_linear(const NetSpec* s, int l, const floating* W,
                                const floating* a_in, Py_ssize_t rows,
                                floating beta, floating* z) noexcept nogil:
    """z (rows, n_l) = a_in (rows, n_{l-1}) W_l + beta z; W laid out as theta."""
    cdef Py_ssize_t nin = s.sizes[l], nout = s.sizes[l + 1]
    _gemm(NoTrans, NoTrans, <int>rows, <int>nout, <int>nin, <floating>1.0,
          a_in, <int>nin, W + s.w_off[l], <int>nout, beta, z, <int>nout)

cdef inline void backward_linear(const NetSpec* s, int l, const floating* W,
                                 const floating* D, Py_ssize_t rows,
                                 floating beta, floating* E) noexcept nogil:
    """E (rows, n_{l-1}) = D (rows, n_l) W_l^T + beta E; W laid out as theta."""
    cdef Py_ssize_t nin = s.sizes[l], nout = s.sizes[l + 1]
    _gemm(NoTrans, Trans, <int>rows, <int>nin, <int>nout, <floating>1.0,
          D, <int>nout, W + s.w_off[l], <int>nout, beta, E, <int>nin)

cdef inline void backward_step(const NetSpec* s, int l, const floating* theta,
                               const floating* Z, const floating* A,
                               const floating* D, Py_ssize_t N, Py_ssize_t k,
                               floating* E, floating* bias_sum) noexcept nogil:
    """E = (D W_l^T) * f'(z_{l-1}): k stacked (N, n_l) deltas one layer down.

    With bias_sum (k == 1 only), the column sums of the new deltas are
    written there in the same pass (layer l-1's bias gradient)."""
    cdef Py_ssize_t h = N * s.h_off[l - 1], nin = s.sizes[l]
    backward_linear(s, l, theta, D, k * N, <floating>0.0, E)
    if bias_sum != NULL:
        act_backward_sum(s.act, Z + h, A + h, E, N, nin, bias_sum)
    else:
        act_backward(s.act, Z + h, A + h, E, N, nin, k)

cdef inline void layer_grad(const NetSpec* s, int l, const floating* a_in,
                            const floating* d, Py_ssize_t N, bint accumulate,
                            bint bias, floating* o) noexcept nogil:
    """Layer l's part of a gradient: o[W_l] (+)= a_in^T d and, with bias,
    o[b_l] (+)= the column sums of d (o laid out as theta)."""
    cdef Py_ssize_t nin = s.sizes[l], nout = s.sizes[l + 1]
    _gemm(Trans, NoTrans, <int>nin, <int>nout, <int>N, <floating>1.0,
          a_in, <int>nin, d, <int>nout,
          <floating>(1.0 if accumulate else 0.0), o + s.w_off[l], <int>nout)
    if bias:
        col_sums(d, N, nout, o + s.b_off[l], accumulate)


# ------------------------------------------------ the first layer's input
# X is dense or CSR; these are the only places that read it (besides the
# per-sample rows, which need dense X). Both take a row range r0 .. r0 +
# rows of the batch, z and d being that range's own (rows, n_1) blocks.
ctypedef fused csr_index:
    int32_t
    int64_t

cdef inline void _csr_forward(const csr_index* ptr, const csr_index* ind,
                              const floating* val, Py_ssize_t rows,
                              const floating* W, Py_ssize_t n, floating beta,
                              floating* z) noexcept nogil:
    """z (rows, n) = X W + beta z for CSR rows (ptr: rows + 1 offsets)."""
    cdef Py_ssize_t i, q
    cdef csr_index p
    cdef floating x
    cdef floating* zi
    cdef const floating* w
    for i in range(rows):
        zi = z + i * n
        if beta == 0:
            for q in range(n):
                zi[q] = 0
        elif beta != 1:
            for q in range(n):
                zi[q] *= beta
        for p in range(ptr[i], ptr[i + 1]):
            x = val[p]
            w = W + <Py_ssize_t>ind[p] * n
            for q in range(n):
                zi[q] += x * w[q]

cdef inline void _csr_grad(const csr_index* ptr, const csr_index* ind,
                           const floating* val, Py_ssize_t rows,
                           const floating* d, Py_ssize_t n, floating* G,
                           Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Rows c0 .. c1 of G (n_0, n) += X^T d for CSR rows: row j of G
    gathers x_ij d_i (the column range: one gradient task's rows)."""
    cdef Py_ssize_t i, q, j
    cdef csr_index p
    cdef floating x
    cdef floating* g
    cdef const floating* di
    for i in range(rows):
        di = d + i * n
        for p in range(ptr[i], ptr[i + 1]):
            j = <Py_ssize_t>ind[p]
            if j < c0 or j >= c1:
                continue
            x = val[p]
            g = G + j * n
            for q in range(n):
                g[q] += x * di[q]

cdef inline void first_forward(const NetSpec* s, const Batch* b,
                               Py_ssize_t r0, Py_ssize_t rows,
                               const floating* W, floating beta,
                               floating* z) noexcept nogil:
    """z (rows, n_1) = X[r0:r0 + rows] W_1 + beta z; W laid out as theta."""
    cdef Py_ssize_t n = s.sizes[1]
    cdef const floating* W1 = W + s.w_off[0]
    if b.X != NULL:
        forward_linear(s, 0, W, <const floating*>b.X + r0 * s.sizes[0], rows,
                       beta, z)
    elif b.idx64:
        _csr_forward(<const int64_t*>b.Xptr + r0, <const int64_t*>b.Xind,
                     <const floating*>b.Xdata, rows, W1, n, beta, z)
    else:
        _csr_forward(<const int32_t*>b.Xptr + r0, <const int32_t*>b.Xind,
                     <const floating*>b.Xdata, rows, W1, n, beta, z)

cdef inline void first_grad(const NetSpec* s, const Batch* b, Py_ssize_t r0,
                            Py_ssize_t rows, const floating* d,
                            bint accumulate, floating* o) noexcept nogil:
    """o[W_1] (+)= X[r0:r0 + rows]^T d, d (rows, n_1); o laid out as theta."""
    cdef Py_ssize_t j, n = s.sizes[1]
    cdef floating* G = o + s.w_off[0]
    if b.X != NULL:
        layer_grad(s, 0, <const floating*>b.X + r0 * s.sizes[0], d, rows,
                   accumulate, False, o)
        return
    if not accumulate:
        for j in range(s.sizes[0] * n):
            G[j] = 0
    if b.idx64:
        _csr_grad(<const int64_t*>b.Xptr + r0, <const int64_t*>b.Xind,
                  <const floating*>b.Xdata, rows, d, n, G, 0, s.sizes[0])
    else:
        _csr_grad(<const int32_t*>b.Xptr + r0, <const int32_t*>b.Xind,
                  <const floating*>b.Xdata, rows, d, n, G, 0, s.sizes[0])

cdef inline void input_forward(const NetSpec* s, int l, const Batch* b,
                               const floating* A, Py_ssize_t N,
                               const floating* W, floating beta,
                               floating* z) noexcept nogil:
    """z = a_in W_l + beta z over the N rows, a_in the layer's input (X,
    dense or CSR, for the first layer; else the stacked activations A)."""
    if l == 0:
        first_forward(s, b, 0, N, W, beta, z)
    else:
        forward_linear(s, l, W, A + N * s.h_off[l - 1], N, beta, z)

cdef inline void rows_grad(const NetSpec* s, int l, const Batch* b,
                           const floating* A, Py_ssize_t N, Py_ssize_t r0,
                           Py_ssize_t rows, const floating* d, bint accumulate,
                           bint bias, floating* o) noexcept nogil:
    """layer_grad over rows r0 .. r0 + rows of the layer's input (X, dense
    or CSR, or the stacked activations A of N rows); d: those rows' own
    (rows, n_l) deltas."""
    if l > 0:
        layer_grad(s, l, A + N * s.h_off[l - 1] + r0 * s.sizes[l], d, rows,
                   accumulate, bias, o)
        return
    first_grad(s, b, r0, rows, d, accumulate, o)
    if bias:
        col_sums(d, rows, s.sizes[1], o + s.b_off[0], accumulate)

cdef inline void input_grad(const NetSpec* s, int l, const Batch* b,
                            const floating* A, Py_ssize_t N,
                            const floating* d, bint accumulate, bint bias,
                            floating* o) noexcept nogil:
    """layer_grad on the layer's input (X, dense or CSR, or A) over all N rows."""
    rows_grad(s, l, b, A, N, 0, N, d, accumulate, bias, o)

cdef inline void layer_rows(const NetSpec* s, int l, const floating* a_in,
                            const floating* D, Py_ssize_t N, Py_ssize_t k,
                            Py_ssize_t si, Py_ssize_t sr,
                            floating* out) noexcept nogil:
    """Per-sample parameter rows of layer l: row ``i * si + r * sr`` of out
    (rows of P entries) gets (a_i d_ri^T, d_ri) on layer l's entries, for
    the k stacked (N, n_l) delta blocks of D."""
    cdef Py_ssize_t nin = s.sizes[l], nout = s.sizes[l + 1], P = s.n_params
    cdef Py_ssize_t r, i, p, q
    cdef floating* o
    cdef const floating* a
    cdef const floating* d
    cdef floating ap
    for r in range(k):
        for i in range(N):
            o = out + (i * si + r * sr) * P
            a = a_in + i * nin
            d = D + (r * N + i) * nout
            for p in range(nin):
                ap = a[p]
                for q in range(nout):
                    o[s.w_off[l] + p * nout + q] = ap * d[q]
            for q in range(nout):
                o[s.b_off[l] + q] = d[q]


cdef inline void _csr_rows(const csr_index* ptr, const csr_index* ind,
                           const floating* val, const NetSpec* s,
                           const floating* D, Py_ssize_t N, Py_ssize_t k,
                           Py_ssize_t si, Py_ssize_t sr,
                           floating* out) noexcept nogil:
    """layer_rows of the first layer for CSR X (rows as in layer_rows)."""
    cdef Py_ssize_t nout = s.sizes[1], P = s.n_params, r, i, j, q
    cdef csr_index p
    cdef floating* o
    cdef const floating* d
    cdef floating x
    for r in range(k):
        for i in range(N):
            o = out + (i * si + r * sr) * P
            d = D + (r * N + i) * nout
            for j in range(s.sizes[0] * nout):
                o[s.w_off[0] + j] = 0
            for p in range(ptr[i], ptr[i + 1]):
                x = val[p]
                for q in range(nout):
                    o[s.w_off[0] + <Py_ssize_t>ind[p] * nout + q] = x * d[q]
            for q in range(nout):
                o[s.b_off[0] + q] = d[q]

cdef inline void input_rows(const NetSpec* s, int l, const Batch* b,
                            const floating* A, const floating* D,
                            Py_ssize_t N, Py_ssize_t k, Py_ssize_t si,
                            Py_ssize_t sr, floating* out) noexcept nogil:
    """layer_rows on the layer's input (X, dense or CSR, or A)."""
    if l > 0 or b.X != NULL:
        layer_rows(s, l, layer_input(s, l, <const floating*>b.X, A, N), D, N,
                   k, si, sr, out)
    elif b.idx64:
        _csr_rows(<const int64_t*>b.Xptr, <const int64_t*>b.Xind,
                  <const floating*>b.Xdata, s, D, N, k, si, sr, out)
    else:
        _csr_rows(<const int32_t*>b.Xptr, <const int32_t*>b.Xind,
                  <const floating*>b.Xdata, s, D, N, k, si, sr, out)


cdef inline void first_grad_rows(const NetSpec* s, const Batch* b,
                                 Py_ssize_t N, const floating* d,
                                 Py_ssize_t p0, Py_ssize_t p1,
                                 floating* o) noexcept nogil:
    """Rows p0 .. p1 of W_1's block of o = X^T d over the first N rows
    (X dense or CSR; d (N, n_1)); o laid out as theta."""
    cdef Py_ssize_t n = s.sizes[1], j
    cdef floating* G = o + s.w_off[0]
    if b.X != NULL:
        _gemm(Trans, NoTrans, <int>(p1 - p0), <int>n, <int>N, <floating>1.0,
              <const floating*>b.X + p0, <int>s.sizes[0], d, <int>n,
              <floating>0.0, G + p0 * n, <int>n)
        return
    for j in range(p0 * n, p1 * n):
        G[j] = 0
    if b.idx64:
        _csr_grad(<const int64_t*>b.Xptr, <const int64_t*>b.Xind,
                  <const floating*>b.Xdata, N, d, n, G, p0, p1)
    else:
        _csr_grad(<const int32_t*>b.Xptr, <const int32_t*>b.Xind,
                  <const floating*>b.Xdata, N, d, n, G, p0, p1)


# --------------------------------------------------- blocked kernels (teams)
# A batch of N rows is cut into row_blocks(c, N) blocks (forward, loss,
# deltas: row-parallel), a gradient into the cut's tasks (row ranges of one
# W_l, the last one with b_l: parameter-parallel, each a sum over all N
# rows, or with split_grad the sum of the blocks' own gradients: block_pass,
# then task_grad). The cut follows the thread limit of the call
# (threadpoolctl, the OMP / OpenBLAS variables: cut_for; the first-order
# kernels over N rows the machine's where it makes every GEMM small:
# cut_rows), never the team that runs it, which the measured policy
# chooses: a fixed limit gives the same bits whatever runs, and different
# limits agree to rounding (one thread keeps whole GEMMs: one block, one
# task per layer).
cdef inline const Cut* cut_for(const NetSpec* s, int limit) noexcept nogil:
    """The cut for a thread limit: pieces for the next power of two of
    threads, at most the machine's (the processor count)."""
    cdef int k = 0
    while (1 << k) < limit and k < s.n_cuts - 1:
        k += 1
    return &s.cuts[k]

cdef inline void task_range(const Cut* c, Py_ssize_t t, int* l,
                            Py_ssize_t* p0, Py_ssize_t* p1) noexcept nogil:
    """Task t of cut c: rows p0 .. p1 of W_l (b_l with the last rows)."""
    l[0] = <int>c.tasks[3 * t]
    p0[0] = c.tasks[3 * t + 1]
    p1[0] = c.tasks[3 * t + 2]

cdef inline Py_ssize_t row_blocks(const Cut* c, Py_ssize_t N) noexcept nogil:
    """1, 2, 4, ... c.max_blocks blocks of at least 48 rows each."""
    cdef Py_ssize_t B = 1
    while B < c.max_blocks and N >= 2 * B * 48:
        B *= 2
    return B

cdef inline Py_ssize_t block_start(Py_ssize_t N, Py_ssize_t B,
                                   Py_ssize_t j) noexcept nogil:
    """First row of block j of B (j = B: N). Inner boundaries fall on
    multiples of 16 rows, the widest GEMM micro-kernel unroll, so that
    BLAS's edge kernels (which may round differently) run on the batch's
    last rows only, as in one GEMM over the whole batch: a row's result
    does not depend on the rows computed with it."""
    if j >= B:
        return N
    return ((N * j) // B) & ~(<Py_ssize_t>15)

cdef struct Pass:
    # One batch's forward cache and deltas (pointers of the batch's dtype).
    const Batch* b        # the rows (X dense or CSR)
    void* Z               # pre-activations, layer l at N * h_off[l]
    void* A               # activations, likewise
    void* D               # output deltas (N, n_L)
    void* H               # hidden deltas, layer l at N * h_off[l]
    Py_ssize_t N
    const Cut* cut        # how the call cuts the batch and the gradient
    void* G               # gradients of row blocks 1 .. B - 1 (P each)
    Py_ssize_t room       # how many G holds

cdef double rows_pass(const NetSpec* s, const Batch* b, const floating* theta,
                      const Pass* p, Py_ssize_t r0, Py_ssize_t nb,
                      bint deltas) noexcept nogil
cdef double task_sq(const NetSpec* s, const Cut* c, Py_ssize_t t,
                    const floating* theta) noexcept nogil
cdef void task_l2(const NetSpec* s, const Cut* c, Py_ssize_t t,
                  const floating* theta, double l2, floating* grad) noexcept nogil
cdef bint split_grad(const NetSpec* s, const Pass* p, Py_ssize_t B) noexcept nogil
cdef double block_pass(const NetSpec* s, const Batch* b, const floating* theta,
                       const Pass* p, Py_ssize_t j, Py_ssize_t B, bint split,
                       floating* grad) noexcept nogil
cdef void task_grad(const NetSpec* s, const Pass* p, Py_ssize_t t, Py_ssize_t B,
                    bint split, floating* grad) noexcept nogil
cdef double blocked_loss_grad(const NetSpec* s, const Batch* b,
                              const floating* theta, const Pass* p,
                              floating* grad) noexcept nogil
cdef double work_flops(const NetSpec* s, Py_ssize_t N, double k) noexcept nogil
cdef const Cut* cut_rows(const NetSpec* s, int limit, Py_ssize_t N) noexcept nogil
cdef double batch_flops(const NetSpec* s, Py_ssize_t N, bint grad) noexcept nogil
cdef Pass make_pass(const NetSpec* s, const Batch* b, floating* ws,
                    const FirstLayout* lay, const Cut* cut) noexcept nogil


# ------------------------------------------------------------------ kernels
cdef void forward_rows(const NetSpec* s, const floating* theta,
                       const Batch* b, Py_ssize_t N, Py_ssize_t r0,
                       Py_ssize_t nb, floating* Z, floating* A) noexcept nogil
cdef void forward(const NetSpec* s, const floating* theta, const Batch* b,
                  Py_ssize_t N, floating* Z, floating* A) noexcept nogil
cdef void backward(const NetSpec* s, const floating* theta, const Batch* b,
                   Py_ssize_t N, const floating* Z, const floating* A,
                   const floating* D, Py_ssize_t k, floating* work,
                   Reduce mode, floating* out) noexcept nogil
cdef double add_l2(const NetSpec* s, const floating* theta, double coef,
                   floating* grad) noexcept nogil
cdef double loss_value(const NetSpec* s, const Batch* b, const floating* Z,
                       floating* D) noexcept nogil
cdef double loss_grad_kernel(const NetSpec* s, const Batch* b,
                             const floating* theta, floating* ws,
                             const FirstLayout* lay,
                             floating* grad) noexcept nogil
