"""Point functions of the hidden-layer activations: f, f', f'' from the kernels.

``cbackprop._activations.activation_memview(act, z)`` returns ``(f, f', f'')``
computed by the same inline point functions the forward/backward loops use
(``f`` goes through ``act_forward``, so also through the vectorized
``cb_exp`` / ``cb_expm1`` / ``cb_log1p`` of ``_vmath.h``).

* values against float64 closed forms (NumPy / SciPy), float32 against the
  float64 reference at a few float32 eps, on separate z regions so that a
  failure names the region;
* f' and f'' against 4th-order central finite differences of the float64
  kernel;
* the ``_vmath.h`` exponentials indirectly: logistic / tanh / softplus over a
  dense grid against long-double references, in ulps;
* stability (finite everything, no warnings) on [-1e4, 1e4] (float64) and
  [-80, 80] (float32), asymptotes, tiny arguments and z = 0.
"""
import warnings

import numpy as np
import pytest
from scipy.special import expit

from cbackprop._activations import Activation, activation_memview
from common import DTYPES, assert_close

ACTS = [pytest.param(a, id=a.name.lower()) for a in Activation]
SMOOTH = [pytest.param(a, id=a.name.lower()) for a in Activation
          if a not in (Activation.IDENTITY, Activation.RELU)]

# Largest |z| of the "tails" region per dtype: exp(-|z|) stays a normal number.
TAIL_END = {np.float64: 700.0, np.float32: 80.0}


def kernel(act, z, dtype=np.float64):
    """(f, f', f'') of the kernel on z cast to ``dtype``."""
    return activation_memview(act, np.ascontiguousarray(z, dtype=dtype))


def reference(act, z):
    """f(z) in closed form; float64 (or long double when z is long double)."""
    z = np.asarray(z)
    if act == Activation.IDENTITY:
        return z.copy()
    if act == Activation.LOGISTIC:
        return expit(z)
    if act == Activation.TANH:
        return np.tanh(z)
    if act == Activation.RELU:
        return np.maximum(z, 0)
    if act == Activation.SOFTPLUS:
        return np.logaddexp(z.dtype.type(0), z)
    if act == Activation.SWISH:
        return z * expit(z)
    if act == Activation.MISH:
        return z * np.tanh(np.logaddexp(z.dtype.type(0), z))
    raise ValueError(act)


def fd1(fun, z, h):
    """4th-order central first derivative."""
    return (fun(z - 2 * h) - 8 * fun(z - h) + 8 * fun(z + h) - fun(z + 2 * h)) / (12 * h)


def fd2(fun, z, h):
    """4th-order central second derivative."""
    return (-fun(z - 2 * h) + 16 * fun(z - h) - 30 * fun(z) + 16 * fun(z + h)
            - fun(z + 2 * h)) / (12 * h * h)


def regions(dtype):
    """z grids (in ``dtype``) named by region; no subnormal inputs."""
    tiny = [1e-300, 1e-200, 1e-100] if dtype == np.float64 else [1e-37, 1e-30]
    tiny = np.array(tiny + [1e-20, 1e-10, 1e-7, 1e-5, 1e-3])
    tail = np.geomspace(8.0, TAIL_END[dtype], 600)
    return {
        "tiny": np.concatenate([-tiny, [0.0], tiny]).astype(dtype),
        "core": np.linspace(-8.0, 8.0, 4001).astype(dtype),
        "neg_tail": (-tail).astype(dtype),
        "pos_tail": tail.astype(dtype),
    }


REGIONS = ["tiny", "core", "neg_tail", "pos_tail"]


# ------------------------------------------------------------------- values
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_value_matches_closed_form(act, dtype, region):
    """f(z) to a few eps (relative) of the float64 closed form, per region."""
    z = regions(dtype)[region]
    f = kernel(act, z, dtype)[0]
    assert f.dtype == dtype
    ref = reference(act, z.astype(np.float64))
    # relative only (scale 0); tiny absorbs results below the normal range
    assert_close(f, ref, dtype, "eps", factor=4, scale=0.0, tiny=True,
                 err_msg=f"{act.name} {np.dtype(dtype).name} {region}")


DENSE = ["logistic", "tanh", "softplus"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DENSE)
def test_vmath_dense_grid_ulps(name, dtype):
    """The vectorized cb_exp / cb_expm1 / cb_log1p (and float versions) seen
    through logistic, tanh and softplus: <= 3 ulp (float64) / 2 ulp (float32)
    of a long-double reference over a dense grid covering the whole range
    down to underflow."""
    act = Activation[name.upper()]
    hi = 745.0 if dtype == np.float64 else 103.0
    rng = np.random.default_rng(1)
    z = np.concatenate([np.linspace(-hi, hi, 200001),
                        rng.uniform(-3.0, 3.0, 100000)]).astype(dtype)
    f = kernel(act, z, dtype)[0]
    ref = reference(act, z.astype(np.longdouble))
    ulp = np.spacing(np.abs(ref.astype(dtype))).astype(np.longdouble)
    ulp = np.maximum(ulp, np.longdouble(np.finfo(dtype).smallest_subnormal))
    err = (np.abs(f.astype(np.longdouble) - ref) / ulp).astype(np.float64)
    max_ulp = 3.0 if dtype == np.float64 else 2.0
    worst = int(np.argmax(err))
    assert err[worst] <= max_ulp, (
        f"{name}: {err[worst]:.3f} ulp at z={z[worst]!r}: "
        f"kernel {f[worst]!r}, reference {float(ref[worst])!r}")


@pytest.mark.parametrize("z", [1e-300, 1e-200, 1e-10, -1e-10, -1e-300],
                         ids=["1e-300", "1e-200", "1e-10", "-1e-10", "-1e-300"])
def test_tanh_tiny_is_identity(z):
    """tanh(z) = z - z^3/3: the expm1 formulation keeps full relative accuracy."""
    f, d1, d2 = kernel(Activation.TANH, [z])
    np.testing.assert_allclose(f, [z], rtol=1e-15, atol=0)
    np.testing.assert_allclose(d1, [1.0], rtol=1e-15)
    np.testing.assert_allclose(d2, [-2.0 * z], rtol=1e-15, atol=0)


@pytest.mark.parametrize("z", [1e-37, 1e-20, -1e-20, -1e-37], ids=["1e-37", "1e-20", "-1e-20", "-1e-37"])
def test_tanh_tiny_is_identity_float32(z):
    f = kernel(Activation.TANH, [z], np.float32)[0]
    assert_close(f, np.float32([z]), np.float32, "eps", factor=2, scale=0.0)


# (f(0), f'(0), f''(0)); relu'(0) = 0 by convention (z > 0).
AT_ZERO = {
    Activation.IDENTITY: (0.0, 1.0, 0.0),
    Activation.LOGISTIC: (0.5, 0.25, 0.0),
    Activation.TANH: (0.0, 1.0, 0.0),
    Activation.RELU: (0.0, 0.0, 0.0),
    Activation.SOFTPLUS: (np.log(2.0), 0.5, 0.25),
    Activation.SWISH: (0.0, 0.5, 0.5),
    Activation.MISH: (0.0, 0.6, 0.64),  # tanh(log 2) = 3/5, 1 - 9/25 = 16/25
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_values_at_zero(act, dtype):
    out = kernel(act, [0.0], dtype)
    for name, got, want in zip(("f", "f'", "f''"), out, AT_ZERO[act]):
        assert_close(got, [want], dtype, "eps", factor=4, scale=0.0,
                     err_msg=f"{act.name} {name}(0)")
    if act == Activation.LOGISTIC:
        assert out[0][0] == 0.5  # exactly


# -------------------------------------------------------------- derivatives
def fd_grid(act):
    z = np.linspace(-8.0, 8.0, 321)
    if act == Activation.RELU:
        z = z[np.abs(z) >= 1e-3]  # away from the kink
    return z


@pytest.mark.parametrize("act", ACTS)
def test_first_derivative_matches_fd(act):
    """f' against a 4th-order central difference of the float64 kernel's f."""
    z = fd_grid(act)
    d1 = kernel(act, z)[1]
    fd = fd1(lambda t: kernel(act, t)[0], z, 1e-3)
    np.testing.assert_allclose(d1, fd, rtol=5e-6, atol=1e-9, err_msg=act.name)


@pytest.mark.parametrize("act", ACTS)
def test_second_derivative_matches_fd_of_first(act):
    """f'' against a 4th-order central difference of the float64 kernel's f'."""
    z = fd_grid(act)
    d2 = kernel(act, z)[2]
    fd = fd1(lambda t: kernel(act, t)[1], z, 1e-3)
    np.testing.assert_allclose(d2, fd, rtol=5e-6, atol=1e-9, err_msg=act.name)


@pytest.mark.parametrize("act", ACTS)
def test_second_derivative_matches_fd2_of_value(act):
    """f'' against a 4th-order central second difference of the kernel's f
    (ties f'' to f directly, not only through f')."""
    z = fd_grid(act)
    if act == Activation.RELU:
        z = z[np.abs(z) >= 0.05]
    d2 = kernel(act, z)[2]
    fd = fd2(lambda t: kernel(act, t)[0], z, 1e-2)
    np.testing.assert_allclose(d2, fd, rtol=5e-6, atol=1e-8, err_msg=act.name)


@pytest.mark.parametrize("act", ACTS)
def test_float32_matches_float64_kernel(act):
    """float32 (f, f', f'') within a few float32 eps of the float64 kernel on
    [-8, 8] (absolute on the O(1) scale of f' and f'': f' of logistic/tanh is
    computed from a = f(z), so its relative accuracy degrades as it gets small)."""
    z = np.linspace(-8.0, 8.0, 1601).astype(np.float32)
    out32 = kernel(act, z, np.float32)
    out64 = kernel(act, z.astype(np.float64))
    for name, a, b in zip(("f", "f'", "f''"), out32, out64):
        assert a.dtype == np.float32
        assert_close(a, b, np.float32, "eps", factor=8, scale=1.0, err_msg=f"{act.name} {name}")


# ---------------------------------------------------------------- stability
def stability_grid(dtype):
    if dtype == np.float64:
        special = [1e4, 745.2, 745.13, 746.0, 709.78, 710.0, 36.8, 18.0]
        z = np.linspace(-1e4, 1e4, 20001)
    else:
        special = [80.0, 88.7, 87.3, 16.7, 9.0]
        z = np.linspace(-80.0, 80.0, 16001)
    special = np.array(special)
    return np.concatenate([z, special, -special]).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_finite_without_warnings(act, dtype):
    z = stability_grid(dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        out = kernel(act, z, dtype)
        for name, a in zip(("f", "f'", "f''"), out):
            bad = ~np.isfinite(a)
            assert not bad.any(), f"{act.name} {name} not finite at z={z[bad][:5]}"


# (limit of f, f', f'') as z -> +inf and -inf; None: f -> z (slope 1).
LIMITS = {
    Activation.LOGISTIC: {+1: (1.0, 0.0, 0.0), -1: (0.0, 0.0, 0.0)},
    Activation.TANH: {+1: (1.0, 0.0, 0.0), -1: (-1.0, 0.0, 0.0)},
    Activation.SOFTPLUS: {+1: (None, 1.0, 0.0), -1: (0.0, 0.0, 0.0)},
    Activation.SWISH: {+1: (None, 1.0, 0.0), -1: (0.0, 0.0, 0.0)},
    Activation.MISH: {+1: (None, 1.0, 0.0), -1: (0.0, 0.0, 0.0)},
}
LIMIT_Z = {np.float64: [20.0, 40.0, 100.0, 700.0, 1e4], np.float32: [10.0, 20.0, 40.0, 80.0]}


@pytest.mark.parametrize("side", [+1, -1], ids=["pos", "neg"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", SMOOTH)
def test_limits(act, dtype, side):
    """Saturation: every deviation from the limit is below
    10 (1 + |z|) e^{-|z|} (plus the rounding of the limit itself)."""
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    z = side * np.array(LIMIT_Z[dtype])
    out = [a.astype(np.float64) for a in kernel(act, z, dtype)]
    with np.errstate(under="ignore"):
        decay = 10 * (1 + np.abs(z)) * np.exp(-np.abs(z))
    for name, got, lim in zip(("f", "f'", "f''"), out, LIMITS[act][side]):
        lim = z if lim is None else np.full_like(z, lim)
        dev = np.abs(got - lim)
        tol = decay + eps * np.abs(lim) + tiny
        assert (dev <= tol).all(), (act.name, name, z[dev > tol], got[dev > tol])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", SMOOTH)
def test_negative_tail_sign(act, dtype):
    """Approach from the correct side: logistic, softplus -> 0+; swish, mish ->
    0-; tanh -> -1 from above."""
    z = -np.array(LIMIT_Z[dtype])
    f = kernel(act, z, dtype)[0]
    if act in (Activation.LOGISTIC, Activation.SOFTPLUS):
        assert (f >= 0).all()
    elif act == Activation.TANH:
        assert (f >= -1).all()
    else:
        assert (f <= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [pytest.param(Activation.LOGISTIC, id="logistic"),
                                 pytest.param(Activation.SOFTPLUS, id="softplus")])
def test_negative_tail_relative_accuracy(act, dtype):
    """logistic(z) and softplus(z) ~ exp(z) for very negative z, to relative
    accuracy (no 1 - (1 - tiny) cancellation)."""
    z = -np.array([40.0, 60.0, 80.0] if dtype == np.float32 else [40.0, 100.0, 300.0, 700.0])
    f = kernel(act, z, dtype)[0]
    assert_close(f, np.exp(z), dtype, "eps", factor=4, scale=0.0)
    # and the positive side is exact: softplus(z) == z, logistic(z) == 1
    g = kernel(act, -z, dtype)[0]
    assert (g == (-z if act == Activation.SOFTPLUS else 1.0)).all()
