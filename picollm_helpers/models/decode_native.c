/* One greedy/sampled decode step of picollm_helpers' TransformerModel at batch 1, in one call.

   The same computation as fast_step_one in decode.py (and the readable model.step), written out:
   embedding, then per block RMSNorm, q/k/v, rope, the KV-cache write, attention over the filled
   positions, the output projection, RMSNorm, the MLP with exact GELU, the residual adds; the final
   norm; the logits. decode_native.py builds this file with the system's C compiler and explains
   why it exists: at batch 1 a token's arithmetic is small and reading the weights is what it should
   cost, but the ~50 torch operations of decode.py's eager step each pay a fixed cost (Python, the
   dispatcher, a fork and join of the thread pool), and together they cost about half as much again
   as the reading. One call runs one OpenMP parallel region per token, the threads meeting at four
   barriers per block.

   Work split over the threads: attention by heads (each thread computes the q, k, v of its own
   heads, so no barrier sits between the qkv product and attention); every other product by rows of
   its weight, each output a dot product of one contiguous weight row with a vector (the layout in
   which the weights are read fastest). Norms need the whole vector: each thread computes them
   itself, into its own scratch, rather than waiting for one thread to do it. An output layer far
   beyond the caches is prefetched with the non-temporal hint (rows_dot's stream), so that reading it
   does not evict the blocks' weights, which the next token reads again.

   Weights are the model's own tensors (nn.Linear's (out, in), row-major), read in place: nothing is
   copied per generation. All float32. */

#include <math.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int E, H, hd, F, V, L, max_len;  /* embedding, heads, head size, MLP hidden, vocabulary, blocks, window */
    int post_norm;                   /* 1: norm(x + f(x)) blocks; 0: x + f(norm(x)) */
    int stream_head;                 /* 1: the output layer is streamed past the caches (rows_dot) */
    float eps, embed_mult;
    const float *wte;                /* (V, E) */
    const float *pos_table;          /* (max_len, E) added to the embedding, or NULL */
    const float *rope_cos, *rope_sin;/* (max_len, hd/2) each, or NULL */
    const float *const *norm1, *const *qkv, *const *proj, *const *norm2, *const *fc, *const *mproj; /* per block */
    float *const *k_cache, *const *v_cache;  /* per block, (H, max_len, hd) */
    const float *norm_f;             /* (E,) or NULL (post-norm models end in their last block's norm) */
    const float *head;               /* (V, E) */
    float *x, *y, *hid, *logits;     /* shared scratch: (E,), (E,), (F,), (V,) */
    float *priv;                     /* per thread: PRIV_FLOATS(m) floats */
} pico_model;

/* Each thread's scratch: the residual it adds to (E), a norm's output (E), one head's q, k, v (3 hd),
   its attention scores (max_len). */
#define PRIV_FLOATS(m) (2 * (size_t)(m)->E + 3 * (size_t)(m)->hd + (size_t)(m)->max_len)

/* s[r] = dot(w row r, v) for 4 consecutive rows: four independent sums keep the FMA units busy. */
static inline void dot4(const float *w, const float *v, int K, float *s)
{
    const float *w0 = w, *w1 = w + K, *w2 = w + 2 * (size_t)K, *w3 = w + 3 * (size_t)K;
    float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
#pragma omp simd reduction(+:a0, a1, a2, a3)
    for (int k = 0; k < K; k++) {
        a0 += w0[k] * v[k]; a1 += w1[k] * v[k]; a2 += w2[k] * v[k]; a3 += w3[k] * v[k];
    }
    s[0] = a0; s[1] = a1; s[2] = a2; s[3] = a3;
}

static inline float dot(const float *w, const float *v, int K)
{
    float a = 0.f;
#pragma omp simd reduction(+:a)
    for (int k = 0; k < K; k++) a += w[k] * v[k];
    return a;
}

/* out[r] = dot(W[r], v) (+ add[r] when add) for rows r in [r0, r1) of W (N, K).

   stream: W is far larger than the caches and read once per token (the output layer at a GPT-2
   vocabulary). Its rows are then prefetched STREAM_AHEAD rows ahead with the non-temporal hint, which
   keeps them from evicting what the next token reads again: the blocks' weights stay cached from one
   token to the next, and so does part of W itself. */
#define STREAM_AHEAD 16
static void rows_dot(const float *W, const float *v, int K, int r0, int r1, float *out, const float *add,
                     int stream)
{
    int r = r0;
    float s[4];
    for (; r + 4 <= r1; r += 4) {
        if (stream && r + 4 + STREAM_AHEAD <= r1)
            for (int j = 0; j < 4 * K; j += 16)  /* one 64-byte line per 16 floats */
                __builtin_prefetch(W + (size_t)(r + STREAM_AHEAD) * K + j, 0, 0);
        dot4(W + (size_t)r * K, v, K, s);
        for (int i = 0; i < 4; i++) out[r + i] = add ? add[r + i] + s[i] : s[i];
    }
    for (; r < r1; r++) {
        float d = dot(W + (size_t)r * K, v, K);
        out[r] = add ? add[r] + d : d;
    }
}

/* out = x / sqrt(mean(x^2) + eps) * w, or a copy of x when w is NULL. */
static void rms_norm(const float *x, const float *w, int E, float eps, float *out)
{
    if (!w) {
        for (int e = 0; e < E; e++) out[e] = x[e];
        return;
    }
    float ss = 0.f;
    for (int e = 0; e < E; e++) ss += x[e] * x[e];
    float r = 1.0f / sqrtf(ss / E + eps);
    for (int e = 0; e < E; e++) out[e] = x[e] * r * w[e];
}

/* [first, last) of n items for thread t of nt, in contiguous runs (multiples of `align` but the last). */
static void share(int n, int t, int nt, int align, int *first, int *last)
{
    int units = (n + align - 1) / align;
    int per = units / nt, extra = units % nt;
    int u0 = t * per + (t < extra ? t : extra);
    int u1 = u0 + per + (t < extra ? 1 : 0);
    *first = u0 * align < n ? u0 * align : n;
    *last = u1 * align < n ? u1 * align : n;
}

/* Heads [h0, h1): q, k, v from `in`, rope, the cache write at pos, attention over positions 0..pos,
   each head's output into y[h * hd, (h + 1) * hd). */
static void attend(const pico_model *m, int layer, const float *in, int pos, int h0, int h1,
                   float *qkv, float *scores)
{
    const int E = m->E, hd = m->hd, half = hd / 2, n = pos + 1;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int h = h0; h < h1; h++) {
        float *q = qkv, *k = qkv + hd, *v = qkv + 2 * hd;
        rows_dot(m->qkv[layer] + (size_t)h * hd * E, in, E, 0, hd, q, NULL, 0);
        rows_dot(m->qkv[layer] + ((size_t)E + h * hd) * E, in, E, 0, hd, k, NULL, 0);
        rows_dot(m->qkv[layer] + ((size_t)2 * E + h * hd) * E, in, E, 0, hd, v, NULL, 0);
        if (m->rope_cos) {  /* pairs (i, i + hd/2), as positions.apply_rope */
            const float *c = m->rope_cos + (size_t)pos * half, *s = m->rope_sin + (size_t)pos * half;
            for (int i = 0; i < half; i++) {
                float q1 = q[i], q2 = q[i + half], k1 = k[i], k2 = k[i + half];
                q[i] = q1 * c[i] - q2 * s[i]; q[i + half] = q1 * s[i] + q2 * c[i];
                k[i] = k1 * c[i] - k2 * s[i]; k[i + half] = k1 * s[i] + k2 * c[i];
            }
        }
        float *K = m->k_cache[layer] + (size_t)h * m->max_len * hd;
        float *Vc = m->v_cache[layer] + (size_t)h * m->max_len * hd;
        for (int i = 0; i < hd; i++) { K[(size_t)pos * hd + i] = k[i]; Vc[(size_t)pos * hd + i] = v[i]; }
        float mx = -INFINITY;
        for (int t = 0; t < n; t++) {
            scores[t] = dot(K + (size_t)t * hd, q, hd) * scale;
            if (scores[t] > mx) mx = scores[t];
        }
        float sum = 0.f;
        for (int t = 0; t < n; t++) { scores[t] = expf(scores[t] - mx); sum += scores[t]; }
        float *out = m->y + (size_t)h * hd;
        for (int i = 0; i < hd; i++) out[i] = 0.f;
        for (int t = 0; t < n; t++) {
            const float p = scores[t] / sum, *vt = Vc + (size_t)t * hd;
#pragma omp simd
            for (int i = 0; i < hd; i++) out[i] += p * vt[i];
        }
    }
}

static inline float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

#ifdef _OPENMP
#define BARRIER _Pragma("omp barrier")
#else
#define BARRIER
#endif

/* The step: token at position pos (< max_len) -> m->logits (V,). threads: how many to run on. */
int pico_step(const pico_model *m, long token, int pos, int threads)
{
    const int E = m->E;
    if (token < 0 || token >= m->V || pos < 0 || pos >= m->max_len) return 1;
    for (int e = 0; e < E; e++) {
        float v = m->wte[(size_t)token * E + e];
        if (m->embed_mult != 1.0f) v *= m->embed_mult;
        if (m->pos_table) v += m->pos_table[(size_t)pos * E + e];
        m->x[e] = v;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int t = 0, nt = 1;
        (void)threads;
#endif
        float *base = m->priv + t * PRIV_FLOATS(m);
        float *in = base + E, *qkv = in + E, *scores = qkv + 3 * m->hd;
        int h0, h1, e0, e1, f0, f1, v0, v1;
        share(m->H, t, nt, 1, &h0, &h1);
        share(E, t, nt, 4, &e0, &e1);
        share(m->F, t, nt, 4, &f0, &f1);
        share(m->V, t, nt, 4, &v0, &v1);
        const float *pending = NULL;  /* a post-norm block's last norm, applied where x is next read */
        for (int l = 0; l < m->L; l++) {
            /* attention: base is the residual the projection adds to, in what the heads read */
            rms_norm(m->x, pending, E, m->eps, base);
            if (m->post_norm) attend(m, l, base, pos, h0, h1, qkv, scores);
            else { rms_norm(base, m->norm1[l], E, m->eps, in); attend(m, l, in, pos, h0, h1, qkv, scores); }
            BARRIER  /* y complete; every thread has read x */
            rows_dot(m->proj[l], m->y, E, e0, e1, m->x, base, 0);
            BARRIER  /* x = base + attention */
            /* MLP */
            if (m->post_norm) { rms_norm(m->x, m->norm1[l], E, m->eps, base); rms_norm(base, NULL, E, m->eps, in); }
            else { rms_norm(m->x, NULL, E, m->eps, base); rms_norm(base, m->norm2[l], E, m->eps, in); }
            rows_dot(m->fc[l], in, E, f0, f1, m->hid, NULL, 0);
            for (int f = f0; f < f1; f++) m->hid[f] = gelu(m->hid[f]);
            BARRIER  /* hid complete; every thread has read x */
            rows_dot(m->mproj[l], m->hid, m->F, e0, e1, m->x, base, 0);
            BARRIER  /* x = base + mlp */
            pending = m->post_norm ? m->norm2[l] : NULL;
        }
        rms_norm(m->x, pending, E, m->eps, base);
        rms_norm(base, m->norm_f, E, m->eps, in);
        rows_dot(m->head, in, E, v0, v1, m->logits, NULL, m->stream_head);
    }
    return 0;
}

/* How many floats of scratch each thread needs (m->priv holds threads times this). */
size_t pico_priv_floats(const pico_model *m)
{
    return PRIV_FLOATS(m);
}

/* 1 when built with OpenMP (the step can run on several threads), else 0. */
int pico_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
