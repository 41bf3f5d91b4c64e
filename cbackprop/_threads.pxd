# Thread teams of the row-parallel kernels (see _threads.pyx).

cpdef enum Site:
    # Call sites, each with its own measurements (their rates differ).
    LOSS_GRAD = 0
    EPOCH = 1
    PREDICT = 2
    HVP = 3
    GGN_VP = 4
    EFISHER_VP = 5
    STATE = 6
    FACTORS = 7
    HESSIAN = 8
    DIAG_HESSIAN = 9
    DENSE_GGN = 10
    QUASI_HESSIAN = 11
    LM_LOOP = 12
    PER_SAMPLE_GRADS = 13
    JACOBIAN = 14
    N_SITES = 15

cdef struct Team:
    int n          # threads of this call (1: the caller alone)
    int site
    int bucket     # size class of the call (log2 of its flops), or -1: untimed
    double flops
    double start   # seconds (monotonic clock)

cdef void team_open(Team* team, Site site, double flops,
                    Py_ssize_t max_parts) noexcept nogil
cdef void blas_open(Team* team, Site site, double flops) noexcept nogil
cdef void team_close(Team* team) noexcept nogil
