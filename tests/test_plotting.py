"""cbackprop.plotting, rendered headless (Agg): images non-empty, of the right size,
showing the data they were given."""
import io
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402

DPI = 50


@pytest.fixture
def plotting(cb):
    from cbackprop import plotting
    yield plotting
    plt.close("all")


@pytest.fixture
def sine(cb):
    X = np.linspace(-3, 3, 40)[:, None]
    net = cb.Network([1, 6, 1], activation="tanh", loss="squared_error")
    return net, net.init_params(0), X, np.sin(X)


def _rendered(fig):
    """The figure as an (h, w, 4) RGBA array, through a PNG file in memory."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    buf.seek(0)
    return plt.imread(buf)


def _check_image(fig):
    image = _rendered(fig)
    w, h = fig.get_size_inches() * DPI
    assert image.shape[:2] == (round(h), round(w))
    # Not blank: more than a few distinct colors.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10


def test_import_cbackprop_does_not_import_matplotlib(cb):
    code = "import sys, cbackprop, cbackprop.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loss_history_as_optimizer_callback(plotting, sine, cb):
    from cbackprop.optimize import levenberg_marquardt
    net, theta0, X, y = sine
    history = plotting.LossHistory()
    res = levenberg_marquardt(net, theta0, X, y, max_iter=6, callback=history)
    assert len(history.losses) == len(history.times) == res.nit
    assert history.losses[-1] == pytest.approx(res.fun, rel=1e-12)
    assert np.all(np.diff(history.times) >= 0)


@pytest.mark.parametrize("solver", ["adam", "lm"])
def test_loss_history_fit_reads_every_iteration(plotting, sine, cb, solver, capsys):
    _, _, X, y = sine
    est = cb.MLPRegressor(hidden_layer_sizes=(4,), solver=solver, max_iter=4, tol=0,
                          n_iter_no_change=np.inf, random_state=0)
    with pytest.warns(Warning):  # ConvergenceWarning: max_iter reached
        history = plotting.LossHistory().fit(est, X, y.ravel())
    assert capsys.readouterr().out == ""
    assert history.losses == pytest.approx(est.loss_curve_, rel=1e-7)
    assert est.get_params()["verbose"] is False


def test_loss_history_fit_refuses_silent_solver(plotting, sine, cb):
    _, _, X, y = sine
    est = cb.MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", max_iter=3)
    with pytest.raises(ValueError, match="lbfgs"), pytest.warns(Warning):
        plotting.LossHistory().fit(est, X, y.ravel())


def test_plot_loss_curves(plotting):
    history = plotting.LossHistory()
    history.times[:], history.losses[:] = [0.1, 0.2, 0.3], [1.0, 0.5, 0.2]
    ax = plotting.plot_loss_curves({"a": history, "b": ([0, 1], [2.0, 0.1])})
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), history.losses)
    assert ax.get_yscale() == "log"
    _check_image(ax.figure)


def test_plot_loss_curves_rejects_mismatched_curve(plotting):
    with pytest.raises(ValueError, match="'bad'"):
        plotting.plot_loss_curves({"bad": ([0, 1, 2], [1.0, 0.5])})


def test_plot_spectral_density_marks_eigenvalues(plotting):
    grid = np.linspace(-1, 5, 200)
    density = np.exp(-grid ** 2) + 1e-3
    fig, ax = plt.subplots(figsize=(4, 3))
    assert plotting.plot_spectral_density(grid, density, eigenvalues=[3.0, 4.5], ax=ax,
                                          label="H") is ax
    density_line, *marks = ax.get_lines()
    np.testing.assert_allclose(density_line.get_ydata(), density)
    assert [m.get_xdata()[0] for m in marks] == [3.0, 4.5]
    _check_image(fig)


def test_plot_spectral_density_rejects_mismatch(plotting):
    with pytest.raises(ValueError, match="shapes"):
        plotting.plot_spectral_density(np.zeros(3), np.zeros(4))


def test_plot_layer_diagonals_one_panel_per_layer(plotting, cb, rng):
    net = cb.Network([3, 4, 2], activation="tanh", loss="log_loss")
    diag = rng.uniform(0.1, 2.0, net.n_params)
    fig = plotting.plot_layer_diagonals(net, diag)
    images = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    coefs, _ = net.unpack(diag)
    assert len(images) == 2
    for image, W in zip(images, coefs):
        np.testing.assert_allclose(image.get_array(), np.log10(W))
    _check_image(fig)


def test_plot_layer_diagonals_rejects_wrong_size(plotting, cb):
    net = cb.Network([3, 4, 2])
    with pytest.raises(ValueError, match=r"\(26,\)"):
        plotting.plot_layer_diagonals(net, np.ones(5))
