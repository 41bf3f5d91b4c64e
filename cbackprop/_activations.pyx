"""Activation loops over row-major blocks.

The loops are C (``_act.h``): each dispatches once on the activation to a
loop with that activation as a constant, which the compiler specializes and
vectorizes, and each is compiled for AVX-512F, AVX2 and the baseline, the
best one chosen when the module loads.
"""
import numpy as np

cdef extern from "_act.h" nogil:
    void cb_act_forward_d(int act, double* Z, double* A, const double* b,
                          Py_ssize_t rows, Py_ssize_t cols)
    void cb_act_forward_f(int act, float* Z, float* A, const float* b,
                          Py_ssize_t rows, Py_ssize_t cols)
    void cb_act_backward_d(int act, const double* Z, const double* A, double* D,
                           Py_ssize_t n, Py_ssize_t k)
    void cb_act_backward_f(int act, const float* Z, const float* A, float* D,
                           Py_ssize_t n, Py_ssize_t k)
    void cb_act_backward_sum_d(int act, const double* Z, const double* A, double* D,
                               Py_ssize_t rows, Py_ssize_t cols, double* out)
    void cb_act_backward_sum_f(int act, const float* Z, const float* A, float* D,
                               Py_ssize_t rows, Py_ssize_t cols, float* out)
    void cb_act_derivs_d(int act, const double* Z, const double* A, double* D1,
                         double* D2, Py_ssize_t n)
    void cb_act_derivs_f(int act, const float* Z, const float* A, float* D1,
                         float* D2, Py_ssize_t n)


cdef void act_forward(Activation act, floating* Z, floating* A,
                      const floating* b, Py_ssize_t rows,
                      Py_ssize_t cols) noexcept nogil:
    """Z += b (per row); A = f(Z). Z, A row-major (rows, cols)."""
    if floating is float:
        cb_act_forward_f(act, Z, A, b, rows, cols)
    else:
        cb_act_forward_d(act, Z, A, b, rows, cols)


cdef void act_backward(Activation act, const floating* Z, const floating* A,
                       floating* D, Py_ssize_t rows, Py_ssize_t cols,
                       Py_ssize_t k) noexcept nogil:
    """D *= f'(Z) for each of the k stacked (rows, cols) blocks of D."""
    if floating is float:
        cb_act_backward_f(act, Z, A, D, rows * cols, k)
    else:
        cb_act_backward_d(act, Z, A, D, rows * cols, k)


cdef void act_backward_sum(Activation act, const floating* Z, const floating* A,
                           floating* D, Py_ssize_t rows, Py_ssize_t cols,
                           floating* out) noexcept nogil:
    """D *= f'(Z) for one (rows, cols) block, and out = D's column sums.

    Fused for the gradient, whose bias part is the column sums of the
    deltas just formed: one pass over D instead of two.
    """
    if floating is float:
        cb_act_backward_sum_f(act, Z, A, D, rows, cols, out)
    else:
        cb_act_backward_sum_d(act, Z, A, D, rows, cols, out)


cdef void act_derivs(Activation act, const floating* Z, const floating* A,
                     floating* D1, floating* D2, Py_ssize_t n) noexcept nogil:
    """D1 = f'(Z), D2 = f''(Z) elementwise over n entries."""
    if floating is float:
        cb_act_derivs_f(act, Z, A, D1, D2, n)
    else:
        cb_act_derivs_d(act, Z, A, D1, D2, n)


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
