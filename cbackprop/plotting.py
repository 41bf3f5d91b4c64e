"""Optional plotting helpers: loss curves, spectral densities, curvature maps.

Needs matplotlib (``pip install "cbackprop[plot]"``), imported only when a
function here is called; ``import cbackprop`` never imports it. Every function
draws on the Axes (or Figure) it is given, or on a new one, and returns it,
so that figures can be composed and saved as usual.

:class:`LossHistory` records the loss against wall time while a model trains,
from an optimizer callback or from an estimator's fit.
"""
import contextlib
import io
import re
import time

import numpy as np

__all__ = ["LossHistory", "plot_loss_curves", "plot_spectral_density", "plot_layer_diagonals"]

_ITERATION = re.compile(r"^Iteration (\d+), loss = ([-+0-9.eEinfa]+)")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("cbackprop.plotting needs matplotlib: "
                          "pip install \"cbackprop[plot]\"") from exc
    return plt


def _axes(ax):
    return _pyplot().subplots()[1] if ax is None else ax


class LossHistory:
    """Loss against wall time of one training run.

    Use an instance as the ``callback`` of a :mod:`cbackprop.optimize` solver
    or of :func:`scipy.optimize.minimize` (it reads
    ``intermediate_result.fun``), or call :meth:`fit` to time an estimator's
    iterations. The clock starts when the instance is created or
    :meth:`restart`\\ ed.

    Attributes
    ----------
    times : list of float
        Seconds from the start to the end of each iteration.
    losses : list of float
        Training loss after each iteration.

    Examples
    --------
    >>> import numpy as np
    >>> import cbackprop as cb
    >>> from cbackprop.optimize import levenberg_marquardt
    >>> from cbackprop.plotting import LossHistory
    >>> X = np.linspace(-3, 3, 50)[:, None]
    >>> net = cb.Network([1, 8, 1], activation="tanh", loss="squared_error")
    >>> history = LossHistory()
    >>> res = levenberg_marquardt(net, net.init_params(0), X, np.sin(X), max_iter=5,
    ...                           callback=history)
    >>> len(history.losses) == res.nit
    True
    """

    def __init__(self):
        self.times, self.losses = [], []
        self.restart()

    def restart(self):
        """Empty the record and restart the clock."""
        self.times.clear()
        self.losses.clear()
        self._t0 = time.perf_counter()

    def __call__(self, intermediate_result):
        self.times.append(time.perf_counter() - self._t0)
        self.losses.append(float(intermediate_result.fun))

    def fit(self, estimator, X, y, **fit_params):
        """Fit ``estimator`` and record the loss it reports after each iteration.

        The estimator's per-iteration report (``verbose=True``; every solver
        except 'lbfgs' gives one) is read, timed and not printed.

        Parameters
        ----------
        estimator : MLPClassifier or MLPRegressor
        X, y : array-like
            Passed to ``estimator.fit``, with ``fit_params``.

        Returns
        -------
        self : LossHistory
        """
        verbose = estimator.get_params()["verbose"]
        estimator.set_params(verbose=True)
        stream = _TimedLines(self)
        self.restart()
        try:
            with contextlib.redirect_stdout(stream):
                estimator.fit(X, y, **fit_params)
        finally:
            estimator.set_params(verbose=verbose)
        if not self.losses:
            raise ValueError(f"solver={estimator.solver!r} reports no iterations; "
                             "time it through an optimizer callback instead")
        return self


class _TimedLines(io.TextIOBase):
    """A stdout that hands "Iteration k, loss = v" lines, timed, to a LossHistory."""

    def __init__(self, history):
        self.history, self.buf = history, ""

    def write(self, s):
        now = time.perf_counter() - self.history._t0
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            match = _ITERATION.match(line)
            if match:
                self.history.times.append(now)
                self.history.losses.append(float(match.group(2)))
        return len(s)


def plot_loss_curves(curves, *, ax=None, logy=True, xlabel="wall time (s)"):
    """Training loss against time (or iterations) for several runs.

    Parameters
    ----------
    curves : dict
        Label to a :class:`LossHistory`, to a pair ``(x, losses)`` of
        sequences of one length, or to a fitted estimator (its
        ``loss_curve_`` against the iteration number; set ``xlabel``).
    ax : matplotlib Axes, optional
        Where to draw; a new figure when None.
    logy : bool, default=True
        Logarithmic loss axis.
    xlabel : str, default="wall time (s)"

    Returns
    -------
    ax : matplotlib Axes
    """
    ax = _axes(ax)
    for label, curve in curves.items():
        x, loss = _curve_points(label, curve)
        ax.plot(x, loss, marker="." if len(loss) < 60 else None, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training loss")
    ax.legend()
    return ax


def _curve_points(label, curve):
    if isinstance(curve, LossHistory):
        x, loss = curve.times, curve.losses
    elif hasattr(curve, "loss_curve_"):
        loss = curve.loss_curve_
        x = np.arange(1, len(loss) + 1)
    else:
        x, loss = curve
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if x.ndim != 1 or x.shape != loss.shape or x.size == 0:
        raise ValueError(f"curve {label!r}: x and losses must be non-empty 1-D sequences of "
                         f"one length, got shapes {x.shape} and {loss.shape}")
    return x, loss


def plot_spectral_density(grid, density, *, eigenvalues=None, ax=None, label=None,
                          logy=True):
    """An eigenvalue density, with chosen eigenvalues marked.

    Parameters
    ----------
    grid, density : ndarray of shape (n,)
        As returned by :func:`cbackprop.curvature.spectral_density`.
    eigenvalues : array-like, optional
        Drawn as vertical dashed lines (for example the top eigenvalues from
        :func:`cbackprop.curvature.eigenvalues`), in the color of the density.
    ax : matplotlib Axes, optional
        Where to draw; a new figure when None.
    label : str, optional
        Legend entry of the density.
    logy : bool, default=True
        Logarithmic density axis (densities of networks span many decades);
        the curve is floored at ``1e-12`` times its maximum.

    Returns
    -------
    ax : matplotlib Axes
    """
    grid, density = np.asarray(grid, dtype=float), np.asarray(density, dtype=float)
    if grid.ndim != 1 or grid.shape != density.shape:
        raise ValueError(f"grid and density must be 1-D of one length, got shapes "
                         f"{grid.shape} and {density.shape}")
    ax = _axes(ax)
    shown = np.maximum(density, 1e-12 * density.max()) if logy else density
    (line,) = ax.plot(grid, shown, label=label)
    for w in np.atleast_1d(eigenvalues if eigenvalues is not None else []):
        ax.axvline(w, color=line.get_color(), linestyle="--", linewidth=0.8)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if label is not None:
        ax.legend()
    return ax


def plot_layer_diagonals(net, diagonal, *, fig=None, cmap="viridis", log=True):
    """Heat maps of a curvature diagonal, one panel per layer's weights.

    Panel l shows the entries of ``diagonal`` for ``W_l``, shape
    ``(n_{l-1}, n_l)`` (rows: inputs, columns: units); biases are not drawn.

    Parameters
    ----------
    net : Network
        The network whose parameters ``diagonal`` indexes.
    diagonal : ndarray of shape (net.n_params,)
        For example ``net.diag_ggn(theta, X, y)`` or ``net.diag_hessian(...)``.
    fig : matplotlib Figure, optional
        Where to draw (its axes are replaced); a new figure when None.
    cmap : str, default="viridis"
    log : bool, default=True
        Color by ``log10 |entry|`` (diagonals span many decades).

    Returns
    -------
    fig : matplotlib Figure
    """
    diagonal = np.asarray(diagonal, dtype=net.dtype)
    if diagonal.shape != (net.n_params,):
        raise ValueError(f"diagonal must have shape ({net.n_params},), got {diagonal.shape}")
    coefs, _ = net.unpack(diagonal)
    plt = _pyplot()
    fig = plt.figure(figsize=(3.2 * len(coefs), 3.2)) if fig is None else fig
    fig.clear()
    axes = fig.subplots(1, len(coefs), squeeze=False)[0]
    for l, (ax, W) in enumerate(zip(axes, coefs), start=1):
        values = np.log10(np.maximum(np.abs(W), np.finfo(W.dtype).tiny)) if log else W
        image = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_title(f"W_{l}  ({W.shape[0]} x {W.shape[1]})")
        ax.set_xlabel("unit")
        ax.set_ylabel("input")
        fig.colorbar(image, ax=ax, label="log10 |entry|" if log else "entry")
    return fig
