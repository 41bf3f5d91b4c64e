# Row-major BLAS shim over scipy.linalg.cython_blas, fused over float/double.
# BLAS is column-major; a row-major (m, n) array is the column-major (n, m)
# array of its transpose, so every wrapper swaps operands and dimensions.
from cython cimport floating

include "_config.pxi"

cpdef enum BLAS_Trans:
    NoTrans = 110  # 'n'
    Trans = 116    # 't'

cpdef enum BLAS_Uplo:
    Upper = 117    # 'u'
    Lower = 108    # 'l'

cdef floating _dot(int n, const floating* x, int incx,
                   const floating* y, int incy) noexcept nogil
cdef floating _nrm2(int n, const floating* x, int incx) noexcept nogil
cdef void _axpy(int n, floating alpha, const floating* x, int incx,
                floating* y, int incy) noexcept nogil
cdef void _scal(int n, floating alpha, floating* x, int incx) noexcept nogil
cdef void _gemv(BLAS_Trans ta, int m, int n, floating alpha,
                const floating* A, int lda, const floating* x, int incx,
                floating beta, floating* y, int incy) noexcept nogil
cdef void _ger(int m, int n, floating alpha, const floating* x, int incx,
               const floating* y, int incy, floating* A, int lda) noexcept nogil
cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb, floating beta,
                floating* C, int ldc) noexcept nogil
cdef void _syrk(BLAS_Uplo uplo, BLAS_Trans trans, int n, int k,
                floating alpha, const floating* A, int lda,
                floating beta, floating* C, int ldc) noexcept nogil
