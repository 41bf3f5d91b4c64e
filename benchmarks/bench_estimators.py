"""asv benchmarks of MLPClassifier / MLPRegressor against scikit-learn's.

Workloads a-d of workloads.md, each implementation side by side in the same
run; ``python benchmarks/report.py estimators`` prints the ratios. Threads
are limited with threadpoolctl to the ``threads`` parameter (1 and 2).
"""
import numpy as np

from ._common import limit_threads, threaded
from ._estimator_workloads import (predict_workload, torch_epoch_b, workload_a, workload_b,
                                   workload_c, workload_d)


class _Bench:
    timeout = 600

    def _setup(self, fns):
        self._limits = limit_threads()
        self.fns = fns

    def teardown(self, *params):
        # A setup that skipped (NotImplementedError) never set the limits.
        limits = getattr(self, "_limits", None)
        if limits is not None:
            limits.restore_original_limits()


@threaded
class DigitsAdam(_Bench):
    """Workload a: 200 epochs of adam on load_digits; and their GEMMs alone."""

    params = [["cbackprop", "sklearn", "gemm_epoch"]]
    param_names = ["library"]
    repeat = (2, 5, 30.0)
    number = 1

    def setup(self, library):
        self._setup(workload_a())

    def time_fit(self, library):
        self.fns[library]()


@threaded
class LargeAdam(_Bench):
    """Workload b: 2 epochs of adam on 20000 x 784, (256, 256); and the GEMMs
    of one epoch alone (divide the fit time by 2 epochs to compare)."""

    params = [["float64", "float32"], ["cbackprop", "sklearn", "gemm_epoch"]]
    param_names = ["dtype", "impl"]
    repeat = (1, 3, 60.0)
    number = 1

    def setup(self, dtype, impl):
        self._setup(workload_b(np.dtype(dtype).type))

    def time_fit(self, dtype, impl):
        self.fns[impl]()

    def peakmem_fit(self, dtype, impl):
        if impl != "gemm_epoch":
            self.fns[impl]()


@threaded
class TorchLoopB(_Bench):
    """Workload b's reference loop in PyTorch (CPU, same layers, Adam, batch
    256): one epoch, to set beside LargeAdam's per-epoch time. Skipped
    when PyTorch is not installed."""

    params = [["float64", "float32"]]
    param_names = ["dtype"]
    repeat = (1, 3, 60.0)
    number = 1

    def setup(self, dtype):
        try:
            epoch = torch_epoch_b(np.dtype(dtype).type)
        except ImportError:
            raise NotImplementedError("PyTorch is not installed")
        self._setup({"torch": epoch})

    def time_epoch(self, dtype):
        self.fns["torch"]()


@threaded
class LbfgsEvaluation(_Bench):
    """Workload c: one loss-and-gradient evaluation on all 20000 rows; and its
    GEMMs alone."""

    params = [["cbackprop", "sklearn", "gemm_epoch"]]
    param_names = ["library"]
    repeat = (2, 5, 30.0)

    def setup(self, library):
        self._setup(workload_c())

    def time_loss_grad(self, library):
        self.fns[library]()


@threaded
class RegressionAdam(_Bench):
    """Workload d: MLPRegressor (64, 64), 50 epochs of adam."""

    params = [["cbackprop", "sklearn"]]
    param_names = ["library"]
    repeat = (2, 5, 30.0)
    number = 1

    def setup(self, library):
        self._setup(workload_d())

    def time_fit(self, library):
        self.fns[library]()


@threaded
class PredictThroughput(_Bench):
    """predict_proba on 20000 rows, (256, 256)."""

    params = [["cbackprop", "sklearn"]]
    param_names = ["library"]

    def setup(self, library):
        self._setup(predict_workload())

    def time_predict_proba(self, library):
        self.fns[library]()
