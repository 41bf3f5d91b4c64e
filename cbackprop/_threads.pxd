# Thread teams of the row-parallel kernels (see _threads.pyx).

cpdef enum Site:
    # Call sites, each with its own measurements (their rates differ).
    LOSS_GRAD = 0
    EPOCH = 1
    PREDICT = 2
    PRODUCTS = 3     # curvature-vector products (hvp, ggn_vp, efisher_vp)
    N_SITES = 4

cdef struct Team:
    int n          # threads of this call (1: the caller alone)
    int site
    int bucket     # size class of the call (log2 of its flops), or -1: untimed
    double flops
    double start   # seconds (monotonic clock)
    bint probe     # the call tries the way measured slower

cdef void team_open(Team* team, Site site, double flops,
                    Py_ssize_t max_parts) noexcept nogil
cdef void blas_open(Team* team) noexcept nogil
cdef int thread_limit() noexcept nogil
cdef void team_close(Team* team) noexcept nogil
