/* Native kernels for the kit's decode step on a CPU (sinternal_lib/native_kernels.py builds and loads them).

   Why: after packed matmuls, a batch-32 decode step of SmolLM2 in bf16 spent ~25 ms of ~65 ms outside the
   matmuls: SDPA for one query token (~0.4-0.5 ms a call, its per-(row, head) overhead) and ~25 small eager ops per
   layer (norms, rotary, SiLU, residual adds) at a few microseconds of dispatch each. These kernels do that work in
   three calls per layer (figures: docs/LOG.md, 2026-12-07, session 17).

   Each kernel exists for bf16 (`_bf16`) and fp32 (`_f32`) tensors and computes in fp32. The bf16 versions round
   where the eager ops round (after the residual add, after the normalized product, after each rotary product),
   but reductions and exponentials are summed in another order than torch's, so outputs differ from the eager
   step by about one unit in the last place: the decode loop uses them for sampling only (same distribution),
   never for greedy decoding, whose outputs stay bit for bit those of the model's forward.

   Built with the machine's C compiler at first use (`cc -O3 -march=native -fopenmp`); OpenMP threads come from
   the libgomp torch has already loaded, so torch.set_num_threads applies here too. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

#define MAXC 16 /* head_dim <= 256, in chunks of 16 */
#define MAXG 16 /* query heads per key-value head */
#define INLINE static inline __attribute__((always_inline))
#define PAR_MIN 8192 /* elements from which an elementwise kernel splits its rows across threads */

INLINE float bf2f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

INLINE uint16_t f2bf(float f) { /* round to nearest even, as torch's conversion */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* element i of a bf16 (bf = 1) or fp32 tensor, as fp32; store with rounding; round as a tensor of that dtype */
INLINE float ld(const void *p, long i, int bf) { return bf ? bf2f(((const uint16_t *)p)[i]) : ((const float *)p)[i]; }
INLINE void st(void *p, long i, float v, int bf) {
    if (bf) ((uint16_t *)p)[i] = f2bf(v); else ((float *)p)[i] = v;
}
INLINE float rnd(float v, int bf) { return bf ? bf2f(f2bf(v)) : v; }

INLINE v16f ld16(const void *p, long i, int bf) {
    v16f f;
    if (bf) {
        v16h h; memcpy(&h, (const uint16_t *)p + i, 32);
        v16u u = __builtin_convertvector(h, v16u) << 16;
        memcpy(&f, &u, 64);
    } else {
        memcpy(&f, (const float *)p + i, 64);
    }
    return f;
}

INLINE float hsum(v16f v) { /* halves added pairwise; memcpy of halves, not a shuffle builtin (GCC < 12 has none) */
    v8f lo, hi;
    memcpy(&lo, &v, 32); memcpy(&hi, (const char *)&v + 32, 32);
    v8f a = lo + hi;
    v4f c, d;
    memcpy(&c, &a, 16); memcpy(&d, (const char *)&a + 16, 16);
    v4f b = c + d;
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* exp(x) as 2^n * p(r), |r| <= ln2 / 2, degree-7 Taylor: relative error ~1e-7, vectorizable (no libm call) */
INLINE float fexp(float x) {
    x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
    float n = (x * 1.44269504f + 12582912.f) - 12582912.f; /* round to nearest without a libm call */
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.f / 5040;
    p = p * r + 1.f / 720; p = p * r + 1.f / 120; p = p * r + 1.f / 24; p = p * r + 1.f / 6; p = p * r + 0.5f;
    p = p * r + 1.f; p = p * r + 1.f;
    int32_t e = ((int32_t)n + 127) << 23; float s; memcpy(&s, &e, 4);
    return p * s;
}

/* Attention for one query token per row. q: row b at q + b * sqb, its heads [KVH][G][D] contiguous (the G query
   heads of a key-value head side by side); k, v: [B, KVH, T, D] at element strides sb, sh, st (D contiguous);
   mask [B, T] (0 = padding); out [B, KVH * G * D] contiguous. One task per (row, key-value head): its keys and
   values are read once for all G query heads. s: scratch of G * T floats. */
INLINE void attn_task(const void *q, const void *k, const void *v, const uint8_t *mask, void *out, int task,
                      int KVH, int G, const int D, int T, long sqb, long sb, long sh, long st_, float scale, float *s,
                      const int bf) {
    const int C = D / 16, es = bf ? 2 : 4;
    int b = task / KVH, h = task % KVH;
    long qo = b * sqb + (long)h * G * D, ko = b * sb + h * sh;
    const uint8_t *m = mask + (long)b * T;
    for (int g = 0; g < G; g++) {
        v16f qr[MAXC];
        for (int c = 0; c < C; c++) qr[c] = ld16(q, qo + g * D + c * 16, bf) * scale;
        float *sg = s + (long)g * T;
        for (int t = 0; t < T; t++) {
            long ro = ko + t * st_;
            if (g == 0) /* the first pass brings the keys and values in: fetch 12 positions ahead */
                for (int c = 0; c < D; c += 64 / es) {
                    __builtin_prefetch((const char *)k + (ro + 12 * st_ + c) * es);
                    __builtin_prefetch((const char *)v + (ro + 12 * st_ + c) * es);
                }
            v16f a = qr[0] * ld16(k, ro, bf);
            for (int c = 1; c < C; c++) a += qr[c] * ld16(k, ro + c * 16, bf);
            sg[t] = hsum(a);
        }
        float mx = -INFINITY, sum = 0.f;
        for (int t = 0; t < T; t++) if (m[t] && sg[t] > mx) mx = sg[t];
        #pragma omp simd reduction(+:sum)
        for (int t = 0; t < T; t++) { float p = m[t] ? fexp(sg[t] - mx) : 0.f; sg[t] = p; sum += p; }
        v16f acc[MAXC];
        for (int c = 0; c < C; c++) acc[c] = (v16f){0};
        for (int t = 0; t < T; t++) {
            float p = sg[t];
            long ro = ko + t * st_;
            for (int c = 0; c < C; c++) acc[c] += p * ld16(v, ro + c * 16, bf);
        }
        float r = sum > 0.f ? 1.f / sum : 0.f; /* a row with every position masked: zeros, not NaN */
        long oo = ((long)b * KVH + h) * G * D + (long)g * D;
        for (int c = 0; c < C; c++)
            for (int i = 0; i < 16; i++) st(out, oo + c * 16 + i, acc[c][i] * r, bf);
    }
}

/* The loops below call each body with literal dtype and head_dim so that every copy is compiled for them (a value
   captured by an OpenMP region is a variable there, and a per-element dtype test stops vectorization). */
INLINE void attn(const void *q, const void *k, const void *v, const uint8_t *mask, void *out, int B, int KVH, int G,
                 int D, int T, long sqb, long sb, long sh, long st_, float scale, int bf) {
    #pragma omp parallel
    {
        float *s = malloc(sizeof(float) * (size_t)G * (size_t)(T > 0 ? T : 1));
        #pragma omp for schedule(static)
        for (int task = 0; task < B * KVH; task++) {
#define TASK(DD, BF) attn_task(q, k, v, mask, out, task, KVH, G, DD, T, sqb, sb, sh, st_, scale, s, BF)
            if (bf) { if (D == 64) TASK(64, 1); else if (D == 128) TASK(128, 1); else TASK(D, 1); }
            else { if (D == 64) TASK(64, 0); else if (D == 128) TASK(128, 0); else TASK(D, 0); }
#undef TASK
        }
        free(s);
    }
}

/* x += delta (rounded to x's dtype) where delta is given, then out = w * dtype(x * rsqrt(mean(x^2) + eps)):
   the decoder layer's residual add and transformers' LlamaRMSNorm. x, delta, out [B, H] contiguous, w [H]. */
INLINE void add_rms_row(void *x, const void *delta, const void *w, void *out, long o, int H, float eps,
                        const int bf) {
    float ss = 0.f;
    if (delta) {
        #pragma omp simd reduction(+:ss)
        for (int i = 0; i < H; i++) {
            float f = rnd(ld(x, o + i, bf) + ld(delta, o + i, bf), bf);
            st(x, o + i, f, bf);
            ss += f * f;
        }
    } else {
        #pragma omp simd reduction(+:ss)
        for (int i = 0; i < H; i++) { float f = ld(x, o + i, bf); ss += f * f; }
    }
    float r = 1.f / sqrtf(ss / (float)H + eps);
    #pragma omp simd
    for (int i = 0; i < H; i++) st(out, o + i, ld(w, i, bf) * rnd(ld(x, o + i, bf) * r, bf), bf);
}

INLINE void add_rms(void *x, const void *delta, const void *w, void *out, int B, int H, float eps, int bf) {
    #pragma omp parallel for schedule(static) if ((long)B * H >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        if (bf) add_rms_row(x, delta, w, out, (long)b * H, H, eps, 1);
        else add_rms_row(x, delta, w, out, (long)b * H, H, eps, 0);
    }
}

/* Rotary embedding in place on the first N heads of D of each row (row stride rs): x * cos + rotate_half(x) * sin,
   each product and the sum rounded to the dtype as the eager ops round them; cos, sin [B, D]. */
INLINE void rotary_row(void *x, const void *cos, const void *sin, int b, int N, int D, long rs, const int bf) {
    int half = D / 2;
    long co = (long)b * D;
    for (int n = 0; n < N; n++) {
        long o = b * rs + (long)n * D;
        float lo[256], hi[256]; /* the two halves before any is overwritten */
        for (int i = 0; i < half; i++) { lo[i] = ld(x, o + i, bf); hi[i] = ld(x, o + half + i, bf); }
        #pragma omp simd
        for (int i = 0; i < half; i++) {
            float c1 = ld(cos, co + i, bf), s1 = ld(sin, co + i, bf);
            float c2 = ld(cos, co + half + i, bf), s2 = ld(sin, co + half + i, bf);
            st(x, o + i, rnd(lo[i] * c1, bf) + rnd(-hi[i] * s1, bf), bf);
            st(x, o + half + i, rnd(hi[i] * c2, bf) + rnd(lo[i] * s2, bf), bf);
        }
    }
}

INLINE void rotary(void *x, const void *cos, const void *sin, int B, int N, int D, long rs, int bf) {
    #pragma omp parallel for schedule(static) if ((long)B * N * D >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        if (bf) rotary_row(x, cos, sin, b, N, D, rs, 1);
        else rotary_row(x, cos, sin, b, N, D, rs, 0);
    }
}

/* out = dtype(silu(gate)) * up for rows [gate (I) | up (I)] (the fused gate/up projection); out [B, I] */
INLINE void silu_mul_row(const void *gu, void *out, long g, long o, int I, const int bf) {
    #pragma omp simd
    for (int i = 0; i < I; i++) {
        float x = ld(gu, g + i, bf);
        st(out, o + i, rnd(x / (1.f + fexp(-x)), bf) * ld(gu, g + I + i, bf), bf);
    }
}

INLINE void silu_mul(const void *gu, void *out, int B, int I, int bf) {
    #pragma omp parallel for schedule(static) if ((long)B * I >= PAR_MIN)
    for (int b = 0; b < B; b++) {
        if (bf) silu_mul_row(gu, out, (long)b * 2 * I, (long)b * I, I, 1);
        else silu_mul_row(gu, out, (long)b * 2 * I, (long)b * I, I, 0);
    }
}

/* Exported entry points. */
void attn_bf16(const void *q, const void *k, const void *v, const uint8_t *mask, void *out, int B, int KVH, int G,
               int D, int T, long sqb, long sb, long sh, long st_, float scale) {
    attn(q, k, v, mask, out, B, KVH, G, D, T, sqb, sb, sh, st_, scale, 1);
}
void attn_f32(const void *q, const void *k, const void *v, const uint8_t *mask, void *out, int B, int KVH, int G,
              int D, int T, long sqb, long sb, long sh, long st_, float scale) {
    attn(q, k, v, mask, out, B, KVH, G, D, T, sqb, sb, sh, st_, scale, 0);
}

void add_rms_bf16(void *x, const void *d, const void *w, void *o, int B, int H, float eps) {
    add_rms(x, d, w, o, B, H, eps, 1);
}
void add_rms_f32(void *x, const void *d, const void *w, void *o, int B, int H, float eps) {
    add_rms(x, d, w, o, B, H, eps, 0);
}
void rotary_bf16(void *x, const void *c, const void *s, int B, int N, int D, long rs) {
    rotary(x, c, s, B, N, D, rs, 1);
}
void rotary_f32(void *x, const void *c, const void *s, int B, int N, int D, long rs) {
    rotary(x, c, s, B, N, D, rs, 0);
}
void silu_mul_bf16(const void *gu, void *o, int B, int I) { silu_mul(gu, o, B, I, 1); }
void silu_mul_f32(const void *gu, void *o, int B, int I) { silu_mul(gu, o, B, I, 0); }

/* The version the Python side checks after loading (a stale build in the cache is rebuilt, not trusted). */
int kernels_version(void) { return 1; }
