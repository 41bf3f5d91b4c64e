"""Shared machinery of MLPClassifier and MLPRegressor.

The training loops follow scikit-learn 1.9's ``BaseMultilayerPerceptron``
(``_fit``, ``_fit_stochastic``, ``_fit_lbfgs``,
``_update_no_improvement_count`` and the optimizers' ``iteration_ends`` and
``trigger_stopping``) decision for decision and random draw for random draw,
so that one ``random_state`` gives the same initial weights, the same epoch
permutations and the same validation split. The parameters live in ONE flat
vector ``theta`` (``coefs_`` and ``intercepts_`` are views into it); for
'sgd' and 'adam' each epoch is a single call of
:func:`cbackprop._train.run_epoch` (GIL released), so Python runs once per
epoch.
"""
import inspect
import math
import numbers
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse as sp
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from cbackprop import _train, optimize
from cbackprop import _kfac  # after optimize, whose helpers it uses
from cbackprop._problem import Problem
from cbackprop._sparse import as_rows
from cbackprop._callbacks import CallbackSupportMixin, FitTasks
from cbackprop._stochastic import AdamState, SGDState
from cbackprop.network import ACTIVATIONS, Network

try:  # scikit-learn's shim for L-BFGS-B's `iprint` across SciPy versions
    from sklearn.utils.fixes import _get_additional_lbfgs_options_dict
except ImportError:  # pragma: no cover
    def _get_additional_lbfgs_options_dict(key, value):
        return {}

_DAMPING = {"lm": "mu", "hessian-free": "damping", "kfac": "damping"}  # in each result
# Sparse formats validate_data passes through (others become CSR).
ACCEPT_SPARSE = ("csr", "csc")
STOCHASTIC_SOLVERS = ("sgd", "adam")
SECOND_ORDER_SOLVERS = ("lm", "hessian-free", "newton", "kfac")
SOLVERS = ("lbfgs", "sgd", "adam") + SECOND_ORDER_SOLVERS

# The function behind each second-order solver, and the keyword arguments
# the estimator derives from its own parameters (never from solver_options).
_SOLVER_FUNCTIONS = {"lm": "levenberg_marquardt", "hessian-free": "hessian_free",
                     "newton": "newton", "kfac": "kfac"}
_ESTIMATOR_SET = {"max_iter": "max_iter", "gtol": "tol", "callback": "callbacks",
                  "random_state": "random_state", "batch_size": "batch_size",
                  "shuffle": "shuffle"}

# The estimator's LM damping schedule: mu halved after an accepted step,
# quadrupled after a rejected one, so that rejections settle near one per two
# accepted steps (log 2 / log 4) where trainlm's (0.1, 10) settles near one per
# step; the figures are in docs/user_guide/optimize.rst.
LM_SCHEDULE = {"mu_dec": 0.5, "mu_inc": 4.0}

# 'lm' warns before its first iteration when one is estimated to take longer.
LM_WARN_SECONDS = 2.0

# scipy.optimize.minimize's status after the callback raised StopIteration.
_CALLBACK_STOP_STATUS = 99

# An epoch whose mean loss exceeds this factor times the reference loss
# (see BaseMLP._reference_loss) is taken as diverged.
_DIVERGENCE_FACTOR = 1e6


def _parameter_constraints(base):
    """scikit-learn's constraints with our solvers and activations."""
    constraints = dict(base._parameter_constraints)
    constraints["activation"] = [StrOptions(set(ACTIVATIONS))]
    constraints["solver"] = [StrOptions(set(SOLVERS))]
    constraints["solver_options"] = [dict, None]
    return constraints


def solver_option_names(solver):
    """The keys ``solver_options`` accepts for a second-order solver: the
    keyword arguments of its function in :mod:`cbackprop.optimize` that the
    estimator does not set from its own parameters."""
    function = getattr(optimize, _SOLVER_FUNCTIONS[solver])
    return tuple(name for name, p in inspect.signature(function).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _ESTIMATOR_SET)


def _check_solver_options(solver, options):
    """A new dict of the solver's keyword arguments from ``solver_options``
    (the user's dict is never modified); ValueError on a key the solver does
    not take, on one the estimator sets, and on any key for a solver that
    takes none ('lbfgs', 'sgd', 'adam'), so that a typo never passes."""
    options = {} if options is None else dict(options)
    if solver not in SECOND_ORDER_SOLVERS:
        if options:
            raise ValueError(f"solver_options is only used by the solvers "
                             f"{list(SECOND_ORDER_SOLVERS)}; solver={solver!r} takes none, "
                             f"got {sorted(options)}")
        return options
    allowed = solver_option_names(solver)
    for key in options:
        if key in _ESTIMATOR_SET:
            raise ValueError(f"solver_options[{key!r}] is set by the estimator from its "
                             f"parameter {_ESTIMATOR_SET[key]!r}; set that instead")
        if key not in allowed:
            raise ValueError(f"unknown solver_options key {key!r} for solver={solver!r}; "
                             f"allowed keys: {list(allowed)}")
    return options


# ---------------------------------------------------------------- helpers
def _warn_if_lm_slow(net, n_rows, accumulation):
    """SlowIterationWarning when one LM iteration is estimated (see
    :func:`cbackprop.optimize.lm_iteration_cost`) to take over
    LM_WARN_SECONDS."""
    seconds, nbytes = optimize.lm_iteration_cost(net, n_rows, accumulation)
    if seconds > LM_WARN_SECONDS:
        warnings.warn(
            f"solver='lm': one iteration on {n_rows} samples and {net.n_params} parameters "
            f"is estimated at {seconds:.1f} s and a {nbytes / 2 ** 20:.3g} MiB Gauss-Newton "
            f"matrix (its cost grows as n_samples * n_params^2); solver='hessian-free' or "
            f"'kfac' needs no n_params x n_params matrix", optimize.SlowIterationWarning,
            stacklevel=8)


def _hidden_layer_sizes(value):
    sizes = list(value) if hasattr(value, "__iter__") else [value]
    for n in sizes:
        if (not isinstance(n, numbers.Integral) or isinstance(n, bool)) and not (
                isinstance(n, numbers.Real) and float(n).is_integer()):
            raise ValueError(f"hidden_layer_sizes must contain integers, got {sizes}.")
    if np.any(np.array(sizes) <= 0):
        raise ValueError("hidden_layer_sizes must be > 0, got %s." % sizes)
    return [int(n) for n in sizes]


def _finite_sum(a):
    """Cheap finiteness test of a whole array (one reduction, no temporary)."""
    return math.isfinite(float(np.add.reduce(a, dtype=np.float64)))


def _zero_weight_batch(sw, order, batch_size):
    """Whether some minibatch of this epoch has sample weights summing to 0."""
    if sw is None:
        return False
    w = sw if order is None else sw[order]
    sums = np.add.reduceat(w, np.arange(0, w.shape[0], batch_size))
    return bool((sums == 0).any())


class BaseMLP(CallbackSupportMixin, BaseEstimator):
    """Base class of the MLP estimators; use MLPClassifier or MLPRegressor."""

    _parameter_constraints = _parameter_constraints(_SkMLPRegressor)
    _parameter_constraints.pop("loss", None)  # absent before scikit-learn 1.7

    def __init__(self, hidden_layer_sizes, activation, solver, alpha, batch_size,
                 learning_rate, learning_rate_init, power_t, max_iter, loss, shuffle,
                 random_state, tol, verbose, warm_start, momentum, nesterovs_momentum,
                 early_stopping, validation_fraction, beta_1, beta_2, epsilon,
                 n_iter_no_change, max_fun, solver_options=None):
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.solver_options = solver_options

    # ------------------------------------------------------------ theta
    def _views_in_sync(self):
        theta = self.__dict__.get("_theta")
        if theta is None or len(self.coefs_) != self.network_.n_layers:
            return False
        return all(a.base is theta for a in (*self.coefs_, *self.intercepts_))

    def _current_theta(self):
        """The flat parameters that coefs_ / intercepts_ describe.

        ``self._theta`` itself when coefs_ and intercepts_ are still its views
        (always, unless they were replaced, deep-copied or unpickled apart);
        otherwise packed from them.
        """
        if self._views_in_sync():
            return self._theta
        return self.network_.pack(self.coefs_, self.intercepts_)

    def _bind(self, theta):
        """Make theta the parameters; coefs_ and intercepts_ become its views."""
        self._theta = theta
        self.coefs_, self.intercepts_ = self.network_.unpack(theta)

    @property
    def theta_(self):
        """Flat parameter vector ``W_1, b_1, W_2, b_2, ...`` of ``network_``.

        A view shared with ``coefs_`` and ``intercepts_``: pass it to any
        ``network_`` method, for example ``est.network_.hessian(est.theta_, X, y)``.
        """
        check_is_fitted(self)
        self._sync_network()
        return self._current_theta()

    def __getstate__(self):
        state = super().__getstate__()
        if self._views_in_sync():
            # Rebuilt as views on unpickling instead of stored twice as copies.
            state = dict(state)
            del state["coefs_"], state["intercepts_"]
            state["_coefs_are_views"] = True
        return state

    def __setstate__(self, state):
        state = dict(state)
        views = state.pop("_coefs_are_views", False)
        super().__setstate__(state)
        if views:
            self._bind(self._theta)

    # ------------------------------------------------------------ forward
    def _raw_predict(self, X, check_input=True):
        """Outputs after the link, (N, n_outputs), in the model's dtype."""
        self._sync_network()
        if check_input:
            X = validate_data(self, X, reset=False, dtype=self.network_.dtype, order="C",
                              accept_sparse=ACCEPT_SPARSE)
        X = as_rows(X, self.network_.dtype)
        net = self.network_
        out = np.empty((X.shape[0], net.n_outputs), net.dtype)
        if X.shape[0] == 0:
            return out
        # Chunks of rows bound the workspace whatever the number of rows.
        problem = Problem(net, X, validate=False)
        return problem.raw_output(self._current_theta(), out, True)

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return score_function(y, y_pred, sample_weight=sample_weight)

    # ------------------------------------------------------------ fit
    _LOSS_OF_LINK = {"identity": "squared_error", "exp": "poisson",
                     "softmax": "log_loss", "logistic": "binary_log_loss"}

    def _network_loss(self):
        return self._LOSS_OF_LINK[self.out_activation_]

    def _initialize(self, y, layer_units, dtype):
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self.network_ = Network(layer_units, self.activation, self._network_loss(),
                                alpha=self.alpha, dtype=dtype)
        # The same draws as scikit-learn's _init_coef: layer by layer, coefs
        # then intercepts, in float64, then cast.
        self._bind(self.network_.init_params(self._random_state))
        self._best_theta = None  # created by _fit_stochastic for early stopping
        if self.solver in STOCHASTIC_SOLVERS:
            self._start_records()

    def _fit(self, X, y, sample_weight=None, incremental=False):
        hidden = _hidden_layer_sizes(self.hidden_layer_sizes)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if not first_pass and X.dtype != self._sync_network().dtype:
            X = X.astype(self.network_.dtype)  # continue in the model's dtype
        if not sp.issparse(X):
            X = np.ascontiguousarray(X)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, dtype=X.dtype)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        self.n_outputs_ = y.shape[1]
        layer_units = [X.shape[1]] + hidden + [self.n_outputs_]
        self._random_state = check_random_state(self.random_state)

        if first_pass:
            self._initialize(y, layer_units, X.dtype)
        else:
            if tuple(layer_units) != self.network_.layer_sizes:
                raise ValueError(
                    f"warm_start / partial_fit needs the fitted architecture "
                    f"{list(self.network_.layer_sizes)}, got {layer_units}: "
                    f"hidden_layer_sizes or the number of outputs changed.")
            # Continue from coefs_ / intercepts_ (rebinding them if needed).
            self._bind(np.array(self._current_theta(), copy=not self._views_in_sync()))

        if self.solver in STOCHASTIC_SOLVERS:
            self._fit_stochastic(X, y, sample_weight, incremental)
        elif self.solver == "lbfgs":
            self._fit_lbfgs(X, y, sample_weight)
        else:
            self._fit_second_order(X, y, sample_weight)

        if not np.isfinite(self._theta).all():
            raise ValueError("Solver produced non-finite parameter weights. The input "
                             "data may contain large values and need to be preprocessed.")
        return self

    def _scratch_network(self):
        """A twin of network_ whose workspace dies with the fit.

        Training workspaces (all N rows for 'lbfgs') are not kept alive by
        the fitted model.
        """
        net = self.network_
        return Network(net.layer_sizes, net.activation, net.loss_name, alpha=net.alpha,
                       dtype=net.dtype)

    def _as_targets(self, y):
        return np.ascontiguousarray(y, dtype=self.network_.dtype)

    def _epoch_targets(self, y):
        """Targets for run_epoch: class indicators stay 0/1 bytes (the
        kernel converts each batch), other targets take the network dtype."""
        if y.dtype == bool:
            return np.ascontiguousarray(y).view(np.uint8)
        return self._as_targets(y)

    # ------------------------------------------------------------ lbfgs
    def _make_problem(self, net, X, y, sample_weight):
        """The prepared problem of the (validated) training data, for 'lbfgs'
        and the second-order solvers; cluster-backed in :mod:`cbackprop.dask`."""
        return Problem(net, as_rows(X, net.dtype), self._as_targets(y),
                       sample_weight, validate=False)

    def _fit_lbfgs(self, X, y, sample_weight):
        _check_solver_options(self.solver, self.solver_options)  # refuses any key
        net = self._scratch_network()
        problem = self._make_problem(net, X, y, sample_weight)
        grad = np.empty(net.n_params, net.dtype)
        x_cast = None if net.dtype == np.float64 else np.empty(net.n_params, net.dtype)
        best = {"f": np.inf, "x": None}

        def fun(x):
            # A pure function of x: it reads X, Y, sw and writes only scratch.
            if x_cast is None:
                theta = np.ascontiguousarray(x, dtype=np.float64)
            else:
                x_cast[:] = x
                theta = x_cast
            f = problem.loss_grad(theta, grad)
            if f < best["f"]:
                best["f"] = f
                best["x"] = np.array(x, dtype=np.float64)
            return f, grad.astype(np.float64)  # a fresh float64 array

        iprint = 1 if (self.verbose is True or self.verbose >= 1) else -1
        nit = [0]
        report = self._lbfgs_callback()

        def count(intermediate_result):
            nit[0] += 1
            if report is not None:
                report(intermediate_result)

        try:
            opt_res = scipy.optimize.minimize(
                fun, self._theta.astype(np.float64), method="L-BFGS-B", jac=True,
                callback=count,
                options={"maxfun": self.max_fun, "maxiter": self.max_iter,
                         "gtol": self.tol,
                         **_get_additional_lbfgs_options_dict("iprint", iprint)})
        except KeyboardInterrupt:
            self._interrupted(best["f"], best["x"], nit[0], problem)
            return
        self.n_iter_ = min(opt_res.nit, self.max_iter)
        x, f = opt_res.x, float(opt_res.fun)
        if not (math.isfinite(f) and np.isfinite(x).all()):
            if best["x"] is None:
                raise ValueError("L-BFGS found no parameters with a finite loss: the "
                                 "input data may contain large values and need to be "
                                 "preprocessed.")
            warnings.warn(
                "L-BFGS diverged: the loss became non-finite (overflow). Kept the "
                f"best finite parameters seen (loss = {best['f']:.6g}); scale the "
                "data or increase alpha.", ConvergenceWarning, stacklevel=8)
            x, f = best["x"], best["f"]
        elif opt_res.status not in (0, _CALLBACK_STOP_STATUS):
            status = optimize.LBFGSB_STATUS.get(int(opt_res.status), -6)
            msg = (f"lbfgs failed to converge after {self.n_iter_} iteration(s) "
                   f"(status={status}: {optimize.TERMINATION_MESSAGES[status]}):\n"
                   f"{opt_res.message}\n")
            if self.n_iter_ == self.max_iter:
                msg += ("\nIncrease the number of iterations to improve the "
                        f"convergence (max_iter={self.max_iter}).")
            msg += ("\nYou might also want to scale the data as shown in:\n"
                    "    https://scikit-learn.org/stable/modules/preprocessing.html")
            warnings.warn(msg, ConvergenceWarning, stacklevel=8)
        self._theta[:] = x
        self.loss_ = f

    # ------------------------------------------------------------ lm, hessian-free, newton, kfac
    # Full batch: max_iter counts outer iterations, tol is the gradient
    # tolerance (max|g|, as for 'lbfgs'), loss_curve_ gets one entry per
    # iteration; early_stopping scores the validation split after every
    # iteration through the solver's callback; warm_start continues from the
    # fitted weights (and, for 'lm' and 'hessian-free', the last damping).
    def _fit_second_order(self, X, y, sample_weight):
        X_tr, y_tr, sw_tr, X_val, y_val, sw_val = self._validation_split(X, y, sample_weight)
        net = self._scratch_network()
        problem = self._make_problem(net, X_tr, y_tr, sw_tr)
        curve = self.loss_curve_ if self.warm_start and getattr(
            self, "loss_curve_", None) else ()
        self._start_records(curve)
        if self.early_stopping:
            self._best_theta = self._theta.copy()
        self._best_seen = (math.inf, None)
        callback = self._second_order_callback(X_val, y_val, sw_val)
        try:
            # The prepared problem stands for (X, y, sample_weight) in the solver.
            res = self._run_second_order(net, problem, callback)
        except ValueError as exc:
            if "bytes" in str(exc) and self.solver == "lm":
                raise ValueError(f"{exc}; solver='hessian-free' needs no P x P matrix") from exc
            raise
        except KeyboardInterrupt:
            self._interrupted(*self._best_seen, len(self.loss_curve_), problem)
            return
        self._damping = res.get(_DAMPING.get(self.solver, ""), None)
        # Epochs for K-FAC on mini-batches, as 'sgd' and 'adam' count.
        self.n_iter_, self.loss_ = int(res.get("epochs", res.nit)), float(res.fun)
        self._theta[:] = self._best_theta if self.early_stopping else res.x
        if res.status <= 0 and res.status != -2:
            warnings.warn(f"{self.solver} stopped after {self.n_iter_} iteration(s) "
                          f"(status={res.status}): {res.message}", ConvergenceWarning,
                          stacklevel=8)

    def _second_order_callback(self, X_val, y_val, sw_val):
        verbose = self.verbose is True or self.verbose >= 1
        key = _DAMPING.get(self.solver)

        def callback(r):
            stop = self._callback_iteration_end(r.x)   # scikit-learn's callbacks
            if verbose:
                extra = f", {key} = {r[key]:.3g}" if key and key in r else ""
                print(f"Iteration {len(self.loss_curve_) + 1}, loss = {r.fun:.8f}{extra}")
            if self.early_stopping:
                self._theta[:] = r.x            # scored through coefs_ views
            if r.fun < self._best_seen[0]:      # kept for an interrupt
                self._best_seen = (float(r.fun), np.array(r.x, copy=True))
            self._record(float(r.fun), X_val, y_val, sw_val)
            # The solvers have their own tolerances; only a validation score
            # that stopped improving ends the fit early.
            if stop or (self.early_stopping
                        and self._no_improvement_count > self.n_iter_no_change):
                raise StopIteration
        return callback

    def _run_second_order(self, net, problem, callback):
        """The solver's result on the prepared problem (it stands for X, y
        and sample_weight in the solver's call)."""
        options = _check_solver_options(self.solver, self.solver_options)
        kw = dict(options, max_iter=self.max_iter, gtol=self.tol, callback=callback)
        damping = getattr(self, "_damping", None) if self.warm_start else None
        theta = self._theta
        if self.solver == "lm":
            kw = dict(LM_SCHEDULE, **kw)
            kw["mu"] = damping or options.get("mu", 1e-3)
            _warn_if_lm_slow(net, problem.n_rows, kw.get("accumulation", "auto"))
            return optimize.levenberg_marquardt(net, theta, problem, None, **kw)
        if self.solver == "hessian-free":
            kw["damping"] = damping or options.get("damping", 1.0)
            return optimize.hessian_free(net, theta, problem, None,
                                         random_state=self._random_state, **kw)
        if self.solver == "kfac":
            return self._run_kfac(net, problem, callback, damping)
        return optimize.newton(net, theta, problem, None, **kw)

    def _run_kfac(self, net, problem, callback, damping):
        """K-FAC full batch ('auto' batch_size) or on mini-batches of
        batch_size rows, max_iter epochs, the epoch losses in loss_curve_
        and scikit-learn's no-improvement rule ending the epochs."""
        kw = _kfac.estimator_kwargs(self, problem.n_rows)
        per_step = callback
        if kw["batch_size"] is not None:
            def per_epoch(r):
                callback(r)
                if self._no_improvement_count > self.n_iter_no_change:
                    raise StopIteration
            per_step = _kfac.epoch_callback(per_epoch, problem.n_rows)
        options = _check_solver_options(self.solver, self.solver_options)
        kw = dict(options, **kw, damping=damping or options.get("damping", 1.0))
        return optimize.kfac(net, self._theta, problem, None, callback=per_step, **kw)

    # ------------------------------------------------------------ sgd, adam
    def _new_optimizer(self):
        net = self.network_
        if self.solver == "sgd":
            return SGDState(net.n_params, net.dtype, self.learning_rate_init,
                            self.learning_rate, self.momentum, self.nesterovs_momentum,
                            self.power_t)
        return AdamState(net.n_params, net.dtype, self.learning_rate_init,
                         self.beta_1, self.beta_2, self.epsilon)

    def _validation_split(self, X, y, sample_weight):
        """(X_train, y_train, sw_train, X_val, y_val, sw_val): scikit-learn's
        early-stopping split (same draws), or everything for training."""
        if not self.early_stopping:
            return X, y, sample_weight, None, None, None
        # don't stratify in multilabel classification
        stratify = y if (is_classifier(self) and self.n_outputs_ == 1) else None
        if sample_weight is None:
            X_train, X_val, y_train, y_val = train_test_split(
                X, y, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify)
            sw_train = sw_val = None
        else:
            X_train, X_val, y_train, y_val, sw_train, sw_val = train_test_split(
                X, y, sample_weight, random_state=self._random_state,
                test_size=self.validation_fraction, stratify=stratify)
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        if is_classifier(self):
            y_val = self._label_binarizer.inverse_transform(y_val)
        return X_train, y_train, sw_train, X_val, y_val, sw_val

    def _fit_stochastic(self, X, y, sample_weight, incremental):
        _check_solver_options(self.solver, self.solver_options)  # refuses any key
        if not incremental or not hasattr(self, "_optimizer"):
            self._optimizer = self._new_optimizer()
        if not hasattr(self, "loss_curve_"):
            self._start_records()   # a warm start from an 'lbfgs' fit
        if self.early_stopping and self.validation_scores_ is None:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
        if self.early_stopping and getattr(self, "_best_theta", None) is None:
            # The best weights by validation score (scikit-learn's _best_coefs).
            self._best_theta = self._theta.copy()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        X_train, y_train, sw_train, X_val, y_val, sw_val = self._validation_split(
            X, y, sample_weight)

        net = self._scratch_network()
        dtype, P, plan = net.dtype, net.n_params, net._plan
        X_train = as_rows(X_train, dtype)
        Y_train = self._epoch_targets(y_train)
        if sw_train is not None:
            sw_train = np.ascontiguousarray(sw_train, dtype=dtype)
        n_samples = X_train.shape[0]
        sample_idx = np.arange(n_samples, dtype=np.intp)

        if self.batch_size == "auto":
            batch_size = min(200, n_samples)
        else:
            if self.batch_size > n_samples:
                warnings.warn("Got `batch_size` less than 1 or larger than "
                              "sample size. It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_samples))

        # k = 1: a dense batch buffer for dense X (CSR batches need none).
        buffers = net._scratch(_train.EpochWorkspace, batch_size,
                               int(isinstance(X_train, np.ndarray)))
        theta = self._theta
        optimizer = self._optimizer
        state1, state2 = optimizer.states()
        alpha = float(self.alpha)
        rs = self._random_state
        # Divergence guard. An epoch's loss is accumulated along its
        # trajectory, so it rates the weights at the START of the epoch best:
        # keep those (epoch_start) and, swapped in without a copy, the ones
        # rated best so far (best_start). An epoch diverges when its loss is
        # non-finite or above _DIVERGENCE_FACTOR times a reference scale.
        epoch_start = np.empty_like(theta)
        best_start, best_rated = None, np.inf
        limit = _DIVERGENCE_FACTOR * self._reference_loss(Y_train, sw_train) * n_samples

        try:
            self.n_iter_ = 0
            for it in range(self.max_iter):
                if self.shuffle:
                    # In place, the very swaps of sklearn.utils.shuffle(sample_idx).
                    rs.shuffle(sample_idx)
                    order = sample_idx
                else:
                    order = None
                np.copyto(epoch_start, theta)
                accumulated, t = _train.run_epoch(
                    plan, theta, X_train, Y_train, sw_train, order, batch_size, alpha,
                    optimizer.options(), state1, state2, buffers)
                if not (accumulated <= limit and _finite_sum(theta)):  # NaN-safe
                    self._diverged(X_train, Y_train, sw_train, order, batch_size,
                                   best_start if best_start is not None else epoch_start,
                                   accumulated, optimizer)
                    break
                if accumulated < best_rated:
                    best_rated = accumulated
                    if best_start is None:
                        best_start = np.empty_like(theta)
                    best_start, epoch_start = epoch_start, best_start
                optimizer.epoch_done(t)
                self.n_iter_ += 1
                self.loss_ = accumulated / n_samples
                self.t_ += n_samples
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                self._record(self.loss_, X_val, y_val, sw_val)
                optimizer.iteration_ends(self.t_)
                if self._callback_iteration_end(theta):
                    break

                if self._no_improvement_count > self.n_iter_no_change:
                    if early_stopping:
                        msg = ("Validation score did not improve more than "
                               "tol=%f for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    else:
                        msg = ("Training loss did not improve more than tol=%f"
                               " for %d consecutive epochs."
                               % (self.tol, self.n_iter_no_change))
                    if optimizer.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0

                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        "Stochastic Optimizer: Maximum iterations (%d) "
                        "reached and the optimization hasn't converged yet."
                        % self.max_iter, ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")

        if early_stopping:
            theta[:] = self._best_theta  # restore best weights

    def _reference_loss(self, Y, sw):
        """Scale of a sane training loss, for the divergence test.

        The loss of the all-zero network (closed form in Y, no forward pass),
        at least 1, plus the penalty of the starting weights.
        """
        loss = self.network_.loss_name
        w = None if sw is None else sw.astype(np.float64)
        W = Y.shape[0] if w is None else w.sum()
        if loss == "squared_error":
            per_row = 0.5 * np.einsum("ij,ij->i", Y, Y, dtype=np.float64)
        elif loss == "poisson":
            Yd = Y.astype(np.float64)
            per_row = (np.where(Yd > 0, Yd * np.log(np.where(Yd > 0, Yd, 1)), 0)
                       - Yd + 1).sum(axis=1)
        elif loss == "log_loss":
            per_row = Y.sum(axis=1, dtype=np.float64) * math.log(Y.shape[1])
        else:
            per_row = np.full(Y.shape[0], Y.shape[1] * math.log(2.0))
        trivial = float(per_row.sum() if w is None else per_row @ w) / W
        penalty = sum(float(np.dot(c.ravel(), c.ravel())) for c in self.coefs_)
        return max(trivial, 1.0) + 0.5 * float(self.alpha) * penalty / W

    def _diverged(self, X, Y, sw, order, batch_size, candidate, accumulated, optimizer):
        """Restore the best-rated weights after a diverging epoch, and warn."""
        if not math.isfinite(accumulated) and _zero_weight_batch(sw, order, batch_size):
            self._theta[:] = candidate
            raise ValueError(
                "A minibatch has sample weights summing to zero, so its loss is "
                "undefined; use a larger batch_size or fewer zero weights.")
        problem = Problem(self._scratch_network(), X, self._as_targets(Y), sw,
                          validate=False)
        loss = problem.loss(candidate)
        if not (math.isfinite(loss) and _finite_sum(candidate)):
            raise ValueError("Solver produced non-finite parameter weights. The input "
                             "data may contain large values and need to be "
                             "preprocessed.")
        self._theta[:] = candidate
        self.loss_ = loss
        for s in optimizer.states():  # the state may hold non-finite values too
            s[:] = 0
        what = ("became non-finite (overflow)" if not math.isfinite(accumulated) else
                f"exploded to {accumulated / X.shape[0]:.3g}")
        warnings.warn(
            f"Training diverged in epoch {self.n_iter_ + 1}: the training loss {what}, "
            f"typically because learning_rate_init={self.learning_rate_init!r} is too "
            f"large or the data are not scaled. Stopped and restored the weights with "
            f"the best training loss seen ({loss:.6g}).", ConvergenceWarning,
            stacklevel=8)

    def _interrupted(self, best_loss, best_theta, n_iter, problem):
        """Ctrl-C during a full-batch solver: warn as scikit-learn does and
        keep the best weights seen (the validation-best with early stopping),
        so that the estimator is a usable fitted model. Interrupted before
        any loss was seen (inside the first evaluation or accumulation), it
        keeps its starting weights and loss_ is their loss on the training
        rows of ``problem``."""
        warnings.warn("Training interrupted by user.")
        if self.early_stopping and getattr(self, "_best_theta", None) is not None:
            self._theta[:] = self._best_theta
        elif best_theta is not None:
            self._theta[:] = best_theta
        self.loss_ = best_loss if best_theta is not None else problem.loss(self._theta)
        self.n_iter_ = n_iter

    # ------------------------------------------------------------ records
    def _start_records(self, curve=()):
        """Fresh loss_curve_ (continuing ``curve``), best_loss_ and the
        validation records, as scikit-learn's ``_initialize`` sets them."""
        self.loss_curve_ = list(curve)
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = min(self.loss_curve_, default=np.inf)

    def _record(self, loss, X_val, y_val, sw_val):
        """One epoch or iteration: loss_curve_, then the no-improvement count
        (validation score, best weights and best_validation_score_ with
        early stopping; best_loss_ otherwise)."""
        self.loss_curve_.append(loss)
        self._update_no_improvement_count(self.early_stopping, X_val, y_val, sw_val)

    def _update_no_improvement_count(self, early_stopping, X, y, sample_weight):
        if early_stopping:
            val_score = self._score(X, y, sample_weight=sample_weight)
            self.validation_scores_.append(val_score)
            if self.verbose:
                print("Validation score: %f" % self.validation_scores_[-1])
            last_valid_score = self.validation_scores_[-1]
            if last_valid_score < (self.best_validation_score_ + self.tol):
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if last_valid_score > self.best_validation_score_:
                self.best_validation_score_ = last_valid_score
                np.copyto(self._best_theta, self._theta)
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _check_solver(self):
        if self.solver not in STOCHASTIC_SOLVERS:
            raise AttributeError("partial_fit is only available for stochastic "
                                 "optimizers. %s is not stochastic." % self.solver)
        return True

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # CSR / CSC: the first layer's kernels read CSR
        return tags

    # ------------------------------------------------------------ hand-set weights
    def _sync_network(self):
        """``network_``, (re)built when missing or stale; returns it.

        As in scikit-learn, the public fitted attributes define the model:
        ``coefs_`` and ``intercepts_`` (their shapes give the layer sizes),
        ``out_activation_`` (the loss) and the ``activation`` and ``alpha``
        parameters. When these were set by hand, or changed since
        ``network_`` was built, a new Network describes them, in float32 when
        every array of ``coefs_`` and ``intercepts_`` is float32, else float64.
        """
        params = (*self.coefs_, *self.intercepts_)
        sizes = (np.shape(self.coefs_[0])[0], *(np.shape(c)[1] for c in self.coefs_))
        f32 = all(getattr(p, "dtype", None) == np.float32 for p in params)
        key = (sizes, self.activation, self._network_loss(), float(self.alpha),
               np.dtype(np.float32 if f32 else np.float64))
        net = self.__dict__.get("network_")
        if net is None or (net.layer_sizes, net.activation, net.loss_name, net.alpha,
                           np.dtype(net.dtype)) != key:
            self.network_ = Network(sizes, self.activation, key[2], alpha=self.alpha,
                                    dtype=key[4])
        return self.network_

    # ------------------------------------------------------------ callbacks
    def _fit_with_callbacks(self, X, y, sample_weight, incremental):
        """``_fit`` inside the callback tasks of scikit-learn's callback API.

        The root task gets one subtask per epoch ('sgd', 'adam': one for
        ``partial_fit``) or per iteration (the other solvers).
        """
        stochastic = self.solver in STOCHASTIC_SOLVERS
        tasks = FitTasks.open(self, X, y, sample_weight,
                              1 if incremental else self.max_iter,
                              "epoch" if stochastic else "iteration")
        if tasks is None:
            return self._fit(X, y, sample_weight=sample_weight, incremental=incremental)
        self._fit_tasks = tasks
        try:
            self._fit(X, y, sample_weight=sample_weight, incremental=incremental)
        finally:
            del self._fit_tasks
        tasks.close()
        return self

    def _callback_iteration_end(self, theta):
        """Tell the callbacks that an epoch or iteration ended at ``theta`` (P,).

        Called by every solver after each epoch or iteration; returns whether
        a callback asked to stop (always False without callbacks).
        """
        tasks = self.__dict__.get("_fit_tasks")
        return tasks is not None and tasks.iteration_end(theta)

    def _lbfgs_callback(self):
        """SciPy's L-BFGS-B callback reporting each iteration; None without callbacks."""
        if self.__dict__.get("_fit_tasks") is None:
            return None

        def callback(intermediate_result):
            if self._callback_iteration_end(intermediate_result.x):
                raise StopIteration
        return callback
