"""Activation loops over row-major blocks.

Each public loop dispatches once on the activation and calls an inline loop
with that activation as a compile-time constant, so that the C compiler
specializes the branch-free point function and vectorizes the inner loop.
"""
import numpy as np


cdef inline void _forward_rows(Activation act, floating* Z, floating* A,
                               const floating* b, Py_ssize_t rows,
                               Py_ssize_t cols) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* z
    cdef floating* a
    for i in range(rows):
        z = Z + i * cols
        a = A + i * cols
        for j in range(cols):
            z[j] = z[j] + b[j]
            a[j] = f_value(act, z[j])


cdef void act_forward(Activation act, floating* Z, floating* A,
                      const floating* b, Py_ssize_t rows,
                      Py_ssize_t cols) noexcept nogil:
    """Z += b (per row); A = f(Z). Z, A row-major (rows, cols)."""
    if act == LOGISTIC:
        _forward_rows(LOGISTIC, Z, A, b, rows, cols)
    elif act == TANH:
        _forward_rows(TANH, Z, A, b, rows, cols)
    elif act == RELU:
        _forward_rows(RELU, Z, A, b, rows, cols)
    elif act == SOFTPLUS:
        _forward_rows(SOFTPLUS, Z, A, b, rows, cols)
    elif act == SWISH:
        _forward_rows(SWISH, Z, A, b, rows, cols)
    elif act == MISH:
        _forward_rows(MISH, Z, A, b, rows, cols)
    else:
        _forward_rows(IDENTITY, Z, A, b, rows, cols)


cdef inline floating _times_deriv(Activation act, floating d, floating z,
                                  floating a) noexcept nogil:
    """d * f'(z), given a = f(z)."""
    if act == RELU:
        # A select of the loaded d (cmppd + andpd): the product with a
        # blended 0/1 cost 2.5x as much on SSE2 (mask widening).
        return d if z > 0 else 0
    return d * f_deriv(act, z, a)


cdef inline void _backward_rows(Activation act, const floating* Z,
                                const floating* A, floating* D,
                                Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef floating* d
    for r in range(k):
        d = D + r * n
        for j in range(n):
            d[j] = _times_deriv(act, d[j], Z[j], A[j])


cdef inline void _backward_sum_rows(Activation act, const floating* Z,
                                    const floating* A, floating* D,
                                    Py_ssize_t rows, Py_ssize_t cols,
                                    floating* out) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating t
    cdef floating* d
    for j in range(cols):
        out[j] = 0
    for i in range(rows):
        d = D + i * cols
        for j in range(cols):
            t = _times_deriv(act, d[j], Z[i * cols + j], A[i * cols + j])
            d[j] = t
            out[j] += t


cdef void act_backward(Activation act, const floating* Z, const floating* A,
                       floating* D, Py_ssize_t rows, Py_ssize_t cols,
                       Py_ssize_t k) noexcept nogil:
    """D *= f'(Z) for each of the k stacked (rows, cols) blocks of D."""
    cdef Py_ssize_t n = rows * cols
    if act == LOGISTIC:
        _backward_rows(LOGISTIC, Z, A, D, n, k)
    elif act == TANH:
        _backward_rows(TANH, Z, A, D, n, k)
    elif act == RELU:
        _backward_rows(RELU, Z, A, D, n, k)
    elif act == SOFTPLUS:
        _backward_rows(SOFTPLUS, Z, A, D, n, k)
    elif act == SWISH:
        _backward_rows(SWISH, Z, A, D, n, k)
    elif act == MISH:
        _backward_rows(MISH, Z, A, D, n, k)
    # identity: f' = 1, nothing to do


cdef void act_backward_sum(Activation act, const floating* Z, const floating* A,
                           floating* D, Py_ssize_t rows, Py_ssize_t cols,
                           floating* out) noexcept nogil:
    """D *= f'(Z) for one (rows, cols) block, and out = D's column sums.

    Fused for the gradient, whose bias part is the column sums of the
    deltas just formed: one pass over D instead of two.
    """
    if act == LOGISTIC:
        _backward_sum_rows(LOGISTIC, Z, A, D, rows, cols, out)
    elif act == TANH:
        _backward_sum_rows(TANH, Z, A, D, rows, cols, out)
    elif act == RELU:
        _backward_sum_rows(RELU, Z, A, D, rows, cols, out)
    elif act == SOFTPLUS:
        _backward_sum_rows(SOFTPLUS, Z, A, D, rows, cols, out)
    elif act == SWISH:
        _backward_sum_rows(SWISH, Z, A, D, rows, cols, out)
    elif act == MISH:
        _backward_sum_rows(MISH, Z, A, D, rows, cols, out)
    else:
        _backward_sum_rows(IDENTITY, Z, A, D, rows, cols, out)


cdef inline void _derivs(Activation act, const floating* Z, const floating* A,
                         floating* D1, floating* D2, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        D1[j] = f_deriv(act, Z[j], A[j])
        D2[j] = f_deriv2(act, Z[j], A[j])


cdef void act_derivs(Activation act, const floating* Z, const floating* A,
                     floating* D1, floating* D2, Py_ssize_t n) noexcept nogil:
    """D1 = f'(Z), D2 = f''(Z) elementwise over n entries."""
    if act == LOGISTIC:
        _derivs(LOGISTIC, Z, A, D1, D2, n)
    elif act == TANH:
        _derivs(TANH, Z, A, D1, D2, n)
    elif act == RELU:
        _derivs(RELU, Z, A, D1, D2, n)
    elif act == SOFTPLUS:
        _derivs(SOFTPLUS, Z, A, D1, D2, n)
    elif act == SWISH:
        _derivs(SWISH, Z, A, D1, D2, n)
    elif act == MISH:
        _derivs(MISH, Z, A, D1, D2, n)
    else:
        _derivs(IDENTITY, Z, A, D1, D2, n)


# ---------------------------------------------------------------- test twin
def activation_memview(Activation act, const floating[::1] z):
    """Return (f(z), f'(z), f''(z)) computed by the kernels, for tests.

    Parameters
    ----------
    act : Activation
    z : ndarray of shape (n,), float32 or float64, C-contiguous

    Returns
    -------
    f, df, d2f : ndarrays of shape (n,), dtype of z
    """
    cdef Py_ssize_t n = z.shape[0]
    dtype = np.float32 if floating is float else np.float64
    f = np.array(z, dtype=dtype, copy=True)
    out1 = np.empty(n, dtype=dtype)
    out2 = np.empty(n, dtype=dtype)
    zero = np.zeros(1, dtype=dtype)
    cdef floating[::1] Zv = f.copy()
    cdef floating[::1] Av = f
    cdef floating[::1] D1 = out1
    cdef floating[::1] D2 = out2
    cdef floating[::1] b = zero
    if n == 0:
        return f, out1, out2
    with nogil:
        act_forward(act, &Zv[0], &Av[0], &b[0], n, 1)
        act_derivs(act, &Zv[0], &Av[0], &D1[0], &D2[0], n)
    return f, out1, out2
