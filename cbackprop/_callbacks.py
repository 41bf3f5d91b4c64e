"""scikit-learn's callback API (``sklearn.callback``, scikit-learn >= 1.9) for the MLPs.

A fit is one root task whose subtasks are the epochs ('sgd', 'adam') or the
iterations (every other solver). The solvers report the end of each subtask
through one call, :meth:`FitTasks.iteration_end`, which also opens the next
subtask, as scikit-learn's LogisticRegression does around SciPy's L-BFGS
callback; :meth:`FitTasks.close` ends the subtask left open after the last
iteration (an empty task) and then the root task. Without callbacks (and
outside a meta-estimator that propagates some) no context is created at all,
so a plain fit pays one attribute look-up per epoch.

With scikit-learn < 1.9 there is no ``sklearn.callback``: the estimators then
have no ``set_callbacks`` and never create tasks.
"""
import numpy as np

try:
    from sklearn.callback import CallbackSupportMixin
except ImportError:  # scikit-learn < 1.9
    class CallbackSupportMixin:
        """Stand-in without ``set_callbacks`` (scikit-learn < 1.9 has no callbacks)."""

__all__ = ["CallbackSupportMixin", "FitTasks"]


class FitTasks:
    """The callback tasks of one fit of an MLP estimator.

    Parameters
    ----------
    estimator : BaseMLP
        The estimator being fitted; it owns the callbacks.
    root : sklearn.callback.CallbackContext
        The estimator's root context, already begun.
    X, y : array-like
        The training data as passed to ``fit`` (labels for a classifier), given
        to the hooks (``ScoringMonitor`` scores ``fitted_estimator`` on them).
    metadata : dict or None
        ``{"sample_weight": sample_weight}``, or None without sample weights.
    subtask_name : str
        'epoch' or 'iteration'.
    """

    def __init__(self, estimator, root, X, y, metadata, subtask_name):
        self.estimator, self.root = estimator, root
        self.X, self.y, self.metadata = X, y, metadata
        self.subtask_name = subtask_name
        self.n_done = 0
        self.current = self._begin(None)

    @classmethod
    def open(cls, estimator, X, y, sample_weight, n_iterations, subtask_name):
        """Begin the root task and the first subtask; None without callbacks.

        ``n_iterations`` bounds the number of epochs or iterations; the root
        task gets one more subtask for the one left open by the last
        :meth:`iteration_end`.
        """
        if not (getattr(estimator, "_skl_callbacks", None)
                or hasattr(estimator, "_parent_callback_ctx")):
            return None
        root = estimator._init_callback_context(max_subtasks=n_iterations + 1)
        metadata = None if sample_weight is None else {"sample_weight": sample_weight}
        root.call_on_fit_task_begin(estimator=estimator, X=X, y=y, metadata=metadata)
        return cls(estimator, root, X, y, metadata, subtask_name)

    def _snapshot(self, theta):
        """Lazily built fitted attributes of the model at ``theta`` (copied)."""
        def attributes():
            attrs = {"n_iter_": self.n_done}
            if theta is not None:  # a float64 x of SciPy's for a float32 model
                net = self.estimator.network_
                snap = np.array(theta, dtype=net.dtype)
                attrs["_theta"] = snap
                attrs["coefs_"], attrs["intercepts_"] = net.unpack(snap)
            return attrs
        return attributes

    def _begin(self, theta):
        ctx = self.root.subcontext(task_name=f"{self.subtask_name} {self.n_done + 1}")
        ctx.call_on_fit_task_begin(estimator=self.estimator, X=self.X, y=self.y,
                                   metadata=self.metadata,
                                   reconstruction_attributes=self._snapshot(theta))
        return ctx

    def iteration_end(self, theta):
        """End the current epoch or iteration at parameters ``theta``, begin the next.

        Parameters
        ----------
        theta : ndarray of shape (P,)
            The parameters after this epoch or iteration (copied only if a
            callback asks for ``fitted_estimator``).

        Returns
        -------
        stop : bool
            Whether a callback asked to stop training.
        """
        self.n_done += 1
        stop = self.current.call_on_fit_task_end(
            estimator=self.estimator, X=self.X, y=self.y, metadata=self.metadata,
            reconstruction_attributes=self._snapshot(theta))
        self.current = self._begin(theta)
        return bool(stop)

    def close(self):
        """End the subtask left open (an empty task), then the root task."""
        self.current.call_on_fit_task_end(estimator=self.estimator)
        self.root.call_on_fit_task_end(estimator=self.estimator, X=self.X, y=self.y,
                                       metadata=self.metadata,
                                       reconstruction_attributes={})
