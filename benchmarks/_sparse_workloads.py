"""Sparse-input workload, shared by asv (bench_sparse.py) and report.py.

A TF-IDF-like matrix: ``scipy.sparse.random`` with a fixed seed, 0.5% non-zeros,
rows L2-normalised; 10 classes from a random linear model's argmax; hidden
(64,), adam. cbackprop reads the CSR rows directly; scikit-learn's
MLPClassifier gets the same sparse matrix; cbackprop on the densified matrix
is the dense reference (on fewer rows: 20000 x 50000 dense would take 8 GB in
float64).

:func:`measure` runs one configuration in a fresh process (so that its peak
memory is its own): seconds per epoch, the median of k epochs run by
``partial_fit`` after a 1-epoch fit, and the peak of traced allocations
(tracemalloc: NumPy's buffers included) during another 1-epoch fit, beyond
the input that exists before it, and the process's max RSS.
"""
import json
import os
import subprocess
import sys
import warnings

import numpy as np

N_FEATURES = 50000
DENSITY = 0.005
N_CLASSES = 10
HIDDEN = (64,)
SEED = 0


def tfidf(n_rows, n_features=N_FEATURES, density=DENSITY, dtype=np.float64, seed=SEED):
    """(X CSR (n_rows, n_features) with unit-norm rows, y (n_rows,) in 0..9)."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    rng = np.random.default_rng(seed)
    X = sp.random(n_rows, n_features, density=density, format="csr", random_state=rng,
                  dtype=np.float64)
    X = normalize(X).astype(dtype)
    y = np.asarray(X @ rng.standard_normal((n_features, N_CLASSES))).argmax(axis=1)
    return X, y


def estimator(impl, max_iter):
    """The classifier of an implementation ('cbackprop', 'sklearn'), adam."""
    if impl == "sklearn":
        from sklearn.neural_network import MLPClassifier
    else:
        from cbackprop import MLPClassifier
    return MLPClassifier(hidden_layer_sizes=HIDDEN, solver="adam", max_iter=max_iter,
                         random_state=SEED, tol=0.0, n_iter_no_change=1000)


def split_impl(impl, X):
    """('cbackprop' or 'sklearn', the input): 'cbackprop-dense' densifies X."""
    if impl.endswith("-dense"):
        return impl[:-len("-dense")], X.toarray()
    return impl, X


def fit_fn(impl, X, y, epochs):
    """A zero-argument fit of `epochs` epochs of impl ('cbackprop', 'sklearn')."""
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimator(impl, epochs).fit(X, y)
    return run


def input_bytes(X):
    if hasattr(X, "indptr"):
        return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    return X.nbytes


def _child(impl, n_rows, dtype, threads):
    """One configuration, run in this (fresh) process; prints JSON."""
    import resource
    import time
    import tracemalloc

    from ._common import limit_threads

    limit_threads(threads)
    X, y = tfidf(n_rows, dtype=np.dtype(dtype).type)
    impl, X = split_impl(impl, X)
    # One fit of an epoch, then k more epochs by partial_fit, each timed:
    # their median is robust to the bursts of a shared machine.
    k = 3 if n_rows >= 20000 else 9
    est = fit_fn(impl, X, y, 1)()
    times = []
    for _ in range(k):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.partial_fit(X, y)
        times.append(time.perf_counter() - t0)
    # Traced apart: tracemalloc slows every allocation down.
    tracemalloc.start()
    fit_fn(impl, X, y, 1)()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({"epoch_s": float(np.median(times)), "peak_mb": peak / 2**20,
                      "input_mb": input_bytes(X) / 2**20,
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure(impl, n_rows, dtype, threads):
    """Run :func:`_child` in a fresh interpreter; its JSON result as a dict."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"from benchmarks._sparse_workloads import _child; "
            f"_child({impl!r}, {n_rows}, {np.dtype(dtype).name!r}, {threads})")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
