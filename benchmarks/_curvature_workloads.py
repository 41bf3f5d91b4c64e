"""Net A, the curvature workload, and its PyTorch (torch.func) twin; a deeper
net for the dense matrices.

Net A: 64-32-10 tanh, log_loss, the first 512 samples of load_digits
(pixels / 16), float64, P = 2410 (workloads.md). PyTorch is optional: the
torch builders raise ImportError when it is not installed, and the
benchmarks skip them.
"""
import numpy as np

SIZES = (64, 32, 10)
N_SAMPLES = 512


def net_a():
    """(net, theta, X, Y, v) for net A; v a fixed random direction."""
    import cbackprop as cb
    from sklearn.datasets import load_digits
    digits = load_digits()
    X = digits.data[:N_SAMPLES] / 16.0
    Y = np.eye(10)[digits.target[:N_SAMPLES]]
    net = cb.Network(SIZES, activation="tanh", loss="log_loss")
    theta = net.init_params(0)
    v = np.random.default_rng(0).standard_normal(net.n_params)
    return net, theta, X, Y, v


DEEP_SIZES = (10, 20, 20, 3)


def net_deep():
    """(net, theta, X, Y): 10-20-20-3 tanh, log_loss, 512 standard normal rows
    and uniform labels (seed 0), float64, P = 703. Two hidden layers: the exact
    Hessian's terms spanning three layers (cross terms, carried residual
    factors) that net A has not."""
    import cbackprop as cb
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N_SAMPLES, DEEP_SIZES[0]))
    Y = np.eye(DEEP_SIZES[-1])[rng.integers(0, DEEP_SIZES[-1], N_SAMPLES)]
    net = cb.Network(DEEP_SIZES, activation="tanh", loss="log_loss")
    return net, net.init_params(0), X, Y


def cbackprop_quantities(net, theta, X, Y, v):
    """name -> zero-argument callable computing that quantity with cbackprop."""
    from cbackprop import curvature
    op = curvature.HessianOperator(net, theta, X, Y)
    return {
        "loss_grad": lambda: net.loss_grad(theta, X, Y),
        "hvp": lambda: net.hvp(theta, X, Y, v),
        "ggn_vp": lambda: net.ggn_vp(theta, X, Y, v),
        "hessian": lambda: net.hessian(theta, X, Y),
        "ggn": lambda: net.ggn(theta, X, Y),
        "diag_ggn": lambda: net.diag_ggn(theta, X, Y),
        "diag_hessian": lambda: net.diag_hessian(theta, X, Y),
        "kfac": lambda: net.kfac(theta, X, Y),
        "top5_eigenvalues": lambda: curvature.eigenvalues(op, k=5, random_state=0),
    }


def torch_quantities(net, theta, X, Y, v):
    """The same quantities with torch.func (PyTorch's functional autodiff)."""
    import torch
    from torch.func import grad, hessian, jacrev, jvp

    torch.set_default_dtype(torch.float64)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    th, vt = torch.from_numpy(theta.copy()), torch.from_numpy(v)
    shapes = [((a, b), (b,)) for a, b in zip(SIZES[:-1], SIZES[1:])]

    def logits(t):
        out, start = Xt, 0
        for i, ((a, b), _) in enumerate(shapes):
            W = t[start:start + a * b].reshape(a, b)
            bias = t[start + a * b:start + a * b + b]
            start += a * b + b
            out = out @ W + bias
            if i < len(shapes) - 1:
                out = torch.tanh(out)
        return out

    def loss(t):
        return -(torch.log_softmax(logits(t), dim=1) * Yt).sum() / Xt.shape[0]

    def ggn():
        J = jacrev(logits)(th)                        # (N, C, P)
        p = torch.softmax(logits(th), dim=1)
        H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        return torch.einsum("ncp,ncd,ndq->pq", J, H, J) / Xt.shape[0]

    # Transforms built once, as a user would; calls reuse them.
    grad_fn, hess_fn = grad(loss), hessian(loss)
    return {
        "loss_grad": lambda: grad_fn(th),
        "hvp": lambda: jvp(grad_fn, (th,), (vt,))[1],
        "ggn_vp": None,
        "hessian": lambda: hess_fn(th),
        "ggn": ggn,
    }


def backpack_quantities(net, theta, X, Y, v):
    """BackPACK's extensions on the same net A (optional dependency)."""
    import torch
    from backpack import backpack, extend
    from backpack.extensions import KFAC, KFLR, DiagGGNExact, DiagHessian

    torch.set_default_dtype(torch.float64)
    model = extend(torch.nn.Sequential(torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.Tanh(),
                                       torch.nn.Linear(SIZES[1], SIZES[2])))
    lossf = extend(torch.nn.CrossEntropyLoss())
    Xt, yt = torch.from_numpy(X), torch.from_numpy(Y.argmax(1))

    def run(ext):
        def fn():
            model.zero_grad()
            loss = lossf(model(Xt), yt)
            with backpack(ext()):
                loss.backward()
        return fn

    def grad():
        model.zero_grad()
        lossf(model(Xt), yt).backward()

    return {"loss_grad": grad, "diag_ggn": run(DiagGGNExact), "diag_hessian": run(DiagHessian),
            "kfac": run(KFLR), "kfac_mc": run(KFAC)}
