/*
 * _vmath.h -- branch-free, auto-vectorizable exp/expm1/log1p for cbackprop.
 *
 * Why: glibc's scalar exp/tanh cost ~10-15 ns per element and gcc will not
 * vectorize a loop that calls libm unless -ffast-math is given (which we
 * refuse).  Everything below is straight-line code made of +, -, *, /,
 * compares feeding ternaries (-> cmppd + and/andn/or blends), and 64-bit
 * integer add/sub/and/or/logical shifts on the bit patterns of doubles.
 * All of that exists in baseline SSE2, so with Python's default flags
 * (gcc -O3 -fwrapv, no -march, no -ffast-math) a loop such as
 *
 *     for (i = 0; i < n; i++) a[i] = 1.0 / (1.0 + cb_exp(-z[i]));
 *
 * is vectorized.  Deliberately avoided, because they block vectorization on
 * SSE2: libm calls, early returns, table lookups (gathers), double<->int64
 * conversions (cvttpd2qq / cvtqq2pd are AVX-512 only) and arithmetic 64-bit
 * right shifts (psraq is AVX-512 only).  Integers are read out of doubles with
 * the 0x1.8p52 "shift" trick and turned back into doubles with the 0x1p52
 * "magic" trick instead.
 *
 * Accuracy (max error vs an 80-bit long double reference over 10^7 random
 * points plus special points): cb_exp 1.05 ulp, cb_expm1 1.35 ulp,
 * cb_log1p 0.95 ulp; cb_expf / cb_expm1f / cb_log1pf compute in double and
 * are <= 0.51 ulp of float.  Special values follow C99
 * Annex F (+-inf, NaN in -> NaN out, signed zeros, overflow to +inf,
 * gradual underflow to subnormals and then 0).  No floating-point exception
 * flags are guaranteed (callers do not inspect them).
 *
 * Tanh from these pieces (what the activation code uses):
 *     t = cb_expm1(-2.0 * fabs(z));  tanh(z) = copysign(-t / (2.0 + t), z);
 * (exact for tiny z, no cancellation, saturates to +-1, NaN propagates.)
 * Softplus: max(z, 0) + cb_log1p(cb_exp(-fabs(z))).
 * Callers beware (see the note on selects below): writing a clamp or ReLU
 * as "c ? CONSTANT : x" and then doing foldable arithmetic on the result in
 * the same loop can itself stop gcc from vectorizing that loop.
 *
 * Polynomial coefficients are near-minimax (Chebyshev fits computed with
 * mpmath, rounded to double); the approximation error of each polynomial is
 * stated next to it.
 */
#ifndef CB_VMATH_H
#define CB_VMATH_H

#include <stdint.h>
#include <string.h>
#include <math.h>   /* fabs (a builtin: andpd), HUGE_VAL; no libm calls */

#if defined(__GNUC__) || defined(__clang__)
#  define CB_VM_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#  define CB_VM_INLINE static __forceinline
#else
#  define CB_VM_INLINE static inline
#endif

/* ---- bit casts (memcpy is folded into a plain register move by gcc) ---- */
CB_VM_INLINE uint64_t cb__d2u(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
CB_VM_INLINE double cb__u2d(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/*
 * Why no "cond ? CONSTANT : x" before arithmetic: with gcc's default
 * -ftrapping-math, a select with a constant arm followed by FP arithmetic
 * (e.g. x = x > 710 ? 710 : x; t = x*log2e + ...) lets tree-PRE constant-fold
 * the arithmetic on the constant arm and move the real computation into the
 * other arm; the loop if-converter then refuses to speculate those
 * (possibly trapping) FP operations and the loop is NOT vectorized
 * ("control flow in loop").  So every select arm that feeds arithmetic is a
 * data-dependent value: clamp bounds are built as bits(bound) | (bits(x) & 1)
 * (the bound, or the bound plus one ulp -- harmless for a clamp), and special
 * results (-inf, NaN) are made by OR-ing exponent bits into bits(m).
 * Likewise no select may come *after* a floating-point computation whose
 * result is one of its arms: tree-sink moves the computation into the arm,
 * with the same effect.  So selects are only used up front, on inputs, and
 * special results are made to fall out of the arithmetic (or fixed with
 * copysign, which is bit arithmetic).
 */
/* Clamp x to [-b, b], b = bound or bound + 1 ulp (data-dependent, see
   above).  NaN passes through.  These two ternaries compile to maxpd/minpd
   (their IEEE NaN semantics match the C expressions exactly). */
CB_VM_INLINE double cb__clamp_abs(double x, uint64_t bound_bits)
{
    double b = cb__u2d((cb__d2u(x) & 1u) | bound_bits);
    x = x > b ? b : x;
    return x < -b ? -b : x;
}

/* ---- constants ---- */
#define CB__SHIFT   0x1.8p52                 /* x + SHIFT rounds x to an integer held in the low mantissa bits */
#define CB__SHIFT_BITS UINT64_C(0x4338000000000000)
#define CB__LOG2E   0x1.71547652b82fep+0
#define CB__LN2     0x1.62e42fefa39efp-1
/* Cody-Waite split of ln2: LN2_HI has 40 significant bits, so k*LN2_HI is
   exact for |k| < 2^13 (we need |k| <= 1076) and x - k*LN2_HI is exact
   (Sterbenz).  LN2_HI + LN2_LO = ln2 to ~2^-95. */
#define CB__LN2_HI  0x1.62e42fefa4000p-1
#define CB__LN2_LO  -0x1.8432a1b0e2634p-43
#define CB__746_BITS UINT64_C(0x4087500000000000)   /* bits of 746.0 */
#define CB__150_BITS UINT64_C(0x4062c00000000000)   /* bits of 150.0 */
#define CB__2P60_BITS UINT64_C(0x43b0000000000000)  /* bits of 2^60 */

/*
 * Shared kernel for exp/expm1 (double).
 *   k = round(x / ln2) by the shift trick: t = x*log2e + 1.5*2^52 has ulp 1,
 *   so its low mantissa bits hold k in two's complement (bits(t) - bits(SHIFT)
 *   = k as uint64); kd = t - SHIFT is k as an exact double.
 *   r = x - k*ln2 (Cody-Waite, exact to ~2^-80 absolute), |r| <= ln2/2 + tiny.
 *   p = expm1(r) = r + r^2 * Q(r), Q degree 9 near-minimax on |r| <= 0.3468,
 *   |error of Q| = 1.1e-16, i.e. <= 1.3e-17 in expm1(r) -- 0.1 ulp.
 *   Writing expm1(r) as r + r^2*Q keeps full relative accuracy for tiny r.
 * cb__expm1_kernel2 returns r^2*q, replaces *xr by r_hi = x - k*LN2_HI
 * (exact) and stores r_lo = -k*LN2_LO (r = r_hi + r_lo); cb__expm1_kernel
 * returns p.  *ub receives k + 2048 as uint64 (positive for k >= -2048), so
 * that floor(k/2) can be had with a logical shift (SSE2 has psrlq, not psraq).
 */
CB_VM_INLINE double cb__expm1_kernel2(double *xr, double *rlo, uint64_t *ub)
{
    double x  = *xr;
    double t  = x * CB__LOG2E + CB__SHIFT;
    double kd = t - CB__SHIFT;
    *ub = cb__d2u(t) - (CB__SHIFT_BITS - 2048u);
    double rh = x - kd * CB__LN2_HI;            /* exact */
    double rl = -(kd * CB__LN2_LO);
    double r  = rh + rl;
    double r2 = r * r, r4 = r2 * r2;
    /* Estrin's scheme: the loop is latency-bound with Horner */
    double p01 = 0x1.0000000000001p-1 + 0x1.5555555555556p-3 * r;
    double p23 = 0x1.5555555553d4fp-5 + 0x1.11111111109adp-7 * r;
    double p45 = 0x1.6c16c17893833p-10 + 0x1.a01a01a7c8d47p-13 * r;
    double p67 = 0x1.a019b8ef67c6cp-16 + 0x1.71de0d9c145d0p-19 * r;
    double p89 = 0x1.2891a8c1d838dp-22 + 0x1.af38d53857513p-26 * r;
    double q   = (p01 + r2 * p23) + r4 * ((p45 + r2 * p67) + r4 * p89);
    *xr = rh;
    *rlo = rl;
    return r2 * q;
}
CB_VM_INLINE double cb__expm1_kernel(double x, uint64_t *ub)
{
    double rl, r2q = cb__expm1_kernel2(&x, &rl, ub);
    return (x + rl) + r2q;
}

/*
 * cb_exp(x): e^x, all x; max error 1.05 ulp measured.
 *   |x| is clamped to 746 first (NaN passes through): that keeps k in
 *   [-1077, 1077], so e^746 -> +inf and e^-746 -> 0 come out of the ordinary
 *   arithmetic, and the shift trick stays in range for +-inf / huge x.
 *   2^k is applied in two exact steps, 2^ceil(k/2) then 2^floor(k/2), each a
 *   normal double built from bits: this avoids the overflow of 2^1024 near the
 *   top and gives correctly rounded gradual underflow (one rounding, in the
 *   last multiply) for subnormal results down to exp(-745.13) = 2^-1075.
 *   NaN in -> NaN out (p is NaN, so the product is NaN whatever the garbage
 *   scale bits are).
 */
CB_VM_INLINE double cb_exp(double x)
{
    uint64_t ub, u1;
    double p, s1, s2;
    x  = cb__clamp_abs(x, CB__746_BITS);
    p  = cb__expm1_kernel(x, &ub);
    u1 = ub >> 1;                               /* floor(k/2) + 1024 */
    s1 = cb__u2d((u1 - 1u) << 52);              /* 2^floor(k/2) */
    s2 = cb__u2d((ub - u1 - 1u) << 52);         /* 2^ceil(k/2): (k - floor(k/2)) + 1023 */
    return ((1.0 + p) * s2) * s1;
}

/*
 * cb_expm1(x): e^x - 1, all x including tiny x; max error 1.35 ulp measured.
 *   Same reduction as cb_exp.  e^x - 1 = 2^k*p + (2^k - 1); with the two-step
 *   scale 2^k = s1*s2 (s1 = 2^floor(k/2), s2 = 2^ceil(k/2), t1 = 1/s1):
 *       expm1(x) = s1 * (s2*p + (s2 - t1))
 *   s2*p and the final *s1 are exact, s2 - t1 is exact whenever it matters
 *   (|k| small), so there is a single rounding: for k = 0 the result is
 *   exactly p (no cancellation for tiny x), and for k = 1024 nothing
 *   overflows before the final multiply.
 *   To avoid the roundings of r = r_hi + r_lo and of p = r + r^2*q (which
 *   2^k magnifies for k = +-1: 2.3 ulp with the naive form), s2*r_hi (exact)
 *   is added to (s2 - t1) with an exact Fast2Sum and the small
 *   s2*(r_lo + r^2*q) part is added last.
 *   |x| is clamped to 746 (k1, k2 stay normal; the result saturates to +inf
 *   or -1).  expm1(x) has the sign of x, so a final copysign (bit ops, not a
 *   select -- see above) restores expm1(-0) = -0, which the sums turn into +0.
 */
CB_VM_INLINE double cb_expm1(double x)
{
    uint64_t ub, u1;
    double r, rl, r2q, s1, s2, t1, a, b, hi, lo, res;
    r  = cb__clamp_abs(x, CB__746_BITS);
    r2q = cb__expm1_kernel2(&r, &rl, &ub);      /* r becomes r_hi (exact) */
    u1 = ub >> 1;                               /* floor(k/2) + 1024 */
    s1 = cb__u2d((u1 - 1u) << 52);              /* 2^floor(k/2) */
    t1 = cb__u2d((2047u - u1) << 52);           /* 2^-floor(k/2) */
    s2 = cb__u2d((ub - u1 - 1u) << 52);         /* 2^ceil(k/2) */
    a  = s2 - t1;
    b  = s2 * r;
    hi = a + b;                                 /* Fast2Sum: |a| >= |b| or a == 0 */
    lo = (a - hi) + b;
    res = s1 * (hi + (lo + s2 * (rl + r2q)));
    return copysign(res, x);                    /* only changes +0 -> -0 for x = -0 */
}

/*
 * Float versions: computed in double (the conversions vectorize as
 * cvtps2pd / cvtpd2ps), with a cheaper kernel -- Q of degree 5, error
 * 1.7e-10 relative, and a single-constant ln2 reduction (|k| <= 150, error
 * ~1e-14) -- so the only significant error is the final rounding to float:
 * <= 0.5 ulp + ~0.003 ulp.  Float over/underflow (including float
 * subnormals) is produced by that final conversion, so a single-step 2^k
 * (a normal double for |x| <= 150) suffices.
 */
CB_VM_INLINE double cb__expm1f_kernel(double x, double *scale)
{
    double t  = x * CB__LOG2E + CB__SHIFT;
    double kd = t - CB__SHIFT;
    double r  = x - kd * CB__LN2;
    double r2 = r * r;
    double q  = (0x1.0000000b9847ep-1 + 0x1.5555555a7c16bp-3 * r)
              + r2 * ((0x1.5554e8d9c7d96p-5 + 0x1.1110e0de7be2bp-7 * r)
                      + r2 * (0x1.6d4362097d81ap-10 + 0x1.a125285dbcbf1p-13 * r));
    *scale = cb__u2d((cb__d2u(t) - CB__SHIFT_BITS + 1023u) << 52);   /* 2^k */
    return r + r2 * q;
}

/* cb_expf(x): e^x in float, <= 0.51 ulp.  |x| clamped to 150 (e^150 is a
   double that overflows float, e^-150 rounds to 0f); NaN passes through. */
CB_VM_INLINE float cb_expf(float xf)
{
    double x = cb__clamp_abs((double)xf, CB__150_BITS), s, p;
    p = cb__expm1f_kernel(x, &s);
    return (float)(s * (1.0 + p));
}

/* cb_expm1f(x): e^x - 1 in float, <= 0.51 ulp.  2^k*p + (2^k - 1) in double
   (k in [-217, 217]); |x| clamped to 150; copysign keeps -0 -> -0. */
CB_VM_INLINE float cb_expm1f(float xf)
{
    double x = cb__clamp_abs((double)xf, CB__150_BITS), s, p;
    p = cb__expm1f_kernel(x, &s);
    x = s * p + (s - 1.0);
    return copysignf((float)x, xf);
}

/*
 * log1p.  m = 1 + x (rounded); c = the exact rounding error of that
 * addition, so 1 + x = m + c and log1p(x) = log(m) + log1p(c/m)
 * ~= log(m) + c/m (|c/m| <= 2^-53, its square is far below 1 ulp):
 *   c = x - (m - 1)   for m < 2   (m - 1 is exact by Sterbenz, and for
 *                                  m <= 1/2 the addition itself was exact)
 *   c = 1 - (m - x)   for m >= 2  (m - x is exact by Sterbenz)
 * both written as c = A - (m - C) with (A, C) = (x, 1) or (1, x) selected
 * *before* the arithmetic (x is capped near 2^60 here so that x = +inf gives
 * no inf - inf; for x >= 2^60, c = 1 is still the true rounding error).
 * log(m): m = 2^k * f with f in [sqrt(1/2), sqrt(2)), by integer ops on the
 * bits: adding D = 0x3ff0.. - bits(sqrt(1/2)) makes the exponent field carry
 * exactly when the mantissa of m is >= that of sqrt(2), so
 *   k + 1023 = (bits(m) + D) >> 52,  bits(f) = ((bits(m) + D) & mant) + bits(sqrt(1/2)).
 * k is turned into a double by OR-ing it into the mantissa of 2^52 and
 * subtracting (SSE2 has no int64 -> double conversion).
 * Then u = f - 1 (exact), s = u / (2 + u), so log f = 2 atanh(s)
 *   = 2s + s*R,  R = z*P(z), z = s^2 <= 0.0295,
 * and, using 2s = u - s*u,   log f = u - s*(u - R).
 * The leading term u is exact and the rounding error of s only enters
 * through s*u ~ u^2/2 (fdlibm's trick), so log f is good to ~0.6 ulp.
 * Result: (k*g)*ln2_hi + (u - (s*(u - R) - (c/m + k*ln2_lo))): the small
 * terms are gathered first so that for k = 0 there is one final rounding.
 *
 * Special cases come out of the arithmetic, with no select after it (see the
 * note on selects at the top):
 *   x = -1 (m = +0):  A = -2, so c = -1 and c/m = -inf            -> -inf
 *   x < -1, x = -inf: A = NaN (exponent bits OR-ed into bits(m))  -> NaN
 *   x NaN:            c/m = NaN                                   -> NaN
 *   x = +inf:         g = +inf (built from bits when m's exponent field is
 *                     all ones; g = 1 otherwise), k*g*ln2_hi = +inf   -> +inf
 *   x = -0:           the sums give +0; log1p(x) has the sign of x, so a final
 *                     copysign fixes it (tiny x: m = 1, c = x, result x).
 */
#define CB__SQRTH_BITS UINT64_C(0x3fe6a09e667f3bcd)   /* bits of sqrt(1/2) */
#define CB__LOG_D      UINT64_C(0x00095f619980c433)   /* 0x3ff0000000000000 - CB__SQRTH_BITS */
#define CB__MANT       UINT64_C(0x000fffffffffffff)
#define CB__SIGN       UINT64_C(0x8000000000000000)
#define CB__ONE_BITS   UINT64_C(0x3ff0000000000000)   /* bits of 1.0 */
#define CB__TWO52_BITS UINT64_C(0x4330000000000000)   /* bits of 2^52 */

/* Returns u = f - 1; *cm = c/m (+ the special values), *kg = k*g, *kd = k. */
CB_VM_INLINE double cb__log1p_reduce(double x, double *cm, double *kg, double *kd)
{
    double big = cb__u2d((cb__d2u(x) & 1u) | CB__2P60_BITS);   /* ~2^60, data-dependent */
    double xc  = x < 0x1p60 ? x : big;                         /* NaN -> big */
    double mc  = 1.0 + xc;
    /* exactly 1.0 wherever it is selected (xc >= 1 resp. mc >= 0 there) */
    double one_a = cb__u2d(CB__ONE_BITS | (cb__d2u(xc) & CB__SIGN));
    double one_c = cb__u2d(CB__ONE_BITS | (cb__d2u(mc) & CB__SIGN));
    /* mc == +0 -> -2.0;  mc < 0 -> NaN */
    double sp  = cb__u2d(cb__d2u(mc) | (mc == 0.0 ? UINT64_C(0xc000000000000000)
                                                  : UINT64_C(0x7ff8000000000000)));
    double A   = mc >= 2.0 ? one_a : (mc > 0.0 ? xc : sp);
    double C   = mc >= 2.0 ? xc : one_c;
    double c   = A - (mc - C);
    double m   = 1.0 + x;
    uint64_t bm = cb__d2u(m);
    uint64_t im = bm + CB__LOG_D;
    double f   = cb__u2d((im & CB__MANT) + CB__SQRTH_BITS);
    double k   = cb__u2d((im >> 52) | CB__TWO52_BITS) - (0x1p52 + 1023.0);
    /* g = 1, or +inf when the exponent field of m is all ones (m = +inf);
       for m < 0 (sign bit set) g is garbage, but c is NaN there anyway */
    double g   = cb__u2d(CB__ONE_BITS + ((((bm >> 52) + 1u) >> 11) << 62));
    *cm = c / m;
    *kg = k * g;
    *kd = k;
    return f - 1.0;
}

/* cb_log1p(x): log(1 + x), all x (NaN for x < -1, -inf at -1); max error
   0.95 ulp measured (0.90 on [0, 1]).  P: degree 6 near-minimax on z in
   [0, 0.02945], error 3e-16 in P, i.e. ~5e-18 relative in log f. */
CB_VM_INLINE double cb_log1p(double x)
{
    double cm, kg, kd, u, s, z, z2, R;
    u = cb__log1p_reduce(x, &cm, &kg, &kd);
    s = u / (2.0 + u);
    z = s * s;
    z2 = z * z;
    R = z * ((0x1.5555555555558p-1 + 0x1.99999999952abp-2 * z)
             + z2 * ((0x1.2492492df7663p-2 + 0x1.c71c62ddb431bp-3 * z)
                     + z2 * ((0x1.7462b6e311a89p-3 + 0x1.39fe16ad885a7p-3 * z)
                             + z2 * 0x1.2b5bd9a316a24p-3)));
    return copysign(kg * CB__LN2_HI + (u - (s * (u - R) - (cm + kd * CB__LN2_LO))), x);
}

/* cb_log1pf(x): float log1p computed in double with a degree-3 P (error
   1.7e-11 relative); <= 0.51 ulp of float.  The c/m correction is still
   needed: 1 + (double)x is inexact for |x| < 2^-29. */
CB_VM_INLINE float cb_log1pf(float xf)
{
    double x = (double)xf, cm, kg, kd, u, s, z, R, lf;
    u = cb__log1p_reduce(x, &cm, &kg, &kd);
    s = u / (2.0 + u);
    z = s * s;
    R = z * ((0x1.5555554badb2dp-1 + 0x1.9999eb7d752f0p-2 * z)
             + (z * z) * (0x1.245c355ca2c01p-2 + 0x1.ddd1d8ed1a8e2p-3 * z));
    lf = u - s * (u - R);
    (void)kd;
    return copysignf((float)(kg * CB__LN2 + (lf + cm)), xf);
}

/* ------------------------------------------------------------------------
 * Branch-free selection: cb_blend(a, b, c) = c ? a : b, by bit masks.
 * gcc (default -ftrapping-math) will not if-convert a C conditional whose
 * arms or neighbours hold floating-point arithmetic, and then refuses to
 * vectorize the whole loop ("control flow in loop"); a mask blend is plain
 * integer arithmetic that it vectorizes. Both a and b are always computed.
 * ------------------------------------------------------------------------ */
static inline double cb_blend(double a, double b, int c)
{
    uint64_t ua, ub, m = (uint64_t)0 - (uint64_t)(c != 0), r;
    double d;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    r = (ua & m) | (ub & ~m);
    memcpy(&d, &r, sizeof d);
    return d;
}

static inline float cb_blendf(float a, float b, int c)
{
    uint32_t ua, ub, m = (uint32_t)0 - (uint32_t)(c != 0), r;
    float d;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    r = (ua & m) | (ub & ~m);
    memcpy(&d, &r, sizeof d);
    return d;
}

#endif /* CB_VMATH_H */
