"""asv benchmarks of cbackprop on a dask.distributed LocalCluster.

Workload b's data (make_classification 20000 x 784, n_informative=100,
n_classes=10, random_state=0; hidden (256, 256)): one full-batch L-BFGS
evaluation (loss and gradient) in memory at one thread, and on a LocalCluster
of 1 and 2 worker processes of one thread each; the Levenberg-Marquardt
accumulation (J^T H J and gradient) likewise on a smaller net so that P^2
fits; the evaluation on 10k, 20k and 40k rows with the bytes that travel; and
Hessian-free's CG loop on a curvature mini-batch on 2 workers, run in one task
on one worker (``on_subsample``) or with every product a round over the
workers that hold the batch's rows.

    python benchmarks/bench_dask.py          # prints the figures of one run

Workers' BLAS run at one thread (distributed's default pre-spawn environment);
the in-memory side is limited with threadpoolctl (``CBACKPROP_BENCH_THREADS``).
"""
import contextlib
import os
import sys
import time
import warnings

import numpy as np

if __package__ in (None, ""):          # run as a script: import the package's helpers
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks._common import _import_cbackprop, limit_threads
else:
    from ._common import _import_cbackprop, limit_threads

cbackprop, _ = _import_cbackprop()

HIDDEN = (256, 256)
LM_HIDDEN = (2,)          # P = 1600: G is 20 MB
ROWS = (10000, 20000, 40000)
HF_BATCH, HF_CG = 100, 10     # curvature mini-batch rows, CG products
HF_MODES = ("one task", "rounds")


def workload_b(n_samples=20000):
    """(X, Y one-hot) of workload b, float64."""
    from sklearn.datasets import make_classification
    X, y = make_classification(n_samples=n_samples, n_features=784, n_informative=100,
                               n_classes=10, random_state=0)
    return X, np.eye(10)[y]


def network(hidden):
    net = cbackprop.Network((784, *hidden, 10), "relu", "log_loss", alpha=1e-4)
    return net, net.init_params(np.random.RandomState(0))


@contextlib.contextmanager
def local_cluster(n_workers):
    """A LocalCluster of n_workers processes, one thread each, and its client."""
    from distributed import Client, LocalCluster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               memory_limit=0)
    with cluster, Client(cluster) as client:
        yield client


def chunked(client, X, Y, n_chunks=4):
    """X, Y as dask arrays of n_chunks row chunks, computed once on the workers."""
    import dask.array as da
    rows = -(-X.shape[0] // n_chunks)
    dX = da.from_array(X, chunks=(rows, X.shape[1]))
    dY = da.from_array(Y, chunks=(rows, Y.shape[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the arrays enter the graph, once
        return client.persist(dX), client.persist(dY)


def evaluation(problem, theta):
    g = np.empty(problem.net.n_params, problem.net.dtype)
    return lambda: problem.loss_grad(theta, g)


def accumulation(problem, theta):
    from cbackprop import optimize
    from cbackprop._problem import sum_over_parts
    return lambda: sum_over_parts(problem, optimize._accumulate, theta, None, True)


def hf_direction(problem, theta, mode):
    """Hessian-free's direction on a mini-batch: HF_CG products (cg_tol 0)
    and the diag_ggn preconditioner, in one task or product by product."""
    from cbackprop.optimize import _hf_direction
    g = np.empty(problem.net.n_params, problem.net.dtype)
    problem.loss_grad(theta, g)
    idx = np.sort(np.random.default_rng(0).choice(problem.n_rows, HF_BATCH, replace=False))
    args = (theta, g, 1.0, None, "diag_ggn", HF_CG, 0.0)
    if mode == "one task":
        return lambda: problem.on_subsample(idx, _hf_direction, *args)
    batch = problem.subsample(idx)
    return lambda: _hf_direction(batch, *args)


def timed(fn, repeat):
    """Median wall time of fn (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def worker_compute(client, fn, repeat):
    """(median wall time, median of the longest worker task's compute time) of
    fn on the cluster: their difference is the per-evaluation overhead."""
    from distributed import get_task_stream
    fn()
    walls, computes = [], []
    for _ in range(repeat):
        with get_task_stream(client) as ts:
            t = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t)
        spans = [s["stop"] - s["start"] for task in ts.data if task["key"].startswith(
            "_run_group") for s in task["startstops"] if s["action"] == "compute"]
        computes.append(max(spans))
    return float(np.median(walls)), float(np.median(computes))


class _Traffic:
    """Bytes scattered to and gathered from the workers (patched client methods)."""

    def __init__(self, client):
        from dask.sizeof import sizeof
        self.sent = self.received = 0
        scatter, gather = client.scatter, client.gather

        def counted_scatter(data, *a, **kw):
            self.sent += sizeof(data)
            return scatter(data, *a, **kw)

        def counted_gather(futures, *a, **kw):
            out = gather(futures, *a, **kw)
            self.received += sizeof(out)
            return out
        client.scatter, client.gather = counted_scatter, counted_gather


# ---------------------------------------------------------------- asv
class _ClusterBench:
    """In memory (1 thread) or on a LocalCluster of 1-2 workers."""

    params = [["memory", 1, 2]]
    param_names = ["workers"]
    repeat = (2, 5, 60.0)
    number = 1
    timeout = 600

    hidden, make_fn = HIDDEN, staticmethod(evaluation)

    def setup(self, workers):
        self.fn = self.make_fn(*self._open(workers))
        self.fn()

    def _open(self, workers):
        """(problem, theta) of workload b in memory or on a new cluster."""
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise NotImplementedError("needs the dask extra")   # asv: skipped
        from cbackprop._problem import Problem, make_problem
        self._limits = limit_threads()
        self._stack = contextlib.ExitStack()
        X, Y = workload_b()
        net, theta = network(self.hidden)
        if workers == "memory":
            return Problem(net, X, Y), theta
        client = self._stack.enter_context(local_cluster(workers))
        return make_problem(net, *chunked(client, X, Y)), theta

    def teardown(self, *params):
        self._stack.close()
        self._limits.restore_original_limits()



class DaskEvaluation(_ClusterBench):
    """Workload b, one L-BFGS evaluation: in memory (1 thread) or 1-2 workers."""

    def time_loss_grad(self, workers):
        self.fn()


class DaskLMAccumulation(_ClusterBench):
    """Workload b's data, hidden (3,): one LM accumulation (G and g)."""

    hidden, make_fn = LM_HIDDEN, staticmethod(accumulation)

    def time_accumulate(self, workers):
        self.fn()


class DaskHessianFreeBatch(_ClusterBench):
    """Workload b on 2 workers: Hessian-free's CG loop (10 products) on a
    100-row curvature mini-batch, in one task or a round per product."""

    params = [list(HF_MODES)]
    param_names = ["mode"]

    def setup(self, mode):
        self.fn = hf_direction(*self._open(2), mode)
        self.fn()

    def time_cg_loop(self, mode):
        self.fn()


# ---------------------------------------------------------------- report
def _cluster_rows(client, label, X, Y, hidden, make_fn, repeat):
    from cbackprop._problem import make_problem
    net, theta = network(hidden)
    problem = make_problem(net, *chunked(client, X, Y))
    traffic = _Traffic(client)
    fn = make_fn(problem, theta)
    wall, compute = worker_compute(client, fn, repeat)
    before = traffic.sent + traffic.received
    fn()
    moved = traffic.sent + traffic.received - before
    return label, wall, compute, moved


def report(repeat=5, repeat_lm=2):
    """Print the figures of one run (all configurations side by side)."""
    from cbackprop._problem import Problem
    X, Y = workload_b()
    limits = limit_threads()
    rows = []
    try:
        for hidden, make_fn, what, n in ((HIDDEN, evaluation, "lbfgs evaluation", repeat),
                                         (LM_HIDDEN, accumulation, "LM accumulation",
                                          repeat_lm)):
            net, theta = network(hidden)
            t_mem = timed(make_fn(Problem(net, X, Y), theta), n)
            rows.append((what, "in memory, 1 thread", t_mem, None, None, net.n_params))
            for workers in (1, 2):
                with local_cluster(workers) as client:
                    _, wall, compute, moved = _cluster_rows(client, what, X, Y, hidden,
                                                            make_fn, n)
                rows.append((what, f"{workers} worker(s)", wall, compute, moved, net.n_params))
        with local_cluster(2) as client:
            from cbackprop._problem import make_problem
            net, theta = network(HIDDEN)
            problem = make_problem(net, *chunked(client, X, Y))
            hf = {m: timed(hf_direction(problem, theta, m), repeat) for m in HF_MODES}
            scaling = []
            for n in ROWS:
                Xn, Yn = workload_b(n)
                scaling.append((n,) + _cluster_rows(client, "", Xn, Yn, HIDDEN, evaluation,
                                                    repeat)[1:])
    finally:
        limits.restore_original_limits()
    print("Workload b (make_classification 20000 x 784, 10 classes), float64; one "
          "thread per process.")
    print(f"{'quantity':18s} {'where':22s} {'wall ms':>9s} {'worker ms':>10s} "
          f"{'overhead ms':>12s} {'MB moved':>9s} {'vs memory':>10s}")
    base = {}
    for what, where, wall, compute, moved, P in rows:
        base.setdefault(what, wall)
        extra = ("" if compute is None else
                 f"{compute * 1e3:10.1f} {(wall - compute) * 1e3:12.1f} {moved / 1e6:9.2f}")
        print(f"{what:18s} {where:22s} {wall * 1e3:9.1f} {extra:>33s} "
              f"{base[what] / wall:9.2f}x   (P = {P})")
    print(f"\nHessian-free's CG loop ({HF_CG} products, diag_ggn preconditioner) on a "
          f"{HF_BATCH}-row curvature mini-batch, 2 workers: "
          + ", ".join(f"{m} {t * 1e3:.1f} ms" for m, t in hf.items())
          + f" ({hf['rounds'] / hf['one task']:.1f}x)")
    print("\nScaling with N, lbfgs evaluation on 2 workers:")
    print(f"{'rows':>7s} {'wall ms':>9s} {'worker ms':>10s} {'overhead ms':>12s} {'MB moved':>9s}")
    for n, wall, compute, moved in scaling:
        print(f"{n:7d} {wall * 1e3:9.1f} {compute * 1e3:10.1f} {(wall - compute) * 1e3:12.1f} "
              f"{moved / 1e6:9.2f}")


if __name__ == "__main__":
    report()
