"""Shared fixtures for the cbackprop tests.

``OPENBLAS_NUM_THREADS=1`` is set by CI, not here.  The dense NumPy reference lives in
``tests/reference.py`` (``import reference`` from any test module); the tolerances
(``assert_close``), seeds, architectures and dtype parametrization shared by the tests
in ``tests/common.py`` (``import common``).
"""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded Generator for each test (tests stay deterministic)."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def cb():
    """The ``cbackprop`` package; skips the test if it is not built (yet)."""
    cbackprop = pytest.importorskip("cbackprop")
    if not hasattr(cbackprop, "Network"):
        pytest.skip("cbackprop.Network is not available")
    return cbackprop
