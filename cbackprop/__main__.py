"""``python -m cbackprop``: a tour of the library on load_digits.

1. First order, next to scikit-learn: trains ``cbackprop.MLPClassifier`` on
   scikit-learn's digits (pixels / 16, ``train_test_split(random_state=0)``)
   with hidden (100,), adam, batch 200, printing the loss as it goes; then fits
   scikit-learn's MLPClassifier with the same data and parameters and prints
   both test accuracies, fit times and the speed ratio; checks the gradient of
   the fitted network against fourth-order central differences.
2. Second order: one full-batch fit by a Newton-type solver (trust-region
   Newton on exact Hessian-vector products).
3. Curvature: the top Hessian eigenvalues and the Hessian trace of the model
   fitted in 1, on its training set.

Then says where to go next. Exits with status 1 if the gradient check fails or
the two estimators disagree, 2 on a bad option.

``python -m cbackprop study ...`` runs the time-to-target study of the solvers
(``cbackprop._study``) instead.
"""
import argparse
import importlib
import importlib.util
import io
import math
import sys
import time
import warnings

import numpy as np

DOCS = "docs/ (build: pip install -e \".[docs]\" && python -m sphinx -W -b html docs docs/_build/html)"


class _EveryKth(io.TextIOBase):
    """Stdout filter for verbose=True: one compact line every k epochs."""

    def __init__(self, out, every, last):
        self.out, self.every, self.last = out, every, last
        self.buf = ""

    def write(self, s):
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            if line.startswith("Iteration "):
                head, loss = line[len("Iteration "):].split(", loss = ")
                epoch = int(head)
                if epoch % self.every == 0 or epoch == self.last or epoch == 1:
                    self.out.write(f"  epoch {epoch:4d}   loss {float(loss):.6f}\n")
            elif line:
                self.out.write("  " + line + "\n")
        return len(s)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser():
    from cbackprop import __version__

    parser = _Parser(
        prog="python -m cbackprop",
        description="Train cbackprop.MLPClassifier on scikit-learn's load_digits and "
                    "compare accuracy and fit time with scikit-learn's MLPClassifier "
                    "(same data, same parameters, same random_state), check the "
                    "gradient against finite differences, fit one second-order solver "
                    "and report the curvature of the trained model. "
                    "'python -m cbackprop study --help' describes the solver study.")
    parser.add_argument("--version", action="version", version=f"cbackprop {__version__}")
    parser.add_argument("--quick", action="store_true",
                        help="20 epochs and a single timing run (for CI)")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="number of adam epochs, at least 1 (default 200, or 20 with --quick)")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="BLAS threads for both libraries, at least 1 (default 1)")
    parser.add_argument("--no-sklearn", action="store_true",
                        help="skip the scikit-learn comparison")
    return parser


def _fit_timed(est, X, y, repeats):
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        est.fit(X, y)
        best = min(best, time.perf_counter() - t0)
    return best


def _one_hot(est, y):
    return np.eye(len(est.classes_))[np.searchsorted(est.classes_, y)]


def _gradient_check(est, X, y, n_coords, seed):
    """loss_grad vs 4th-order central differences on random coordinates.

    The coordinates are drawn among those whose gradient entry is not
    negligible (at least 1e-3 of the largest), where a relative error means
    something; the step is small enough to rarely straddle a relu kink.
    """
    net = est.network_
    Y = _one_hot(est, y)
    theta = np.array(est.theta_, dtype=np.float64)
    _, grad = net.loss_grad(theta, X, Y)
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(np.abs(grad) >= 1e-3 * np.abs(grad).max())
    coords = rng.choice(eligible, min(n_coords, eligible.size), replace=False)
    worst = 0.0
    for j in coords:
        h = 1e-5 * max(1.0, abs(theta[j]))
        vals = []
        for k in (-2, -1, 1, 2):
            t = theta.copy()
            t[j] += k * h
            vals.append(net.loss(t, X, Y))
        fd = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * h)
        worst = max(worst, abs(fd - grad[j]) / max(abs(fd), abs(grad[j])))
    return coords.size, worst


def _first_order(args, data, epochs, repeats):
    """Section 1; returns (fitted cbackprop estimator, exit status)."""
    from sklearn.neural_network import MLPClassifier as SkMLPClassifier

    from cbackprop import MLPClassifier

    X_train, X_test, y_train, y_test = data
    params = dict(hidden_layer_sizes=(100,), solver="adam", batch_size=200,
                  max_iter=epochs, tol=0.0, n_iter_no_change=np.inf, random_state=0)
    print("1. first order: " + "MLPClassifier(" +
          ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")")
    status = 0
    ours = MLPClassifier(verbose=True, **params)
    every = 10 if epochs >= 100 else max(1, epochs // 5)
    stdout, sys.stdout = sys.stdout, _EveryKth(sys.stdout, every, epochs)
    try:
        t0 = time.perf_counter()
        ours.fit(X_train, y_train)
        t_first = time.perf_counter() - t0
    finally:
        sys.stdout = stdout
    ours.set_params(verbose=False)
    t_ours = min(t_first, _fit_timed(ours, X_train, y_train, repeats - 1)
                 if repeats > 1 else math.inf)
    acc_ours = ours.score(X_test, y_test)
    print(f"{'':14s}{'test accuracy':>15s}{'fit time':>12s}{'per epoch':>12s}")
    print(f"{'cbackprop':14s}{acc_ours:15.4f}{t_ours:11.3f}s"
          f"{1e3 * t_ours / ours.n_iter_:10.3f}ms")
    if not args.no_sklearn:
        ref = SkMLPClassifier(**params)
        t_ref = _fit_timed(ref, X_train, y_train, 1 if args.quick else 2)
        acc_ref = ref.score(X_test, y_test)
        print(f"{'scikit-learn':14s}{acc_ref:15.4f}{t_ref:11.3f}s"
              f"{1e3 * t_ref / ref.n_iter_:10.3f}ms")
        print(f"speed-up: {t_ref / t_ours:.1f}x (scikit-learn fit time / cbackprop's)")
        same = np.allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-6)
        print("loss curves: " + ("identical to scikit-learn's (rtol 1e-6)" if same
                                 else "DIFFER from scikit-learn's"))
        if abs(acc_ours - acc_ref) > 0.02:
            status = 1
    n, err = _gradient_check(ours, X_train[:300], y_train[:300], 6, seed=0)
    ok = err < 1e-5  # rounding noise is ~1e-7 here; a wrong gradient gives O(1)
    print(f"gradient check (float64, {n} random coordinates, 4th-order central "
          f"differences): max relative error {err:.1e} {'OK' if ok else 'FAILED'}")
    return ours, status if ok else 1


def _second_order(data, max_iter):
    """Section 2: a full-batch trust-region Newton fit of a small network."""
    from cbackprop import MLPClassifier

    X_train, X_test, y_train, y_test = data
    est = MLPClassifier(hidden_layer_sizes=(32,), activation="tanh", solver="newton",
                        max_iter=max_iter, random_state=0)
    t0 = time.perf_counter()
    est.fit(X_train, y_train)
    elapsed = time.perf_counter() - t0
    print(f"\n2. second order: MLPClassifier(hidden_layer_sizes=(32,), activation='tanh', "
          f"solver='newton', max_iter={max_iter})")
    print(f"  trust-region Newton on exact Hessian-vector products: {est.n_iter_} "
          f"iterations in {elapsed:.2f}s, training loss {est.loss_:.2e}, "
          f"test accuracy {est.score(X_test, y_test):.4f}")
    print("  also solver='lm' (Levenberg-Marquardt), 'hessian-free' and 'kfac' (K-FAC, "
          "full batch or mini-batches); cbackprop.optimize runs them on a Network directly")


def _curvature_facts(est, X, y):
    """Section 3: top Hessian eigenvalues and trace of the fitted model."""
    from cbackprop import curvature

    H = curvature.HessianOperator(est.network_, est.theta_, X, _one_hot(est, y))
    t0 = time.perf_counter()
    top = curvature.eigenvalues(H, k=3, random_state=0, return_eigenvectors=False)
    tr = curvature.trace(H, n_matvecs=60, random_state=0)
    elapsed = time.perf_counter() - t0
    print(f"\n3. curvature of model 1 at its fitted parameters (P = {H.shape[0]}, "
          f"{X.shape[0]} training samples), {elapsed:.2f}s:")
    print("  top 3 Hessian eigenvalues (ARPACK on exact Hessian-vector products): "
          + ", ".join(f"{w:.4g}" for w in top))
    print(f"  Hessian trace (Hutch++, 60 products): {tr:.4g}; the top eigenvalue "
          f"is {top[0] / tr:.0%} of it")


def _next_steps():
    print("\nNext:")
    print("  the examples gallery (loss curves of every solver, Hessian spectra, "
          "curvature maps): examples/")
    print(f"  the user guide and API reference: {DOCS}")
    if importlib.util.find_spec("cbackprop._study") is not None:
        print("  the solvers' time-to-target study: python -m cbackprop study --help")


def _study(argv):
    try:
        study = importlib.import_module("cbackprop._study")
    except ModuleNotFoundError as exc:
        if exc.name != "cbackprop._study":
            raise
        print("python -m cbackprop study: error: this installation of cbackprop has no "
              "study module (cbackprop._study)", file=sys.stderr)
        return 2
    return study.main(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:
        return _study(argv[1:])
    args = _parser().parse_args(argv)
    epochs = args.epochs or (20 if args.quick else 200)
    repeats = 1 if args.quick else 3

    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    import cbackprop

    X, y = load_digits(return_X_y=True)
    data = train_test_split(X / 16.0, y, random_state=0)
    print(f"cbackprop {cbackprop.__version__}: load_digits, {data[0].shape[0]} train / "
          f"{data[1].shape[0]} test samples, {X.shape[1]} features, 10 classes, "
          f"{args.threads} BLAS thread{'s' if args.threads > 1 else ''}\n")
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours, status = _first_order(args, data, epochs, repeats)
        _second_order(data, max_iter=10 if args.quick else 25)
        _curvature_facts(ours, data[0], data[2])
    _next_steps()
    return status


if __name__ == "__main__":
    sys.exit(main())
