"""The Network: a stateless description of an MLP and its derivatives.

All methods are pure functions of the flat parameter vector ``theta``
(``W_1, b_1, W_2, b_2, ...``, each ``W_l`` row-major of shape
``(n_{l-1}, n_l)``); nothing is stored between calls.
"""
import numbers
import threading

import numpy as np
from sklearn.utils import check_random_state

from cbackprop import _network
from cbackprop._curvature_methods import CurvatureMixin
from cbackprop._activations import Activation
from cbackprop._losses import Loss
from cbackprop._validation import (check_float_dtype, check_option, check_sample_weight,
                                   check_theta, check_X, check_y)

ACTIVATIONS = {
    "identity": Activation.IDENTITY,
    "logistic": Activation.LOGISTIC,
    "tanh": Activation.TANH,
    "relu": Activation.RELU,
    "softplus": Activation.SOFTPLUS,
    "swish": Activation.SWISH,
    "mish": Activation.MISH,
}
LOSSES = {
    "squared_error": Loss.SQUARED_ERROR,
    "poisson": Loss.POISSON,
    "log_loss": Loss.LOG_LOSS,
    "binary_log_loss": Loss.BINARY_LOG_LOSS,
}


def _check_layer_sizes(layer_sizes):
    sizes = tuple(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least 2 entries (inputs and outputs), "
                         f"got {sizes}")
    for n in sizes:
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"layer sizes must be integers >= 1, got {sizes}")
    return tuple(int(n) for n in sizes)


class Network(CurvatureMixin):
    """A multilayer perceptron with one hidden activation and a fused loss.

    Parameters
    ----------
    layer_sizes : sequence of int
        ``(n_0, n_1, ..., n_L)``: inputs, hidden widths, outputs.
    activation : {'identity', 'logistic', 'tanh', 'relu', 'softplus', 'swish', 'mish'}
        Activation of every hidden layer.
    loss : {'squared_error', 'poisson', 'log_loss', 'binary_log_loss'}
        Loss on the raw outputs, fused with its link (identity, exp, softmax,
        logistic).
    alpha : float >= 0
        L2 penalty: the objective adds ``alpha / (2 W) sum_l ||W_l||_F^2`` with
        W the sum of sample weights (biases are not penalized).
    dtype : {np.float64, np.float32}
        Dtype of every computation; inputs are converted to it.
    """

    def __init__(self, layer_sizes, activation="relu", loss="squared_error",
                 alpha=0.0, dtype=np.float64):
        self.layer_sizes = _check_layer_sizes(layer_sizes)
        self.activation = check_option(activation, ACTIVATIONS, "activation")
        self.loss_name = check_option(loss, LOSSES, "loss")
        if not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        self.dtype = check_float_dtype(dtype)
        self._plan = _network.NetPlan(self.layer_sizes, ACTIVATIONS[activation],
                                      LOSSES[loss])
        self._local = threading.local()

    def _workspace(self, n_samples, k=1):
        """The first-order kernels' workspace (see ``_scratch``)."""
        return self._scratch(_network.FirstOrderWorkspace, n_samples, k)

    def _scratch(self, family, n_samples, k=1):
        """This thread's workspace of a kernel family (a ``Workspace``
        class), laid out for at least n_samples rows and k vectors.

        Reusing buffers across calls avoids fresh multi-megabyte allocations,
        whose page faults cost as much as a GEMM here; one workspace per
        thread and per family keeps concurrent calls, and nested uses of
        different families, independent. It grows on demand and is valid
        until the next call with the same family on the same thread.
        """
        pools = getattr(self._local, "pools", None)
        if pools is None:
            pools = self._local.pools = {}
        ws = pools.get(family)
        if ws is None:
            ws = pools[family] = family(self._plan, n_samples, k, self.dtype)
        elif ws.n_rows < n_samples or ws.k < k:
            ws.fit(max(n_samples, ws.n_rows), max(k, ws.k))
        return ws

    def __repr__(self):
        return (f"Network({list(self.layer_sizes)}, activation={self.activation!r}, "
                f"loss={self.loss_name!r}, alpha={self.alpha}, "
                f"dtype={np.dtype(self.dtype).name})")

    def __reduce__(self):
        return (Network, (self.layer_sizes, self.activation, self.loss_name,
                          self.alpha, self.dtype))

    @property
    def n_params(self):
        """Number of parameters P (length of theta)."""
        return self._plan.n_params

    @property
    def n_layers(self):
        """Number of weight layers L."""
        return len(self.layer_sizes) - 1

    @property
    def n_outputs(self):
        return self.layer_sizes[-1]

    # -------------------------------------------------------- parameters
    def _shapes(self):
        s = self.layer_sizes
        return [((s[i], s[i + 1]), (s[i + 1],)) for i in range(self.n_layers)]

    def init_params(self, random_state=None):
        """Glorot-uniform initial theta, the same draws as scikit-learn's MLP.

        Layer by layer, coefficients then intercepts from one RandomState,
        uniform in ``+-sqrt(factor / (n_in + n_out))``, factor 2 for the
        logistic activation and 6 otherwise.

        Returns
        -------
        theta : ndarray of shape (n_params,)
        """
        rs = check_random_state(random_state)
        factor = 2.0 if self.activation == "logistic" else 6.0
        coefs, intercepts = [], []
        for (fan_in, fan_out), _ in self._shapes():
            bound = np.sqrt(factor / (fan_in + fan_out))
            coefs.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
            intercepts.append(rs.uniform(-bound, bound, fan_out))
        return self.pack(coefs, intercepts)

    def pack(self, coefs, intercepts):
        """Flatten per-layer arrays into theta (a new array of self.dtype)."""
        shapes = self._shapes()
        if len(coefs) != len(shapes) or len(intercepts) != len(shapes):
            raise ValueError(f"expected {len(shapes)} coefs and intercepts, got "
                             f"{len(coefs)} and {len(intercepts)}")
        parts = []
        for (ws, bs), W, b in zip(shapes, coefs, intercepts):
            W, b = np.asarray(W), np.asarray(b)
            if W.shape != ws or b.shape != bs:
                raise ValueError(f"layer shapes {W.shape}, {b.shape} do not match "
                                 f"{ws}, {bs}")
            parts += [W.ravel(), b]
        return check_theta(np.concatenate(parts), self.n_params, self.dtype)

    def unpack(self, theta):
        """Views of theta as (coefs, intercepts) lists, no copy."""
        theta = np.asarray(theta)
        if theta.ndim != 1 or theta.shape[0] != self.n_params:
            raise ValueError(f"theta must have shape ({self.n_params},), got {theta.shape}")
        coefs, intercepts, start = [], [], 0
        for ws, bs in self._shapes():
            n = ws[0] * ws[1]
            coefs.append(theta[start:start + n].reshape(ws))
            intercepts.append(theta[start + n:start + n + bs[0]])
            start += n + bs[0]
        return coefs, intercepts

    # -------------------------------------------------------- validation
    def _check(self, theta, X, y=None, sample_weight=None):
        theta = check_theta(theta, self.n_params, self.dtype)
        X = check_X(X, self.layer_sizes[0], self.dtype)
        if y is not None:
            y = check_y(y, X.shape[0], self.n_outputs, self.dtype, self.loss_name)
        sw = check_sample_weight(sample_weight, X.shape[0], self.dtype)
        sw_sum = float(X.shape[0]) if sw is None else float(sw.sum(dtype=np.float64))
        return theta, X, y, sw, sw_sum

    def _check_out(self, out, shape):
        if out is None:
            return np.empty(shape, self.dtype)
        if (not isinstance(out, np.ndarray) or out.shape != shape
                or out.dtype != self.dtype or not out.flags.c_contiguous
                or not out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous "
                             f"{np.dtype(self.dtype).name} array of shape {shape}")
        return out

    # -------------------------------------------------------- first order
    def predict(self, theta, X):
        """Outputs after the link: identity, exp, softmax or logistic.

        Returns
        -------
        out : ndarray of shape (N, n_L), or (N,) when n_L == 1
        """
        theta, X, _, _, _ = self._check(theta, X)
        out = np.empty((X.shape[0], self.n_outputs), self.dtype)
        _network.raw_output(self._plan, theta, X, out, True, self._workspace(X.shape[0], 0))
        return out[:, 0] if self.n_outputs == 1 else out

    def raw_output(self, theta, X):
        """Raw predictions z_L (before the link), shape (N, n_L)."""
        theta, X, _, _, _ = self._check(theta, X)
        out = np.empty((X.shape[0], self.n_outputs), self.dtype)
        _network.raw_output(self._plan, theta, X, out, False, self._workspace(X.shape[0], 0))
        return out

    def loss(self, theta, X, y, sample_weight=None):
        """Objective ``sum_i w_i l_i / W + alpha / (2 W) sum ||W_l||^2``."""
        theta, X, y, sw, sw_sum = self._check(theta, X, y, sample_weight)
        return _network.loss_grad(self._plan, theta, X, y, sw, sw_sum, self.alpha, None,
                                  self._workspace(X.shape[0]))

    def loss_grad(self, theta, X, y, sample_weight=None, *, out=None):
        """Objective and its gradient in one forward and one backward pass.

        Parameters
        ----------
        out : ndarray of shape (n_params,), optional
            C-contiguous array of the network's dtype to write the gradient
            into (saves an allocation per call in optimizer loops).

        Returns
        -------
        loss : float
        grad : ndarray of shape (n_params,), ``out`` when given
        """
        theta, X, y, sw, sw_sum = self._check(theta, X, y, sample_weight)
        grad = self._check_out(out, (self.n_params,))
        loss = _network.loss_grad(self._plan, theta, X, y, sw, sw_sum, self.alpha, grad,
                                  self._workspace(X.shape[0]))
        return loss, grad

    def per_sample_grads(self, theta, X, y, sample_weight=None):
        """Gradients of the raw per-sample losses l_i.

        Row i is unscaled by ``w_i / W`` and has no regularizer;
        ``sample_weight`` is validated but does not enter.

        Returns
        -------
        G : ndarray of shape (N, n_params)
        """
        theta, X, y, _, _ = self._check(theta, X, y, sample_weight)
        out = np.empty((X.shape[0], self.n_params), self.dtype)
        _network.per_sample_grads(self._plan, theta, X, y, out, self._workspace(X.shape[0]))
        return out

    def jacobian(self, theta, X):
        """Jacobian of the raw outputs with respect to theta.

        Returns
        -------
        J : ndarray of shape (N, n_L, n_params)
        """
        theta, X, _, _, _ = self._check(theta, X)
        N = X.shape[0]
        out = np.empty((N * self.n_outputs, self.n_params), self.dtype)
        _network.jacobian(self._plan, theta, X, out, self._workspace(N, self.n_outputs))
        return out.reshape(N, self.n_outputs, self.n_params)
