"""Estimator training with the second-order solvers of :mod:`cbackprop.optimize`.

``solver='lm'`` (Levenberg-Marquardt on the generalized Gauss-Newton matrix),
``'hessian-free'`` (Martens' truncated CG on damped GGN products) and
``'newton'`` (trust-region Newton with exact Hessian-vector products) are
full-batch: ``max_iter`` counts outer iterations, ``tol`` is the gradient
tolerance (as for 'lbfgs'), ``loss_curve_`` gets one entry per iteration.
``early_stopping`` scores the validation split after every iteration, keeps
the best weights and stops after ``n_iter_no_change`` iterations without an
improvement of ``tol``; ``warm_start`` continues from the fitted weights (and,
for 'lm' and 'hessian-free', the last damping). Ignored by these solvers:
``batch_size``, ``learning_rate``, ``learning_rate_init``, ``power_t``,
``momentum``, ``nesterovs_momentum``, ``beta_1``, ``beta_2``, ``epsilon``,
``shuffle``, ``max_fun``; ``partial_fit`` is not available.
"""
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from cbackprop import optimize

_DAMPING = {"lm": "mu", "hessian-free": "damping"}


class SecondOrderFitMixin:
    """``_fit_second_order`` for BaseMLP (uses its split, scoring and records)."""

    def _fit_second_order(self, X, y, sample_weight):
        X_tr, y_tr, sw_tr, X_val, y_val, sw_val = self._validation_split(X, y, sample_weight)
        net = self._scratch_network()
        X_tr = np.ascontiguousarray(X_tr, dtype=net.dtype)
        Y_tr = self._as_targets(y_tr)
        self._start_records()
        callback = self._second_order_callback(X_val, y_val, sw_val)
        try:
            res = self._run_second_order(net, X_tr, Y_tr, sw_tr, callback)
        except ValueError as exc:
            if "bytes" in str(exc) and self.solver == "lm":
                raise ValueError(f"{exc}; solver='hessian-free' needs no P x P matrix") from exc
            raise
        self._damping = res.get(_DAMPING.get(self.solver, ""), None)
        self.n_iter_, self.loss_ = int(res.nit), float(res.fun)
        self._theta[:] = self._best_theta if self.early_stopping else res.x
        if res.status <= 0 and res.status != -2:
            warnings.warn(f"{self.solver} stopped after {res.nit} iteration(s) "
                          f"(status={res.status}): {res.message}", ConvergenceWarning,
                          stacklevel=3)

    def _start_records(self):
        if not (self.warm_start and getattr(self, "loss_curve_", None)):
            self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self._best_theta = self._theta.copy()
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = min(self.loss_curve_, default=np.inf)

    def _second_order_callback(self, X_val, y_val, sw_val):
        verbose = self.verbose is True or self.verbose >= 1
        key = _DAMPING.get(self.solver)

        def callback(r):
            self.loss_curve_.append(float(r.fun))
            if verbose:
                extra = f", {key} = {r[key]:.3g}" if key and key in r else ""
                print(f"Iteration {len(self.loss_curve_)}, loss = {r.fun:.8f}{extra}")
            if self.early_stopping:
                self._theta[:] = r.x            # scored through coefs_ views
                self._update_no_improvement_count(True, X_val, y_val, sw_val)
                if self._no_improvement_count > self.n_iter_no_change:
                    raise StopIteration
            else:
                self.best_loss_ = min(self.best_loss_, float(r.fun))
        return callback

    def _run_second_order(self, net, X, Y, sw, callback):
        kw = dict(max_iter=self.max_iter, gtol=self.tol, callback=callback)
        damping = getattr(self, "_damping", None) if self.warm_start else None
        if self.solver == "lm":
            return optimize.levenberg_marquardt(net, self._theta, X, Y, sw,
                                                mu=damping or 1e-3, **kw)
        if self.solver == "hessian-free":
            return optimize.hessian_free(net, self._theta, X, Y, sw, damping=damping or 1.0,
                                         random_state=self._random_state, **kw)
        return optimize.newton(net, self._theta, X, Y, sw, **kw)
