"""``python -m cbackprop``: options validated with one-line errors, --version, and the
``study`` subcommand dispatched to cbackprop._study."""
import sys
import types

import pytest


@pytest.fixture
def main(cb):
    from cbackprop.__main__ import main
    return main


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["--epochs", "-3"], "--epochs: must be at least 1, got -3"),
    (["--epochs", "ten"], "--epochs: expected a positive integer, got 'ten'"),
    (["--threads", "0"], "--threads: must be at least 1, got 0"),
    (["--bogus"], "unrecognized arguments: --bogus"),
], ids=["epochs-0", "epochs-negative", "epochs-text", "threads-0", "unknown-option"])
def test_bad_option_one_line_error(main, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_version(main, cb, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"cbackprop {cb.__version__}"


def test_study_dispatched_with_remaining_arguments(main, monkeypatch):
    seen = []
    study = types.ModuleType("cbackprop._study")
    study.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "cbackprop._study", study)
    assert main(["study", "--target", "0.1"]) == 7
    assert seen == [["--target", "0.1"]]


def test_study_absent_one_line_error(main, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cbackprop._study", None)  # import fails
    assert main(["study"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cbackprop._study" in err


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=2
def test_second_order_section_lists_the_solvers(cb, capsys):
    """Section 2 of the tour fits 'newton' and names the other second-order solvers."""
    import numpy as np
    from cbackprop.__main__ import _second_order
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    y = (X[:, 0] > 0).astype(int)
    _second_order((X[:30], X[30:], y[:30], y[30:]), max_iter=2)
    out = capsys.readouterr().out
    for solver in ("'newton'", "'lm'", "'hessian-free'", "'kfac'"):
        assert solver in out, solver
