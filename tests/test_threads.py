"""Thread teams: the same bits at a thread limit whatever team runs, agreement
to rounding across limits, the ecosystem's thread controls honoured,
concurrent callers safe.

The blocked kernels cut batches into row blocks and gradients into
parameter ranges by the call's thread limit (one thread: whole GEMMs, or
the machine's blocks where they make every GEMM small: cut_rows), never by
the team the measured policy picks, so results are compared for exact
equality across team policies at one limit, and to rounding across limits.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import cbackprop as cb
from cbackprop import _threads

from common import DTYPES, assert_close, seed

# Large enough for a team (MIN_PARALLEL_FLOPS) and two row blocks.
SIZES = (20, 64, 32, 5)
N = 600
LOSSES = ["log_loss", "squared_error", "binary_log_loss", "poisson"]
SETTINGS = [pytest.param(1, "measured", id="1thread"),
            pytest.param(2, "team", id="2threads-team"),
            pytest.param(2, "alone", id="2threads-alone"),
            pytest.param(2, "measured", id="2threads-measured")]


@pytest.fixture
def policy():
    previous = _threads.set_policy("measured")
    yield _threads.set_policy
    _threads.set_policy(previous)


def _problem(loss, dtype, n=N):
    rng = np.random.default_rng(seed("threads", loss))
    X = rng.standard_normal((n, SIZES[0])).astype(dtype)
    if loss == "log_loss":
        Y = np.eye(SIZES[-1], dtype=dtype)[rng.integers(0, SIZES[-1], n)]
    elif loss == "binary_log_loss":
        Y = (rng.random((n, SIZES[-1])) < 0.5).astype(dtype)
    else:
        Y = rng.random((n, SIZES[-1])).astype(dtype)
    sw = rng.random(n).astype(dtype) + 0.5
    net = cb.Network(SIZES, activation="tanh", loss=loss, alpha=1e-3, dtype=dtype)
    return net, net.init_params(seed("threads-theta")).astype(dtype), X, Y, sw


def _at(threads, policy_name, fn):
    previous = _threads.set_policy(policy_name)
    try:
        with threadpool_limits(threads):
            return fn()
    finally:
        _threads.set_policy(previous)


def _first_order(net, theta, X, Y, sw):
    f, g = net.loss_grad(theta, X, Y, sample_weight=sw)
    return (np.array([f, net.loss(theta, X, Y, sample_weight=sw)]), g,
            net.predict(theta, X), net.raw_output(theta, X))


def _same_bits_and_rounding(run, threads, policy_name, dtype, factor=1.0):
    """run() under (threads, policy) equals it bitwise under (threads,
    'alone') and to rounding at one thread."""
    actual = _at(threads, policy_name, run)
    alone = _at(threads, "alone", run)
    one = _at(1, "alone", run)
    for a, e, o in zip(actual, alone, one):
        np.testing.assert_array_equal(a, e)
        assert_close(a, o, dtype, "rounding", factor=factor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("threads, policy_name", SETTINGS)
def test_first_order_same_bits_at_a_thread_limit(loss, dtype, threads, policy_name):
    net, theta, X, Y, sw = _problem(loss, dtype)
    _same_bits_and_rounding(lambda: _first_order(net, theta, X, Y, sw), threads,
                            policy_name, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_the_cut_follows_the_thread_limit(threads):
    plan = _problem("log_loss", np.float64)[0]._plan
    blocks, tasks = plan.cut(threads)
    machine = plan.cut(10**6)[0]
    assert blocks == min(machine, 1 << (threads - 1).bit_length())
    if threads == 1:   # whole layers: one GEMM per weight matrix
        assert blocks == 1 and [tuple(t) for t in tasks] == [
            (l, 0, n) for l, n in enumerate(SIZES[:-1])]
    assert not tasks.flags.writeable


@pytest.mark.parametrize("sizes, rows, one_thread", [
    pytest.param((64, 100, 10), 200, "machine", id="digits-halves-small"),
    pytest.param((784, 256, 256, 10), 256, "whole", id="wide-halves-large"),
    pytest.param((20, 64, 64, 1), 200, "whole", id="all-small-already"),
    pytest.param((64, 100, 10), 1347, "whole", id="full-batch")])
def test_first_order_cut_keeps_whole_gemms_unless_blocks_make_them_small(sizes, rows, one_thread):
    # One thread: whole GEMMs (a row block packs the weights again), or the
    # machine's blocks where they bring every GEMM under 1e6 multiply-adds.
    plan = cb.Network(sizes)._plan
    machine = plan.row_blocks(10**6, rows)
    assert plan.row_blocks(1, rows) == (machine if one_thread == "machine" else 1)
    assert plan.row_blocks(2, rows) == min(2, machine)


def test_loss_equals_loss_grad_value_bitwise_on_a_team():
    net, theta, X, Y, sw = _problem("log_loss", np.float32)
    f, _ = _at(2, "team", lambda: net.loss_grad(theta, X, Y, sample_weight=sw))
    assert f == _at(2, "team", lambda: net.loss(theta, X, Y, sample_weight=sw))


PRODUCT_INPUTS = [pytest.param("dense", id="dense"), pytest.param("csr", id="csr"),
                  pytest.param("zero-weight-block", id="zero-weight-block")]


@pytest.mark.parametrize("inputs", PRODUCT_INPUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["hvp", "ggn_vp", "efisher_vp"])
@pytest.mark.parametrize("threads, policy_name", SETTINGS[1:])
def test_products_same_bits_at_a_thread_limit(method, dtype, inputs, threads, policy_name):
    # Row blocks on a team (the second block's rows carry no weight in
    # zero-weight-block: its output must still be added, as zeros).
    import scipy.sparse as sp
    net, theta, X, Y, sw = _problem("log_loss", dtype)
    if inputs == "csr":
        X = sp.csr_matrix(np.where(np.abs(X) > 1.0, X, 0))
    elif inputs == "zero-weight-block":
        sw = sw.copy()
        sw[N // 2:] = 0
    V = np.random.default_rng(seed("threads-V")).standard_normal((3, net.n_params)).astype(dtype)
    assert net._scratch(cb._curvature.HvpWorkspace, N, 3).blocks(N, threads)[0] == \
        min(2, net._plan.cut(10**6)[0])

    def run():
        return (getattr(net, method)(theta, X, Y, V.T, sample_weight=sw),
                getattr(net, method)(theta, X, Y, V[0], sample_weight=sw))
    _same_bits_and_rounding(run, threads, policy_name, dtype)


@pytest.mark.parametrize("rows, k, blocks", [
    pytest.param(N, 1, 2, id="two-blocks"),
    pytest.param(90, 1, 1, id="few-rows"),
    pytest.param(N, 400, 1, id="outputs-larger-than-activations")])
def test_product_blocks_follow_the_limit_and_the_room(rows, k, blocks):
    net = _problem("log_loss", np.float64)[0]
    ws = cb._curvature.GgnVpWorkspace(net._plan, rows, k)
    machine = net._plan.cut(10**6)[0]
    assert ws.blocks(rows, 1)[0] == 1
    n, stride, parts = ws.blocks(rows, 2)
    assert n == min(blocks, machine)
    # Every block's workspace and the extra outputs fit the buffer.
    assert parts == n * stride
    assert (parts + (n - 1) * k * net.n_params) * 8 <= ws.nbytes


@pytest.mark.skipif(os.cpu_count() < 2, reason="no team on one core")
def test_products_run_on_a_team():
    net, theta, X, Y, sw = _problem("log_loss", np.float64)
    v = np.ones(net.n_params)
    _threads.reset()
    for _ in range(2):
        _at(2, "team", lambda: net.hvp(theta, X, Y, v))
    assert any(site == "PRODUCTS" and team > 0
               for (site, _), (_, team) in _threads.rates().items())


ESTIMATORS = [
    pytest.param(dict(solver="adam", max_iter=8), id="adam"),
    pytest.param(dict(solver="sgd", max_iter=8, momentum=0.9, nesterovs_momentum=True), id="sgd"),
    pytest.param(dict(solver="lbfgs", max_iter=15), id="lbfgs"),
]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("params", ESTIMATORS)
@pytest.mark.parametrize("threads, policy_name", SETTINGS)
def test_fit_same_bits_at_a_thread_limit(params, threads, policy_name):
    rng = np.random.default_rng(seed("threads-fit"))
    X = rng.standard_normal((700, 30))
    y = (X[:, :3].sum(axis=1) > 0).astype(int) + (X[:, 3] > 1)

    def fit():
        clf = cb.MLPClassifier((64, 32), batch_size=256, random_state=0, **params).fit(X, y)
        curve = [np.array(getattr(clf, "loss_curve_", [clf.loss_]))]
        return clf.coefs_ + clf.intercepts_ + curve, clf.predict_proba(X)
    # a few epochs amplify the last bits of the loss sums: 100 roundings
    def run():
        params, proba = fit()
        return np.concatenate([a.ravel() for a in params]), proba
    _same_bits_and_rounding(run, threads, policy_name, np.float64, factor=100)


def test_a_team_runs_when_allowed():
    if _threads.max_threads() < 2 and os.cpu_count() >= 2:
        with threadpool_limits(2):
            assert _threads.max_threads() == 2
    net, theta, X, Y, sw = _problem("log_loss", np.float64)
    _threads.reset()
    for _ in range(2):   # the first call wakes the team (unrecorded)
        _at(2, "team", lambda: net.loss_grad(theta, X, Y))
    rates = _threads.rates()
    if os.cpu_count() >= 2:
        assert any(site == "LOSS_GRAD" and team > 0 for (site, _), (_, team) in rates.items())


def _loss_grad_rates():
    return [v for (site, _), v in _threads.rates().items() if site == "LOSS_GRAD"]


@pytest.mark.skipif(os.cpu_count() < 2, reason="no team on one core")
def test_a_team_call_after_idle_members_is_not_recorded():
    # Members that idled wake up slowly (a wake-up, not the team's rate):
    # the first team call after a reset or after a call alone is skipped.
    net, theta, X, Y, sw = _problem("log_loss", np.float64)
    run = lambda: net.loss_grad(theta, X, Y)   # noqa: E731
    _threads.reset()
    _at(2, "team", run)
    assert _loss_grad_rates() == []
    _at(2, "team", run)
    [(alone, team)] = _loss_grad_rates()
    assert alone == 0 and team > 0
    _at(2, "alone", run)
    [(alone, team_after)] = _loss_grad_rates()
    assert alone > 0 and team_after == team
    _at(2, "team", run)
    assert _loss_grad_rates() == [(alone, team)]
    _at(2, "team", run)
    assert _loss_grad_rates()[0][1] != team


WARM_CODE = """
import numpy as np
import cbackprop as cb
from threadpoolctl import threadpool_limits
from cbackprop import _threads
counts = [_threads.warm_blas(0)]
net = cb.Network((20, 64, 32, 5), loss="log_loss")
theta, X = net.init_params(0), np.ones((600, 20))
Y = np.eye(5)[np.arange(600) % 5]
with threadpool_limits(1):
    net.loss_grad(theta, X, Y)
counts.append(_threads.warm_blas(0))
with threadpool_limits(2):
    _threads.set_policy("team")
    net.loss_grad(theta, X, Y)
counts.append(_threads.warm_blas(0))
counts.append(_threads.warm_blas(counts[-1] + 1))   # one buffer more
print(counts)
"""


def test_blas_scratch_buffers_are_written_through_once_per_member():
    # OpenBLAS maps its scratch buffers untouched, and its kernels prefetch
    # into the pages a small GEMM never writes: the first call of the process,
    # and the first of a larger team, write each member's buffer through.
    if _threads._openblas_libs()[0] is None:
        pytest.skip("SciPy's BLAS is not OpenBLAS")
    out = subprocess.run([sys.executable, "-c", WARM_CODE], capture_output=True,
                         text=True, check=True).stdout
    counts = [int(c) for c in out.strip("[]\n ").split(",")]
    assert counts[:2] == [0, 1]
    assert counts[2] == (2 if os.cpu_count() >= 2 else 1)
    assert counts[3] == counts[2] + 1


def test_numpy_blas_is_single_threaded_inside_a_computation():
    # NumPy's OpenBLAS workers, woken at the user's count by the composing
    # layer's NumPy BLAS, spin for a while after each call and took the
    # team's second core: inside a computation NumPy's pool has one thread.
    numpy_blas = _threads._openblas_libs()[1]
    if numpy_blas is None:
        pytest.skip("NumPy and SciPy share one OpenBLAS (or NumPy has none)")
    from cbackprop import optimize
    net, theta, X, Y, sw = _problem("log_loss", np.float64)
    seen = []
    with threadpool_limits(2):
        optimize.newton(net, theta, X, Y, max_iter=2,
                        callback=lambda res: seen.append(numpy_blas.get_num_threads()))
        after = numpy_blas.get_num_threads()
    assert seen and set(seen) == {1}
    assert after == 2


def test_threadpool_limits_bound_the_team():
    with threadpool_limits(1):
        assert _threads.max_threads() == 1
    with threadpool_limits(1, user_api="openmp"):
        assert _threads.max_threads() == 1
    with threadpool_limits(1, user_api="blas"):
        assert _threads.max_threads() == 1


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
def test_environment_bounds_the_team(var):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    env[var] = "1"
    code = "from cbackprop import _threads; print(_threads.max_threads())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "1"


def test_probes_back_off_while_they_lose():
    # A probe that loses clearly doubles the gap to the next, up to a bound;
    # one that comes close (the load changed) probes again soon.
    # Beyond 16 calls, the gap also stays under a quarter of a second.
    gap, gaps = 0, []
    for _ in range(6):
        gap = _threads.next_probe_gap(gap, 0.5, 1.0, 1e-4)
        gaps.append(gap)
    assert gaps == [32, 64, 128, 128, 128, 128]
    assert _threads.next_probe_gap(128, 0.95, 1.0, 1e-4) == 16
    assert _threads.next_probe_gap(16, 2.0, 1.0, 1e-4) == 16
    assert _threads.next_probe_gap(32, 0.5, 1.0, 5e-3) == 50
    assert _threads.next_probe_gap(64, 0.5, 1.0, 0.1) == 16


def test_set_policy_rejects_unknown_names():
    with pytest.raises(ValueError, match="policy must be one of"):
        _threads.set_policy("fast")


def test_the_callers_blas_threads_are_restored():
    from threadpoolctl import ThreadpoolController
    net, theta, X, Y, sw = _problem("log_loss", np.float64)
    with threadpool_limits(2):
        before = [c.num_threads for c in ThreadpoolController().lib_controllers]
        _at(2, "team", lambda: net.loss_grad(theta, X, Y))
        after = [c.num_threads for c in ThreadpoolController().lib_controllers]
    assert before == after


def test_concurrent_callers_get_serial_results(policy):
    net, theta, X, Y, sw = _problem("log_loss", np.float64)
    V = np.random.default_rng(seed("threads-V")).standard_normal((net.n_params, 2))
    rng = np.random.default_rng(seed("threads-concurrent"))
    Xc = rng.standard_normal((300, 20))
    yc = (Xc[:, 0] > 0).astype(int)

    def work():
        clf = cb.MLPClassifier((32,), max_iter=5, random_state=0, batch_size=100).fit(Xc, yc)
        return (net.loss_grad(theta, X, Y)[1], net.hvp(theta, X, Y, V),
                net.predict(theta, X), clf.coefs_[0])
    with threadpool_limits(2):
        expected = work()
        results = [None] * 4

        def run(i):
            results[i] = work()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got in results:
        for a, e in zip(got, expected):
            np.testing.assert_array_equal(a, e)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_sparse_fit_same_bits_at_every_thread_count(solver):
    import scipy.sparse as sp
    X = sp.random(700, 300, density=0.05, format="csr", random_state=seed("threads-csr"))
    y = np.asarray(X[:, :50].sum(axis=1)).ravel() > np.median(np.asarray(X[:, :50].sum(axis=1)))

    def fit():
        clf = cb.MLPClassifier((64,), solver=solver, max_iter=6, batch_size=128,
                               random_state=0).fit(X, y)
        return clf.coefs_ + clf.intercepts_ + [clf.predict_proba(X)]
    # The teams give the same bits; scipy's L-BFGS-B driver's own BLAS calls
    # (dot products of P = 19k entries, threaded by OpenBLAS) round
    # differently at two threads, hence "rounding" across thread counts.
    one = _at(1, "alone", fit)
    team, alone = _at(2, "team", fit), _at(2, "alone", fit)
    for t, a, e in zip(team, alone, one):
        np.testing.assert_array_equal(t, a)
        assert_close(t, e, np.float64, "rounding", factor=100)
