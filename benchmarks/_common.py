"""Workload builders shared by the asv benchmarks and ``benchmarks/report.py``.

Every implementation of a workload is built here once, as a zero-argument
callable, so that asv (``bench_engine.py``) and the side-by-side report time
exactly the same code on exactly the same data and parameters:

* ``cbackprop``  ``net.loss_grad(theta, X, Y)``
* ``numpy``      a plain NumPy forward/backward (``numpy_loss_grad`` below)
* ``sklearn``    scikit-learn's own ``MLPClassifier._backprop`` with the
                 preallocated lists that ``_fit_lbfgs`` passes
* ``gemm``       only the GEMMs one ``loss_grad`` needs, through
                 ``scipy.linalg.blas.?gemm`` (the BLAS ``cython_blas`` calls),
                 on preallocated arrays laid out so that nothing is copied
* ``gemm_numpy`` the same GEMMs through ``np.matmul(..., out=...)``: numpy's
                 wheel ships its own OpenBLAS build, so this tells BLAS
                 differences apart from overheads when numpy beats cbackprop

All implementations share one parameter set (a Glorot init drawn here) so that
their losses and gradients can be cross-checked (``check_agreement``).

Threads: BLAS and OpenMP thread pools are limited with threadpoolctl
(``limit_threads``) to ``CBACKPROP_BENCH_THREADS`` (default 1), equally for
every implementation; numpy and scipy each ship their own OpenBLAS and both are
limited.  Always state the thread count next to a number.
"""
import os
import sys

import numpy as np
import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS before limiting threads)
import scipy.linalg.blas as sblas

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_cbackprop():
    """The installed cbackprop, else the working tree's in-place build, else None.

    asv imports benchmarks with a sys.path that holds neither the repository
    nor PYTHONPATH, so an in-place build (``python setup.py build_ext
    --inplace``) is found only through this fallback.  ``cbackprop.__file__``
    says which one was benchmarked.
    """
    try:
        import cbackprop
        return cbackprop, None
    except ImportError as exc:
        first = exc
    if not os.path.isfile(os.path.join(REPO_ROOT, "cbackprop", "__init__.py")):
        return None, first
    for name in [m for m in sys.modules if m == "cbackprop" or m.startswith("cbackprop.")]:
        del sys.modules[name]
    sys.path.insert(0, REPO_ROOT)
    try:
        import cbackprop
        return cbackprop, None
    except ImportError as exc:
        sys.path.remove(REPO_ROOT)
        return None, exc


# the package may not be built yet: every caller must cope with cb None
cb, CBACKPROP_IMPORT_ERROR = _import_cbackprop()
if cb is not None and not hasattr(cb, "Network"):
    cb, CBACKPROP_IMPORT_ERROR = None, ImportError("cbackprop has no Network yet")

THREADS_ENV = "CBACKPROP_BENCH_THREADS"

# Workload definitions, in one place only (the project-wide benchmark workloads).
LOSS_GRAD_LARGE = dict(
    layer_sizes=(784, 256, 256, 10),
    n_samples=256,
    activation="relu",
    loss="log_loss",
    alpha=0.0,
)
LOSS_GRAD_SMALL = dict(
    layer_sizes=(64, 100, 10),
    n_samples=200,
    activation="relu",
    loss="log_loss",
    alpha=0.0,
)
GEMM_PEAK_SIZE = 2048
SEED = 0


# --------------------------------------------------------------------------
# threads
def bench_threads():
    """Thread count for benchmarks: env ``CBACKPROP_BENCH_THREADS``, default 1."""
    return int(os.environ.get(THREADS_ENV, "1"))


def limit_threads(n=None):
    """Limit every loaded BLAS/OpenMP pool to ``n`` threads (default: env).

    Imports everything whose native libraries must be limited first
    (threadpoolctl only sees loaded libraries).  Returns the threadpoolctl
    object: call ``.restore_original_limits()`` to undo.
    """
    import sklearn.neural_network  # noqa: F401  (loads sklearn's OpenMP)
    from threadpoolctl import threadpool_limits

    if n is None:
        n = bench_threads()
    return threadpool_limits(limits=n)


def repeated(fn, calls):
    """fn called `calls` times in a row: one asv sample of a sub-millisecond
    call. asv's runner re-runs a benchmark's setup before every sample and
    then times a single call (number = 1 whenever there is a setup), so a
    lone call would be timed cold: its caches flushed by setup, its thread
    team asleep (LossGradSmall: 211 us against 168 us back to back). A
    fixed count keeps commits comparable."""
    if calls == 1:
        return fn

    def run():
        for _ in range(calls):
            fn()
    return run


# The thread counts every engine, curvature and estimator benchmark runs at
# (an asv parameter; the machine's default is what users run).
THREAD_COUNTS = [1, 2]


def threaded(cls):
    """Class decorator: add ``threads`` (THREAD_COUNTS) as the last asv
    parameter of an asv benchmark class.  ``setup`` then runs with
    ``CBACKPROP_BENCH_THREADS`` set to it, so every ``limit_threads()`` (and
    torch's thread count) inside follows; the timed methods get the other
    parameters as before."""
    import functools

    names = [n for n in vars(cls) if n.startswith(("time_", "peakmem_", "track_"))]
    base_params = list(getattr(cls, "params", []))
    if base_params and not isinstance(base_params[0], (list, tuple)):
        base_params = [base_params]
    cls.params = base_params + [THREAD_COUNTS]
    cls.param_names = list(getattr(cls, "param_names", [])) + ["threads"]

    def drop_threads(fn):
        @functools.wraps(fn)
        def wrapper(self, *params):
            return fn(self, *params[:-1])
        return wrapper

    for hook in ("setup", "teardown"):
        fn = getattr(cls, hook, None)
        if fn is not None:
            inner = drop_threads(fn)
            if hook == "setup":
                def setup(self, *params, _inner=inner):
                    os.environ[THREADS_ENV] = str(params[-1])
                    return _inner(self, *params)
                setup = functools.wraps(fn)(setup)
                cls.setup = setup
            else:
                cls.teardown = inner
    for name in names:
        setattr(cls, name, drop_threads(getattr(cls, name)))
    return cls


def threadpool_summary():
    """One line per loaded thread pool: api, version, arch, threads, library."""
    from threadpoolctl import threadpool_info

    lines = []
    for d in threadpool_info():
        lines.append(
            "{internal_api} {version} {arch} num_threads={num_threads} ({lib})".format(
                internal_api=d.get("internal_api"),
                version=d.get("version"),
                arch=d.get("architecture", ""),
                num_threads=d.get("num_threads"),
                lib=os.path.basename(d.get("filepath", "")),
            )
        )
    return lines


# --------------------------------------------------------------------------
# data and parameters
def make_data(n_samples, n_features, n_classes, dtype=np.float64, seed=SEED):
    """Random classification batch: C-contiguous X, integer labels, one-hot Y.

    Every class occurs at least once (sklearn's label binarizer needs all
    ``n_classes`` to produce ``n_classes`` columns).
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features)).astype(dtype)
    labels = rng.integers(0, n_classes, n_samples)
    labels[:n_classes] = np.arange(n_classes)
    Y = np.zeros((n_samples, n_classes), dtype=dtype)
    Y[np.arange(n_samples), labels] = 1
    return np.ascontiguousarray(X), labels, Y


def glorot_params(layer_sizes, activation="relu", dtype=np.float64, seed=SEED):
    """scikit-learn's Glorot uniform init: lists of (n_in, n_out) coefs and biases."""
    rng = np.random.RandomState(seed)
    factor = 2.0 if activation == "logistic" else 6.0
    coefs, intercepts = [], []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        bound = np.sqrt(factor / (n_in + n_out))
        coefs.append(rng.uniform(-bound, bound, (n_in, n_out)).astype(dtype))
        intercepts.append(rng.uniform(-bound, bound, n_out).astype(dtype))
    return coefs, intercepts


def pack(coefs, intercepts):
    """Flat theta in the package's order W_1, b_1, W_2, b_2, ... (row-major W)."""
    parts = []
    for W, b in zip(coefs, intercepts):
        parts += [W.ravel(), b.ravel()]
    return np.concatenate(parts)


def loss_grad_flops(layer_sizes, n_samples):
    """Flops of one loss-and-gradient evaluation, counting the GEMMs only.

    forward 2 N sum(n_in n_out) + weight gradients 2 N sum(n_in n_out)
    + input deltas 2 N sum over the layers above the first of n_in n_out.
    """
    sizes = [a * b for a, b in zip(layer_sizes[:-1], layer_sizes[1:])]
    return 2 * n_samples * (2 * sum(sizes) + sum(sizes[1:]))


def gemm_flops(n):
    return 2 * n**3


# --------------------------------------------------------------------------
# the plain NumPy reference
_NP_ACT = {
    # (activation in place on z, derivative from the activation value a)
    "identity": (lambda z: z, lambda a: None),
    "relu": (lambda z: np.maximum(z, 0, out=z), lambda a: a > 0),
    "tanh": (lambda z: np.tanh(z, out=z), lambda a: 1 - a * a),
    "logistic": (
        lambda z: np.divide(1, 1 + np.exp(-z), out=z),
        lambda a: a * (1 - a),
    ),
}


def numpy_loss_grad(coefs, intercepts, X, Y, activation="relu", loss="log_loss", alpha=0.0):
    """Plain NumPy loss and flat gradient (mean loss, as the package's objective).

    Forward ``a @ W + b``, activation, softmax (log_loss) or identity
    (squared_error) output; backward ``A.T @ D``, ``D.sum(0)``, ``D @ W.T``
    times f'.  The gradient is written into one flat vector in theta order.
    """
    act, dact = _NP_ACT[activation]
    n = X.shape[0]
    n_layers = len(coefs)
    dtype = X.dtype
    acts = [X]
    a = X
    for i, (W, b) in enumerate(zip(coefs, intercepts)):
        z = a @ W
        z += b
        a = act(z) if i < n_layers - 1 else z
        acts.append(a)
    z = acts[-1]
    if loss == "log_loss":
        zs = z - z.max(axis=1, keepdims=True)
        logp = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
        value = -np.vdot(Y, logp) / n
        delta = np.exp(logp)
        delta -= Y
    elif loss == "squared_error":
        delta = z - Y
        value = 0.5 * np.vdot(delta, delta) / n
    else:
        raise ValueError(f"numpy reference has no loss {loss!r}")
    delta /= n
    if alpha:
        value += 0.5 * alpha / n * sum(np.vdot(W, W) for W in coefs)

    grad = np.empty(sum(W.size + b.size for W, b in zip(coefs, intercepts)), dtype=dtype)
    offsets = np.cumsum([0] + [s for W, b in zip(coefs, intercepts) for s in (W.size, b.size)])
    for i in range(n_layers - 1, -1, -1):
        W = coefs[i]
        gW = grad[offsets[2 * i]:offsets[2 * i + 1]].reshape(W.shape)
        gb = grad[offsets[2 * i + 1]:offsets[2 * i + 2]]
        np.matmul(acts[i].T, delta, out=gW)
        if alpha:
            gW += (alpha / n) * W
        delta.sum(axis=0, out=gb)
        if i > 0:
            delta = delta @ W.T
            d = dact(acts[i])
            if d is not None:
                delta *= d
    return float(value), grad


# --------------------------------------------------------------------------
# the workload
class LossGradWorkload:
    """One (network, batch, dtype) loss-and-gradient workload and its implementations.

    ``build(impl)`` returns a zero-argument callable for impl in ``IMPLS``;
    ``cbackprop`` raises ImportError when the package is not importable.
    """

    IMPLS = ("cbackprop", "numpy", "sklearn", "gemm", "gemm_numpy")

    def __init__(self, layer_sizes, n_samples, activation="relu", loss="log_loss",
                 alpha=0.0, dtype=np.float64, seed=SEED):
        self.layer_sizes = tuple(layer_sizes)
        self.n_samples = n_samples
        self.activation = activation
        self.loss = loss
        self.alpha = alpha
        self.dtype = np.dtype(dtype)
        self.X, self.labels, self.Y = make_data(
            n_samples, layer_sizes[0], layer_sizes[-1], self.dtype, seed)
        self.coefs, self.intercepts = glorot_params(
            layer_sizes, activation, self.dtype, seed)
        self.theta = pack(self.coefs, self.intercepts)

    @property
    def flops(self):
        return loss_grad_flops(self.layer_sizes, self.n_samples)

    def describe(self):
        return "{} {} N={} {}".format(
            "-".join(map(str, self.layer_sizes)), self.activation, self.n_samples,
            self.dtype.name)

    def build(self, impl):
        return getattr(self, "_build_" + impl)()

    # -- cbackprop --------------------------------------------------------
    def network(self):
        if cb is None:
            raise ImportError(f"cbackprop is not importable: {CBACKPROP_IMPORT_ERROR}")
        return cb.Network(list(self.layer_sizes), activation=self.activation,
                          loss=self.loss, alpha=self.alpha, dtype=self.dtype.type)

    def _build_cbackprop(self):
        net = self.network()
        theta = np.ascontiguousarray(net.pack(self.coefs, self.intercepts),
                                     dtype=self.dtype)
        X, Y = self.X, self.Y

        def run():
            return net.loss_grad(theta, X, Y)
        return run

    # -- numpy ------------------------------------------------------------
    def _build_numpy(self):
        coefs, intercepts, X, Y = self.coefs, self.intercepts, self.X, self.Y
        activation, loss, alpha = self.activation, self.loss, self.alpha

        def run():
            return numpy_loss_grad(coefs, intercepts, X, Y, activation, loss, alpha)
        return run

    # -- scikit-learn -----------------------------------------------------
    def sklearn_estimator(self):
        """An MLPClassifier initialised on the batch, holding our parameters.

        ``partial_fit`` once (sgd) sets every fitted attribute ``_backprop``
        reads (n_layers_, out_activation_, _label_binarizer, ...); coefs_ and
        intercepts_ are then replaced by copies of the shared parameters.
        """
        import warnings

        from sklearn.neural_network import MLPClassifier

        if self.loss != "log_loss":
            raise ValueError("the sklearn implementation here is the classifier")
        clf = MLPClassifier(hidden_layer_sizes=self.layer_sizes[1:-1],
                            activation=self.activation, solver="sgd",
                            alpha=self.alpha, batch_size=self.n_samples,
                            max_iter=1, random_state=SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(self.X, self.labels, classes=np.arange(self.layer_sizes[-1]))
        clf.coefs_ = [W.copy() for W in self.coefs]
        clf.intercepts_ = [b.copy() for b in self.intercepts]
        return clf

    def _build_sklearn(self):
        clf = self.sklearn_estimator()
        X = self.X
        # exactly what MLPClassifier._validate_input hands to the solvers
        y = clf._label_binarizer.transform(self.labels).astype(bool)
        layer_units = list(self.layer_sizes)
        # the preallocated lists of BaseMultilayerPerceptron._fit / _fit_lbfgs
        activations = [X] + [None] * (len(layer_units) - 1)
        deltas = [None] * (len(activations) - 1)
        coef_grads = [np.empty((n_in, n_out), dtype=X.dtype)
                      for n_in, n_out in zip(layer_units[:-1], layer_units[1:])]
        intercept_grads = [np.empty(n_out, dtype=X.dtype) for n_out in layer_units[1:]]

        def run():
            return clf._backprop(X, y, None, activations, deltas, coef_grads,
                                 intercept_grads)
        return run

    # -- GEMMs only -------------------------------------------------------
    def _build_gemm(self):
        """The GEMMs of one loss_grad via scipy.linalg.blas, with no copies.

        Row-major C = A @ B is computed as column-major C^T = B^T A^T: a
        C-contiguous (m, n) array's ``.T`` is the Fortran-contiguous (n, m)
        array the f2py wrappers take as is, and a preallocated Fortran ``c``
        with ``overwrite_c=1`` is written in place.  ``_check_gemm_plan``
        verifies both once.
        """
        dt = self.dtype
        gemm = sblas.dgemm if dt == np.float64 else sblas.sgemm
        coefs = self.coefs
        A, Z, D, GW, DP = self._gemm_operands()
        # (a, b, kwargs) in execution order
        plan = []
        for i, W in enumerate(coefs):                     # Z_i^T = W^T A^T
            plan.append((a_t(W), a_t(A[i]), dict(c=a_t(Z[i]))))
        for i in range(len(coefs) - 1, -1, -1):
            plan.append((a_t(D[i]), a_t(A[i]), dict(trans_b=1, c=a_t(GW[i]))))  # gW^T = D^T A
            if i > 0:
                plan.append((a_t(coefs[i]), a_t(D[i]), dict(trans_a=1, c=a_t(DP[i - 1]))))
        for _, _, kw in plan:
            kw["overwrite_c"] = 1
        _check_gemm_plan(gemm, plan, self)
        warm_blas_buffers()
        one = dt.type(1)

        def run():
            for a, b, kw in plan:
                gemm(one, a, b, **kw)
        return run

    def _gemm_operands(self):
        dt, n, coefs = self.dtype, self.n_samples, self.coefs
        rng = np.random.default_rng(SEED + 1)
        Z = [np.empty((n, W.shape[1]), dtype=dt) for W in coefs]          # forward out
        A = [self.X] + Z[:-1]                                              # layer inputs
        D = [(rng.standard_normal((n, W.shape[1])) * 1e-2).astype(dt) for W in coefs]
        GW = [np.empty_like(W) for W in coefs]
        DP = [np.empty((n, W.shape[0]), dtype=dt) for W in coefs[1:]]      # D @ W^T
        return A, Z, D, GW, DP

    def _build_gemm_numpy(self):
        """The GEMMs of ``_build_gemm`` through np.matmul into preallocated outputs."""
        coefs = self.coefs
        A, Z, D, GW, DP = self._gemm_operands()
        plan = [(A[i], W, Z[i]) for i, W in enumerate(coefs)]
        for i in range(len(coefs) - 1, -1, -1):
            plan.append((A[i].T, D[i], GW[i]))
            if i > 0:
                plan.append((D[i], coefs[i].T, DP[i - 1]))
        matmul = np.matmul
        warm_blas_buffers()

        def run():
            for a, b, c in plan:
                matmul(a, b, out=c)
        return run

    # -- agreement --------------------------------------------------------
    def check_agreement(self, impls=("cbackprop", "numpy", "sklearn")):
        """Max relative differences of losses and gradients against numpy.

        Returns {impl: (loss_rel_diff, grad_rel_diff)} for the impls that
        could be built (cbackprop is skipped when not importable).
        """
        ref_loss, ref_grad = self.build("numpy")()
        scale = np.abs(ref_grad).max()
        out = {}
        for impl in impls:
            if impl == "numpy":
                continue
            try:
                fn = self.build(impl)
            except ImportError:
                continue
            res = fn()
            if impl == "sklearn":
                loss, coef_grads, intercept_grads = res
                grad = pack(coef_grads, intercept_grads)
            else:
                loss, grad = res
            out[impl] = (abs(loss - ref_loss) / abs(ref_loss),
                         float(np.abs(np.asarray(grad) - ref_grad).max() / scale))
        return out


def a_t(arr):
    """Transpose view; asserts it is Fortran-contiguous (what f2py takes as is)."""
    t = arr.T
    assert t.flags.f_contiguous, "expected a C-contiguous array"
    return t


def _check_gemm_plan(gemm, plan, wl):
    """Every output is written in place, and the products are the right ones."""
    for a, b, kw in plan:
        assert a.flags.f_contiguous and b.flags.f_contiguous
        assert a.dtype == b.dtype == kw["c"].dtype == wl.dtype
        c = kw["c"]
        out = gemm(wl.dtype.type(1), a, b, **kw)
        assert np.shares_memory(out, c) and out.ctypes.data == c.ctypes.data, \
            "gemm copied its output"
        opa = a.T if kw.get("trans_a") else a
        opb = b.T if kw.get("trans_b") else b
        ref = opa.astype(np.float64) @ opb.astype(np.float64)
        tol = 1e-10 if wl.dtype == np.float64 else 1e-3
        assert np.allclose(c, ref, rtol=tol, atol=tol * np.abs(ref).max()), "wrong product"


_BUFFERS_WARM = False


def warm_blas_buffers():
    """Write SciPy's and NumPy's OpenBLAS scratch buffers through once per
    process: the caller's (a one-thread GEMM whose M exceeds every kernel's
    P block, so its B is packed whole) and the BLAS workers' (the same at
    every core). A buffer's unwritten pages make small GEMMs up to 3x slower
    on some hosts (DESIGN.md, "OpenBLAS's scratch buffers"); cbackprop's
    kernels write theirs through, and the GEMMs-alone references are bounds
    only on warm buffers too."""
    global _BUFFERS_WARM
    if _BUFFERS_WARM:
        return
    from threadpoolctl import threadpool_limits
    cores = os.cpu_count() or 1
    b = np.ones((256, 512), order="F")
    for n in (1, cores):
        a = np.ones((768 * n, 256), order="F")
        with threadpool_limits(n):
            sblas.dgemm(1.0, a, b)    # column-major (768 n, 256) x (256, 512)
            b.T @ a.T                 # NumPy's: the same product, M = 768 n
    _BUFFERS_WARM = True


class GemmPeakWorkload:
    """n x n GEMM through scipy.linalg.blas on Fortran arrays, in place."""

    def __init__(self, n=GEMM_PEAK_SIZE, dtype=np.float64, seed=SEED):
        self.n = n
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.a = np.asfortranarray(rng.standard_normal((n, n)).astype(self.dtype))
        self.b = np.asfortranarray(rng.standard_normal((n, n)).astype(self.dtype))
        self.c = np.zeros((n, n), dtype=self.dtype, order="F")

    @property
    def flops(self):
        return gemm_flops(self.n)

    def build(self):
        gemm = sblas.dgemm if self.dtype == np.float64 else sblas.sgemm
        a, b, c, one = self.a, self.b, self.c, self.dtype.type(1)
        out = gemm(one, a, b, c=c, overwrite_c=1)
        assert np.shares_memory(out, c), "gemm copied its output"

        def run():
            gemm(one, a, b, c=c, overwrite_c=1)
        return run
