"""scikit-learn's callback API (``set_callbacks``, scikit-learn >= 1.9) on the MLPs.

A fit is a root task with one subtask per epoch ('sgd', 'adam') or per
iteration ('lbfgs'), plus the empty one left open after the last (as
scikit-learn's LogisticRegression). The callbacks see the model after each
subtask (``fitted_estimator``), can stop training, and are propagated by
meta-estimators; without callbacks no context is created.
"""
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from cbackprop import MLPClassifier, MLPRegressor

skl_callback = pytest.importorskip("sklearn.callback")

SOLVERS = ["sgd", "adam", "lbfgs", "lm", "hessian-free", "newton", "kfac"]


class Recorder:
    """Records every hook; on_fit_task_end asks to stop after subtask ``stop_at``."""

    def __init__(self, stop_at=None):
        self.stop_at = stop_at
        self.events = []   # (hook, task_name, is_root)
        self.thetas = []   # fitted_estimator.theta_ at each subtask end that has one
        self.models = []   # the fitted_estimator objects themselves
        self.contexts = []

    def setup(self, estimator, context):
        self.events.append(("setup", context.task_name, context.parent is None))

    def on_fit_task_begin(self, estimator, context):
        self.events.append(("begin", context.task_name, context.parent is None))
        self.contexts.append(context)

    def on_fit_task_end(self, estimator, context, *, X=None, y=None, metadata=None,
                        fitted_estimator=None):
        self.events.append(("end", context.task_name, context.parent is None))
        if context.parent is not None and fitted_estimator is not None:
            self.thetas.append(fitted_estimator.theta_.copy())
            self.models.append(fitted_estimator)
        return (self.stop_at is not None and context.parent is not None
                and context.task_id + 1 == self.stop_at)

    def teardown(self, estimator, context):
        self.events.append(("teardown", context.task_name, context.parent is None))

    def count(self, hook, root=None):
        return sum(1 for h, _, is_root in self.events
                   if h == hook and (root is None or is_root == root))


class PropagatedRecorder(Recorder):
    """The same, auto-propagated by meta-estimators to every level."""

    max_propagation_depth = None


def _data(n=80):
    return make_classification(n, 6, n_informative=4, n_classes=3, random_state=0)


def _estimator(solver, regressor=False, **params):
    params = {"hidden_layer_sizes": (5,), "solver": solver, "max_iter": 6,
              "random_state": 0, "learning_rate_init": 0.01, **params}
    return MLPRegressor(**params) if regressor else MLPClassifier(**params)


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


@pytest.mark.parametrize("regressor", [False, True], ids=["classifier", "regressor"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_one_subtask_per_epoch_or_iteration(solver, regressor):
    X, y = _data()
    rec = Recorder()
    est = _fit(_estimator(solver, regressor).set_callbacks(rec), X, y)
    assert rec.count("setup") == rec.count("teardown") == 1
    assert rec.count("begin", root=True) == rec.count("end", root=True) == 1
    # n_iter_ subtasks with a model, plus the empty one left open by the last
    assert rec.count("begin", root=False) == rec.count("end", root=False) == est.n_iter_ + 1
    assert len(rec.thetas) == est.n_iter_ > 0
    root = rec.contexts[0]
    assert root.max_subtasks == est.max_iter + 1
    assert {c.max_subtasks for c in rec.contexts[1:]} == {0}
    name = "epoch" if solver in ("sgd", "adam") else "iteration"
    assert [c.task_name for c in rec.contexts[1:3]] == [f"{name} 1", f"{name} 2"]
    # the last subtask's model is the fitted model
    assert_array_equal(rec.thetas[-1], est.theta_)
    assert not hasattr(est, "_fit_tasks") and not hasattr(est, "_callback_fit_ctx")


@pytest.mark.parametrize("solver", SOLVERS)
def test_callbacks_do_not_change_the_fit(solver):
    X, y = _data()
    plain = _fit(_estimator(solver), X, y)
    watched = _fit(_estimator(solver).set_callbacks(Recorder()), X, y)
    assert_array_equal(watched.theta_, plain.theta_)
    assert watched.n_iter_ == plain.n_iter_ and watched.loss_ == plain.loss_


@pytest.mark.parametrize("solver", SOLVERS)
def test_fitted_estimator_of_each_subtask_is_the_model_after_it(solver):
    """Subtask j's model equals a fresh fit stopped after j epochs / iterations,
    also when inspected after the fit (it owns a copy of the weights)."""
    X, y = _data()
    rec = Recorder()
    _fit(_estimator(solver).set_callbacks(rec), X, y)
    for j in (1, 3):
        fresh = _fit(_estimator(solver, max_iter=j), X, y)
        assert_allclose(rec.models[j - 1].theta_, fresh.theta_, rtol=1e-12, atol=1e-14)
        assert_allclose(rec.models[j - 1].predict_proba(X), fresh.predict_proba(X),
                        rtol=1e-10, atol=1e-14)
        assert rec.models[j - 1].n_iter_ == j


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_callback_stops_training_cleanly(solver):
    X, y = _data()
    rec = Recorder(stop_at=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # no warning for a stop
        est = _estimator(solver, max_iter=50).set_callbacks(rec).fit(X, y)
    assert est.n_iter_ == 2
    assert_allclose(est.theta_, _fit(_estimator(solver, max_iter=2), X, y).theta_,
                    rtol=1e-12, atol=1e-14)
    assert rec.count("end", root=True) == 1 and rec.count("teardown") == 1
    if solver != "lbfgs":
        assert len(est.loss_curve_) == 2
    assert est.predict(X).shape == y.shape


def test_partial_fit_is_one_epoch():
    X, y = _data()
    rec = Recorder()
    est = _estimator("adam").set_callbacks(rec)
    est.partial_fit(X, y, classes=np.unique(y))
    est.partial_fit(X, y)
    assert rec.count("begin", root=True) == 2
    assert len(rec.thetas) == 2
    assert rec.contexts[0].max_subtasks == 2
    assert_array_equal(rec.thetas[-1], est.theta_)


def test_float32_lbfgs_models_are_float32():
    X, y = _data()
    rec = Recorder()
    _fit(_estimator("lbfgs").set_callbacks(rec), X.astype(np.float32), y)
    assert {t.dtype for t in rec.thetas} == {np.dtype(np.float32)}


def test_no_context_without_callbacks(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a callback context was created without callbacks")
    monkeypatch.setattr(MLPClassifier, "_init_callback_context", fail)
    X, y = _data()
    for solver in SOLVERS:
        _fit(_estimator(solver), X, y)


def test_a_failing_callback_propagates_and_is_torn_down():
    class Failing(Recorder):
        def on_fit_task_end(self, estimator, context, **kwargs):
            if context.parent is not None:
                raise RuntimeError("callback failed")

    X, y = _data()
    rec = Failing()
    est = _estimator("adam").set_callbacks(rec)
    with pytest.raises(RuntimeError, match="callback failed"):
        est.fit(X, y)
    assert rec.count("teardown") == 1 and not hasattr(est, "_fit_tasks")
    est.set_callbacks()
    _fit(est, X, y)  # the estimator is still usable


def test_scoring_monitor_logs_each_epoch():
    X, y = _data()
    monitor = skl_callback.ScoringMonitor(scoring="accuracy")
    est = _fit(_estimator("adam").set_callbacks(monitor), X, y)
    rows = monitor.get_logs().data
    epochs = sorted((r for r in rows if len(r["task_id_path"]) == 2),
                    key=lambda r: r["task_id"])
    assert len(epochs) == est.n_iter_
    final = [r for r in rows if len(r["task_id_path"]) == 1]
    assert epochs[-1]["accuracy"] == final[0]["accuracy"] == est.score(X, y)
    first = _fit(_estimator("adam", max_iter=1), X, y).score(X, y)
    assert epochs[0]["accuracy"] == first


def test_propagation_through_grid_search():
    X, y = _data()
    rec = PropagatedRecorder()
    search = GridSearchCV(_estimator("sgd", max_iter=3), {"alpha": [1e-4, 1e-2]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.set_callbacks(rec).fit(X, y)
    fits = [c for c in rec.contexts if c.estimator_name == "MLPClassifier"
            and c.source_estimator_name == "GridSearchCV"]
    assert len(fits) == 2 * 2 + 1  # candidates x folds, and the refit
    epochs = [c for c in rec.contexts if c.task_name.startswith("epoch")]
    assert len(epochs) == len(fits) * (3 + 1)
    assert all(c.parent in fits for c in epochs)


def test_progress_bar_runs_in_fit_and_grid_search(capsys):
    pytest.importorskip("rich")
    X, y = _data()
    est = _fit(_estimator("adam").set_callbacks(skl_callback.ProgressBar()), X, y)
    assert_array_equal(est.theta_, _fit(_estimator("adam"), X, y).theta_)
    search = GridSearchCV(_estimator("lbfgs"), {"alpha": [1e-4, 1e-2]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.set_callbacks(skl_callback.ProgressBar(max_propagation_depth=None)).fit(X, y)
    assert "MLPClassifier - fit" in capsys.readouterr().out
