# What other kernels share with the Levenberg-Marquardt module.
from cython cimport floating

cdef double _max_abs(const floating* g, Py_ssize_t P) noexcept nogil
