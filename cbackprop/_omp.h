/* OpenMP's runtime queries when the extension is built with OpenMP, and their
   one-thread answers otherwise (the parallel loops then run serially). */
#ifndef CBACKPROP_OMP_H
#define CBACKPROP_OMP_H
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_max_threads(void) { return 1; }
#endif
#endif
