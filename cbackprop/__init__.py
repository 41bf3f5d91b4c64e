"""cbackprop: fast first- and second-order backpropagation for MLPs.

Typed Cython kernels over SciPy's BLAS compute the forward pass, the loss,
its gradient and (see :mod:`cbackprop.curvature`) exact curvature.
"""
from cbackprop.network import Network

__all__ = ["Network"]
__version__ = "0.1.0"
