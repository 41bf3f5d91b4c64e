"""The prepared problem of rows held on the workers of a dask.distributed cluster.

:class:`DaskProblem` stands behind the methods of :class:`cbackprop._problem.Problem`
(``loss``, ``loss_grad``, ``product``, ``raw_output``, ``subsample``,
``on_subsample``, ``rows``)
so that every solver and curvature operator runs on cluster data unchanged.
The design follows the established Dask learners: the optimizer runs on the
client and each evaluation is a sum of per-worker partial results (dask-glm);
the data are computed once into validated parts, each X/y/weight chunk paired
in one part on one worker, and every evaluation sends one task per worker,
not one per chunk (xgboost.dask, lightgbm.dask).

Layout and reduction order
--------------------------
The row chunks of X, in order, are the *parts*; consecutive parts form the
*groups*, one per worker at construction (``np.array_split`` of the part
indices). A group's task runs on the worker that holds its parts, builds (once,
then keeps warm in a per-process cache keyed by a token) one in-memory
:class:`Problem` per part, normalized by the global weight sum W, and returns
the sum over its parts in part order; the client sums the groups in group
order. Part 0 carries the regularizer, every other part ``reg_coef = 0``, so
the total is the in-memory problem's to rounding, whatever the chunking and the
number of workers. The groups are fixed at construction: a group that moves to
another worker (after a worker died) computes the same numbers.

Traffic: theta (and the product's block V) is scattered once per evaluation and
each group returns a parameter-sized result (P x P for the LM accumulation);
the rows never leave the workers.
"""
import collections
import concurrent.futures
import itertools
import threading
import uuid
import weakref

import numpy as np
import scipy.sparse as sp

from cbackprop._problem import Problem
from cbackprop._validation import check_sample_weight, check_X, check_y

EXTRA = ('cbackprop on Dask needs the optional dependencies dask[array] and '
         'distributed: pip install "cbackprop[dask]"')
try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(EXTRA) from exc

CACHE_GROUPS = 32  # groups of problems kept warm per worker process (least recent out)
LOST_RETRIES = 3   # rounds tried when workers die
# A mini-batch of at most this many rows x parameters computes in one task
# (on_subsample): Hessian-free's CG loop (10 products, diag_ggn) on workload
# b (P = 269322) on 2 workers took 476 / 1097-1246 / 4422 ms in one task
# against 814 / 1074-1314 / 2846 ms with a round per product, for 100 / 500 /
# 2000 rows (500: even, within the runs' spread).
ONE_TASK_WORK = 1e8
WORKER_WAIT_SECONDS = 30  # a cluster without workers yet: how long to wait for one
# What a round raises when a worker holding its inputs died.
_LOST = (distributed.client.FutureCancelledError, distributed.scheduler.KilledWorker,
         distributed.comm.CommClosedError, concurrent.futures.CancelledError)


# ==================================================================== input checks
def _as_dask_array(obj, name):
    """A dask array from a dask array, dataframe or series (row lengths known)."""
    if hasattr(obj, "to_dask_array"):           # dask dataframe or series
        return _strings_as_objects(obj).to_dask_array(lengths=True)
    if isinstance(obj, da.Array):
        if sp.issparse(getattr(obj, "_meta", None)):
            raise TypeError(f"{name} is a dask array of sparse chunks; the cluster solvers "
                            f"need dense chunks (map_blocks(lambda b: b.toarray())), or "
                            f"fit cbackprop.MLPClassifier / MLPRegressor on the sparse "
                            f"matrix in memory")
        return obj
    raise TypeError(f"{name} must be a dask array or dataframe, got {type(obj).__name__}")


def _strings_as_objects(frame):
    """A dask series or dataframe with its pandas string and categorical
    columns (class labels) as NumPy objects, what its array would hold: the
    conversion done explicitly, without dask's warning that it does it."""
    def is_text(dtype):   # pandas extension dtypes of Python objects
        return not isinstance(dtype, np.dtype) and getattr(dtype, "kind", "") in "OU"
    if frame.ndim == 1:                                 # a series
        return frame.astype(object) if is_text(frame.dtype) else frame
    text = {c: object for c, t in frame.dtypes.items() if is_text(t)}
    return frame.astype(text) if text else frame


def _row_chunks(arr, name):
    chunks = arr.chunks[0]
    if any(np.isnan(c) for c in chunks):
        raise ValueError(f"{name} has unknown chunk sizes; call {name}.compute_chunk_sizes() "
                         "or pass a dataframe")
    return tuple(int(c) for c in chunks)


def as_row_chunked(X, y=None, sample_weight=None):
    """(X, y, sample_weight) as dask arrays chunked by rows alike.

    X: a 2-D dask array (or dataframe) whose chunks span all columns; y and
    sample_weight: dask collections (or in-memory arrays, then chunked as X)
    with X's row chunks. Raises ValueError naming what does not fit.
    """
    X = _as_dask_array(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got {X.ndim} dimension(s)")
    if len(X.chunks[1]) != 1:
        raise ValueError(f"X is chunked along its columns (column chunks {X.chunks[1]}): "
                         "each chunk must hold whole rows; use X.rechunk({1: -1})")
    rows = _row_chunks(X, "X")
    out = [X]
    for name, arr in (("y", y), ("sample_weight", sample_weight)):
        if arr is None:
            out.append(None)
            continue
        if not hasattr(arr, "__dask_graph__"):
            arr = np.asarray(arr)
            arr = da.from_array(arr, chunks=(rows,) + arr.shape[1:])
        arr = _as_dask_array(arr, name)
        if arr.ndim == 2 and len(arr.chunks[1]) != 1:
            arr = arr.rechunk({1: -1})          # targets are narrow: whole rows
        if _row_chunks(arr, name) != rows:
            raise ValueError(f"{name}'s row chunks {arr.chunks[0]} differ from X's {rows}: "
                             f"rechunk {name} like X ({name}.rechunk({{0: X.chunks[0]}}))")
        out.append(arr)
    return tuple(out)


def get_client(client=None):
    """The given client, or the default one (a clear error when there is none)."""
    if client is not None:
        return client
    try:
        return distributed.default_client()
    except ValueError as exc:
        raise ValueError("no dask.distributed client: start one (distributed.Client(...)) "
                         "or pass client=") from exc


# ==================================================================== worker side
_STATE = collections.OrderedDict()   # (token, group) -> list of Problem
_LOCK = threading.Lock()


def _make_part(net, X, Y, sw):
    """A validated (X, Y, sw) part of the data, in the network's dtype."""
    X = check_X(X, net.layer_sizes[0], net.dtype)
    if Y is not None:
        Y = check_y(Y, X.shape[0], net.n_outputs, net.dtype, net.loss_name)
    return X, Y, check_sample_weight(sw, X.shape[0], net.dtype)


def _weight_sum(*parts):
    """Sum of the parts' weights (rows without weights), in part order."""
    return [float(p[0].shape[0]) if p[2] is None else float(p[2].sum(dtype=np.float64))
            for p in parts]


def _group_problems(token, group, net, W, reg_first, max_rows, parts):
    """The warm in-memory problems of a group's parts (built on first use)."""
    key = (token, group)
    with _LOCK:
        problems = _STATE.get(key)
        if problems is not None and all(p.X is part[0] for p, part in zip(problems, parts)):
            _STATE.move_to_end(key)
            return problems
    problems = [Problem(net, X, Y, sw, max_rows=max_rows, weight_sum=W,
                        reg_coef=reg_first if i == 0 else 0.0, validate=False)
                for i, (X, Y, sw) in enumerate(parts)]
    with _LOCK:
        _STATE[key] = problems
        while len(_STATE) > CACHE_GROUPS:
            _STATE.popitem(last=False)
    return problems


def _release(token):
    """Forget the warm problems of a token (run on every worker)."""
    with _LOCK:
        for key in [k for k in _STATE if k[0] == token]:
            del _STATE[key]


def _add(total, value):
    """total + value for scalars, arrays and (nested) tuples or lists of them
    (a K-FAC factor list sums like a gradient); arrays in place."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_add(t, v) for t, v in zip(total, value))
    if isinstance(value, np.ndarray):
        total += value
        return total
    return total + value


def _run_group(token, group, net, W, reg_first, max_rows, fn, n_parts, reduce,
               *parts_and_args):
    """fn(problem, *args) over the group's parts: summed in part order, or listed."""
    parts, args = parts_and_args[:n_parts], parts_and_args[n_parts:]
    problems = _group_problems(token, group, net, W, reg_first, max_rows, parts)
    results = (fn(p, *args) for p in problems)
    if not reduce:
        return list(results)
    total = next(results)
    for value in results:
        total = _add(total, value)
    return total


def _take(part, idx):
    """Rows idx of a part (a new part)."""
    X, Y, sw = part
    return X[idx], None if Y is None else Y[idx], None if sw is None else sw[idx]


def _run_batch(net, reg_coef, max_rows, fn, n_parts, *parts_and_args):
    """fn(batch, *args) on the in-memory problem of the selected parts' rows,
    concatenated in part order and normalized by their own weight; (False,
    None) when that weight is zero (the caller falls back to the full data)."""
    parts, args = parts_and_args[:n_parts], parts_and_args[n_parts:]
    X = (sp.vstack([p[0] for p in parts], format="csr") if sp.issparse(parts[0][0])
         else np.concatenate([p[0] for p in parts]))
    Y, sw = (None if parts[0][k] is None else np.concatenate([p[k] for p in parts])
             for k in (1, 2))
    own = float(X.shape[0]) if sw is None else float(sw.sum(dtype=np.float64))
    if not own > 0:
        return False, None
    batch = Problem(net, X, Y, sw, max_rows=max_rows, weight_sum=own, reg_coef=reg_coef,
                    validate=False)
    return True, fn(batch, *args)


# ----------------------------------------------------------- per-part quantities
def _loss_grad_part(problem, theta, want_grad):
    g = np.empty(problem.net.n_params, problem.net.dtype) if want_grad else None
    return problem.loss_grad(theta, g), g


def _product_part(problem, kind, theta, V):
    return problem.product(kind, theta, V, np.empty_like(V))


def _raw_output_part(problem, theta, link):
    out = np.empty((problem.n_rows, problem.net.n_outputs), problem.net.dtype)
    return problem.raw_output(theta, out, link)


# ==================================================================== client side
class DaskProblem:
    """The prepared problem of row-chunked dask data, its rows kept on the workers.

    Parameters
    ----------
    net : Network
    X : dask array or dataframe of shape (N, n_0), chunked by rows only
    y : dask array, dataframe or series of shape (N, n_L) or (N,), optional
        With X's row chunks (see :func:`as_row_chunked`).
    sample_weight : dask array of shape (N,), optional
    max_rows : int, optional
        At most this many rows per kernel call on the workers.
    weight_sum, reg_coef : float, optional
        As for :class:`Problem` (default: the global weight sum, computed on
        the cluster, and ``net.alpha / weight_sum``).
    validate : bool
        Ignored: the parts are always validated on the workers.
    client : distributed.Client, optional
        Default: ``distributed.default_client()``.

    Attributes
    ----------
    net, X, Y, sw : the network and the dask arrays (None for sub-problems)
    n_rows, weight_sum, reg_coef, max_rows
    n_groups : int
        Tasks per evaluation (one per worker at construction).
    """

    is_cluster_problem = True

    def __init__(self, net, X, y=None, sample_weight=None, *, max_rows=None,
                 weight_sum=None, reg_coef=None, validate=True, client=None):
        X, y, sample_weight = as_row_chunked(X, y, sample_weight)
        if X.shape[1] != net.layer_sizes[0]:
            raise ValueError(f"X has {X.shape[1]} features, the network expects "
                             f"{net.layer_sizes[0]}")
        client = get_client(client)
        self.X, self.Y, self.sw = X, y, sample_weight
        sizes = _row_chunks(X, "X")
        blocks = [b.ravel() if b is not None else itertools.repeat(None)
                  for b in (X.to_delayed(), None if y is None else y.to_delayed(),
                            None if sample_weight is None else sample_weight.to_delayed())]
        make = dask.delayed(_make_part, pure=True)
        parts = [make(net, xb, yb, sb) for xb, yb, sb in zip(*blocks)]
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if not workers:  # a cluster still starting: wait for one before refusing
            try:
                client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
            except (TimeoutError, OSError):
                pass
            workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise ValueError(f"the dask cluster has no workers (waited "
                             f"{WORKER_WAIT_SECONDS} s for one)")
        groups = np.array_split(np.arange(len(parts)), min(len(workers), len(parts)))
        futures = [client.compute([parts[i] for i in g], workers=[workers[j]],
                                  allow_other_workers=True) for j, g in enumerate(groups)]
        hints = [[workers[j]] for j in range(len(groups))]
        self._setup(net, client, futures, hints, sizes, max_rows, weight_sum, reg_coef)

    def _setup(self, net, client, groups, hints, sizes, max_rows, weight_sum, reg_coef):
        """Bind the part futures (a list per group), the workers each group
        should run on (None: where its data are) and the normalization."""
        self.net, self.client, self.max_rows = net, client, max_rows
        self._groups, self._hints = groups, hints
        self._sizes = list(sizes)
        self.n_rows = int(sum(sizes))
        self.n_groups = len(groups)
        if weight_sum is None:
            sums = client.gather([client.submit(_weight_sum, *g, pure=False) for g in groups])
            weight_sum = float(sum(itertools.chain.from_iterable(sums)))
        self.weight_sum = float(weight_sum)
        self.reg_coef = net.alpha / self.weight_sum if reg_coef is None else float(reg_coef)
        self._token = uuid.uuid4().hex
        self._finalizer = weakref.finalize(self, _forget, client, self._token)

    @classmethod
    def _from_parts(cls, parent, groups, sizes, weight_sum, reg_coef):
        new = cls.__new__(cls)
        new.X = new.Y = new.sw = None
        new._setup(parent.net, parent.client, groups, [None] * len(groups), sizes,
                   parent.max_rows, weight_sum, reg_coef)
        return new

    def close(self):
        """Release the workers' warm problems of this data (also done when
        the problem is garbage collected)."""
        self._finalizer()

    # ------------------------------------------------------------ the reduction
    def _submit(self, fn, args, reduce=True):
        """One task per group; returns the groups' results in group order.

        A round that fails because a worker died (its parts or the scattered
        arguments lost) is run again: Dask recomputes lost parts from their
        source, the groups are fixed, so the numbers are the same. Data that
        cannot be recomputed ends the run with a RuntimeError saying so.
        """
        return self._retry(self._round, fn, args, reduce)

    def _retry(self, run, *args):
        """run(*args), run again when a worker holding its inputs died."""
        for _ in range(LOST_RETRIES):
            try:
                return run(*args)
            except _LOST as exc:
                lost = exc
        raise RuntimeError(
            f"the cluster lost part of the data (rows of this problem or the "
            f"parameters sent to the workers) {LOST_RETRIES} times and could not "
            f"recompute it ({type(lost).__name__}: {lost}); the data must be "
            "recomputable from their source (a dask array built from files or "
            "functions, not scattered)") from lost

    def _round(self, fn, args, reduce):
        client = self.client
        args = self._scatter(args)
        # The regularizer goes to part 0 of group 0 alone.
        tasks = [client.submit(_run_group, self._token, j, self.net, self.weight_sum,
                               self.reg_coef if j == 0 else 0.0, self.max_rows, fn,
                               len(parts), reduce, *parts, *args, workers=hint,
                               allow_other_workers=hint is not None, pure=False)
                 for j, (parts, hint) in enumerate(zip(self._groups, self._hints))]
        return client.gather(tasks)

    def _scatter(self, args):
        """args with its arrays scattered (once per round, never embedded in
        the tasks)."""
        arrays = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
        args = list(args)
        if arrays:
            scattered = self.client.scatter([args[i] for i in arrays], hash=False)
            for i, f in zip(arrays, scattered):
                args[i] = f
        return args

    def sum_over_parts(self, fn, *args):
        """``sum_p fn(part_p, *args)`` over the in-memory problems of the parts,
        each group summed in part order on its worker, the groups in order on
        the client. fn must be picklable (a module-level function)."""
        results = self._submit(fn, args)
        total = results[0]
        for value in results[1:]:
            total = _add(total, value)
        return total

    # ------------------------------------------------------------ Problem's methods
    def loss_grad(self, theta, out=None):
        """Objective and (into out, when given) its gradient; see Problem."""
        f, g = self.sum_over_parts(_loss_grad_part, theta, out is not None)
        if out is not None:
            out[:] = g
        return float(f)

    def loss(self, theta):
        """Objective at theta."""
        return self.loss_grad(theta, None)

    def product(self, kind, theta, V, out):
        """out (k, P) = rows of C V, C the curvature ``kind``; see Problem."""
        out[:] = self.sum_over_parts(_product_part, kind, theta, V)
        return out

    def raw_output(self, theta, out, link):
        """out (N, n_L) = z_L or link(z_L): the outputs come to the client."""
        row = 0
        for group in self._submit(_raw_output_part, (theta, link), reduce=False):
            for part in group:
                out[row:row + part.shape[0]] = part
                row += part.shape[0]
        return out

    # ------------------------------------------------------------ sub-problems
    def _select(self, idx):
        """Groups of part futures holding the rows idx (sorted global indices),
        each selection made on the part's worker, and their row counts."""
        bounds = np.concatenate([[0], np.cumsum(self._sizes)])
        groups, sizes, part = [], [], 0
        for futures in self._groups:
            selected = []
            for f in futures:
                lo, hi = bounds[part], bounds[part + 1]
                local = idx[(idx >= lo) & (idx < hi)] - lo
                part += 1
                if local.size:
                    selected.append(self.client.submit(_take, f, local, pure=False))
                    sizes.append(int(local.size))
            if selected:
                groups.append(selected)
        return groups, sizes

    def subsample(self, idx):
        """The problem of rows idx (sorted), normalized by their own weight,
        keeping this problem's regularizer coefficient (see Problem)."""
        groups, sizes = self._select(np.asarray(idx))
        sums = self.client.gather([self.client.submit(_weight_sum, *g, pure=False)
                                   for g in groups])
        own = float(sum(itertools.chain.from_iterable(sums)))
        if not own > 0:
            return self
        return DaskProblem._from_parts(self, groups, sizes, own, self.reg_coef)

    def on_subsample(self, idx, fn, *args):
        """fn(batch, *args) in one task, batch the in-memory problem of rows
        idx (sorted) with this problem's regularizer coefficient.

        The rows are selected on their workers and gathered on one worker
        (the scheduler picks the one holding most of them; they never pass
        through the client), so a whole computation on a small curvature
        mini-batch (Hessian-free's CG loop) costs one round instead of one per
        product. A batch of more than ``ONE_TASK_WORK`` rows x parameters
        stays spread over its workers instead (``fn(self.subsample(idx),
        *args)`` on the client): there the workers' parallel compute outweighs
        the rounds. fn must be picklable (a module-level function).
        """
        idx = np.asarray(idx)
        if idx.size * self.net.n_params > ONE_TASK_WORK:
            return fn(self.subsample(idx), *args)
        done, value = self._retry(self._batch_round, idx, fn, args)
        return value if done else fn(self, *args)

    def _batch_round(self, idx, fn, args):
        parts = list(itertools.chain.from_iterable(self._select(idx)[0]))
        task = self.client.submit(_run_batch, self.net, self.reg_coef, self.max_rows, fn,
                                  len(parts), *parts, *self._scatter(args), pure=False)
        return task.result()

    def rows(self, c):
        """The problem of the contiguous rows c (a slice), with this problem's
        normalizer and no regularizer: one term of the row sum."""
        groups, sizes = self._select(np.arange(self.n_rows)[c])
        return DaskProblem._from_parts(self, groups, sizes, self.weight_sum, 0.0)


def _forget(client, token):
    """Drop a token's warm problems on the workers (best effort: the client
    may be closing)."""
    try:
        if client.status == "running":
            client.run(_release, token)
    except Exception:   # noqa: BLE001 - never raise from a finalizer
        pass
