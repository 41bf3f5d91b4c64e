"""The prepared problem: ``(net, X, y, sample_weight)`` validated once.

Every quantity of cbackprop is a sum over the rows of the data, normalized by
the global weight ``W = sum_i w_i`` and completed by the regularizer
``alpha / W`` on the weight entries. :class:`Problem` owns that structure once:

* the validated arrays, the global weight sum and the regularizer;
* the data loop: rows are processed in chunks whose kernel workspaces fit a
  memory budget, each chunk's partial sum normalized by the global W, the
  regularizer added by exactly one kernel call (the first chunk that runs);
* the per-thread workspaces (borrowed from the Network's thread-local pool);
* loss, loss-and-gradient (one value path: the loss is the gradient kernel's
  value), curvature products, and the chunk loop of the dense, diagonal and
  block assembly (:mod:`cbackprop._assembly`);
* sub-sampling: :meth:`subsample` returns the problem of a subset of rows
  that keeps the full data's regularizer ``alpha / W`` (curvature mini-batches).

A problem is a pure function of ``theta``: nothing is stored between calls but
scratch memory. Another data source (row chunks held on the workers of a
cluster) stands behind the same methods by summing per-source partial results
computed by in-memory problems built with ``weight_sum=W`` and
``reg_coef=0`` on all sources but one.
"""
import numpy as np

from cbackprop import _curvature, _network
from cbackprop._validation import (as_float_array, check_sample_weight, check_theta,
                                   check_X, check_y)

# Entries of kernel workspace per chunk (first-order: the Z and A caches;
# products: the R-pass caches too). 2**22 float64 entries = 32 MiB.
CHUNK_ENTRIES = 1 << 22
PREDICT_ENTRIES = 1 << 18
MIN_CHUNK_ROWS = 256
PRODUCT_WORKSPACES = {"hvp": _curvature.HvpWorkspace, "ggn_vp": _curvature.GgnVpWorkspace,
                      "efisher_vp": _curvature.EfisherVpWorkspace}


class Problem:
    """Validated data of one network, and every quantity summed over its rows.

    Parameters
    ----------
    net : Network
    X : array-like of shape (N, n_0)
    y : array-like of shape (N, n_L) or (N,), optional
        Targets (see ``Network.loss``); None for predictions only.
    sample_weight : array-like of shape (N,), optional
    max_rows : int, optional
        At most this many rows per kernel call (besides the memory budget).
    weight_sum : float, optional
        Normalizer ``W`` of the data term; default: the sum of the weights.
    reg_coef : float, optional
        Coefficient of the regularizer on the weight entries: the curvature
        gets ``reg_coef`` on their diagonal and the loss
        ``reg_coef / 2 sum ||W_l||^2``. Default ``net.alpha / weight_sum``.
    validate : bool
        False when X, y and sample_weight are already validated arrays.

    Attributes
    ----------
    net, X, Y, sw : the network and validated arrays (``Y`` (N, n_L) or None)
    n_rows : int
    weight_sum : float
    reg_coef : float
    alpha : float
        What the kernels are given as alpha: ``alpha / weight_sum = reg_coef``.
    """

    __slots__ = ("net", "X", "Y", "sw", "n_rows", "weight_sum", "reg_coef", "max_rows",
                 "alpha", "_chunk_cache")

    def __init__(self, net, X, y=None, sample_weight=None, *, max_rows=None,
                 weight_sum=None, reg_coef=None, validate=True):
        if validate:
            X = check_X(X, net.layer_sizes[0], net.dtype)
            if y is not None:
                y = check_y(y, X.shape[0], net.n_outputs, net.dtype, net.loss_name)
            sample_weight = check_sample_weight(sample_weight, X.shape[0], net.dtype)
        self.net, self.X, self.Y, self.sw = net, X, y, sample_weight
        self.n_rows = X.shape[0]
        own = float(self.n_rows) if sample_weight is None else float(
            sample_weight.sum(dtype=np.float64))
        self.weight_sum = own if weight_sum is None else float(weight_sum)
        self.reg_coef = net.alpha / self.weight_sum if reg_coef is None else float(reg_coef)
        # The kernels add alpha / sw_sum: the alpha that makes it reg_coef.
        self.alpha = net.alpha if reg_coef is None else self.reg_coef * self.weight_sum
        self.max_rows = max_rows
        self._chunk_cache = None

    # ------------------------------------------------------------ the data loop
    def chunks(self, entries_per_row, budget=None, min_rows=MIN_CHUNK_ROWS):
        """Row slices whose workspaces take at most ``budget`` entries.

        Parameters
        ----------
        entries_per_row : int
            Workspace entries one row needs in the kernel to be called.
        budget : int, optional
            Entries per chunk (default ``CHUNK_ENTRIES``).
        min_rows : int
            Rows per chunk at least (GEMMs need some rows to be efficient).

        Returns
        -------
        list of slice
        """
        budget = CHUNK_ENTRIES if budget is None else budget
        key = (entries_per_row, budget, min_rows)
        cache = self._chunk_cache
        if cache is not None and cache[0] == key:
            return cache[1]
        rows = self._chunk_rows(entries_per_row, budget, min_rows)
        N = self.n_rows
        out = [slice(a, min(a + rows, N)) for a in range(0, N, rows)]
        if self.sw is not None and len(out) > 1:
            # Chunks of zero weight contribute nothing (and their normalized
            # terms are undefined): skip them.
            out = [c for c in out if self.sw[c].any()]
        self._chunk_cache = (key, out)
        return out

    def _chunk_rows(self, entries_per_row, budget=CHUNK_ENTRIES, min_rows=MIN_CHUNK_ROWS):
        rows = max(min_rows, budget // max(int(entries_per_row), 1))
        return rows if self.max_rows is None else min(rows, self.max_rows)

    def _part(self, c):
        """(X, Y, sw) of rows c."""
        return (self.X[c], None if self.Y is None else self.Y[c],
                None if self.sw is None else self.sw[c])

    def _sum(self, compute, out, entries_per_row):
        """out = sum over the chunks of compute(X_c, Y_c, sw_c, alpha_c, buffer).

        ``compute`` writes its partial result into the buffer it is given and
        returns a scalar (or None); the regularizer's alpha goes to the first
        chunk only, so it is added exactly once. All rows in one chunk are
        passed whole, without building the chunk list (per-call overhead of
        small calls in optimizer loops).
        """
        if self.n_rows <= self._chunk_rows(entries_per_row):
            return compute(self.X, self.Y, self.sw, self.alpha, out)
        chunks = self.chunks(entries_per_row)
        total, part = 0.0, None
        for i, c in enumerate(chunks):
            X, Y, sw = self._part(c)
            if i == 0:
                value = compute(X, Y, sw, self.alpha, out)
            else:
                if part is None and out is not None:
                    part = np.empty_like(out)
                value = compute(X, Y, sw, 0.0, part)
                if out is not None:
                    out += part
            if value is not None:
                total += value
        return total

    # ------------------------------------------------------------ first order
    def _first_order_rows(self):
        # The Z and A caches (width entries each per row) dominate.
        return 2 * self.net._plan.width

    def loss_grad(self, theta, out=None):
        """Objective and its gradient.

        Parameters
        ----------
        theta : ndarray of shape (P,), validated
        out : ndarray of shape (P,) or None
            Receives the gradient; None computes the value alone (by the same
            kernel path, so the value is the same).

        Returns
        -------
        float
        """
        net = self.net
        plan, W = net._plan, self.weight_sum

        def compute(X, Y, sw, alpha, g):
            return _network.loss_grad(plan, theta, X, Y, sw, W, alpha, g,
                                      net._workspace(X.shape[0]))
        return self._sum(compute, out, self._first_order_rows())

    def loss(self, theta):
        """Objective at theta: the value of :meth:`loss_grad`'s kernel path."""
        return self.loss_grad(theta, None)

    def raw_output(self, theta, out, link):
        """out (N, n_L) = z_L or link(z_L), chunk by chunk."""
        net = self.net
        plan = net._plan
        for c in self.chunks(plan.width, PREDICT_ENTRIES, min_rows=64):
            X = self.X[c]
            _network.raw_output(plan, theta, X, out[c], link, net._workspace(X.shape[0], 0))
        return out

    # ------------------------------------------------------------ products
    def product(self, kind, theta, V, out):
        """out (k, P) = rows of C V for V (k, P), C the curvature ``kind``.

        Parameters
        ----------
        kind : {'hvp', 'ggn_vp', 'efisher_vp'}
        theta : ndarray of shape (P,), validated
        V : ndarray of shape (k, P), C-contiguous, the network's dtype
        out : ndarray of shape (k, P)
        """
        net = self.net
        plan, W, k = net._plan, self.weight_sum, V.shape[0]
        kernel, family = getattr(_curvature, kind), PRODUCT_WORKSPACES[kind]
        # Per row: the first-order state and the k R-pass caches (an upper
        # bound over the three kernels' layouts).
        per_row = (6 + 3 * k) * plan.width

        def compute(X, Y, sw, alpha, o):
            kernel(plan, theta, X, Y, sw, W, alpha, V, o, net._scratch(family, X.shape[0], k))
        self._sum(compute, out, per_row)
        return out

    # ------------------------------------------------------------ sub-problems
    def subsample(self, idx, own_regularizer=False):
        """The problem of rows ``idx`` (an int array, in the order of the
        sums), normalized by their own weight ``W_b``.

        The regularizer coefficient stays this problem's ``alpha / W``
        (curvature mini-batches of the full objective), or with
        ``own_regularizer`` becomes ``alpha / W_b``: the mini-batch objective
        of scikit-learn's stochastic solvers. Rows of zero total weight give
        this problem (its curvature stands for theirs), or with
        ``own_regularizer`` a ValueError (their objective is 0 / 0).
        """
        X, Y = self.X[idx], None if self.Y is None else self.Y[idx]
        sw = None if self.sw is None else self.sw[idx]
        own = float(len(idx)) if sw is None else float(sw.sum(dtype=np.float64))
        if not own > 0:
            if own_regularizer:
                raise ValueError(f"a mini-batch of {len(idx)} rows has zero total sample "
                                 "weight: its objective is undefined")
            return self
        # None: the default alpha / W_b, computed as for the rows' own problem.
        reg_coef = None if own_regularizer else self.reg_coef
        return Problem(self.net, X, Y, sw, max_rows=self.max_rows, weight_sum=own,
                       reg_coef=reg_coef, validate=False)

    def on_subsample(self, idx, fn, *args):
        """``fn(self.subsample(idx), *args)``: a whole computation on a
        curvature mini-batch (rows ``idx``, sorted; this problem's regularizer
        coefficient). A cluster problem runs it in one task on one worker."""
        return fn(self.subsample(idx), *args)

    def rows(self, c):
        """The problem of the contiguous rows ``c`` (a slice), with this
        problem's normalizer and no regularizer: one term of the row sum."""
        X, Y, sw = self._part(c)
        return Problem(self.net, X, Y, sw, max_rows=self.max_rows,
                       weight_sum=self.weight_sum, reg_coef=0.0, validate=False)


# ---------------------------------------------------------------- chunk kernels
def first_order_state(net, theta, X, Y, sw, W):
    """(Z, A, F1, F2, DL, Q) of rows X, stacked ``N * width`` arrays in
    per-thread scratch (valid until the next call on this thread)."""
    return _curvature.first_order_state(
        net._plan, theta, X, Y, sw, W, net._scratch(_curvature.StateWorkspace, X.shape[0], 0))


def loss_factors(net, theta, X, Y, sw, W):
    """(A, S): activations (N * width) and the loss-Hessian factor carried to
    every layer (C * N * width), in per-thread scratch."""
    _, A, S = _curvature.loss_factors(
        net._plan, theta, X, Y, sw, W, net._scratch(_curvature.FactorWorkspace, X.shape[0], 0))
    return A, S


def check_theta_for(net, theta):
    """theta validated for net (1-D, n_params, the network's dtype)."""
    return check_theta(theta, net.n_params, net.dtype)


def check_block(net, V):
    """V (P,) or (P, k) -> ((k, P) C-contiguous of the net's dtype, was_vector)."""
    arr = np.asarray(V)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"V must be a numeric array, got dtype {arr.dtype}")
    P = net.n_params
    if arr.ndim not in (1, 2) or arr.shape[0] != P:
        raise ValueError(f"V must have shape ({P},) or ({P}, k), got {arr.shape}")
    if arr.ndim == 2 and arr.shape[1] == 0:
        raise ValueError("V has k = 0 columns: nothing to multiply")
    if not np.isfinite(arr).all():
        raise ValueError("V contains NaN or infinity")
    vec = arr.ndim == 1
    Vk = np.ascontiguousarray(arr.reshape(1, -1) if vec else arr.T, dtype=net.dtype)
    return Vk, vec


# ---------------------------------------------------------------- the factory
def is_dask_collection(obj):
    """Whether obj is a dask collection (array, dataframe, series), told by
    the dask collection protocol so that dask is never imported here."""
    graph = getattr(type(obj), "__dask_graph__", None)
    return graph is not None and callable(graph)


def is_prepared(obj):
    """Whether obj is already a prepared problem (in memory or on a cluster)."""
    return isinstance(obj, Problem) or getattr(obj, "is_cluster_problem", False)


def make_problem(net, X, y=None, sample_weight=None, **kw):
    """The prepared problem of the data, wherever the data live.

    An in-memory :class:`Problem`, or a
    :class:`cbackprop._dask_problem.DaskProblem` when X is a dask collection
    (the rows stay on the workers of the cluster). A problem passed as X
    (y and sample_weight None) is returned unchanged, so that a caller can
    prepare the data once for several solver calls.

    Parameters
    ----------
    net : Network
    X, y, sample_weight : the data, or X a prepared problem of net
    **kw : keyword arguments of Problem (or DaskProblem)
    """
    if is_prepared(X):
        if y is not None or sample_weight is not None or X.net.layer_sizes != net.layer_sizes:
            raise ValueError("a prepared problem stands for X, y and sample_weight: pass "
                             "y=None and sample_weight=None, and the problem's network")
        return X
    if is_dask_collection(X):
        from cbackprop._dask_problem import DaskProblem
        return DaskProblem(net, X, y, sample_weight, **kw)
    return Problem(net, X, y, sample_weight, **kw)


def sum_over_parts(problem, fn, *args):
    """``fn(part, *args)`` summed over the in-memory parts of a problem.

    The parts of a cluster problem are its workers' in-memory problems
    (normalized by the global weight sum, one carrying the regularizer), so
    any row-summed quantity of an in-memory problem (a diagonal, a dense
    matrix, an LM accumulation) is computed on the cluster by this one call;
    an in-memory problem is its own single part.
    """
    if isinstance(problem, Problem):
        return fn(problem, *args)
    return problem.sum_over_parts(fn, *args)


__all__ = ["Problem", "as_float_array", "make_problem", "sum_over_parts"]
