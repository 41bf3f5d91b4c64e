"""asv benchmarks of the engine: one loss-and-gradient evaluation.

Threads: every benchmark limits all BLAS/OpenMP pools (numpy's and scipy's
OpenBLAS, sklearn's OpenMP) with threadpoolctl in ``setup`` to
``threads`` threads (an asv parameter, 1 and 2: ``_common.threaded``), the
same for every implementation; compare implementations only at equal thread
counts.

The workloads and implementations live in ``benchmarks/_common.py``, shared with
``benchmarks/report.py`` (which prints the ratios side by side).
"""
import numpy as np

from ._common import (
    threaded,
    LOSS_GRAD_LARGE,
    LOSS_GRAD_SMALL,
    GemmPeakWorkload,
    LossGradWorkload,
    limit_threads,
    repeated,
)

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - older asv
    SkipNotImplemented = NotImplementedError


class _Threaded:
    """Limits the thread pools in setup, restores them in teardown."""

    def _limit(self):
        self._limits = limit_threads()

    def teardown(self, *params):
        limits = getattr(self, "_limits", None)
        if limits is not None:
            limits.restore_original_limits()


def _build_or_skip(workload, impl):
    try:
        return workload.build(impl)
    except ImportError as exc:
        msg = str(exc)

        def skip():
            raise SkipNotImplemented(msg)
        return skip


@threaded
class LossGradLarge(_Threaded):
    """784-256-256-10 relu log_loss, batch 256: cbackprop vs numpy vs sklearn vs GEMMs."""

    params = [["float64", "float32"]]
    param_names = ["dtype"]
    # each call takes milliseconds: a few samples of ~50 ms suffice
    sample_time = 0.05
    repeat = (3, 7, 5.0)
    warmup_time = 0.1
    timeout = 120

    def setup(self, dtype):
        self._limit()
        wl = LossGradWorkload(**LOSS_GRAD_LARGE, dtype=np.dtype(dtype))
        self.fns = {impl: _build_or_skip(wl, impl)
                    for impl in ("cbackprop", "numpy", "sklearn", "gemm")}
        for fn in self.fns.values():  # allocate, page in, load everything once
            try:
                fn()
            except NotImplementedError:
                pass

    def time_cbackprop(self, dtype):
        self.fns["cbackprop"]()

    def time_numpy(self, dtype):
        self.fns["numpy"]()

    def time_sklearn(self, dtype):
        self.fns["sklearn"]()

    def time_gemms_only(self, dtype):
        self.fns["gemm"]()


@threaded
class LossGradSmall(_Threaded):
    """64-100-10 relu log_loss, batch 200, float64: per-call overhead
    (a sample is CALLS calls back to back, see `_common.repeated`)."""

    CALLS = 50

    sample_time = 0.02
    repeat = (3, 7, 5.0)
    warmup_time = 0.05
    timeout = 60

    def setup(self):
        self._limit()
        wl = LossGradWorkload(**LOSS_GRAD_SMALL, dtype=np.float64)
        self.fns = {impl: repeated(_build_or_skip(wl, impl), self.CALLS)
                    for impl in ("cbackprop", "numpy")}

    def time_cbackprop(self):
        self.fns["cbackprop"]()

    def time_numpy(self):
        self.fns["numpy"]()


@threaded
class GemmPeak(_Threaded):
    """2048 x 2048 ?gemm through scipy.linalg.blas: the rate to express others against."""

    params = [["float64", "float32"]]
    param_names = ["dtype"]
    number = 1
    repeat = (3, 5, 10.0)
    warmup_time = 0
    timeout = 120

    def setup(self, dtype):
        self._limit()
        self.fn = GemmPeakWorkload(dtype=np.dtype(dtype)).build()

    def time_gemm(self, dtype):
        self.fn()
