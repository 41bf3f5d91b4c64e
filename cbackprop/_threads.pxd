# Thread teams of the row-parallel kernels (see _threads.pyx).

cdef struct Team:
    int n          # threads of this call (1: the caller alone)
    int saved      # the caller's BLAS thread count, restored by team_close
    int bucket     # size class of the call (log2 of its flops), or -1: untimed
    double flops
    double start   # seconds (monotonic clock)

cdef void team_open(Team* team, double flops, Py_ssize_t max_parts) noexcept nogil
cdef void team_close(Team* team) noexcept nogil
cdef void blas_single() noexcept nogil
