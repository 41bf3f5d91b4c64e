"""cbackprop on Dask: a two-process LocalCluster gives the in-memory numbers.

One cluster for the module (started offline on 127.0.0.1). Every distributed
quantity is compared with the in-memory one on the same (computed) data, to
1e-10 relative in float64, for several chunkings; the in-memory quantities are
themselves checked against the dense reference in the other test modules.
"""
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
import dask.array as da  # noqa: E402

import cbackprop  # noqa: E402
from cbackprop import MLPClassifier, MLPRegressor, curvature, optimize  # noqa: E402
from cbackprop._problem import Problem, make_problem, sum_over_parts  # noqa: E402
from cbackprop.dask import DaskMLPClassifier, DaskMLPRegressor  # noqa: E402

RTOL = 1e-10
N = 60
CHUNKINGS = {"one-chunk": (N,), "two-uneven": (23, 37), "many": (7,) * 8 + (4,)}
SIZES = [4, 3, 3]


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
    with cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)   # both registered before the first test
        yield c


def close(a, b, rtol=RTOL):
    """max |a - b| <= rtol * max |a| (relative to the array's scale)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(), np.finfo(np.float64).tiny)
    return np.abs(a - b).max() <= rtol * scale


def data(seed=0, n_classes=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, SIZES[0]))
    labels = rng.integers(0, n_classes, N)
    y_reg = X @ rng.standard_normal(SIZES[0]) + 0.1 * rng.standard_normal(N)
    sw = rng.uniform(0.5, 2.0, N)
    return X, labels, y_reg, sw


def chunked(chunks, *arrays):
    return [None if a is None else da.from_array(a, chunks=(chunks,) + a.shape[1:])
            for a in arrays]


# ---------------------------------------------------------------- the problem
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("chunking", list(CHUNKINGS), ids=list(CHUNKINGS))
def test_problem_matches_in_memory(client, chunking, weighted):
    X, labels, _, sw = data()
    sw = sw if weighted else None
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "tanh", "log_loss", alpha=0.3)
    theta = net.init_params(np.random.RandomState(0))
    local = Problem(net, X, Y, sw)
    remote = make_problem(net, *chunked(CHUNKINGS[chunking], X, Y, sw))
    assert remote.n_groups == min(2, len(CHUNKINGS[chunking]))
    assert remote.weight_sum == pytest.approx(local.weight_sum, rel=1e-14)
    g1, g2 = np.empty(net.n_params), np.empty(net.n_params)
    assert close(local.loss_grad(theta, g1), remote.loss_grad(theta, g2))
    assert close(g1, g2)
    assert close(local.loss(theta), remote.loss(theta))
    V = np.random.default_rng(1).standard_normal((2, net.n_params))
    for kind in ("hvp", "ggn_vp", "efisher_vp"):
        want = local.product(kind, theta, V, np.empty_like(V))
        assert close(want, remote.product(kind, theta, V, np.empty_like(V))), kind
    out = np.empty((N, 3))
    assert close(local.raw_output(theta, np.empty((N, 3)), True),
                 remote.raw_output(theta, out, True))
    # Any row-summed quantity of the in-memory problem, e.g. the K-FAC factors
    # a 'kfac' solver will need, is one sum over the parts.
    from cbackprop import _assembly
    for (A1, G1), (A2, G2) in zip(_assembly.kfac(local, theta),
                                  sum_over_parts(remote, _assembly.kfac, theta)):
        assert close(A1, A2) and close(G1, G2)
    idx = np.arange(3, N, 4)
    assert close(local.subsample(idx).loss(theta), remote.subsample(idx).loss(theta))
    assert close(local.rows(slice(10, 50)).loss(theta), remote.rows(slice(10, 50)).loss(theta))


# ---------------------------------------------------------------- curvature and optimize
@pytest.mark.parametrize("chunking", ["two-uneven", "many"])
def test_curvature_operators(client, chunking):
    X, _, y_reg, sw = data()
    net = cbackprop.Network(SIZES[:2] + [1], "softplus", "squared_error", alpha=0.1)
    theta = net.init_params(np.random.RandomState(1))
    dX, dy, dsw = chunked(CHUNKINGS[chunking], X, y_reg, sw)
    V = np.random.default_rng(2).standard_normal((net.n_params, 3))
    for cls in (curvature.HessianOperator, curvature.GGNOperator, curvature.EFisherOperator):
        local, remote = cls(net, theta, X, y_reg, sw), cls(net, theta, dX, dy, dsw)
        assert close(local.matmat(V), remote.matmat(V)), cls.__name__
    if chunking != "two-uneven":
        return   # the spectral tools (one round trip per product) on one chunking
    local = curvature.HessianOperator(net, theta, X, y_reg, sw)
    remote = curvature.HessianOperator(net, theta, dX, dy, dsw, batch_size=5)
    assert close(curvature.eigenvalues(local, k=2, return_eigenvectors=False),
                 curvature.eigenvalues(remote, k=2, return_eigenvectors=False))
    assert close(curvature.trace(local, n_matvecs=6, random_state=0),
                 curvature.trace(remote, n_matvecs=6, random_state=0))
    assert close(curvature.spectral_density(local, n_probes=2, n_iter=5, random_state=0)[1],
                 curvature.spectral_density(remote, n_probes=2, n_iter=5, random_state=0)[1])


SOLVER_CASES = {
    "lm": ("levenberg_marquardt", dict(max_iter=6)),
    "lm-rows": ("levenberg_marquardt", dict(max_iter=4, accumulation="rows", block_size=5)),
    "hessian-free": ("hessian_free", dict(max_iter=3, cg_max_iter=10)),
    "hessian-free-batch": ("hessian_free", dict(max_iter=2, cg_max_iter=8,
                                                curvature_batch_size=20,
                                                preconditioner="diag_ggn", random_state=0)),
    "newton": ("newton", dict(max_iter=4)),
    "kfac": ("kfac", dict(max_iter=6)),
    "kfac-empirical": ("kfac", dict(max_iter=5, curvature="empirical", inverse_every=2)),
    "kfac-fixed-rate": ("kfac", dict(max_iter=5, learning_rate=0.5, momentum=0.3,
                                     kl_clip=0.1)),
}


@pytest.mark.parametrize("case", list(SOLVER_CASES), ids=list(SOLVER_CASES))
def test_optimize_solvers(client, case):
    name, kw = SOLVER_CASES[case]
    X, labels, _, sw = data()
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "tanh", "log_loss", alpha=0.2)
    theta0 = net.init_params(np.random.RandomState(0))
    solver = getattr(optimize, name)
    want = solver(net, theta0, X, Y, sw, **kw)
    got = solver(net, theta0, *chunked(CHUNKINGS["many"], X, Y, sw), **kw)
    assert (got.status, got.nit, got.nfev, got.njev, got.nhev) == (
        want.status, want.nit, want.nfev, want.njev, want.nhev)
    assert close(want.x, got.x) and close(want.fun, got.fun) and close(want.jac, got.jac)


def test_curvature_batch_runs_in_one_task(client, monkeypatch):
    from cbackprop._dask_problem import DaskProblem
    X, labels, _, sw = data()
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "tanh", "log_loss", alpha=0.2)
    theta = net.init_params(np.random.RandomState(0))
    idx = np.arange(5, N, 3)
    local = Problem(net, X, Y, sw)
    remote = make_problem(net, *chunked(CHUNKINGS["many"], X, Y, sw))
    assert close(local.on_subsample(idx, Problem.loss, theta),
                 remote.on_subsample(idx, Problem.loss, theta))
    # Rows of zero weight: the full data's curvature stands for theirs.
    sw0 = sw.copy()
    sw0[idx] = 0.0
    remote0 = make_problem(net, *chunked(CHUNKINGS["many"], X, Y, sw0))
    assert close(remote0.on_subsample(idx, Problem.loss, theta),
                 Problem(net, X, Y, sw0).loss(theta))
    # Hessian-free on a curvature mini-batch: each CG loop is one task on one
    # worker; the rounds over all workers are the losses and gradients alone.
    rounds, batches = [], []
    real_round, real_batch = DaskProblem._round, DaskProblem._batch_round
    monkeypatch.setattr(DaskProblem, "_round", lambda self, fn, *a: (
        rounds.append(fn.__name__), real_round(self, fn, *a))[1])
    monkeypatch.setattr(DaskProblem, "_batch_round", lambda self, *a: (
        batches.append(1), real_batch(self, *a))[1])
    kw = dict(max_iter=3, cg_max_iter=8, curvature_batch_size=20, preconditioner="diag_ggn",
              random_state=0)
    want = optimize.hessian_free(net, theta, X, Y, sw, **kw)
    got = optimize.hessian_free(net, theta, *chunked(CHUNKINGS["many"], X, Y, sw), **kw)
    assert got.nhev == want.nhev > 3 * got.nit and close(want.x, got.x)
    assert len(batches) == got.nit == 3
    assert set(rounds) == {"_loss_grad_part"}, set(rounds)
    # A batch too large for one task keeps its rows spread: a round per product.
    from cbackprop import _dask_problem
    monkeypatch.setattr(_dask_problem, "ONE_TASK_WORK", 0)
    del rounds[:], batches[:]
    spread = optimize.hessian_free(net, theta, *chunked(CHUNKINGS["many"], X, Y, sw), **kw)
    assert spread.nhev == want.nhev and close(want.x, spread.x) and not batches
    assert "_product_part" in rounds


def test_quasi_hessian(client):
    X, labels, _, sw = data()
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "relu", "log_loss", alpha=0.2)
    theta = net.init_params(np.random.RandomState(0))
    want = optimize.quasi_hessian(net, theta, X, Y, sw)
    got = optimize.quasi_hessian(net, theta, *chunked(CHUNKINGS["two-uneven"], X, Y, sw))
    for a, b in zip(want, got):
        assert close(a, b)


# ---------------------------------------------------------------- estimators
FULL_BATCH = ["lbfgs", "lm", "hessian-free", "newton", "kfac"]


def _fit_pair(kind, solver, chunks, weighted, **kw):
    X, labels, y_reg, sw = data()
    y = labels if kind == "classifier" else y_reg
    sw = sw if weighted else None
    # Hessian-free makes a round trip per CG step: fewer iterations.
    params = dict(hidden_layer_sizes=(3,), activation="tanh", solver=solver,
                  max_iter=2 if solver == "hessian-free" else 4, alpha=0.3, random_state=0,
                  **kw)
    local_cls, dask_cls = ((MLPClassifier, DaskMLPClassifier) if kind == "classifier"
                           else (MLPRegressor, DaskMLPRegressor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # max_iter is small on purpose
        local = local_cls(**params).fit(X, y, sample_weight=sw)
        remote = dask_cls(**params).fit(*chunked(chunks, X, y), sample_weight=(
            None if sw is None else chunked(chunks, sw)[0]))
    return local, remote


# Hessian-free's backtracking compares the losses of CG iterates that agree to
# about 1e-11 once CG has nearly converged; on the 'many' chunking of the
# weighted classifier such a tie is decided the other way by rounding and the
# fit moves by that CG tail (1.7e-10), so its cases use other chunkings.
FIT_CASES = [(s, "classifier", "many", True) for s in FULL_BATCH if s != "hessian-free"] + [
    (s, "regressor", "two-uneven", False) for s in FULL_BATCH if s != "hessian-free"] + [
    ("hessian-free", "classifier", "two-uneven", True),
    ("hessian-free", "regressor", "many", False)]


@pytest.mark.parametrize("solver,kind,chunking,weighted", FIT_CASES,
                         ids=["-".join(map(str, c)) for c in FIT_CASES])
def test_full_batch_fit_equals_local(client, kind, chunking, weighted, solver):
    local, remote = _fit_pair(kind, solver, CHUNKINGS[chunking], weighted)
    for a, b in zip(local.coefs_ + local.intercepts_, remote.coefs_ + remote.intercepts_):
        assert close(a, b)
    assert remote.n_iter_ == local.n_iter_
    assert close(remote.loss_, local.loss_)
    assert remote.n_features_in_ == local.n_features_in_
    if kind == "classifier":
        np.testing.assert_array_equal(remote.classes_, local.classes_)
        assert remote.out_activation_ == local.out_activation_


def test_warm_start_continues_like_local(client):
    X, _, y_reg, _ = data()
    params = dict(hidden_layer_sizes=(3,), solver="lm", max_iter=2, warm_start=True,
                  random_state=0)
    local = MLPRegressor(**params)
    remote = DaskMLPRegressor(**params)
    dX, dy = chunked(CHUNKINGS["two-uneven"], X, y_reg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            local.fit(X, y_reg)
            remote.fit(dX, dy)
    assert close(local.theta_, remote.theta_) and len(remote.loss_curve_) == 4


def test_a_prepared_problem_passes_through_the_factory(client):
    X, labels, _, _ = data()
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "tanh", "log_loss")
    problem = make_problem(net, *chunked(CHUNKINGS["two-uneven"], X, Y))
    assert make_problem(net, problem) is problem
    with pytest.raises(ValueError, match="prepared problem stands for"):
        make_problem(net, problem, Y)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_stochastic_is_partial_fit_over_the_blocks(client, solver):
    X, labels, _, sw = data()
    chunks = CHUNKINGS["two-uneven"]
    params = dict(hidden_layer_sizes=(3,), solver=solver, random_state=0, max_iter=2,
                  learning_rate_init=0.01)
    local = MLPClassifier(**params)
    bounds = np.cumsum((0,) + chunks)
    for _ in range(2):
        for a, b in zip(bounds[:-1], bounds[1:]):
            local.partial_fit(X[a:b], labels[a:b], sample_weight=sw[a:b], classes=[0, 1, 2])
    remote = DaskMLPClassifier(**params).fit(*chunked(chunks, X, labels),
                                             sample_weight=chunked(chunks, sw)[0])
    for a, b in zip(local.coefs_, remote.coefs_):
        np.testing.assert_array_equal(a, b)
    remote.partial_fit(*chunked(chunks, X, labels))
    for a, b in zip(bounds[:-1], bounds[1:]):
        local.partial_fit(X[a:b], labels[a:b])
    for a, b in zip(local.coefs_, remote.coefs_):
        np.testing.assert_array_equal(a, b)


def test_predict_is_blockwise_and_to_local(client):
    local, remote = _fit_pair("classifier", "lbfgs", CHUNKINGS["many"], True)
    X = data()[0]
    dX = chunked(CHUNKINGS["two-uneven"], X)[0]
    for method in ("predict", "predict_proba", "predict_log_proba"):
        out = getattr(remote, method)(dX)
        assert isinstance(out, da.Array) and out.chunks[0] == dX.chunks[0], method
        assert close(getattr(local, method)(X), out.compute()) if method != "predict" else (
            np.array_equal(local.predict(X), out.compute()))
    twin = remote.to_local()
    assert type(twin) is MLPClassifier and "client" not in twin.get_params()
    np.testing.assert_array_equal(twin.predict_proba(X), remote.predict_proba(dX).compute())
    labels, sw = data()[1], data()[3]
    assert remote.score(dX, chunked(dX.chunks[0], labels)[0],
                        chunked(dX.chunks[0], sw)[0]) == pytest.approx(
        local.score(X, labels, sw), rel=1e-12)

    local_r, remote_r = _fit_pair("regressor", "lbfgs", CHUNKINGS["many"], False)
    y = data()[2]
    pred = remote_r.predict(dX)
    assert pred.shape == (N,) and close(local_r.predict(X), pred.compute())
    assert remote_r.score(dX, chunked(dX.chunks[0], y)[0]) == pytest.approx(
        local_r.score(X, y), rel=1e-10)


def test_client_is_shared_by_clones_and_never_pickled(client):
    import pickle
    from sklearn.base import clone
    est = DaskMLPRegressor(hidden_layer_sizes=(2,), client=client)
    assert est.get_params()["client"] is client
    twin = clone(est)
    assert twin.client is client and twin.get_params()["hidden_layer_sizes"] == (2,)
    assert pickle.loads(pickle.dumps(est)).client is None


# ---------------------------------------------------------------- dataframes
FEATURES = [f"f{j}" for j in range(SIZES[0])]


@pytest.fixture(scope="module")
def dd():
    """dask.dataframe (skips without pandas, or the dataframe extra of dask)."""
    pytest.importorskip("pandas")
    return pytest.importorskip("dask.dataframe")


def frames(dd, kind, outputs=1):
    """(pandas X, y, sample_weight; the same as dask collections in partitions
    of 23 rows): X a dataframe with named columns, y a series of labels or
    targets (a two-column dataframe with outputs=2), the weights a series."""
    import pandas as pd
    X, labels, y_reg, sw = data()
    df = pd.DataFrame(X, columns=FEATURES)
    if kind == "classifier":
        df["y"] = np.array(["ant", "bee", "cat"], dtype=object)[labels]
    else:
        df["y"] = y_reg
        if outputs == 2:
            df["y2"] = np.sin(y_reg)
    df["w"] = sw
    ddf = dd.from_pandas(df, chunksize=23)
    targets = ["y"] if outputs == 1 else ["y", "y2"]
    pick = (lambda f: (f[FEATURES], f["y"] if outputs == 1 else f[targets], f["w"]))
    return pick(df), pick(ddf)


DATAFRAME_CASES = [("classifier", "lm", 1), ("classifier", "lbfgs", 1), ("regressor", "lm", 1),
                   ("regressor", "newton", 2)]


@pytest.mark.parametrize("kind,solver,outputs", DATAFRAME_CASES,
                         ids=[f"{k}-{s}-{o}out" for k, s, o in DATAFRAME_CASES])
def test_dataframe_fit_equals_local(client, dd, kind, solver, outputs):
    (X, y, sw), (dX, dy, dsw) = frames(dd, kind, outputs)
    assert dX.npartitions == 3
    params = dict(hidden_layer_sizes=(3,), activation="tanh", solver=solver, max_iter=4,
                  alpha=0.3, random_state=0)
    local_cls, dask_cls = ((MLPClassifier, DaskMLPClassifier) if kind == "classifier"
                           else (MLPRegressor, DaskMLPRegressor))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # max_iter is small on purpose
        local = local_cls(**params).fit(X, y, sample_weight=sw)
        remote = dask_cls(**params).fit(dX, dy, sample_weight=dsw)
    assert close(local.theta_, remote.theta_) and close(remote.loss_, local.loss_)
    assert remote.n_iter_ == local.n_iter_
    np.testing.assert_array_equal(remote.feature_names_in_, FEATURES)
    pred = remote.predict(dX)
    assert isinstance(pred, da.Array) and pred.shape == local.predict(X).shape
    if kind == "classifier":
        np.testing.assert_array_equal(remote.classes_, ["ant", "bee", "cat"])
        np.testing.assert_array_equal(pred.compute(), local.predict(X))
        assert close(remote.predict_proba(dX).compute(), local.predict_proba(X))
    else:
        assert close(pred.compute(), local.predict(X))
    assert remote.score(dX, dy, dsw) == pytest.approx(local.score(X, y, sw), rel=1e-10)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_dataframe_stochastic_equals_arrays(client, dd, solver):
    """The blocks of a dataframe are its partitions: the same passes as over
    dask arrays with those row chunks."""
    (X, y, sw), (dX, dy, dsw) = frames(dd, "regressor")
    params = dict(hidden_layer_sizes=(3,), solver=solver, max_iter=2, random_state=0,
                  learning_rate_init=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_frames = DaskMLPRegressor(**params).fit(dX, dy, sample_weight=dsw)
        on_arrays = DaskMLPRegressor(**params).fit(
            *chunked((23, 23, 14), X.to_numpy(), y.to_numpy(), sw.to_numpy()))
    np.testing.assert_array_equal(on_frames.theta_, on_arrays.theta_)


def test_dataframe_feature_names_and_dtypes(client, dd):
    (X, y, _), (dX, dy, _) = frames(dd, "regressor")
    est = DaskMLPRegressor(hidden_layer_sizes=(2,), solver="lbfgs", max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        est.fit(dX, dy)
        est_arrays = DaskMLPRegressor(**est.get_params()).fit(
            *chunked((23, 23, 14), X.to_numpy(), y.to_numpy()))
    renamed = dX.rename(columns={"f0": "g0"})
    with pytest.raises(ValueError, match="feature names should match"):
        est.predict(renamed)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        est.predict(dX.to_dask_array(lengths=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # the names match: no warning
        est.predict(dX)
    assert not hasattr(est_arrays, "feature_names_in_")
    with pytest.warns(UserWarning, match="X has feature names"):
        est_arrays.predict(dX)
    text = dX.assign(f1=dX["f1"].astype(str))
    with pytest.raises(ValueError, match="X must hold numbers"):
        est.fit(text, dy)


# ---------------------------------------------------------------- the data stay put
def _on_worker_only(block):
    """A block that can only be computed on a worker (the client's process fails)."""
    distributed.get_worker()   # ValueError outside a worker
    return block


def test_data_never_come_to_the_client(client, monkeypatch):
    rng = np.random.default_rng(3)
    n, n_features = 2000, 6
    X = rng.standard_normal((n, n_features))
    labels = (X[:, 0] > 0).astype(int)
    dX = da.from_array(X, chunks=(300, n_features)).map_blocks(
        _on_worker_only, dtype=X.dtype, meta=np.empty((0, 0)))
    dy = da.from_array(labels, chunks=300).map_blocks(
        _on_worker_only, dtype=labels.dtype, meta=np.empty((0,), labels.dtype))
    gathered = []
    real_gather = distributed.Client.gather

    def gather(self, futures, *args, **kw):
        out = real_gather(self, futures, *args, **kw)
        gathered.append(out)
        return out

    def refuse(*args, **kw):
        raise AssertionError("a dask collection was computed on the client")

    monkeypatch.setattr(distributed.Client, "gather", gather)
    monkeypatch.setattr(da.Array, "__array__", refuse)
    monkeypatch.setattr(da.Array, "compute", refuse)
    est = DaskMLPClassifier(hidden_layer_sizes=(2,), solver="lbfgs", max_iter=3,
                            random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(dX, dy)
    pred = est.predict(dX)
    assert isinstance(pred, da.Array)
    from dask.sizeof import sizeof
    P = est.network_.n_params
    # Parameter-sized results only: far below the N x n_features of X.
    assert max(sizeof(g) for g in gathered) <= 8 * (2 * P + 64) < X.nbytes / 20


# ---------------------------------------------------------------- bad input
def test_bad_input(client, monkeypatch):
    X, labels, _, sw = data()
    est = DaskMLPClassifier(hidden_layer_sizes=(2,), solver="lbfgs", max_iter=2)
    with pytest.raises(ValueError, match="chunked along its columns"):
        est.fit(da.from_array(X, chunks=(20, 2)), chunked(20, labels)[0])
    with pytest.raises(ValueError, match="row chunks"):
        est.fit(chunked(20, X)[0], chunked(30, labels)[0])
    with pytest.raises(ValueError, match="sample_weight's row chunks"):
        est.fit(chunked(20, X)[0], chunked(20, labels)[0], chunked(15, sw)[0])
    with pytest.raises(TypeError, match="X must be a dask array"):
        est.fit(X, labels)
    with pytest.raises(ValueError, match="kfac on mini-batches"):
        DaskMLPClassifier(solver="kfac", batch_size=10).fit(*chunked(20, X, labels))
    net = cbackprop.Network([4, 2, 5], "tanh", "log_loss")
    Y5 = np.eye(5)[labels]
    with pytest.raises(ValueError, match="Monte-Carlo factors"):   # 'auto' above 4 outputs
        optimize.kfac(net, net.init_params(0), *chunked(20, X, Y5))
    with pytest.raises(ValueError, match="early_stopping"):
        DaskMLPClassifier(early_stopping=True).fit(*chunked(20, X, labels))
    bad = X.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN|infinity|finite"):
        est.fit(*chunked(20, bad, labels))

    def no_client():
        raise ValueError("No clients found")
    monkeypatch.setattr(distributed, "default_client", no_client)
    with pytest.raises(ValueError, match="no dask.distributed client"):
        est.fit(*chunked(20, X, labels))


_OPTIONAL = """
import sys
import cbackprop
assert "dask" not in sys.modules and "distributed" not in sys.modules, "dask imported"
sys.modules["dask"] = None          # as if the extra were not installed
try:
    import cbackprop.dask
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("cbackprop.dask imported without dask")
"""


def test_dask_is_an_optional_dependency():
    run = subprocess.run([sys.executable, "-c", _OPTIONAL], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr
    assert 'pip install "cbackprop[dask]"' in run.stdout


# ---------------------------------------------------------------- faults (last: restarts a worker)
def test_worker_killed_mid_fit(client):
    """Killing a worker process mid-fit: Dask recomputes the lost parts from
    their source and the fit ends with the in-memory result (or a clear error)."""
    X, labels, _, sw = data()
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "tanh", "log_loss", alpha=0.2)
    theta0 = net.init_params(np.random.RandomState(0))
    want = optimize.levenberg_marquardt(net, theta0, X, Y, sw, max_iter=6)
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    killed = []

    def kill_one(result):
        if result.nit == 2:
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(victim)
            deadline = time.monotonic() + 30
            while victim in client.scheduler_info()["workers"] and time.monotonic() < deadline:
                time.sleep(0.05)

    try:
        # The chunks come from an in-graph source, so Dask can recompute the
        # lost ones: the fit must complete, with the in-memory result.
        got = optimize.levenberg_marquardt(net, theta0, *chunked(CHUNKINGS["many"], X, Y, sw),
                                           max_iter=6, callback=kill_one)
    finally:
        client.wait_for_workers(2, timeout=60)
    assert killed == [victim]
    assert (got.nit, got.nfev, got.status) == (want.nit, want.nfev, want.status)
    assert close(want.x, got.x)


def test_lost_data_that_cannot_be_recomputed(client):
    """Scattered data (no source to recompute from) lost with its worker: a
    clear error, never a different result."""
    from cbackprop._dask_problem import DaskProblem
    X, labels, _, _ = data()
    Y = np.eye(3)[labels]
    net = cbackprop.Network(SIZES, "tanh", "log_loss")
    theta = net.init_params(np.random.RandomState(0))
    problem = make_problem(net, *chunked(CHUNKINGS["two-uneven"], X, Y))
    parts = client.scatter([(X[:23], Y[:23], None), (X[23:], Y[23:], None)],
                           workers=sorted(client.scheduler_info()["workers"])[:1])
    scattered = DaskProblem._from_parts(problem, [parts], [23, 37], problem.weight_sum, 0.0)
    g = np.empty(net.n_params)
    scattered.loss_grad(theta, g)
    pids = client.run(os.getpid)
    holder = next(iter(client.who_has(parts[0]).values()))[0]
    os.kill(pids[holder], signal.SIGKILL)
    try:
        with pytest.raises(RuntimeError, match="lost part of the data"):
            scattered.loss_grad(theta, g)
    finally:
        client.wait_for_workers(2, timeout=60)
