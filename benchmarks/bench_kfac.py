"""asv benchmarks of K-FAC (``cbackprop._kfac.kfac``), next to kfac-jax.

Workload: the digits autoencoder of the time-to-target study (64-32-16-32-64,
tanh, logistic outputs, binary cross-entropy summed over the 64 pixels and
averaged over the rows; all 1797 load_digits images binarized at half
intensity, full batch; ``init_params(0)``), trained by K-FAC with the same
hyperparameters on both sides, kfac-jax's defaults that cbackprop's defaults
follow: Monte-Carlo factors (one sampled target per row; kfac-jax's
'fisher_gradients'), moving averages with decay 0.95, 10 burn-in estimates,
inverses every 5 steps, learning rate and momentum from the exact quadratic
model, damping 1.0 adapted every 5 steps by 0.9 with thresholds 1/4 and 3/4,
no weight decay.

* ``KFACStep.time_run``: the burn-in and ``STEPS`` K-FAC steps from the
  initial weights (kfac-jax: jitted, compiled in setup, ``block_until_ready``).
* ``KFACStep.track_loss``: the training loss after those ``STEPS`` steps.
* ``main`` (``python benchmarks/bench_kfac.py``): the median wall and CPU time
  per step after the burn-in, interleaved repeats.

kfac-jax is an optional benchmark dependency (``pip install jax jaxlib
kfac-jax``); without it its parameter is skipped. Threads: BLAS pools are
limited with threadpoolctl to ``CBACKPROP_BENCH_THREADS`` (default 1), and
XLA's CPU backend is asked for the same number of intra-op threads before jax
is imported.

``python benchmarks/bench_kfac.py`` prints both side by side.
"""
import os
import time

import numpy as np

try:
    from ._common import cb, CBACKPROP_IMPORT_ERROR, limit_threads
except ImportError:  # python benchmarks/bench_kfac.py
    from _common import cb, CBACKPROP_IMPORT_ERROR, limit_threads

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - older asv
    SkipNotImplemented = NotImplementedError

SIZES = (64, 32, 16, 32, 64)
STEPS = 20
REPEATS = 3
DAMPING = 1.0
THREADS = int(os.environ.get("CBACKPROP_BENCH_THREADS", "1"))


def _now():
    return time.perf_counter(), time.process_time()


def _per_step(stamps):
    """Median wall and CPU seconds between successive stamps."""
    d = np.diff(np.array(stamps), axis=0)
    return float(np.median(d[:, 0])), float(np.median(d[:, 1]))


def autoencoder_data():
    from sklearn.datasets import load_digits
    X = (load_digits().data > 8).astype(np.float64)
    return X, X.copy()


# ------------------------------------------------------------------ cbackprop
class CbackpropKFAC:
    """cbackprop's kfac, stepped through its callback."""

    def __init__(self, X, Y):
        from cbackprop import _kfac
        self.kfac, self.X, self.Y = _kfac.kfac, X, Y
        self.net = cb.Network(SIZES, activation="tanh", loss="binary_log_loss")
        self.theta0 = self.net.init_params(0)

    def run(self, steps):
        """(loss after `steps` steps, median wall and CPU seconds per step
        after the burn-in)."""
        stamps = []
        res = self.kfac(self.net, self.theta0, self.X, self.Y, max_iter=steps,
                        curvature="mc", damping=DAMPING, random_state=0,
                        callback=lambda r: stamps.append(_now()))
        return (float(res.fun),) + _per_step(stamps)


# ------------------------------------------------------------------ kfac-jax
def _import_kfac_jax():
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                   f"intra_op_parallelism_threads={THREADS}").strip()
    try:
        import jax
        import jax.numpy as jnp
        import kfac_jax
    except ImportError as exc:
        return None, exc
    jax.config.update("jax_enable_x64", True)
    return (jax, jnp, kfac_jax), None


class KfacJax:
    """kfac-jax's Optimizer on the same network, data and initial weights."""

    def __init__(self, X, Y, theta0):
        mods, err = _import_kfac_jax()
        if mods is None:
            raise SkipNotImplemented(f"kfac-jax is not importable: {err}")
        self.jax, jnp, kfac_jax = mods
        coefs, intercepts = cb.Network(SIZES, activation="tanh",
                                       loss="binary_log_loss").unpack(theta0)
        self.params0 = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(coefs, intercepts)]
        self.batch = (jnp.asarray(X), jnp.asarray(Y))

        def loss_fn(params, batch):
            h, targets = batch
            for W, b in params[:-1]:
                h = jnp.tanh(h @ W + b)
            logits = h @ params[-1][0] + params[-1][1]
            kfac_jax.register_sigmoid_cross_entropy_loss(logits, targets)
            per_row = jnp.sum(jnp.logaddexp(0.0, logits) - targets * logits, axis=1)
            return jnp.mean(per_row)

        self.loss_fn = self.jax.jit(loss_fn)
        self.opt = kfac_jax.Optimizer(
            value_and_grad_func=self.jax.value_and_grad(loss_fn), l2_reg=0.0,
            use_adaptive_learning_rate=True, use_adaptive_momentum=True,
            use_adaptive_damping=True, initial_damping=DAMPING,
            estimation_mode="fisher_gradients", curvature_ema=0.95,
            inverse_update_period=5, damping_adaptation_interval=5,
            damping_adaptation_decay=0.9, num_burnin_steps=10, multi_device=False)

    def _data(self):
        # kfac-jax donates the batch's buffers: a fresh copy per step (about
        # 2 MB, inside the timed step).
        X, Y = self.batch
        while True:
            yield (X.copy(), Y.copy())

    def start(self):
        rng = self.jax.random.PRNGKey(0)
        # Fresh buffers: kfac-jax's step donates its arguments' buffers.
        params = [(W.copy(), b.copy()) for W, b in self.params0]
        state = self.opt.init(params, rng, next(self._data()))
        return params, state, rng, self._data()

    def step(self, params, state, rng, data, i):
        rng, key = self.jax.random.split(rng)
        params, state, stats = self.opt.step(params, state, key, data_iterator=data,
                                             global_step_int=i)
        self.jax.block_until_ready(params)
        return params, state, rng

    def run(self, steps):
        params, state, rng, data = self.start()
        stamps = []
        for i in range(steps):
            params, state, rng = self.step(params, state, rng, data, i)
            stamps.append(_now())
        loss = float(self.loss_fn(params, self.batch))
        return (loss,) + _per_step(stamps)


# ----------------------------------------------------------------------- asv
class KFACStep:
    params = ["cbackprop", "kfac-jax"]
    param_names = ["implementation"]
    timeout = 600

    def setup(self, impl):
        if cb is None:
            raise SkipNotImplemented(f"cbackprop is not importable: {CBACKPROP_IMPORT_ERROR}")
        self._limits = limit_threads()
        X, Y = autoencoder_data()
        ours = CbackpropKFAC(X, Y)
        self.impl = ours if impl == "cbackprop" else KfacJax(X, Y, ours.theta0)
        self.impl.run(2)                  # warm-up; kfac-jax compiles here

    def teardown(self, impl):
        limits = getattr(self, "_limits", None)
        if limits is not None:
            limits.restore_original_limits()

    def time_run(self, impl):
        self.impl.run(STEPS)

    def track_loss(self, impl):
        return self.impl.run(STEPS)[0]

    track_loss.unit = "loss"


def main():
    limits = limit_threads()
    X, Y = autoencoder_data()
    ours = CbackpropKFAC(X, Y)
    rows = [("cbackprop", ours)]
    try:
        rows.append(("kfac-jax", KfacJax(X, Y, ours.theta0)))
    except SkipNotImplemented as exc:
        print(f"kfac-jax skipped: {exc}")
    print(f"digits autoencoder {'-'.join(map(str, SIZES))}, full batch of {len(X)}, "
          f"{THREADS} thread(s); loss at init_params(0): "
          f"{ours.net.loss(ours.theta0, X, Y):.4f}")
    for _, impl in rows:
        impl.run(2)                               # warm-up (kfac-jax: compilation)
    best = {}
    for _ in range(REPEATS):                      # interleaved: same machine load
        for name, impl in rows:
            loss, wall, cpu = impl.run(STEPS)
            old = best.get(name, (loss, np.inf, np.inf))
            best[name] = (loss, min(old[1], wall), min(old[2], cpu))
    print(f"{'implementation':16s} {'wall ms/step':>12s} {'CPU ms/step':>12s} "
          f"{f'loss after {STEPS}':>16s}   (best of {REPEATS} interleaved runs)")
    for name, (loss, wall, cpu) in best.items():
        print(f"{name:16s} {1e3 * wall:12.2f} {1e3 * cpu:12.2f} {loss:16.4f}")
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
