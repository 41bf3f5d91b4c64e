"""Curvature matrices of an MLP as SciPy LinearOperators, and spectral tools on them.

The operators represent, for a :class:`cbackprop.Network` at parameters ``theta``
and data ``(X, y, sample_weight)``, the ``P x P`` matrices

* ``HessianOperator``:  ``H = sum_i c_i d^2 l_i / dtheta^2 + alpha / W * D``
* ``GGNOperator``:      ``G = sum_i c_i J_i^T H_i J_i + alpha / W * D``
* ``EFisherOperator``:  ``F = sum_i c_i g_i g_i^T + alpha / W * D``

with ``c_i = w_i / W``, ``W = sum_i w_i`` (``N`` without sample weights) and ``D``
the 0/1 diagonal marking the weight entries of theta (biases are not penalized).
All three are real symmetric.

One base class, :class:`CurvatureOperator`, owns validation, the loop over chunks
of rows (``batch_size``) and the normalization; each subclass supplies a single
batch product (``Network.hvp``, ``Network.ggn_vp``, ``Network.efisher_vp``).
The k columns of a ``(P, k)`` block travel through the network together: one
call of the Network method per chunk, never one per column.

On top of any symmetric LinearOperator:

* :func:`eigenvalues`: extreme eigenpairs by ARPACK (``scipy.sparse.linalg.eigsh``);
* :func:`trace`: Hutchinson's or the Hutch++ estimator (Meyer, Musco, Musco and
  Woodruff 2021);
* :func:`spectral_density` and :func:`stochastic_lanczos_quadrature`: the eigenvalue
  density by stochastic Lanczos quadrature (Ubaru, Chen and Saad 2017; Ghorbani,
  Krishnan and Xiao 2019).
"""
import numbers

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh

from cbackprop._problem import make_problem
from cbackprop._validation import check_theta
from cbackprop._threads import blas_section

__all__ = ["CurvatureOperator", "HessianOperator", "GGNOperator", "EFisherOperator",
           "eigenvalues", "trace", "spectral_density", "stochastic_lanczos_quadrature"]


# ======================================================================================
# small helpers
# ======================================================================================
def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def _check_int(value, name, low, high=None):
    """``value`` as an int in ``[low, high]`` (``high`` None: unbounded), else ValueError."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def _rng(random_state):
    """A ``numpy.random.Generator`` from None, an int, a Generator or a RandomState."""
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    return np.random.default_rng(random_state)


def _rademacher(rng, shape):
    """Float64 array of independent +-1 entries."""
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


def _as_operator(op):
    """``op`` as a LinearOperator: a dense or sparse matrix, or anything with
    ``shape`` and ``matvec``, through ``scipy.sparse.linalg.aslinearoperator``."""
    if isinstance(op, LinearOperator):
        return op
    try:
        return aslinearoperator(op)
    except TypeError:
        raise TypeError(f"op must be a LinearOperator, a dense or sparse matrix or an "
                        f"object with shape and matvec, got {type(op).__name__}") from None


def _square_size(op):
    """P for a square (P, P) operator, else ValueError."""
    shape = getattr(op, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"the operator must be square, got shape {shape}")
    return int(shape[0])


def _apply(op, V, block_size=None):
    """``op @ V`` in float64 for V of shape (P, k), ``block_size`` columns at a time."""
    k = V.shape[1]
    step = k if block_size is None else block_size
    out = np.empty((V.shape[0], k))
    for start in range(0, k, step):
        out[:, start:start + step] = op.matmat(V[:, start:start + step])
    return out


def _float64(op):
    """``op`` itself if its dtype is float64, else a float64 view of it for ARPACK."""
    if op.dtype == np.float64:
        return op
    op = _as_operator(op)

    def matmat(V):
        return np.asarray(op.matmat(V), dtype=np.float64)

    def matvec(v):
        return np.asarray(op.matvec(v), dtype=np.float64)

    return LinearOperator(op.shape, matvec=matvec, rmatvec=matvec, matmat=matmat,
                          rmatmat=matmat, dtype=np.float64)


# ======================================================================================
# operators
# ======================================================================================
_PARAMETERS = """\
    Parameters
    ----------
    net : cbackprop.Network
        Architecture, activation, loss, ``alpha`` and dtype; P is ``net.n_params``.
    theta : array-like of shape (P,)
        Parameters at which the curvature is taken.
    X : array-like of shape (N, n_0)
        Inputs. A row-chunked dask array (or dataframe) keeps the rows on the
        workers of a dask.distributed cluster: each product is then a sum of
        per-worker products (see :mod:`cbackprop.dask`); y and sample_weight
        are then dask collections with X's row chunks.
    y : array-like of shape (N, n_L) or (N,)
        Targets, as for ``net.loss_grad``: one-hot rows for 'log_loss', 0/1
        columns for 'binary_log_loss' (``est.network_targets(y)`` makes them
        from a fitted estimator's labels).
    sample_weight : array-like of shape (N,), optional
        Sample weights ``w_i`` (all ones when None).
    batch_size : int >= 1, optional
        Stream X in chunks of at most this many rows (None: as many as the
        memory budget allows). The result equals the unchunked product to
        rounding.
"""

_ATTRIBUTES = """\
    Attributes
    ----------
    shape : tuple (P, P)
    dtype : numpy.dtype
        ``net.dtype``: products are computed and returned in it.
    net, theta, X, y, sample_weight, batch_size
        The validated inputs (arrays of ``net.dtype``; ``sample_weight`` may be None).
    sample_weight_sum : float
        ``W``, the sum of the sample weights (``N`` when None).
"""

_INIT_DOC = """Validate the inputs of {what}; nothing is computed yet.

    ``theta``, ``X``, ``y`` and ``sample_weight`` are checked against ``net`` and
    converted to ``net.dtype`` once; every product then streams the data.

{parameters}"""


class CurvatureOperator(LinearOperator):
    __doc__ = """Base of the curvature operators: the data, validated once, and the products.

    Each subclass names one curvature product of the prepared problem
    (``'hvp'``, ``'ggn_vp'``, ``'efisher_vp'``); the problem owns the loop over
    chunks of rows, the normalization by the global weight sum and the
    regularizer. Nothing is computed at construction.

{parameters}
{attributes}
    Notes
    -----
    Every chunk ``b`` contributes ``sum_{{i in b}} w_i M_i V / W`` (normalized by the
    global W) and the regularizer ``(alpha / W) D V`` is added once, D the 0/1
    diagonal of the weight entries; chunks whose weights sum to zero are skipped.
    """.format(parameters=_PARAMETERS, attributes=_ATTRIBUTES)

    _kind = None  # the problem's product: 'hvp', 'ggn_vp' or 'efisher_vp'

    def __init__(self, net, theta, X, y, sample_weight=None, batch_size=None):
        if batch_size is not None:
            batch_size = _check_int(batch_size, "batch_size", 1)
        # In memory, or (X a dask collection) the rows kept on a cluster.
        self._problem = make_problem(net, X, y, sample_weight, max_rows=batch_size)
        self.net = net
        self.theta = check_theta(theta, net.n_params, net.dtype)
        self.X, self.y, self.sample_weight = (self._problem.X, self._problem.Y,
                                              self._problem.sw)
        self.sample_weight_sum = self._problem.weight_sum
        self.batch_size = batch_size
        P = int(net.n_params)
        super().__init__(np.dtype(net.dtype), (P, P))

    __init__.__doc__ = _INIT_DOC.format(what="a curvature operator (of a subclass)",
                                        parameters=_PARAMETERS)

    # ------------------------------------------------------------------ validation
    def _check_block(self, V, ndims=(1, 2)):
        """V as a C-contiguous (P, k) array of ``self.dtype``, k >= 1, else ValueError."""
        if not isinstance(V, np.ndarray):
            V = np.asarray(V)
        P = self.shape[1]
        if V.dtype.kind not in "biuf":
            raise ValueError(f"V must be a real numeric array (bool, integer or float), "
                             f"got dtype {V.dtype}")
        if V.ndim not in ndims or V.shape[0] != P:
            allowed = " or ".join({1: f"({P},)", 2: f"({P}, k)"}[d] for d in ndims)
            raise ValueError(f"V must have shape {allowed}, got {V.shape}")
        if V.ndim == 2 and V.shape[1] == 0:
            raise ValueError(f"V has shape {V.shape}: k = 0 vectors, need k >= 1")
        return V.reshape(P, -1).astype(self.dtype, order="C", copy=False)

    def matvec(self, x):
        """``A @ x`` for x of shape (P,) or (P, 1), returned in ``self.dtype``."""
        self._check_block(x)
        return super().matvec(x)

    def matmat(self, X):
        """``A @ X`` for X of shape (P, k), k >= 1, returned in ``self.dtype``."""
        self._check_block(X, ndims=(2,))
        return super().matmat(X)

    rmatvec = matvec  # symmetric
    rmatmat = matmat

    def dot(self, x):
        """``A @ x``: x an operator, a scalar, or an array of shape (P,) or (P, k)."""
        if not (isinstance(x, LinearOperator) or np.isscalar(x)):
            self._check_block(x)
        return super().dot(x)

    # ------------------------------------------------------------------ products
    def _matmat(self, V):
        # (P, k) at the boundary, (k, P) rows inside: k vectors per kernel call.
        Vk = np.ascontiguousarray(self._check_block(V, ndims=(2,)).T)
        out = self._problem.product(self._kind, self.theta, Vk, np.empty_like(Vk))
        return np.ascontiguousarray(out.T)

    def _matvec(self, x):
        return self._matmat(np.reshape(x, (-1, 1))).reshape(-1)

    def _rmatvec(self, x):
        return self._matvec(x)

    def _rmatmat(self, X):
        return self._matmat(X)

    def _adjoint(self):
        return self

    def _transpose(self):
        return self


def _operator_init(class_name, what):
    """A subclass's own ``__init__`` (same signature), documented for ``what``."""
    def __init__(self, net, theta, X, y, sample_weight=None, batch_size=None):
        CurvatureOperator.__init__(self, net, theta, X, y, sample_weight, batch_size)
    __init__.__qualname__ = f"{class_name}.__init__"
    __init__.__doc__ = _INIT_DOC.format(what=what, parameters=_PARAMETERS)
    return __init__


_OPERATOR_DOC = """{summary}

        ``{formula}``

    a symmetric (P, P) matrix, with ``c_i = w_i / W``, ``W = sum_i w_i`` and ``D``
    the 0/1 diagonal of the weight entries of theta. {detail}

    Products with a (P, k) block run the kernel of ``Network.{method}`` once per
    chunk of rows, for all k columns together; the matrix itself is never formed.

{parameters}
{attributes}
    Examples
    --------
    >>> import numpy as np
    >>> from cbackprop import Network
    >>> from cbackprop.curvature import {name}
    >>> net = Network([3, 4, 1], activation="tanh", alpha=0.1)
    >>> theta = net.init_params(0)
    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> op = {name}(net, theta, X, X[:, 0], batch_size=8)
    >>> op.shape
    (21, 21)
    >>> bool(np.allclose(op @ np.eye(21), net.{dense}(theta, X, X[:, 0])))
    True
"""


class HessianOperator(CurvatureOperator):
    __doc__ = _OPERATOR_DOC.format(
        summary="The Hessian of the training objective, as a LinearOperator.",
        formula="H = sum_i c_i d^2 l_i / dtheta^2 + alpha / W * D",
        detail="In general indefinite; products by\n    Pearlmutter's R-operator.",
        method="hvp", name="HessianOperator", dense="hessian",
        parameters=_PARAMETERS, attributes=_ATTRIBUTES)
    __init__ = _operator_init("HessianOperator", "the Hessian operator")

    _kind = "hvp"


class GGNOperator(CurvatureOperator):
    __doc__ = _OPERATOR_DOC.format(
        summary="The generalized Gauss-Newton matrix, as a LinearOperator.",
        formula="G = sum_i c_i J_i^T H_i J_i + alpha / W * D",
        detail=("``J_i`` (n_L, P) is the Jacobian of\n    sample i's raw outputs "
                "and ``H_i`` (n_L, n_L) the Hessian of its loss in them:\n    "
                "G is positive semi-definite."),
        method="ggn_vp", name="GGNOperator", dense="ggn",
        parameters=_PARAMETERS, attributes=_ATTRIBUTES)
    __init__ = _operator_init("GGNOperator", "the generalized Gauss-Newton operator")

    _kind = "ggn_vp"


class EFisherOperator(CurvatureOperator):
    __doc__ = _OPERATOR_DOC.format(
        summary="The empirical Fisher matrix, as a LinearOperator.",
        formula="F = sum_i c_i g_i g_i^T + alpha / W * D",
        detail=("``g_i`` (P,) is the gradient of\n    sample i's loss ``l_i`` "
                "(unscaled, no penalty): F is positive semi-definite."),
        method="efisher_vp", name="EFisherOperator", dense="efisher",
        parameters=_PARAMETERS, attributes=_ATTRIBUTES)
    __init__ = _operator_init("EFisherOperator", "the empirical Fisher operator")

    _kind = "efisher_vp"


# ======================================================================================
# eigenvalues
# ======================================================================================
_ORDER = {  # sort key per `which`: the most wanted eigenvalue first
    "LA": lambda w: -w,
    "SA": lambda w: w,
    "LM": lambda w: -np.abs(w),
    "SM": lambda w: np.abs(w),
    "BE": lambda w: -w,
}


@blas_section
def eigenvalues(op, k=6, which="LA", *, random_state=None, return_eigenvectors=True,
                **eigsh_kwargs):
    """k extreme eigenpairs of a symmetric operator by ARPACK (``eigsh``).

    Parameters
    ----------
    op : LinearOperator, ndarray or sparse matrix of shape (P, P)
        Symmetric (a curvature operator, or anything ``eigsh`` accepts). Operators
        of another dtype than float64 are wrapped in a float64 view.
    k : int, 1 <= k < P
        Number of eigenpairs.
    which : {'LA', 'SA', 'LM', 'SM', 'BE'}
        Largest / smallest algebraic, largest / smallest magnitude, both ends.
    random_state : None, int, numpy.random.Generator or RandomState
        Seeds the start vector ``v0`` (uniform in [-1, 1]), so that results are
        reproducible; ignored when ``v0`` is passed in ``eigsh_kwargs``.
    return_eigenvectors : bool
        Return the eigenvectors too.
    **eigsh_kwargs
        Passed to ``scipy.sparse.linalg.eigsh`` (``tol``, ``maxiter``, ``ncv``, ...).
        ``tol`` (ARPACK's relative residual bound) defaults to ``sqrt(eps)`` of
        float64 for float64 operators: the eigenvalues of a symmetric operator are
        exact to second order in the residual, so they come out to about machine
        precision while ARPACK stops after about half the products that ``tol=0``
        takes (eigenvectors then have residuals near ``tol * |w|``; pass ``tol=0``
        for eigenvectors at machine precision). Lower precisions default to
        ``10 * finfo(op.dtype).eps``, whose rounding noise would otherwise keep
        ARPACK from converging.

    Returns
    -------
    w : ndarray of shape (k,)
        Eigenvalues, most wanted first: descending for 'LA' and 'BE', ascending for
        'SA', by descending magnitude for 'LM' and ascending magnitude for 'SM'.
    V : ndarray of shape (P, k)
        Orthonormal eigenvectors, column j for ``w[j]`` (when ``return_eigenvectors``).

    Notes
    -----
    ARPACK's convergence test is relative to each eigenvalue: wanted eigenvalues
    inside a cluster at 0 (the 'SA' end of a rank-deficient GGN or Fisher, 'SM')
    converge slowly, and in float32 not at all; 'SM' without shift-invert needs
    the smallest magnitudes to be well separated.
    """
    P = _square_size(op)
    if which not in _ORDER:
        raise ValueError(f"unknown which {which!r}; expected one of {sorted(_ORDER)}")
    if not _is_int(k) or not 1 <= k < P:
        raise ValueError(f"k must be an integer with 1 <= k < P = {P}, got {k!r}")
    if "v0" not in eigsh_kwargs:
        eigsh_kwargs["v0"] = _rng(random_state).uniform(-1.0, 1.0, P)
    if "tol" not in eigsh_kwargs:
        low = np.issubdtype(op.dtype, np.floating) and op.dtype != np.float64
        eigsh_kwargs["tol"] = (10 * float(np.finfo(op.dtype).eps) if low
                               else float(np.sqrt(np.finfo(np.float64).eps)))
    w, V = eigsh(_float64(op), k=int(k), which=which, return_eigenvectors=True,
                 **eigsh_kwargs)
    order = np.argsort(_ORDER[which](w), kind="stable")
    if return_eigenvectors:
        return w[order], V[:, order]
    return w[order]


# ======================================================================================
# trace
# ======================================================================================
@blas_section
def trace(op, n_matvecs=30, method="hutch++", random_state=None, block_size=None):
    """Stochastic estimate of the trace of a symmetric operator.

    Parameters
    ----------
    op : LinearOperator, ndarray or sparse matrix of shape (P, P)
        Symmetric; anything ``scipy.sparse.linalg.aslinearoperator`` accepts.
    n_matvecs : int >= 1 (>= 3 for Hutch++)
        Budget of products with ``op`` (columns of the blocks passed to ``matmat``).
        When ``n_matvecs >= P`` the trace is computed exactly from the P unit
        vectors (no estimator does better with that budget), for both methods.
    method : {'hutch++', 'hutchinson'}
        'hutchinson': the mean of ``v^T A v`` over Rademacher probes ``v``.
        'hutch++' (Meyer, Musco, Musco and Woodruff 2021): the budget split in
        thirds; ``Q`` an orthonormal basis of ``A S`` for ``m = n_matvecs // 3``
        Rademacher columns S, the exact trace of ``Q^T A Q`` plus Hutchinson on the
        remaining ``n_matvecs - 2 m`` probes projected onto the complement of ``Q``.
        Unbiased, with a much smaller variance when the spectrum decays.
    random_state : None, int, numpy.random.Generator or RandomState
        Seeds the probes.
    block_size : int >= 1, optional
        At most this many columns per ``matmat`` call (None: one call per block).

    Returns
    -------
    estimate : float
    """
    op = _as_operator(op)
    P = _square_size(op)
    if method not in ("hutch++", "hutchinson"):
        raise ValueError(f"unknown method {method!r}; expected 'hutch++' or 'hutchinson'")
    n_matvecs = _check_int(n_matvecs, "n_matvecs", 3 if method == "hutch++" else 1)
    if block_size is not None:
        block_size = _check_int(block_size, "block_size", 1)
    if n_matvecs >= P:
        return _exact_trace(op, block_size)
    rng = _rng(random_state)
    if method == "hutchinson":
        return _hutchinson(op, n_matvecs, rng, block_size)
    return _hutchpp(op, n_matvecs, rng, block_size)


def _exact_trace(op, block_size):
    """``sum_j e_j^T A e_j`` from the P unit vectors, in blocks of columns."""
    P = op.shape[0]
    step = P if block_size is None else block_size
    total = 0.0
    for start in range(0, P, step):
        stop = min(start + step, P)
        E = np.zeros((P, stop - start))
        E[np.arange(start, stop), np.arange(stop - start)] = 1.0
        total += float(np.trace(_apply(op, E)[start:stop]))
    return total


def _hutchinson(op, n_matvecs, rng, block_size):
    V = _rademacher(rng, (op.shape[0], n_matvecs))
    return float(np.sum(V * _apply(op, V, block_size)) / n_matvecs)


def _hutchpp(op, n_matvecs, rng, block_size):
    P = op.shape[0]
    m = n_matvecs // 3
    S = _rademacher(rng, (P, m))
    G = _rademacher(rng, (P, n_matvecs - 2 * m))
    Q, _ = np.linalg.qr(_apply(op, S, block_size))
    low_rank = np.sum(Q * _apply(op, Q, block_size))
    G -= Q @ (Q.T @ G)
    residual = np.sum(G * _apply(op, G, block_size)) / G.shape[1]
    return float(low_rank + residual)


# ======================================================================================
# spectral density
# ======================================================================================
def _lanczos(op, V0, n_iter, block_size=None):
    """Lanczos with full reorthogonalization, one run per column of V0, in lockstep.

    All runs share each ``matmat`` call (one column per still active run). A run
    stops early when its next residual vanishes (an invariant subspace: its Ritz
    values are then exact eigenvalues).

    Returns
    -------
    list of (alphas, betas): the diagonal (length m_i) and off-diagonal
    (length m_i - 1) of each run's tridiagonal matrix.
    """
    P, n_runs = V0.shape
    m = min(n_iter, P)
    eps = np.finfo(op.dtype).eps if np.issubdtype(op.dtype, np.floating) else 2.2e-16
    tol = 100.0 * max(eps, np.finfo(np.float64).eps)
    basis = np.zeros((n_runs, m, P))
    alphas, betas = np.zeros((n_runs, m)), np.zeros((n_runs, m))
    lengths = np.full(n_runs, m)
    active = np.arange(n_runs)
    q = (V0 / np.linalg.norm(V0, axis=0)).T  # (active runs, P)
    for j in range(m):
        basis[active, j] = q
        w = _apply(op, np.ascontiguousarray(q.T), block_size).T
        alphas[active, j] = np.einsum("ap,ap->a", q, w)
        B = basis[active, :j + 1]
        for _ in range(2):  # classical Gram-Schmidt, twice is enough
            w -= np.einsum("akp,ak->ap", B, np.einsum("akp,ap->ak", B, w))
        if j == m - 1:
            break
        b = np.linalg.norm(w, axis=1)
        scale = np.maximum(np.abs(alphas[active, :j + 1]).max(axis=1),
                           np.abs(betas[active, :j + 1]).max(axis=1))
        done = b <= tol * scale
        lengths[active[done]] = j + 1
        betas[active, j] = np.where(done, 0.0, b)
        keep = ~done
        active, q = active[keep], w[keep] / b[keep, None]
        if active.size == 0:
            break
    return [(alphas[i, :lengths[i]], betas[i, :lengths[i] - 1]) for i in range(n_runs)]


def _ritz(alphas, betas):
    """Ritz values and Gauss quadrature weights (squared first eigenvector entries)."""
    if alphas.size == 1:
        return alphas.copy(), np.ones(1)
    nodes, vectors = eigh_tridiagonal(alphas, betas)
    return nodes, vectors[0] ** 2


@blas_section
def stochastic_lanczos_quadrature(op, n_probes=10, n_iter=30, random_state=None,
                                  block_size=None):
    """Nodes and weights of the stochastic Lanczos quadrature of a symmetric operator.

    For each Rademacher probe ``v`` (normalized), ``n_iter`` Lanczos steps with full
    reorthogonalization give a tridiagonal ``T``; its eigenvalues (Ritz values) are
    the nodes and the squared first components of its eigenvectors the weights of
    a Gauss quadrature of the spectral measure ``sum_j (v . u_j)^2 delta(x - lambda_j)``.
    Averaged over probes this estimates the eigenvalue density ``(1/P) sum_j
    delta(x - lambda_j)``: ``sum_k weights_k f(nodes_k)`` estimates ``tr f(A) / P``.

    Parameters
    ----------
    op : LinearOperator, ndarray or sparse matrix of shape (P, P)
        Symmetric; anything ``scipy.sparse.linalg.aslinearoperator`` accepts.
    n_probes : int >= 1
        Number of random probes (Lanczos runs, done in lockstep: each step is one
        ``matmat`` with one column per probe).
    n_iter : int >= 1
        Lanczos steps per probe (capped at P).
    random_state : None, int, numpy.random.Generator or RandomState
        Seeds the probes.
    block_size : int >= 1, optional
        At most this many columns per ``matmat`` call.

    Returns
    -------
    nodes : ndarray of shape (n_nodes,)
        Ritz values of all probes (``n_nodes <= n_probes * min(n_iter, P)``).
    weights : ndarray of shape (n_nodes,)
        Non-negative, summing to 1 (each probe's weights sum to ``1 / n_probes``).
    """
    op = _as_operator(op)
    P = _square_size(op)
    n_probes = _check_int(n_probes, "n_probes", 1)
    n_iter = _check_int(n_iter, "n_iter", 1)
    if block_size is not None:
        block_size = _check_int(block_size, "block_size", 1)
    V0 = _rademacher(_rng(random_state), (P, n_probes))
    nodes, weights = [], []
    for alphas, betas in _lanczos(op, V0, n_iter, block_size):
        theta, tau = _ritz(alphas, betas)
        nodes.append(theta)
        weights.append(tau / n_probes)
    return np.concatenate(nodes), np.concatenate(weights)


def _default_sigma(nodes):
    """1% of the estimated spectral width (at least 1e-3 of the spectral radius, so
    that a point spectrum ``c I`` gets a width; 0.01 for the zero matrix)."""
    lo, hi = float(nodes.min()), float(nodes.max())
    span = max(hi - lo, 1e-3 * max(abs(lo), abs(hi)))
    return 0.01 * span if span > 0 else 0.01


@blas_section
def spectral_density(op, n_probes=10, n_iter=30, grid=512, sigma=None, random_state=None,
                     block_size=None):
    """Smoothed eigenvalue density by stochastic Lanczos quadrature.

    ``density(x) = sum_k weights_k N(x; nodes_k, sigma^2)``, the Gaussian-broadened
    quadrature of :func:`stochastic_lanczos_quadrature`: an estimate of the
    eigenvalue density ``(1/P) sum_j N(x; lambda_j, sigma^2)`` of ``op``.

    Parameters
    ----------
    op : LinearOperator, ndarray or sparse matrix of shape (P, P)
        Symmetric; anything ``scipy.sparse.linalg.aslinearoperator`` accepts.
    n_probes : int >= 1
        Random probes.
    n_iter : int >= 1
        Lanczos steps per probe (capped at P).
    grid : int >= 2 or array-like of shape (n_grid,)
        Number of equispaced points spanning the estimated spectrum (the smallest
        to the largest Ritz value) plus a margin of ``6 sigma`` on both sides, or
        the points themselves.
    sigma : float > 0, optional
        Kernel width; by default 1% of the estimated spectral width
        (``max(nodes) - min(nodes)``).
    random_state : None, int, numpy.random.Generator or RandomState
        Seeds the probes.
    block_size : int >= 1, optional
        At most this many columns per ``matmat`` call.

    Returns
    -------
    grid : ndarray of shape (n_grid,)
    density : ndarray of shape (n_grid,)
        Non-negative. As a mixture of unit-mass Gaussians it integrates to exactly 1
        over the real line; over the default grid the trapezoid integral is 1 up to
        the Gaussian tails beyond 6 sigma (about 1e-9) and quadrature error. Its
        mean ``integral x density(x) dx`` estimates ``trace(op) / P``.
    """
    if sigma is not None and not (isinstance(sigma, numbers.Real) and sigma > 0
                                  and np.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    if _is_int(grid):
        n_grid = _check_int(grid, "grid", 2)
    else:
        grid = np.asarray(grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
            raise ValueError(f"grid must be an int >= 2 or a finite 1-D array, "
                             f"got shape {grid.shape}")
    nodes, weights = stochastic_lanczos_quadrature(op, n_probes, n_iter, random_state,
                                                   block_size)
    sigma = _default_sigma(nodes) if sigma is None else float(sigma)
    if not isinstance(grid, np.ndarray):
        grid = np.linspace(nodes.min() - 6 * sigma, nodes.max() + 6 * sigma, n_grid)
    return grid, _gaussian_mixture(grid, nodes, weights, sigma)


def _gaussian_mixture(x, centers, weights, sigma):
    """``sum_k weights_k N(x; centers_k, sigma^2)`` at each point of x."""
    d = (x[:, None] - centers[None, :]) / sigma
    return np.exp(-0.5 * d * d) @ weights / (sigma * np.sqrt(2.0 * np.pi))
