"""cbackprop: fast first- and second-order backpropagation for MLPs.

Typed Cython kernels over SciPy's BLAS compute the forward pass, the loss,
its gradient and (see :mod:`cbackprop.curvature`) exact curvature.
"""
from cbackprop.network import Network
from cbackprop.estimators import MLPClassifier, MLPRegressor

__all__ = ["Network", "MLPClassifier", "MLPRegressor"]
__version__ = "0.1.0"
