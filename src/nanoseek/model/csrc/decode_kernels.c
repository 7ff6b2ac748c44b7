/* nanoseek: C kernels for the CPU decode step, float32. Built and loaded by
   ``nanoseek.model.cpu_kernels``, which checks shapes and dtypes before calling.

   1. nanoseek_routed_experts: the routed experts of a DeepSeekMoE layer (DeepSeek-V3 report,
      eq. 12, routed part), with the weights as ``RoutedExperts`` stores them: w_gate_up [E, D, 2I]
      (gate columns then up columns, input-major) and w_down [E, I, D]:
          out[n] = sum_k w[n,k] * FFN_{idx[n,k]}(x[n]),  FFN_e(x) = (silu(x Wg_e) * (x Wu_e)) Wd_e
      With ~1.5 tokens per expert (16 tokens, top-6 of 64), each expert's product is a few-row
      GEMM that reads its whole weight for almost no arithmetic, so the step is bound by memory
      bandwidth. One call streams each hit expert's weights front to back with software prefetch
      (a lone row in one pass; several rows in register blocks of 3, the later blocks reading the
      weights from L2) and covers the whole layer in one OpenMP region of five loops: no sort,
      gather or scatter issued from Python.

   2. nanoseek_mla_attention: absorbed Multi-head Latent Attention for one new token per row over
      the latent cache (DeepSeek-V2 sec. 2.1.3, V3 sec. 2.1.1), from the query after q_b_proj to
      the heads' outputs before o_proj:
          q^C_h W^UK_h -> scores over [c^KV ; k^R] -> softmax -> sum_s p_hs c^KV_s -> (.) W^UV_h
      in one call per layer: the two per-head products run one task per head over all rows (the
      head's weight shared by them), the rest one task per row, where the heads are the vector
      lanes of the score loop (16 per AVX-512 register), so each cached key is read once per row.

   3. nanoseek_rms_norm: the decode step's RMSNorms, one call each instead of the five kernels of
      torch's composite rms_norm (5 vs 14 us for [16, 512]). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));
/* unaligned access to float arrays as vectors (loads and stores through these keep accumulators in
   registers; memcpy into a vector array made gcc spill them to the stack at every step) */
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
static inline v16 load(const float *p) { return *(const v16u *)p; }
static inline void store(float *p, v16 v) { *(v16u *)p = v; }

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
            for (int v = 0; v < NV; v++) acc[v] += s * load(w + VEC * v);                   \
        }                                                                                     \
        for (int v = 0; v < NV; v++) store(y + VEC * v, acc[v]);                              \
    }

DEFINE_ROWVEC(1) DEFINE_ROWVEC(2) DEFINE_ROWVEC(3) DEFINE_ROWVEC(4) DEFINE_ROWVEC(5) DEFINE_ROWVEC(6)
DEFINE_ROWVEC(7) DEFINE_ROWVEC(8) DEFINE_ROWVEC(9) DEFINE_ROWVEC(10) DEFINE_ROWVEC(11) DEFINE_ROWVEC(12)
DEFINE_ROWVEC(13) DEFINE_ROWVEC(14) DEFINE_ROWVEC(15) DEFINE_ROWVEC(16)

typedef void (*rowvec_fn)(const float *, int64_t, const float *, int64_t, float *);
static const rowvec_fn ROWVEC[17] = {0, rowvec_1, rowvec_2, rowvec_3, rowvec_4, rowvec_5, rowvec_6,
                                     rowvec_7, rowvec_8, rowvec_9, rowvec_10, rowvec_11, rowvec_12,
                                     rowvec_13, rowvec_14, rowvec_15, rowvec_16};

/* y[r, 0:16NV] = x[r, 0:K] @ W[0:K, 0:16NV] for R rows (x rows ldx apart, y rows ldy apart): each row
   of W is loaded once for the R rows. With pf > 0, W's row k + pf is prefetched while row k is read. */
#define DEFINE_ROWS(R, NV)                                                                             \
    static void rows_##R##_##NV(const float *x, int64_t ldx, int64_t K, const float *W, int64_t ldw, \
                                float *y, int64_t ldy, int64_t pf) {                                 \
        v16 acc[R][NV];                                                                              \
        for (int r = 0; r < R; r++)                                                                  \
            for (int v = 0; v < NV; v++) acc[r][v] = (v16){0};                                       \
        for (int64_t k = 0; k < K; k++) {                                                            \
            if (pf)                                                                                  \
                for (int v = 0; v < NV; v++) __builtin_prefetch(W + (k + pf) * ldw + VEC * v);       \
            v16 b[NV];                                                                               \
            for (int v = 0; v < NV; v++) b[v] = load(W + k * ldw + VEC * v);                         \
            for (int r = 0; r < R; r++) {                                                            \
                const float s = x[r * ldx + k];                                                      \
                for (int v = 0; v < NV; v++) acc[r][v] += s * b[v];                                  \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < R; r++)                                                                  \
            for (int v = 0; v < NV; v++) store(y + r * ldy + VEC * v, acc[r][v]);                    \
    }
#define DEFINE_ROWS_NV(NV) DEFINE_ROWS(1, NV) DEFINE_ROWS(2, NV) DEFINE_ROWS(3, NV) DEFINE_ROWS(4, NV)
DEFINE_ROWS_NV(1) DEFINE_ROWS_NV(2) DEFINE_ROWS_NV(3) DEFINE_ROWS_NV(4)
DEFINE_ROWS_NV(5) DEFINE_ROWS_NV(6) DEFINE_ROWS_NV(7) DEFINE_ROWS_NV(8)

typedef void (*rows_fn)(const float *, int64_t, int64_t, const float *, int64_t, float *, int64_t, int64_t);
#define ROW_FNS(NV) {rows_1_##NV, rows_2_##NV, rows_3_##NV, rows_4_##NV}
static const rows_fn ROWS[8][4] = {ROW_FNS(1), ROW_FNS(2), ROW_FNS(3), ROW_FNS(4),
                                   ROW_FNS(5), ROW_FNS(6), ROW_FNS(7), ROW_FNS(8)};

/* y[M, N] = x[M, K] @ W[K, N] (row strides ldx, ldw, ldy); N % 16 == 0. Small M: register blocks of
   up to 4 rows x 8 vectors, rows of W shared by the rows of a block. */
static void gemm_small(const float *x, int64_t ldx, int64_t M, int64_t K, const float *W, int64_t ldw,
                       int64_t N, float *y, int64_t ldy) {
    for (int64_t c0 = 0; c0 < N; c0 += 8 * VEC) {
        const int nv = (int)((N - c0) / VEC < 8 ? (N - c0) / VEC : 8);
        const int rmax = 24 / nv < 4 ? 24 / nv : 4;
        for (int64_t r0 = 0; r0 < M; r0 += rmax) {
            const int nr = (int)(M - r0 < rmax ? M - r0 : rmax);
            ROWS[nv - 1][nr - 1](x + r0 * ldx, ldx, K, W + c0, ldw, y + r0 * ldy + c0, ldy, 0);
        }
    }
}

/* y[r, c0 : c0 + width] = x[r] @ W[:, c0 : c0 + width] for the n rows of one expert (x rows K apart, y
   rows y_ld apart); width <= CHUNK, % 16 == 0. One row streams W with 16 accumulators; more rows go
   in blocks of 3 x 128 columns, so each row of W is loaded once per block (the first block streams W
   from memory with prefetch, the later ones find it in L2). */
static void expert_rows(const float *x, int64_t n, int64_t K, const float *W, int64_t ld, int64_t c0,
                        int64_t width, float *y, int64_t y_ld) {
    if (n == 1) {
        ROWVEC[width / VEC](x, K, W + c0, ld, y + c0);
        return;
    }
    for (int64_t s0 = c0; s0 < c0 + width; s0 += 8 * VEC) {
        const int nv = (int)((c0 + width - s0) / VEC < 8 ? (c0 + width - s0) / VEC : 8);
        for (int64_t r0 = 0; r0 < n; r0 += 3) {
            const int nr = (int)(n - r0 < 3 ? n - r0 : 3);
            ROWS[nv - 1][nr - 1](x + r0 * K, K, K, W + s0, ld, y + r0 * y_ld + s0, y_ld, r0 == 0 ? PREFETCH_ROWS : 0);
        }
    }
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
    float *xs = malloc(A * D * sizeof *xs), *h = malloc(A * 2 * I * sizeof *h), *g = malloc(A * I * sizeof *g);
    float *y = malloc(A * D * sizeof *y);
    int rc = 0;
    if (!start || !fill || !row || !slot_of || !xs || !h || !g || !y) {
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
        /* 0. the token rows in sorted order */
#pragma omp for schedule(static)
        for (int64_t p = 0; p < A; p++) memcpy(xs + p * D, x + row[p] * D, D * sizeof *xs);
        /* 1. h = x W_gate_up for every assignment, one task per (expert, column chunk) */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < E * n_gu; t++) {
            const int64_t e = t / n_gu, c0 = (t % n_gu) * CHUNK, p0 = start[e], n = start[e + 1] - p0;
            const int64_t width = 2 * I - c0 < CHUNK ? 2 * I - c0 : CHUNK;
            if (n) expert_rows(xs + p0 * D, n, D, w_gate_up + e * D * 2 * I, 2 * I, c0, width, h + p0 * 2 * I, 2 * I);
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
            if (n) expert_rows(g + p0 * I, n, I, w_down + e * I * D, D, c0, width, y + p0 * D, D);
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
    free(start), free(fill), free(row), free(slot_of), free(xs), free(h), free(g), free(y);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
   2. Absorbed MLA attention for one new token per row. */

typedef int32_t vi16 __attribute__((vector_size(64)));

static inline v16 splat(float f) { return (v16){f, f, f, f, f, f, f, f, f, f, f, f, f, f, f, f}; }
static inline v16 blend(vi16 take_b, v16 a, v16 b) { return (v16)(((vi16)a & ~take_b) | ((vi16)b & take_b)); }
static inline v16 vmax(v16 a, v16 b) { return blend(b > a, a, b); }

/* exp(x) per lane, Cephes' expf polynomial (within 2 ulp of expf); lanes below -87.3 (e.g. the -inf
   of a masked key) give exactly 0, as torch's softmax does. */
static inline v16 vexp(v16 x) {
    const vi16 under = x < splat(-87.3365447f);
    x = vmax(x, splat(-87.3365447f));
    x = blend(x > splat(88.7228391f), x, splat(88.7228391f));
    const v16 fx = x * splat(1.44269504088896341f) + splat(0.5f);
    vi16 n = __builtin_convertvector(fx, vi16);
    n += (vi16)(__builtin_convertvector(n, v16) > fx);  /* truncation -> floor (the mask is -1) */
    const v16 nf = __builtin_convertvector(n, v16);
    x = x - nf * splat(0.693359375f) - nf * splat(-2.12194440e-4f);
    v16 y = splat(1.9875691500E-4f);
    y = y * x + splat(1.3981999507E-3f);
    y = y * x + splat(8.3334519073E-3f);
    y = y * x + splat(4.1665795894E-2f);
    y = y * x + splat(1.6666665459E-1f);
    y = y * x + splat(5.0000001201E-1f);
    y = y * x * x + x + splat(1.0f);
    y = y * (v16)((n + 127) << 23);
    return (v16)((vi16)y & ~under);
}

/* sc[s, 0:16NH] = keys[s, 0:Dk] . qT[0:Dk, 0:16NH] for s in [0, S): the heads are the vector lanes,
   each key element is broadcast once; 8/NH keys at a time keep 8 independent accumulator chains. */
#define DEFINE_SCORES(NH)                                                                              \
    static void scores_##NH(const float *qT, const float *keys, int64_t ldk, int64_t Dk, int64_t S,   \
                            float *sc) {                                                             \
        enum { SB = 8 / NH > 0 ? 8 / NH : 1, H = 16 * NH };                                          \
        int64_t s0 = 0;                                                                              \
        for (; s0 + SB <= S; s0 += SB) {                                                             \
            v16 acc[SB][NH];                                                                         \
            for (int j = 0; j < SB; j++)                                                             \
                for (int v = 0; v < NH; v++) acc[j][v] = (v16){0};                                   \
            for (int64_t d = 0; d < Dk; d++) {                                                       \
                v16 q[NH];                                                                           \
                for (int v = 0; v < NH; v++) q[v] = load(qT + d * H + VEC * v);                      \
                for (int j = 0; j < SB; j++) {                                                       \
                    const float k = keys[(s0 + j) * ldk + d];                                        \
                    for (int v = 0; v < NH; v++) acc[j][v] += k * q[v];                              \
                }                                                                                    \
            }                                                                                        \
            for (int j = 0; j < SB; j++)                                                             \
                for (int v = 0; v < NH; v++) store(sc + (s0 + j) * H + VEC * v, acc[j][v]);          \
        }                                                                                            \
        for (; s0 < S; s0++) {                                                                       \
            v16 acc[NH];                                                                             \
            for (int v = 0; v < NH; v++) acc[v] = (v16){0};                                          \
            for (int64_t d = 0; d < Dk; d++) {                                                       \
                const float k = keys[s0 * ldk + d];                                                  \
                for (int v = 0; v < NH; v++) acc[v] += k * load(qT + d * H + VEC * v);               \
            }                                                                                        \
            for (int v = 0; v < NH; v++) store(sc + s0 * H + VEC * v, acc[v]);                       \
        }                                                                                            \
    }
DEFINE_SCORES(1) DEFINE_SCORES(2) DEFINE_SCORES(4) DEFINE_SCORES(8)

/* Returns 0, or -1 (a shape it does not take), -3 (out of memory).
   q [B, H, dn + dr] (q^C ; q^R before RoPE), rot [B, dr, dr] (q^R @ rot[b] applies RoPE), w_uk [H, dn, c],
   w_uv_t [H, c, dv], kv: the layer's cache buffer, row b at kv + b * ld_batch, S positions of c + dr
   floats ([c^KV ; k^R], the new token's included), bias [B, S] additive (0 or -inf), out [B, H * dv].
   Needs H in {16, 32, 64, 128} and c, dr, dv multiples of 16. */
int nanoseek_mla_attention(const float *q, const float *rot, const float *w_uk, const float *w_uv_t,
                           const float *kv, int64_t ld_batch, const float *bias, int64_t B, int64_t H,
                           int64_t dn, int64_t dr, int64_t c, int64_t dv, int64_t S, float scale, float *out,
                           int threads) {
    const int nh = (int)(H / VEC);
    if (B <= 0 || S <= 0 || H % VEC || !(nh == 1 || nh == 2 || nh == 4 || nh == 8) || c % VEC || dr % VEC
        || dv % VEC || dn <= 0)
        return -1;
    const int64_t Dk = c + dr, dq = dn + dr;
    float *qa = malloc(B * H * Dk * sizeof *qa), *ol = malloc(B * H * c * sizeof *ol);
    int rc = qa && ol ? 0 : -3;
    if (rc == 0) {
#pragma omp parallel num_threads(threads)
        {
            float *qT = malloc(Dk * H * sizeof *qT), *sc = malloc(S * H * sizeof *sc), *pT = malloc(H * S * sizeof *pT);
            if (!qT || !sc || !pT) {
#pragma omp atomic write
                rc = -3;
            }
            /* 1. q^C_h W^UK_h for every row, one task per head (its W^UK_h shared by the rows) */
#pragma omp for schedule(static)
            for (int64_t h = 0; h < H; h++)
                gemm_small(q + h * dq, H * dq, B, dn, w_uk + h * dn * c, c, c, qa + h * Dk, H * Dk);
            /* 2. per row: RoPE(q^R), scores over the cached keys, softmax, o^C_h = sum_s p_hs c^KV_s */
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                if (rc != 0) continue;
                const float *keys = kv + b * ld_batch, *bb = bias + b * S;
                float *qab = qa + b * H * Dk;
                gemm_small(q + b * H * dq + dn, dq, H, dr, rot + b * dr * dr, dr, dr, qab + c, Dk);
                for (int64_t h = 0; h < H; h++)  /* heads as lanes */
                    for (int64_t d = 0; d < Dk; d++) qT[d * H + h] = qab[h * Dk + d];
                switch (nh) {
                case 1: scores_1(qT, keys, Dk, Dk, S, sc); break;
                case 2: scores_2(qT, keys, Dk, Dk, S, sc); break;
                case 4: scores_4(qT, keys, Dk, Dk, S, sc); break;
                default: scores_8(qT, keys, Dk, Dk, S, sc); break;
                }
                for (int v = 0; v < nh; v++) {  /* softmax over s of scale * score + bias, per head */
                    v16 m = splat(-INFINITY), sum = (v16){0};
                    for (int64_t s = 0; s < S; s++) {
                        const v16 z = load(sc + s * H + VEC * v) * splat(scale) + splat(bb[s]);
                        store(sc + s * H + VEC * v, z);
                        m = vmax(m, z);
                    }
                    for (int64_t s = 0; s < S; s++) {
                        const v16 z = vexp(load(sc + s * H + VEC * v) - m);
                        sum += z;
                        store(sc + s * H + VEC * v, z);
                    }
                    const v16 inv = splat(1.0f) / sum;
                    for (int64_t s = 0; s < S; s++)
                        for (int l = 0; l < VEC; l++) pT[(VEC * v + l) * S + s] = sc[s * H + VEC * v + l] * inv[l];
                }
                gemm_small(pT, S, H, S, keys, Dk, c, ol + b * H * c, c);
            }
            /* 3. o_h = o^C_h W^UV_h for every row, one task per head */
#pragma omp for schedule(static)
            for (int64_t h = 0; h < H; h++)
                if (rc == 0) gemm_small(ol + h * c, H * c, B, c, w_uv_t + h * c * dv, dv, dv, out + h * dv, H * dv);
            free(qT), free(sc), free(pT);
        }
    }
    free(qa), free(ol);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
   3. RMSNorm of the decode step. */

/* y[m] = x[m] / sqrt(mean(x[m]^2) + eps) * w for M rows of D (x rows ldx apart, y contiguous), as
   RMSNorm in float32 (Zhang & Sennrich 2019). One thread: the rows are few and short. */
int nanoseek_rms_norm(const float *x, int64_t ldx, int64_t M, int64_t D, const float *w, float eps, float *y) {
    if (M <= 0 || D <= 0) return -1;
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        float *ym = y + m * D;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t d = 0; d < D; d++) ss += xm[d] * xm[d];
        const float r = 1.0f / sqrtf(ss / (float)D + eps);
#pragma omp simd
        for (int64_t d = 0; d < D; d++) ym[d] = xm[d] * r * w[d];
    }
    return 0;
}
