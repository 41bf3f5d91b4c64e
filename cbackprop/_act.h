/*
 * _act.h -- activation point functions and the loops over them, compiled
 * once per instruction set and chosen at load time.
 *
 * Why C: these loops are the elementwise work around the GEMMs, and their
 * speed depends on vector width (tanh over 200x100 doubles: 122 us with the
 * baseline SSE2 code Python's flags give, 62 us with AVX2, 38 us with
 * AVX-512F on the project's VM).  GCC's target_clones compiles each loop
 * for those targets and an ifunc resolver picks one when the module loads,
 * so the wheel stays portable.  Cython cannot put attributes on functions,
 * so the loops and the point functions they inline live here.
 *
 * Every clone computes the same IEEE operations in the same order (no FMA
 * contraction: setup.py passes -ffp-contract=off), so results do not depend
 * on the machine.  Point functions follow _vmath.h's rules: no C
 * conditionals where arithmetic follows (gcc would not vectorize), selects
 * by bit-mask blend or copysign; every exponential is exp(-|z|) <= 1.
 * Double literals make float32 intermediates evaluate in double, one
 * rounding when stored (as the Cython code this replaced did).
 */
#ifndef CB_ACT_H
#define CB_ACT_H

#include <stddef.h>
#include <math.h>
#include "_vmath.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && defined(__has_attribute)
#  if __has_attribute(target_clones)
#    define CB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#  endif
#endif
#ifndef CB_CLONES
#  define CB_CLONES
#endif

/* Values of the Cython enum Activation (_activations.pxd). */
#define CB_IDENTITY 0
#define CB_LOGISTIC 1
#define CB_TANH 2
#define CB_RELU 3
#define CB_SOFTPLUS 4
#define CB_SWISH 5
#define CB_MISH 6

/* One loop per activation, the activation a constant in each copy. */
#define CB_ACT_SWITCH(act, LOOP)                                          \
    switch (act) {                                                        \
    case CB_LOGISTIC: LOOP(CB_LOGISTIC); break;                           \
    case CB_TANH: LOOP(CB_TANH); break;                                   \
    case CB_RELU: LOOP(CB_RELU); break;                                   \
    case CB_SOFTPLUS: LOOP(CB_SOFTPLUS); break;                           \
    case CB_SWISH: LOOP(CB_SWISH); break;                                 \
    case CB_MISH: LOOP(CB_MISH); break;                                   \
    default: LOOP(CB_IDENTITY); break;                                    \
    }

#define CB_T double
#define CB_S(name) name##_d
#define CB_EXP cb_exp
#define CB_EXPM1 cb_expm1
#define CB_LOG1P cb_log1p
#define CB_BLEND cb_blend
#define CB_FABS fabs
#define CB_COPYSIGN copysign
#include "_act_impl.h"

#define CB_T float
#define CB_S(name) name##_f
#define CB_EXP cb_expf
#define CB_EXPM1 cb_expm1f
#define CB_LOG1P cb_log1pf
#define CB_BLEND cb_blendf
#define CB_FABS fabsf
#define CB_COPYSIGN copysignf
#include "_act_impl.h"

#endif /* CB_ACT_H */
