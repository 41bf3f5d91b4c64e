"""Input validation at the Python boundary.

Everything that reaches a kernel is converted here once: C-contiguous, of
the network's dtype, finite, of the right shape; a sparse X becomes
canonical CSR rows (:mod:`cbackprop._sparse`). Read-only arrays are fine
(kernels take const memoryviews) and are not copied when already suitable.
"""
import numbers

import numpy as np
import scipy.sparse as sp

from cbackprop._network import all_finite
from cbackprop._sparse import CSRRows, check_sparse_X

FLOAT_DTYPES = (np.float32, np.float64)


def check_float_dtype(dtype):
    """Return np.float32 or np.float64; anything else is a TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt.type


def _as_numeric(a, name):
    if type(a) is not np.ndarray and sp.issparse(a):
        raise TypeError(f"{name} is a sparse matrix; cbackprop needs a dense array "
                        f"(convert with {name}.toarray())")
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric (bool, integer or float), "
                        f"got dtype {arr.dtype}")
    return arr


# Below this many entries the exact elementwise test is cheaper than the
# errstate context the sum needs (a few us per call, paid by every product
# of an optimizer or eigensolver loop).
_SMALL = 1 << 16
# Up to this many entries a scalar nogil scan beats np.isfinite(a).all()
# (64 float64 entries: 0.11 against 0.94 us; 1024: 0.66 against 1.2 us; at
# 32768 the scan took 18.8 us against 6.3 us).
_SCAN = 1024


def _check_finite(arr, name):
    """ValueError if a float array holds NaN or inf.

    For large arrays a sum propagates NaN and inf, so a finite sum proves
    every entry finite without the full-size boolean temporary of
    np.isfinite; only a sum that is not finite (NaN, inf, or an overflow of
    finite values) needs the exact elementwise test.
    """
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    finite = all_finite(arr) if arr.size <= _SCAN else None   # None: not scanned
    if finite is None and arr.size <= _SMALL:
        finite = np.isfinite(arr).all()
    elif finite is None:
        with np.errstate(over="ignore", invalid="ignore"):
            total = np.add.reduce(arr, axis=None, dtype=np.float64)
        finite = np.isfinite(total) or np.isfinite(arr).all()
    if not finite:
        raise ValueError(f"{name} contains NaN or infinity")


def as_float_array(a, name, dtype, ndim):
    """Convert to a C-contiguous float array of `dtype` with `ndim` dims."""
    arr = _as_numeric(a, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    _check_finite(arr, name)
    if arr.dtype == dtype and arr.flags.c_contiguous:
        return arr
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    if out.dtype.itemsize < arr.dtype.itemsize:
        _check_finite(out, name)  # a finite float64 can overflow in float32
    return out


def check_X(X, n_features, dtype):
    """X as (N, n_features), N >= 1: a C-contiguous array, or CSRRows when X
    is a scipy.sparse matrix or array (CSR or CSC)."""
    if type(X) is np.ndarray:   # the common case first: per-call overhead
        X = as_float_array(X, "X", dtype, 2)
    elif isinstance(X, CSRRows):
        X = X.astype(dtype)
    elif sp.issparse(X):
        X = check_sparse_X(X, dtype)
    else:
        X = as_float_array(X, "X", dtype, 2)
    if X.shape[0] == 0:
        raise ValueError("X is empty: it has 0 samples")
    if X.shape[1] != n_features:
        raise ValueError(f"X has {X.shape[1]} features, but the network expects "
                         f"{n_features}")
    return X


def check_y(y, n_samples, n_outputs, dtype, loss):
    """y as (N, n_outputs); 1-D y is accepted when n_outputs == 1."""
    arr = _as_numeric(y, "y")
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise ValueError(f"y must have shape ({n_samples}, {n_outputs}), got {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"X and y have different numbers of samples: "
                         f"{n_samples} and {arr.shape[0]}")
    y = as_float_array(arr, "y", dtype, 2)
    if loss in ("poisson", "log_loss") and (y < 0).any():
        raise ValueError(f"y must be non-negative for loss={loss!r}")
    if loss == "binary_log_loss" and ((y < 0) | (y > 1)).any():
        raise ValueError("y must lie in [0, 1] for loss='binary_log_loss'")
    return y


def check_sample_weight(sample_weight, n_samples, dtype):
    """None, or positive-sum non-negative weights of shape (N,)."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        sample_weight = np.full(n_samples, sample_weight)
    sw = as_float_array(sample_weight, "sample_weight", dtype, 1)
    if sw.shape[0] != n_samples:
        raise ValueError(f"sample_weight has {sw.shape[0]} entries for "
                         f"{n_samples} samples")
    if (sw < 0).any():
        raise ValueError("sample_weight must be non-negative")
    if not sw.sum() > 0:
        raise ValueError("sample_weight must have a positive sum")
    return sw


def check_theta(theta, n_params, dtype):
    """theta as a 1-D array of n_params entries."""
    theta = as_float_array(theta, "theta", dtype, 1)
    if theta.shape[0] != n_params:
        raise ValueError(f"theta has {theta.shape[0]} entries, the network has "
                         f"{n_params} parameters")
    return theta


def check_option(value, options, name):
    """Return value if it is one of `options`, else a ValueError listing them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of "
                         f"{sorted(options)}")
    return value
