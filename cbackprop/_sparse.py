"""Sparse input rows: scipy.sparse X converted once to canonical CSR.

The kernels read a sparse X through three arrays (values, column indices,
row offsets); :class:`CSRRows` holds them and the operations the Python
layer needs on rows (contiguous slices as views, gathers, densification of
a chunk). Only the first layer ever reads X, so X stays sparse everywhere
else: forward and gradient kernels multiply by it directly.
"""
import numpy as np
import scipy.sparse as sp

FORMATS = ("csr", "csc")


class CSRRows:
    """Rows of a CSR matrix as the kernels read them.

    Parameters
    ----------
    data : ndarray of shape (nnz,), float32 or float64
    indices : ndarray of shape (nnz,), int32 or int64
        Column of each value, sorted and unique within a row.
    indptr : ndarray of shape (N + 1,), indices' dtype
        Offsets of the rows into data and indices. They need not start at
        0: a row slice shares data and indices with its parent and keeps
        a view of the parent's offsets.
    n_cols : int

    Attributes
    ----------
    shape : (N, n_cols)
    dtype : the values' dtype
    nnz : stored values in these rows
    """

    __slots__ = ("data", "indices", "indptr", "shape")
    ndim = 2

    def __init__(self, data, indices, indptr, n_cols):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (indptr.shape[0] - 1, int(n_cols))

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def nnz(self):
        return int(self.indptr[-1] - self.indptr[0])

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        """Rows by a contiguous slice (a view) or an integer array (a copy)."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step != 1:
                return self[np.arange(start, stop, step)]
            return CSRRows(self.data, self.indices, self.indptr[start:max(stop, start) + 1],
                           self.shape[1])
        return self._gather(np.asarray(rows, dtype=np.intp))

    def _gather(self, idx):
        lo, counts = self.indptr[idx], np.diff(self.indptr)[idx]
        indptr = np.zeros(idx.shape[0] + 1, self.indptr.dtype)
        np.cumsum(counts, out=indptr[1:])
        # Position of each gathered value in the parent's arrays.
        src = np.arange(indptr[-1], dtype=np.intp) + np.repeat(lo - indptr[:-1], counts)
        return CSRRows(self.data[src], self.indices[src], indptr, self.shape[1])

    def tocsr(self):
        """The rows as a scipy.sparse csr_matrix (sharing no offsets)."""
        lo, hi = self.indptr[0], self.indptr[-1]
        return sp.csr_matrix((self.data[lo:hi], self.indices[lo:hi], self.indptr - lo),
                             shape=self.shape)

    def toarray(self):
        """The rows as a dense C-contiguous (N, n_cols) array."""
        return np.ascontiguousarray(self.tocsr().toarray())

    def astype(self, dtype):
        """The rows with values of dtype (self when they already are)."""
        if self.data.dtype == dtype:
            return self
        return CSRRows(self.data.astype(dtype), self.indices, self.indptr, self.shape[1])


def dense_rows(X):
    """X as a dense array: CSR rows densified (one chunk's worth), arrays as
    they are."""
    return X.toarray() if isinstance(X, CSRRows) else X


def check_sparse_X(X, dtype):
    """A scipy.sparse matrix or array as CSRRows of dtype, converted once.

    CSR and CSC are accepted (CSC converted to CSR); the result has sorted
    column indices without duplicates (duplicates summed), int32 or int64
    indices as given (both arrays of one width), finite values.
    """
    fmt = X.format
    if fmt not in FORMATS:
        raise TypeError(f"X is a sparse matrix in {fmt.upper()} format; cbackprop "
                        f"accepts CSR and CSC (convert with X.tocsr())")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-dimensional, got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must be numeric (bool, integer or float), got dtype {X.dtype}")
    idx = np.promote_types(X.indices.dtype, X.indptr.dtype)
    if idx not in (np.int32, np.int64):
        idx = np.dtype(np.int64)
    X = X.tocsr()  # a CSC X converted; a CSR X as it is
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    data = X.data
    if data.dtype != dtype:
        with np.errstate(over="ignore", invalid="ignore"):
            data = data.astype(dtype)
    # After the cast: a finite float64 can overflow in float32.
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError("X contains NaN or infinity")
    return CSRRows(np.ascontiguousarray(data), np.ascontiguousarray(X.indices, dtype=idx),
                   np.ascontiguousarray(X.indptr, dtype=idx), X.shape[1])


def as_rows(X, dtype):
    """Already validated X as the kernels take it: scipy.sparse as CSRRows
    (see :func:`check_sparse_X`), arrays C-contiguous of dtype."""
    if isinstance(X, CSRRows):
        return X.astype(dtype)
    if sp.issparse(X):
        return check_sparse_X(X, dtype)
    return np.ascontiguousarray(X, dtype=dtype)
