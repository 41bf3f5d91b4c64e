"""asv benchmarks of the curvature quantities on net A (64-32-10 tanh, 512 digits),
and of the dense matrices on a net with two hidden layers (10-20-20-3).

cbackprop side by side with torch.func and BackPACK (DiagGGNExact, DiagHessian,
KFLR as the exact "kfac", KFAC as "kfac_mc") in the same run, each skipped when
not installed. Report quantities in multiples of one gradient
(``python benchmarks/report.py curvature``). Threads: limited with
threadpoolctl to the ``threads`` parameter (1 and 2) for every library.
"""
from ._common import limit_threads, repeated, threaded
from ._curvature_workloads import (backpack_quantities, cbackprop_quantities, net_a,
                                   net_deep, torch_quantities)

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - older asv
    SkipNotImplemented = NotImplementedError

QUANTITIES = ["loss_grad", "hvp", "ggn_vp", "hessian", "ggn", "diag_ggn",
              "diag_hessian", "kfac", "top5_eigenvalues"]


@threaded
class NetACurvature:
    """Each curvature quantity of net A, cbackprop vs torch.func. A sample of
    a sub-millisecond quantity is CALLS of them back to back (the same count
    for every library, see `_common.repeated`)."""

    CALLS = {"loss_grad": 20, "hvp": 20, "ggn_vp": 20, "diag_ggn": 10,
             "diag_hessian": 10, "kfac": 10, "kfac_mc": 10}

    params = [QUANTITIES + ["kfac_mc"], ["cbackprop", "torch", "backpack"]]
    param_names = ["quantity", "library"]
    timeout = 300
    repeat = (3, 7, 10.0)

    def setup(self, quantity, library):
        self._limits = limit_threads()
        args = net_a()
        builders = {"cbackprop": cbackprop_quantities, "torch": torch_quantities,
                    "backpack": backpack_quantities}
        try:
            fns = builders[library](*args)
        except ImportError as exc:
            raise SkipNotImplemented(f"{library} not installed: {exc}")
        fn = fns.get(quantity)
        if fn is None:
            raise SkipNotImplemented(f"{quantity} has no {library} counterpart here")
        fn()
        self.fn = repeated(fn, self.CALLS.get(quantity, 1))

    def teardown(self, quantity, library):
        self._limits.restore_original_limits()

    def time_quantity(self, quantity, library):
        self.fn()


@threaded
class DeepNetDense:
    """Dense and per-layer block curvature of the 10-20-20-3 net (two hidden
    layers), cbackprop alone: the exact Hessian against the GGN of the same
    Kronecker kernels."""

    params = [["hessian", "block_hessian", "ggn", "block_ggn"]]
    param_names = ["quantity"]
    timeout = 120
    repeat = (3, 7, 10.0)

    def setup(self, quantity):
        self._limits = limit_threads()
        net, theta, X, Y = net_deep()
        method = getattr(net, quantity)
        self.fn = lambda: method(theta, X, Y)
        self.fn()

    def teardown(self, quantity):
        self._limits.restore_original_limits()

    def time_quantity(self, quantity):
        self.fn()
