"""Dense curvature matrices, per-layer blocks, diagonals and K-FAC factors.

Each quantity is a sum over rows, normalized by the problem's global weight W,
with the regularizer ``reg_coef`` added once on the weight entries. The dense
matrices and per-layer blocks (GGN, empirical Fisher, exact Hessian) are nogil
kernels that accumulate blocks of rows in place (:func:`_kron_sum`); for the
diagonals and K-FAC factors a chunk builder computes one chunk's terms from the
backpropagated per-sample factors and :func:`accumulate` sums the chunks of a
:class:`~cbackprop._problem.Problem`. With ``a~_i`` a layer's input with a 1
appended (weights and bias form the augmented ``(n_in + 1, n_out)`` block,
contiguous in theta), every curvature block is

    C_lm = sum_i (a~_li a~_mi^T) (x) K_lm,i      (Kronecker product)

with ``K_lm,i`` an ``(n_l, n_m)`` output-space matrix: the backpropagated loss
Hessian (GGN), the outer product of deltas (empirical Fisher) or the exact
z-Hessian of the Hessian backpropagation (plus, for the Hessian, the terms
where a layer's input depends on lower parameters). Reshaped, the sum over
samples is ``A2^T K`` with ``A2_i = vec(a~_li a~_mi^T)``: ``2 N P_l P_m`` flops,
a factor n_L below ``J^T S S^T J``.
"""
import numbers

import numpy as np
import scipy.sparse as sp
from scipy.linalg import blas as _scipy_blas

from cbackprop import _curvature
from cbackprop._problem import first_order_state, loss_factors
from cbackprop._sparse import CSRRows, dense_rows

DEFAULT_MAX_BYTES = 2 ** 31  # refuse dense matrices above 2 GiB by default
ASSEMBLY_ENTRIES = 1 << 22   # per-chunk intermediates: about 32 MB of float64
DENSE_BLOCK_BYTES = 32 << 20  # workspace of the dense Kronecker-sum kernels' blocks of rows


# ---------------------------------------------------------------- the data loop
def _entries_per_row(net):
    """Intermediates per sample: the products of the widest layer's inputs
    (a~ a~^T), the output-space matrices (n_l^2 per layer), the
    backpropagated loss factor (n_L per unit) and the first-order state."""
    s = net.layer_sizes
    width = sum(s[1:])
    return (max(s[:-1]) + 1) ** 2 + sum(n * n for n in s[1:]) + (s[-1] + 8) * width


def accumulate(problem, theta, build, dense=True):
    """Sum over row chunks of ``build(net, theta, X_c, Y_c, sw_c, W)``.

    Parts are arrays or lists of arrays; each is normalized by the problem's
    global weight W, so the sum is the whole data term. With ``dense``, a
    sparse X is densified one chunk at a time (quantities that read dense
    per-sample inputs of every layer; they are P or P x P anyway); without,
    the builds get the chunk's CSR rows.
    """
    net, W = problem.net, problem.weight_sum
    total = None
    for c in problem.chunks(_entries_per_row(net), ASSEMBLY_ENTRIES, min_rows=1):
        X, Y, sw = problem._part(c)
        part = build(net, theta, dense_rows(X) if dense else X, Y, sw, W)
        if total is None:
            total = part
        elif isinstance(part, list):
            total = [t + p for t, p in zip(total, part)]
        else:
            total = total + part
    return total


def check_dense(net, max_bytes):
    """ValueError when a dense (P, P) matrix exceeds ``max_bytes``."""
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    if not isinstance(limit, numbers.Real) or limit < 0:
        raise ValueError(f"max_bytes must be a number >= 0, got {max_bytes!r}")
    P = net.n_params
    nbytes = P * P * np.dtype(net.dtype).itemsize
    if nbytes > limit:
        raise ValueError(f"a dense {P} x {P} matrix of {np.dtype(net.dtype).name} "
                         f"needs {nbytes} bytes, above the limit of {int(limit)} bytes "
                         f"(pass max_bytes= to raise it, or use the matrix-free operators)")


# ---------------------------------------------------------------- Kronecker sums
def _tn(A, B):
    """``A^T @ B`` for 2-D A (N, a), B (N, b) on SciPy's BLAS.

    The kernels call SciPy's OpenBLAS; NumPy's ``@`` would call NumPy's own
    copy. With more than one thread, alternating between the two pools left
    one pool's workers spinning while the other's woke: net A's diag_ggn took
    7.8 ms at 2 threads against 0.9 ms at one (1.3 ms with NumPy's pool at one
    thread). One pool for the whole computation avoids it.
    """
    A = np.asarray(A)
    gemm = _scipy_blas.dgemm if A.dtype == np.float64 else _scipy_blas.sgemm
    B = np.asarray(B, dtype=A.dtype)
    # Row-major A (N, a) is column-major A^T (a, N): no copy for C-ordered input.
    return gemm(1.0, A.T, B.T, trans_b=True)


def _gram(A):
    """``A^T A`` for a dense 2-D A (N, a), by NumPy's SYRK (half a GEMM's
    flops).

    NumPy's own OpenBLAS, which ``@`` calls, is held at one thread inside the
    computation's BLAS section like SciPy's (``_threads``), so no second pool
    spins; its SYRK took 63 and 184 us on net A's 512 x 64 and 5120 x 32
    Gram matrices where SciPy's GEMM took 96 and 288 and SciPy's SYRK 71 and
    234 (2-core Haswell VM, one thread).
    """
    return A.T @ A


def _inputs(net, X, A):
    """Augmented layer inputs a~_l (N, n_in + 1), 1 appended last (CSR rows
    X: a scipy CSR matrix)."""
    N, lay = X.shape[0], net.layout
    ones = np.ones((N, 1), net.dtype)
    ins = [sp.hstack([X.tocsr(), ones], format="csr") if isinstance(X, CSRRows) else
           np.hstack([X, ones])]
    for l in range(1, net.n_layers):
        ins.append(np.hstack([lay.layer(A, l - 1, N)[0], ones]))
    return ins


def _diag_from_factors(net, ins, S):
    """sum_i sum_c a~_i^2 (x) s_ic^2 per layer: one GEMM each (a sparse
    first-layer input: the squared CSR rows' product)."""
    parts = [np.asarray(a.multiply(a).T @ d) if sp.issparse(a) else _tn(a * a, d)
             for a, d in ((a, np.einsum("cij,cij->ij", s, s)) for a, s in zip(ins, S))]
    return np.concatenate([p.ravel() for p in parts]).astype(net.dtype)


def _regularized(problem, M):
    return problem.net.layout.add_weight_diag(M, problem.reg_coef)


# ---------------------------------------------------------------- per-sample factors
def _ggn_factors(net, theta, X, Y, sw, W):
    """Layer inputs and S_l (C, N, n_l): the loss factor at each z_l."""
    A, S = loss_factors(net, theta, X, Y, sw, W)
    return _inputs(net, X, A), net.layout.layers(S, X.shape[0], net.n_outputs)


def _fisher_factors(net, theta, X, Y, sw, W):
    """Layer inputs and sqrt(c_i) delta_l (1, N, n_l) of the raw losses."""
    N = X.shape[0]
    # Unit weights and W = 1: the deltas are the raw per-sample ones.
    _, A, _, _, DL, _ = first_order_state(net, theta, X, Y, None, 1.0)
    c = (np.ones(N) if sw is None else sw) / W
    root = np.sqrt(c).astype(net.dtype)[:, None]
    return _inputs(net, X, A), [(b[0] * root)[None] for b in net.layout.layers(DL, N)]


# ---------------------------------------------------------------- GGN and Fisher
def _kron_sum(problem, theta, kind, out):
    """A nogil Kronecker-sum accumulation over the problem's rows.

    ``_curvature.dense_ggn`` (kind 'ggn', 'block_ggn', 'efisher') or
    ``_curvature.dense_hessian`` ('hessian', 'block_hessian'); the kernel
    accumulates ``out`` over blocks of rows whose workspace takes about
    DENSE_BLOCK_BYTES and adds the regularizer once.
    """
    net = problem.net
    hessian = kind in ("hessian", "block_hessian")
    rows = _curvature.dense_block_rows(net._plan, DENSE_BLOCK_BYTES,
                                       np.dtype(net.dtype).itemsize, hessian)
    block = max(1, min(rows, problem.n_rows))
    family = _curvature.HessianWorkspace if hessian else _curvature.DenseGgnWorkspace
    ws = net._scratch(family, block, 0)
    args = (net._plan, theta, problem.X, problem.Y, problem.sw, problem.weight_sum,
            problem.alpha)
    if hessian:
        _curvature.dense_hessian(*args, kind == "block_hessian", out, block, ws)
    else:
        _curvature.dense_ggn(*args, kind == "block_ggn", out, block, ws, kind == "efisher")
    return out


def _kron_dense(problem, theta, kind, max_bytes):
    net = problem.net
    check_dense(net, max_bytes)
    M = np.empty((net.n_params, net.n_params), net.dtype)
    _kron_sum(problem, theta, kind, M.reshape(-1))
    return M


def _kron_blocks(problem, theta, kind):
    """The per-layer diagonal blocks (P_l, P_l) of a Kronecker-sum accumulation."""
    sizes = [a * n for _, a, n in problem.net.layout.blocks()]
    buf = np.empty(sum(p * p for p in sizes), problem.net.dtype)
    _kron_sum(problem, theta, kind, buf)
    ends = np.cumsum([p * p for p in sizes])
    return [b.reshape(p, p) for b, p in zip(np.split(buf, ends[:-1]), sizes)]


def ggn(problem, theta, max_bytes=None):
    """Dense GGN (P, P) of the problem, + reg_coef on the weight entries."""
    return _kron_dense(problem, theta, "ggn", max_bytes)


def efisher(problem, theta, max_bytes=None):
    """Dense empirical Fisher (P, P), + reg_coef on the weight entries."""
    return _kron_dense(problem, theta, "efisher", max_bytes)


def hessian(problem, theta, max_bytes=None):
    """Dense exact Hessian (P, P), + reg_coef on the weight entries."""
    return _kron_dense(problem, theta, "hessian", max_bytes)


def block_ggn(problem, theta):
    """Exact per-layer GGN blocks, list of (P_l, P_l)."""
    return _kron_blocks(problem, theta, "block_ggn")


def diag_ggn(problem, theta):
    """Exact GGN diagonal (P,)."""
    build = lambda *a: _diag_from_factors(a[0], *_ggn_factors(*a))
    return _regularized(problem, accumulate(problem, theta, build, dense=False))


def diag_efisher(problem, theta):
    """Empirical Fisher diagonal (P,)."""
    build = lambda *a: _diag_from_factors(a[0], *_fisher_factors(*a))
    return _regularized(problem, accumulate(problem, theta, build, dense=False))


def diag_ggn_mc(problem, theta, mc_samples, rs):
    """Monte-Carlo GGN diagonal: the loss factor times Gaussian vectors.

    ``E[(S e)(S e)^T] = S S^T = H`` for ``e ~ N(0, I)``: unbiased for every
    loss; the draws come from ``rs`` chunk by chunk.
    """
    def build(net, theta, X, Y, sw, W):
        ins, S = _ggn_factors(net, theta, X, Y, sw, W)
        E = rs.standard_normal((mc_samples, net.n_outputs, X.shape[0]))
        E /= np.sqrt(mc_samples)
        # Backpropagation is linear: mixing the factor's columns at the
        # output mixes them identically at every layer.
        Smc = [np.einsum("mcn,cnj->mnj", E, s).astype(net.dtype) for s in S]
        return _diag_from_factors(net, ins, Smc)
    return _regularized(problem, accumulate(problem, theta, build, dense=False))


def kfac(problem, theta):
    """Kronecker factors [(A_l, G_l)] per layer (regularizer excluded)."""
    factors = accumulate(problem, theta, _kfac_chunk)
    return [(factors[2 * l], factors[2 * l + 1]) for l in range(problem.net.n_layers)]


def _kfac_chunk(net, theta, X, Y, sw, W):
    N = X.shape[0]
    A, S = loss_factors(net, theta, X, Y, sw, W)
    c = (np.full(N, 1.0 / W) if sw is None else sw / W).astype(net.dtype)
    root = np.sqrt(c)[:, None]
    out = []
    for l, s in enumerate(net.layout.layers(S, N, net.n_outputs)):
        a = X if l == 0 else net.layout.layer(A, l - 1, N)[0]
        b = a * root
        n_in = a.shape[1]
        # [a, 1]^T diag(c) [a, 1] blockwise: the Gram matrix of the sqrt(c)-
        # scaled rows, the bias row and column from weighted column sums.
        F = np.empty((n_in + 1, n_in + 1), net.dtype)
        F[:n_in, :n_in] = _gram(b)
        F[n_in, :n_in] = F[:n_in, n_in] = _tn(a, c[:, None])[:, 0]
        F[n_in, n_in] = c.sum()
        out += [F, _gram(s.reshape(-1, s.shape[-1]))]
    return out


def block_hessian(problem, theta):
    """Exact per-layer Hessian blocks, list of (P_l, P_l)."""
    return _kron_blocks(problem, theta, "block_hessian")


def _diag_hessian_chunk(net, theta, X, Y, sw, W):
    """The chunk's part by the nogil kernel (``_curvature.diag_hessian``):
    squared inputs times the squares of the backpropagated loss factor and
    of the signed square roots of every layer's residual."""
    out = np.empty(net.n_params, net.dtype)
    _curvature.diag_hessian(net._plan, theta, X, Y, sw, W, out,
                            net._scratch(_curvature.DiagHessianWorkspace, X.shape[0], 0))
    return out


def diag_hessian(problem, theta):
    """Exact Hessian diagonal (P,)."""
    return _regularized(problem, accumulate(problem, theta, _diag_hessian_chunk))
