"""The ``threads`` section of ``benchmarks/report.py``: every call at one and
two threads and at two threads while another process keeps one core busy,
the three interleaved; each library's calls in a process of its own
(the thread pools of another library, still spinning from its calls, took a
core from cbackprop's team: a digits fit measured 0.95x its one-thread time
at two threads among the other libraries' calls, 0.65 to 0.8x alone).

Calls (cbackprop, scikit-learn and PyTorch side by side): workload a (digits
adam fit), one epoch of workload b, one full-batch loss and gradient on
workload b's 20000 rows against a PyTorch forward/backward of the same
network, net A's products and curvature, predict_proba; the 2048 GEMM rate
of each thread count expresses workload b's epoch and full-batch pass as a
fraction of the machine.

A call's thread counts alternate repeat by repeat, under threadpoolctl
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
    """Median seconds per call of each (call, thread count): a call's thread
    counts alternate repeat by repeat, next to each other in time (the host's
    speed drifts by 10-30% within minutes)."""
    times = {(name, n): [] for name in calls for n in counts}
    for name, (fn, _, _) in calls.items():
        fn()   # warm up: allocate, page in
        for r in range(repeat):
            for n in (counts if r % 2 == 0 else counts[::-1]):
                with _setting(n):
                    times[(name, n)].append(_once(fn, min_time))
    return {k: statistics.median(v) for k, v in times.items()}


@contextlib.contextmanager
def _setting(n):
    """n threads, or for n = BUSY two threads with a core kept busy."""
    if n != BUSY:
        with _threads(n):
            yield
        return
    with _busy_core(), _threads(2):
        yield


BUSY = "busy"


@contextlib.contextmanager
def _busy_core():
    """Another process spinning on one core for the duration."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.3)
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


def _group(name):
    """The library a call of _calls() runs."""
    for lib in ("scikit-learn", "PyTorch"):
        if name.endswith(lib):
            return lib
    return "cbackprop"


def _group_worker(group, repeat, min_time):
    """One process: `group`'s calls quiet at 1 and 2 threads, then with a
    busy core; prints {name: [t1, t2, t_busy]} as JSON."""
    import json
    calls = {k: v for k, v in _calls().items() if _group(k) == group}
    t = _measure(calls, [1, 2, BUSY], repeat, min_time)
    print(json.dumps({k: [t[(k, 1)], t[(k, 2)], t[(k, BUSY)]] for k in calls}))


def _measure_groups(names, repeat, min_time):
    import json
    out = {}
    for group in dict.fromkeys(_group(k) for k in names):
        run = subprocess.run([sys.executable, "-m", "benchmarks._thread_report", "--group",
                              group, str(repeat), repr(min_time)], capture_output=True,
                             text=True, cwd=C.REPO_ROOT, check=True)
        out.update(json.loads(run.stdout.strip().splitlines()[-1]))
    return out


def section_threads(opts):
    """Markdown: the calls at 1 and 2 threads, quiet and with a busy core."""
    calls = _calls()
    repeat, min_time = max(3, opts.repeat // 2), opts.min_time
    times = _measure_groups(list(calls), repeat, min_time)
    rates = _gemm_rates([1, 2], 3)
    rows = []
    for name, (_, flops, dt) in calls.items():
        t1, t2, tb = times[name]
        frac = "" if flops is None else "{:.0%} / {:.0%}".format(
            flops / t1 / rates[(dt, 1)], flops / t2 / rates[(dt, 2)])
        rows.append((name, f"{t1 * 1e3:.3f}", f"{t2 * 1e3:.3f}", f"{t2 / t1:.2f}",
                     f"{tb * 1e3:.3f}", f"{tb / t1:.2f}", frac))
    out = ["## threads: one and two threads, and a busy core", "",
           f"Medians of {repeat} interleaved repeats per cell (each at least "
           f"{min_time} s of calls), each library's calls in a process of their own. "
           "Busy core: another process spins on one core while "
           "the call runs at the default two threads; its ratio is against the quiet "
           "one-thread time.", "",
           "| call | 1 thread ms | 2 threads ms | 2 threads / 1 thread | busy core, 2 threads ms "
           "| busy / quiet 1 thread | fraction of the GEMM rate (1 / 2 threads) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "2048 GEMM rates (GFLOP/s): " + ", ".join(
        f"{dt} {n} thread{'s' if n > 1 else ''} {r / 1e9:.1f}" for (dt, n), r in rates.items())]
    return "\n".join(out)


# ------------------------------------------------------------------ bounds
# What two threads can reach on this machine, whatever the implementation:
# (1) two copies of a one-thread call run at once in two processes (no
# synchronization, no shared data): their slowdown s bounds the speed-up of
# any two-thread version of the call by 2 / s (the cores share memory
# bandwidth and caches); (2) the GEMMs alone of workload b's epoch on two
# cores, as a fraction of the 2-thread 2048 GEMM rate; (3) the full-batch
# pass's GEMMs alone in SciPy's BLAS (the one cbackprop must call) against
# PyTorch's whole forward/backward (MKL / oneDNN GEMMs); (4) the digits
# epoch's GEMMs and update alone in a two-thread lockstep (_lockstep.c),
# beside the fit's own speed-up. The host's speed
# drifts by 10-30% within minutes, so every comparison alternates its sides.
B_SIZES = (784, 256, 256, 10)
GEMMS = "SciPy's GEMMs alone"


def _bound_calls():
    """name -> zero-argument builder of the call (built in the worker)."""
    return {
        "digits adam fit, 50 epochs": lambda: E.workload_a(epochs=50)["cbackprop"],
        "workload b epoch's GEMMs alone, float64":
            lambda: E.gemm_passes(B_SIZES, 20000, 256, np.float64),
        "workload b epoch's GEMMs alone, float32":
            lambda: E.gemm_passes(B_SIZES, 20000, 256, np.float32),
    }


def _worker(name, start, k):
    """One process, one thread: build, wait for `start` (epoch seconds),
    time k calls; prints the median seconds."""
    with _threads(1):
        fn = _bound_calls()[name]()
        fn()
        while time.time() < start:
            time.sleep(0.001)
        times = []
        for _ in range(k):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    print(statistics.median(times))


def _copies(name, n, k=3):
    """Median time per call of n one-thread copies of `name` run at once
    (the slowest copy's)."""
    start = time.time() + 6.0   # every copy built and warm before it
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks._thread_report", name,
                               repr(start), str(k)], stdout=subprocess.PIPE, text=True,
                              cwd=C.REPO_ROOT) for _ in range(n)]
    return max(float(p.communicate()[0].split()[-1]) for p in procs)


def _pass_calls(dtype):
    """Full-batch pass on workload b's rows: cbackprop, PyTorch, SciPy's GEMMs alone."""
    import cbackprop as cb
    X, y = E.classification_b(dtype)
    net = cb.Network(B_SIZES, loss="log_loss", dtype=dtype)
    theta, Y = net.init_params(0).astype(dtype), np.eye(10, dtype=dtype)[y]
    grad = np.empty(net.n_params, dtype)
    return {"cbackprop": lambda: net.loss_grad(theta, X, Y, out=grad),
            "PyTorch": _torch_loss_grad(X, y, dtype),
            GEMMS: E.gemm_passes(B_SIZES, 20000, 20000, dtype)}


def _lockstep():
    """epochs(threads, n) -> seconds of n digits epochs of the lockstep
    reference (``_lockstep.c``: the epoch's GEMMs in SciPy's BLAS and its
    Adam update, split over the threads with two barriers per batch), or
    None where no C compiler with OpenMP builds it."""
    import ctypes
    import os
    import sysconfig
    import tempfile
    from scipy.linalg import cython_blas
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lockstep.c")
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory(prefix="cbackprop-lockstep-") as tmp:
        lib_path = os.path.join(tmp, "lockstep.so")
        try:
            subprocess.run(cc + ["-O2", "-fopenmp", "-shared", "-fPIC", src, "-o", lib_path,
                                 "-lm"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        lib = ctypes.CDLL(lib_path)   # stays mapped once the file is gone
    lib.lockstep_epochs.restype = ctypes.c_double
    lib.lockstep_epochs.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 8
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    capsule = cython_blas.__pyx_capi__["dgemm"]
    dgemm = api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))
    n_rows = E.digits_split()[0].shape[0]

    def epochs(threads, n, blocks=2):
        with _threads(1):   # BLAS single-threaded inside, as in the kernels
            return lib.lockstep_epochs(dgemm, threads, blocks, n, n_rows, 200, 64, 100, 10)
    return epochs


def _lockstep_rows(rounds):
    """Markdown rows: the digits fit's two-thread speed-up against the
    lockstep reference's, alternating in one process."""
    lock = _lockstep()
    C.warm_blas_buffers()
    if lock is None:
        return ["", "(no C compiler with OpenMP: no lockstep reference)"]
    fit = E.workload_a(epochs=50)["cbackprop"]

    def timed(fn, n):
        with _threads(n):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    fit()
    lock(2, 5)
    t = {k: [] for k in ("l1", "l2", "f1", "f2")}
    for r in range(2 * rounds):
        for n in ((1, 2) if r % 2 == 0 else (2, 1)):
            t[f"l{n}"].append(lock(n, 50))
            t[f"f{n}"].append(timed(fit, n))
    m = {k: statistics.median(v) for k, v in t.items()}
    ratios = [a / b for a, b in zip(t["l1"], t["l2"])]
    return ["", f"The digits fit (50 epochs) against the same epochs' GEMMs and Adam update "
            "alone, split over two threads in lockstep like the fit (`_lockstep.c`: each thread "
            "its rows, one barrier after the rows and one after the update), alternating "
            f"thread counts in one process, medians of {2 * rounds} rounds:", "",
            "| call | 1 thread ms | 2 threads ms | speed-up |", "|---|---:|---:|---:|",
            f"| lockstep GEMMs and update | {m['l1'] * 1e3:.1f} | {m['l2'] * 1e3:.1f} "
            f"| {m['l1'] / m['l2']:.2f}x (rounds {min(ratios):.2f} to {max(ratios):.2f}) |",
            f"| cbackprop digits fit | {m['f1'] * 1e3:.1f} | {m['f2'] * 1e3:.1f} "
            f"| {m['f1'] / m['f2']:.2f}x |"]


COLD_CODE = """
import statistics, time, numpy as np, scipy.linalg.blas as sblas
from threadpoolctl import threadpool_limits
from benchmarks import _common as C
def rate(dtype):
    gemm = sblas.sgemm if dtype == np.float32 else sblas.dgemm
    a, b = np.ones((256, 784), dtype, order="F"), np.ones((784, 256), dtype, order="F")
    c = np.empty((256, 256), dtype, order="F")
    gemm(1.0, a, b, c=c, overwrite_c=1)
    t = []
    for _ in range(7):
        t0 = time.perf_counter()
        gemm(1.0, a, b, c=c, overwrite_c=1)
        t.append(time.perf_counter() - t0)
    return 2 * 256 * 784 * 256 / statistics.median(t)
with threadpool_limits(1):
    cold = [rate(np.float32), rate(np.float64)]
    C.warm_blas_buffers()
    print(*cold, rate(np.float32), rate(np.float64))
"""


def _cold_buffer_rows():
    """Markdown rows: a batch-shaped GEMM of workload b in a fresh process on
    OpenBLAS's untouched scratch buffer and after it is written through."""
    out = subprocess.run([sys.executable, "-c", COLD_CODE], capture_output=True, text=True,
                         cwd=C.REPO_ROOT, check=True).stdout.split()
    r = [float(v) / 1e9 for v in out]
    return ["", "SciPy's GEMM of workload b's first layer at batch 256 (256 x 784 x 256, one "
            "thread, a fresh process): on OpenBLAS's scratch buffer as mapped, and after one "
            "larger GEMM wrote it through (what cbackprop's kernels do first; DESIGN.md, "
            "\"OpenBLAS's scratch buffers\"):", "",
            "| dtype | untouched buffer GFLOP/s | written through GFLOP/s |", "|---|---:|---:|",
            f"| float32 | {r[0]:.1f} | {r[2]:.1f} |", f"| float64 | {r[1]:.1f} | {r[3]:.1f} |"]


def section_bounds(opts):
    """Markdown: the two-thread bounds of this machine (see above)."""
    rounds = max(3, opts.repeat // 2)
    out = ["## bounds: what two threads can reach here", "",
           f"Two copies of a one-thread call at once, in two processes (medians of {rounds} "
           "rounds alternating one copy and two): the slowdown of each copy bounds any "
           "two-thread version of the call by 2 / slowdown.", "",
           "| call | one copy ms | two copies at once ms | slowdown | bound on the 2-thread "
           "speed-up |", "|---|---:|---:|---:|---:|"]
    pair = {}
    for name in _bound_calls():
        t1, t2 = [], []
        for _ in range(rounds):
            t1.append(_copies(name, 1))
            t2.append(_copies(name, 2))
        one, two = statistics.median(t1), statistics.median(t2)
        pair[name] = two
        out.append(f"| {name} | {one * 1e3:.1f} | {two * 1e3:.1f} | {two / one:.2f} "
                   f"| {2 * one / two:.2f}x |")
    out += _lockstep_rows(rounds)
    out += _cold_buffer_rows()
    rates = _gemm_rates([2], 3)
    flops_b = C.loss_grad_flops(B_SIZES, 20000)
    out += ["", "Workload b's epoch GEMMs alone on two cores (at two OpenBLAS threads; as two "
            "one-thread processes at once, half the time per epoch: the cores' throughput) "
            "as a fraction of the 2-thread 2048 GEMM rate:", "",
            "| GEMMs of one epoch | dtype | ms | fraction of the 2-thread GEMM rate |",
            "|---|---|---:|---:|"]
    for dtype in (np.float64, np.float32):
        name = np.dtype(dtype).name
        fn = E.gemm_passes(B_SIZES, 20000, 256, dtype)
        with _threads(2):
            fn()
            t = statistics.median(_once(fn, 0.3) for _ in range(rounds))
        half = pair[f"workload b epoch's GEMMs alone, {name}"] / 2
        for label, v in (("two OpenBLAS threads", t), ("two one-thread processes", half)):
            out.append(f"| {label} | {name} | {v * 1e3:.1f} | {flops_b / v / rates[(name, 2)]:.0%} |")
    try:
        import torch  # noqa: F401
    except ImportError:
        return "\n".join(out + ["", "(PyTorch not installed: no pass bound)"])
    out += ["", f"Full-batch pass on 20000 rows at two threads, medians of {rounds} "
            "interleaved repeats: PyTorch's whole forward/backward against SciPy's GEMMs "
            "alone (the GEMMs cbackprop's pass calls):", "",
            "| dtype | cbackprop ms | PyTorch ms | SciPy's GEMMs alone ms "
            "| GEMMs alone / PyTorch |", "|---|---:|---:|---:|---:|"]
    for dtype in (np.float64, np.float32):
        calls = _pass_calls(dtype)
        with _threads(2):
            times = _measure({k: (f, None, None) for k, f in calls.items()}, [2], rounds, 0.3)
        t = {k: times[(k, 2)] for k in calls}
        out.append(f"| {np.dtype(dtype).name} | {t['cbackprop'] * 1e3:.1f} "
                   f"| {t['PyTorch'] * 1e3:.1f} | {t[GEMMS] * 1e3:.1f} "
                   f"| {t[GEMMS] / t['PyTorch']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":   # a worker of _measure_groups or _copies
    if sys.argv[1] == "--group":
        _group_worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        _worker(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
