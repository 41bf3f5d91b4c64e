# The network description and the first-order passes shared by every
# quantity: forward, and the backward pass of k stacked output-space
# vectors through the layers (the network's transposed Jacobian).
from cython cimport floating
from cbackprop._activations cimport Activation
from cbackprop._losses cimport Loss

cdef struct NetSpec:
    int n_layers                 # L weight layers
    const Py_ssize_t* sizes      # L + 1 layer widths, n_0 .. n_L
    const Py_ssize_t* w_off      # offset of W_l (row-major n_{l-1} x n_l) in theta
    const Py_ssize_t* b_off      # offset of b_l in theta
    const Py_ssize_t* h_off      # column offset of layer l in the stacked cache
    Py_ssize_t width             # sum of n_1 .. n_L: cache holds N * width
    Py_ssize_t max_hidden        # widest hidden layer (1 when there is none)
    Py_ssize_t n_params
    Activation act
    Loss loss

cpdef enum Reduce:
    GRAD = 0          # out[r] = sum_i (a_i d_ri^T, d_ri): one gradient per block
    PER_SAMPLE = 1    # out[i * k + r] = (a_i d_ri^T, d_ri): one row per sample
    NO_REDUCE = 2     # deltas only (kept in `store`)

cdef class NetPlan:
    cdef NetSpec spec
    cdef object _arrays

cdef void forward(const NetSpec* s, const floating* theta, const floating* X,
                  Py_ssize_t N, floating* Z, floating* A) noexcept nogil
cdef void backward(const NetSpec* s, const floating* theta, const floating* X,
                   Py_ssize_t N, const floating* Z, const floating* A,
                   const floating* D, Py_ssize_t k, floating* work,
                   Reduce mode, floating* out) noexcept nogil
cdef double add_l2(const NetSpec* s, const floating* theta, double coef,
                   floating* grad) noexcept nogil
cdef double loss_grad_kernel(const NetSpec* s, const floating* theta,
                             const floating* X, const floating* Y,
                             const floating* sw, Py_ssize_t N, double sw_sum,
                             double alpha, floating* Z, floating* A,
                             floating* D, floating* work,
                             floating* grad) noexcept nogil
