"""The ``threads`` section of ``benchmarks/report.py``: every call at one and
two threads in one process, interleaved, then the default thread count while
another process keeps one core busy.

Calls (cbackprop, scikit-learn and PyTorch side by side): workload a (digits
adam fit), one epoch of workload b, one full-batch loss and gradient on
workload b's 20000 rows against a PyTorch forward/backward of the same
network, net A's products and curvature, predict_proba; the 2048 GEMM rate
of each thread count expresses workload b's epoch and full-batch pass as a
fraction of the machine.

Each repeat runs every (call, thread count) pair once, under threadpoolctl
limits over every BLAS and OpenMP pool (and ``torch.set_num_threads``), so
that load on a shared machine hits both thread counts alike.
"""
import contextlib
import statistics
import subprocess
import sys
import time

import numpy as np

from . import _common as C
from . import _estimator_workloads as E


def _torch_loss_grad(X, y, dtype):
    import torch
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
        torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(tdt)
    lossf = torch.nn.CrossEntropyLoss()

    def run():
        model.zero_grad()
        lossf(model(Xt), yt).backward()
    return run


def _calls():
    """name -> (callable, flops or None, GEMM dtype for the fraction)."""
    import cbackprop as cb
    calls = {}
    a = E.workload_a(epochs=50)
    calls["digits adam fit, 50 epochs: cbackprop"] = (a["cbackprop"], None, None)
    calls["digits adam fit, 50 epochs: scikit-learn"] = (a["sklearn"], None, None)
    b = E.workload_b(epochs=1)
    epoch_flops = C.loss_grad_flops((784, 256, 256, 10), 20000)
    calls["workload b, one adam epoch: cbackprop"] = (b["cbackprop"], epoch_flops, "float64")
    calls["workload b, one adam epoch: scikit-learn"] = (b["sklearn"], epoch_flops, "float64")
    try:
        calls["workload b, one adam epoch: PyTorch"] = (E.torch_epoch_b(), epoch_flops, "float64")
    except ImportError:
        pass
    for dtype in (np.float64, np.float32):
        X, y = E.classification_b(dtype)
        net = cb.Network((784, 256, 256, 10), loss="log_loss", dtype=dtype)
        theta = net.init_params(0).astype(dtype)
        Y = np.eye(10, dtype=dtype)[y]
        name = np.dtype(dtype).name
        calls[f"full-batch loss_grad, 20000 rows, {name}: cbackprop"] = (
            lambda net=net, theta=theta, X=X, Y=Y: net.loss_grad(theta, X, Y), epoch_flops, name)
        try:
            calls[f"full-batch loss_grad, 20000 rows, {name}: PyTorch"] = (
                _torch_loss_grad(X, y, dtype), epoch_flops, name)
        except ImportError:
            pass
    from ._curvature_workloads import net_a
    net, theta, XA, YA = net_a()[:4]
    V = np.random.default_rng(0).standard_normal(net.n_params)
    for q in ("hvp", "ggn_vp"):
        calls[f"net A {q}"] = (lambda q=q: getattr(net, q)(theta, XA, YA, V), None, None)
    for q in ("diag_ggn", "diag_hessian", "ggn", "block_ggn"):
        calls[f"net A {q}"] = (lambda q=q: getattr(net, q)(theta, XA, YA), None, None)
    p = E.predict_workload()
    calls["predict_proba, 20000 rows: cbackprop"] = (p["cbackprop"], None, None)
    calls["predict_proba, 20000 rows: scikit-learn"] = (p["sklearn"], None, None)
    return calls


@contextlib.contextmanager
def _threads(n):
    limits = C.limit_threads(n)
    try:
        import torch
        before = torch.get_num_threads()
        torch.set_num_threads(n)
    except ImportError:
        torch = None
    try:
        yield
    finally:
        limits.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(before)


def _once(fn, min_time):
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= min_time:
            return el / n


def _measure(calls, counts, repeat, min_time):
    times = {(name, n): [] for name in calls for n in counts}
    for name, (fn, _, _) in calls.items():  # warm up: allocate, page in
        fn()
    for _ in range(repeat):
        for n in counts:
            with _threads(n):
                for name, (fn, _, _) in calls.items():
                    times[(name, n)].append(_once(fn, min_time))
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def _busy_core():
    """Another process spinning on one core for the duration."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _gemm_rates(counts, repeat):
    rates = {}
    for dtype in ("float64", "float32"):
        pk = C.GemmPeakWorkload(dtype=np.dtype(dtype))
        fn = pk.build()
        for n in counts:
            with _threads(n):
                fn()
                rates[(dtype, n)] = pk.flops / min(_once(fn, 0.2) for _ in range(repeat))
    return rates


def section_threads(opts):
    """Markdown: the calls at 1 and 2 threads, quiet and with a busy core."""
    calls = _calls()
    repeat, min_time = max(3, opts.repeat // 2), opts.min_time
    quiet = _measure(calls, [1, 2], repeat, min_time)
    rates = _gemm_rates([1, 2], 3)
    with _busy_core():
        busy = _measure(calls, [2], repeat, min_time)
    rows = []
    for name, (_, flops, dt) in calls.items():
        t1, t2, tb = quiet[(name, 1)], quiet[(name, 2)], busy[(name, 2)]
        frac = "" if flops is None else "{:.0%} / {:.0%}".format(
            flops / t1 / rates[(dt, 1)], flops / t2 / rates[(dt, 2)])
        rows.append((name, f"{t1 * 1e3:.3f}", f"{t2 * 1e3:.3f}", f"{t2 / t1:.2f}",
                     f"{tb * 1e3:.3f}", f"{tb / t1:.2f}", frac))
    out = ["## threads: one and two threads, and a busy core", "",
           f"Medians of {repeat} interleaved repeats per cell (each at least "
           f"{min_time} s of calls). Busy core: another process spins on one core while "
           "the call runs at the default two threads; its ratio is against the quiet "
           "one-thread time.", "",
           "| call | 1 thread ms | 2 threads ms | 2 threads / 1 thread | busy core, 2 threads ms "
           "| busy / quiet 1 thread | fraction of the GEMM rate (1 / 2 threads) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "2048 GEMM rates (GFLOP/s): " + ", ".join(
        f"{dt} {n} thread{'s' if n > 1 else ''} {r / 1e9:.1f}" for (dt, n), r in rates.items())]
    return "\n".join(out)
