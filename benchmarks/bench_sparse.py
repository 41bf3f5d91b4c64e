"""asv benchmarks of sparse input: cbackprop on CSR rows against scikit-learn's
MLPClassifier on the same matrix and against cbackprop on the densified matrix.

A small variant of the report's sparse workload (2000 x 5000 TF-IDF-like rows,
0.5% non-zeros, 10 classes, hidden (64,), adam, 2 epochs) so that it runs in
seconds; ``python benchmarks/report.py sparse`` runs the 20000 x 50000 one.
Threads are limited with threadpoolctl to ``CBACKPROP_BENCH_THREADS``
(default 1).
"""
import numpy as np

from ._common import limit_threads
from ._sparse_workloads import fit_fn, split_impl, tfidf


class SparseAdam:
    """Two epochs of adam on CSR input, per implementation and dtype."""

    params = [["float64", "float32"], ["cbackprop", "sklearn", "cbackprop-dense"]]
    param_names = ["dtype", "impl"]
    repeat = (2, 5, 30.0)
    number = 1
    timeout = 300

    def setup(self, dtype, impl):
        self._limits = limit_threads()
        X, y = tfidf(2000, n_features=5000, dtype=np.dtype(dtype).type)
        lib, X = split_impl(impl, X)
        self.fit = fit_fn(lib, X, y, 2)

    def teardown(self, dtype, impl):
        self._limits.restore_original_limits()

    def time_fit(self, dtype, impl):
        self.fit()

    def peakmem_fit(self, dtype, impl):
        self.fit()
