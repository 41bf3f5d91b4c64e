"""The Network: a stateless description of an MLP and its derivatives.

All methods are pure functions of the flat parameter vector ``theta``
(``W_1, b_1, W_2, b_2, ...``, each ``W_l`` row-major of shape
``(n_{l-1}, n_l)``); nothing is stored between calls.

X may be a scipy.sparse CSR or CSC matrix or array: it is converted once to
CSR of the network's dtype (sorted indices, duplicates summed, int32 or
int64 indices as given) and only the first layer reads it, by sparse kernels
(``X W_1``, ``X^T delta_1`` and their curvature-product counterparts).
The GGN and Fisher diagonals use the squared CSR rows; the quantities built
from dense per-sample inputs (``diag_hessian``, ``hessian``, ``kfac``) densify
one row chunk at a time.
"""
import numbers
import threading

import numpy as np
from sklearn.utils import check_random_state

from cbackprop import _assembly, _network
from cbackprop._layout import Layout
from cbackprop._problem import Problem, check_block
from cbackprop._activations import Activation
from cbackprop._losses import Loss
from cbackprop._validation import check_float_dtype, check_option, check_theta
from cbackprop._threads import blas_section

__all__ = ["Network", "ACTIVATIONS", "LOSSES"]

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


class Network:
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
        self.layout = Layout(self._plan)
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
        lay, coefs, intercepts = self.layout, [], []
        for l, ((n_in, n_out), _) in enumerate(self._shapes()):
            w, b = int(lay.w_off[l]), int(lay.b_off[l])
            coefs.append(theta[w:b].reshape(n_in, n_out))
            intercepts.append(theta[b:b + n_out])
        return coefs, intercepts


    # -------------------------------------------------------- data
    def _problem(self, X, y=None, sample_weight=None):
        return Problem(self, X, y, sample_weight)

    def _theta(self, theta):
        return check_theta(theta, self.n_params, self.dtype)

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
    @blas_section
    def predict(self, theta, X):
        """Outputs after the link: identity, exp, softmax or logistic.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)

        Returns
        -------
        out : ndarray of shape (N, n_L), or (N,) when n_L == 1

        Examples
        --------
        >>> import numpy as np, cbackprop as cb
        >>> net = cb.Network([3, 5, 2], activation="tanh", loss="log_loss")
        >>> theta = net.init_params(random_state=0)
        >>> net.predict(theta, np.ones((4, 3))).sum(axis=1)
        array([1., 1., 1., 1.])
        """
        theta, problem = self._theta(theta), self._problem(X)
        out = np.empty((problem.n_rows, self.n_outputs), self.dtype)
        problem.raw_output(theta, out, True)
        return out[:, 0] if self.n_outputs == 1 else out

    @blas_section
    def raw_output(self, theta, X):
        """Raw predictions z_L (before the link).

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)

        Returns
        -------
        z : ndarray of shape (N, n_L)
        """
        theta, problem = self._theta(theta), self._problem(X)
        out = np.empty((problem.n_rows, self.n_outputs), self.dtype)
        return problem.raw_output(theta, out, False)

    @blas_section
    def loss(self, theta, X, y, sample_weight=None):
        """Objective ``sum_i w_i l_i / W + alpha / (2 W) sum_l ||W_l||_F^2``.

        The value is the one :meth:`loss_grad` returns, bit for bit.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)
        y : array-like of shape (N, n_L) or (N,)
            One-hot rows for log_loss, 0/1 for binary_log_loss, targets for
            squared_error and poisson (1-D when n_L == 1).
        sample_weight : array-like of shape (N,), optional
            Non-negative weights w_i with a positive sum W (all ones: W = N).

        Returns
        -------
        loss : float
        """
        theta = self._theta(theta)
        return self._problem(X, y, sample_weight).loss(theta)

    @blas_section
    def loss_grad(self, theta, X, y, sample_weight=None, *, out=None):
        """Objective and its gradient in one forward and one backward pass.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)
        y : array-like of shape (N, n_L) or (N,)
            Targets, as for :meth:`loss`.
        sample_weight : array-like of shape (N,), optional
        out : ndarray of shape (n_params,), optional
            C-contiguous array of the network's dtype to write the gradient
            into (saves an allocation per call in optimizer loops).

        Returns
        -------
        loss : float
        grad : ndarray of shape (n_params,)
            ``out`` when given.

        Examples
        --------
        >>> import numpy as np, cbackprop as cb
        >>> net = cb.Network([2, 4, 1], activation="tanh", alpha=1e-3)
        >>> theta = net.init_params(random_state=0)
        >>> X, y = np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1.0, -1.0])
        >>> loss, grad = net.loss_grad(theta, X, y)
        >>> grad.shape == (net.n_params,) and loss == net.loss(theta, X, y)
        True
        """
        theta = self._theta(theta)
        problem = self._problem(X, y, sample_weight)
        grad = self._check_out(out, (self.n_params,))
        return problem.loss_grad(theta, grad), grad

    @blas_section
    def per_sample_grads(self, theta, X, y, sample_weight=None):
        """Gradients of the raw per-sample losses l_i.

        Row i is unscaled by ``w_i / W`` and has no regularizer;
        ``sample_weight`` is validated but does not enter.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)
        y : array-like of shape (N, n_L) or (N,)
        sample_weight : array-like of shape (N,), optional

        Returns
        -------
        G : ndarray of shape (N, n_params)
        """
        theta, p = self._theta(theta), self._problem(X, y, sample_weight)
        out = np.empty((p.n_rows, self.n_params), self.dtype)
        _network.per_sample_grads(self._plan, theta, p.X, p.Y, out,
                                  self._workspace(p.n_rows))
        return out

    @blas_section
    def jacobian(self, theta, X):
        """Jacobian of the raw outputs z_L with respect to theta.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)

        Returns
        -------
        J : ndarray of shape (N, n_L, n_params)
        """
        theta, p = self._theta(theta), self._problem(X)
        N, C = p.n_rows, self.n_outputs
        out = np.empty((N * C, self.n_params), self.dtype)
        _network.jacobian(self._plan, theta, p.X, out, self._workspace(N, C))
        return out.reshape(N, C, self.n_params)

    # -------------------------------------------------------- products
    def _product(self, kind, theta, X, y, V, sample_weight):
        theta = self._theta(theta)
        problem = self._problem(X, y, sample_weight)
        Vk, vec = check_block(self, V)
        out = problem.product(kind, theta, Vk, np.empty_like(Vk))
        return out[0] if vec else np.ascontiguousarray(out.T)

    @blas_section
    def hvp(self, theta, X, y, V, sample_weight=None):
        """Exact Hessian-vector products by Pearlmutter's R-operator.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)
        y : array-like of shape (N, n_L) or (N,)
        V : array-like of shape (n_params,) or (n_params, k)
            The k vectors travel through the network together, as
            (k * N)-row GEMM blocks.
        sample_weight : array-like of shape (N,), optional

        Returns
        -------
        HV : ndarray, same shape as V
            Includes ``alpha / W`` on the weight entries.

        Examples
        --------
        >>> import numpy as np, cbackprop as cb
        >>> net = cb.Network([2, 3, 1], activation="tanh")
        >>> theta = net.init_params(random_state=0)
        >>> X, y = np.eye(2), np.array([0.5, -0.5])
        >>> H = net.hessian(theta, X, y)
        >>> v = np.arange(net.n_params, dtype=float)
        >>> bool(np.allclose(net.hvp(theta, X, y, v), H @ v))
        True
        """
        return self._product("hvp", theta, X, y, V, sample_weight)

    @blas_section
    def ggn_vp(self, theta, X, y, V, sample_weight=None):
        """Generalized Gauss-Newton products ``J^T H_loss J V`` (+ alpha / W).

        Parameters and returns as :meth:`hvp`.
        """
        return self._product("ggn_vp", theta, X, y, V, sample_weight)

    @blas_section
    def efisher_vp(self, theta, X, y, V, sample_weight=None):
        """Empirical Fisher products ``sum_i c_i g_i (g_i . V)`` (+ alpha / W).

        ``c_i = w_i / W`` and ``g_i`` the per-sample gradients of
        :meth:`per_sample_grads`. Parameters and returns as :meth:`hvp`.
        """
        return self._product("efisher_vp", theta, X, y, V, sample_weight)

    # -------------------------------------------------------- matrices
    def _assemble(self, quantity, theta, X, y, sample_weight, **kw):
        theta = self._theta(theta)
        return quantity(self._problem(X, y, sample_weight), theta, **kw)

    @blas_section
    def hessian(self, theta, X, y, sample_weight=None, *, max_bytes=None):
        """Dense exact Hessian by Hessian backpropagation.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)
        y : array-like of shape (N, n_L) or (N,)
        sample_weight : array-like of shape (N,), optional
        max_bytes : int, optional
            Refuse (ValueError) a matrix larger than this (default 2 GiB).

        Returns
        -------
        H : ndarray of shape (n_params, n_params)
            Symmetric, ``alpha / W`` on the weight entries of the diagonal.
        """
        return self._assemble(_assembly.hessian, theta, X, y, sample_weight,
                              max_bytes=max_bytes)

    @blas_section
    def ggn(self, theta, X, y, sample_weight=None, *, max_bytes=None):
        """Dense generalized Gauss-Newton matrix ``sum_i c_i J_i^T H_i J_i``.

        Parameters and returns as :meth:`hessian` (positive semi-definite).
        """
        return self._assemble(_assembly.ggn, theta, X, y, sample_weight,
                              max_bytes=max_bytes)

    @blas_section
    def efisher(self, theta, X, y, sample_weight=None, *, max_bytes=None):
        """Dense empirical Fisher ``sum_i c_i g_i g_i^T`` (+ alpha / W).

        Parameters and returns as :meth:`hessian`.
        """
        return self._assemble(_assembly.efisher, theta, X, y, sample_weight,
                              max_bytes=max_bytes)

    @blas_section
    def diag_hessian(self, theta, X, y, sample_weight=None):
        """Exact Hessian diagonal.

        Parameters
        ----------
        theta : array-like of shape (n_params,)
        X : {array-like, sparse matrix} of shape (N, n_0)
        y : array-like of shape (N, n_L) or (N,)
        sample_weight : array-like of shape (N,), optional

        Returns
        -------
        d : ndarray of shape (n_params,)
            Includes ``alpha / W`` on the weight entries.
        """
        return self._assemble(_assembly.diag_hessian, theta, X, y, sample_weight)

    @blas_section
    def diag_ggn(self, theta, X, y, sample_weight=None):
        """Exact GGN diagonal (squared inputs times squared loss factors).

        Parameters and returns as :meth:`diag_hessian`.
        """
        return self._assemble(_assembly.diag_ggn, theta, X, y, sample_weight)

    @blas_section
    def diag_efisher(self, theta, X, y, sample_weight=None):
        """Empirical Fisher diagonal ``sum_i c_i g_i^2`` (+ alpha / W).

        Parameters and returns as :meth:`diag_hessian`.
        """
        return self._assemble(_assembly.diag_efisher, theta, X, y, sample_weight)

    @blas_section
    def diag_ggn_mc(self, theta, X, y, sample_weight=None, mc_samples=1,
                    random_state=None):
        """Monte-Carlo GGN diagonal: the loss factor times Gaussian vectors.

        ``E[(S e)(S e)^T] = S S^T = H`` for ``e ~ N(0, I)``, so the estimate
        is unbiased for every loss.

        Parameters
        ----------
        theta, X, y, sample_weight : as :meth:`diag_hessian`
        mc_samples : int >= 1
            Gaussian vectors per sample (the variance falls as 1 / mc_samples).
        random_state : None, int or RandomState
            Reproducible for a given seed.

        Returns
        -------
        d : ndarray of shape (n_params,)
        """
        if not isinstance(mc_samples, numbers.Integral) or mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}")
        return self._assemble(_assembly.diag_ggn_mc, theta, X, y, sample_weight,
                              mc_samples=int(mc_samples),
                              rs=check_random_state(random_state))

    @blas_section
    def block_hessian(self, theta, X, y, sample_weight=None):
        """Exact per-layer Hessian blocks.

        Parameters
        ----------
        theta, X, y, sample_weight : as :meth:`diag_hessian`

        Returns
        -------
        blocks : list of ndarray
            One ``(P_l, P_l)`` block per layer, ``P_l = (n_{l-1} + 1) n_l``,
            indexed as theta's ``W_l`` (row-major) then ``b_l``; includes
            ``alpha / W`` on the weight entries.
        """
        return self._assemble(_assembly.block_hessian, theta, X, y, sample_weight)

    @blas_section
    def block_ggn(self, theta, X, y, sample_weight=None):
        """Exact per-layer GGN blocks (list of (P_l, P_l), as :meth:`block_hessian`)."""
        return self._assemble(_assembly.block_ggn, theta, X, y, sample_weight)

    @blas_section
    def kfac(self, theta, X, y, sample_weight=None):
        """Kronecker factors of the GGN's layer blocks.

        Parameters
        ----------
        theta, X, y, sample_weight : as :meth:`diag_hessian`

        Returns
        -------
        factors : list of (A_l, G_l) tuples, one per layer
            ``A_l = sum_i c_i a~_i a~_i^T`` of shape ``(n_{l-1} + 1,) * 2`` (the
            layer input with a 1 appended last) and ``G_l = sum_i c_i B_i^T H_i
            B_i`` of shape ``(n_l, n_l)`` (the loss-Hessian factor carried to
            z_l), ``c_i = w_i / W``. ``kron(A_l, G_l)`` approximates the
            (W_l, b_l) GGN block, exactly for one sample (regularizer excluded).
        """
        return self._assemble(_assembly.kfac, theta, X, y, sample_weight)
