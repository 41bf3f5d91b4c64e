/* Reference for the two-thread bound of a minibatch epoch: the epoch's GEMMs
   and its Adam update, and nothing else, split over T threads the way a
   row-parallel kernel must split them (each thread its own rows and
   buffers, a shared parameter vector, one barrier after the rows' GEMMs and
   one after the update), or run whole by one thread. T1 / T2 is what two
   threads reach with the same work and the same synchronization on this
   machine; benchmarks/_thread_report.py compiles this file with the system C
   compiler and calls it through ctypes with SciPy's dgemm. */
#include <math.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

typedef void (*gemm_t)(const char*, const char*, const int*, const int*, const int*,
                       const double*, const double*, const int*, const double*,
                       const int*, const double*, double*, const int*);

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void mm(gemm_t g, char ta, char tb, int m, int n, int k, const double* a,
               int lda, const double* b, int ldb, double* c, int ldc) {
    const double one = 1.0, zero = 0.0;
    g(&ta, &tb, &m, &n, &k, &one, a, &lda, b, &ldb, &zero, c, &ldc);
}

/* r rows of an (n0, h, o) network, row-major by operand swap as in the
   kernels: forward (Z1 = X W1, Z2 = A1 W2), the hidden deltas (D1 = D2 W2^T)
   and the gradient (G2 = A1^T D2, G1 = X^T D1); a ReLU and a scaling stand
   in for the activation and the loss so that the values stay finite. */
static void rows(gemm_t g, int r, int n0, int h, int o, const double* X,
                 const double* th, double* Z1, double* Z2, double* D1, double* G) {
    const double* W1 = th;
    const double* W2 = th + (long)n0 * h;
    long i;
    mm(g, 'N', 'N', h, r, n0, W1, h, X, n0, Z1, h);
    for (i = 0; i < (long)r * h; i++)
        Z1[i] = Z1[i] > 0 ? Z1[i] : 0;
    mm(g, 'N', 'N', o, r, h, W2, o, Z1, h, Z2, o);
    for (i = 0; i < (long)r * o; i++)
        Z2[i] *= 1e-3;
    mm(g, 'T', 'N', h, r, o, W2, o, Z2, o, D1, h);
    mm(g, 'N', 'T', o, h, r, Z2, o, Z1, h, G + (long)n0 * h, o);
    mm(g, 'N', 'T', h, n0, r, D1, h, X, n0, G, h);
}

/* Adam on n parameters whose gradient is g (+ g2, the other block's). */
static void adam(double* th, const double* g, const double* g2, double* m,
                 double* v, long n) {
    long j;
    for (j = 0; j < n; j++) {
        double gj = g2 ? g[j] + g2[j] : g[j];
        m[j] = 0.9 * m[j] + 0.1 * gj;
        v[j] = 0.999 * v[j] + 0.001 * gj * gj;
        th[j] -= 1e-7 * m[j] / (sqrt(v[j]) + 1e-8);
    }
}

/* Seconds for `epochs` epochs over n_rows rows in batches of `batch`, each
   batch cut into `blocks` row blocks (1 or 2; the gradient is the blocks'
   sum) run by `threads` threads (at most `blocks`); -1 for other counts or
   without the memory. */
double lockstep_epochs(void* gemm, int threads, int blocks, int epochs, int n_rows,
                       int batch, int n0, int h, int o) {
    gemm_t g = (gemm_t)gemm;
    long P = (long)n0 * h + (long)h * o, j;
    long rmax = (batch + blocks - 1) / blocks, per = rmax * (n0 + 2 * h + o);
    double* G = calloc(2 * P, sizeof(double));
    double* th = calloc(3 * P, sizeof(double));   /* parameters, Adam's m and v */
    double* buf = calloc(threads * per, sizeof(double));
    double t0, dt;
    if (threads < 1 || blocks < threads || blocks > 2 || !G || !th || !buf) {
        free(G); free(th); free(buf);
        return -1;
    }
    for (j = 0; j < P; j++)
        th[j] = 1e-3 * (j % 7);
    for (j = 0; j < threads * per; j++)
        buf[j] = (j % 17) / 16.0;
    t0 = seconds();
    #pragma omp parallel num_threads(threads)
    {
        int me = omp_get_thread_num(), n = omp_get_num_threads(), e, start;
        double* X = buf + me * per;
        double *Z1 = X + rmax * n0, *D1 = Z1 + rmax * h, *Z2 = D1 + rmax * h;
        long q0 = P * me / n, q1 = P * (me + 1) / n;
        for (e = 0; e < epochs; e++) {
            for (start = 0; start < n_rows; start += batch) {
                int nb = start + batch <= n_rows ? batch : n_rows - start, j;
                for (j = me; j < blocks; j += n)
                    rows(g, nb * (j + 1) / blocks - nb * j / blocks, n0, h, o, X, th,
                         Z1, Z2, D1, G + j * P);
                #pragma omp barrier
                adam(th + q0, G + q0, blocks > 1 ? G + P + q0 : NULL, th + P + q0,
                     th + 2 * P + q0, q1 - q0);
                #pragma omp barrier
            }
        }
    }
    dt = seconds() - t0;
    free(G); free(th); free(buf);
    return dt;
}
