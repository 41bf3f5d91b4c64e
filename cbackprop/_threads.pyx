"""Thread teams: how many threads a kernel call uses, and single-threaded BLAS
inside them.

The blocked kernels split a batch into row blocks and a gradient into
parameter ranges (``_network.pyx``), or a curvature-vector product into row
blocks (``_curvature.pyx``), and run the pieces on an OpenMP team,
each thread calling BLAS single-threaded: small GEMMs split by hand scale
where BLAS's own threading of the same GEMMs does not (its threads wake up
for every call, and two BLAS pools of one process spin against each other).

A call may use ``min(omp_get_max_threads(), BLAS threads, parts)``
threads, so thread counts follow ``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS`` and threadpoolctl's ``threadpool_limits`` over
either pool; below ``MIN_PARALLEL_FLOPS`` it runs on the caller alone. The
pieces depend on the thread limit (``thread_limit``), not on the team size,
so results at a thread setting are the same bits whatever team runs, and
the team size is free to follow what measures best:

A team needs every member scheduled at each of its barriers; when other
processes keep cores busy, a member waits for a time slice (milliseconds)
at every barrier and a team of two runs slower than one thread. So the
team size is measured, not assumed: per size class of calls (log2 of their
flops), exponential averages of the rate (flops per second of wall time)
with and without a team decide, and a probe call of a class now and then
runs the other way to follow changes in load: ``PROBE`` calls after the
last, twice as many after each probe that lost clearly, up to ``PROBE_MAX``
(``next_probe_gap``). On an idle machine the team wins and the caller
alone runs 1 call in ``PROBE_MAX`` at last; on a busy one the caller runs
alone and tries the team as rarely, each try costing a wait for the busy
core. A team call whose members idled before it (the class's last call ran
alone) measures their wake-up, not the team, and is not recorded; a probe
of the team then measures the call after it (unless the first was over 4x
slower than the caller alone: a busy core, a lost probe). Recorded, such
cold probes lost every time on the 2-core VM and kept a digits fit on one
core (1.0x at two threads instead of 1.5x).

Inside every kernel call BLAS runs single-threaded: team members call it
side by side, and a kernel that is not blocked runs on the caller alone
(at the sizes of these kernels BLAS's own threads made calls up to 1.15x
slower, and OpenBLAS's rounding depends on its thread count: a fixed thread
setting must give the same bits whoever else is running). OpenBLAS's thread
count is process-wide (``openblas_set_num_threads_local`` is global in the
pthreads builds SciPy ships), so, as scikit-learn's ``threadpool_limits``
around its OpenMP loops does, the first kernel call to enter sets the
OpenBLAS that SciPy's ``cython_blas`` calls (found once, through
threadpoolctl) to one thread and the last to leave restores the user's
count; concurrent calls share the section under a lock. NumPy's own
OpenBLAS (another library in the wheels) is held at one thread in the same
section: its workers, woken at the user's count by a NumPy BLAS call of the
composing layer, spin for a while after it on the cores the team needs.
With another BLAS every call runs on the caller alone and BLAS threads as
it does.

The section's first entry, and the first of a larger team, also writes each
member's OpenBLAS scratch buffer through once (``_warm_buffer``): small
GEMMs on a buffer's untouched pages ran at a third of the GEMM rate on the
2-core AMD EPYC VM.
"""
import os

from cython.parallel cimport prange
from libc.stdlib cimport calloc, free
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from scipy.linalg.cython_blas cimport dgemm

cdef extern from "_omp.h":
    int omp_get_max_threads() noexcept nogil

from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_acquire_lock, PyThread_release_lock)

ctypedef void (*set_fn)(int) noexcept nogil
ctypedef int (*get_fn)() noexcept nogil

# Below this many flops per call a team costs more (waking threads, one more
# barrier) than the second thread saves.
cdef double MIN_PARALLEL_FLOPS = 1.5e6

cdef enum:
    PROBE = 16        # calls between two probes of the other way, at first
    PROBE_MAX = 128   # ... and at most, while probes keep losing
    BUCKETS = 64

# ... and at most this long, unless that is under PROBE calls.
cdef double PROBE_SECONDS = 0.25

# Benign races: concurrent callers may interleave updates of a class's
# averages (8-byte stores); the averages only choose team sizes.
cdef double _rate[N_SITES][BUCKETS][2]  # [site][class][0: alone, 1: team] flops / s
cdef unsigned int _calls[N_SITES][BUCKETS]
cdef unsigned int _gap[N_SITES][BUCKETS]     # calls from one probe to the next (0: PROBE)
cdef unsigned int _next[N_SITES][BUCKETS]    # the call that probes next (0: PROBE)
# A team whose members idled (the class's last call ran alone, or none ran)
# starts cold: on the 2-core VM a call of 210 us took 55 us more after 0.3
# ms idle and 200 us more after 10 ms (members asleep, caches cold), while
# the warm team ran the digits epoch 1.5x faster than the caller alone. Such
# a call measures the wake-up, not the team: it is not recorded, and a probe
# of the team runs one call more, the one it measures.
cdef bint _warm[N_SITES][BUCKETS]      # the class's last call ran as a team
cdef bint _pending[N_SITES][BUCKETS]   # a team probe woke its members: measure the next call
cdef int _policy = 0                      # 0: measured, 1: always team, 2: always alone

cdef set_fn _set_threads = NULL
cdef get_fn _get_threads = NULL
# NumPy's own OpenBLAS, when it is another library than SciPy's (the wheels).
cdef set_fn _np_set_threads = NULL
cdef get_fn _np_get_threads = NULL
cdef bint _configured = False
# The single-threaded BLAS section: callers inside it, and the user's counts.
cdef PyThread_type_lock _lock = PyThread_allocate_lock()
cdef int _inside = 0
cdef int _user_threads = 1
cdef int _np_user_threads = 1
# OpenBLAS scratch buffers (one per concurrent caller) written through once.
cdef int _warm_buffers = 0


def _openblas_libs():
    """threadpoolctl's controllers of the OpenBLAS that SciPy's BLAS calls
    and of NumPy's own (None where not found, or NumPy's where it is SciPy's)."""
    try:
        import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None, None
    libs = [c for c in ThreadpoolController().lib_controllers
            if c.internal_api == "openblas"]
    import numpy
    import scipy

    def own(package):
        site = os.path.dirname(os.path.dirname(os.path.realpath(package.__file__)))
        root = os.path.join(site, package.__name__)
        return [c for c in libs if os.path.realpath(c.filepath).startswith(root)]
    scipy_libs, numpy_libs = own(scipy), own(numpy)
    sp = scipy_libs[0] if scipy_libs else (libs[0] if len(libs) == 1 else None)
    np_ = numpy_libs[0] if numpy_libs else None
    if np_ is not None and sp is not None and np_.filepath == sp.filepath:
        np_ = None
    return sp, np_


def _symbol(dynlib, names):
    import ctypes
    for name in names:
        fn = getattr(dynlib, name, None)
        if fn is not None:
            return ctypes.cast(fn, ctypes.c_void_p).value
    return None


def _controls(lib):
    """(set, get) addresses of an OpenBLAS's thread count functions, or None."""
    pre = getattr(lib, "_symbol_prefix", "")
    post = getattr(lib, "_symbol_suffix", "")
    setter = _symbol(lib.dynlib, [f"{pre}openblas_set_num_threads{post}",
                                  "openblas_set_num_threads"])
    get = _symbol(lib.dynlib, [f"{pre}openblas_get_num_threads{post}",
                               "openblas_get_num_threads"])
    return None if setter is None or get is None else (setter, get)


def _configure():
    """Find OpenBLAS's thread controls (once per process): SciPy's, which the
    kernels call, and NumPy's, whose workers, woken at the user's count by
    the composing layer's NumPy BLAS, kept spinning on the team's cores (two
    vector dots of a fit's set-up made workload b's epoch at two threads
    run at the one-thread speed)."""
    global _set_threads, _get_threads, _np_set_threads, _np_get_threads, _configured
    _configured = True
    sp, np_ = _openblas_libs()
    found = None if sp is None else _controls(sp)
    if found is None:
        return
    _set_threads = <set_fn><size_t>found[0]
    _get_threads = <get_fn><size_t>found[1]
    found = None if np_ is None else _controls(np_)
    if found is not None:
        _np_set_threads = <set_fn><size_t>found[0]
        _np_get_threads = <get_fn><size_t>found[1]


def max_threads():
    """Threads a large call of the blocked kernels may use now (>= 1)."""
    if not _configured:
        _configure()
    return thread_limit()


cdef int thread_limit() noexcept nogil:
    """Threads a kernel call may use now: min(OpenMP's max threads, the
    user's count of the OpenBLAS SciPy calls), 1 without that OpenBLAS (no
    teams). The blocked kernels cut their work by it (_network.cut_for)."""
    cdef int n
    if not _configured:
        with gil:
            _configure()
    if _set_threads == NULL:
        return 1
    n = min(omp_get_max_threads(), _enter())
    _leave()
    return max(1, n)


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + 1e-9 * ts.tv_nsec


cdef inline bint _use_team(int site, int b, bint* probe) noexcept nogil:
    """Team or alone for the next call of class b at site (see the module
    notes); probe: whether the call tries the slower way."""
    cdef double alone = _rate[site][b][0], team = _rate[site][b][1]
    probe[0] = False
    if _policy != 0:
        return _policy == 1
    _calls[site][b] += 1
    if _pending[site][b]:
        probe[0] = True
        return True
    if team == 0.0:
        return True
    if alone == 0.0:
        return False
    probe[0] = _calls[site][b] >= (_next[site][b] if _next[site][b] else PROBE)
    if probe[0]:
        _next[site][b] = 0xFFFFFFFFu    # one probe at a time: team_close sets the next
    return (team > alone) != probe[0]


def next_probe_gap(unsigned int gap, double probed, double best, double call_seconds):
    """Calls to the probe after one that measured `probed` flops/s against
    the faster way's average `best` (calls of `call_seconds` that way): back
    to PROBE when the probe came close (its way may be about to win: the
    load changed), else twice the gap, at most PROBE_MAX calls and, beyond
    PROBE calls, PROBE_SECONDS. A lost probe costs a team whose member waits
    for a busy core for milliseconds: on a busy machine probes grow rare, and
    on an idle one the caller alone runs rarely too, while a change of load
    is seen within a fraction of a second."""
    return _next_gap(gap, probed, best, call_seconds)


cdef inline unsigned int _next_gap(unsigned int gap, double probed, double best,
                                   double call_seconds) noexcept nogil:
    cdef double cap = PROBE_SECONDS / call_seconds if call_seconds > 0.0 else PROBE_MAX
    if gap == 0:
        gap = PROBE
    if probed >= 0.9 * best:
        return PROBE
    return <unsigned int>max(<double>PROBE, min(2.0 * gap, PROBE_MAX, cap))


cdef inline int _bucket(double flops) noexcept nogil:
    cdef int b = 0
    while flops >= 2.0 and b < BUCKETS - 1:
        flops *= 0.5
        b += 1
    return b


cdef int _enter() noexcept nogil:
    """Enter the single-threaded BLAS section; returns the user's BLAS
    thread count."""
    cdef int user
    PyThread_acquire_lock(_lock, 1)
    if _inside == 0:
        _user_threads_set(_get_threads())
        _set_threads(1)
        if _np_set_threads != NULL:
            _np_user_threads_set(_np_get_threads())
            _np_set_threads(1)
    _inside_add(1)
    user = _user_threads
    PyThread_release_lock(_lock)
    return user


cdef void _leave() noexcept nogil:
    PyThread_acquire_lock(_lock, 1)
    _inside_add(-1)
    if _inside == 0:
        _set_threads(_user_threads)
        if _np_set_threads != NULL:
            _np_set_threads(_np_user_threads)
    PyThread_release_lock(_lock)


cdef inline void _inside_add(int d) noexcept nogil:
    global _inside
    _inside += d


cdef inline void _user_threads_set(int n) noexcept nogil:
    global _user_threads
    _user_threads = n


cdef inline void _np_user_threads_set(int n) noexcept nogil:
    global _np_user_threads
    _np_user_threads = n


cdef void team_open(Team* team, Site site, double flops,
                    Py_ssize_t max_parts) noexcept nogil:
    """Size the team of a call of `flops` at `site` split into at most
    `max_parts` pieces, and enter the single-threaded BLAS section until
    team_close."""
    cdef int n
    if not _configured:
        with gil:
            _configure()
    team.n = 1
    team.bucket = -1
    team.probe = False
    team.site = site
    if _set_threads == NULL:
        return
    n = min(omp_get_max_threads(), _enter(), <int>min(max_parts, 1 << 20))
    _warm_blas(max(n, 1))
    if flops < MIN_PARALLEL_FLOPS or n < 2:
        return
    team.bucket = _bucket(flops)
    team.flops = flops
    if _use_team(site, team.bucket, &team.probe):
        team.n = n
    team.start = _now()


cdef void _warm_blas(int n) noexcept nogil:
    """Let n concurrent callers' OpenBLAS scratch buffers be written through
    once (first call of the process, or of a larger team): see _warm_buffer."""
    global _warm_buffers
    cdef int i
    if n <= _warm_buffers:
        return
    if n == 1:
        _warm_buffer()
    else:
        # Side by side, so that each member holds a buffer of its own.
        for i in prange(n, num_threads=n, schedule="static", chunksize=1):
            _warm_buffer()
    _warm_buffers = n


cdef void _warm_buffer() noexcept nogil:
    """One GEMM that packs its operands through the first megabytes of the
    OpenBLAS scratch buffer it runs on (m above every x86 kernel's P block,
    so that B is packed whole). OpenBLAS maps that buffer untouched, and its
    GEMM kernels prefetch past the packed panels of a small call into pages
    never written: on the 2-core AMD EPYC VM every such prefetch paid a page
    walk that found nothing, and float32 GEMMs of the shapes of a batch (m,
    n <= 320) ran at a third of the GEMM rate until some larger GEMM had
    written those pages (workload b's float32 epoch: 2.15 s, 0.90 s after
    this). About 0.2 GFLOP, once per buffer."""
    cdef int m = 768, k = 256, n = 512
    cdef double one = 1.0, zero = 0.0
    cdef double* w = <double*>calloc(m * k + m * n, sizeof(double))
    if w == NULL:
        return
    # B (k, n) is read from A's storage: only the packing's writes matter.
    dgemm("N", "N", &m, &n, &k, &one, w, &m, w, &k, &zero, w + m * k, &m)
    free(w)


cdef void blas_open(Team* team) noexcept nogil:
    """For a kernel that is not blocked: run it on the caller alone with
    single-threaded BLAS (see the module notes) until team_close."""
    team_open(team, LOSS_GRAD, 0.0, 1)


cdef inline void _record(double* avg, double rate) noexcept nogil:
    avg[0] = rate if avg[0] == 0.0 else avg[0] + 0.25 * (rate - avg[0])


cdef void team_close(Team* team) noexcept nogil:
    cdef double dt, rate
    if _set_threads == NULL:
        return
    if team.bucket >= 0:
        dt = _now() - team.start
        rate = team.flops / dt if dt > 0.0 else 0.0
        if team.n > 1 and not _warm[team.site][team.bucket]:
            _woke(team, rate)
        elif team.probe:
            # A probe's one sample stands for its way (probes are rare, and
            # the load may have changed since the last); the next probe is
            # scheduled whatever the sample (no rate: a lost probe).
            _pending[team.site][team.bucket] = False
            _probed(team, rate)
        elif rate > 0.0:
            _record(&_rate[team.site][team.bucket][1 if team.n > 1 else 0], rate)
        _warm[team.site][team.bucket] = team.n > 1
    _leave()


cdef inline void _woke(const Team* team, double rate) noexcept nogil:
    """After a team call whose members idled: unrecorded, and a probe
    measures its next call, unless this one was over 4x slower than the
    caller alone (a member waited for a busy core, not for a wake-up: the
    probe lost)."""
    if not team.probe:
        return
    if 4.0 * rate >= _rate[team.site][team.bucket][0]:
        _pending[team.site][team.bucket] = True
    else:
        _probed(team, rate)


cdef inline void _probed(const Team* team, double rate) noexcept nogil:
    if rate > 0.0:
        _rate[team.site][team.bucket][1 if team.n > 1 else 0] = rate
    _reschedule(team, rate)


cdef inline void _reschedule(const Team* team, double rate) noexcept nogil:
    """After a probe: when the next one runs (next_probe_gap)."""
    cdef int i = team.site, b = team.bucket
    cdef double best = _rate[i][b][0 if team.n > 1 else 1]
    _gap[i][b] = _next_gap(_gap[i][b], rate, best, team.flops / best if best > 0.0 else 0.0)
    _next[i][b] = _calls[i][b] + _gap[i][b]


def warm_blas(int n=1):
    """Write the OpenBLAS scratch buffers of n concurrent callers through
    once (the kernels do on their first call, and on a larger team's; a
    benchmark's bare GEMMs call this first); returns how many are warm
    (n = 0: only that)."""
    if not _configured:
        _configure()
    if _set_threads != NULL and n > 0:
        _enter()
        _warm_blas(n)
        _leave()
    return _warm_buffers


def rates():
    """{(site, size class): (rate alone, rate as a team)} measured so far,
    flops/s (Site names the sites)."""
    cdef int i, b
    out = {}
    for i in range(<int>N_SITES):
        for b in range(BUCKETS):
            if _rate[i][b][0] or _rate[i][b][1]:
                out[(Site(i).name, b)] = (_rate[i][b][0], _rate[i][b][1])
    return out


def reset():
    """Forget the measurements (benchmarks: start every case alike)."""
    cdef int i, b
    for i in range(<int>N_SITES):
        for b in range(BUCKETS):
            _rate[i][b][0] = _rate[i][b][1] = 0.0
            _calls[i][b] = _gap[i][b] = _next[i][b] = 0
            _warm[i][b] = _pending[i][b] = False


def set_policy(policy):
    """'measured' (default), 'team' (always a team when one is allowed) or
    'alone' (never): tests and benchmarks compare the two; results are the
    same bits under all three."""
    global _policy
    codes = {"measured": 0, "team": 1, "alone": 2}
    if policy not in codes:
        raise ValueError(f"policy must be one of {sorted(codes)}, got {policy!r}")
    previous = [k for k, v in codes.items() if v == _policy][0]
    _policy = codes[policy]
    return previous


def blas_section(fn):
    """Decorator: run ``fn`` (a public computation of cbackprop) inside the
    single-threaded BLAS section, so that the composing layer's own calls to
    SciPy's BLAS (assembly GEMMs, LAPACK, ARPACK, scipy's L-BFGS-B) run
    single-threaded like the kernels': one pool setting per computation
    instead of one per kernel call (OpenBLAS's workers woken for the small
    GEMMs between two kernels made net A's ``diag_ggn`` 1.6x slower at two
    threads), and the same bits at a thread setting."""
    import functools

    @functools.wraps(fn)
    def run_single_blas(*args, **kwargs):
        if not _configured:
            _configure()
        if _set_threads == NULL:
            return fn(*args, **kwargs)
        _enter()
        try:
            return fn(*args, **kwargs)
        finally:
            _leave()
    return run_single_blas
