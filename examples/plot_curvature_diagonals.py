"""
Where the curvature lives: diagonals per layer
==============================================

The exact diagonals of the generalized Gauss-Newton matrix
(:meth:`cbackprop.Network.diag_ggn`) and of the Hessian
(:meth:`cbackprop.Network.diag_hessian`) of a two-hidden-layer network fitted
on digits, drawn by :func:`cbackprop.plotting.plot_layer_diagonals` as one heat
map per weight matrix ``W_l`` (rows: inputs of the layer, columns: its units),
on a log scale.

Rows of ``W_1`` that belong to pixels blank in every sample (a few on the
borders of the 8 x 8 digits) are the darkest: their input is zero for every
sample, so all that is left of their curvature is the L2 penalty's
``alpha / W`` (``1e-4 / 800`` here). Summing the first layer's GGN diagonal over its units gives
one number per pixel, drawn last as an image.
"""
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import cbackprop as cb
from cbackprop.plotting import plot_layer_diagonals

X, y = load_digits(return_X_y=True)
X, y = X[:800] / 16.0, y[:800]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    est = cb.MLPClassifier(hidden_layer_sizes=(24, 16), activation="tanh", max_iter=60,
                           random_state=0).fit(X, y)
net, theta, Y = est.network_, est.theta_, np.eye(10)[y]

diag_ggn = net.diag_ggn(theta, X, Y)
fig = plot_layer_diagonals(net, diag_ggn)
fig.suptitle("GGN diagonal, log10 per weight")
fig.tight_layout()

# %%
# The Hessian diagonal adds the residual terms of the hidden activations, which
# can be negative: shown here is its magnitude.
diag_h = net.diag_hessian(theta, X, Y)
fig = plot_layer_diagonals(net, diag_h)
fig.suptitle("Hessian diagonal, log10 |entry|")
fig.tight_layout()
print(f"negative Hessian diagonal entries: {np.mean(diag_h < 0):.1%}; "
      f"largest |H_jj - G_jj|: {np.max(np.abs(diag_h - diag_ggn)) / diag_ggn.max():.2g} "
      "times the largest GGN entry")

# %%
# The first layer's curvature per input pixel (GGN diagonal summed over the
# 24 units of the first hidden layer):
coefs, _ = net.unpack(diag_ggn)
blank = np.flatnonzero(X.max(axis=0) == 0)
print(f"pixels blank in every sample: {blank.tolist()}; their W_1 entries: "
      f"{np.unique(coefs[0][blank]).tolist()} (alpha / W = {est.alpha / len(X):.3g})")
fig, ax = plt.subplots(figsize=(3.6, 3.2))
image = ax.imshow(coefs[0].sum(axis=1).reshape(8, 8), cmap="magma")
ax.set_title("curvature per pixel")
ax.set_axis_off()
fig.colorbar(image, ax=ax)
