"""Curvature methods of :class:`cbackprop.Network` (mixed in).

Matrix-vector products come from the Cython R-operator kernels. Dense
matrices, blocks and diagonals are assembled from per-sample, per-layer
factors with one GEMM per pair of layers: with ``a~_i`` a layer's input with
a 1 appended (weights and bias form the augmented ``(n_in + 1, n_out)``
block, contiguous in theta), every curvature block has the form

    C_lm = sum_i (a~_li a~_mi^T) (x) K_lm,i      (Kronecker product)

with ``K_lm,i`` an ``(n_l, n_m)`` output-space matrix: the backpropagated
loss Hessian (GGN), the outer product of deltas (empirical Fisher) or the
exact z-Hessian of the Hessian backpropagation (plus, for the Hessian, the
terms where a layer's input depends on lower parameters). Reshaped, the sum
over samples is ``A2^T K`` with ``A2_i = vec(a~_li a~_mi^T)``: its cost is
``2 N P_l P_m`` flops, a factor n_L below ``J^T S S^T J``.
"""
import numbers

import numpy as np

from cbackprop import _curvature

DEFAULT_MAX_BYTES = 2 ** 31  # refuse dense matrices above 2 GiB by default
DENSE_BLOCK_BYTES = 32 << 20  # workspace of the dense GGN's blocks of rows
PRODUCT_WORKSPACES = {"hvp": _curvature.HvpWorkspace, "ggn_vp": _curvature.GgnVpWorkspace,
                      "efisher_vp": _curvature.EfisherVpWorkspace}


class CurvatureMixin:
    """Second-order quantities; see the class docstring of Network."""

    # ------------------------------------------------------------ helpers
    def _check_V(self, V):
        """V (P,) or (P, k) -> ((k, P) C-contiguous, was_vector)."""
        arr = np.asarray(V)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"V must be a numeric array, got dtype {arr.dtype}")
        if arr.ndim not in (1, 2) or arr.shape[0] != self.n_params:
            raise ValueError(f"V must have shape ({self.n_params},) or "
                             f"({self.n_params}, k), got {arr.shape}")
        if arr.ndim == 2 and arr.shape[1] == 0:
            raise ValueError("V has k = 0 columns: nothing to multiply")
        if not np.isfinite(arr).all():
            raise ValueError("V contains NaN or infinity")
        vec = arr.ndim == 1
        Vk = np.ascontiguousarray(arr.reshape(1, -1) if vec else arr.T, dtype=self.dtype)
        return Vk, vec

    def _product(self, kernel, theta, X, y, V, sample_weight):
        theta, X, y, sw, sw_sum = self._check(theta, X, y, sample_weight)
        Vk, vec = self._check_V(V)
        out = np.empty_like(Vk)
        family = PRODUCT_WORKSPACES[kernel.__name__]
        kernel(self._plan, theta, X, y, sw, sw_sum, self.alpha, Vk, out,
               self._scratch(family, X.shape[0], Vk.shape[0]))
        return out[0] if vec else np.ascontiguousarray(out.T)

    def _first_order(self, theta, X, y, sw, sw_sum):
        """(Z, A, F1, F2, DL, Q) in per-thread scratch (valid until the next call)."""
        return _curvature.first_order_state(
            self._plan, theta, X, y, sw, sw_sum,
            self._scratch(_curvature.StateWorkspace, X.shape[0], 0))

    def _loss_factors(self, theta, X, y, sw, sw_sum):
        """(A, S) in per-thread scratch (valid until the next call)."""
        _, A, S = _curvature.loss_factors(
            self._plan, theta, X, y, sw, sw_sum,
            self._scratch(_curvature.FactorWorkspace, X.shape[0], 0))
        return A, S

    def _check_dense(self, shape, max_bytes):
        limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if not isinstance(limit, numbers.Real) or limit < 0:
            raise ValueError(f"max_bytes must be a number >= 0, got {max_bytes!r}")
        nbytes = int(np.prod(shape)) * np.dtype(self.dtype).itemsize
        if nbytes > limit:
            raise ValueError(f"a dense {shape[0]} x {shape[1]} matrix of "
                             f"{np.dtype(self.dtype).name} needs {nbytes} bytes, above "
                             f"the limit of {int(limit)} bytes (pass max_bytes= to "
                             f"raise it, or use the matrix-free operators)")

    def _layer_slices(self):
        """Per layer: (offset in theta, n_in + 1, n_out)."""
        s, out, start = self.layer_sizes, [], 0
        for l in range(self.n_layers):
            out.append((start, s[l] + 1, s[l + 1]))
            start += (s[l] + 1) * s[l + 1]
        return out

    def _inputs(self, X, A):
        """Augmented layer inputs a~_l (N, n_in + 1), 1 appended last."""
        N, s = X.shape[0], self.layer_sizes
        h = np.concatenate([[0], np.cumsum(s[1:])])
        ins = []
        for l in range(self.n_layers):
            a = X if l == 0 else A[N * h[l - 1]:N * h[l]].reshape(N, s[l])
            ins.append(np.hstack([a, np.ones((N, 1), self.dtype)]))
        return ins

    def _layer_blocks(self, stacked, N, k):
        """Views (k, N, n_l) of a stacked (k * N * width) layer quantity."""
        s = self.layer_sizes
        h = np.concatenate([[0], np.cumsum(s[1:])])
        return [stacked[k * N * h[l]:k * N * h[l + 1]].reshape(k, N, s[l + 1])
                for l in range(self.n_layers)]

    def _add_l2_diag(self, M, coef):
        """Add coef to the weight entries of the diagonal (not the biases)."""
        if coef == 0.0:
            return M
        idx = np.concatenate([np.arange(off, off + (a - 1) * n)
                              for off, a, n in self._layer_slices()])
        if M.ndim == 1:
            M[idx] += coef
        else:
            M[idx, idx] += coef
        return M

    @staticmethod
    def _tri_table(a):
        """Upper-triangle pairs (i <= j) of range(a) and the (a, a) table
        mapping either order of a pair to its position among them."""
        ia, ib = np.triu_indices(a)
        table = np.empty((a, a), np.intp)
        table[ia, ib] = table[ib, ia] = np.arange(ia.size)
        return ia, ib, table

    def _sym_sum(self, A, K):
        """Compact sum_i (A_i A_i^T) (x) K_i for symmetric K_i.

        The sum is symmetric in (p, p') and, separately, in (q, q'): the GEMM
        runs over the upper triangles of both pairs, a quarter of the flops.
        """
        pa, pb, _ = self._tri_table(A.shape[1])
        qa, qb, _ = self._tri_table(K.shape[1])
        return (A[:, pa] * A[:, pb]).T @ K[:, qa, qb]

    @staticmethod
    def _pair_sum(Al, Am, K):
        """Compact sum_i vec(Al_i Am_i^T) vec(K_i)^T: (al * am, nl * nm)."""
        N = Al.shape[0]
        A2 = (Al[:, :, None] * Am[:, None, :]).reshape(N, -1)
        return A2.T @ K.reshape(N, -1)

    def _kron_sum_sym(self, A, K):
        """Dense (a n, a n) block sum_i (A_i A_i^T) (x) K_i, K_i symmetric."""
        a, n = A.shape[1], K.shape[1]
        out = np.empty((a * n, a * n), self.dtype)
        G = np.ascontiguousarray(self._sym_sum(A, K), self.dtype)
        _curvature.scatter_sym(G, self._tri_table(a)[2], self._tri_table(n)[2], out, 0)
        return out

    def _compact_pairs(self, ins, kmat, pairs):
        """Per pair (l, m): the compact sums over one chunk's samples."""
        return [self._sym_sum(ins[l], kmat(l, l)) if l == m
                else self._pair_sum(ins[l], ins[m], kmat(l, m)) for l, m in pairs]

    def _scatter(self, pairs, compact):
        """The dense symmetric (P, P) matrix from the compact pair sums,
        written in Kronecker order by one pass of the scatter kernels."""
        sl = self._layer_slices()
        out = np.zeros((self.n_params, self.n_params), self.dtype)
        for (l, m), G in zip(pairs, compact):
            (ol, al, nl), (om, am, nm) = sl[l], sl[m]
            G = np.ascontiguousarray(G, self.dtype)
            if l == m:
                _curvature.scatter_sym(G, self._tri_table(al)[2], self._tri_table(nl)[2],
                                       out, ol)
            else:
                _curvature.scatter_pair(G, al, am, nl, nm, out, ol, om)
        return out

    def _row_chunks(self, N):
        """Row ranges whose per-sample intermediates fit in ~32 MB.

        Per sample: the products of the widest layer's inputs (a~ a~^T),
        the output-space matrices (z-Hessians, n_l^2 per layer), the
        backpropagated loss factor (n_L per unit) and the first-order state.
        """
        s = self.layer_sizes
        width = sum(s[1:])
        per_row = (max(s[:-1]) + 1) ** 2 + sum(n * n for n in s[1:]) + \
            (s[-1] + 8) * width
        rows = max(1, (1 << 22) // per_row)
        return [slice(i, min(i + rows, N)) for i in range(0, N, rows)]

    def _accumulate(self, build, theta, X, y, sample_weight):
        """sum over row chunks of build(theta, X_c, y_c, sw_c, W): the
        curvature sums of a chunk, normalized by the global weight W."""
        theta, X, y, sw, sw_sum = self._check(theta, X, y, sample_weight)
        total = None
        for c in self._row_chunks(X.shape[0]):
            part = build(theta, X[c], y[c], None if sw is None else sw[c], sw_sum)
            total = part if total is None else (
                [t + p for t, p in zip(total, part)] if isinstance(part, list)
                else total + part)
        return total, sw_sum

    # ------------------------------------------------------- products
    def hvp(self, theta, X, y, V, sample_weight=None):
        """Exact Hessian-vector product(s) by Pearlmutter's R-operator.

        Parameters
        ----------
        V : ndarray of shape (P,) or (P, k)
            The k vectors travel through the network together, as
            (k * N)-row GEMM blocks.

        Returns
        -------
        HV : ndarray, same shape as V
        """
        return self._product(_curvature.hvp, theta, X, y, V, sample_weight)

    def ggn_vp(self, theta, X, y, V, sample_weight=None):
        """Generalized Gauss-Newton products ``J^T H_loss J V`` (+ alpha / W)."""
        return self._product(_curvature.ggn_vp, theta, X, y, V, sample_weight)

    def efisher_vp(self, theta, X, y, V, sample_weight=None):
        """Empirical Fisher products ``sum_i c_i g_i (g_i . V)`` (+ alpha / W)."""
        return self._product(_curvature.efisher_vp, theta, X, y, V, sample_weight)

    # ------------------------------------------------ per-sample factors
    def _ggn_factors(self, theta, X, y, sw, sw_sum):
        """Layer inputs and S_l (C, N, n_l): the loss factor at each z_l."""
        A, S = self._loss_factors(theta, X, y, sw, sw_sum)
        return self._inputs(X, A), self._layer_blocks(S, X.shape[0], self.n_outputs)

    def _fisher_factors(self, theta, X, y, sw, sw_sum):
        """Layer inputs and sqrt(c_i) delta_l (1, N, n_l) of the raw losses."""
        N = X.shape[0]
        # Unit weights and W = 1: DL holds the raw per-sample deltas.
        _, A, _, _, DL, _ = self._first_order(theta, X, y, None, 1.0)
        c = (np.ones(N) if sw is None else sw) / sw_sum
        root = np.sqrt(c).astype(self.dtype)[:, None]
        return self._inputs(X, A), [(b[0] * root)[None] for b in self._layer_blocks(DL, N, 1)]

    # ------------------------------------------------------- the GGN
    def ggn(self, theta, X, y, sample_weight=None, *, max_bytes=None):
        """Dense generalized Gauss-Newton matrix (P, P), + alpha / W on weights."""
        P = self.n_params
        self._check_dense((P, P), max_bytes)
        G = np.empty((P, P), self.dtype)
        self._kron_sum(theta, X, y, sample_weight, "ggn", G.reshape(-1))
        return G

    def _kron_sum(self, theta, X, y, sample_weight, kind, out):
        """A nogil Kronecker-sum accumulation over blocks of rows whose
        workspace takes about DENSE_BLOCK_BYTES: ``_curvature.dense_ggn``
        (kind 'ggn', 'block_ggn', 'efisher') or ``_curvature.block_hessian``."""
        theta, X, y, sw, sw_sum = self._check(theta, X, y, sample_weight)
        hessian = kind == "block_hessian"
        rows = _curvature.dense_block_rows(self._plan, DENSE_BLOCK_BYTES,
                                           np.dtype(self.dtype).itemsize, hessian)
        family = _curvature.BlockHessianWorkspace if hessian else _curvature.DenseGgnWorkspace
        block = min(rows, X.shape[0])
        ws = self._scratch(family, block, 0)
        args = (self._plan, theta, X, y, sw, sw_sum, self.alpha)
        if hessian:
            _curvature.block_hessian(*args, out, block, ws)
        else:
            _curvature.dense_ggn(*args, kind == "block_ggn", out, block, ws,
                                 kind == "efisher")

    def _kron_blocks(self, theta, X, y, sample_weight, kind):
        """The per-layer diagonal blocks (P_l, P_l) of a _kron_sum."""
        sizes = [a * n for _, a, n in self._layer_slices()]
        buf = np.empty(sum(p * p for p in sizes), self.dtype)
        self._kron_sum(theta, X, y, sample_weight, kind, buf)
        ends = np.cumsum([p * p for p in sizes])
        return [b.reshape(p, p) for b, p in zip(np.split(buf, ends[:-1]), sizes)]

    def efisher(self, theta, X, y, sample_weight=None, *, max_bytes=None):
        """Dense empirical Fisher ``sum_i c_i g_i g_i^T`` (P, P), + alpha / W."""
        P = self.n_params
        self._check_dense((P, P), max_bytes)
        F = np.empty((P, P), self.dtype)
        self._kron_sum(theta, X, y, sample_weight, "efisher", F.reshape(-1))
        return F

    def _all_pairs(self):
        return [(l, m) for l in range(self.n_layers) for m in range(l, self.n_layers)]

    def block_ggn(self, theta, X, y, sample_weight=None):
        """Exact per-layer GGN blocks: list of (P_l, P_l), W_l then b_l."""
        return self._kron_blocks(theta, X, y, sample_weight, "block_ggn")

    def diag_ggn(self, theta, X, y, sample_weight=None):
        """Exact GGN diagonal (P,): squared inputs times squared factors."""
        d, sw_sum = self._accumulate(
            lambda *a: self._diag_from_factors(*self._ggn_factors(*a)),
            theta, X, y, sample_weight)
        return self._add_l2_diag(d, self.alpha / sw_sum)

    def _diag_from_factors(self, ins, S):
        """sum_i sum_c a~_i^2 (x) s_ic^2 per layer: one GEMM each."""
        parts = [(a * a).T @ np.einsum("cij,cij->ij", s, s) for a, s in zip(ins, S)]
        return np.concatenate([p.ravel() for p in parts]).astype(self.dtype)

    def diag_ggn_mc(self, theta, X, y, sample_weight=None, mc_samples=1, random_state=None):
        """Monte-Carlo GGN diagonal: the factor S_i times Gaussian vectors.

        ``E[(S e)(S e)^T] = S S^T = H`` for ``e ~ N(0, I)``, so the estimate is
        unbiased for every loss; reproducible for a given random_state.
        """
        from sklearn.utils import check_random_state
        if not isinstance(mc_samples, numbers.Integral) or mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}")
        rs = check_random_state(random_state)

        def chunk(theta, X, y, sw, sw_sum):
            ins, S = self._ggn_factors(theta, X, y, sw, sw_sum)
            E = rs.standard_normal((mc_samples, self.n_outputs, X.shape[0]))
            E /= np.sqrt(mc_samples)
            # Backpropagation is linear: mixing the factor's columns at the
            # output mixes them identically at every layer.
            Smc = [np.einsum("mcn,cnj->mnj", E, s).astype(self.dtype) for s in S]
            return self._diag_from_factors(ins, Smc)

        d, sw_sum = self._accumulate(chunk, theta, X, y, sample_weight)
        return self._add_l2_diag(d, self.alpha / sw_sum)

    # ------------------------------------------------ empirical Fisher
    def diag_efisher(self, theta, X, y, sample_weight=None):
        """Empirical Fisher diagonal (P,): ``sum_i c_i g_i^2`` + alpha / W."""
        d, sw_sum = self._accumulate(
            lambda *a: self._diag_from_factors(*self._fisher_factors(*a)),
            theta, X, y, sample_weight)
        return self._add_l2_diag(d, self.alpha / sw_sum)

    # ------------------------------------------------------ K-FAC
    def kfac(self, theta, X, y, sample_weight=None):
        """Kronecker factors (A_l, G_l) per layer.

        ``A_l = sum_i c_i a~_i a~_i^T`` ((n_in + 1) square, the 1 last) and
        ``G_l = sum_i c_i B_i^T H_i B_i`` (n_out square), c_i = w_i / W;
        ``kron(A_l, G_l)`` approximates the (W_l, b_l) GGN block, exactly
        for one sample (regularizer excluded).
        """
        factors, _ = self._accumulate(self._kfac_chunk, theta, X, y, sample_weight)
        return [(factors[2 * l], factors[2 * l + 1]) for l in range(self.n_layers)]

    def _kfac_chunk(self, theta, X, y, sw, sw_sum):
        N = X.shape[0]
        A, S = self._loss_factors(theta, X, y, sw, sw_sum)
        c = (np.full(N, 1.0 / sw_sum) if sw is None else sw / sw_sum).astype(self.dtype)
        root = np.sqrt(c)[:, None]
        out = []
        for l, s in enumerate(self._layer_blocks(S, N, self.n_outputs)):
            a = X if l == 0 else self._layer_blocks(A, N, 1)[l - 1][0]
            b = a * root
            n_in = a.shape[1]
            # [a, 1]^T diag(c) [a, 1] blockwise: syrk on sqrt(c)-scaled rows,
            # the bias row and column from weighted column sums.
            F = np.empty((n_in + 1, n_in + 1), self.dtype)
            F[:n_in, :n_in] = b.T @ b
            F[n_in, :n_in] = F[:n_in, n_in] = c @ a
            F[n_in, n_in] = c.sum()
            Sf = s.reshape(-1, s.shape[-1])
            out += [F, Sf.T @ Sf]
        return out

    # ------------------------------------------------- exact Hessian
    @staticmethod
    def _left_mul(W, K):
        """W @ K_i for every sample as ONE GEMM: K (N, a, b) -> (N, W.shape[0], b).

        (W K_i)^T = K_i^T W^T, so the transposed stack times W^T does all
        samples at once instead of N small products.
        """
        N, a, b = K.shape
        Kt = np.ascontiguousarray(K.transpose(0, 2, 1)).reshape(N * b, a)
        return (Kt @ W.T).reshape(N, b, W.shape[0]).transpose(0, 2, 1)

    def _hessian_state(self, theta, X, y, sw, sw_sum):
        """Inputs, f', weighted deltas and the z-Hessians Hz_l (N, n_l, n_l).

        Hessian backpropagation: Hz_L = c_i H_i and
        Hz_l = diag(f'_l) W_{l+1} Hz_{l+1} W_{l+1}^T diag(f'_l) + diag(Q_l),
        Q_l = (dL/da_l) f''(z_l) the residual of the nonlinearity.
        """
        N, L = X.shape[0], self.n_layers
        _, _, F1, _, DL, Q = self._first_order(theta, X, y, sw, sw_sum)
        A, S = self._loss_factors(theta, X, y, sw, sw_sum)
        f1 = [b[0] for b in self._layer_blocks(F1, N, 1)]
        q = [b[0] for b in self._layer_blocks(Q, N, 1)]
        delta = [b[0] for b in self._layer_blocks(DL, N, 1)]
        coefs, _ = self.unpack(theta)
        S_out = self._layer_blocks(S, N, self.n_outputs)[L - 1]
        Hz = [None] * L
        Hz[L - 1] = np.matmul(S_out.transpose(1, 2, 0), S_out.transpose(1, 0, 2))
        for l in range(L - 2, -1, -1):
            W, n = coefs[l + 1], self.layer_sizes[l + 1]
            T = self._left_mul(W, Hz[l + 1])          # W Hz: (N, n_l, n_{l+1})
            H = self._left_mul(W, np.ascontiguousarray(T.transpose(0, 2, 1)))
            H *= f1[l][:, :, None] * f1[l][:, None, :]
            H[:, np.arange(n), np.arange(n)] += q[l]
            Hz[l] = H
        return self._inputs(X, A), f1, delta, coefs, Hz

    def block_hessian(self, theta, X, y, sample_weight=None):
        """Exact per-layer Hessian blocks: list of (P_l, P_l), W_l then b_l."""
        return self._kron_blocks(theta, X, y, sample_weight, "block_hessian")

    def diag_hessian(self, theta, X, y, sample_weight=None):
        """Exact Hessian diagonal (P,): squared inputs times diag(Hz_l)."""
        d, sw_sum = self._accumulate(self._diag_hessian_chunk, theta, X, y, sample_weight)
        return self._add_l2_diag(d, self.alpha / sw_sum)

    def _diag_hessian_chunk(self, theta, X, y, sw, sw_sum):
        """The chunk's part by the nogil kernel (``_curvature.diag_hessian``):
        squared inputs times the squares of the backpropagated loss factor
        and of the signed square roots of every layer's residual."""
        out = np.empty(self.n_params, self.dtype)
        _curvature.diag_hessian(self._plan, theta, X, y, sw, sw_sum, out,
                                self._scratch(_curvature.DiagHessianWorkspace, X.shape[0], 0))
        return out

    def hessian(self, theta, X, y, sample_weight=None, *, max_bytes=None):
        """Dense exact Hessian (P, P) by Hessian backpropagation.

        Block (l, m), l < m: ``sum_i (a~_l a~_m^T) (x) Hz_lm`` with
        ``Hz_lm = diag(f'_l) W_{l+1} Hz_{l+1,m}``, plus the terms of layer m's
        input depending on z_l: ``sum_i a~_l,p delta_m,q' d a_m,p' / d z_l,q``.
        """
        self._check_dense((self.n_params,) * 2, max_bytes)
        parts, sw_sum = self._accumulate(self._hessian_chunk, theta, X, y, sample_weight)
        pairs = self._all_pairs()
        H = self._scatter(pairs, parts[:len(pairs)])
        sl = self._layer_slices()
        for (l, m), C in zip([p for p in pairs if p[0] < p[1]], parts[len(pairs):]):
            (ol, al, nl), (om, am, nm) = sl[l], sl[m]
            H[ol:ol + al * nl, om:om + (am - 1) * nm] += C
            H[om:om + (am - 1) * nm, ol:ol + al * nl] += C.T
        return self._add_l2_diag(H, self.alpha / sw_sum)

    def _hessian_chunk(self, theta, X, y, sw, sw_sum):
        """Compact pair sums of the z-Hessians, then the cross terms."""
        ins, f1, delta, coefs, Hz = self._hessian_state(theta, X, y, sw, sw_sum)
        pairs = self._all_pairs()
        kz = {}
        for m in range(self.n_layers):
            K = kz[m, m] = Hz[m]
            for l in range(m - 1, -1, -1):
                K = kz[l, m] = f1[l][:, :, None] * self._left_mul(coefs[l + 1], K)
        compact = self._compact_pairs(ins, lambda l, m: kz[l, m], pairs)
        cross = [self._cross_term(ins[l], delta[m], f1, coefs, l, m)
                 for l, m in pairs if l < m]
        return compact + cross

    def _cross_term(self, a_l, delta_m, f1, coefs, l, m):
        """sum_i a~_l,ip delta_m,iq' (d a_{m-1} / d z_l)_i[p', q] in block order."""
        N = a_l.shape[0]
        Ja = f1[l][:, :, None] * np.eye(self.layer_sizes[l + 1], dtype=self.dtype)
        for j in range(l + 1, m):
            Ja = f1[j][:, :, None] * self._left_mul(coefs[j].T, Ja)
        al, nm = a_l.shape[1], delta_m.shape[1]
        n_in, nl = Ja.shape[1], Ja.shape[2]
        lhs = (a_l[:, :, None] * delta_m[:, None, :]).reshape(N, al * nm)
        Xp = lhs.T @ Ja.reshape(N, n_in * nl)
        return Xp.reshape(al, nm, n_in, nl).transpose(0, 3, 2, 1).reshape(al * nl, n_in * nm)
