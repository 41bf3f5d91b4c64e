"""Estimator workloads a, b, c, d of workloads.md, shared by asv and report.py.

Each builder returns zero-argument callables for cbackprop and scikit-learn on
the same data and parameters (and, for workload b, the epoch's GEMMs alone).
"""
import warnings

import numpy as np

from ._common import LossGradWorkload


def _quiet(fn):
    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return run


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    return train_test_split(d.data / 16.0, d.target, random_state=0)


def gemm_passes(layer_sizes, n_rows, batch, dtype=np.float64, passes=1):
    """The GEMMs alone of `passes` loss-and-gradient sweeps over n_rows in
    batches (same shapes and BLAS as the kernels, no elementwise work): the
    time that no implementation of these passes can go below."""
    sizes = tuple(layer_sizes)
    n_full, rest = divmod(n_rows, batch)
    full = LossGradWorkload(sizes, batch, "relu", "log_loss", 0.0,
                            dtype=np.dtype(dtype)).build("gemm") if n_full else None
    tail = LossGradWorkload(sizes, rest, "relu", "log_loss", 0.0,
                            dtype=np.dtype(dtype)).build("gemm") if rest else None

    def run():
        for _ in range(passes):
            for _ in range(n_full):
                full()
            if tail is not None:
                tail()
    return run


def workload_a(epochs=200):
    """load_digits, (100,), adam, batch 200, tol=0, n_iter_no_change=inf;
    and the GEMMs alone of the same epochs."""
    import cbackprop as cb
    from sklearn.neural_network import MLPClassifier
    X, Xt, y, yt = digits_split()
    params = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200, max_iter=epochs,
                  tol=0.0, n_iter_no_change=np.inf, random_state=0)
    return {"cbackprop": _quiet(lambda: cb.MLPClassifier(**params).fit(X, y)),
            "sklearn": _quiet(lambda: MLPClassifier(**params).fit(X, y)),
            "gemm_epoch": gemm_passes((64, 100, 10), X.shape[0], 200, passes=epochs)}


def classification_b(dtype=np.float64):
    from sklearn.datasets import make_classification
    X, y = make_classification(n_samples=20000, n_features=784, n_informative=100,
                               n_classes=10, random_state=0)
    return X.astype(dtype), y


def workload_b(dtype=np.float64, epochs=2):
    """make_classification(20000, 784), (256, 256), adam, batch 256: fits of
    `epochs` epochs, and one epoch's GEMMs alone (same shapes and threads)."""
    import cbackprop as cb
    from sklearn.neural_network import MLPClassifier
    X, y = classification_b(dtype)
    params = dict(hidden_layer_sizes=(256, 256), solver="adam", batch_size=256,
                  max_iter=epochs, tol=0.0, n_iter_no_change=np.inf, random_state=0)
    return {"cbackprop": _quiet(lambda: cb.MLPClassifier(**params).fit(X, y)),
            "sklearn": _quiet(lambda: MLPClassifier(**params).fit(X, y)),
            "gemm_epoch": gemm_passes((784, 256, 256, 10), X.shape[0], 256, dtype)}


def torch_epoch_b(dtype=np.float64):
    """A plain PyTorch CPU training loop on workload b's data: the same
    architecture, Adam (lr 1e-3) and batch 256, a random permutation per
    epoch; returns a callable running one epoch. ImportError without torch.
    Threads: torch's own pool, set to the benchmark thread count."""
    import torch

    from ._common import bench_threads
    torch.set_num_threads(bench_threads())
    X, y = classification_b(dtype)
    tdt = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
        torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(tdt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss()

    def epoch():
        perm = torch.randperm(X.shape[0])
        for start in range(0, X.shape[0], 256):
            idx = perm[start:start + 256]
            opt.zero_grad()
            lossf(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    return epoch


def workload_c(dtype=np.float64):
    """One loss-and-gradient evaluation of the lbfgs objective on b's data."""
    import cbackprop as cb
    from sklearn.neural_network import MLPClassifier
    X, y = classification_b(dtype)
    Y = np.eye(10, dtype=dtype)[y]
    clf = _quiet(lambda: MLPClassifier((256, 256), solver="lbfgs", max_iter=1,
                                       random_state=0).fit(X[:500], y[:500]))()
    net = cb.Network((784, 256, 256, 10), "relu", "log_loss", alpha=1e-4, dtype=dtype)
    theta = net.pack(clf.coefs_, clf.intercepts_)
    grad = np.empty(net.n_params, dtype)
    sizes = [784, 256, 256, 10]
    acts = [X] + [np.empty((X.shape[0], n), dtype) for n in sizes[1:]]
    deltas = [np.empty_like(a) for a in acts[1:]]
    cg = [np.empty((a, b), dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    ig = [np.empty(b, dtype) for b in sizes[1:]]
    Yb = clf._label_binarizer.transform(y).astype(dtype)
    return {"cbackprop": lambda: net.loss_grad(theta, X, Y, out=grad),
            "sklearn": lambda: clf._backprop(X, Yb, None, acts, deltas, cg, ig),
            "gemm_epoch": gemm_passes(sizes, X.shape[0], X.shape[0], dtype)}


def workload_d(epochs=50):
    """make_regression(5000, 20), MLPRegressor (64, 64), adam, batch 200."""
    import cbackprop as cb
    from sklearn.datasets import make_regression
    from sklearn.neural_network import MLPRegressor
    X, y = make_regression(n_samples=5000, n_features=20, noise=0.1, random_state=0)
    params = dict(hidden_layer_sizes=(64, 64), solver="adam", batch_size=200, max_iter=epochs,
                  tol=0.0, n_iter_no_change=np.inf, random_state=0)
    return {"cbackprop": _quiet(lambda: cb.MLPRegressor(**params).fit(X, y)),
            "sklearn": _quiet(lambda: MLPRegressor(**params).fit(X, y))}


def predict_workload(dtype=np.float64):
    """predict_proba on b's 20000 rows with a (256, 256) model fitted briefly."""
    import cbackprop as cb
    from sklearn.neural_network import MLPClassifier
    X, y = classification_b(dtype)
    params = dict(hidden_layer_sizes=(256, 256), max_iter=1, random_state=0)
    ours = _quiet(lambda: cb.MLPClassifier(**params).fit(X[:2000], y[:2000]))()
    theirs = _quiet(lambda: MLPClassifier(**params).fit(X[:2000], y[:2000]))()
    return {"cbackprop": lambda: ours.predict_proba(X),
            "sklearn": lambda: theirs.predict_proba(X)}
