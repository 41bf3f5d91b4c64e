"""MLPClassifier and MLPRegressor: drop-in replacements for scikit-learn's.

Same parameters, defaults, fitted attributes and numbers (for the same
``random_state``) as ``sklearn.neural_network`` in scikit-learn 1.9, trained
by whole-epoch Cython loops. See :mod:`cbackprop._estimator_base` for the
training machinery.
"""
import textwrap

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.metrics import accuracy_score, r2_score
from sklearn.neural_network import MLPClassifier as _SkMLPClassifier
from sklearn.neural_network import MLPRegressor as _SkMLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from cbackprop._estimator_base import ACCEPT_SPARSE, BaseMLP, _parameter_constraints
from cbackprop._threads import blas_section

__all__ = ["MLPClassifier", "MLPRegressor"]

_COMMON_PARAMS = """\
    hidden_layer_sizes : array-like of shape (n_layers - 2,) or int, default=(100,)
        Widths of the hidden layers, each an integer >= 1.

    activation : {'identity', 'logistic', 'tanh', 'relu', 'softplus', 'swish', \
'mish'}, default='relu'
        Activation of every hidden layer: scikit-learn's four, plus
        ``softplus(x) = log(1 + exp(x))``, ``swish(x) = x * sigmoid(x)`` and
        ``mish(x) = x * tanh(softplus(x))``.

    solver : {'lbfgs', 'sgd', 'adam', 'lm', 'hessian-free', 'newton', 'kfac'}, default='adam'
        'sgd' and 'adam' run whole epochs in compiled code, with
        scikit-learn's update rules; 'lbfgs' is SciPy's L-BFGS-B over the
        flat parameter vector. Second-order (see :mod:`cbackprop.optimize`):
        'lm' is Levenberg-Marquardt on the generalized Gauss-Newton matrix
        (P x P memory: for networks up to a few thousand parameters),
        'hessian-free' is Martens' truncated CG on damped Gauss-Newton
        products (matrix-free), 'newton' is trust-region Newton with exact
        Hessian-vector products, all three full batch; 'kfac' is K-FAC, full
        batch with ``batch_size='auto'``, else on mini-batches of
        ``batch_size`` rows (then ``max_iter`` counts epochs, as for 'adam').
        For these, ``max_iter`` counts outer iterations, ``tol`` is the
        gradient tolerance (max|g|), ``verbose`` also prints the damping of
        'lm', 'hessian-free' and 'kfac', ``early_stopping`` and ``warm_start``
        work as for the other solvers, and the step-size, momentum and
        (except for 'kfac') batch and shuffling parameters are ignored.

    alpha : float, default=0.0001
        Strength of the L2 penalty ``alpha / (2 W) * sum ||W_l||^2`` (W the
        number of samples, or the sum of the sample weights).

    batch_size : int or 'auto', default='auto'
        Minibatch size of 'sgd' and 'adam'; 'auto' is ``min(200, n_samples)``.
        Larger values are clipped to n_samples (with a warning).

    learning_rate : {'constant', 'invscaling', 'adaptive'}, default='constant'
        Schedule of 'sgd': constant; ``learning_rate_init / (t + 1) ** power_t``
        after each epoch (t = samples seen); or divided by 5 whenever
        ``n_iter_no_change`` epochs pass without an improvement of ``tol``.

    learning_rate_init : float, default=0.001
        Initial step size of 'sgd' and 'adam'.

    power_t : float, default=0.5
        Exponent of the 'invscaling' schedule.

    max_iter : int, default=200
        Maximum number of epochs ('sgd', 'adam') or of iterations ('lbfgs').

    shuffle : bool, default=True
        Whether 'sgd' and 'adam' visit the samples in a new random order in
        every epoch (drawn exactly as scikit-learn draws it).

    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the early-stopping split and the epoch
        orders; the same value gives the same draws as scikit-learn.

    tol : float, default=1e-4
        Training stops (or, with 'adaptive', the learning rate drops) when the
        loss or validation score fails to improve by ``tol`` for
        ``n_iter_no_change`` consecutive epochs; 'lbfgs' uses it as ``gtol``.

    verbose : bool or int, default=False
        Print ``Iteration %d, loss = %.8f`` after every epoch.

    warm_start : bool, default=False
        Continue from the fitted weights instead of reinitializing.

    momentum : float, default=0.9
        Momentum of 'sgd', in [0, 1].

    nesterovs_momentum : bool, default=True
        Whether 'sgd' uses Nesterov's momentum.

    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data (stratified for single-
        output classification) and stop when the validation score stops
        improving; the best weights are kept. 'sgd' and 'adam' only.

    validation_fraction : float, default=0.1
        Fraction held out when ``early_stopping`` is True.

    beta_1, beta_2 : float, default=0.9, 0.999
        Adam's decay rates of the first and second moment estimates, in [0, 1).

    epsilon : float, default=1e-8
        Adam's denominator offset.

    n_iter_no_change : int or np.inf, default=10
        Number of epochs without improvement tolerated (see ``tol``).

    max_fun : int, default=15000
        Maximum number of loss evaluations of 'lbfgs'.

    solver_options : dict or None, default=None
        Keyword arguments of the second-order solver's function in
        :mod:`cbackprop.optimize` (copied, never modified):

        - 'lm' (:func:`~cbackprop.optimize.levenberg_marquardt`): ``mu``,
          ``mu_dec``, ``mu_inc``, ``mu_max``, ``ftol``, ``block_size``,
          ``accumulation``, ``max_bytes``; the estimator's schedule is
          ``mu_dec=0.5``, ``mu_inc=4`` (half as many rejected trials as
          trainlm's 0.1 and 10 in the measurements of the user guide's
          "Second-order optimization");
        - 'hessian-free' (:func:`~cbackprop.optimize.hessian_free`):
          ``damping``, ``damping_max``, ``cg_max_iter``, ``cg_tol``,
          ``cg_decay``, ``preconditioner``, ``curvature_batch_size``, ``ftol``;
        - 'newton' (:func:`~cbackprop.optimize.newton`): ``method``,
          ``initial_trust_radius``, ``max_trust_radius``, ``eta``;
        - 'kfac' (:func:`~cbackprop.optimize.kfac`): ``curvature``,
          ``learning_rate``, ``momentum``, ``kl_clip``, ``damping``,
          ``min_damping``, ``max_damping``, ``damping_decay``,
          ``damping_every``, ``ema_decay``, ``inverse_every``, ``burnin``,
          ``ftol``.

        ``max_iter``, ``gtol``, ``callback``, ``random_state``,
        ``batch_size`` and ``shuffle`` come from the estimator's own
        parameters and are refused here, as is any other key; so is any
        non-empty dict with 'lbfgs', 'sgd' or 'adam', which take none. After
        a warm start the fitted damping replaces ``mu`` / ``damping``.
"""

_COMMON_ATTRIBUTES = """\
    loss_ : float
        Training objective (loss plus penalty) after the last epoch or at the
        L-BFGS solution.

    best_loss_ : float or None
        Lowest training loss seen ('sgd', 'adam'); None with early stopping.

    loss_curve_ : list of float
        Training loss of each epoch ('sgd', 'adam').

    validation_scores_ : list of float or None
        Validation score of each epoch with early stopping, else None.

    best_validation_score_ : float or None
        Best validation score with early stopping, else None.

    t_ : int
        Number of training samples seen by the stochastic solvers.

    coefs_ : list of ndarray
        ``coefs_[i]`` of shape (n_{{i}}, n_{{i+1}}) is layer i's weight matrix.
        A view into ``theta_``.

    intercepts_ : list of ndarray
        ``intercepts_[i]`` of shape (n_{{i+1}},) is layer i's bias; a view into
        ``theta_``.

    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features seen during fit, when X had string names.

    n_iter_ : int
        Number of epochs ('sgd', 'adam') or iterations ('lbfgs') run.

    n_layers_ : int
        Number of layers, input and output included.

    n_outputs_ : int
        Number of outputs.

    out_activation_ : str
        Output link: {out_activations}.

    network_ : cbackprop.Network
        The fitted architecture, activation, loss and ``alpha``: with
        ``theta_`` every tool of :class:`cbackprop.Network` (gradients,
        Hessians, GGN, ...) applies to the fitted model, and
        ``network_.predict(theta_, X)`` equals ``{network_predict}``.

    theta_ : ndarray of shape (network_.n_params,)
        All parameters as one flat vector ``W_1, b_1, W_2, b_2, ...``
        (``coefs_`` and ``intercepts_`` are views of it).
"""

_DIFFERENCES = """\
    Notes
    -----
    Differences from scikit-learn:

    - Sparse X (scipy.sparse CSR or CSC matrices and arrays; other formats
      are converted to CSR by scikit-learn's validation) is accepted by fit,
      partial_fit, predict, predict_proba and score with every solver, and
      never densified as a whole: it is converted once to CSR of the model's
      dtype and the first layer's products (forward, gradient, curvature
      products) run as sparse kernels. Quantities that need dense
      per-sample inputs (K-FAC's exact factors) densify one row chunk at a
      time. The results equal those on ``X.toarray()`` to
      rounding.
    - float32 X trains and predicts entirely in float32 (``coefs_`` and
      predictions are float32, also with 'lbfgs'); any other dtype becomes
      float64. After a warm start or in ``partial_fit``, X is converted to the
      dtype of the fitted model.
    - Divergence stops training with a ConvergenceWarning naming the cause:
      an epoch whose training loss is non-finite or above 1e6 times a
      reference scale (the loss of the all-zero network, at least 1, plus the
      starting penalty), e.g. from ``learning_rate_init=1e6``. The weights
      with the best training loss seen are restored (an epoch's loss rates the
      weights at its start), so predictions stay finite, and ``loss_curve_``
      keeps the sane epochs only. scikit-learn goes on and can end with NaN
      weights and an error.
    - ``partial_fit`` exists only for 'sgd' and 'adam'{partial_fit_note}.
    - Log losses are computed exactly from the raw outputs, where
      scikit-learn clips probabilities at machine epsilon: the reported loss
      differs only where a probability is within eps of 0 or 1.{extra}
"""

_REGRESSOR_EXTRA = """
    - With several outputs and ``loss='squared_error'``, scikit-learn reports
      a loss (``loss_``, ``loss_curve_``, and the value its L-BFGS sees) whose
      data term is divided by n_outputs while its gradient is not; here loss
      and gradient are consistent (``sum_k (y_k - z_k)^2 / 2`` per sample).
      The 'sgd' and 'adam' weights are the same, but the reported losses are
      larger, so ``tol``-based stopping, and 'lbfgs', can differ. With one
      output everything agrees."""


class MLPClassifier(ClassifierMixin, BaseMLP):
    _parameter_constraints = _parameter_constraints(_SkMLPClassifier)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 n_iter_no_change=10, max_fun=15000,
                 solver_options=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            loss="log_loss", shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            solver_options=solver_options)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, accept_sparse=ACCEPT_SPARSE,
                             dtype=(np.float64, np.float32), order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        # As scikit-learn: (re)define classes_ on a fresh fit; check them
        # against the known ones on warm starts and partial_fit.
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same "
                        "classes as in the previous call to fit. Previously "
                        f"got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError("`y` has classes not in `self.classes_`. "
                                 f"`self.classes_` has {self.classes_}. 'y' has {classes}.")
        # Boolean like scikit-learn's, so that the stratified early-stopping
        # split sees the same labels; converted to the model dtype later.
        y = self._label_binarizer.transform(y).astype(bool)
        return X, y

    @_fit_context(prefer_skip_nested_validation=True)
    @blas_section
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and the class labels y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (dense; float32 stays float32).
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or a label indicator matrix for multilabel.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the loss.

        Returns
        -------
        self : MLPClassifier
        """
        return self._fit_with_callbacks(X, y, sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    @blas_section
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch of 'sgd' or 'adam' over X, y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
        sample_weight : array-like of shape (n_samples,), default=None
        classes : array of shape (n_classes,), default=None
            All classes over all calls; required on the first call (unless y
            is a multilabel indicator matrix).

        Returns
        -------
        self : MLPClassifier
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit_with_callbacks(X, y, sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._raw_predict(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    @blas_section
    def predict(self, X):
        """Predicted class labels (or label indicator rows for multilabel).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        check_is_fitted(self)
        return self._predict(X)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    @blas_section
    def predict_proba(self, X):
        """Class probabilities, columns ordered as ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), the model's dtype
        """
        check_is_fitted(self)
        y_pred = self._raw_predict(X)
        if self.n_outputs_ == 1:
            p = y_pred[:, 0]
            return np.stack([1 - p, p], axis=1)
        return y_pred

    @blas_section
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def network_targets(self, y):
        """Return class labels y as the targets of ``network_``.

        ``network_`` works on 0/1 target matrices: one-hot rows for
        multiclass y (loss 'log_loss'), one 0/1 column for binary y and the
        indicator matrix for multilabel y (loss 'binary_log_loss'). With them
        every method of :class:`cbackprop.Network` applies to the fitted
        model, e.g. ``clf.network_.hvp(clf.theta_, X, clf.network_targets(y), V)``;
        ``clf.network_.loss(clf.theta_, X, clf.network_targets(y))`` is the
        training objective (``loss_`` after an 'lbfgs' fit on X, y).

        Parameters
        ----------
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Labels among ``classes_``, or a label indicator matrix for a
            multilabel model.

        Returns
        -------
        Y : ndarray of shape (n_samples, n_outputs_)
            0/1 entries, C-contiguous, of ``network_.dtype``.
        """
        check_is_fitted(self)
        dtype = self._sync_network().dtype
        binarizer = self._label_binarizer
        if not binarizer.y_type_.startswith("multilabel"):
            y = column_or_1d(y)
            unknown = np.setdiff1d(unique_labels(y), self.classes_)
            if unknown.size:
                raise ValueError(f"y has labels {unknown} not in classes_ {self.classes_}")
        return np.ascontiguousarray(binarizer.transform(y), dtype=dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    # 'poisson' is ours whatever scikit-learn's MLPRegressor offers (1.7+).
    _parameter_constraints = {**_parameter_constraints(_SkMLPRegressor),
                              "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu",
                 *, solver="adam", alpha=0.0001, batch_size="auto",
                 learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 solver_options=None):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            loss=loss, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, warm_start=warm_start, momentum=momentum,
            nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
            epsilon=epsilon, n_iter_no_change=n_iter_no_change, max_fun=max_fun,
            solver_options=solver_options)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True,
                             accept_sparse=ACCEPT_SPARSE, dtype=(np.float64, np.float32),
                             order="C", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (np.asarray(y) < 0).any():
            raise ValueError("loss='poisson' needs non-negative targets y.")
        return X, y

    @_fit_context(prefer_skip_nested_validation=True)
    @blas_section
    def fit(self, X, y, sample_weight=None):
        """Fit the model to X and the targets y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data (dense; float32 stays float32).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets (non-negative for ``loss='poisson'``).
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the samples in the loss.

        Returns
        -------
        self : MLPRegressor
        """
        return self._fit_with_callbacks(X, y, sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    @blas_section
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch of 'sgd' or 'adam' over X, y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : MLPRegressor
        """
        return self._fit_with_callbacks(X, y, sample_weight, incremental=True)

    def _predict(self, X, check_input=True):
        y_pred = self._raw_predict(X, check_input=check_input)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    @blas_section
    def predict(self, X):
        """Predicted targets (after the exp link for ``loss='poisson'``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        check_is_fitted(self)
        return self._predict(X)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)

    def network_targets(self, y):
        """Return targets y as the 2-D float targets of ``network_``.

        With them every method of :class:`cbackprop.Network` applies to the
        fitted model, e.g. ``reg.network_.hvp(reg.theta_, X, reg.network_targets(y), V)``;
        ``reg.network_.loss(reg.theta_, X, reg.network_targets(y))`` is the
        training objective (``loss_`` after an 'lbfgs' fit on X, y).

        Parameters
        ----------
        y : array-like of shape (n_samples,) or (n_samples, n_outputs_)
            Finite targets.

        Returns
        -------
        Y : ndarray of shape (n_samples, n_outputs_)
            C-contiguous, of ``network_.dtype``.
        """
        check_is_fitted(self)
        dtype = self._sync_network().dtype
        Y = check_array(y, ensure_2d=False, dtype=dtype, order="C", input_name="y")
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        if Y.ndim != 2 or Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y must have shape (n_samples,) or (n_samples, "
                             f"{self.n_outputs_}) for this model, got {np.shape(y)}")
        return Y



def _doc(summary, params, attributes, notes):
    """Assemble a class docstring from the shared, indented blocks."""
    return "\n".join([summary, "", "Parameters", "----------", textwrap.dedent(params),
                       "Attributes", "----------", textwrap.dedent(attributes),
                       textwrap.dedent(notes)])


MLPClassifier.__doc__ = _doc(
    """Multi-layer perceptron classifier, a drop-in for scikit-learn's.

Minimizes the log loss (softmax for multiclass, logistic per output for
binary and multilabel targets) plus an L2 penalty with 'adam', 'sgd' or
'lbfgs'. Every parameter, default, fitted attribute and, for the same
``random_state``, every number follows scikit-learn 1.9's
``sklearn.neural_network.MLPClassifier`` (see Notes for the differences).""",
    _COMMON_PARAMS,
    """\
    classes_ : ndarray or list of ndarray
        Class labels of each output.

""" + _COMMON_ATTRIBUTES.format(
        out_activations="'softmax' (multiclass) or 'logistic' (binary, multilabel)",
        network_predict="predict_proba(X) (its positive column for binary y)"),
    _DIFFERENCES.format(partial_fit_note="", extra="") + """
    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from cbackprop import MLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = MLPClassifier(max_iter=50, random_state=0).fit(X / 16, y)
    >>> clf.predict(X[:3] / 16)
    array([0, 1, 2])
""")

MLPRegressor.__doc__ = _doc(
    """Multi-layer perceptron regressor, a drop-in for scikit-learn's.

Minimizes half the squared error (identity output) or half the Poisson
deviance (``loss='poisson'``, exp output) plus an L2 penalty with 'adam',
'sgd' or 'lbfgs'. Every parameter, default, fitted attribute and, for the
same ``random_state``, every number follows scikit-learn 1.9's
``sklearn.neural_network.MLPRegressor`` (see Notes for the differences).""",
    """\
    loss : {'squared_error', 'poisson'}, default='squared_error'
        Half squared error with identity output, or half Poisson deviance
        with exp output (targets must be >= 0).

""" + _COMMON_PARAMS,
    _COMMON_ATTRIBUTES.format(out_activations="'identity', or 'exp' for poisson",
                              network_predict="predict(X)"),
    _DIFFERENCES.format(partial_fit_note=(
        "\n      (scikit-learn's MLPRegressor also offers it with 'lbfgs', where it "
        "runs\n      a whole L-BFGS fit)"),
                        extra=_REGRESSOR_EXTRA) + """
    Examples
    --------
    >>> import numpy as np
    >>> from cbackprop import MLPRegressor
    >>> X = np.linspace(-1, 1, 200).reshape(-1, 1)
    >>> reg = MLPRegressor(hidden_layer_sizes=(20,), solver="lbfgs", random_state=0)
    >>> reg.fit(X, X.ravel() ** 2).score(X, X.ravel() ** 2) > 0.99
    True
""")
