"""
Every solver: training loss against wall time
=============================================

Each solver of :class:`cbackprop.MLPClassifier` and :class:`cbackprop.MLPRegressor`
trains the same network from the same initial weights (``random_state=0``), on
scikit-learn's digits (classification, log loss) and on a smooth regression
problem (squared error). :class:`cbackprop.plotting.LossHistory` times the loss
each solver reports after every iteration (an epoch for ``sgd`` and ``adam``, an
outer iteration for the full-batch solvers). ``lbfgs`` reports no iterations,
so it runs here as the estimator runs it internally: SciPy's L-BFGS-B on the
network's ``loss_grad``, with the history as its callback.

The budgets of iterations are small so that the example runs in seconds; the
printed table below the figure gives the final losses. In such runs, on the
regression problem Levenberg-Marquardt reaches the lowest loss, and
Hessian-free and L-BFGS follow (trust-region Newton catches L-BFGS up by
its 60th iteration); on digits (1210 parameters, ten
outputs) L-BFGS is the quickest to a low training loss, while each
Levenberg-Marquardt iteration pays for a dense ``P x P`` Cholesky solve.
The first-order solvers are still far from converged after their epochs: a
full comparison is in the user guide's solver table.
"""
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize
from sklearn.datasets import load_digits, make_friedman1
from sklearn.exceptions import ConvergenceWarning

import cbackprop as cb
from cbackprop.plotting import LossHistory, plot_loss_curves

# Iteration budgets that keep the example to a few seconds on one core.
BUDGETS = {
    "digits": {"sgd": 100, "adam": 100, "lbfgs": 100, "lm": 8, "hessian-free": 20, "newton": 20},
    "regression": {"sgd": 200, "adam": 200, "lbfgs": 300, "lm": 40, "hessian-free": 30,
                   "newton": 30},
}


def lbfgs_history(est, X, y, max_iter):
    """L-BFGS-B on the network's objective, from the estimator's initial weights."""
    est.set_params(max_iter=1).fit(X, y)  # builds network_ (and classes_) for this data
    net = est.network_
    Y = np.eye(len(est.classes_))[y] if hasattr(est, "classes_") else y
    history = LossHistory()
    minimize(net.loss_grad, net.init_params(random_state=0), args=(X, Y), jac=True,
             method="L-BFGS-B", callback=history,
             options={"maxiter": max_iter, "gtol": 0.0})
    return history


def run_all(make_estimator, X, y, budget):
    histories = {}
    for solver, max_iter in budget.items():
        est = make_estimator(solver=solver, max_iter=max_iter)
        if solver == "lbfgs":
            histories[solver] = lbfgs_history(est, X, y, max_iter)
        else:
            histories[solver] = LossHistory().fit(est, X, y)
    return histories


X_digits, y_digits = load_digits(return_X_y=True)
X_digits = X_digits[:600] / 16.0
y_digits = y_digits[:600]
X_reg, y_reg = make_friedman1(n_samples=2000, n_features=10, noise=0.0, random_state=0)
y_reg = (y_reg - y_reg.mean()) / y_reg.std()

t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    digits = run_all(lambda **kw: cb.MLPClassifier(
        hidden_layer_sizes=(16,), activation="tanh", tol=0.0, n_iter_no_change=np.inf,
        random_state=0, **kw), X_digits, y_digits, BUDGETS["digits"])
    regression = run_all(lambda **kw: cb.MLPRegressor(
        hidden_layer_sizes=(16,), activation="tanh", tol=0.0, n_iter_no_change=np.inf,
        random_state=0, **kw), X_reg, y_reg, BUDGETS["regression"])
print(f"all fits: {time.perf_counter() - t0:.1f} s")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
plot_loss_curves(digits, ax=ax1)
ax1.set_title("digits (600 samples), 64-16-10 tanh, log loss")
plot_loss_curves(regression, ax=ax2)
ax2.set_title("Friedman #1 (2000 x 10), 10-16-1 tanh, squared error")
ax2.set_xscale("log")
fig.tight_layout()

# %%
# The final training losses, and the time each solver took:
for name, histories in [("digits", digits), ("regression", regression)]:
    for solver, h in histories.items():
        print(f"{name:10s} {solver:13s} {len(h.losses):4d} iterations  "
              f"{h.times[-1]:6.2f} s  loss {h.losses[-1]:.3g}")
