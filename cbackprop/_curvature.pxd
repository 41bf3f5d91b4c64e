# The dense Kronecker-sum accumulation of the GGN (shared by net.ggn,
# net.block_ggn and Levenberg-Marquardt's quasi-Hessian) and its workspace.
from cython cimport floating
from cbackprop._network cimport NetSpec, Region, Batch

cdef struct KronDims:
    Py_ssize_t nn_max      # widest K_i (entries per sample) over the pairs
    Py_ssize_t chunk_max   # most (p, p') rows of one GEMM (rows of Wt)
    Py_ssize_t mp          # entries of Mp
    Py_ssize_t budget      # target entries of one GEMM output
    Py_ssize_t inputs      # sum_l (n_l + 1): the transposed inputs aT

cdef struct KronLayout:
    # K (nb, nn_max), Wt (chunk_max, nb), aT (inputs, nb), Mp (mp)
    KronDims dims
    Region K, Wt, aT, Mp

cdef KronDims kron_dims(const NetSpec* s) noexcept nogil
cdef Py_ssize_t kron_layout(const NetSpec* s, Py_ssize_t nb, Py_ssize_t at,
                            KronLayout* lay) noexcept nogil
cdef Py_ssize_t kron_row_entries(const NetSpec* s) noexcept nogil
cdef void kron_accumulate(const NetSpec* s, const Batch* b,
                          const floating* A, const floating* S, Py_ssize_t k,
                          Py_ssize_t C, Py_ssize_t nb, bint diag_only,
                          floating* G, floating* w,
                          const KronLayout* lay) noexcept nogil
cdef void add_l2_diag(const NetSpec* s, double coef, bint diag_only,
                      floating* G) noexcept nogil
