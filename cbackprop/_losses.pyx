"""Loss kernels on raw predictions, one sample (row) at a time.

For every pair the gradient with respect to the raw prediction is
``mu - y`` up to the normalization of y (log_loss uses ``sum(y) p - y``,
exact for rows of y that do not sum to one). Row i is weighted by
``scale * w_i`` (``w_i = 1`` when ``sw`` is NULL).
"""
import numpy as np
from libc.math cimport log, log1p, fabs, sqrt
from cbackprop._activations cimport cb_exp


cdef inline double _sigmoid(double z) noexcept nogil:
    cdef double e = cb_exp(-fabs(z))
    return (1.0 if z >= 0 else e) / (1.0 + e)


cdef inline double _row_sum(const floating* y, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t k
    cdef double s = 0.0
    for k in range(C):
        s += y[k]
    return s


cdef inline double _row_max(const floating* z, Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t k
    cdef double m = z[0]
    for k in range(1, C):
        if z[k] > m:
            m = z[k]
    return m


cdef double _row_loss_grad(Loss loss, const floating* z, const floating* y,
                           Py_ssize_t C, double gs, floating* g) noexcept nogil:
    """Per-sample loss l(z, y) and g = gs * dl/dz of the elementwise pairs
    (log_loss goes through _log_loss_tile)."""
    cdef Py_ssize_t k
    cdef double l = 0.0, mu, zk, yk
    for k in range(C):
        zk = z[k]
        yk = y[k]
        if loss == SQUARED_ERROR:
            l += 0.5 * (zk - yk) * (zk - yk)
            mu = zk
        elif loss == POISSON:
            mu = cb_exp(zk)
            # y log(y / mu) - y + mu with 0 log 0 = 0, mu never divided by.
            l += (yk * log(yk) if yk > 0 else 0.0) - yk * zk - yk + mu
        else:
            # softplus(z) - y z, softplus written without overflow.
            l += (zk if zk > 0 else 0.0) + log1p(cb_exp(-fabs(zk))) - yk * zk
            mu = _sigmoid(zk)
        g[k] = <floating>(gs * (mu - yk))
    return l


cdef enum:
    _TILE = 64  # rows per softmax tile (_tile_exp and its callers' stack arrays)


cdef inline void _tile_exp(const floating* z, const floating* y, Py_ssize_t n,
                           Py_ssize_t C, floating* e, double* m, double* s,
                           double* sy) noexcept nogil:
    """For n <= _TILE rows: m = row max of z, e = exp(z - m), s = row sums
    of e, sy = row sums of y (unless y is NULL). The rows are innermost in every reduction, so
    that the rows' sums are independent chains the CPU overlaps (one row's
    sum over ten classes is a chain of dependent additions); the
    exponentials are a loop of their own, which gcc vectorizes (it leaves a
    loop holding a floating-point reduction scalar, exponentials included).
    """
    cdef Py_ssize_t r, k
    cdef double q
    for r in range(n):
        m[r] = z[r * C]
        s[r] = 0.0
        if y != NULL:
            sy[r] = 0.0
    for k in range(1, C):
        for r in range(n):
            q = z[r * C + k]
            m[r] = q if q > m[r] else m[r]
    for r in range(n):
        for k in range(C):
            e[r * C + k] = <floating>cb_exp(z[r * C + k] - m[r])
    for k in range(C):
        for r in range(n):
            s[r] += e[r * C + k]
    if y != NULL:
        for k in range(C):
            for r in range(n):
                sy[r] += y[r * C + k]


cdef double _log_loss_tile(const floating* z, const floating* y,
                           const floating* sw, Py_ssize_t n, Py_ssize_t C,
                           double scale, floating* g) noexcept nogil:
    """Log loss and gradient of n <= _TILE rows: returns sum_r w_r l_r and
    writes g = scale w (sum(y) softmax(z) - y). Tiled as _tile_exp (20%
    faster than row by row)."""
    cdef double m[_TILE]
    cdef double s[_TILE]
    cdef double sy[_TILE]
    cdef double l[_TILE]
    cdef Py_ssize_t r, k
    cdef double w, q, total = 0.0
    _tile_exp(z, y, n, C, g, m, s, sy)
    for r in range(n):
        m[r] = m[r] + log(s[r])  # lse
        l[r] = 0.0
    for k in range(C):
        for r in range(n):
            # sum_k y_k (lse - z_k): each term >= 0, no log(0) anywhere.
            l[r] += y[r * C + k] * (m[r] - z[r * C + k])
    for r in range(n):
        w = 1.0 if sw == NULL else sw[r]
        total += w * l[r]
        q = scale * w
        s[r] = q * sy[r] / s[r]
        sy[r] = q
    for r in range(n):
        for k in range(C):
            g[r * C + k] = <floating>(s[r] * g[r * C + k] - sy[r] * y[r * C + k])
    return total


cdef double loss_grad_rows(Loss loss, const floating* Z, const floating* Y,
                           const floating* sw, Py_ssize_t N, Py_ssize_t C,
                           double scale, floating* G) noexcept nogil:
    """Return sum_i w_i l_i; write G[i] = scale * w_i * dl_i/dz_i.

    G is never NULL: the value and the gradient come from one code path,
    so a loss value does not depend on whether its gradient is wanted.
    """
    cdef Py_ssize_t i
    cdef double w, total = 0.0
    cdef Py_ssize_t tile = _TILE
    if loss == LOG_LOSS:
        i = 0
        while i < N:
            total += _log_loss_tile(Z + i * C, Y + i * C, NULL if sw == NULL else sw + i,
                                    min(tile, N - i), C, scale, G + i * C)
            i += tile
        return total
    for i in range(N):
        w = 1.0 if sw == NULL else sw[i]
        total += w * _row_loss_grad(loss, Z + i * C, Y + i * C, C, scale * w,
                                    G + i * C)
    return total


cdef inline void _softmax_tile(const floating* z, Py_ssize_t n, Py_ssize_t C,
                               floating* p) noexcept nogil:
    """p = softmax(z) for n <= _TILE rows: _tile_exp's exponentials divided
    by their row sums."""
    cdef double m[_TILE]
    cdef double s[_TILE]
    cdef Py_ssize_t r, k
    _tile_exp(z, <const floating*>NULL, n, C, p, m, s, <double*>NULL)
    for r in range(n):
        for k in range(C):
            p[r * C + k] = <floating>(p[r * C + k] / s[r])


cdef void link_rows(Loss loss, const floating* Z, floating* P,
                    Py_ssize_t N, Py_ssize_t C) noexcept nogil:
    """P = link(Z): identity, exp, softmax (in tiles of rows) or logistic."""
    cdef Py_ssize_t i, k
    cdef Py_ssize_t tile = _TILE
    if loss == LOG_LOSS:
        i = 0
        while i < N:
            _softmax_tile(Z + i * C, min(tile, N - i), C, P + i * C)
            i += tile
        return
    for i in range(N):
        for k in range(C):
            if loss == SQUARED_ERROR:
                P[i * C + k] = Z[i * C + k]
            elif loss == POISSON:
                P[i * C + k] = <floating>cb_exp(Z[i * C + k])
            else:
                P[i * C + k] = <floating>_sigmoid(Z[i * C + k])


cdef inline double _diag_curv(Loss loss, double z) noexcept nogil:
    """Diagonal loss Hessian entry of the elementwise pairs."""
    cdef double s
    if loss == POISSON:
        return cb_exp(z)
    elif loss == BINARY_LOG_LOSS:
        s = _sigmoid(z)
        return s * (1.0 - s)
    return 1.0


cdef void _softmax_hess_tile(const floating* z, const floating* y,
                             const floating* sw, Py_ssize_t N, Py_ssize_t i0,
                             Py_ssize_t n, Py_ssize_t C, double scale,
                             const floating* V, floating* HV,
                             Py_ssize_t k) noexcept nogil:
    """Rows i0 .. i0 + n (n <= _TILE) of every block of hess_prod_rows for
    the softmax: HV = w sy p (v - p.v), tiled as _tile_exp. p is written into block 0's rows,
    read by the other blocks, which are done first; then block 0 is
    transformed in place."""
    cdef double m[_TILE]
    cdef double s[_TILE]
    cdef double ws[_TILE]
    cdef double pv[_TILE]
    cdef Py_ssize_t r, c, b
    cdef floating* p = HV + i0 * C
    cdef const floating* v
    cdef floating* h
    _tile_exp(z, y, n, C, p, m, s, ws)
    for r in range(n):
        for c in range(C):
            p[r * C + c] = <floating>(p[r * C + c] / s[r])
        ws[r] *= scale * (1.0 if sw == NULL else sw[r])
    for b in range(k - 1, -1, -1):
        v = V + (b * N + i0) * C
        h = HV + (b * N + i0) * C
        for r in range(n):
            pv[r] = 0.0
        for c in range(C):
            for r in range(n):
                pv[r] += p[r * C + c] * v[r * C + c]
        for r in range(n):
            for c in range(C):
                h[r * C + c] = <floating>(ws[r] * p[r * C + c] * (v[r * C + c] - pv[r]))


cdef void hess_prod_rows(Loss loss, const floating* Z, const floating* Y,
                         const floating* sw, Py_ssize_t N, Py_ssize_t C,
                         double scale, const floating* V, floating* HV,
                         Py_ssize_t k) noexcept nogil:
    """HV[r, i] = scale * w_i * H_i V[r, i] for the k stacked (N, C) blocks.

    H_i is the output-space loss Hessian of sample i: I, diag(mu),
    sum(y) (diag(p) - p p^T) or diag(s (1 - s)).
    """
    cdef Py_ssize_t i, r, c
    cdef Py_ssize_t tile = _TILE
    cdef double w
    cdef const floating* v
    cdef floating* h
    if loss == LOG_LOSS:
        i = 0
        while i < N:
            _softmax_hess_tile(Z + i * C, Y + i * C, NULL if sw == NULL else sw + i,
                               N, i, min(tile, N - i), C, scale, V, HV, k)
            i += tile
        return
    for i in range(N):
        w = scale * (1.0 if sw == NULL else sw[i])
        for r in range(k):
            v = V + (r * N + i) * C
            h = HV + (r * N + i) * C
            for c in range(C):
                h[c] = <floating>(w * _diag_curv(loss, Z[i * C + c]) * v[c])


cdef void sqrt_hess_rows(Loss loss, const floating* Z, const floating* Y,
                         const floating* sw, Py_ssize_t N, Py_ssize_t C,
                         double scale, floating* S) noexcept nogil:
    """Loss-Hessian factor, one "virtual output" c per (N, C) block of S.

    S (C, N, C): S[c, i, :] = sqrt(scale * w_i) * F_i[:, c] with
    F_i F_i^T = H_i. For softmax F = sqrt(sum y) (diag(sqrt p) - p sqrt(p)^T),
    whose column c is sqrt(sum(y) p_c) (e_c - p); F is not symmetric. For the
    elementwise pairs F is the diagonal sqrt(diag H).
    """
    cdef Py_ssize_t i, c, j
    cdef double w, sy, pc
    cdef floating* last
    for i in range(N):
        w = scale * (1.0 if sw == NULL else sw[i])
        for c in range(C):
            for j in range(C):
                S[(c * N + i) * C + j] = 0
        if loss != LOG_LOSS:
            for c in range(C):
                S[(c * N + i) * C + c] = <floating>sqrt(w * _diag_curv(loss, Z[i * C + c]))
            continue
        # p goes into the last block's row, read by the others, then that
        # row is transformed in place last.
        sy = _row_sum(Y + i * C, C)
        last = S + ((C - 1) * N + i) * C
        _softmax_tile(Z + i * C, 1, C, last)
        for c in range(C - 1):
            pc = sqrt(w * sy * last[c])
            for j in range(C):
                S[(c * N + i) * C + j] = <floating>(pc * ((1.0 if j == c else 0.0) - last[j]))
        pc = sqrt(w * sy * last[C - 1])
        for j in range(C):
            last[j] = <floating>(pc * ((1.0 if j == C - 1 else 0.0) - last[j]))


# ---------------------------------------------------------------- test twins
def loss_grad_memview(Loss loss, const floating[:, ::1] Z, const floating[:, ::1] Y,
                      sample_weight=None, double scale=1.0):
    """Return (sum_i w_i l_i, G) with G[i] = scale * w_i * dl_i/dz_i."""
    cdef Py_ssize_t N = Z.shape[0], C = Z.shape[1]
    G = np.zeros((N, C), dtype=np.asarray(Z).dtype)
    cdef floating[:, ::1] Gv = G
    cdef const floating[::1] swv
    cdef const floating* swp = NULL
    if sample_weight is not None:
        swv = np.ascontiguousarray(sample_weight, dtype=G.dtype)
        swp = &swv[0]
    total = loss_grad_rows(loss, &Z[0, 0], &Y[0, 0], swp, N, C, scale, &Gv[0, 0])
    return total, G


def link_memview(Loss loss, const floating[:, ::1] Z):
    """Return link(Z): the predictions after the output link."""
    P = np.empty_like(np.asarray(Z))
    cdef floating[:, ::1] Pv = P
    link_rows(loss, &Z[0, 0], &Pv[0, 0], Z.shape[0], Z.shape[1])
    return P


def hess_prod_memview(Loss loss, const floating[:, ::1] Z, const floating[:, ::1] Y,
                      const floating[:, :, ::1] V, double scale=1.0):
    """Return HV (k, N, C): per-sample output Hessians applied to V."""
    HV = np.empty_like(np.asarray(V))
    cdef floating[:, :, ::1] Hv = HV
    hess_prod_rows(loss, &Z[0, 0], &Y[0, 0], <const floating*>NULL, Z.shape[0],
                   Z.shape[1], scale, &V[0, 0, 0], &Hv[0, 0, 0], V.shape[0])
    return HV


def sqrt_hess_memview(Loss loss, const floating[:, ::1] Z, const floating[:, ::1] Y,
                      double scale=1.0):
    """Return S (C, N, C) with sum_c S[c, i][:, None] S[c, i][None, :] = H_i."""
    cdef Py_ssize_t N = Z.shape[0], C = Z.shape[1]
    S = np.empty((C, N, C), dtype=np.asarray(Z).dtype)
    cdef floating[:, :, ::1] Sv = S
    sqrt_hess_rows(loss, &Z[0, 0], &Y[0, 0], <const floating*>NULL, N, C, scale,
                   &Sv[0, 0, 0])
    return S
