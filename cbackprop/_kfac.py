"""K-FAC: Kronecker-factored approximate curvature (Martens and Grosse 2015).

The (W_l, b_l) block of the GGN (for the canonical losses, the Fisher) is
approximated by ``A_l (x) G_l``: ``A_l`` the second moment of the layer's
input with a 1 appended last (the bias row of the augmented ``(n_in + 1,
n_out)`` block, contiguous in theta), ``G_l`` the second moment of the
backpropagated output-space factors at the layer's pre-activation. The
inverse of a sum of Kronecker products is cheap: with the factors' eigen-
decompositions, ``(A (x) G)^{-1} vec(M) = vec(A^{-1} M G^{-1})`` in the
row-major vec of theta.

Three estimates of ``G_l`` (``curvature``):

* ``'exact'``: the loss-Hessian factor's C columns backpropagated
  (``Network.kfac``): exact K-FAC, C backward passes;
* ``'mc'``: one target per datum drawn from the model's predictive
  distribution and its gradient backpropagated, an unbiased estimate at the
  cost of one backward pass (Martens and Grosse, section 5; kfac-jax's
  default ``'fisher_gradients'``), the choice when outputs are many;
* ``'empirical'``: the observed targets' gradients (the empirical Fisher).

What each step does (paper sections in brackets, kfac-jax defaults where the
paper leaves a choice):

1. Factors of the current batch averaged into exponential moving averages
   with weight ``min(1 - 1/k, ema_decay)`` for the k-th estimate (section 5).
   Before the first step, ``burnin`` estimates on successive batches seed
   the averages (kfac-jax's ``num_burnin_steps``).
2. Eigendecompositions of the averages refreshed every ``inverse_every``
   steps, and at every one of the first ``inverse_every`` steps, when the
   averages move fastest (section 8 refreshes every 20 steps; kfac-jax 5).
3. Factored Tikhonov damping with the pi heuristic (section 6.3):
   ``(A + pi sqrt(gamma) I) (x) (G + sqrt(gamma) / pi I)``, ``pi^2 =
   (tr A / dim A) / (tr G / dim G)``, ``gamma = damping + alpha / W``.
4. The proposal ``Delta = -F^{-1} g`` and the previous update ``delta0``
   combined as ``alpha Delta + mu delta0`` with the coefficients minimizing
   the exact quadratic model ``g.d + d^T (G + damping I) d / 2`` (a 2 x 2
   system whose matrix ``V^T G V = (J V)^T H (J V)`` needs the R-forward
   pass and the loss Hessian only, no backward pass; section 7), or with a fixed learning rate
   and momentum, the proposal scaled by ``min(1, sqrt(kl_clip /
   (lr^2 |g.Delta|)))`` (KL clipping: Ba, Grosse and Martens 2017; the
   ``norm_constraint`` of kfac-jax and tensorflow/kfac).
5. Every ``damping_every`` steps (T1), the reduction ratio ``rho`` of the
   batch loss against the quadratic model without the damping term
   (kfac-jax's ``include_damping_in_quad_change=False``) scales the damping
   by ``damping_decay ** damping_every`` (rho > 3/4) or its inverse
   (rho < 1/4): section 6.5's ``omega = (19/20)^T1``, kfac-jax's
   ``0.9 ** 5``.

A step whose update or loss is not finite is rejected: the parameters stay,
the momentum is dropped and the damping grows tenfold (as LM's ``mu_inc``);
status -3 once it exceeds ``max_damping``.

What a step computes on a batch that fits one kernel call
(:class:`_BatchState`): one forward and backward pass for the loss and
gradient, whose forward cache (Z, A, f') the step keeps; from it, without
another forward pass, the 'mc' factors (one backward pass of the sampled
output deltas) and the 2 x 2 system (one R-forward pass of the two
directions). The damped inverse applies two GEMMs per side and layer on
preallocated buffers, its damped eigenvalue products kept until the damping
or the decomposition changes. Batches larger than one kernel call take the
prepared problem's chunked data loop instead; the results agree to rounding.

The network's internals are used in :func:`_forward_state` (the 'empirical'
factors and :func:`kfac_factors`) and :class:`_BatchState` (the kernels'
shared forward cache).
"""
import math

import numpy as np
from scipy.optimize import OptimizeResult
from scipy.special import expit
from sklearn.utils import check_random_state

from cbackprop import _assembly, _curvature
from cbackprop._problem import CHUNK_ENTRIES, Problem, first_order_state, sum_over_parts
from cbackprop._sparse import CSRRows
from cbackprop._validation import check_theta
from cbackprop._threads import blas_section
from cbackprop.optimize import (TERMINATION_MESSAGES, _call, _check_callback, _check_int,
                                _check_real, _gradient_converged, _prepare, _result,
                                _stalled)

__all__ = ["kfac", "kfac_factors", "damped_inverse_apply", "quadratic_coefficients",
           "estimator_kwargs", "epoch_callback"]

CURVATURES = ("auto", "exact", "mc", "empirical")
EXACT_MAX_OUTPUTS = 4     # 'auto': exact factors up to this many outputs, else 'mc'
REJECT_FACTOR = 10.0      # damping growth after a non-finite step (LM's mu_inc)
assert {-3, -2, 0, 1, 2} <= set(TERMINATION_MESSAGES)


# ------------------------------------------------------------ the factors
def _forward_state(net, theta, X, Y):
    """Layer inputs, raw deltas and f' of a batch: the one internal surface.

    Views into the network's scratch buffers, valid until the next call.

    Returns
    -------
    inputs : list of (N, n_l) arrays, the input of each layer (X first)
    deltas : list of (N, n_{l+1}) arrays, ``dl_i / dz_l`` of the unweighted
        per-sample losses (observed targets)
    fprime : list of (N, n_{l+1}) arrays, f'(z_l) of the hidden layers
    z_out : (N, n_L) raw outputs
    """
    N = X.shape[0]
    # Unit weights and W = 1: the deltas are the raw per-sample ones.
    Z, A, F1, _, DL, _ = first_order_state(net, theta, X, Y, None, 1.0)
    block = lambda S, l: net.layout.layer(S, l, N)[0]
    L = net.n_layers
    inputs = [X] + [block(A, l) for l in range(L - 1)]
    return (inputs, [block(DL, l) for l in range(L)],
            [block(F1, l) for l in range(L - 1)], block(Z, L - 1))


def _sample_output_deltas(loss, z, rng):
    """Gradients at z of the loss at targets drawn from the model: ``mu - y~``.

    Their second moment is the loss Hessian in output space for every
    canonical pair (identity: unit Gaussian noise; exp: Poisson; softmax:
    categorical; logistic: Bernoulli).
    """
    z = np.asarray(z, dtype=np.float64)
    if loss == "squared_error":
        return rng.standard_normal(z.shape)
    if loss == "poisson":
        mu = np.exp(z)
        return mu - rng.poisson(mu)
    if loss == "log_loss":
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        draw = (p.cumsum(axis=1) > rng.random_sample((z.shape[0], 1))).argmax(axis=1)
        p[np.arange(z.shape[0]), draw] -= 1.0
        return p
    s = expit(z)
    return s - (rng.random_sample(z.shape) < s)


def _backprop(net, theta, top, fprime):
    """Deltas of every layer from output deltas ``top`` (N, n_L)."""
    coefs, _ = net.unpack(theta)
    deltas = [top]
    for l in range(net.n_layers - 1, 0, -1):
        deltas.append((deltas[-1] @ coefs[l].T) * fprime[l - 1])
    return deltas[::-1]


def _input_factor(a, root, scale):
    """``sum_i c_i [a_i, 1][a_i, 1]^T`` ((n_in + 1) square, the 1 last):
    the Gram matrix of the augmented rows (see :func:`_gram`); a dense or
    CSR rows (the sparse Gram X^T diag(c) X, densified at the end)."""
    if isinstance(a, CSRRows):
        n_in = a.shape[1]
        c = np.ones(a.shape[0]) if root is None else np.square(root[:, 0], dtype=np.float64)
        Xs = a.tocsr().astype(np.float64)
        F = np.empty((n_in + 1, n_in + 1))
        F[:n_in, :n_in] = (Xs.T @ Xs.multiply(c[:, None]).tocsr()).toarray()
        F[n_in, :n_in] = F[:n_in, n_in] = Xs.T @ c
        F[n_in, n_in] = c.sum()
        return F * scale if scale != 1.0 else F
    aug = np.empty((a.shape[0], a.shape[1] + 1))
    aug[:, :-1] = a
    aug[:, -1] = 1.0
    return _gram(aug, root, scale)


def kfac_factors(net, theta, X, y, sample_weight=None, *, curvature="exact",
                 random_state=None):
    """Kronecker factors ``[(A_l, G_l)]`` of one batch, in float64.

    ``curvature='exact'`` is :meth:`Network.kfac`; ``'mc'`` replaces the
    loss-Hessian factor by the gradient at one target per datum drawn from
    the model (``E[G_mc] = G_exact``); ``'empirical'`` uses the observed
    targets' gradients. ``A_l`` is the same in all three;
    ``c_i = w_i / W`` weights both.

    Returns
    -------
    list of (A_l of shape (n_in + 1, n_in + 1), G_l of shape (n_out, n_out))
    """
    if curvature not in CURVATURES[1:]:
        raise ValueError(f"unknown curvature {curvature!r}; expected one of "
                         f"{list(CURVATURES[1:])}")
    theta = check_theta(theta, net.n_params, net.dtype)
    return _batch_factors(Problem(net, X, y, sample_weight), theta, curvature,
                          check_random_state(random_state))


def _batch_factors(problem, theta, curvature, rng):
    """kfac_factors of a prepared (in-memory) problem, ``c_i = w_i / W``
    with its weight sum W."""
    net, X, sw = problem.net, problem.X, problem.sw
    if curvature == "exact":
        return [(A.astype(np.float64), G.astype(np.float64))
                for A, G in _assembly.kfac(problem, theta)]
    inputs, deltas, fprime, z = _forward_state(net, theta, X, problem.Y)
    if curvature == "mc":
        top = _sample_output_deltas(net.loss_name, z, rng)
        deltas = _backprop(net, theta.astype(np.float64), top, fprime)
    return _factors_of(inputs, deltas, sw, problem.weight_sum)


def _factors_of(inputs, deltas, sw, sw_sum):
    """[(A_l, G_l)] from the layer inputs and the deltas, weights w_i / W."""
    # Unit weights: c_i = 1 / W for all rows, applied once to the Gram matrix.
    root = None if sw is None else np.sqrt(sw.astype(np.float64) / sw_sum)[:, None]
    scale = 1.0 / sw_sum if sw is None else 1.0
    return [(_input_factor(a, root, scale), _gram(d, root, scale))
            for a, d in zip(inputs, deltas)]


def _gram(d, root, scale):
    """``scale sum_i c_i d_i d_i^T`` from the rows d_i and ``root`` (N, 1)
    the sqrt(c_i) (None: c_i = 1), in float64 (one symmetric rank-N update)."""
    b = np.asarray(d, dtype=np.float64) if root is None else np.multiply(
        d, root, dtype=np.float64)
    F = _assembly._gram(b)
    if scale != 1.0:
        F *= scale
    return F


# ------------------------------------------------- damped inverse, model
class _Eigen:
    """Eigendecomposition of one layer's factors, for any damping."""

    def __init__(self, A, G):
        self.sA, self.UA = np.linalg.eigh(A)
        self.sG, self.UG = np.linalg.eigh(G)
        # Rounding can leave tiny negative eigenvalues of these PSD factors.
        np.maximum(self.sA, 0.0, out=self.sA)
        np.maximum(self.sG, 0.0, out=self.sG)
        tA, tG = self.sA.mean(), self.sG.mean()
        self.pi = math.sqrt(tA / tG) if tA > 0 and tG > 0 else 1.0
        # Steps reuse one decomposition, and the damping changes only every
        # few of them: the damped eigenvalue products are kept per gamma.
        self._gamma, self._den = None, None
        n, m = len(self.sA), len(self.sG)
        self._T, self._U = np.empty((n, m)), np.empty((n, m))

    def solve(self, M, gamma, out=None):
        """``(A + pi r I)^{-1} M (G + r / pi I)^{-1}``, ``r = sqrt(gamma)``.

        M and out (n_in + 1, n_out) float64; out may be M."""
        if gamma != self._gamma:
            r = math.sqrt(gamma)
            self._den = np.outer(self.sA + self.pi * r, self.sG + r / self.pi)
            self._gamma = gamma
        T, U = self._T, self._U
        np.matmul(self.UA.T, M, out=U)
        np.matmul(U, self.UG, out=T)
        T /= self._den
        np.matmul(self.UA, T, out=U)
        return np.matmul(U, self.UG.T, out=np.empty_like(M) if out is None else out)


def damped_inverse_apply(net, factors, v, damping):
    """Apply the pi-damped K-FAC inverse to a vector of theta's layout.

    Per layer, ``((A + pi sqrt(d) I) (x) (G + sqrt(d) / pi I))^{-1}`` times
    the layer's slice of v, with ``pi^2 = (tr A / dim A) / (tr G / dim G)``.

    Parameters
    ----------
    factors : list of (A_l, G_l), as :func:`kfac_factors` returns
    v : array of shape (n_params,)
    damping : float > 0

    Returns
    -------
    ndarray of shape (n_params,), float64
    """
    return _precondition(net, [_Eigen(A, G) for A, G in factors], v, damping)


def _precondition(net, eigens, v, gamma, out=None):
    """The damped inverse of every layer applied to v (P,), float64; into
    out (P,) float64 when given (out may be v)."""
    v = np.asarray(v, dtype=np.float64)
    out = np.empty(net.n_params) if out is None else out
    start = 0
    for (n_in, n_out), eig in zip(zip(net.layer_sizes[:-1], net.layer_sizes[1:]), eigens):
        stop = start + (n_in + 1) * n_out
        shape = (n_in + 1, n_out)
        eig.solve(v[start:stop].reshape(shape), gamma, out=out[start:stop].reshape(shape))
        start = stop
    return out


def quadratic_coefficients(VGV, VV, Vg, damping):
    """Coefficients minimizing the damped quadratic model over span(V).

    For directions V = [Delta, delta0], ``m(c) = c.Vg + c^T (VGV + damping
    VV) c / 2`` is minimized by solving the 2 x 2 (or 1 x 1) system; a
    singular system (delta0 zero or parallel to Delta) falls back to Delta
    alone.

    Parameters
    ----------
    VGV, VV : arrays of shape (k, k), ``V^T G V`` and ``V^T V``
    Vg : array of shape (k,), ``V^T g``
    damping : float >= 0

    Returns
    -------
    coef : ndarray of shape (k,)
    change : float
        The model's value at coef without the damping term, ``coef.Vg +
        coef^T VGV coef / 2`` (the denominator of the reduction ratio).
    """
    C = VGV + damping * VV
    k = len(Vg)
    coef = np.zeros(k)
    if k == 2:
        det = C[0, 0] * C[1, 1] - C[0, 1] ** 2
        if det > 1e-12 * C[0, 0] * C[1, 1] and C[0, 0] > 0:
            coef = np.linalg.solve(C, -Vg)
            return coef, float(coef @ Vg + 0.5 * coef @ VGV @ coef)
    if C[0, 0] > 0:
        coef[0] = -Vg[0] / C[0, 0]
    return coef, float(coef @ Vg + 0.5 * coef @ VGV @ coef)


def _next_damping(damping, rho, decay, lo, hi):
    """Levenberg-Marquardt style rule of section 6.5 on the ratio rho."""
    if rho > 0.75:
        damping *= decay
    elif rho < 0.25:
        damping /= decay
    return min(max(damping, lo), hi)


# ------------------------------------------------------ one batch's state
class _BatchState:
    """One batch at one theta: the objective, its gradient, the 'mc' factors
    and the GGN quadratic form of the step's 2 x 2 system from ONE forward
    pass.

    ``load`` runs the forward and backward pass of the gradient and keeps the
    forward cache (Z, A, f') in a workspace owned by the run; ``mc_factors``
    and ``quadratic`` read it, so they are valid for the theta and rows of the
    last ``load`` only. Arrays arrive validated (the solver's prepared
    problem): nothing is checked per call.
    """

    # Products of at most two vectors (Delta and the previous update).
    K = 2

    def __init__(self, net, n_rows):
        self.net, self.plan = net, net._plan
        self.ws = _curvature.GgnVpWorkspace(net._plan, n_rows, self.K, net.dtype)
        self.batch = None

    @staticmethod
    def fits(net, n_rows):
        """Whether one batch's state fits the kernels' memory budget
        (larger batches go through the chunked data loop)."""
        return (6 + 3 * _BatchState.K) * net._plan.width * n_rows <= CHUNK_ENTRIES

    def load(self, theta, batch, grad=None):
        """Objective at theta of ``batch`` (the :class:`Problem` of its rows,
        whose normalizer and regularizer are used); its gradient into grad."""
        self.batch = b = batch
        return _curvature.batch_state(self.plan, theta, b.X, b.Y, b.sw, b.weight_sum,
                                      b.alpha, grad, self.ws)

    def quadratic(self, theta, V):
        """``V G V^T`` (k, k) float64 for V (k, P) in the network's dtype: the
        R-forward pass and the loss Hessian, no backward pass."""
        b = self.batch
        out = np.empty((V.shape[0], V.shape[0]))
        _curvature.state_ggn_quadratic(self.plan, theta, b.X, b.Y, b.sw, b.weight_sum,
                                       b.alpha, V, out, self.ws)
        return out

    def mc_factors(self, theta, rng):
        """:func:`kfac_factors` with curvature 'mc' from the loaded state."""
        net, b = self.net, self.batch
        X, sw, W = b.X, b.sw, b.weight_sum
        N, L, lay = X.shape[0], net.n_layers, net.layout
        Z, A = self.ws.array("Z"), self.ws.array("A")
        z = lay.layer(Z, L - 1, N)[0]
        top = np.ascontiguousarray(_sample_output_deltas(net.loss_name, z, rng),
                                   dtype=net.dtype)
        store = _curvature.state_backprop(self.plan, theta, X, top, self.ws)
        inputs = [X] + [lay.layer(A, l, N)[0] for l in range(L - 1)]
        deltas = [lay.layer(store, l, N)[0] for l in range(L - 1)] + [top]
        return _factors_of(inputs, deltas, sw, W)


# ---------------------------------------------------------------- batches
class _Batches:
    """Successive mini-batches (shuffled each epoch) or the full batch, as
    prepared problems: a mini-batch is normalized by its own weight W_b and
    regularized by ``alpha / W_b`` (scikit-learn's mini-batch objective)."""

    def __init__(self, problem, batch_size, shuffle, rng):
        self.problem = problem
        N = problem.n_rows
        self.full = batch_size is None or batch_size >= N
        self.size = N if self.full else batch_size
        self.per_epoch = -(-N // self.size)
        self.shuffle, self.rng = shuffle, rng
        self.order, self.pos, self.epochs = np.arange(N), 0, 0

    def restart(self):
        """Begin the first epoch (after the burn-in)."""
        self.pos = self.epochs = 0

    def next(self):
        """The problem of the next batch."""
        if self.full:
            self.epochs += 1
            return self.problem
        if self.pos == 0 and self.shuffle:
            self.rng.shuffle(self.order)
        idx = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        if self.pos >= len(self.order):
            self.pos, self.epochs = 0, self.epochs + 1
        return self.problem.subsample(idx, own_regularizer=True)

    @property
    def epoch_end(self):
        return self.full or self.pos == 0


# ---------------------------------------------------------------- solver
def _check_options(o, net):
    """Validate kfac's options (a dict) in place; returns it."""
    o["max_iter"] = _check_int(o["max_iter"], "max_iter", 1)
    if o["batch_size"] is not None:
        o["batch_size"] = _check_int(o["batch_size"], "batch_size", 1)
    for name in ("damping", "min_damping"):
        o[name] = _check_real(o[name], name, gt=0)
    o["max_damping"] = _check_real(o["max_damping"], "max_damping", gt=0, finite=False)
    if o["min_damping"] > o["damping"] or o["damping"] > o["max_damping"]:
        raise ValueError("need min_damping <= damping <= max_damping, got "
                         f"{o['min_damping']}, {o['damping']}, {o['max_damping']}")
    o["damping_decay"] = _check_real(o["damping_decay"], "damping_decay", gt=0, lt=1)
    o["ema_decay"] = _check_real(o["ema_decay"], "ema_decay", ge=0, lt=1)
    for name in ("damping_every", "inverse_every"):
        o[name] = _check_int(o[name], name, 1)
    _check_step_rule(o)
    if o["curvature"] not in CURVATURES:
        raise ValueError(f"unknown curvature {o['curvature']!r}; expected one of "
                         f"{list(CURVATURES)}")
    if o["curvature"] == "auto":
        o["curvature"] = "exact" if net.n_outputs <= EXACT_MAX_OUTPUTS else "mc"
    if o["burnin"] is not None:
        o["burnin"] = _check_int(o["burnin"], "burnin", 0)
    if not isinstance(o["shuffle"], (bool, np.bool_)):
        raise ValueError(f"shuffle must be True or False, got {o['shuffle']!r}")
    o["ftol"] = _check_real(o["ftol"], "ftol", ge=0)
    o["gtol"] = _check_real(o["gtol"], "gtol", ge=0)
    o["callback"] = _check_callback(o["callback"])
    return o


def _check_cluster_options(o, n_rows):
    """On cluster data, full batch with deterministic factors only: the
    factors, losses, gradients and GGN products are then sums over the rows
    (one round of per-worker results each), while mini-batches would be
    drawn on the client and Monte-Carlo targets by every worker alike."""
    if o["batch_size"] is not None and o["batch_size"] < n_rows:
        raise ValueError(f"kfac on mini-batches (batch_size={o['batch_size']} < {n_rows} "
                         "rows) needs the rows in memory; on cluster data use the full "
                         "batch (batch_size=None; the estimators' batch_size='auto')")
    if o["curvature"] == "mc":
        raise ValueError("kfac's Monte-Carlo factors (curvature='mc', the 'auto' choice "
                         f"above {EXACT_MAX_OUTPUTS} outputs) need the rows in memory; on "
                         "cluster data pass curvature='exact' or 'empirical' (the "
                         "estimators' solver_options={'curvature': ...})")


def _check_step_rule(o):
    """learning_rate, momentum, kl_clip: all adaptive, or a fixed rule."""
    if o["learning_rate"] is None:
        if o["momentum"] is not None:
            raise ValueError("momentum is chosen with the learning rate by the quadratic "
                             "model when learning_rate is None; pass both or neither")
        if o["kl_clip"] is not None:
            raise ValueError("kl_clip applies to a fixed learning_rate only")
        return
    o["learning_rate"] = _check_real(o["learning_rate"], "learning_rate", gt=0)
    o["momentum"] = _check_real(0.0 if o["momentum"] is None else o["momentum"],
                                "momentum", ge=0, lt=1)
    if o["kl_clip"] is not None:
        o["kl_clip"] = _check_real(o["kl_clip"], "kl_clip", gt=0)


class _Curvature:
    """Moving averages of the factors and their eigendecompositions."""

    def __init__(self, net, curvature, ema_decay, inverse_every, rng):
        self.net, self.kind, self.decay = net, curvature, ema_decay
        self.every, self.rng = inverse_every, rng
        self.factors, self.count, self.eigens = None, 0, None

    def update(self, theta, batch, state=None):
        """Average in the factors of a batch (its :class:`Problem`, or a
        cluster problem); ``state``, when given, is the batch's
        :class:`_BatchState` at theta (the 'mc' factors share its forward
        pass)."""
        if state is not None and self.kind == "mc":
            new = state.mc_factors(theta, self.rng)
        else:
            # A sum over the rows: on a cluster, each worker's parts
            # (normalized by the global W) summed; in memory, one call.
            new = sum_over_parts(batch, _batch_factors, theta, self.kind, self.rng)
        self.count += 1
        w = min(1.0 - 1.0 / self.count, self.decay)
        if self.factors is None:
            self.factors = new
            return
        for F, Fn in zip(self.factors, new):
            for M, Mn in zip(F, Fn):       # M = w M + (1 - w) Mn, in place
                M *= w
                Mn *= 1.0 - w
                M += Mn

    def refresh(self, step):
        """Eigendecompose at the first ``every`` steps, then every ``every``."""
        if self.eigens is None or step < self.every or step % self.every == 0:
            self.eigens = [_Eigen(A, G) for A, G in self.factors]

    def direction(self, g, gamma, out):
        """out (P,) float64 = -(damped K-FAC inverse) g."""
        _precondition(self.net, self.eigens, g, gamma, out=out)
        return np.negative(out, out=out)


@blas_section
def kfac(net, theta0, X, y, sample_weight=None, *, max_iter=100, batch_size=None,
         curvature="auto", learning_rate=None, momentum=None, kl_clip=None,
         damping=1.0, min_damping=1e-8, max_damping=1e10, damping_decay=0.9,
         damping_every=5, ema_decay=0.95, inverse_every=5, burnin=None, shuffle=True,
         ftol=1e-12, gtol=1e-10, random_state=None, callback=None):
    """K-FAC (Martens and Grosse 2015) on full batches or mini-batches.

    See the module docstring for the algorithm. Each step costs a loss and
    gradient on the batch, one factor estimate (C backward passes for
    'exact', one for 'mc' sharing the gradient's forward pass, a forward
    and backward pass for 'empirical'), an R-forward pass of two vectors
    (the adaptive coefficients' 2 x 2 system) and, every ``inverse_every``
    steps, one symmetric eigendecomposition per factor.

    Parameters
    ----------
    net : Network
    theta0 : array of shape (n_params,)
        Starting point; not modified.
    X, y, sample_weight : the training data (see ``Network.loss``).
        Row-chunked dask arrays keep the rows on a dask.distributed cluster
        for the full batch with 'exact' or 'empirical' factors: the factors,
        losses, gradients and GGN products are sums of per-worker results
        and the rest runs on the client (ValueError for mini-batches and
        'mc').
    max_iter : int >= 1
        Steps (one per batch; status 0).
    batch_size : int >= 1, optional
        Rows per mini-batch (the last of an epoch may be smaller); None or
        >= N: full batch.
    curvature : {'auto', 'exact', 'mc', 'empirical'}
        Estimate of the G factors (module docstring); 'auto': 'exact' up to
        4 outputs, 'mc' above.
    learning_rate, momentum : float, optional
        None (default): both chosen every step by the exact quadratic model
        (section 7). A float learning_rate fixes them (momentum default 0).
    kl_clip : float > 0, optional
        With a fixed learning_rate: scale the proposal so that ``lr^2
        Delta^T F Delta <= kl_clip`` (kfac-jax's ``norm_constraint``; off
        by default as there).
    damping : float > 0
        Initial damping lambda (kfac-jax's ``initial_damping``; its examples
        use 1.0 as here). The factored damping is ``lambda + alpha / W``.
    min_damping, max_damping : float
        Bounds of lambda (kfac-jax: 1e-8 and inf); a non-finite step
        pushing lambda above max_damping stops with status -3.
    damping_decay : float in (0, 1)
        Per-step decay: the damping is scaled by ``damping_decay **
        damping_every`` at each adaptation (kfac-jax: 0.9, every 5 steps;
        the paper: 19/20, every 5).
    ema_decay : float in [0, 1)
        Decay of the factors' moving averages (0.95, paper and kfac-jax).
    inverse_every : int >= 1
        Steps between eigendecompositions (kfac-jax's 5).
    burnin : int >= 0, optional
        Factor estimates before the first step; default 10 (kfac-jax) when
        the estimates vary (mini-batches or 'mc'), 0 otherwise.
    shuffle : bool
        Shuffle the rows each epoch (mini-batches).
    ftol, gtol : float >= 0
        Full batch only: stop after a step lowering the loss by at most
        ``ftol * |f|`` (status 2), or when ``max|g| <= gtol`` (status 1).
    random_state : None, int or RandomState
        Shuffling and Monte-Carlo targets.
    callback : callable, optional
        ``callback(intermediate_result)`` after every step, with ``x, fun,
        nit, epoch, damping, learning_rate, momentum, accepted, rows``: ``fun`` is
        the loss at x (full batch) or the batch loss before the step
        (mini-batch, what scikit-learn's epoch loss averages), ``epoch`` the
        number of completed passes over the data, ``rows`` the batch's.
        Raise StopIteration to stop (status -2); :func:`epoch_callback`
        turns it into one call per epoch.

    Returns
    -------
    OptimizeResult
        ``x, fun, jac`` (the full-data loss and gradient at x), ``nit,
        nfev, njev, nhev`` (GGN-vector products), ``status, success,
        message`` (:data:`cbackprop.optimize.TERMINATION_MESSAGES`),
        ``damping`` (final lambda), ``epochs``, ``rejected`` (steps not
        taken).
    """
    o = _check_options(dict(
        max_iter=max_iter, batch_size=batch_size, curvature=curvature,
        learning_rate=learning_rate, momentum=momentum, kl_clip=kl_clip, damping=damping,
        min_damping=min_damping, max_damping=max_damping, damping_decay=damping_decay,
        damping_every=damping_every, ema_decay=ema_decay, inverse_every=inverse_every,
        burnin=burnin, shuffle=shuffle, ftol=ftol, gtol=gtol, callback=callback), net)
    theta, problem = _prepare(net, theta0, X, y, sample_weight)
    if not isinstance(problem, Problem):
        _check_cluster_options(o, problem.n_rows)
    rng = check_random_state(random_state)
    run = _Run(net, theta, _Batches(problem, o["batch_size"], o["shuffle"], rng), o, rng)
    status = run.loop()
    g = np.empty(net.n_params, net.dtype)
    f = problem.loss_grad(theta, g)
    return _result(status, x=theta, fun=float(f), jac=g, nit=run.nit,
                   nfev=run.nfev + 1, njev=run.njev + 1, nhev=run.nhev,
                   damping=run.damping, epochs=run.nit if run.full else run.batches.epochs,
                   rejected=run.rejected)


class _Run:
    """The state of one kfac() call; ``loop`` returns the status.

    A batch travels as the :class:`Problem` of its rows (validated once, by
    kfac); with ``state`` (a :class:`_BatchState`, when a batch fits one
    kernel call) its gradient, 'mc' factors and GGN products share one
    forward pass, else each goes through the problem's chunked data loop.
    Cluster data (the full batch of a :class:`DaskProblem`) have no state:
    their factors, gradients and GGN products are sums of per-worker results.
    """

    def __init__(self, net, theta, batches, o, rng):
        self.net, self.theta, self.batches, self.o = net, theta, batches, o
        self.curv = _Curvature(net, o["curvature"], o["ema_decay"], o["inverse_every"], rng)
        self.damping = o["damping"]
        self.prev = np.zeros(net.n_params)          # the previous update, float64
        self.proposal = np.empty(net.n_params)      # -F^{-1} g, float64
        self.nit = self.nfev = self.njev = self.nhev = self.rejected = 0
        self.full = batches.full
        burnin = o["burnin"]
        if burnin is None:
            burnin = 0 if self.full and o["curvature"] != "mc" else 10
        self.burnin = burnin
        # Cluster data stay on the workers: their batch (the full one) goes
        # through the problem's per-worker sums, as a too large batch does;
        # CSR rows take the problem's kernels too (the state's are dense).
        in_memory = (isinstance(batches.problem, Problem)
                     and not isinstance(batches.problem.X, CSRRows))
        self.state = _BatchState(net, batches.size) if in_memory and _BatchState.fits(
            net, batches.size) else None
        self.state_at = None        # the batch whose state at self.theta is loaded

    def _next_problem(self):
        """The next batch's problem (prepared by :class:`_Batches`)."""
        return self.batches.next()

    def _loss_grad(self, theta, pb):
        """(f, g) of batch pb at theta (self.theta or a trial point)."""
        g = np.empty(self.net.n_params, self.net.dtype)
        self.nfev += 1
        self.njev += 1
        if self.state is None:
            return pb.loss_grad(theta, g), g
        self.state_at = pb if theta is self.theta else None
        return self.state.load(theta, pb, g), g

    def _state_for(self, pb):
        """The batch state at (theta, pb), reloaded (uncounted) after it moved
        to a rejected trial point; None without a state."""
        if self.state is not None and self.state_at is not pb:
            self.state.load(self.theta, pb)
            self.state_at = pb
        return self.state

    def _batch(self):
        pb = self._next_problem()
        return (pb,) + self._loss_grad(self.theta, pb)

    def _quadratic(self, pb, V):
        """``V G V^T`` (k, k) float64 for V (k, P) float64, G the GGN of batch
        pb at theta (k GGN-vector products' worth)."""
        Vk = V.astype(self.net.dtype)
        self.nhev += V.shape[0]
        state = self._state_for(pb)
        if state is not None:
            return state.quadratic(self.theta, Vk)
        GV = pb.product("ggn_vp", self.theta, Vk, np.empty_like(Vk))
        return V @ GV.astype(np.float64).T

    def _burnin(self):
        for _ in range(self.burnin):
            pb = self._next_problem()
            state = None
            if self.state is not None and self.curv.kind == "mc":
                self.state.load(self.theta, pb)
                self.state_at, state = pb, self.state
            self.curv.update(self.theta, pb, state)
        self.batches.restart()

    def loop(self):
        o = self.o
        self._burnin()
        pb, f, g = self._batch()
        if not math.isfinite(f):
            raise ValueError(f"the loss at theta0 is not finite ({f})")
        while True:
            if self.full and _gradient_converged(g, o["gtol"]):
                return 1
            if self.nit >= o["max_iter"]:
                return 0
            f_new, g_new, accepted, info = self._step(pb, f, g)
            self.nit += 1
            if self.full:
                f_old = f
                if accepted:
                    f, g = f_new, g_new
            res = OptimizeResult(x=self.theta.copy(), fun=float(f), nit=self.nit,
                                 epoch=self.nit if self.full else self.batches.epochs,
                                 damping=self.damping,
                                 accepted=accepted, **info)
            if o["callback"] is not None and _call(o["callback"], res):
                return -2
            if not accepted and self.damping > o["max_damping"]:
                return -3
            if self.full and accepted and f_old >= f and _stalled(f_old, f, o["ftol"]):
                return 2
            if not self.full:
                pb, f, g = self._next_minibatch()

    def _next_minibatch(self):
        """The next batch's loss; a non-finite one undoes the last step."""
        pb, f, g = self._batch()
        if not math.isfinite(f) and np.any(self.prev):
            self.theta -= self.prev.astype(self.theta.dtype)
            self._reject()
            f, g = self._loss_grad(self.theta, pb)
        return pb, f, g

    def _reject(self):
        self.prev[:] = 0.0
        self.rejected += 1
        self.damping *= REJECT_FACTOR

    def _step(self, pb, f, g):
        """One K-FAC step on the batch: (f_new, g_new, accepted, info)."""
        o = self.o
        state = self._state_for(pb)
        self.curv.update(self.theta, pb, state)
        self.curv.refresh(self.nit)
        delta, lr, mom, change = self._update(pb, g)
        info = {"learning_rate": lr, "momentum": mom, "rows": pb.n_rows}
        if not np.isfinite(delta).all():
            self._reject()
            return None, None, False, info
        adapt = (self.nit + 1) % o["damping_every"] == 0
        trial = self.theta + delta.astype(self.theta.dtype)
        f_new = g_new = None
        if adapt and change is None:
            # G at theta, before a full-batch trial moves the state.
            change = self._model_change(pb, g, delta)
        if self.full:
            f_new, g_new = self._loss_grad(trial, pb)
        elif adapt:
            f_new = pb.loss(trial)
            self.nfev += 1
        if f_new is not None and not math.isfinite(f_new):
            self._reject()
            return None, None, False, info
        self.theta[:] = trial
        self.prev[:] = delta
        if self.full:
            self.state_at = pb      # the trial's state is the new theta's
        if adapt:
            rho = (f_new - f) / change if change < 0 else -math.inf
            self.damping = _next_damping(self.damping, rho,
                                         o["damping_decay"] ** o["damping_every"],
                                         o["min_damping"], o["max_damping"])
        return f_new, g_new, True, info

    def _update(self, pb, g):
        """(delta, learning rate, momentum, undamped model change or None)."""
        o = self.o
        D = self.curv.direction(g, self.damping + pb.reg_coef, self.proposal)
        if o["learning_rate"] is None:
            return self._adaptive(pb, g, D)
        lr = o["learning_rate"]
        if o["kl_clip"] is not None:
            q = abs(float(g.astype(np.float64) @ D))
            if q > 0:
                lr *= min(1.0, math.sqrt(o["kl_clip"] / (lr * lr * q)))
        return lr * D + o["momentum"] * self.prev, lr, o["momentum"], None

    def _adaptive(self, pb, g, D):
        """Learning rate and momentum from the exact quadratic model."""
        if not np.isfinite(D).all():
            return D.copy(), math.nan, math.nan, None
        V = np.stack([D, self.prev]) if np.any(self.prev) else D[None, :]
        coef, change = quadratic_coefficients(self._quadratic(pb, V), V @ V.T,
                                              V @ g.astype(np.float64), self.damping)
        mom = float(coef[1]) if len(coef) > 1 else 0.0
        return coef @ V, float(coef[0]), mom, change

    def _model_change(self, pb, g, delta):
        """``g.d + d^T G d / 2`` for a fixed-rate step (one GGN product)."""
        dGd = self._quadratic(pb, delta[None, :])[0, 0]
        return float(g.astype(np.float64) @ delta + 0.5 * dGd)


# ------------------------------------------------------------ estimators
def estimator_kwargs(estimator, n_samples):
    """:func:`kfac` arguments from an MLP estimator's parameters.

    * ``batch_size``: 'auto' -> full batch (the quadratic model's step
      sizes want low-noise curvature); an int -> mini-batches of
      ``min(batch_size, n_samples)`` rows (full batch when that is all).
    * ``max_iter``: full batch, steps (as 'lbfgs' and the other second-order
      solvers count); mini-batches, epochs, so ``max_iter * ceil(n_samples /
      batch_size)`` steps (as 'sgd' and 'adam' count).
    * ``tol``: full batch, the gradient tolerance ``gtol`` (as for 'lbfgs');
      mini-batches, scikit-learn's epoch rule, applied by
      :func:`epoch_callback` (``gtol=0`` here).
    * ``shuffle`` and ``random_state`` (the estimator's ``_random_state``
      when fitting has drawn it): mini-batch order and Monte-Carlo targets.
    * ``learning_rate_init`` and the other first-order parameters are not
      used: learning rate and momentum come from the quadratic model.

    Returns
    -------
    dict of keyword arguments for :func:`kfac` (without ``callback``)
    """
    size = estimator.batch_size
    full = size == "auto" or size >= n_samples
    kw = dict(shuffle=bool(estimator.shuffle),
              random_state=getattr(estimator, "_random_state", estimator.random_state))
    if full:
        return dict(kw, batch_size=None, max_iter=estimator.max_iter, gtol=estimator.tol)
    steps = -(-n_samples // size)
    return dict(kw, batch_size=int(size), max_iter=estimator.max_iter * steps, gtol=0.0)


def epoch_callback(callback, n_samples):
    """Wrap a callback so that it sees one result per epoch of mini-batches.

    ``callback`` gets ``OptimizeResult(x, fun, nit, damping)`` at the end of
    every epoch, ``fun`` the row-weighted mean of the epoch's batch losses
    (scikit-learn's ``loss_curve_`` entry) and ``nit`` the epoch number. The
    estimators apply scikit-learn's no-improvement rule to these epoch
    results (``BaseMLP._record``), as for 'sgd' and 'adam'.
    """
    state = {"sum": 0.0, "rows": 0}

    def wrapper(r):
        state["sum"] += r.fun * r.rows
        state["rows"] += r.rows
        if state["rows"] < n_samples:
            return
        loss = state["sum"] / state["rows"]
        state["sum"], state["rows"] = 0.0, 0
        callback(OptimizeResult(x=r.x, fun=loss, nit=r.epoch, damping=r.damping))
    return wrapper
