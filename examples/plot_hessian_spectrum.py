"""
Hessian and GGN spectra of a fitted model
=========================================

The eigenvalue density of the Hessian ``H`` and of the generalized Gauss-Newton
matrix ``G`` of a network trained on digits, estimated by stochastic Lanczos
quadrature (:func:`cbackprop.curvature.spectral_density`) from exact
matrix-vector products, with the top five eigenvalues of each (ARPACK,
:func:`cbackprop.curvature.eigenvalues`) marked by dashed lines.

``G`` is positive semi-definite, so its density lives on ``[0, inf)``; ``H``
adds the residual terms of the hidden activations, which are indefinite: near
a minimum they are small, so both spectra share a bulk near zero and a few
large outliers, while ``H`` alone has negative eigenvalues.
"""
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import cbackprop as cb
from cbackprop import curvature
from cbackprop.plotting import plot_spectral_density

X, y = load_digits(return_X_y=True)
X, y = X[:1000] / 16.0, y[:1000]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    est = cb.MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", max_iter=100,
                           random_state=0).fit(X, y)
Y = np.eye(10)[y]
net, theta = est.network_, est.theta_
print(f"{net.n_params} parameters, training loss {est.loss_:.4f}")

operators = {"Hessian": curvature.HessianOperator(net, theta, X, Y),
             "GGN": curvature.GGNOperator(net, theta, X, Y)}
fig, ax = plt.subplots(figsize=(7, 4.2))
for name, op in operators.items():
    top = curvature.eigenvalues(op, k=5, random_state=0, return_eigenvectors=False)
    grid, density = curvature.spectral_density(op, n_probes=8, n_iter=40, random_state=0)
    print(f"{name:8s} top eigenvalues {np.round(top, 3)}, trace (Hutch++) "
          f"{curvature.trace(op, n_matvecs=90, random_state=0):.3f}")
    plot_spectral_density(grid, density, eigenvalues=top, ax=ax, label=name)
ax.set_title("digits, 64-32-10 tanh after 100 adam epochs")
fig.tight_layout()

