# Hidden-layer activations: the point functions f, f', f'' and the loops over
# them are C (_act.h, compiled per instruction set, included by
# _activations.pyx alone); these are their fused float/double entry points.
from cython cimport floating

cdef extern from "_vmath.h" nogil:
    double cb_exp(double x)
    double cb_expm1(double x)
    double cb_log1p(double x)
    float cb_expf(float x)
    float cb_expm1f(float x)
    float cb_log1pf(float x)
    double cb_blend(double a, double b, int c)
    float cb_blendf(float a, float b, int c)

# The values are those of the CB_* constants of _act.h.
cpdef enum Activation:
    IDENTITY = 0
    LOGISTIC = 1
    TANH = 2
    RELU = 3
    SOFTPLUS = 4
    SWISH = 5
    MISH = 6


cdef void act_forward(Activation act, floating* Z, floating* A,
                      const floating* b, Py_ssize_t rows,
                      Py_ssize_t cols) noexcept nogil
cdef void act_backward(Activation act, const floating* Z, const floating* A,
                       floating* D, Py_ssize_t rows, Py_ssize_t cols,
                       Py_ssize_t k) noexcept nogil
cdef void act_backward_sum(Activation act, const floating* Z, const floating* A,
                           floating* D, Py_ssize_t rows, Py_ssize_t cols,
                           floating* out) noexcept nogil
cdef void act_derivs(Activation act, const floating* Z, const floating* A,
                     floating* D1, floating* D2, Py_ssize_t n) noexcept nogil
