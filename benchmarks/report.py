#!/usr/bin/env python
"""Side-by-side benchmark report, printed as Markdown.

    python benchmarks/report.py engine                 # one section
    python benchmarks/report.py all --threads 1        # every section
    python benchmarks/report.py engine --repeat 11 --min-time 0.1

Each section times its implementations in one process, interleaved round-robin
(repeat r runs every implementation once before repeat r + 1 starts), so that
load on a shared machine hits all of them alike; a cell is the median over
``--repeat`` (>= 7) repeats of the per-call time, each repeat running the call
enough times to last ``--min-time`` seconds, after ``--warmup`` untimed
repeats.  BLAS and OpenMP pools are limited with threadpoolctl to
``--threads`` (default: env CBACKPROP_BENCH_THREADS, else 1), for every
implementation alike.  Compare ratios within one run, not absolute times
across runs.

Sections are functions ``section(opts) -> markdown`` registered in
``SECTIONS`` (engine here; estimators, curvature, solvers and sparse in
``_report_sections.py``; threads and bounds, what two threads can reach on the
machine, in ``_thread_report.py``).  The
workloads come from ``benchmarks/_common.py``, shared with the asv suite.
"""
import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time

import numpy as np

try:  # python -m benchmarks.report
    from . import _common as C
    from . import _report_sections as RS
    from . import _thread_report as TR
except ImportError:  # python benchmarks/report.py: import the benchmarks package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import _common as C
    from benchmarks import _report_sections as RS
    from benchmarks import _thread_report as TR


# --------------------------------------------------------------------------
# timing
def _time(fn, number):
    # The collector stays on (unlike timeit): torch.func creates reference
    # cycles per call and slows down by orders of magnitude when garbage
    # piles up, or when a forced collection drops its cached transforms.
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - t0


def _calibrate(fn, min_time):
    """Calls per repeat so that one repeat lasts at least min_time (timeit autorange)."""
    number = 1
    while True:
        t = _time(fn, number)
        if t >= min_time:
            return number
        number = max(number * 2, int(number * 1.2 * min_time / max(t, 1e-9)))


def measure_interleaved(fns, repeat=7, min_time=0.05, warmup=1):
    """Median seconds per call of every callable in ``fns`` (name -> fn).

    Returns {name: (median, q1, q3)} of the per-call times over ``repeat``
    interleaved repeats.
    """
    numbers = {}
    for name, fn in fns.items():
        fn()
        numbers[name] = _calibrate(fn, min_time)
    for _ in range(warmup):
        for name, fn in fns.items():
            _time(fn, numbers[name])
    samples = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            samples[name].append(_time(fn, numbers[name]) / numbers[name])
    out = {}
    for name, s in samples.items():
        q1, _, q3 = statistics.quantiles(s, n=4)
        out[name] = (statistics.median(s), q1, q3)
    return out


# --------------------------------------------------------------------------
# formatting
def _ms(t):
    return "n/a" if t is None else f"{t * 1e3:.3g}" if t < 1e-2 else f"{t * 1e3:.1f}"


def _ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:.2f}"


def _md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(opts):
    import scipy
    import sklearn

    cb = C.cb
    if cb is not None:
        cb_desc = "{} ({})".format(getattr(cb, "__version__", "?"),
                                   os.path.dirname(cb.__file__))
    else:
        cb_desc = f"not importable: {C.CBACKPROP_IMPORT_ERROR}"
    lines = [
        f"Benchmark report, {datetime.datetime.now().isoformat(timespec='seconds')}",
        "",
        f"- threads: **{opts.threads}** (threadpoolctl limits on every BLAS/OpenMP pool)",
        f"- machine: {_cpu_model()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}",
        f"- python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, scikit-learn {sklearn.__version__}",
        f"- cbackprop {cb_desc}",
        "- load average (1, 5, 15 min) at start: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"- timing: median of {opts.repeat} interleaved repeats of >= {opts.min_time} s, "
        f"{opts.warmup} warmup repeat(s)",
        "- thread pools:",
    ]
    lines += [f"  - {line}" for line in C.threadpool_summary()]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# sections
def section_engine(opts):
    """One loss-and-gradient evaluation: cbackprop vs NumPy vs scikit-learn vs its GEMMs."""
    cases = [
        ("large", C.LOSS_GRAD_LARGE, np.float64),
        ("large", C.LOSS_GRAD_LARGE, np.float32),
        ("small", C.LOSS_GRAD_SMALL, np.float64),
    ]
    fns, workloads, notes = {}, [], []
    for tag, spec, dtype in cases:
        wl = C.LossGradWorkload(**spec, dtype=dtype)
        workloads.append((tag, wl))
        for impl in wl.IMPLS:
            try:
                fns[(tag, wl.dtype.name, impl)] = wl.build(impl)
            except ImportError:
                pass
        tol = 1e-10 if wl.dtype == np.float64 else 2e-4
        for impl, (dl, dg) in wl.check_agreement().items():
            flag = "ok" if max(dl, dg) <= tol else "**MISMATCH**"
            notes.append(f"- agreement with numpy, {wl.describe()}, {impl}: "
                         f"loss rel diff {dl:.1e}, grad max diff / max|grad| {dg:.1e} ({flag})")
    peaks = {}
    for dtype in (np.float64, np.float32):
        pk = C.GemmPeakWorkload(dtype=dtype)
        peaks[pk.dtype.name] = pk
        fns[("peak", pk.dtype.name, "gemm")] = pk.build()

    times = measure_interleaved(fns, opts.repeat, opts.min_time, opts.warmup)
    med = {k: v[0] for k, v in times.items()}
    spread = max((q3 - q1) / m for m, q1, q3 in times.values())

    peak_rate = {dt: peaks[dt].flops / med[("peak", dt, "gemm")] for dt in peaks}
    out = ["## engine: one loss_grad", "",
           "`net.loss_grad(theta, X, Y)`, log_loss, one-hot Y, random N(0, 1) X, Glorot "
           "parameters shared by all implementations.", ""]
    out.append(_md_table(
        ["GEMM", "dtype", "ms", "GFLOP/s"],
        [(f"{pk.n}x{pk.n} ?gemm (scipy.linalg.blas)", dt,
          _ms(med[("peak", dt, "gemm")]), f"{peak_rate[dt] / 1e9:.1f}")
         for dt, pk in peaks.items()]))
    out.append("")
    rows = []
    for tag, wl in workloads:
        dt = wl.dtype.name
        t = {impl: med.get((tag, dt, impl)) for impl in wl.IMPLS}
        cbt, gt = t["cbackprop"], t["gemm"]

        def rate(x):
            return "n/a" if x is None else f"{wl.flops / x / 1e9:.1f}"

        def frac(x):
            return "n/a" if x is None else f"{wl.flops / x / peak_rate[dt]:.0%}"
        rows.append((
            "{} {} N={}".format("-".join(map(str, wl.layer_sizes)), wl.activation,
                                wl.n_samples), dt,
            _ms(cbt), _ms(t["numpy"]), _ms(t["sklearn"]), _ms(gt), _ms(t["gemm_numpy"]),
            _ratio(cbt, gt), _ratio(t["sklearn"], cbt), _ratio(t["numpy"], cbt),
            rate(cbt), frac(cbt), frac(gt),
        ))
    out.append(_md_table(
        ["workload", "dtype", "cbackprop ms", "numpy ms", "sklearn ms", "gemm-only ms",
         "gemm-only (numpy's BLAS) ms",
         "cbackprop / gemm-only", "sklearn / cbackprop", "numpy / cbackprop",
         "cbackprop GFLOP/s", "cbackprop % of peak", "gemm-only % of peak"],
        rows))
    out += ["", "Notes:",
            "- flops of one loss_grad: 2N sum(n_in n_out) forward + 2N sum(n_in n_out) weight "
            "gradients + 2N sum over layers above the first of n_in n_out input deltas; "
            "peak = the 2048x2048 GEMM rate of the same dtype measured in this run.",
            "- sklearn = `MLPClassifier._backprop` (no packing of the gradient); "
            "gemm-only = the GEMMs of one loss_grad (3 + 3 + 2 for three layers) through "
            "scipy.linalg.blas, in place (each call also pays a few us of f2py overhead, "
            "visible on the small workload); gemm-only (numpy's BLAS) = the same GEMMs through "
            "`np.matmul(out=)`, i.e. numpy's own OpenBLAS build, which the numpy column uses.",
            f"- largest interquartile range / median over all cells: {spread:.0%}"]
    out += notes
    return "\n".join(out)


SECTIONS = {
    "engine": section_engine,
    "estimators": lambda opts: RS.section_estimators(opts, measure_interleaved),
    "curvature": lambda opts: RS.section_curvature(opts, measure_interleaved),
    "solvers": lambda opts: RS.section_solvers(opts),
    "threads": TR.section_threads,
    "bounds": TR.section_bounds,
    "sparse": lambda opts: RS.section_sparse(opts),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="+", choices=[*SECTIONS, "all"])
    parser.add_argument("--threads", type=int, default=C.bench_threads(),
                        help="BLAS/OpenMP threads (default: $%s or 1)" % C.THREADS_ENV)
    parser.add_argument("--repeat", type=int, default=7, help="timed repeats (>= 7)")
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds per repeat (calls per repeat are calibrated)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repeats")
    opts = parser.parse_args(argv)
    if opts.repeat < 7:
        parser.error("--repeat must be at least 7")
    names = list(SECTIONS) if "all" in opts.sections else opts.sections

    os.environ[C.THREADS_ENV] = str(opts.threads)
    limits = C.limit_threads(opts.threads)
    try:
        print(header(opts))
        for name in names:
            print()
            print(SECTIONS[name](opts), flush=True)
    finally:
        limits.restore_original_limits()


if __name__ == "__main__":
    main()
