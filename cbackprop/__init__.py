"""cbackprop: fast first- and second-order backpropagation for MLPs.

Typed Cython kernels over SciPy's BLAS compute the forward pass, the loss,
its gradient and exact curvature. The package namespace holds

* :class:`Network`: an MLP's losses, gradients and curvature as pure
  functions of a flat parameter vector;
* :class:`MLPClassifier`, :class:`MLPRegressor`: drop-ins for scikit-learn's;
* :mod:`cbackprop.curvature`: curvature matrices as SciPy LinearOperators,
  eigenvalues, traces and spectral densities;
* :mod:`cbackprop.optimize`: second-order training (Levenberg-Marquardt,
  Hessian-free, trust-region Newton, K-FAC);
* :mod:`cbackprop.dask` (extra ``cbackprop[dask]``): the estimators, operators and
  solvers on row-chunked dask arrays across a dask.distributed cluster; imported
  on first use, so that ``import cbackprop`` never imports dask.
"""
import importlib
import os

# The thread teams' workers wait between two of a batch's parallel phases
# (microseconds apart) by spinning; GNU OpenMP's default spin lasts about a
# hundred times longer after every call, time a busy machine's other
# processes (and this process's own threads) need. A shorter spin, unless the
# user chose a wait policy: read when the OpenMP runtime loads, below.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from cbackprop import curvature, optimize  # noqa: E402
from cbackprop.estimators import MLPClassifier, MLPRegressor  # noqa: E402
from cbackprop.network import Network  # noqa: E402

__all__ = ["Network", "MLPClassifier", "MLPRegressor", "curvature", "optimize"]
__version__ = "0.1.0"


def __getattr__(name):
    # cbackprop.dask on first access: dask is an optional dependency.
    if name == "dask":
        return importlib.import_module("cbackprop.dask")
    raise AttributeError(f"module 'cbackprop' has no attribute {name!r}")
