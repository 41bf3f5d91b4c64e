"""Row-major BLAS level 1-3 wrappers (operand swap) and their test twins.

Every ``_name`` is a ``nogil`` kernel on raw pointers of row-major arrays;
``name_memview`` is a thin Python-callable twin on memoryviews used by the
tests to check the shim against NumPy.
"""
from scipy.linalg.cython_blas cimport (
    sdot, ddot, snrm2, dnrm2, saxpy, daxpy, sscal, dscal, sgemv, dgemv,
    sger, dger, sgemm, dgemm, ssyrk, dsyrk)


cdef inline char _flip(BLAS_Trans t) noexcept nogil:
    return <char>(Trans if t == NoTrans else NoTrans)


cdef floating _dot(int n, const floating* x, int incx,
                   const floating* y, int incy) noexcept nogil:
    """x^T y"""
    cdef blas_int bn = n, bx = incx, by = incy
    if floating is float:
        return sdot(&bn, <float*>x, &bx, <float*>y, &by)
    else:
        return ddot(&bn, <double*>x, &bx, <double*>y, &by)


cdef floating _nrm2(int n, const floating* x, int incx) noexcept nogil:
    """||x||_2"""
    cdef blas_int bn = n, bx = incx
    if floating is float:
        return snrm2(&bn, <float*>x, &bx)
    else:
        return dnrm2(&bn, <double*>x, &bx)


cdef void _axpy(int n, floating alpha, const floating* x, int incx,
                floating* y, int incy) noexcept nogil:
    """y := alpha * x + y"""
    cdef blas_int bn = n, bx = incx, by = incy
    if floating is float:
        saxpy(&bn, &alpha, <float*>x, &bx, y, &by)
    else:
        daxpy(&bn, &alpha, <double*>x, &bx, y, &by)


cdef void _scal(int n, floating alpha, floating* x, int incx) noexcept nogil:
    """x := alpha * x"""
    cdef blas_int bn = n, bx = incx
    if floating is float:
        sscal(&bn, &alpha, x, &bx)
    else:
        dscal(&bn, &alpha, x, &bx)


cdef void _gemv(BLAS_Trans ta, int m, int n, floating alpha,
                const floating* A, int lda, const floating* x, int incx,
                floating beta, floating* y, int incy) noexcept nogil:
    """y := alpha * op(A).x + beta * y, A row-major (m, n)"""
    # Row-major A is column-major A^T of shape (n, m): flip the transpose.
    cdef char t = _flip(ta)
    cdef blas_int bm = n, bn = m, blda = lda, bx = incx, by = incy
    if floating is float:
        sgemv(&t, &bm, &bn, &alpha, <float*>A, &blda, <float*>x, &bx,
              &beta, y, &by)
    else:
        dgemv(&t, &bm, &bn, &alpha, <double*>A, &blda, <double*>x, &bx,
              &beta, y, &by)


cdef void _ger(int m, int n, floating alpha, const floating* x, int incx,
               const floating* y, int incy, floating* A, int lda) noexcept nogil:
    """A := alpha * x.y^T + A, A row-major (m, n)"""
    # Column-major A^T (n, m) += alpha * y.x^T.
    cdef blas_int bm = n, bn = m, blda = lda, bx = incx, by = incy
    if floating is float:
        sger(&bm, &bn, &alpha, <float*>y, &by, <float*>x, &bx, A, &blda)
    else:
        dger(&bm, &bn, &alpha, <double*>y, &by, <double*>x, &bx, A, &blda)


cdef void _gemm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                floating alpha, const floating* A, int lda,
                const floating* B, int ldb, floating beta,
                floating* C, int ldc) noexcept nogil:
    """C := alpha * op(A).op(B) + beta * C, all row-major, C (m, n)"""
    # C^T = op(B)^T op(A)^T: pass B first, and the dimensions swapped.
    cdef char cta = ta, ctb = tb
    cdef blas_int bm = n, bn = m, bk = k, blda = lda, bldb = ldb, bldc = ldc
    if floating is float:
        sgemm(&ctb, &cta, &bm, &bn, &bk, &alpha, <float*>B, &bldb,
              <float*>A, &blda, &beta, C, &bldc)
    else:
        dgemm(&ctb, &cta, &bm, &bn, &bk, &alpha, <double*>B, &bldb,
              <double*>A, &blda, &beta, C, &bldc)


cdef void _syrk(BLAS_Uplo uplo, BLAS_Trans trans, int n, int k,
                floating alpha, const floating* A, int lda,
                floating beta, floating* C, int ldc) noexcept nogil:
    """C := alpha * A.A^T + beta * C (NoTrans, A (n, k)) or
    C := alpha * A^T.A + beta * C (Trans, A (k, n)); only the `uplo`
    triangle of the row-major C is written."""
    # Column-major sees A^T and C^T: flip both the transpose and the triangle.
    cdef char t = _flip(trans)
    cdef char u = <char>(Lower if uplo == Upper else Upper)
    cdef blas_int bn = n, bk = k, blda = lda, bldc = ldc
    if floating is float:
        ssyrk(&u, &t, &bn, &bk, &alpha, <float*>A, &blda, &beta, C, &bldc)
    else:
        dsyrk(&u, &t, &bn, &bk, &alpha, <double*>A, &blda, &beta, C, &bldc)


# ---------------------------------------------------------------- test twins
def dot_memview(const floating[::1] x, const floating[::1] y):
    return _dot(<int>x.shape[0], &x[0], 1, &y[0], 1)


def nrm2_memview(const floating[::1] x):
    return _nrm2(<int>x.shape[0], &x[0], 1)


def axpy_memview(double alpha, const floating[::1] x, floating[::1] y):
    _axpy(<int>x.shape[0], <floating>alpha, &x[0], 1, &y[0], 1)


def scal_memview(double alpha, floating[::1] x):
    _scal(<int>x.shape[0], <floating>alpha, &x[0], 1)


def gemv_memview(BLAS_Trans ta, double alpha, const floating[:, ::1] A,
                 const floating[::1] x, double beta, floating[::1] y):
    _gemv(ta, <int>A.shape[0], <int>A.shape[1], <floating>alpha, &A[0, 0],
          <int>A.shape[1], &x[0], 1, <floating>beta, &y[0], 1)


def ger_memview(double alpha, const floating[::1] x, const floating[::1] y,
                floating[:, ::1] A):
    _ger(<int>A.shape[0], <int>A.shape[1], <floating>alpha, &x[0], 1, &y[0], 1,
         &A[0, 0], <int>A.shape[1])


def gemm_memview(BLAS_Trans ta, BLAS_Trans tb, double alpha,
                 const floating[:, ::1] A, const floating[:, ::1] B,
                 double beta, floating[:, ::1] C):
    cdef int k = <int>(A.shape[1] if ta == NoTrans else A.shape[0])
    _gemm(ta, tb, <int>C.shape[0], <int>C.shape[1], k, <floating>alpha, &A[0, 0],
          <int>A.shape[1], &B[0, 0], <int>B.shape[1], <floating>beta, &C[0, 0],
          <int>C.shape[1])


def syrk_memview(BLAS_Uplo uplo, BLAS_Trans trans, double alpha,
                 const floating[:, ::1] A, double beta, floating[:, ::1] C):
    cdef int k = <int>(A.shape[1] if trans == NoTrans else A.shape[0])
    _syrk(uplo, trans, <int>C.shape[0], k, <floating>alpha, &A[0, 0], <int>A.shape[1],
          <floating>beta, &C[0, 0], <int>C.shape[1])
