"""Dense NumPy reference implementation of the MLP objective and its derivatives.

Written independently of the package, for testing only: plain loops over layers,
closed-form activation derivatives, everything in float64, no attempt at speed.

Conventions (see ``/work/shared/design.md`` sections 1-3):

* ``sizes = [n_0, n_1, ..., n_L]``; ``theta`` is one flat vector ordered
  ``W_1, b_1, W_2, b_2, ...`` with each ``W_l`` row-major of shape
  ``(n_{l-1}, n_l)``.
* ``z_l = a_{l-1} @ W_l + b_l``; ``a_l = f(z_l)`` for hidden layers; ``z_L`` is the
  raw prediction, the output link is part of the loss.
* Objective ``L = sum_i w_i l_i / W + alpha / (2 W) sum_l ||W_l||_F^2`` with
  ``W = sum_i w_i`` (``N`` when unweighted); biases are not penalized.
* Per-sample losses on raw ``z``:

  - squared_error   ``0.5 * ||y - z||^2``
  - poisson         ``sum_k xlogy(y_k, y_k) - y_k z_k - y_k + exp(z_k)``
  - log_loss        ``logsumexp(z) * sum(y) - y . z``
  - binary_log_loss ``sum_k softplus(z_k) - y_k z_k``
"""
import numbers

import numpy as np
from scipy.special import expit, xlogy

ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "softplus", "swish", "mish")
LOSSES = ("squared_error", "poisson", "log_loss", "binary_log_loss")


# --------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------
def activation(name, z):
    """Return ``(f(z), f'(z), f''(z))`` elementwise, in closed form, float64."""
    z = np.asarray(z, dtype=np.float64)
    if name == "identity":
        return z.copy(), np.ones_like(z), np.zeros_like(z)
    if name == "logistic":
        s = expit(z)
        d = s * (1.0 - s)
        return s, d, d * (1.0 - 2.0 * s)
    if name == "tanh":
        t = np.tanh(z)
        d = 1.0 - t * t
        return t, d, -2.0 * t * d
    if name == "relu":
        # convention: relu'(0) = 0
        return np.maximum(z, 0.0), (z > 0).astype(np.float64), np.zeros_like(z)
    if name == "softplus":
        s = expit(z)
        return np.logaddexp(0.0, z), s, s * (1.0 - s)
    if name == "swish":
        # f = z s,  f' = s + z s (1 - s),  f'' = s (1 - s) (2 + z (1 - 2 s))
        s = expit(z)
        ds = s * (1.0 - s)
        return z * s, s + z * ds, ds * (2.0 + z * (1.0 - 2.0 * s))
    if name == "mish":
        # f = z t with t = tanh(softplus(z)); t' = (1 - t^2) s =: u s
        # f' = t + z u s;  f'' = u s (2 + z (1 - s - 2 t s))
        s = expit(z)
        t = np.tanh(np.logaddexp(0.0, z))
        u = 1.0 - t * t
        return z * t, t + z * u * s, u * s * (2.0 + z * (1.0 - s - 2.0 * t * s))
    raise ValueError(f"unknown activation {name!r}")


# --------------------------------------------------------------------------------------
# parameter layout
# --------------------------------------------------------------------------------------
def n_params(sizes):
    return int(sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:])))


def unpack(sizes, theta):
    """Lists ``coefs`` (n_in, n_out) and ``intercepts`` (n_out,), views into ``theta``."""
    theta = np.asarray(theta)
    assert theta.ndim == 1 and theta.shape[0] == n_params(sizes)
    coefs, intercepts = [], []
    pos = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        coefs.append(theta[pos:pos + n_in * n_out].reshape(n_in, n_out))
        pos += n_in * n_out
        intercepts.append(theta[pos:pos + n_out])
        pos += n_out
    return coefs, intercepts


def pack(coefs, intercepts):
    parts = []
    for W, b in zip(coefs, intercepts):
        parts.append(np.asarray(W).ravel())
        parts.append(np.asarray(b).ravel())
    return np.concatenate(parts)


def weight_mask(sizes):
    """Boolean (P,) vector, True on the entries of theta that are weights (not biases)."""
    mask = np.zeros(n_params(sizes), dtype=bool)
    coefs, _ = unpack(sizes, mask)
    for W in coefs:
        W[...] = True
    return mask


def init_params(sizes, activation_name="relu", random_state=None, dtype=np.float64):
    """scikit-learn's Glorot-uniform init (``BaseMultilayerPerceptron._init_coef``).

    For each layer in order: coef ``(n_in, n_out)`` then intercept ``(n_out,)``, both
    ``uniform(-b, b)`` from one RandomState, ``b = sqrt(factor / (n_in + n_out))`` with
    factor 2 for 'logistic' and 6 otherwise; drawn in float64, then cast to ``dtype``.
    """
    if random_state is None or random_state is np.random:
        rs = np.random.mtrand._rand
    elif isinstance(random_state, (numbers.Integral, np.integer)):
        rs = np.random.RandomState(random_state)
    elif isinstance(random_state, np.random.RandomState):
        rs = random_state
    else:
        raise ValueError(f"bad random_state {random_state!r}")
    factor = 2.0 if activation_name == "logistic" else 6.0
    parts = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(factor / (n_in + n_out))
        W = rs.uniform(-bound, bound, (n_in, n_out))
        b = rs.uniform(-bound, bound, n_out)
        parts += [W.astype(dtype).ravel(), b.astype(dtype)]
    return np.concatenate(parts)


# --------------------------------------------------------------------------------------
# forward pass and losses
# --------------------------------------------------------------------------------------
def forward(sizes, act, theta, X):
    """Return ``(zs, acts)``.

    ``zs[l]`` is the pre-activation of layer ``l + 1`` (``zs[-1]`` is the raw output
    ``z_L``); ``acts[l]`` is the input of layer ``l + 1`` (``acts[0] = X``) and
    ``acts[L] = z_L`` (no link).
    """
    X = np.asarray(X, dtype=np.float64)
    coefs, intercepts = unpack(sizes, np.asarray(theta, dtype=np.float64))
    L = len(coefs)
    zs, acts = [], [X]
    a = X
    for l in range(L):
        z = a @ coefs[l] + intercepts[l]
        zs.append(z)
        a = activation(act, z)[0] if l < L - 1 else z
        acts.append(a)
    return zs, acts


def as_2d_y(y, n_out):
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 1:
        assert n_out == 1
        y = y.reshape(-1, 1)
    assert y.shape[1] == n_out
    return y


def sample_coefficients(sample_weight, n):
    """Return ``(c, W)``: ``c_i = w_i / W`` and ``W = sum_i w_i``."""
    if sample_weight is None:
        w = np.ones(n)
    else:
        w = np.asarray(sample_weight, dtype=np.float64).reshape(n)
    W = w.sum()
    return w / W, W


def _logsumexp(z):
    """Row-wise log(sum(exp(z))), (N,), shifted by the row maximum."""
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def per_sample_loss(loss, z, y):
    """(N,) raw per-sample losses ``l_i(z_i, y_i)``."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if loss == "squared_error":
        return 0.5 * np.sum((y - z) ** 2, axis=1)
    if loss == "poisson":
        return np.sum(xlogy(y, y) - y * z - y + np.exp(z), axis=1)
    if loss == "log_loss":
        return _logsumexp(z) * y.sum(axis=1) - np.sum(y * z, axis=1)
    if loss == "binary_log_loss":
        return np.sum(np.logaddexp(0.0, z) - y * z, axis=1)
    raise ValueError(f"unknown loss {loss!r}")


def link(loss, z):
    """Inverse link: the prediction ``mu`` from raw ``z`` (N, C)."""
    z = np.asarray(z, dtype=np.float64)
    if loss == "squared_error":
        return z.copy()
    if loss == "poisson":
        return np.exp(z)
    if loss == "log_loss":
        return _softmax(z)
    if loss == "binary_log_loss":
        return expit(z)
    raise ValueError(f"unknown loss {loss!r}")


def loss_grad_out(loss, z, y):
    """(N, C) gradient of ``l_i`` with respect to ``z_i``."""
    y = np.asarray(y, dtype=np.float64)
    mu = link(loss, z)
    if loss == "log_loss":
        return y.sum(axis=1, keepdims=True) * mu - y
    return mu - y


def loss_hessian_out(loss, z, y):
    """(N, C, C) Hessian of ``l_i`` with respect to ``z_i``."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    N, C = z.shape
    if loss == "squared_error":
        return np.broadcast_to(np.eye(C), (N, C, C)).copy()
    if loss == "poisson":
        return np.einsum("nc,cd->ncd", np.exp(z), np.eye(C))
    if loss == "log_loss":
        p = _softmax(z)
        H = np.einsum("nc,cd->ncd", p, np.eye(C)) - np.einsum("nc,nd->ncd", p, p)
        return y.sum(axis=1)[:, None, None] * H
    if loss == "binary_log_loss":
        s = expit(z)
        return np.einsum("nc,cd->ncd", s * (1.0 - s), np.eye(C))
    raise ValueError(f"unknown loss {loss!r}")


def loss(sizes, act, loss_name, theta, X, y, sample_weight=None, alpha=0.0):
    """The objective ``L(theta)`` (float)."""
    zs, _ = forward(sizes, act, theta, X)
    y = as_2d_y(y, sizes[-1])
    c, W = sample_coefficients(sample_weight, zs[-1].shape[0])
    value = float(np.sum(c * per_sample_loss(loss_name, zs[-1], y)))
    coefs, _ = unpack(sizes, np.asarray(theta, dtype=np.float64))
    value += alpha / (2.0 * W) * sum(float(np.sum(Wl * Wl)) for Wl in coefs)
    return value


def predict(sizes, act, loss_name, theta, X):
    """Outputs after the link, always (N, n_L)."""
    zs, _ = forward(sizes, act, theta, X)
    return link(loss_name, zs[-1])


# --------------------------------------------------------------------------------------
# backprop
# --------------------------------------------------------------------------------------
def _backprop_sum(sizes, act, theta, zs, acts, delta_L):
    """Gradient pieces of ``sum_rows(delta_L * z_L)``: explicit matrix backprop.

    Returns flat (P,) vector: grad W_l = a_{l-1}^T delta_l, grad b_l = sum_rows delta_l.
    """
    coefs, _ = unpack(sizes, np.asarray(theta, dtype=np.float64))
    L = len(coefs)
    gW = [None] * L
    gb = [None] * L
    delta = np.asarray(delta_L, dtype=np.float64)
    for l in range(L - 1, -1, -1):
        gW[l] = acts[l].T @ delta
        gb[l] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ coefs[l].T) * activation(act, zs[l - 1])[1]
    return pack(gW, gb)


def _backprop_rows(sizes, act, theta, zs, acts, delta_L):
    """Per-row gradients (R, P): row r is the gradient of ``delta_L[r] . z_L[r]``.

    Independent of ``_backprop_sum``: weight gradients as explicit per-row outer
    products, assembled layer by layer into the theta layout.
    """
    coefs, _ = unpack(sizes, np.asarray(theta, dtype=np.float64))
    L = len(coefs)
    delta = np.asarray(delta_L, dtype=np.float64)
    R = delta.shape[0]
    out = np.zeros((R, n_params(sizes)))
    # offsets of each layer's block in theta
    offsets = []
    pos = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        offsets.append(pos)
        pos += n_in * n_out + n_out
    for l in range(L - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        start = offsets[l]
        for r in range(R):
            out[r, start:start + n_in * n_out] = np.outer(acts[l][r], delta[r]).ravel()
            out[r, start + n_in * n_out:start + n_in * n_out + n_out] = delta[r]
        if l > 0:
            delta = (delta @ coefs[l].T) * activation(act, zs[l - 1])[1]
    return out


def loss_grad(sizes, act, loss_name, theta, X, y, sample_weight=None, alpha=0.0):
    """``(L(theta), grad L(theta))`` by explicit backprop."""
    theta = np.asarray(theta, dtype=np.float64)
    zs, acts = forward(sizes, act, theta, X)
    y = as_2d_y(y, sizes[-1])
    c, W = sample_coefficients(sample_weight, zs[-1].shape[0])
    delta_L = c[:, None] * loss_grad_out(loss_name, zs[-1], y)
    grad = _backprop_sum(sizes, act, theta, zs, acts, delta_L)
    grad += (alpha / W) * np.where(weight_mask(sizes), theta, 0.0)
    return loss(sizes, act, loss_name, theta, X, y, sample_weight, alpha), grad


def per_sample_grads(sizes, act, loss_name, theta, X, y):
    """(N, P): row i is the gradient of the raw per-sample loss ``l_i`` (no weight, no
    regularizer)."""
    zs, acts = forward(sizes, act, theta, X)
    y = as_2d_y(y, sizes[-1])
    return _backprop_rows(sizes, act, theta, zs, acts, loss_grad_out(loss_name, zs[-1], y))


def jacobian(sizes, act, theta, X):
    """(N, n_L, P): ``d z_L(x_i)_c / d theta`` by backprop of unit vectors."""
    zs, acts = forward(sizes, act, theta, X)
    N = zs[-1].shape[0]
    C = sizes[-1]
    J = np.empty((N, C, n_params(sizes)))
    for i in range(N):
        # C copies of sample i, seeded with the rows of the identity
        zs_i = [np.repeat(z[i:i + 1], C, axis=0) for z in zs]
        acts_i = [np.repeat(a[i:i + 1], C, axis=0) for a in acts]
        J[i] = _backprop_rows(sizes, act, theta, zs_i, acts_i, np.eye(C))
    return J


# --------------------------------------------------------------------------------------
# curvature
# --------------------------------------------------------------------------------------
def ggn(sizes, act, loss_name, theta, X, y, sample_weight=None, alpha=0.0):
    """``sum_i c_i J_i^T H_i J_i + alpha / W`` on weight entries (P, P)."""
    zs, _ = forward(sizes, act, theta, X)
    y = as_2d_y(y, sizes[-1])
    c, W = sample_coefficients(sample_weight, zs[-1].shape[0])
    J = jacobian(sizes, act, theta, X)
    H = loss_hessian_out(loss_name, zs[-1], y)
    G = np.einsum("i,icp,icd,idq->pq", c, J, H, J)
    G += np.diag((alpha / W) * weight_mask(sizes))
    return 0.5 * (G + G.T)


def efisher(sizes, act, loss_name, theta, X, y, sample_weight=None, alpha=0.0):
    """``sum_i c_i g_i g_i^T + alpha / W`` on weight entries, g_i per-sample grads."""
    g = per_sample_grads(sizes, act, loss_name, theta, X, y)
    c, W = sample_coefficients(sample_weight, g.shape[0])
    F = np.einsum("i,ip,iq->pq", c, g, g)
    F += np.diag((alpha / W) * weight_mask(sizes))
    return 0.5 * (F + F.T)


def fd_grad(f, theta, eps=1e-3):
    """4th-order central finite differences of a scalar- or array-valued ``f``.

    Returns an array of shape ``f(theta).shape + (P,)``.
    """
    theta = np.asarray(theta, dtype=np.float64)
    f0 = np.asarray(f(theta), dtype=np.float64)
    out = np.empty(f0.shape + (theta.size,))
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = eps
        fp1 = np.asarray(f(theta + e), dtype=np.float64)
        fm1 = np.asarray(f(theta - e), dtype=np.float64)
        fp2 = np.asarray(f(theta + 2 * e), dtype=np.float64)
        fm2 = np.asarray(f(theta - 2 * e), dtype=np.float64)
        out[..., j] = (-fp2 + 8.0 * fp1 - 8.0 * fm1 + fm2) / (12.0 * eps)
    return out


def hessian(sizes, act, loss_name, theta, X, y, sample_weight=None, alpha=0.0, eps=1e-3):
    """Exact Hessian by 4th-order central differences of ``loss_grad``, symmetrized.

    Beware relu: a difference stencil that crosses a kink is meaningless.
    """
    def g(t):
        return loss_grad(sizes, act, loss_name, t, X, y, sample_weight, alpha)[1]

    H = fd_grad(g, theta, eps)
    return 0.5 * (H + H.T)


# --------------------------------------------------------------------------------------
# test problems
# --------------------------------------------------------------------------------------
def make_targets(loss_name, n, n_out, rng):
    """Float targets (n, n_out) suitable for ``loss_name``."""
    if loss_name == "squared_error":
        return rng.standard_normal((n, n_out))
    if loss_name == "poisson":
        return rng.poisson(1.5, (n, n_out)).astype(np.float64)
    if loss_name == "log_loss":
        return np.eye(n_out)[rng.integers(0, n_out, n)]
    if loss_name == "binary_log_loss":
        return rng.integers(0, 2, (n, n_out)).astype(np.float64)
    raise ValueError(f"unknown loss {loss_name!r}")


def make_problem(sizes, loss_name, n=9, seed=0, weighted=False, scale=0.8):
    """A small random problem ``(theta, X, y, sample_weight)`` in float64.

    ``theta`` is uniform(-scale, scale) (larger than the Glorot init, so that every
    activation is exercised in its nonlinear range), ``X`` standard normal, ``y`` as
    ``make_targets``; ``sample_weight`` uniform(0.5, 2) when ``weighted`` else None.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0]))
    theta = rng.uniform(-scale, scale, n_params(sizes))
    y = make_targets(loss_name, n, sizes[-1], rng)
    sw = rng.uniform(0.5, 2.0, n) if weighted else None
    return theta, X, y, sw


# --------------------------------------------------------------------------------------
# curvature: per-sample Hessians, layer blocks, Kronecker factors (added for
# tests/test_curvature.py and tests/test_operators.py)
# --------------------------------------------------------------------------------------
def per_sample_hessians(sizes, act, loss_name, theta, X, y, eps=1e-3):
    """(N, P, P): the Hessian of each raw per-sample loss ``l_i``, symmetrized.

    4th-order central differences (``fd_grad``) of ``per_sample_grads``: one sweep
    serves every sample weighting and regularizer (see ``hessian_from_per_sample``).
    Beware relu: a difference stencil that crosses a kink is meaningless.
    """
    y = as_2d_y(y, sizes[-1])
    Hs = fd_grad(lambda t: per_sample_grads(sizes, act, loss_name, t, X, y), theta, eps)
    return 0.5 * (Hs + Hs.transpose(0, 2, 1))


def hessian_from_per_sample(sizes, Hs, sample_weight=None, alpha=0.0):
    """The objective's Hessian ``sum_i c_i H_i + alpha / W`` on weight entries (P, P).

    The objective is a weighted mean of the per-sample losses plus a quadratic
    regularizer, so its Hessian is the same weighted mean of ``Hs`` (N, P, P) plus
    ``alpha / W`` on the diagonal entries of the weights.
    """
    c, W = sample_coefficients(sample_weight, Hs.shape[0])
    return np.einsum("i,ipq->pq", c, Hs) + np.diag((alpha / W) * weight_mask(sizes))


def hessian_backprop(sizes, act, loss_name, theta, X, y, sample_weight=None, alpha=0.0):
    """Exact Hessian (P, P) by Hessian backpropagation, no finite differences.

    Dense per-sample matrices in plain einsum, from this module's forward pass and
    closed-form derivatives. With ``B_ml = dz_m / dz_l`` (``B_mm = I``,
    ``dz_{l+1} / dz_l = W_{l+1}^T diag(f'(z_l))``), the z-Hessians
    ``Hz_L = c_i H_i`` and ``Hz_l = B^T Hz_{l+1} B + diag(e_l f''(z_l))`` (``e_l``
    the weighted ``dL / da_l``), the block of layers l <= m, rows ``(p, q)`` of
    ``[W_l; b_l]`` and columns ``(p', q')`` of ``[W_m; b_m]``, is

        sum_i a~_l[p] a~_m[p'] (B_ml^T Hz_m)[q, q']
          + [l < m, p' a weight row] sum_i a~_l[p] (d a_{m-1}[p'] / dz_l[q]) delta_m[q']

    (``a~ = [a, 1]``, ``delta_m`` the weighted ``dL / dz_m``), plus ``alpha / W`` on the
    weight entries of the diagonal.
    """
    theta = np.asarray(theta, dtype=np.float64)
    zs, acts = forward(sizes, act, theta, X)
    y = as_2d_y(y, sizes[-1])
    c, W = sample_coefficients(sample_weight, zs[-1].shape[0])
    coefs, _ = unpack(sizes, theta)
    L = len(coefs)
    d1 = [activation(act, z)[1] for z in zs[:-1]]
    d2 = [activation(act, z)[2] for z in zs[:-1]]
    delta = [None] * L
    Hz = [None] * L
    delta[L - 1] = c[:, None] * loss_grad_out(loss_name, zs[-1], y)
    Hz[L - 1] = c[:, None, None] * loss_hessian_out(loss_name, zs[-1], y)
    for l in range(L - 2, -1, -1):
        e = delta[l + 1] @ coefs[l + 1].T
        delta[l] = e * d1[l]
        step = coefs[l + 1].T[None] * d1[l][:, None, :]          # dz_{l+1} / dz_l
        Hz[l] = np.einsum("iql,iqr,irk->ilk", step, Hz[l + 1], step)
        Hz[l] += np.einsum("il,lk->ilk", e * d2[l], np.eye(sizes[l + 1]))
    # B[m][l] = dz_m / dz_l, (N, n_m, n_l) for l <= m
    B = [[None] * L for _ in range(L)]
    for m in range(L):
        B[m][m] = np.broadcast_to(np.eye(sizes[m + 1]), (len(c),) + (sizes[m + 1],) * 2)
        for l in range(m - 1, -1, -1):
            B[m][l] = np.einsum("imq,ql,il->iml", B[m][l + 1], coefs[l + 1].T, d1[l])
    ins = [np.hstack([a, np.ones((a.shape[0], 1))]) for a in acts[:L]]
    H = np.zeros((n_params(sizes),) * 2)
    sl = layer_slices(sizes)
    for l in range(L):
        for m in range(l, L):
            K = np.einsum("iml,imk->ilk", B[m][l], Hz[m])
            blk = np.einsum("ip,iP,iqQ->pqPQ", ins[l], ins[m], K)
            if l < m:
                Ja = d1[m - 1][:, :, None] * B[m - 1][l]              # d a_{m-1} / dz_l
                blk[:, :, :-1, :] += np.einsum("ip,iPq,iQ->pqPQ", ins[l], Ja, delta[m])
            n_l, n_m = ins[l].shape[1] * sizes[l + 1], ins[m].shape[1] * sizes[m + 1]
            H[sl[l], sl[m]] = blk.reshape(n_l, n_m)
            H[sl[m], sl[l]] = blk.reshape(n_l, n_m).T
    return H + np.diag((alpha / W) * weight_mask(sizes))


def layer_slices(sizes):
    """One slice of theta per layer, covering ``W_l`` then ``b_l``."""
    out, pos = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out.append(slice(pos, pos + n_in * n_out + n_out))
        pos += n_in * n_out + n_out
    return out


def diagonal_blocks(sizes, M):
    """The per-layer diagonal blocks ``M[s, s]`` of a (P, P) matrix, a list."""
    return [M[s, s] for s in layer_slices(sizes)]


def kfac(sizes, act, loss_name, theta, X, y, sample_weight=None):
    """K-FAC factors ``[(A_l, G_l)]`` by their definition (design.md section 3).

    ``A_l = sum_i c_i a_i a_i^T`` with ``a_i`` the input of layer l with a 1 appended
    last; ``G_l = sum_i c_i B_i^T H_i B_i`` with ``B_i = dz_L / dz_l`` (C, n_l), read
    off the bias columns of the Jacobian (``dz_L / db_l = dz_L / dz_l``) and ``H_i``
    the loss Hessian in output space.
    """
    zs, acts = forward(sizes, act, theta, X)
    y = as_2d_y(y, sizes[-1])
    c, _ = sample_coefficients(sample_weight, zs[-1].shape[0])
    J = jacobian(sizes, act, theta, X)
    H = loss_hessian_out(loss_name, zs[-1], y)
    factors = []
    for l, s in enumerate(layer_slices(sizes)):
        n_out = sizes[l + 1]
        a = np.hstack([acts[l], np.ones((acts[l].shape[0], 1))])
        B = J[:, :, s.stop - n_out:s.stop]
        factors.append((np.einsum("i,ip,iq->pq", c, a, a),
                        np.einsum("i,icp,icd,idq->pq", c, B, H, B)))
    return factors


# --------------------------------------------------------------------------------------
# data for the estimator tests
# --------------------------------------------------------------------------------------
def estimator_data(kind, n=120, seed=0):
    """Small (X, y) with 6 features for the estimator tests, by kind of target:
    'multiclass' (3 classes), 'binary', 'multilabel' (3 labels), 'regression',
    'multioutput' (2 targets) or 'poisson' (counts)."""
    from sklearn.datasets import (make_classification, make_multilabel_classification,
                                  make_regression)
    rng = np.random.RandomState(seed)
    if kind == "multiclass":
        return make_classification(n, 6, n_informative=4, n_classes=3, random_state=seed)
    if kind == "binary":
        return make_classification(n, 6, random_state=seed)
    if kind == "multilabel":
        return make_multilabel_classification(n, 6, n_classes=3, random_state=seed)
    X, y = make_regression(n, 6, n_targets=2 if kind == "multioutput" else 1, noise=1.0,
                           random_state=seed)
    if kind == "poisson":
        return X, rng.poisson(np.exp(0.4 * X[:, 0]))
    return X, y / 100
