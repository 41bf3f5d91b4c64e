"""The time-to-target study (``cbackprop._study``): problems, runs, report, figure."""
import math
import re
import struct

import numpy as np
import pytest

st = pytest.importorskip("cbackprop._study")


def test_quick_mode_writes_a_well_formed_table(tmp_path, capsys):
    assert st.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "study.md").read_text()
    for name in ("sin", "parity"):
        header = f"### {name}: "
        assert header in text and "budget 0.5 s" in text
        block = text.split(header, 1)[1].split("\n\n")[1]     # the table
        rows = [line for line in block.splitlines() if line.startswith("| ")][1:]
        assert [r.split("|")[1].strip() for r in rows] == list(st.SOLVERS)
        for r in rows:
            cells = [c.strip() for c in r.strip("|").split("|")]
            assert len(cells) == 7
            assert re.fullmatch(r"[01]/1", cells[6])
            for c in cells[1:6]:
                assert c == "-" or math.isfinite(float(c))
    # LM reaches the SIN goal within the half-second budget of --quick
    lm = [r for r in text.splitlines() if r.startswith("| cb-lm |")][0]
    assert lm.rstrip().endswith("1/1 |")
    assert "wrote" in capsys.readouterr().out


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_png_is_non_empty_and_of_the_documented_size(tmp_path):
    pytest.importorskip("matplotlib")
    traces = {name: {"cb-lm": [st.run("cb-lm", st.PROBLEMS[name], 0, budget=0.5)]}
              for name in ("sin", "parity", "diabetes", "friedman1")}
    path = st.plot(traces, str(tmp_path / "f.png"))
    rows = -(-len(traces) // st.FIG_COLS)
    assert _png_size(path) == (round(st.FIG_WIDTH * st.FIG_DPI),
                               round(st.FIG_ROW_HEIGHT * rows * st.FIG_DPI))
    assert (tmp_path / "f.png").stat().st_size > 5000


@pytest.mark.parametrize("name", list(st.PROBLEMS))
def test_problems_are_well_formed(cb, name):
    p = st.PROBLEMS[name]
    X, Y = p.load()
    assert X.shape[1] == p.sizes[0] and Y.shape == (X.shape[0], p.sizes[-1])
    assert np.isfinite(X).all() and np.isfinite(Y).all()
    net = st._network(p)
    assert net.loss(net.init_params(0), X, Y) > p.target


def test_matlab_problems():
    X, Y = st.PROBLEMS["sin"].load()
    assert X.min() == -1 and X.max() == 1 and len(X) == 41
    np.testing.assert_allclose(Y[:, 0], np.sin(np.pi * (X[:, 0] + 1)), atol=1e-15)
    X, Y = st.PROBLEMS["parity"].load()
    assert len({tuple(x) for x in X}) == 8
    assert all(y == (1 if (x > 0).sum() % 2 else -1) for x, y in zip(X, Y[:, 0]))
    # MATLAB's mse goals, halved: the objective is sum (t - y)^2 / (2 N)
    assert st.PROBLEMS["sin"].target == 0.002 / 2
    assert st.PROBLEMS["parity"].target == 0.001 / 2


@pytest.mark.parametrize("solver", st.SOLVERS)
def test_every_solver_records_a_decreasing_run_on_the_common_objective(solver):
    """Each run records the network's objective: its first record is below the
    loss at the shared initial weights and the run ends at the target."""
    p = st.PROBLEMS["parity"]
    trace = st.run(solver, p, 1, budget=5.0)
    X, Y = p.load()
    net = st._network(p)
    f0 = net.loss(net.init_params(1), X, Y)
    assert trace.losses and min(trace.losses) < f0
    assert trace.reached is not None and trace.losses[-1] <= p.target
    assert trace.times == sorted(trace.times)


def test_summary_statistics_and_ratios():
    class T:
        def __init__(self, reached):
            self.reached = reached
    stats = {"cb-lm": st.summarize([T((1.0, 3)), T((3.0, 5)), T(None)]),
             "sk-lbfgs": st.summarize([T((6.0, 10)), T((6.0, 12)), T((9.0, 9))])}
    lm = stats["cb-lm"]
    assert (lm["success"], lm["runs"], lm["mean"], lm["min"], lm["max"]) == (2, 3, 2.0, 1.0, 3.0)
    assert lm["std"] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert lm["iters"] == 4.0
    assert st.best_of(stats, "cb-") == "cb-lm" and st.best_of(stats, "sk-") == "sk-lbfgs"
    (label, value, goal), = st.ratios({"sin": stats})[:1]
    assert value == pytest.approx(7.0 / 2.0) and goal == 3.0


def test_bad_command_line(tmp_path):
    with pytest.raises(SystemExit, match="unknown problems"):
        st.main(["--problems", "mnist", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown solvers"):
        st.main(["--solvers", "sgd", "--out", str(tmp_path)])
