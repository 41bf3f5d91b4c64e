# Hidden-layer activations: nogil point functions f, f', f'' (one table,
# fused over float/double) and the row-major loops built on them.
from cython cimport floating
from libc.math cimport fabs, fabsf, copysign, copysignf

cdef extern from "_vmath.h" nogil:
    double cb_exp(double x)
    double cb_expm1(double x)
    double cb_log1p(double x)
    float cb_expf(float x)
    float cb_expm1f(float x)
    float cb_log1pf(float x)
    double cb_blend(double a, double b, int c)
    float cb_blendf(float a, float b, int c)

cpdef enum Activation:
    IDENTITY = 0
    LOGISTIC = 1
    TANH = 2
    RELU = 3
    SOFTPLUS = 4
    SWISH = 5
    MISH = 6


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return cb_expf(x)
    else:
        return cb_exp(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return cb_expm1f(x)
    else:
        return cb_expm1(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return cb_log1pf(x)
    else:
        return cb_log1p(x)


cdef inline floating _fabs(floating x) noexcept nogil:
    return fabs(x) if floating is double else fabsf(x)


cdef inline floating _blend(floating a, floating b, bint c) noexcept nogil:
    """c ? a : b without a branch (see cb_blend in _vmath.h)."""
    if floating is float:
        return cb_blendf(a, b, c)
    else:
        return cb_blend(a, b, c)


# Every exponential below is exp(-|z|) <= 1: nothing overflows for any finite
# z, and the two branches of a logistic are blended, not divided by inf.
# No C conditionals: selections go through _blend or copysign, so that gcc
# vectorizes the loops these functions are inlined into.
# (The literals make C evaluate 1.0 + e and the quotients in double, also for
# float32: one rounding at the end.)
cdef inline floating _sigmoid(floating z) noexcept nogil:
    cdef floating e = _exp(-_fabs(z))
    return _blend(1 / (1 + e), e / (1 + e), z >= 0)


cdef inline floating _sigmoid_neg(floating z) noexcept nogil:
    """1 - sigmoid(z) without cancellation."""
    cdef floating e = _exp(-_fabs(z))
    return _blend(e / (1 + e), 1 / (1 + e), z >= 0)


cdef inline floating _tanh(floating z) noexcept nogil:
    # tanh|z| = -expm1(-2|z|) / (2 + expm1(-2|z|)): exact for tiny z too.
    cdef floating t = _expm1(-2 * _fabs(z))
    if floating is float:
        return copysignf(-t / (2 + t), z)
    else:
        return copysign(-t / (2 + t), z)


cdef inline floating _relu(floating z) noexcept nogil:
    return _blend(z, <floating>0, z > 0)


cdef inline floating _softplus(floating z) noexcept nogil:
    return _relu(z) + _log1p(_exp(-_fabs(z)))


cdef inline floating _tanh_softplus(floating z) noexcept nogil:
    """tanh(softplus(z)), accurate relative to itself for z << 0 too.

    With n = e^z, tanh(softplus z) = n(n+2) / (n(n+2) + 2); written in
    m = e^{-|z|} on each side so that nothing overflows or cancels.
    """
    cdef floating m = _exp(-_fabs(z))
    cdef floating q = m * (m + 2)
    return _blend((1 + 2 * m) / (1 + 2 * m + 2 * m * m), q / (q + 2), z > 0)


cdef inline floating _tanh_softplus_c(floating z) noexcept nogil:
    """1 - tanh(softplus(z)), without cancellation (see _tanh_softplus)."""
    cdef floating m = _exp(-_fabs(z))
    cdef floating q = m * (m + 2)
    return _blend(2 * m * m / (1 + 2 * m + 2 * m * m), 2 / (q + 2), z > 0)


cdef inline floating f_value(Activation act, floating z) noexcept nogil:
    if act == LOGISTIC:
        return _sigmoid(z)
    elif act == TANH:
        return _tanh(z)
    elif act == RELU:
        # A select between loaded values (maxpd), not the mask blend: no
        # arithmetic follows it in the loops that call f_value, and on SSE2
        # the blend's int -> 64-bit mask widening cost 1.5x the whole pass.
        return z if z > 0 else 0
    elif act == SOFTPLUS:
        return _softplus(z)
    elif act == SWISH:
        return z * _sigmoid(z)
    elif act == MISH:
        return z * _tanh_softplus(z)
    return z


cdef inline floating f_deriv(Activation act, floating z, floating a) noexcept nogil:
    """f'(z) given a = f(z) (reused where it makes f' cheaper)."""
    cdef floating s, c
    if act == LOGISTIC:
        return a * (1 - a)
    elif act == TANH:
        return 1 - a * a
    elif act == RELU:
        return _blend(<floating>1, <floating>0, z > 0)
    elif act == SOFTPLUS:
        return _sigmoid(z)
    elif act == SWISH:
        s = _sigmoid(z)
        return s * (1 + z * _sigmoid_neg(z))
    elif act == MISH:
        c = _tanh_softplus_c(z)
        return _tanh_softplus(z) + z * c * (2 - c) * _sigmoid(z)
    return 1


cdef inline floating f_deriv2(Activation act, floating z, floating a) noexcept nogil:
    """f''(z) given a = f(z)."""
    cdef floating s, sn, c
    if act == LOGISTIC:
        return a * (1 - a) * (1 - 2 * a)
    elif act == TANH:
        return -2 * a * (1 - a * a)
    elif act == SOFTPLUS:
        return _sigmoid(z) * _sigmoid_neg(z)
    elif act == SWISH:
        s = _sigmoid(z)
        sn = _sigmoid_neg(z)
        return s * sn * (2 + z * (sn - s))
    elif act == MISH:
        # f = z T, T = tanh(softplus z), T' = (1 - T^2) s:
        # f'' = (1 - T^2) s (2 + z (1 - s - 2 T s)), with 1 - T^2 = c (2 - c).
        c = _tanh_softplus_c(z)
        s = _sigmoid(z)
        sn = _sigmoid_neg(z)
        return c * (2 - c) * s * (2 + z * (sn - 2 * _tanh_softplus(z) * s))
    return 0


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
