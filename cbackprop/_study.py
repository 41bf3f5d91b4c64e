"""Time-to-target study: ``python -m cbackprop study``.

The protocol of MATLAB's "Choose a Multilayer Neural Network Training
Function" (Deep Learning Toolbox documentation): each problem is trained
from N random initial weights (30 there) until the training error reaches a
goal, and the mean, minimum, maximum and standard deviation of the wall time
to the goal are tabulated per training function, with the iterations and, here,
the success rate. Problems, all offline:

* ``sin``: MATLAB's SIN, a 1-5-1 network (tansig hidden, linear output)
  fitting one period of a sine wave to a mean squared error of 0.002. The
  page fixes neither the sample count nor the grid: 41 points, the input
  scaled to [-1, 1] as MATLAB's default ``mapminmax`` does.
* ``parity``: MATLAB's 3-bit PARITY, 3-10-10-1, mean squared error 0.001,
  the 8 corners of {-1, 1}^3 with targets +-1. MATLAB uses tansig in every
  layer; the output here is linear (cbackprop's regression networks have an
  identity link), which reaches +-1 as well.
* ``breast_cancer``, ``digits``, ``diabetes``, ``friedman1`` (scikit-learn's
  data, standardized), with architectures and targets set here (see
  PROBLEMS), and ``autoencoder``: 64-32-16-32-64 on the digits binarized at
  half intensity, logistic outputs (binary cross-entropy), K-FAC's home
  ground (Martens and Grosse's deep autoencoders).

MATLAB's mse is ``sum (t - y)^2 / N``; cbackprop's squared error objective
is half of it, so the goals become targets 0.001 and 0.0005 on the
objective. Every solver is measured on the same objective (the network's,
alpha included) from the same initial weights per seed (``init_params(seed)``,
scikit-learn's own Glorot draws), on one BLAS thread (threadpoolctl).

Solvers: cbackprop's adam (``MLPClassifier`` / ``MLPRegressor``), lbfgs (scipy's
L-BFGS-B on ``Network.loss_grad``, the estimator's optimizer and options),
lbfgs-c (the compiled ``cbackprop.optimize.lbfgs``, recorded per iteration),
lm, hessian-free, newton and kfac (:mod:`cbackprop.optimize` and
:mod:`cbackprop._kfac` on the Network), and scikit-learn's adam and lbfgs. A
run records (wall time, training loss) after every iteration: an epoch for
adam (the full training loss is evaluated outside the clock), a loss
evaluation for L-BFGS, a step for the others; it stops at the target or at the
time budget (a failure). Outputs: ``study.md`` (Markdown tables) and, with
matplotlib, ``study.png`` (training loss against wall time, the first seed).
"""
import argparse
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from cbackprop import _kfac, optimize
from cbackprop.network import Network

SOLVERS = ("cb-adam", "cb-lbfgs", "cb-lbfgs-c", "cb-lm", "cb-hessian-free", "cb-newton",
           "cb-kfac", "sk-adam", "sk-lbfgs")
LM_MAX_PARAMS = 3000     # LM's P x P matrix and cubic solve: skipped above
FIG_WIDTH, FIG_ROW_HEIGHT, FIG_DPI, FIG_COLS = 12.0, 3.6, 100, 3


@dataclass
class Problem:
    """A training problem: data, architecture, objective and target."""

    name: str
    sizes: tuple
    loss: str
    target: float
    load: object                 # () -> (X, Y) float64, Y of shape (N, n_L)
    alpha: float = 0.0
    budget: float = 10.0         # seconds per run before it counts as failed
    adam_lr: float = 0.01
    kfac: dict = field(default_factory=dict)
    note: str = ""

    @property
    def classifier(self):
        return self.loss != "squared_error"


def _standardize(A):
    A = np.asarray(A, dtype=np.float64)
    return (A - A.mean(axis=0)) / A.std(axis=0)


def _sin():
    x = np.linspace(-1.0, 1.0, 41)
    return x[:, None], np.sin(np.pi * (x + 1.0))[:, None]


def _parity():
    X = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float)
    odd = (X > 0).sum(axis=1) % 2 == 1
    return X, np.where(odd, 1.0, -1.0)[:, None]


def _breast_cancer():
    from sklearn.datasets import load_breast_cancer
    d = load_breast_cancer()
    return _standardize(d.data), d.target.astype(float)[:, None]


def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.data / 16.0, np.eye(10)[d.target]


def _diabetes():
    from sklearn.datasets import load_diabetes
    d = load_diabetes()
    return _standardize(d.data), _standardize(d.target)[:, None]


def _friedman1():
    from sklearn.datasets import make_friedman1
    X, y = make_friedman1(n_samples=500, noise=0.0, random_state=0)
    return _standardize(X), _standardize(y)[:, None]


def _autoencoder():
    from sklearn.datasets import load_digits
    X = (load_digits().data > 8).astype(float)
    return X, X.copy()


PROBLEMS = {p.name: p for p in [
    Problem("sin", (1, 5, 1), "squared_error", 0.001, _sin, budget=5.0,
            note="MATLAB SIN, mse 0.002"),
    Problem("parity", (3, 10, 10, 1), "squared_error", 0.0005, _parity, budget=5.0,
            note="MATLAB PARITY, mse 0.001"),
    Problem("breast_cancer", (30, 10, 1), "binary_log_loss", 0.01, _breast_cancer,
            alpha=1e-4, note="569 x 30, log loss 0.01"),
    Problem("digits", (64, 32, 10), "log_loss", 0.01, _digits, alpha=1e-4,
            budget=20.0, note="1797 x 64, log loss 0.01"),
    Problem("diabetes", (10, 10, 1), "squared_error", 0.2, _diabetes,
            note="442 x 10, standardized target, mse 0.4"),
    Problem("friedman1", (10, 20, 1), "squared_error", 0.005, _friedman1,
            note="500 x 10 noise-free, standardized target, mse 0.01"),
    Problem("autoencoder", (64, 32, 16, 32, 64), "binary_log_loss", 2.5, _autoencoder,
            budget=10.0, kfac=dict(batch_size=128, min_damping=1e-3),
            note="binarized digits, cross-entropy 2.5 (summed over 64 pixels)"),
]}


# ------------------------------------------------------------------ runs
class _Stop(StopIteration):
    """Target reached or budget spent: ends a run from inside a solver (a
    StopIteration, so that cbackprop's solvers stop cleanly)."""


class _Trace:
    """(wall time, loss, iteration) records of one run, its clock and stop rule.

    ``pause`` excludes bookkeeping (full-loss evaluations of the stochastic
    solvers) from the clock.
    """

    def __init__(self, target, budget, clock=time.perf_counter):
        self.target, self.budget, self.clock = target, budget, clock
        self.times, self.losses = [], []
        self.paused = 0.0
        self.start = clock()

    def now(self):
        return self.clock() - self.start - self.paused

    def record(self, loss, check=True):
        t = self.now()
        self.times.append(t)
        self.losses.append(float(loss))
        if check and (loss <= self.target or t > self.budget):
            raise _Stop

    def timed_loss(self, fn):
        """Evaluate fn() off the clock, then record and check its value."""
        t0 = self.clock()
        loss = fn()
        self.paused += self.clock() - t0
        self.record(loss)

    @property
    def reached(self):
        """(time, iteration) of the first record at the target within the
        budget, or None."""
        hit = [i for i, (t, f) in enumerate(zip(self.times, self.losses))
               if f <= self.target and t <= self.budget]
        return (self.times[hit[0]], hit[0] + 1) if hit else None


def _network(problem):
    return Network(problem.sizes, activation="tanh", loss=problem.loss,
                   alpha=problem.alpha)


def _run_second_order(solver, problem, net, theta0, X, Y, trace, seed):
    cb = lambda r: trace.record(r.fun)
    big = 10 ** 6
    if solver == "cb-lm":
        optimize.levenberg_marquardt(net, theta0, X, Y, max_iter=big, ftol=0, gtol=0,
                                     callback=cb)
    elif solver == "cb-hessian-free":
        optimize.hessian_free(net, theta0, X, Y, max_iter=big, ftol=0, gtol=0,
                              callback=cb)
    elif solver == "cb-newton":
        optimize.newton(net, theta0, X, Y, max_iter=big, gtol=0, callback=cb)
    else:
        kw = dict(problem.kfac)
        if kw.get("batch_size"):
            def cb(r):                              # mini-batches: at epoch ends,
                if r.epoch > len(trace.losses):     # the full loss, off the clock
                    trace.timed_loss(lambda: net.loss(r.x, X, Y))
        _kfac.kfac(net, theta0, X, Y, max_iter=big, ftol=0, gtol=0, random_state=seed,
                   callback=cb, **kw)


def _run_lbfgs_cb(net, theta0, X, Y, trace):
    def fun(x):
        f, g = net.loss_grad(x, X, Y)
        trace.record(f)
        return f, g
    minimize(fun, theta0, jac=True, method="L-BFGS-B",
             options={"maxiter": 10 ** 6, "maxfun": 10 ** 6, "gtol": 0.0})


def _estimator(solver, problem, seed, trace, net, X, Y):
    """A recording subclass of the estimator (cbackprop's or scikit-learn's)."""
    if solver.startswith("cb-"):
        from cbackprop import MLPClassifier, MLPRegressor
    else:
        from sklearn.neural_network import MLPClassifier, MLPRegressor
    base = MLPClassifier if problem.classifier else MLPRegressor
    sk_scale = 1.0 if problem.classifier else float(problem.sizes[-1])

    def full_loss(est):
        return net.loss(net.pack(est.coefs_, est.intercepts_), X, Y)

    class Recording(base):
        def _update_no_improvement_count(self, *args, **kwargs):
            super()._update_no_improvement_count(*args, **kwargs)
            trace.timed_loss(lambda: full_loss(self))

        def _loss_grad_lbfgs(self, *args, **kwargs):
            f, g = super()._loss_grad_lbfgs(*args, **kwargs)
            trace.record(f * sk_scale)     # scikit-learn divides by n_outputs
            return f, g

    kw = dict(hidden_layer_sizes=problem.sizes[1:-1], activation="tanh",
              alpha=problem.alpha, random_state=seed, max_iter=10 ** 6, tol=0.0,
              n_iter_no_change=10 ** 6)
    if solver.endswith("adam"):
        kw.update(solver="adam", learning_rate_init=problem.adam_lr)
    else:
        kw.update(solver="lbfgs", max_fun=10 ** 6)
    return Recording(**kw)


def _targets_for(problem, Y):
    """Estimator targets: class labels, multilabel indicators or values."""
    if not problem.classifier:
        return Y[:, 0] if Y.shape[1] == 1 else Y
    if problem.loss == "log_loss":
        return Y.argmax(axis=1)
    return Y[:, 0].astype(int) if Y.shape[1] == 1 else Y.astype(int)


def applicable(solver, problem):
    return not (solver == "cb-lm" and _n_params(problem.sizes) > LM_MAX_PARAMS)


def _n_params(sizes):
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def run(solver, problem, seed, budget=None, clock="wall"):
    """One run: its _Trace (stopped at the target or the budget).

    ``clock='cpu'`` measures the process's CPU time instead of wall time:
    on one BLAS thread the two agree on a quiet machine, and CPU time does
    not count the time other processes take from this one on a shared one.
    """
    X, Y = problem.load()
    net = _network(problem)
    theta0 = net.init_params(seed)
    trace = _Trace(problem.target, problem.budget if budget is None else budget,
                   CLOCKS[clock])
    if solver in ("cb-adam", "sk-adam", "sk-lbfgs"):
        est, targets = _estimator(solver, problem, seed, trace, net, X, Y), _targets_for(problem, Y)
        go = lambda: est.fit(X, targets)
    elif solver == "cb-lbfgs":
        go = lambda: _run_lbfgs_cb(net, theta0, X, Y, trace)
    elif solver == "cb-lbfgs-c":
        go = lambda: optimize.lbfgs(net, theta0, X, Y, gtol=0.0, ftol=0.0, max_iter=10 ** 6,
                                    callback=lambda r: trace.record(r.fun))
    else:
        go = lambda: _run_second_order(solver, problem, net, theta0, X, Y, trace, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace.start = trace.clock()
        try:
            go()
        except StopIteration:
            pass
    return trace


# ---------------------------------------------------------------- report
def summarize(traces):
    """Statistics of a solver's runs on one problem (successful runs only)."""
    hits = [t.reached for t in traces if t.reached is not None]
    times = np.array([h[0] for h in hits])
    iters = np.array([h[1] for h in hits])
    out = {"runs": len(traces), "success": len(hits)}
    if hits:
        out.update(mean=times.mean(), min=times.min(), max=times.max(),
                   std=times.std(ddof=1) if len(hits) > 1 else 0.0,
                   iters=iters.mean())
    return out


def best_of(stats, prefix):
    """The solver with the lowest mean time among those with the highest
    success count (ties: all seeds), restricted to names with prefix."""
    cands = {s: v for s, v in stats.items() if s.startswith(prefix) and v["success"]}
    if not cands:
        return None
    top = max(v["success"] for v in cands.values())
    return min((s for s, v in cands.items() if v["success"] == top),
               key=lambda s: cands[s]["mean"])


def _fmt(x):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def problem_table(problem, stats, budget=None):
    budget = problem.budget if budget is None else budget
    lines = [f"### {problem.name}: {'-'.join(map(str, problem.sizes))}, {problem.note} "
             f"(target loss {problem.target:g}, budget {budget:g} s)", "",
             "| solver | mean (s) | min (s) | max (s) | std (s) | iterations | success |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for solver, v in stats.items():
        lines.append(f"| {solver} | {_fmt(v.get('mean'))} | {_fmt(v.get('min'))} | "
                     f"{_fmt(v.get('max'))} | {_fmt(v.get('std'))} | "
                     f"{_fmt(v.get('iters'))} | {v['success']}/{v['runs']} |")
    return lines


def ratios(all_stats):
    """The issue's comparisons: (label, value, goal) rows."""
    rows = []
    for name, stats in all_stats.items():
        cb, sk = best_of(stats, "cb-"), best_of(stats, "sk-")
        if cb and sk:
            rows.append((f"{name}: scikit-learn's best ({sk}) / cbackprop's best ({cb}), "
                         "mean time", stats[sk]["mean"] / stats[cb]["mean"], 3.0))
    sin = all_stats.get("sin", {})
    if sin.get("cb-lm", {}).get("success"):
        others = {s: v for s, v in sin.items() if s != "cb-lm" and v["success"]}
        if others:
            nxt = min(others, key=lambda s: others[s]["mean"])
            rows.append((f"sin: next fastest ({nxt}) / cb-lm, mean time",
                         others[nxt]["mean"] / sin["cb-lm"]["mean"], 4.0))
    ae = all_stats.get("autoencoder", {})
    k, a = ae.get("cb-kfac", {}), ae.get("cb-adam", {})
    if k.get("success") and a.get("success"):
        rows.append(("autoencoder: cb-adam / cb-kfac, epochs", a["epochs"] / k["epochs"], 3.0))
        rows.append(("autoencoder: cb-adam / cb-kfac, mean time", a["mean"] / k["mean"], 1.5))
    return rows


def markdown(all_stats, seeds, quick, clock="wall", budget=None):
    lines = ["# Time to target", "",
             f"{len(seeds)} seed(s) ({seeds[0]}..{seeds[-1]}), one BLAS thread, "
             f"{'wall' if clock == 'wall' else 'process CPU'} time"
             + (", --quick" if quick else "") + ". Times in seconds over the runs that "
             "reached the target; iterations: epochs (adam), loss evaluations (lbfgs), "
             "steps (the others).", ""]
    for name, stats in all_stats.items():
        lines += problem_table(PROBLEMS[name], stats, budget) + [""]
    rows = ratios(all_stats)
    if rows:
        lines += ["## Ratios against the goals", "", "| comparison | ratio | goal |",
                  "|---|---:|---:|"]
        lines += [f"| {label} | {value:.2f} | >= {goal:g} |" for label, value, goal in rows]
        lines.append("")
    return "\n".join(lines)


def plot(all_traces, path, clock="wall"):
    """Training loss against time per problem (first seed), one colour per
    solver throughout; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(all_traces)
    rows = -(-len(names) // FIG_COLS)
    fig, axes = plt.subplots(rows, FIG_COLS, figsize=(FIG_WIDTH, FIG_ROW_HEIGHT * rows),
                             dpi=FIG_DPI, squeeze=False)
    for ax, name in zip(axes.flat, names):
        for solver, traces in all_traces[name].items():
            t = traces[0]
            if t.losses:
                ax.semilogy(np.maximum(t.times, 1e-6), t.losses, label=solver, lw=1,
                            color=f"C{SOLVERS.index(solver)}")
        ax.axhline(PROBLEMS[name].target, color="k", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{'wall' if clock == 'wall' else 'CPU'} time (s)", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)
    plt.close(fig)
    return path


# -------------------------------------------------------------- command
def _parser():
    p = argparse.ArgumentParser(prog="python -m cbackprop study",
                                description="Time-to-target study (MATLAB's protocol).")
    p.add_argument("--seeds", type=int, default=30, help="random initializations (30)")
    p.add_argument("--problems", default=",".join(PROBLEMS),
                   help="comma-separated subset of " + ",".join(PROBLEMS))
    p.add_argument("--solvers", default=",".join(SOLVERS),
                   help="comma-separated subset of " + ",".join(SOLVERS))
    p.add_argument("--out", default="study_out", help="output directory")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time (default) or process CPU time (shared machines)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 seed, sin and parity, 0.5 s budgets")
    return p


def _choose(arg, known, what):
    names = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [s for s in names if s not in known]
    if bad or not names:
        raise SystemExit(f"unknown {what}: {bad or arg!r}; choose from {', '.join(known)}")
    return names


def study(problems, solvers, seeds, budget=None, log=None, clock="wall"):
    """Run every (problem, solver, seed): (stats, traces) nested dicts."""
    from threadpoolctl import threadpool_limits
    all_stats, all_traces = {}, {}
    with threadpool_limits(1):
        for name in problems:
            problem = PROBLEMS[name]
            all_stats[name], all_traces[name] = {}, {}
            for solver in solvers:
                if not applicable(solver, problem):
                    continue
                # One untimed warm-up run: first-call costs (imports, caches,
                # buffer pools) are not the solver's.
                run(solver, problem, seeds[0], min(budget or problem.budget, 0.5), clock)
                traces = [run(solver, problem, s, budget, clock) for s in seeds]
                stats = summarize(traces)
                stats["epochs"] = _epochs(solver, problem, traces)
                all_stats[name][solver], all_traces[name][solver] = stats, traces
                if log:
                    log(f"{name:14s} {solver:16s} {stats['success']}/{len(seeds)} "
                        f"mean {_fmt(stats.get('mean'))} s")
    return all_stats, all_traces


def _epochs(solver, problem, traces):
    """Mean passes over the data to the target (adam and mini-batch kfac: the
    recorded epochs; full-batch solvers: the iterations)."""
    hits = [t.reached[1] for t in traces if t.reached is not None]
    return float(np.mean(hits)) if hits else math.nan


def main(argv=None):
    args = _parser().parse_args(argv)
    problems = _choose(args.problems, PROBLEMS, "problems")
    solvers = _choose(args.solvers, SOLVERS, "solvers")
    seeds, budget = list(range(args.seeds)), None
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.quick:
        seeds, budget = [0], 0.5
        if args.problems == _parser().get_default("problems"):
            problems = ["sin", "parity"]
    os.makedirs(args.out, exist_ok=True)
    stats, traces = study(problems, solvers, seeds, budget,
                          log=lambda s: print(s, flush=True), clock=args.clock)
    md = os.path.join(args.out, "study.md")
    with open(md, "w") as f:
        f.write(markdown(stats, seeds, args.quick, args.clock, budget))
    png = plot(traces, os.path.join(args.out, "study.png"), args.clock)
    print(f"wrote {md}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
