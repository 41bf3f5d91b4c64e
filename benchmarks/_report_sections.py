"""The estimators and curvature sections of ``benchmarks/report.py``.

Each section builds the workloads shared with the asv suite, times every
implementation interleaved in one process and returns a Markdown table.
"""
import numpy as np

from . import _curvature_workloads as CW
from . import _estimator_workloads as EW


def _ms(t):
    return "n/a" if t is None else f"{t * 1e3:.3g}" if t < 1e-2 else f"{t * 1e3:.1f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def section_estimators(opts, measure):
    """Workloads a-d: fit times against scikit-learn, and against the GEMMs alone."""
    fns = {}
    for name, builder, epochs in [("a", EW.workload_a, 200), ("d", EW.workload_d, 50)]:
        for impl, fn in builder().items():
            fns[(name, "float64", impl)] = fn
    for dt in (np.float64, np.float32):
        for epochs in (1, 3):
            for impl, fn in EW.workload_b(dt, epochs=epochs).items():
                if impl != "gemm_epoch" or epochs == 1:
                    fns[(f"b{epochs}", np.dtype(dt).name, impl)] = fn
    for dt in (np.float64, np.float32):
        try:
            fns[("b", np.dtype(dt).name, "torch")] = EW.torch_epoch_b(dt)
        except ImportError:
            pass
    for impl, fn in EW.workload_c().items():
        fns[("c", "float64", impl)] = fn
    for impl, fn in EW.predict_workload().items():
        fns[("predict", "float64", impl)] = fn
    med = {k: v[0] for k, v in measure(fns, opts.repeat, opts.min_time, opts.warmup).items()}
    rows = []
    desc = {"a": "a: digits (100,), adam, 200 epochs (fit)",
            "b": "b: 20000x784 (256, 256), adam, per epoch",
            "c": "c: lbfgs objective, one loss+gradient (20000 rows)",
            "d": "d: regression (64, 64), adam, 50 epochs (fit)",
            "predict": "predict_proba, 20000 rows, (256, 256)"}
    for dt in ("float64", "float32"):
        # One epoch = (fit of 3 epochs - fit of 1 epoch) / 2: no fixed costs.
        for impl in ("cbackprop", "sklearn"):
            med[("b", dt, impl)] = (med[("b3", dt, impl)] - med[("b1", dt, impl)]) / 2
        med[("b", dt, "gemm_epoch")] = med[("b1", dt, "gemm_epoch")]
    for key in ("a", "b", "c", "d", "predict"):
        for dt in ("float64", "float32"):
            cb, sk = med.get((key, dt, "cbackprop")), med.get((key, dt, "sklearn"))
            if cb is None:
                continue
            gemm = med.get((key, dt, "gemm_epoch"))
            rows.append((desc[key], dt, _ms(cb), _ms(sk), f"{sk / cb:.2f}",
                         "n/a" if gemm is None else _ms(gemm),
                         "n/a" if gemm is None else f"{cb / gemm:.2f}",
                         "n/a" if gemm is None else f"{sk / gemm:.2f}"))
    torch_rows = [(desc["b"], dt, _ms(med[("b", dt, "cbackprop")]), _ms(med[("b", dt, "torch")]),
                   f"{med[('b', dt, 'torch')] / med[('b', dt, 'cbackprop')]:.2f}")
                  for dt in ("float64", "float32") if ("b", dt, "torch") in med]
    torch_table = ["", "A plain PyTorch CPU training loop on workload b (same layers, Adam, batch "
                   "256, `torch.set_num_threads` to the same count), one epoch, same run:", "",
                   _table(["workload", "dtype", "cbackprop ms", "PyTorch ms",
                           "PyTorch / cbackprop"], torch_rows)] if torch_rows else []
    return "\n".join([
        "## estimators: cbackprop.MLPClassifier / MLPRegressor vs scikit-learn", "",
        _table(["workload", "dtype", "cbackprop ms", "scikit-learn ms",
                "speed-up", "GEMMs alone ms", "cbackprop / GEMMs",
                "speed-up bound"], rows), *torch_table, "",
        "Same parameters and random_state for both; workload b's epoch is (fit of 3 "
        "epochs - fit of 1 epoch) / 2. GEMMs alone: the matrix products of the same "
        "passes (a: all 200 epochs; b: one epoch; c: one evaluation), same shapes and "
        "threads, through scipy.linalg.blas, nothing else; speed-up bound = scikit-learn "
        "/ GEMMs alone, the speed-up of an implementation whose every non-GEMM "
        "operation were free."])


# Figures of workloads.md for net A, measured on this 2-core machine with the
# reference libraries (milliseconds): anchors, not side-by-side timings.
ANCHORS = {
    "loss_grad": (0.32, "PyTorch gradient"),
    "hvp": (0.87, "PyTorch HVP"),
    "hessian": (850.0, "jax.hessian (torch.func: 1900)"),
    "ggn": (1100.0, "PyTorch Jacobian GGN"),
    "diag_ggn": (2.3, "BackPACK DiagGGNExact"),
    "diag_hessian": (5.8, "BackPACK DiagHessian"),
    "kfac": (2.1, "BackPACK KFAC"),
    "top5_eigenvalues": (237.0, "curvlinops + eigsh"),
}


def section_curvature(opts, measure):
    """Net A: each curvature quantity in multiples of one gradient, with the
    reference libraries' figures of workloads.md next to it."""
    args = CW.net_a()
    fns = CW.cbackprop_quantities(*args)
    try:
        theirs = {("backpack", q): fn for q, fn in CW.backpack_quantities(*args).items()}
    except ImportError:
        theirs = {}
    med = {k: v[0] for k, v in measure({**fns, **theirs}, opts.repeat, opts.min_time,
                                       opts.warmup).items()}
    g = med["loss_grad"]
    rows = []
    for q in fns:
        t = med[q]
        ref, who = ANCHORS.get(q, (None, ""))
        rows.append((q, _ms(t), f"{t / g:.1f}", who or "n/a",
                     "n/a" if ref is None else f"{ref:g}",
                     "n/a" if ref is None else f"{ref / (t * 1e3):.1f}"))
    return "\n".join([
        "## curvature: net A (64-32-10 tanh, log_loss, 512 digits, P = 2410, float64)", "",
        _table(["quantity", "cbackprop ms", "x gradient", "reference", "reference ms",
                "reference / cbackprop"], rows), "",
        "Reference figures are those of the project's workloads file (another run, possibly "
        "another machine and thread count): anchors, not side-by-side timings. `asv run` times torch.func side by side "
        "(`bench_curvature.py`, one process per benchmark). Eigenvalues: top 5 of the "
        "Hessian by ARPACK through `cbackprop.curvature.eigenvalues` (default tolerance).",
        _backpack_table(med) if theirs else
        "(BackPACK is not installed: no side-by-side table.)"])


# BackPACK's counterpart of each cbackprop quantity: (key, cbackprop key, label).
BACKPACK_PAIRS = [
    ("loss_grad", "loss_grad", "gradient (PyTorch autograd)"),
    ("diag_ggn", "diag_ggn", "DiagGGNExact"),
    ("diag_hessian", "diag_hessian", "DiagHessian"),
    ("kfac", "kfac", "KFLR (exact K-FAC, what `kfac` computes)"),
    ("kfac_mc", "kfac", "KFAC (1-sample Monte-Carlo)"),
]


def _backpack_table(med):
    rows = [(who, q, _ms(med[q]), _ms(med[("backpack", bq)]),
             f"{med[('backpack', bq)] / med[q]:.1f}") for bq, q, who in BACKPACK_PAIRS]
    return "\n".join([
        "", "Side by side with BackPACK (PyTorch CPU) in the same run, interleaved:", "",
        _table(["BackPACK", "cbackprop quantity", "cbackprop ms", "BackPACK ms",
                "BackPACK / cbackprop"], rows)])


def section_solvers(opts, measure=None):
    """adam, lbfgs, lm, hessian-free, newton on digits and on a regression problem.

    Each solver fits once (these are whole trainings, not microbenchmarks):
    iterations, wall time, final training loss, test score.
    """
    import time
    import warnings

    import cbackprop as cb
    from sklearn.datasets import make_regression
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    X, Xt, y, yt = EW.digits_split()
    Xr, yr = make_regression(n_samples=2000, n_features=10, noise=0.1, random_state=0)
    yr = yr / yr.std()
    Xr, Xrt, yr, yrt = train_test_split(Xr, yr, random_state=0)
    common = dict(random_state=0)
    runs = [("digits, (32,) tanh", cb.MLPClassifier, dict(hidden_layer_sizes=(32,),
                                                         activation="tanh"), X, y, Xt, yt),
            ("regression 2000x10, (16,) tanh", cb.MLPRegressor,
             dict(hidden_layer_sizes=(16,), activation="tanh"), Xr, yr, Xrt, yrt)]
    solvers = [("adam", dict(max_iter=200)), ("lbfgs", dict(max_iter=200)),
               ("lm", dict(max_iter=30)), ("hessian-free", dict(max_iter=60)),
               ("newton", dict(max_iter=60))]
    rows = []
    for name, Est, params, Xa, ya, Xb, yb in runs:
        for solver, extra in solvers:
            est = Est(solver=solver, **params, **common, **extra)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                t0 = time.perf_counter()
                est.fit(Xa, ya)
                wall = time.perf_counter() - t0
            rows.append((name, solver, est.n_iter_, f"{wall:.2f}", f"{est.loss_:.3g}",
                         f"{est.score(Xb, yb):.4f}"))
    return "\n".join([
        "## solvers: first- and second-order training, one fit each", "",
        _table(["problem", "solver", "iterations", "wall s", "final loss", "test score"], rows),
        "",
        "Iterations are epochs for adam, outer iterations otherwise (max_iter: adam and "
        "lbfgs 200, lm 30, hessian-free and newton 60); test score is accuracy (digits) or "
        "R^2 (regression); default tol."])


def section_sparse(opts, measure=None):
    """TF-IDF-like CSR input, adam: time per epoch and peak memory, each
    configuration in a fresh process."""
    from . import _sparse_workloads as SW

    big, small = 20000, 2000
    configs = [("cbackprop", big, "float64"), ("sklearn", big, "float64"),
               ("cbackprop", big, "float32"), ("sklearn", big, "float32"),
               ("cbackprop", small, "float32"), ("sklearn", small, "float32"),
               ("cbackprop-dense", small, "float32")]
    rounds = 1  # whole trainings in fresh processes (minutes): one round, not --repeat
    runs = {c: [] for c in configs}
    for _ in range(rounds):  # round-robin: load on a shared machine hits all alike
        for c in configs:
            runs[c].append(SW.measure(*c, opts.threads))
    rows = []
    for (impl, n, dt), rs in runs.items():
        epoch = float(np.median([r["epoch_s"] for r in rs]))
        ref = float(np.median([r["epoch_s"] for r in runs[("sklearn", n, dt)]]))
        rows.append((impl, n, dt, "dense" if impl.endswith("-dense") else "CSR",
                     f"{epoch * 1e3:.0f}", f"{ref / epoch:.2f}",
                     f"{rs[0]['input_mb']:.0f}", f"{max(r['peak_mb'] for r in rs):.0f}",
                     f"{max(r['maxrss_mb'] for r in rs):.0f}"))
    nnz = SW.DENSITY * SW.N_FEATURES
    return "\n".join([
        f"## sparse: TF-IDF-like CSR input, {SW.N_FEATURES} features, {SW.DENSITY:.1%} "
        f"non-zeros (~{nnz:.0f} a row), 10 classes, hidden {SW.HIDDEN}, adam", "",
        _table(["implementation", "rows", "dtype", "input", "ms / epoch",
                "scikit-learn / this", "input MB", "peak traced MB", "max RSS MB"], rows), "",
        f"Each configuration runs in a fresh process, one after the other ({rounds} "
        "round): ms / epoch is the median of k epochs run by `partial_fit` after a 1-epoch "
        "fit (k = 3 for 20000 rows, 9 for 2000). scikit-learn gets the same "
        "CSR matrix. Peak traced MB: tracemalloc's peak during a separate 1-epoch fit (NumPy "
        "buffers included; the input, built before, is not counted): what the fit "
        "allocates beside its input. Dense reference: cbackprop on the densified "
        f"matrix of the first {small} rows in float32 ({small} x {SW.N_FEATURES} x 4 bytes; "
        f"{big} rows would take {big * SW.N_FEATURES * 8 / 2**30:.1f} GiB in float64), "
        "beside the sparse runs on the same rows."])
