"""
Levenberg-Marquardt against adam on a sine
==========================================

The problem on which Levenberg-Marquardt is at its best: a small network
(1-10-1, tanh, 31 parameters) fitting ``sin(x)`` on 200 points by least
squares. ``solver='lm'`` solves ``(G + mu I) d = -g`` with the exact
Gauss-Newton matrix every iteration; ``adam`` takes mini-batch gradient
steps. :class:`cbackprop.plotting.LossHistory` times both fits from the same
initial weights.
"""
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning

import cbackprop as cb
from cbackprop.plotting import LossHistory, plot_loss_curves

X = np.linspace(-np.pi, np.pi, 200)[:, None]
y = np.sin(X).ravel()
params = dict(hidden_layer_sizes=(10,), activation="tanh", tol=0.0, n_iter_no_change=np.inf,
              random_state=0)
fits = {"lm": cb.MLPRegressor(solver="lm", max_iter=100, **params),
        "adam": cb.MLPRegressor(solver="adam", max_iter=2000, learning_rate_init=0.01,
                                **params)}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    histories = {name: LossHistory().fit(est, X, y) for name, est in fits.items()}

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
plot_loss_curves(histories, ax=ax1)
ax1.set_xscale("log")
ax1.set_title("training loss, 1-10-1 tanh on sin(x)")
ax2.plot(X, y, "k", linewidth=3, alpha=0.3, label="sin(x)")
for name, est in fits.items():
    ax2.plot(X, est.predict(X), label=f"{name}: {len(histories[name].losses)} iterations, "
                                      f"{histories[name].times[-1]:.2f} s")
ax2.set_title("fitted functions")
ax2.legend()
fig.tight_layout()

for name, h in histories.items():
    print(f"{name:5s} final loss {h.losses[-1]:.2e} after {h.times[-1]:.3f} s")
