# Losses fused with their output links, on raw predictions z (row-major
# (N, C) blocks). Output layers are narrow, so these loops use libm in
# double precision whatever the storage dtype.
from cython cimport floating

cpdef enum Loss:
    SQUARED_ERROR = 0    # identity link
    POISSON = 1          # log link, mu = exp(z)
    LOG_LOSS = 2         # softmax link
    BINARY_LOG_LOSS = 3  # logistic link, per output

cdef double loss_grad_rows(Loss loss, const floating* Z, const floating* Y,
                           const floating* sw, Py_ssize_t N, Py_ssize_t C,
                           double scale, floating* G) noexcept nogil
cdef void link_rows(Loss loss, const floating* Z, floating* P,
                    Py_ssize_t N, Py_ssize_t C) noexcept nogil
cdef void hess_prod_rows(Loss loss, const floating* Z, const floating* Y,
                         const floating* sw, Py_ssize_t N, Py_ssize_t C,
                         double scale, const floating* V, floating* HV,
                         Py_ssize_t k) noexcept nogil
cdef void sqrt_hess_rows(Loss loss, const floating* Z, const floating* Y,
                         const floating* sw, Py_ssize_t N, Py_ssize_t C,
                         double scale, floating* S) noexcept nogil
