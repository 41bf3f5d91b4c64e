"""The parameter layout of a network, read from its plan once.

``theta`` is ``W_1, b_1, W_2, b_2, ...`` with ``W_l`` row-major ``(n_{l-1}, n_l)``;
read as one array, layer l's ``[W_l; b_l]`` is the augmented row-major
``(n_{l-1} + 1, n_l)`` block. Stacked layer caches hold layer l's ``(N, n_l)``
block at ``N * h_off[l]``. The offsets come from the kernels' ``NetPlan``:
nothing in Python recomputes them.
"""
from functools import cached_property

import numpy as np


class Layout:
    """Read-only offsets of theta and of the stacked layer caches.

    Parameters
    ----------
    plan : cbackprop._network.NetPlan

    Attributes
    ----------
    sizes : ndarray of shape (L + 1,)
        Layer widths ``n_0 .. n_L``.
    w_off, b_off : ndarray of shape (L,)
        Offsets of ``W_l`` and ``b_l`` in theta.
    h_off : ndarray of shape (L,)
        Column offset of layer l in the stacked caches (width ``sum n_1..n_L``).
    n_params : int
    weight_index : ndarray of int
        Positions of every weight entry (not the biases) in theta, ascending.
    weight_mask : ndarray of shape (P,)
        1.0 on the weight entries, 0.0 on the biases (float64).

    The last two are built on first use: 16 bytes a parameter, which a wide
    first layer (sparse inputs) makes as large as the optimizer's state.
    """

    def __init__(self, plan):
        self.sizes, self.w_off, self.b_off, self.h_off = plan.offsets
        self.n_params = int(plan.n_params)
        self.n_layers = len(self.sizes) - 1

    @cached_property
    def weight_index(self):
        idx = np.concatenate([np.arange(w, b) for w, b in zip(self.w_off, self.b_off)])
        idx.flags.writeable = False
        return idx

    @cached_property
    def weight_mask(self):
        mask = np.zeros(self.n_params)
        mask[self.weight_index] = 1.0
        mask.flags.writeable = False
        return mask

    def weight_slices(self):
        """Per layer, the slice of theta holding ``W_l``."""
        return [slice(int(w), int(b)) for w, b in zip(self.w_off, self.b_off)]

    def blocks(self):
        """Per layer ``(offset, n_in + 1, n_out)`` of the augmented block in theta."""
        s = self.sizes
        return [(int(self.w_off[l]), int(s[l]) + 1, int(s[l + 1]))
                for l in range(self.n_layers)]

    def layer(self, stacked, l, n_rows, k=1):
        """View ``(k, n_rows, n_l)`` of layer l in a stacked ``k * n_rows * width`` cache."""
        n = int(self.sizes[l + 1])
        start = k * n_rows * int(self.h_off[l])
        return stacked[start:start + k * n_rows * n].reshape(k, n_rows, n)

    def layers(self, stacked, n_rows, k=1):
        """Views of every layer of a stacked cache (see :meth:`layer`)."""
        return [self.layer(stacked, l, n_rows, k) for l in range(self.n_layers)]

    def add_weight_diag(self, M, coef):
        """Add coef on the weight entries of a diagonal (P,) or matrix (P, P), in place."""
        if coef != 0.0:
            idx = self.weight_index
            if M.ndim == 1:
                M[idx] += coef
            else:
                M[idx, idx] += coef
        return M
