"""asv benchmarks of the second-order optimizers (cbackprop.optimize).

Threads: every benchmark limits all BLAS/OpenMP pools with threadpoolctl in
``setup`` to ``CBACKPROP_BENCH_THREADS`` threads (default 1), the same for
every implementation; compare implementations only at equal thread counts.

* ``LMIteration``: workload LM (1-10-1 tanh, y = sin x, 200 points evenly in
  [-3, 3], ``init_params(0)``): ``LM_ITERS`` Levenberg-Marquardt iterations,
  cbackprop against the plain NumPy reference below (vectorized backprop
  Jacobian, J^T J, Cholesky, the same trainlm schedule). Both follow the same
  path (``setup`` checks the trial counts and the losses agree), so the time
  per iteration is each figure divided by ``LM_ITERS``.
* ``QuasiHessian``: the GGN accumulation of one LM iteration for P = 5009
  (20-200-4-1 tanh, squared_error), N = 20,000, against the same-shape
  ``?syrk`` calls alone through ``scipy.linalg.blas`` (the rate ceiling of the
  accumulation; see bench_engine.GemmPeak for the GEMM rate).
* ``QuasiHessianOutputs``: the GGN of 64-32-10 log_loss on all 1797
  load_digits samples (C = 10 outputs): syrk on the Jacobian-factor rows
  (``C N P^2`` flops) against the Kronecker-contracted accumulation
  (``N P^2``, the default from 3 outputs on) and the dense ``net.ggn``.
* ``QuasiHessianMemory``: peak memory of the accumulation at N and 10 N
  (P = 901), next to the same process without it (``peakmem_data_only``) and a
  dense-Jacobian ``J^T J`` for contrast: the accumulation adds the same
  memory whatever N.
* ``HessianFreeIteration``: one Hessian-free outer iteration with a fixed
  number of CG steps on net A (64-32-10 tanh, log_loss, 512 load_digits
  samples, P = 2410), next to one ``loss_grad``: the cost of an iteration in
  gradients, against the number of CG steps.

``python benchmarks/bench_optimize.py`` prints the same comparisons side by
side (interleaved repeats, one process).
"""
import numpy as np
import scipy.linalg
import scipy.linalg.blas as sblas

try:
    from ._common import cb, CBACKPROP_IMPORT_ERROR, limit_threads, repeated
except ImportError:  # python benchmarks/bench_optimize.py
    from _common import cb, CBACKPROP_IMPORT_ERROR, limit_threads, repeated

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - older asv
    SkipNotImplemented = NotImplementedError

LM_ITERS = 20
LM_SIN = dict(layer_sizes=(1, 10, 1), n_samples=200, seed=0)
QH_LARGE = dict(layer_sizes=(20, 200, 4, 1), n_samples=20_000)     # P = 5009
QH_MEMORY = dict(layer_sizes=(4, 150, 1), n_samples=(20_000, 200_000))  # P = 901
QH_OUTPUTS = dict(layer_sizes=(64, 32, 10))                         # P = 2410, all digits
HF_NET_A = dict(layer_sizes=(64, 32, 10), n_samples=512)           # P = 2410


def _need_cbackprop():
    if cb is None:
        raise SkipNotImplemented(f"cbackprop is not importable: {CBACKPROP_IMPORT_ERROR}")
    import cbackprop.optimize  # noqa: F401
    return cb


class _Threaded:
    """Limits the thread pools in setup, restores them in teardown."""

    def _limit(self):
        self._limits = limit_threads()

    def teardown(self, *params):
        limits = getattr(self, "_limits", None)
        if limits is not None:
            limits.restore_original_limits()


# --------------------------------------------------------------------------
# workloads
def sin_problem(n_samples=200):
    """Workload LM: y = sin(x) on n points evenly spaced in [-3, 3]."""
    X = np.linspace(-3.0, 3.0, n_samples).reshape(-1, 1)
    return X, np.sin(X[:, 0])


def regression_problem(layer_sizes, n_samples, seed=0, dtype=np.float64):
    """Smooth random regression targets for the accumulation benchmarks."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, layer_sizes[0])).astype(dtype)
    w = rng.standard_normal((layer_sizes[0], layer_sizes[-1]))
    Y = np.tanh(X @ w).astype(dtype)
    return np.ascontiguousarray(X), np.ascontiguousarray(Y)


def digits_net_a():
    """Net A's data: the first 512 load_digits samples, pixels / 16, one-hot."""
    from sklearn.datasets import load_digits

    X, t = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X[:512] / 16.0)
    Y = np.eye(10)[t[:512]]
    return X, Y


# --------------------------------------------------------------------------
# the plain NumPy Levenberg-Marquardt reference
class NumpyLM:
    """Plain NumPy Levenberg-Marquardt for tanh MLPs under squared error.

    The objective is the package's: ``|z - y|^2 / (2 N) + alpha / (2 N)
    sum ||W_l||^2``, theta in the package's order. Each iteration computes the
    Jacobian of the raw outputs by vectorized backprop (all samples and
    outputs at once, one einsum per layer), ``G = J^T J / N`` (+ alpha / N on
    the weights), ``g = J^T r / N``, and solves ``(G + mu I) d = -g`` with
    ``scipy.linalg.cho_factor`` / ``cho_solve``, with MATLAB trainlm's
    schedule (mu *= mu_dec on success, *= mu_inc on failure, floor 1e-20);
    a failed Cholesky or a non-finite trial loss count as failures.
    """

    def __init__(self, layer_sizes, X, Y, alpha=0.0):
        self.sizes = tuple(layer_sizes)
        self.X = np.ascontiguousarray(X, dtype=np.float64)
        self.Y = np.asarray(Y, dtype=np.float64).reshape(self.X.shape[0], -1)
        self.alpha = alpha
        self.N = self.X.shape[0]
        self.slices = []
        start = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            self.slices.append((start, start + n_in * n_out, start + n_in * n_out + n_out))
            start += n_in * n_out + n_out
        self.P = start
        self.wmask = np.zeros(self.P)
        for s0, s1, _ in self.slices:
            self.wmask[s0:s1] = 1.0

    def _layers(self, theta):
        return [(theta[s0:s1].reshape(n_in, n_out), theta[s1:s2])
                for (s0, s1, s2), n_in, n_out
                in zip(self.slices, self.sizes[:-1], self.sizes[1:])]

    def _forward(self, theta):
        acts = [self.X]
        layers = self._layers(theta)
        a = self.X
        for i, (W, b) in enumerate(layers):
            z = a @ W + b
            a = np.tanh(z) if i < len(layers) - 1 else z
            acts.append(a)
        return layers, acts

    def loss(self, theta):
        _, acts = self._forward(theta)
        r = acts[-1] - self.Y
        reg = 0.5 * self.alpha * np.dot(theta * self.wmask, theta)
        return (0.5 * np.vdot(r, r) + reg) / self.N

    def system(self, theta):
        """(loss, g, G) at theta: Jacobian by vectorized backprop, then J^T J."""
        layers, acts = self._forward(theta)
        N, C = self.N, self.sizes[-1]
        r = acts[-1] - self.Y                                   # (N, C)
        D = np.broadcast_to(np.eye(C), (N, C, C)).transpose(1, 0, 2)  # (C, N, C)
        J = np.empty((C, N, self.P))
        for l in range(len(layers) - 1, -1, -1):
            s0, s1, s2 = self.slices[l]
            a = acts[l]
            J[:, :, s0:s1] = np.einsum("np,cnq->cnpq", a, D).reshape(C, N, -1)
            J[:, :, s1:s2] = D
            if l > 0:
                D = (D @ layers[l][0].T) * (1.0 - acts[l] ** 2)
        J = J.reshape(C * N, self.P)
        rv = r.T.reshape(-1)                                     # (c, n) order
        wt = theta * self.wmask
        G = J.T @ J
        G[np.diag_indices(self.P)] += self.alpha * self.wmask
        G /= N
        g = (J.T @ rv + self.alpha * wt) / N
        f = (0.5 * rv @ rv + 0.5 * self.alpha * wt @ theta) / N
        return f, g, G

    def run(self, theta0, mu=1e-3, mu_dec=0.1, mu_inc=10.0, mu_max=1e10, max_iter=100):
        """trainlm loop; returns (theta, loss, nit, nfev, mu).

        nfev counts the loss at theta0 and at every trial point, as
        cbackprop.optimize.levenberg_marquardt does.
        """
        theta = np.array(theta0, dtype=np.float64)
        f, g, G = self.system(theta)
        nfev, nit = 1, 0
        eye = np.eye(self.P)
        while nit < max_iter:
            accepted = False
            while True:
                try:
                    factor = scipy.linalg.cho_factor(G + mu * eye, check_finite=False)
                    d = scipy.linalg.cho_solve(factor, -g, check_finite=False)
                    ok = np.isfinite(d).all()
                except np.linalg.LinAlgError:
                    ok = False
                if ok:
                    trial = theta + d
                    f_try = self.loss(trial)
                    nfev += 1
                    if np.isfinite(f_try) and f_try < f:
                        accepted = True
                        break
                mu *= mu_inc
                if mu > mu_max:
                    break
            if not accepted:
                break
            theta = trial
            mu = max(mu * mu_dec, 1e-20)
            nit += 1
            f, g, G = self.system(theta)  # the loss at theta again: not counted
        return theta, f, nit, nfev, mu


# --------------------------------------------------------------------------
# builders shared by asv and the __main__ report
def build_lm(max_iter=LM_ITERS):
    """{impl: zero-argument callable} for workload LM, after an agreement check."""
    cbm = _need_cbackprop()
    from cbackprop.optimize import levenberg_marquardt

    X, y = sin_problem(LM_SIN["n_samples"])
    net = cbm.Network(LM_SIN["layer_sizes"], "tanh", "squared_error")
    theta0 = net.init_params(LM_SIN["seed"])
    ref = NumpyLM(LM_SIN["layer_sizes"], X, y)

    def run_cbackprop():
        return levenberg_marquardt(net, theta0, X, y, max_iter=max_iter, ftol=0.0, gtol=0.0)

    def run_numpy():
        return ref.run(theta0, max_iter=max_iter)

    res = run_cbackprop()
    _, f_ref, nit_ref, nfev_ref, _ = run_numpy()
    assert res.nit == nit_ref == max_iter, (res.nit, nit_ref)
    assert res.nfev == nfev_ref, ("different paths", res.nfev, nfev_ref)
    assert abs(res.fun - f_ref) <= 1e-6 * f_ref + 1e-12, (res.fun, f_ref)
    return {"cbackprop": run_cbackprop, "numpy": run_numpy}


def build_quasi_hessian(layer_sizes, n_samples, block_size=None):
    """The row (syrk) accumulation kernel on preallocated buffers, and its
    syrk calls alone.

    Returns ({impl: callable}, info) where info has P, the block size and the
    flops of the syrk part (``n_rows * P * (P + 1)``).
    """
    cbm = _need_cbackprop()
    from cbackprop import _lm
    from cbackprop.optimize import _block_rows

    X, Y = regression_problem(layer_sizes, n_samples)
    net = cbm.Network(layer_sizes, "tanh", "squared_error")
    theta = net.init_params(0)
    P, C = net.n_params, net.n_outputs
    block = _block_rows(block_size, net, n_samples, False)
    G = np.empty((P, P))
    g = np.empty(P)
    ws = _lm.LMWorkspace(net._plan, block, False, np.float64)
    N = float(n_samples)

    def run_cbackprop():
        return _lm.quasi_hessian(net._plan, theta, X, Y, None, N, 0.0, G, g, ws)

    # The same syrk calls alone: blocks of (block * C, P) rows into one P x P,
    # column-major (c = a^T a with a = Jb^T as scipy's Fortran view), in place.
    rng = np.random.default_rng(1)
    Jb = np.asfortranarray(rng.standard_normal((P, block * C)))
    last = n_samples - block * (n_samples // block)
    Jlast = np.asfortranarray(Jb[:, :last * C]) if last else None
    c = np.zeros((P, P), order="F")
    n_full = n_samples // block

    def run_syrk():
        for _ in range(n_full):
            sblas.dsyrk(1.0, Jb, beta=1.0, c=c, overwrite_c=1)
        if Jlast is not None:
            sblas.dsyrk(1.0, Jlast, beta=1.0, c=c, overwrite_c=1)

    out = sblas.dsyrk(1.0, Jb[:, :4], beta=1.0, c=c, overwrite_c=1)
    assert np.shares_memory(out, c), "dsyrk copied its output"
    info = dict(P=P, block=block, flops=n_samples * C * P * (P + 1))
    return {"cbackprop": run_cbackprop, "syrk_only": run_syrk}, info


def build_quasi_hessian_outputs(layer_sizes=QH_OUTPUTS["layer_sizes"]):
    """Multi-output GGN on all of load_digits: rows (syrk, C N P^2 flops)
    against the Kronecker-contracted accumulation (N P^2) and net.ggn."""
    cbm = _need_cbackprop()
    from cbackprop import _lm
    from cbackprop.optimize import _block_rows
    from sklearn.datasets import load_digits

    X, t = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X / 16.0)
    Y = np.eye(10)[t]
    net = cbm.Network(layer_sizes, "tanh", "log_loss")
    theta = net.init_params(0)
    P, N = net.n_params, X.shape[0]
    G = np.empty((P, P))
    g = np.empty(P)
    fns = {}
    for name, kron in (("rows", False), ("kronecker", True)):
        block = _block_rows(None, net, N, kron)
        ws = _lm.LMWorkspace(net._plan, block, kron, np.float64)
        fns[name] = (lambda ws=ws: _lm.quasi_hessian(
            net._plan, theta, X, Y, None, float(N), 0.0, G, g, ws))
    fns["net_ggn"] = lambda: net.ggn(theta, X, Y)
    info = dict(P=P, N=N, flops_rows=N * 10 * P * (P + 1), flops_kron=N * P * P)
    return fns, info


def build_hessian_free(cg_iters):
    """One HF outer iteration with exactly cg_iters CG steps, and loss_grad."""
    cbm = _need_cbackprop()
    from cbackprop.optimize import hessian_free

    X, Y = digits_net_a()
    net = cbm.Network(HF_NET_A["layer_sizes"], "tanh", "log_loss")
    theta0 = net.init_params(0)
    grad = np.empty(net.n_params)

    def run_hf():
        return hessian_free(net, theta0, X, Y, max_iter=1, cg_max_iter=cg_iters,
                            cg_tol=0.0, cg_decay=0.0)

    def run_loss_grad():
        return net.loss_grad(theta0, X, Y, out=grad)

    res = run_hf()
    assert res.ncg == cg_iters, res.ncg
    return {"hessian_free": run_hf, "loss_grad": run_loss_grad}


# --------------------------------------------------------------------------
# asv
class LMIteration(_Threaded):
    """Workload LM: LM_ITERS (20) iterations; divide by 20 for one iteration."""

    sample_time = 0.05
    repeat = (5, 11, 10.0)
    warmup_time = 0.1
    timeout = 120

    def setup(self):
        self._limit()
        self.fns = build_lm()

    def time_cbackprop(self):
        self.fns["cbackprop"]()

    def time_numpy(self):
        self.fns["numpy"]()


class QuasiHessian(_Threaded):
    """GGN accumulation, P = 5009, N = 20,000: kernel vs its syrk calls alone."""

    number = 1
    repeat = (2, 3, 60.0)
    warmup_time = 0
    timeout = 600

    def setup(self):
        self._limit()
        self.fns, self.info = build_quasi_hessian(**QH_LARGE)

    def time_cbackprop(self):
        self.fns["cbackprop"]()

    def time_syrk_only(self):
        self.fns["syrk_only"]()

    def track_fraction_of_gemm_rate(self):
        """Kernel flop rate (syrk part) over the 2048^3 dgemm rate, timed
        back to back in this process: the best of two each."""
        import time

        try:
            from ._common import GemmPeakWorkload
        except ImportError:
            from _common import GemmPeakWorkload
        peak = GemmPeakWorkload()
        gemm = peak.build()
        t_gemm = t_kernel = np.inf
        for _ in range(2):
            t0 = time.perf_counter()
            gemm()
            t_gemm = min(t_gemm, time.perf_counter() - t0)
            t0 = time.perf_counter()
            self.fns["cbackprop"]()
            t_kernel = min(t_kernel, time.perf_counter() - t0)
        return (self.info["flops"] / t_kernel) / (peak.flops / t_gemm)

    track_fraction_of_gemm_rate.unit = "fraction"


class QuasiHessianOutputs(_Threaded):
    """64-32-10 log_loss, 1797 digits (P = 2410): rows vs Kronecker vs net.ggn."""

    number = 1
    repeat = (2, 5, 60.0)
    warmup_time = 0
    timeout = 300

    def setup(self):
        self._limit()
        self.fns, self.info = build_quasi_hessian_outputs()

    def time_rows(self):
        self.fns["rows"]()

    def time_kronecker(self):
        self.fns["kronecker"]()

    def time_net_ggn(self):
        self.fns["net_ggn"]()


class QuasiHessianMemory(_Threaded):
    """Peak memory (whole process) at N and 10 N, P = 901."""

    params = [list(QH_MEMORY["n_samples"])]
    param_names = ["n_samples"]
    timeout = 600

    def setup(self, n_samples):
        self._limit()
        cbm = _need_cbackprop()
        self.X, self.Y = regression_problem(QH_MEMORY["layer_sizes"], n_samples)
        self.net = cbm.Network(QH_MEMORY["layer_sizes"], "tanh", "squared_error")
        self.theta = self.net.init_params(0)

    def peakmem_data_only(self, n_samples):
        pass

    def peakmem_quasi_hessian(self, n_samples):
        from cbackprop.optimize import quasi_hessian
        quasi_hessian(self.net, self.theta, self.X, self.Y)

    def peakmem_dense_jacobian(self, n_samples):
        J = self.net.jacobian(self.theta, self.X).reshape(n_samples, -1)
        J.T @ J


class HessianFreeIteration(_Threaded):
    """Net A: one HF outer iteration with cg_iters CG steps, and LOSS_GRADS
    loss_grads back to back (see `_common.repeated`)."""

    LOSS_GRADS = 20

    params = [[10, 50]]
    param_names = ["cg_iters"]
    sample_time = 0.05
    repeat = (3, 7, 10.0)
    timeout = 120

    def setup(self, cg_iters):
        self._limit()
        self.fns = build_hessian_free(cg_iters)
        self.fns["loss_grad"] = repeated(self.fns["loss_grad"], self.LOSS_GRADS)

    def time_hessian_free(self, cg_iters):
        self.fns["hessian_free"]()

    def time_loss_grad(self, cg_iters):
        self.fns["loss_grad"]()


# --------------------------------------------------------------------------
def main(argv=None):
    """Side-by-side figures in one process (interleaved repeats)."""
    import argparse
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from report import measure_interleaved

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--skip-large", action="store_true",
                        help="skip the P = 5009 accumulation (about a minute)")
    opts = parser.parse_args(argv)
    limits = limit_threads()
    from _common import GemmPeakWorkload, threadpool_summary
    print("\n".join(threadpool_summary()))

    fns = build_lm()
    t = measure_interleaved(fns, opts.repeat, opts.min_time)
    c, n = t["cbackprop"][0] / LM_ITERS, t["numpy"][0] / LM_ITERS
    print(f"LM iteration (1-10-1 sin, mean of {LM_ITERS}): cbackprop {c * 1e6:.1f} us, "
          f"numpy {n * 1e6:.1f} us, speed-up {n / c:.2f}x")

    for k in (10, 50):
        t = measure_interleaved(build_hessian_free(k), opts.repeat, opts.min_time)
        hf, lg = t["hessian_free"][0], t["loss_grad"][0]
        print(f"HF outer iteration, {k} CG steps (net A): {hf * 1e3:.2f} ms = "
              f"{hf / lg:.1f} loss_grad ({lg * 1e3:.3f} ms)")

    fns, info = build_quasi_hessian_outputs()
    t = measure_interleaved(fns, 3, 0.0, warmup=0)
    r, k, d = t["rows"][0], t["kronecker"][0], t["net_ggn"][0]
    print(f"GGN 64-32-10 log_loss, N={info['N']}, P={info['P']}: rows {r:.2f} s, "
          f"kronecker {k:.2f} s ({info['flops_kron'] / k / 1e9:.1f} GFLOP/s), "
          f"net.ggn {d:.2f} s")

    if not opts.skip_large:
        fns, info = build_quasi_hessian(**QH_LARGE)
        t = measure_interleaved(fns, 3, 0.0, warmup=0)
        k, s = t["cbackprop"][0], t["syrk_only"][0]
        peak = GemmPeakWorkload().build()
        tp = measure_interleaved({"gemm": peak}, 3, 0.5)["gemm"][0]
        rate = GemmPeakWorkload().flops / tp
        print(f"quasi-Hessian P={info['P']} N={QH_LARGE['n_samples']} block={info['block']}: "
              f"kernel {k:.2f} s ({info['flops'] / k / 1e9:.1f} GFLOP/s), syrk alone "
              f"{s:.2f} s ({info['flops'] / s / 1e9:.1f} GFLOP/s): {s / k:.0%} of the syrk "
              f"rate, {info['flops'] / k / rate:.0%} of the 2048^3 GEMM rate "
              f"({rate / 1e9:.1f} GFLOP/s)")
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
