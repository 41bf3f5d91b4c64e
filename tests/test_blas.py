"""Row-major BLAS shim (``cbackprop._blas``) against NumPy.

Every ``*_memview`` twin wraps the nogil kernel the package uses, on
row-major C-contiguous float32/float64 arrays. Outputs are written in place
(the twins return None). Errors are bounded the standard way,
``|fl(x) - x| <= c k eps (|alpha| |A| |B| + |beta| |C|)``, with the
reference computed in float64: ``assert_close`` of kind 'eps' with factor
``k + 4`` and that bound as scale (the bound exceeds ``|x|``, so the tolerance
is at most ``2 (k + 4) eps`` times it).
"""
import numpy as np
import pytest

from cbackprop._blas import (BLAS_Trans, BLAS_Uplo, axpy_memview, dot_memview,
                             gemm_memview, gemv_memview, ger_memview, nrm2_memview,
                             scal_memview, syrk_memview)
from common import DTYPES, assert_close

TRANS = [pytest.param(BLAS_Trans.NoTrans, id="N"), pytest.param(BLAS_Trans.Trans, id="T")]
UPLO = [pytest.param(BLAS_Uplo.Upper, id="upper"), pytest.param(BLAS_Uplo.Lower, id="lower")]
LENGTHS = [pytest.param(n, id=f"n{n}") for n in (1, 2, 7, 100)]
MATRIX_SHAPES = [pytest.param(s, id="{}x{}".format(*s)) for s in
                 [(1, 1), (1, 5), (4, 1), (3, 7), (8, 5)]]
GEMM_SHAPES = [pytest.param(s, id="m{}n{}k{}".format(*s)) for s in
               [(1, 1, 1), (1, 4, 3), (5, 1, 3), (3, 4, 1), (5, 3, 7), (2, 6, 9)]]
ALPHA, BETA = -1.75, 0.625


def rand(rng, shape, dtype):
    return np.ascontiguousarray(rng.normal(size=shape).astype(dtype))


def f64(a):
    return np.asarray(a, dtype=np.float64)


def op(t, A):
    return A if t == BLAS_Trans.NoTrans else A.T


# ------------------------------------------------------------------ level 1
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dot(dtype, n, rng):
    x, y = rand(rng, n, dtype), rand(rng, n, dtype)
    got = dot_memview(x, y)
    assert_close(got, f64(x) @ f64(y), dtype, "eps", factor=n + 4,
                 scale=np.abs(f64(x)) @ np.abs(f64(y)), err_msg="dot")


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nrm2(dtype, n, rng):
    x = rand(rng, n, dtype)
    ref = np.linalg.norm(f64(x))
    assert_close(nrm2_memview(x), ref, dtype, "eps", factor=n + 4, scale=ref, err_msg="nrm2")
    assert nrm2_memview(-x) == nrm2_memview(x)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_axpy_in_place(dtype, n, rng):
    x, y = rand(rng, n, dtype), rand(rng, n, dtype)
    x0, y0 = x.copy(), y.copy()
    y_id = y.__array_interface__["data"][0]
    assert axpy_memview(ALPHA, x, y) is None
    assert y.__array_interface__["data"][0] == y_id
    np.testing.assert_array_equal(x, x0)  # input untouched
    ref = ALPHA * f64(x0) + f64(y0)
    assert_close(y, ref, dtype, "eps", factor=5,
                 scale=np.abs(ALPHA * f64(x0)) + np.abs(f64(y0)), err_msg="axpy")


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_scal_in_place(dtype, n, rng):
    x = rand(rng, n, dtype)
    x0 = x.copy()
    assert scal_memview(ALPHA, x) is None
    np.testing.assert_array_equal(x, (dtype(ALPHA) * x0).astype(dtype))  # one rounding: exact


@pytest.mark.parametrize("dtype", DTYPES)
def test_level1_on_views_of_a_larger_buffer(dtype, rng):
    """Contiguous slices: the wrapper starts at the slice, not the base."""
    buf = rand(rng, 20, dtype)
    x, y = buf[3:9], buf[11:17]
    ref_dot = f64(x) @ f64(y)
    assert_close(dot_memview(x, y), ref_dot, dtype, "eps", factor=10,
                 scale=np.abs(f64(x)) @ np.abs(f64(y)))
    before = buf.copy()
    axpy_memview(2.0, x, y)
    np.testing.assert_array_equal(buf[:11], before[:11])
    np.testing.assert_array_equal(buf[17:], before[17:])
    assert_close(buf[11:17], 2 * f64(before[3:9]) + f64(before[11:17]), dtype, "eps",
                 factor=5, scale=2 * np.abs(f64(before[3:9])) + np.abs(f64(before[11:17])))


# ------------------------------------------------------------------ level 2
@pytest.mark.parametrize("shape", MATRIX_SHAPES)
@pytest.mark.parametrize("ta", TRANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv(dtype, ta, shape, rng):
    """y := alpha op(A) x + beta y with A row-major (m, n)."""
    m, n = shape
    A = rand(rng, (m, n), dtype)
    nx, ny = (n, m) if ta == BLAS_Trans.NoTrans else (m, n)
    x, y = rand(rng, nx, dtype), rand(rng, ny, dtype)
    A0, x0, y0 = A.copy(), x.copy(), y.copy()
    y_before = y
    assert gemv_memview(ta, ALPHA, A, x, BETA, y) is None
    assert y is y_before and y.shape == (ny,)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(x, x0)
    opA = op(ta, f64(A0))
    ref = ALPHA * opA @ f64(x0) + BETA * f64(y0)
    bound = abs(ALPHA) * np.abs(opA) @ np.abs(f64(x0)) + abs(BETA) * np.abs(f64(y0))
    assert_close(y, ref, dtype, "eps", factor=nx + 4, scale=bound, err_msg="gemv")


@pytest.mark.parametrize("ta", TRANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_beta_zero_ignores_y(dtype, ta, rng):
    """beta = 0: y is write-only (NaN garbage in y does not propagate)."""
    A = rand(rng, (4, 3), dtype)
    nx, ny = (3, 4) if ta == BLAS_Trans.NoTrans else (4, 3)
    x = rand(rng, nx, dtype)
    y = np.full(ny, np.nan, dtype=dtype)
    gemv_memview(ta, 1.0, A, x, 0.0, y)
    opA = op(ta, f64(A))
    assert_close(y, opA @ f64(x), dtype, "eps", factor=nx + 4,
                 scale=np.abs(opA) @ np.abs(f64(x)), err_msg="gemv beta=0")


@pytest.mark.parametrize("shape", MATRIX_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ger(dtype, shape, rng):
    """A := alpha x y^T + A with A row-major (m, n), x (m,), y (n,)."""
    m, n = shape
    A, x, y = rand(rng, (m, n), dtype), rand(rng, m, dtype), rand(rng, n, dtype)
    A0, x0, y0 = A.copy(), x.copy(), y.copy()
    ptr = A.__array_interface__["data"][0]
    assert ger_memview(ALPHA, x, y, A) is None
    assert A.__array_interface__["data"][0] == ptr
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    ref = ALPHA * np.outer(f64(x0), f64(y0)) + f64(A0)
    bound = abs(ALPHA) * np.abs(np.outer(f64(x0), f64(y0))) + np.abs(f64(A0))
    assert_close(A, ref, dtype, "eps", factor=5, scale=bound, err_msg="ger")


# ------------------------------------------------------------------ level 3
@pytest.mark.parametrize("mnk", GEMM_SHAPES)
@pytest.mark.parametrize("tb", TRANS)
@pytest.mark.parametrize("ta", TRANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm(dtype, ta, tb, mnk, rng):
    """C := alpha op(A) op(B) + beta C, all row-major, C (m, n)."""
    m, n, k = mnk
    A = rand(rng, (m, k) if ta == BLAS_Trans.NoTrans else (k, m), dtype)
    B = rand(rng, (k, n) if tb == BLAS_Trans.NoTrans else (n, k), dtype)
    C = rand(rng, (m, n), dtype)
    A0, B0, C0 = A.copy(), B.copy(), C.copy()
    C_view = C[:]  # a second view of the same buffer sees the result
    assert gemm_memview(ta, tb, ALPHA, A, B, BETA, C) is None
    assert np.shares_memory(C, C_view)
    np.testing.assert_array_equal(C_view, C)
    np.testing.assert_array_equal(A, A0)
    np.testing.assert_array_equal(B, B0)
    opA, opB = op(ta, f64(A0)), op(tb, f64(B0))
    ref = ALPHA * opA @ opB + BETA * f64(C0)
    bound = abs(ALPHA) * np.abs(opA) @ np.abs(opB) + abs(BETA) * np.abs(f64(C0))
    assert_close(C, ref, dtype, "eps", factor=k + 4, scale=bound, err_msg="gemm")


@pytest.mark.parametrize("tb", TRANS)
@pytest.mark.parametrize("ta", TRANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_beta_zero_ignores_c(dtype, ta, tb, rng):
    """beta = 0: C is write-only (NaN garbage in C does not propagate)."""
    m, n, k = 3, 5, 4
    A = rand(rng, (m, k) if ta == BLAS_Trans.NoTrans else (k, m), dtype)
    B = rand(rng, (k, n) if tb == BLAS_Trans.NoTrans else (n, k), dtype)
    C = np.full((m, n), np.nan, dtype=dtype)
    gemm_memview(ta, tb, 1.0, A, B, 0.0, C)
    opA, opB = op(ta, f64(A)), op(tb, f64(B))
    assert_close(C, opA @ opB, dtype, "eps", factor=k + 4, scale=np.abs(opA) @ np.abs(opB),
                 err_msg="gemm beta=0")


SYRK_SHAPES = [pytest.param(s, id="n{}k{}".format(*s)) for s in
               [(1, 1), (1, 4), (4, 1), (5, 3), (3, 8)]]


@pytest.mark.parametrize("nk", SYRK_SHAPES)
@pytest.mark.parametrize("uplo", UPLO)
@pytest.mark.parametrize("trans", TRANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_syrk(dtype, trans, uplo, nk, rng):
    """C := alpha A A^T + beta C (N, A (n, k)) or alpha A^T A + beta C (T,
    A (k, n)); only the `uplo` triangle (with the diagonal) of the row-major C
    is written, the other one is left bit-for-bit untouched."""
    n, k = nk
    A = rand(rng, (n, k) if trans == BLAS_Trans.NoTrans else (k, n), dtype)
    C = rand(rng, (n, n), dtype)  # deliberately not symmetric
    A0, C0 = A.copy(), C.copy()
    C_view = C[:]
    assert syrk_memview(uplo, trans, ALPHA, A, BETA, C) is None
    assert np.shares_memory(C, C_view)
    np.testing.assert_array_equal(A, A0)
    P = f64(A0) @ f64(A0).T if trans == BLAS_Trans.NoTrans else f64(A0).T @ f64(A0)
    absP = (np.abs(f64(A0)) @ np.abs(f64(A0)).T if trans == BLAS_Trans.NoTrans
            else np.abs(f64(A0)).T @ np.abs(f64(A0)))
    ref = ALPHA * P + BETA * f64(C0)
    bound = abs(ALPHA) * absP + abs(BETA) * np.abs(f64(C0))
    written = (np.triu(np.ones((n, n), bool)) if uplo == BLAS_Uplo.Upper
               else np.tril(np.ones((n, n), bool)))
    assert_close(C[written], ref[written], dtype, "eps", factor=k + 4, scale=bound[written],
                 err_msg="syrk triangle")
    np.testing.assert_array_equal(C[~written], C0[~written], err_msg="other triangle touched")


@pytest.mark.parametrize("uplo", UPLO)
@pytest.mark.parametrize("trans", TRANS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_syrk_other_triangle_neither_read_nor_written(dtype, trans, uplo, rng):
    """NaN in the opposite triangle stays there and does not leak into the
    written triangle (beta != 0, so the written triangle of C is read)."""
    n, k = 4, 3
    A = rand(rng, (n, k) if trans == BLAS_Trans.NoTrans else (k, n), dtype)
    C = rand(rng, (n, n), dtype)
    other = (np.tril(np.ones((n, n), bool), -1) if uplo == BLAS_Uplo.Upper
             else np.triu(np.ones((n, n), bool), 1))
    C[other] = np.nan
    syrk_memview(uplo, trans, 0.5, A, 2.0, C)
    assert np.isnan(C[other]).all()
    assert np.isfinite(C[~other]).all()


@pytest.mark.parametrize("uplo", UPLO)
@pytest.mark.parametrize("dtype", DTYPES)
def test_syrk_beta_zero_ignores_c(dtype, uplo, rng):
    n, k = 4, 6
    A = rand(rng, (n, k), dtype)
    C = np.full((n, n), np.nan, dtype=dtype)
    syrk_memview(uplo, BLAS_Trans.NoTrans, 1.0, A, 0.0, C)
    written = (np.triu(np.ones((n, n), bool)) if uplo == BLAS_Uplo.Upper
               else np.tril(np.ones((n, n), bool)))
    P = f64(A) @ f64(A).T
    assert_close(C[written], P[written], dtype, "eps", factor=k + 4,
                 scale=(np.abs(f64(A)) @ np.abs(f64(A)).T)[written])
    assert np.isnan(C[~written]).all()


# ------------------------------------------------------------- input checks
@pytest.mark.parametrize("dtype", DTYPES)
def test_rejects_non_contiguous_and_mixed_dtypes(dtype, rng):
    """The typed memoryviews refuse what the raw-pointer kernels would
    misread: strided rows/columns, and mixing float32 with float64."""
    A = rand(rng, (4, 6), dtype)
    B = rand(rng, (6, 3), dtype)
    C = np.zeros((4, 3), dtype)
    with pytest.raises(ValueError):
        gemm_memview(BLAS_Trans.NoTrans, BLAS_Trans.NoTrans, 1.0, A[:, ::2], B[:3], 0.0, C)
    with pytest.raises(ValueError):
        gemm_memview(BLAS_Trans.NoTrans, BLAS_Trans.Trans, 1.0, A, B.T, 0.0, C)
    with pytest.raises(ValueError):
        dot_memview(A[0, ::2], A[1, ::2])
    other = np.float32 if dtype == np.float64 else np.float64
    with pytest.raises((TypeError, ValueError)):
        gemm_memview(BLAS_Trans.NoTrans, BLAS_Trans.NoTrans, 1.0, A, B, 0.0, C.astype(other))
    with pytest.raises((TypeError, ValueError)):
        axpy_memview(1.0, A[0], A[1].astype(other))
