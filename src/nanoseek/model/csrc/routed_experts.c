/* nanoseek: the routed experts of a DeepSeekMoE layer for a few tokens (the decode step), float32, CPU.

   out[n] = sum_k w[n,k] * FFN_{idx[n,k]}(x[n]),  FFN_e(x) = (silu(x Wg_e) * (x Wu_e)) Wd_e
   (DeepSeek-V3 report, eq. 12, routed part), with the weights as ``RoutedExperts`` stores them:
   w_gate_up [E, D, 2I] (gate columns then up columns, input-major) and w_down [E, I, D].

   Why it exists: with ~1.5 tokens per expert (16 tokens, top-6 of 64), each expert's product is a
   few-row GEMM that reads its whole weight for almost no arithmetic, so the step is bound by memory
   bandwidth. One call streams each hit expert's rows front to back (with software prefetch) once
   per token row, the second and later rows of an expert reading it from L2, and covers the whole
   layer in one OpenMP region of four loops: no sort, gather or scatter issued from Python.
   Built and loaded by ``nanoseek.model.cpu_kernels``, which checks the shapes before calling. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

#define VEC 16            /* floats per vector */
#define CHUNK (16 * VEC)  /* output columns per task: 16 vector accumulators */
#define PREFETCH_ROWS 8   /* weight rows prefetched ahead of the one being read */

/* y[0 : NV*16] = x[0 : K] @ W[0 : K, 0 : NV*16], W's rows ld floats apart. */
#define DEFINE_ROWVEC(NV)                                                                     \
    static void rowvec_##NV(const float *x, int64_t K, const float *W, int64_t ld, float *y) { \
        v16 acc[NV];                                                                          \
        for (int v = 0; v < NV; v++) acc[v] = (v16){0};                                       \
        for (int64_t k = 0; k < K; k++) {                                                     \
            const float *w = W + k * ld;                                                      \
            const char *ahead = (const char *)(w + PREFETCH_ROWS * ld);                      \
            for (int q = 0; q < NV; q++) __builtin_prefetch(ahead + 64 * q);                  \
            const float s = x[k];                                                             \
            for (int v = 0; v < NV; v++) {                                                    \
                v16 b;                                                                        \
                memcpy(&b, w + VEC * v, sizeof b);                                            \
                acc[v] += s * b;                                                              \
            }                                                                                 \
        }                                                                                     \
        memcpy(y, acc, sizeof acc);                                                           \
    }

DEFINE_ROWVEC(1) DEFINE_ROWVEC(2) DEFINE_ROWVEC(3) DEFINE_ROWVEC(4) DEFINE_ROWVEC(5) DEFINE_ROWVEC(6)
DEFINE_ROWVEC(7) DEFINE_ROWVEC(8) DEFINE_ROWVEC(9) DEFINE_ROWVEC(10) DEFINE_ROWVEC(11) DEFINE_ROWVEC(12)
DEFINE_ROWVEC(13) DEFINE_ROWVEC(14) DEFINE_ROWVEC(15) DEFINE_ROWVEC(16)

typedef void (*rowvec_fn)(const float *, int64_t, const float *, int64_t, float *);
static const rowvec_fn ROWVEC[17] = {0, rowvec_1, rowvec_2, rowvec_3, rowvec_4, rowvec_5, rowvec_6,
                                     rowvec_7, rowvec_8, rowvec_9, rowvec_10, rowvec_11, rowvec_12,
                                     rowvec_13, rowvec_14, rowvec_15, rowvec_16};

/* y[r] = x[rows[r]] @ W[:, c0 : c0 + width] for the n rows of one expert; width <= CHUNK, % 16 == 0 */
static void rows_times(const float *x, const int64_t *rows, int64_t n, int64_t K, const float *W, int64_t ld,
                       int64_t c0, int64_t width, float *y, int64_t y_ld) {
    const rowvec_fn f = ROWVEC[width / VEC];
    for (int64_t r = 0; r < n; r++) f(x + rows[r] * K, K, W + c0, ld, y + r * y_ld + c0);
}

static inline float silu(float v) { return v / (1.0f + expf(-v)); }

/* Returns 0, or -1 (a shape this kernel does not take), -2 (an expert index outside [0, E)),
   -3 (out of memory). x [N, D], idx [N, K] int64, w [N, K], w_gate_up [E, D, 2I], w_down [E, I, D],
   out [N, D]; all contiguous. D and I must be multiples of 16. threads: OpenMP threads to use. */
int nanoseek_routed_experts(const float *x, const int64_t *idx, const float *w, int64_t N, int64_t K,
                            int64_t E, int64_t D, int64_t I, const float *w_gate_up, const float *w_down,
                            float *out, int threads) {
    if (N <= 0 || K <= 0 || E <= 0 || D <= 0 || I <= 0 || D % VEC || I % VEC) return -1;
    const int64_t A = N * K;  /* (token, slot) assignments */
    for (int64_t a = 0; a < A; a++)
        if (idx[a] < 0 || idx[a] >= E) return -2;
    int64_t *start = calloc(E + 1, sizeof *start), *fill = calloc(E, sizeof *fill);
    int64_t *row = malloc(A * sizeof *row), *slot_of = malloc(A * sizeof *slot_of);
    float *h = malloc(A * 2 * I * sizeof *h), *g = malloc(A * I * sizeof *g), *y = malloc(A * D * sizeof *y);
    int rc = 0;
    if (!start || !fill || !row || !slot_of || !h || !g || !y) {
        rc = -3;
        goto done;
    }
    /* assignments sorted by expert (stable): expert e owns sorted slots start[e] .. start[e+1] */
    for (int64_t a = 0; a < A; a++) start[idx[a] + 1]++;
    for (int64_t e = 0; e < E; e++) start[e + 1] += start[e];
    for (int64_t a = 0; a < A; a++) {
        const int64_t p = start[idx[a]] + fill[idx[a]]++;
        row[p] = a / K;
        slot_of[a] = p;
    }
    const int64_t n_gu = (2 * I + CHUNK - 1) / CHUNK, n_d = (D + CHUNK - 1) / CHUNK;
#pragma omp parallel num_threads(threads)
    {
        /* 1. h = x W_gate_up for every assignment, one task per (expert, column chunk) */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < E * n_gu; t++) {
            const int64_t e = t / n_gu, c0 = (t % n_gu) * CHUNK, p0 = start[e], n = start[e + 1] - p0;
            const int64_t width = 2 * I - c0 < CHUNK ? 2 * I - c0 : CHUNK;
            if (n) rows_times(x, row + p0, n, D, w_gate_up + e * D * 2 * I, 2 * I, c0, width, h + p0 * 2 * I, 2 * I);
        }
        /* 2. g = silu(gate) * up */
#pragma omp for schedule(static)
        for (int64_t p = 0; p < A; p++)
            for (int64_t j = 0; j < I; j++) g[p * I + j] = silu(h[p * 2 * I + j]) * h[p * 2 * I + I + j];
        /* 3. y = g W_down, one task per (expert, column chunk); the rows of g are in sorted order */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < E * n_d; t++) {
            const int64_t e = t / n_d, c0 = (t % n_d) * CHUNK, p0 = start[e], n = start[e + 1] - p0;
            const int64_t width = D - c0 < CHUNK ? D - c0 : CHUNK;
            for (int64_t r = 0; r < n; r++)
                ROWVEC[width / VEC](g + (p0 + r) * I, I, w_down + e * I * D + c0, D, y + (p0 + r) * D + c0);
        }
        /* 4. out[n] = sum_k w[n,k] y[slot of (n,k)], slots in order k = 0 .. K-1 */
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            float *o = out + n * D;
            memset(o, 0, D * sizeof *o);
            for (int64_t k = 0; k < K; k++) {
                const float s = w[n * K + k];
                const float *yk = y + slot_of[n * K + k] * D;
                for (int64_t d = 0; d < D; d++) o[d] += s * yk[d];
            }
        }
    }
done:
    free(start), free(fill), free(row), free(slot_of), free(h), free(g), free(y);
    return rc;
}
