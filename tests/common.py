"""What the cbackprop tests share: tolerances, seeds, architectures, dtypes.

``import common`` from any test module (``tests/`` is on ``sys.path``, as for
``reference``).

Tolerances
----------
:func:`assert_close` checks, entry by entry,

    |actual - expected| <= factor * RTOL[kind][dtype] * (|expected| + scale)

``scale`` (a number, or an array broadcasting against ``expected``) is the floor of
the tolerance: entries of sums can cancel to nearly zero while their rounding error
stays that of the largest terms, hence the default ``max|expected|``. ``tiny=True``
adds the smallest normal number of ``dtype`` (results that underflow gradually).
``dtype`` is the dtype in which ``actual`` was computed: it picks the row of the
table.

Kinds of comparison (``RTOL``), one relative tolerance per dtype:

``"eps"``
    The unit roundoff itself: single kernels whose error is bounded in units of eps
    (``factor`` counts the roundings, ``scale`` is the magnitude of the terms).
``"rounding"``
    Two results of the package for one quantity by different paths in one dtype
    (a product and its dense matrix, chunked and unchunked sums).
``"reference"``
    The package against a float64 NumPy twin (``reference.py``, scikit-learn)
    evaluated at the same inputs, rounded to ``dtype`` first.
``"fd"``
    The package against a float64 reference built from 4th-order central
    differences (step 1e-3) of exact gradients (the Hessians of test_curvature):
    their truncation error reaches 2.5e-10 of the largest entry (tanh, poisson).
"""
import zlib

import numpy as np
import pytest

EPS32 = float(np.finfo(np.float32).eps)

RTOL = {
    "eps": {np.float64: float(np.finfo(np.float64).eps), np.float32: EPS32},
    "rounding": {np.float64: 1e-12, np.float32: 20 * EPS32},
    "reference": {np.float64: 1e-10, np.float32: 100 * EPS32},
    "fd": {np.float64: 1e-9, np.float32: 100 * EPS32},
}

# The dtypes of the package, and their parametrization (ids are the dtype names).
FLOATS = (np.float64, np.float32)
DTYPES = [pytest.param(d, id=np.dtype(d).name) for d in FLOATS]

# The architectures ``[n_0, ..., n_L]`` of the reference grids, by name.
ARCHS = {"nohidden": (4, 3), "hidden1": (4, 5, 3), "hidden2": (3, 4, 5, 2)}
HIDDEN_ARCHS = {name: sizes for name, sizes in ARCHS.items() if len(sizes) > 2}
# Deeper than the grids: terms that span three and four layers (the exact Hessian's
# cross terms and residual factors), checked against exact twins only.
DEEP_ARCHS = {"hidden3": (3, 4, 3, 4, 2), "hidden4": (2, 3, 4, 3, 5, 2)}


def dtype_id(dtype):
    """The id of a dtype in parametrized test names: 'float64' or 'float32'."""
    return np.dtype(dtype).name


def seed(*parts):
    """A deterministic seed per test case (different cases, different data)."""
    return zlib.crc32("-".join(map(str, parts)).encode())


def rtol(dtype, kind="reference"):
    """The relative tolerance of a comparison ``kind`` for results in ``dtype``."""
    if kind not in RTOL:
        raise ValueError(f"unknown comparison kind {kind!r}; expected one of {list(RTOL)}")
    return RTOL[kind][np.dtype(dtype).type]


def assert_close(actual, expected, dtype, kind="reference", *, factor=1.0, scale=None,
                 tiny=False, err_msg=""):
    """Assert ``|actual - expected| <= factor rtol (|expected| + scale)``.

    Parameters
    ----------
    actual : array-like
        Result computed in ``dtype`` (compared in float64).
    expected : array-like, same shape as ``actual``
    dtype : numpy dtype
        Picks the tolerance (see the module docstring).
    kind : {'eps', 'rounding', 'reference', 'fd'}
    factor : float
        Multiplies the tolerance of the kind.
    scale : float or array-like, optional
        Floor of the tolerance, in units of ``expected`` (default ``max|expected|``).
    tiny : bool
        Add the smallest normal number of ``dtype`` to the tolerance.
    err_msg : str
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    if scale is None:
        scale = float(np.max(np.abs(expected))) if expected.size else 1.0
    tol = factor * rtol(dtype, kind) * (np.abs(expected) + np.asarray(scale, np.float64))
    if tiny:
        tol = tol + np.finfo(dtype).tiny
    err = np.abs(actual.astype(np.float64) - expected)
    bad = ~(err <= tol)
    if bad.any():
        tol = np.broadcast_to(tol, err.shape)
        worst = tuple(int(i) for i in np.unravel_index(
            np.argmax(np.where(bad, err / tol, -np.inf)), err.shape))
        raise AssertionError(
            f"{err_msg}: {int(bad.sum())} of {bad.size} entries off ({kind}, factor "
            f"{factor}, {dtype_id(dtype)}); worst at {worst}: actual "
            f"{float(actual[worst])!r}, expected {float(expected[worst])!r}, error "
            f"{float(err[worst]):.3g} > tolerance {float(tol[worst]):.3g}")
