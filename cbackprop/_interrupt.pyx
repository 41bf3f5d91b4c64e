"""Ctrl-C inside long nogil kernels.

Python runs a signal handler (SIGINT's raises KeyboardInterrupt) only when
the main thread next executes bytecode or calls ``PyErr_CheckSignals``: a
kernel that keeps the GIL released for seconds would otherwise notice a
Ctrl-C only when it returns. The kernels whose single call can run that long
(Levenberg-Marquardt's loop, the dense Kronecker-sum accumulations) call
:c:func:`check_interrupt` between blocks of rows and propagate its -1.

Only the main thread runs signal handlers, so other threads (a Dask worker's
pool, threads of the caller) return at once without touching the GIL; in
the main thread the check costs one GIL round trip, about a microsecond, per
block of rows (milliseconds of work or more).
"""
import threading

from cpython.exc cimport PyErr_CheckSignals

cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident() nogil

cdef unsigned long _main_thread = threading.main_thread().ident


cdef int check_interrupt() except -1 nogil:
    """Run the pending signal handlers in the main thread; -1 with the
    handler's exception (KeyboardInterrupt for SIGINT) set when one raised."""
    if PyThread_get_thread_ident() != _main_thread:
        return 0
    with gil:
        PyErr_CheckSignals()
    return 0
