"""cbackprop on Dask: training and prediction on data chunked over a cluster.

:class:`DaskMLPClassifier` and :class:`DaskMLPRegressor` take every parameter
of :class:`cbackprop.MLPClassifier` / :class:`cbackprop.MLPRegressor` plus
``client`` (a ``distributed.Client``; None: the default client), and fit on
row-chunked dask arrays or dataframes whose rows never come to the client:

* the full-batch solvers ('lbfgs', 'lm', 'hessian-free', 'newton', and
  'kfac' with the default batch_size='auto') run on the client over a
  :class:`cbackprop._dask_problem.DaskProblem`: each loss, gradient,
  curvature product, K-FAC factor estimate or Levenberg-Marquardt accumulation is one task
  per worker, each worker summing the cbackprop kernels over its own rows in
  chunk order, the client summing the workers in order. The fitted weights are
  the local estimator's on the same data, to rounding, for any chunking and
  number of workers;
* 'sgd' and 'adam' pass the model sequentially over the blocks, as dask-ml's
  ``Incremental`` does: each block's ``partial_fit`` epoch runs on a worker,
  one block after the other. This is NOT parallel: the result is exactly that
  of ``partial_fit`` called on the blocks in order, ``max_iter`` passes for
  ``fit`` (one pass for ``partial_fit``).

Predictions are dask arrays computed block-wise; :meth:`~DaskMLPClassifier.to_local`
returns the equivalent fitted in-memory estimator. The curvature operators of
:mod:`cbackprop.curvature` and the solvers of :mod:`cbackprop.optimize` accept
dask arrays directly.

Needs the optional dependencies ``pip install "cbackprop[dask]"``.
"""
import copy
import inspect
import warnings

import numpy as np
from sklearn.base import _fit_context
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state

from cbackprop._dask_problem import DaskProblem, as_row_chunked, get_client
from cbackprop._estimator_base import STOCHASTIC_SOLVERS, _hidden_layer_sizes
from cbackprop.estimators import MLPClassifier, MLPRegressor

import dask  # noqa: E402  (after _dask_problem, which explains a missing extra)
import dask.array as da  # noqa: E402

__all__ = ["DaskMLPClassifier", "DaskMLPRegressor"]


def _init_with_client(local_cls):
    """``__init__`` of a Dask twin: local_cls's parameters, then ``client=None``.

    The signature is the local one plus ``client`` (scikit-learn reads the
    parameters from it), so both stay in step.
    """
    signature = inspect.signature(local_cls.__init__)

    def __init__(self, *args, client=None, **kwargs):
        local_cls.__init__(self, *args, **kwargs)
        self.client = client

    client = inspect.Parameter("client", inspect.Parameter.KEYWORD_ONLY, default=None)
    __init__.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), client])
    return __init__


# ---------------------------------------------------------------- block tasks
def _partial_fit_block(model, X, y, sw, classes):
    """One partial_fit epoch of the model on one block (runs on a worker)."""
    kw = {} if classes is None else {"classes": classes}
    return model.partial_fit(X, y, sample_weight=sw, **kw)


def _method_block(X, model, method):
    return getattr(model, method)(X)


def _binarize(y, binarizer, dtype):
    """Class indicators of a block of labels, in the network's dtype."""
    return binarizer.transform(y).astype(dtype)


class _DaskMLP:
    """What both Dask estimators add to the local ones."""

    _local = None   # the in-memory estimator class

    def __init_subclass__(cls, **kwargs):
        # The local estimator's parameters (and their constraints), plus client.
        super().__init_subclass__(**kwargs)
        cls._parameter_constraints = {**cls._local._parameter_constraints,
                                      "client": "no_validation"}
        cls.__init__ = _init_with_client(cls._local)

    # ------------------------------------------------------------ state
    def __getstate__(self):
        # The client is never pickled: an unpickled estimator uses the
        # default client.
        state = dict(super().__getstate__())
        state["client"] = None
        return state

    def __sklearn_clone__(self):
        # The clone shares the client (a client cannot be deep-copied).
        client, self.client = self.client, None
        try:
            new = super().__sklearn_clone__()
        finally:
            self.client = client
        new.client = client
        return new

    def to_local(self):
        """The equivalent fitted in-memory estimator (a copy: no client).

        Returns
        -------
        MLPClassifier or MLPRegressor
        """
        state = copy.deepcopy(self.__getstate__())
        del state["client"]
        local = self._local.__new__(self._local)
        local.__setstate__(state)
        return local

    def _adopt(self, local):
        """Take the fitted state of a local estimator of the same parameters."""
        params = set(self.get_params(deep=False))
        for key, value in vars(local).items():
            if key not in params:
                setattr(self, key, value)

    # ------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit on row-chunked dask data; the rows stay on the workers.

        Parameters
        ----------
        X : dask array or dataframe of shape (n_samples, n_features)
            Chunked along the rows only; a dataframe's partitions are its row
            chunks (their lengths are computed on the cluster) and its string
            column names become ``feature_names_in_``.
        y : dask array, dataframe or series of shape (n_samples,) or (n_samples, n_outputs)
            With X's row chunks (a column of X's dataframe has them).
        sample_weight : dask array or series of shape (n_samples,), optional
            With X's row chunks.

        Returns
        -------
        self
        """
        client = get_client(self.client)
        names = getattr(X, "columns", None)      # a dask dataframe's
        X, y, sample_weight = as_row_chunked(X, y, sample_weight)
        self._set_feature_names(names)
        if self.early_stopping:
            raise ValueError(f"{type(self).__name__} does not support early_stopping=True "
                             "(no validation split of cluster data); score a held-out "
                             "dask array instead")
        with client.as_current():
            if self.solver in STOCHASTIC_SOLVERS:
                return self._fit_blocks(client, X, y, sample_weight, passes=self.max_iter,
                                        incremental=self.warm_start)
            return self._fit_full_batch(client, X, y, sample_weight)

    def _fit_full_batch(self, client, X, y, sample_weight):
        """BaseMLP._fit's steps, on dask arrays: metadata by small reductions
        on the cluster, training through the cluster-backed problem."""
        first_pass = not hasattr(self, "coefs_") or not self.warm_start
        X = self._check_features(X, reset=first_pass)
        dtype = X.dtype
        Y = self._targets(client, y, dtype, reset=first_pass)
        layer_units = [X.shape[1]] + _hidden_layer_sizes(self.hidden_layer_sizes) + [Y.shape[1]]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(Y, layer_units, dtype)
        else:
            if tuple(layer_units) != self.network_.layer_sizes:
                raise ValueError(f"warm_start needs the fitted architecture "
                                 f"{list(self.network_.layer_sizes)}, got {layer_units}")
            self._bind(np.array(self._current_theta(), copy=True))
            self.network_ = type(self.network_)(layer_units, self.activation,
                                                self._network_loss(), alpha=self.alpha,
                                                dtype=dtype)
        self._client_now = client
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, Y, sample_weight)
            else:
                self._fit_second_order(X, Y, sample_weight)
        finally:
            del self._client_now
        if not np.isfinite(self._theta).all():
            raise ValueError("Solver produced non-finite parameter weights. The input "
                             "data may contain large values and need to be preprocessed.")
        return self

    def _set_feature_names(self, names):
        """feature_names_in_ as scikit-learn sets it: only for string names."""
        if self.warm_start and hasattr(self, "coefs_"):
            return
        if names is not None and all(isinstance(n, str) for n in names):
            self.feature_names_in_ = np.asarray(names, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _make_problem(self, net, X, y, sample_weight):
        return DaskProblem(net, X, y, sample_weight, client=self._client_now)

    def _check_features(self, X, reset):
        """X as float32 or float64; n_features_in_ (and feature_names_in_) set or checked."""
        if X.dtype.kind not in "biuf":
            raise ValueError(f"X must hold numbers (bool, integer or float), got dtype "
                             f"{X.dtype}: encode the non-numeric columns first")
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        if reset:
            self.n_features_in_ = int(X.shape[1])
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        if hasattr(self, "network_") and not reset:
            X = X.astype(self.network_.dtype)
        return X

    def _fit_blocks(self, client, X, y, sample_weight, passes, incremental):
        """partial_fit over the blocks in order, ``passes`` times, each
        block's epoch in one task where the block is (not parallel)."""
        if incremental and hasattr(self, "coefs_"):
            model = self.to_local()
        else:
            model = self._local(**{k: v for k, v in self.get_params(deep=False).items()
                                   if k != "client"})
        classes = self._all_classes(client, y)
        blocks = [b.ravel() if b is not None else [None] * X.numblocks[0]
                  for b in (X.to_delayed(), y.to_delayed(),
                            None if sample_weight is None else sample_weight.to_delayed())]
        step = dask.delayed(_partial_fit_block, pure=True)
        state = dask.delayed(model)
        for _ in range(passes):
            for xb, yb, sb in zip(*blocks):
                state = step(state, xb, yb, sb, classes)
        self._adopt(client.compute(state).result())
        return self

    def partial_fit(self, X, y, sample_weight=None, **kw):
        """One pass of 'sgd' or 'adam' over the blocks of X, y, in order.

        Parameters
        ----------
        X, y, sample_weight : as for :meth:`fit`
        classes : array, optional (classifier)
            Ignored: the classes are read from y on the cluster.

        Returns
        -------
        self
        """
        self._check_solver()
        client = get_client(self.client)
        X, y, sample_weight = as_row_chunked(X, y, sample_weight)
        with client.as_current():
            return self._fit_blocks(client, X, y, sample_weight, passes=1, incremental=True)

    # ------------------------------------------------------------ predict
    def _check_feature_names(self, X):
        """scikit-learn's feature-name checks at prediction: names of a
        dataframe X against feature_names_in_ (set when fitted on one)."""
        names = getattr(X, "columns", None)
        if names is not None and not all(isinstance(n, str) for n in names):
            names = None
        fitted = getattr(self, "feature_names_in_", None)
        what = type(self).__name__
        if fitted is None:
            if names is not None:
                warnings.warn(f"X has feature names, but {what} was fitted without feature "
                              "names", UserWarning, stacklevel=4)
        elif names is None:
            warnings.warn(f"X does not have valid feature names, but {what} was fitted with "
                          "feature names", UserWarning, stacklevel=4)
        elif list(names) != list(fitted):
            raise ValueError("The feature names should match those that were passed during "
                             f"fit: fitted with {list(fitted)}, got {list(names)}")

    def _blockwise(self, X, method, dtype, out_cols):
        """``method`` of the local model on each row block of X (a dask array
        or dataframe): a dask array."""
        self._check_feature_names(X)
        X = as_row_chunked(X)[0]
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input.")
        local = self.to_local()
        # Blocks are plain arrays even when X was a dataframe.
        local.__dict__.pop("feature_names_in_", None)
        # The model enters the graph once, as one key every block reads.
        model = dask.delayed(local, pure=True)
        if out_cols is None:
            return X.map_blocks(_method_block, model, method, dtype=dtype, drop_axis=1,
                                chunks=(X.chunks[0],), meta=np.empty((0,), dtype))
        return X.map_blocks(_method_block, model, method, dtype=dtype,
                            chunks=(X.chunks[0], (out_cols,)), meta=np.empty((0, 0), dtype))

    def _score_inputs(self, X, y, sample_weight):
        """X as given (prediction checks its feature names and converts it),
        y and sample_weight as dask arrays with X's row chunks, the client."""
        _, y, sample_weight = as_row_chunked(X, y, sample_weight)
        return X, y, sample_weight, get_client(self.client)


class DaskMLPClassifier(_DaskMLP, MLPClassifier):
    _local = MLPClassifier

    def _all_classes(self, client, y):
        """The sorted classes of y, found on the cluster."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"{type(self).__name__} needs 1-D class labels y, got shape "
                             f"{y.shape} (multilabel targets are not supported on dask)")
        return np.unique(client.compute(da.unique(y)).result())

    def _targets(self, client, y, dtype, reset):
        """Class indicators (N, n_outputs) as a lazy dask array in dtype."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        classes = self._all_classes(client, y)
        if reset:
            self._label_binarizer = LabelBinarizer().fit(classes)
            self.classes_ = self._label_binarizer.classes_
        elif set(classes) != set(self.classes_):
            raise ValueError("warm_start can only be used where `y` has the same classes as "
                             f"in the previous call to fit. Previously got {self.classes_}, "
                             f"`y` has {classes}")
        binarizer = self._label_binarizer
        n_out = 1 if len(binarizer.classes_) <= 2 else len(binarizer.classes_)
        return y.map_blocks(_binarize, binarizer, dtype, dtype=dtype, new_axis=1,
                            chunks=(y.chunks[0], (n_out,)))

    def predict(self, X):
        """Class labels, block by block: a dask array of shape (n_samples,).
        X: a dask array or dataframe (its column names checked against
        feature_names_in_ as scikit-learn does)."""
        return self._blockwise(X, "predict", self.classes_.dtype, None)

    def predict_proba(self, X):
        """Class probabilities: a dask array of shape (n_samples, n_classes)."""
        return self._blockwise(X, "predict_proba", self.network_.dtype, len(self.classes_))

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`: a dask array of shape (n_samples, n_classes)."""
        return self._blockwise(X, "predict_log_proba", self.network_.dtype,
                               len(self.classes_))

    def score(self, X, y, sample_weight=None):
        """Mean accuracy (weighted), as scikit-learn's, reduced on the cluster.

        Returns
        -------
        float
        """
        X, y, sample_weight, client = self._score_inputs(X, y, sample_weight)
        hit = self.predict(X) == y.reshape(-1)
        return float(client.compute(da.average(hit, weights=sample_weight)).result())


class DaskMLPRegressor(_DaskMLP, MLPRegressor):
    _local = MLPRegressor

    def _all_classes(self, client, y):
        return None

    def _targets(self, client, y, dtype, reset):
        """Targets (N, n_outputs) as a lazy dask array in dtype."""
        if self.loss == "poisson" and client.compute((y < 0).any()).result():
            raise ValueError("loss='poisson' needs non-negative targets y.")
        Y = y.astype(dtype)
        return Y[:, None] if Y.ndim == 1 else Y

    def predict(self, X):
        """Predicted targets, block by block: a dask array of shape
        (n_samples,) or (n_samples, n_outputs). X: a dask array or dataframe
        (its column names checked against feature_names_in_ as scikit-learn
        does)."""
        cols = None if self.n_outputs_ == 1 else self.n_outputs_
        return self._blockwise(X, "predict", self.network_.dtype, cols)

    def score(self, X, y, sample_weight=None):
        """R^2 (weighted, outputs averaged uniformly), as scikit-learn's,
        reduced on the cluster.

        Returns
        -------
        float
        """
        X, y, sample_weight, client = self._score_inputs(X, y, sample_weight)
        Y = y.reshape(y.shape[0], -1).astype(np.float64)
        pred = self.predict(X).reshape(Y.shape)
        w = da.ones(Y.shape[0], chunks=Y.chunks[0]) if sample_weight is None else sample_weight
        w = w.astype(np.float64)[:, None]
        mean = (w * Y).sum(axis=0) / w.sum()
        finite, num, den = client.compute(
            [da.isfinite(pred).all(), (w * (Y - pred) ** 2).sum(axis=0),
             (w * (Y - mean) ** 2).sum(axis=0)], sync=True)
        if not finite:
            return np.nan
        # scikit-learn's force_finite: a constant y scores 1 if fitted exactly, else 0.
        r2 = np.where(den != 0, 1 - num / np.where(den != 0, den, 1), np.where(num == 0, 1.0, 0.0))
        return float(np.mean(r2))


for _cls, _what in ((DaskMLPClassifier, "classifier"), (DaskMLPRegressor, "regressor")):
    _cls.__doc__ = f"""Multi-layer perceptron {_what} trained on a dask.distributed cluster.

Every parameter of :class:`cbackprop.{_cls._local.__name__}`, plus

client : distributed.Client, default=None
    The cluster's client; None uses ``distributed.default_client()``. Never
    pickled.

Full-batch solvers run distributed and give the local estimator's weights to
rounding; 'sgd' and 'adam' pass the model over the blocks sequentially (not in
parallel). ``early_stopping`` is not supported. Fitted attributes are the
local estimator's; :meth:`to_local` returns the equivalent
:class:`cbackprop.{_cls._local.__name__}`. See :mod:`cbackprop.dask`.
"""
