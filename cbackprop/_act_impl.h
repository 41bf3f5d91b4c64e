/*
 * _act_impl.h -- body of _act.h, included once per floating type with
 * CB_T (the type), CB_S(name) (name suffix) and the math functions defined;
 * it undefines them at its end. Not a standalone header.
 */
#define CB_INL static inline __attribute__((always_inline))

CB_INL CB_T CB_S(cb_sigmoid)(CB_T z)
{
    CB_T e = CB_EXP(-CB_FABS(z));
    return CB_BLEND(1.0 / (1.0 + e), e / (1.0 + e), z >= 0.0);
}

/* 1 - sigmoid(z) without cancellation. */
CB_INL CB_T CB_S(cb_sigmoid_neg)(CB_T z)
{
    CB_T e = CB_EXP(-CB_FABS(z));
    return CB_BLEND(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
}

/* tanh|z| = -expm1(-2|z|) / (2 + expm1(-2|z|)): exact for tiny z too. */
CB_INL CB_T CB_S(cb_tanh)(CB_T z)
{
    CB_T t = CB_EXPM1(-2.0 * CB_FABS(z));
    return CB_COPYSIGN(-t / (2.0 + t), z);
}

CB_INL CB_T CB_S(cb_softplus)(CB_T z)
{
    return CB_BLEND(z, (CB_T)0, z > 0.0) + CB_LOG1P(CB_EXP(-CB_FABS(z)));
}

/* tanh(softplus(z)): with n = e^z it is n(n+2) / (n(n+2) + 2); written in
   m = e^{-|z|} on each side so that nothing overflows or cancels. */
CB_INL CB_T CB_S(cb_tsp)(CB_T z)
{
    CB_T m = CB_EXP(-CB_FABS(z));
    CB_T q = m * (m + 2.0);
    return CB_BLEND((1.0 + 2.0 * m) / ((1.0 + 2.0 * m) + 2.0 * m * m), q / (q + 2.0), z > 0.0);
}

/* 1 - tanh(softplus(z)), without cancellation. */
CB_INL CB_T CB_S(cb_tsp_c)(CB_T z)
{
    CB_T m = CB_EXP(-CB_FABS(z));
    CB_T q = m * (m + 2.0);
    return CB_BLEND(2.0 * m * m / ((1.0 + 2.0 * m) + 2.0 * m * m), 2.0 / (q + 2.0), z > 0.0);
}

CB_INL CB_T CB_S(cb_f)(int act, CB_T z)
{
    switch (act) {
    case CB_LOGISTIC: return CB_S(cb_sigmoid)(z);
    case CB_TANH: return CB_S(cb_tanh)(z);
    /* A select between values (maxpd): no arithmetic follows it where the
       loops use it, and the mask blend's int -> 64-bit widening costs more
       than the whole pass on SSE2. */
    case CB_RELU: return z > 0 ? z : 0;
    case CB_SOFTPLUS: return CB_S(cb_softplus)(z);
    case CB_SWISH: return z * CB_S(cb_sigmoid)(z);
    case CB_MISH: return z * CB_S(cb_tsp)(z);
    default: return z;
    }
}

/* f'(z) given a = f(z) (reused where it makes f' cheaper). */
CB_INL CB_T CB_S(cb_df)(int act, CB_T z, CB_T a)
{
    CB_T s, c;
    switch (act) {
    case CB_LOGISTIC: return a * (1.0 - a);
    case CB_TANH: return 1.0 - a * a;
    case CB_RELU: return CB_BLEND((CB_T)1, (CB_T)0, z > 0.0);
    case CB_SOFTPLUS: return CB_S(cb_sigmoid)(z);
    case CB_SWISH:
        s = CB_S(cb_sigmoid)(z);
        return s * (1.0 + z * CB_S(cb_sigmoid_neg)(z));
    case CB_MISH:
        c = CB_S(cb_tsp_c)(z);
        return CB_S(cb_tsp)(z) + z * c * (2.0 - c) * CB_S(cb_sigmoid)(z);
    default: return 1.0;
    }
}

/* f''(z) given a = f(z). */
CB_INL CB_T CB_S(cb_d2f)(int act, CB_T z, CB_T a)
{
    CB_T s, sn, c;
    switch (act) {
    case CB_LOGISTIC: return a * (1.0 - a) * (1.0 - 2.0 * a);
    case CB_TANH: return -2.0 * a * (1.0 - a * a);
    case CB_SOFTPLUS: return CB_S(cb_sigmoid)(z) * CB_S(cb_sigmoid_neg)(z);
    case CB_SWISH:
        s = CB_S(cb_sigmoid)(z);
        sn = CB_S(cb_sigmoid_neg)(z);
        return s * sn * (2.0 + z * (sn - s));
    case CB_MISH:
        /* f = z T, T = tanh(softplus z), T' = (1 - T^2) s:
           f'' = (1 - T^2) s (2 + z (1 - s - 2 T s)), with 1 - T^2 = c (2 - c). */
        c = CB_S(cb_tsp_c)(z);
        s = CB_S(cb_sigmoid)(z);
        sn = CB_S(cb_sigmoid_neg)(z);
        return c * (2.0 - c) * s * (2.0 + z * (sn - 2.0 * CB_S(cb_tsp)(z) * s));
    default: return 0.0;
    }
}

/* d * f'(z), given a = f(z). */
CB_INL CB_T CB_S(cb_times_df)(int act, CB_T d, CB_T z, CB_T a)
{
    /* relu: a select of the loaded d (cmppd + andpd); the product with a
       blended 0/1 cost 2.5x as much on SSE2. */
    if (act == CB_RELU)
        return z > 0 ? d : 0;
    return d * CB_S(cb_df)(act, z, a);
}

/* Z += b (per row); A = f(Z). Z, A row-major (rows, cols). */
CB_CLONES static void CB_S(cb_act_forward)(int act, CB_T *Z, CB_T *A, const CB_T *b,
                                          ptrdiff_t rows, ptrdiff_t cols)
{
#define CB_LOOP(ACT)                                                      \
    for (ptrdiff_t i = 0; i < rows; i++) {                                \
        CB_T *z = Z + i * cols, *a = A + i * cols;                        \
        for (ptrdiff_t j = 0; j < cols; j++) {                            \
            z[j] = z[j] + b[j];                                           \
            a[j] = CB_S(cb_f)(ACT, z[j]);                                 \
        }                                                                 \
    }
    CB_ACT_SWITCH(act, CB_LOOP)
#undef CB_LOOP
}

/* D *= f'(Z) for each of the k stacked blocks of n entries of D. */
CB_CLONES static void CB_S(cb_act_backward)(int act, const CB_T *Z, const CB_T *A,
                                           CB_T *D, ptrdiff_t n, ptrdiff_t k)
{
    if (act == CB_IDENTITY)
        return;
#define CB_LOOP(ACT)                                                      \
    for (ptrdiff_t r = 0; r < k; r++) {                                   \
        CB_T *d = D + r * n;                                              \
        for (ptrdiff_t j = 0; j < n; j++)                                 \
            d[j] = CB_S(cb_times_df)(ACT, d[j], Z[j], A[j]);              \
    }
    CB_ACT_SWITCH(act, CB_LOOP)
#undef CB_LOOP
}

/* D *= f'(Z) for one (rows, cols) block, and out = D's column sums. */
CB_CLONES static void CB_S(cb_act_backward_sum)(int act, const CB_T *Z, const CB_T *A,
                                               CB_T *D, ptrdiff_t rows, ptrdiff_t cols,
                                               CB_T *out)
{
    for (ptrdiff_t j = 0; j < cols; j++)
        out[j] = 0;
#define CB_LOOP(ACT)                                                      \
    for (ptrdiff_t i = 0; i < rows; i++) {                                \
        CB_T *d = D + i * cols;                                           \
        const CB_T *z = Z + i * cols, *a = A + i * cols;                  \
        for (ptrdiff_t j = 0; j < cols; j++) {                            \
            CB_T t = CB_S(cb_times_df)(ACT, d[j], z[j], a[j]);            \
            d[j] = t;                                                     \
            out[j] += t;                                                  \
        }                                                                 \
    }
    CB_ACT_SWITCH(act, CB_LOOP)
#undef CB_LOOP
}

/* D1 = f'(Z), D2 = f''(Z) elementwise over n entries. */
CB_CLONES static void CB_S(cb_act_derivs)(int act, const CB_T *Z, const CB_T *A,
                                         CB_T *D1, CB_T *D2, ptrdiff_t n)
{
#define CB_LOOP(ACT)                                                      \
    for (ptrdiff_t j = 0; j < n; j++) {                                   \
        D1[j] = CB_S(cb_df)(ACT, Z[j], A[j]);                             \
        D2[j] = CB_S(cb_d2f)(ACT, Z[j], A[j]);                            \
    }
    CB_ACT_SWITCH(act, CB_LOOP)
#undef CB_LOOP
}

#undef CB_INL
#undef CB_T
#undef CB_S
#undef CB_EXP
#undef CB_EXPM1
#undef CB_LOG1P
#undef CB_BLEND
#undef CB_FABS
#undef CB_COPYSIGN
