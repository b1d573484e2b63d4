/* dnn_c_lib: see dnn_c_lib.h. Loops keep ONNX's layout so the code reads like the operator's spec. */
#include "dnn_c_lib.h"

#include <math.h>
#include <string.h>

/* Output columns [lo, hi) whose input column ox * stride + off lies inside [0, width). */
static void valid_columns(int out_width, int width, int stride, int off, int *lo, int *hi)
{
    int a = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int b = width - 1 - off < 0 ? 0 : (width - 1 - off) / stride + 1;
    if (b > out_width)
        b = out_width;
    *lo = a;
    *hi = b < a ? a : b;
}

/* out[oy][ox] += wv * in[oy * sh - pt + ky * dh][ox * sw - pl + kx * dw] over the valid taps. */
static void conv_tap(const dnn_conv_t *p, const float *in, int ky, int kx, float wv, float *out)
{
    const int off = kx * p->dw - p->pl;
    int lo, hi, oy, ox;
    valid_columns(p->ow, p->w, p->sw, off, &lo, &hi);
    for (oy = 0; oy < p->oh; oy++) {
        const int iy = oy * p->sh - p->pt + ky * p->dh;
        const float *restrict row;
        float *restrict o;
        if (iy < 0 || iy >= p->h)
            continue;
        row = in + (size_t)iy * p->w;
        o = out + (size_t)oy * p->ow;
        if (p->sw == 1) {
            for (ox = lo; ox < hi; ox++)
                o[ox] += wv * row[ox + off];
        } else {
            for (ox = lo; ox < hi; ox++)
                o[ox] += wv * row[ox * p->sw + off];
        }
    }
}

static float bit_weight(const uint8_t *bits, size_t i, float alpha)
{
    return (bits[i >> 3] >> (i & 7)) & 1 ? alpha : -alpha;
}

static void conv(const dnn_conv_t *p, const float *x, const float *w, const uint8_t *bits,
                 const float *alpha, const float *bias, float *y)
{
    const int cg = p->c / p->group;
    const int mg = p->m / p->group;
    const size_t plane = (size_t)p->oh * p->ow;
    const size_t in_plane = (size_t)p->h * p->w;
    int m, c, ky, kx;
    size_t i;
    for (m = 0; m < p->m; m++) {
        float *out = y + (size_t)m * plane;
        const int g = m / mg;
        for (i = 0; i < plane; i++)
            out[i] = 0.0f;
        for (c = 0; c < cg; c++) {
            const float *in = x + (size_t)(g * cg + c) * in_plane;
            for (ky = 0; ky < p->kh; ky++) {
                for (kx = 0; kx < p->kw; kx++) {
                    const size_t wi = (((size_t)m * cg + c) * p->kh + ky) * p->kw + kx;
                    const float wv = w ? w[wi] : bit_weight(bits, wi, alpha[m]);
                    conv_tap(p, in, ky, kx, wv, out);
                }
            }
        }
        if (bias || p->relu) {
            const float b = bias ? bias[m] : 0.0f;
            for (i = 0; i < plane; i++) {
                const float v = out[i] + b;
                out[i] = p->relu && v < 0.0f ? 0.0f : v;
            }
        }
    }
}

void dnn_conv2d(const dnn_conv_t *p, const float *x, const float *w, const float *bias, float *y)
{
    conv(p, x, w, NULL, NULL, bias, y);
}

void dnn_conv2d_bits(const dnn_conv_t *p, const float *x, const uint8_t *bits, const float *alpha,
                     const float *bias, float *y)
{
    conv(p, x, NULL, bits, alpha, bias, y);
}

#define TILE 4 /* output pixels per tile (along a row) */

/*
 * Copies x into `padded`: every channel as an hp x wp plane with the padding (and the columns the
 * last tile of a row reaches past the output) as zeros, so the taps need no bounds checks.
 */
static void pad_input(const dnn_conv_t *p, const float *x, float *padded)
{
    const size_t plane = (size_t)p->hp * p->wp;
    int c, iy;
    for (c = 0; c < p->c; c++) {
        float *out = padded + (size_t)c * plane;
        const float *in = x + (size_t)c * p->h * p->w;
        memset(out, 0, sizeof(float) * plane);
        for (iy = 0; iy < p->h; iy++)
            memcpy(out + (size_t)(iy + p->pt) * p->wp + p->pl, in + (size_t)iy * p->w,
                   sizeof(float) * (size_t)p->w);
    }
}

#if defined(__GNUC__) && !defined(DNN_PORTABLE)
/* GCC and Clang: the 4 x 8 accumulators as vector registers (SSE on x86, NEON or VFP on ARM). */
typedef float v4f __attribute__((vector_size(16)));

static v4f load4(const float *v)
{
    v4f r;
    memcpy(&r, v, sizeof r);
    return r;
}

typedef int v4i __attribute__((vector_size(16)));

static v4f relu4(v4f a)
{
    const v4f zero = {0.0f, 0.0f, 0.0f, 0.0f};
    return (v4f)((v4i)a & (a > zero));
}

/*
 * acc[q][0..8) = sum over taps of x[q] * w[tap][0..8) (+ bias, then ReLU when the layer has them),
 * for one tile of 4 output pixels and one block of 8 output channels.
 */
static void tile_taps(const dnn_conv_t *p, const float *xg, const float *w, const float *bias,
                      int oy, int ox0, float acc[TILE][8])
{
    const int cg = p->c / p->group;
    const size_t plane = (size_t)p->hp * p->wp;
    const int sw = p->sw;
    v4f a0l = {0}, a0h = {0}, a1l = {0}, a1h = {0}, a2l = {0}, a2h = {0}, a3l = {0}, a3h = {0};
    int c, ky, kx;
    for (c = 0; c < cg; c++) {
        for (ky = 0; ky < p->kh; ky++) {
            const float *row =
                xg + (size_t)c * plane + (size_t)(oy * p->sh + ky * p->dh) * p->wp + ox0 * sw;
            const float *wv = w + ((size_t)c * p->kh + ky) * p->kw * 8;
            for (kx = 0; kx < p->kw; kx++, wv += 8) {
                const float *r = row + kx * p->dw;
                const v4f wl = load4(wv), wh = load4(wv + 4);
                const float x0 = r[0], x1 = r[sw], x2 = r[2 * sw], x3 = r[3 * sw];
                a0l += x0 * wl;
                a0h += x0 * wh;
                a1l += x1 * wl;
                a1h += x1 * wh;
                a2l += x2 * wl;
                a2h += x2 * wh;
                a3l += x3 * wl;
                a3h += x3 * wh;
            }
        }
    }
    if (bias) {
        const v4f bl = load4(bias), bh = load4(bias + 4);
        a0l += bl;
        a0h += bh;
        a1l += bl;
        a1h += bh;
        a2l += bl;
        a2h += bh;
        a3l += bl;
        a3h += bh;
    }
    if (p->relu) {
        a0l = relu4(a0l);
        a0h = relu4(a0h);
        a1l = relu4(a1l);
        a1h = relu4(a1h);
        a2l = relu4(a2l);
        a2h = relu4(a2h);
        a3l = relu4(a3l);
        a3h = relu4(a3h);
    }
    memcpy(acc[0], &a0l, 16);
    memcpy(acc[0] + 4, &a0h, 16);
    memcpy(acc[1], &a1l, 16);
    memcpy(acc[1] + 4, &a1h, 16);
    memcpy(acc[2], &a2l, 16);
    memcpy(acc[2] + 4, &a2h, 16);
    memcpy(acc[3], &a3l, 16);
    memcpy(acc[3] + 4, &a3h, 16);
}
#else
static void tile_taps(const dnn_conv_t *p, const float *xg, const float *w, const float *bias,
                      int oy, int ox0, float acc[TILE][8])
{
    const int cg = p->c / p->group;
    const size_t plane = (size_t)p->hp * p->wp;
    int c, ky, kx, q, j;
    for (q = 0; q < TILE; q++)
        for (j = 0; j < 8; j++)
            acc[q][j] = 0.0f;
    for (c = 0; c < cg; c++) {
        for (ky = 0; ky < p->kh; ky++) {
            const float *row =
                xg + (size_t)c * plane + (size_t)(oy * p->sh + ky * p->dh) * p->wp + ox0 * p->sw;
            for (kx = 0; kx < p->kw; kx++) {
                const float *wv = w + (((size_t)c * p->kh + ky) * p->kw + kx) * 8;
                for (q = 0; q < TILE; q++)
                    for (j = 0; j < 8; j++)
                        acc[q][j] += row[kx * p->dw + q * p->sw] * wv[j];
            }
        }
    }
    for (q = 0; q < TILE; q++) {
        for (j = 0; j < 8; j++) {
            const float v = bias ? acc[q][j] + bias[j] : acc[q][j];
            acc[q][j] = p->relu && v < 0.0f ? 0.0f : v;
        }
    }
}
#endif

static void conv_block8(const dnn_conv_t *p, const float *x, const float *weights,
                        const uint8_t *bits, const float *alpha, const float *bias, float *scratch,
                        float *padded, float *y)
{
    const int cg = p->c / p->group;
    const int mg = p->m / p->group;
    const size_t in_plane = (size_t)p->hp * p->wp;
    const size_t plane = (size_t)p->oh * p->ow;
    const size_t taps = (size_t)cg * p->kh * p->kw;
    int mb, oy, ox0, q, j;
    pad_input(p, x, padded);
    for (mb = 0; mb < p->m / 8; mb++) {
        const float *xg = padded + (size_t)(mb * 8 / mg) * cg * in_plane;
        const float *w = weights ? weights + (size_t)mb * taps * 8 : scratch;
        if (!weights) {
            /* This block's 8 x taps weights, decoded from their sign bits once. */
            const float *a = alpha + mb * 8;
            size_t t;
            for (t = 0; t < taps; t++) {
                const unsigned b = bits[(size_t)mb * taps + t];
                for (j = 0; j < 8; j++)
                    scratch[t * 8 + j] = (b >> j) & 1u ? a[j] : -a[j];
            }
        }
        for (oy = 0; oy < p->oh; oy++) {
            for (ox0 = 0; ox0 < p->ow; ox0 += TILE) {
                float acc[TILE][8];
                float *out = y + (size_t)mb * 8 * plane + (size_t)oy * p->ow + ox0;
                const int n = p->ow - ox0 < TILE ? p->ow - ox0 : TILE;
                tile_taps(p, xg, w, bias ? bias + mb * 8 : NULL, oy, ox0, acc);
                for (j = 0; j < 8; j++, out += plane) {
                    if (n == TILE) {
                        out[0] = acc[0][j];
                        out[1] = acc[1][j];
                        out[2] = acc[2][j];
                        out[3] = acc[3][j];
                    } else {
                        for (q = 0; q < n; q++)
                            out[q] = acc[q][j];
                    }
                }
            }
        }
    }
}

void dnn_conv2d_block8(const dnn_conv_t *p, const float *x, const float *w, const float *bias,
                       float *padded, float *y)
{
    conv_block8(p, x, w, NULL, NULL, bias, NULL, padded, y);
}

void dnn_conv2d_block8_bits(const dnn_conv_t *p, const float *x, const uint8_t *bits,
                            const float *alpha, const float *bias, float *scratch, float *padded,
                            float *y)
{
    conv_block8(p, x, NULL, bits, alpha, bias, scratch, padded, y);
}

/*
 * The row kernels: one output value per vector lane, the lanes along an output row. A lane's
 * arithmetic is the same whatever the vector's width (16 lanes with AVX-512, 8 with AVX, 4 with
 * SSE, NEON, or plain C under DNN_PORTABLE), so every build computes the same floats.
 */
#if defined(__GNUC__) && !defined(DNN_PORTABLE)
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline vf vload(const float *v)
{
    vf r;
    memcpy(&r, v, sizeof r);
    return r;
}

static inline void vstore(float *v, vf a)
{
    memcpy(v, &a, sizeof a);
}

static inline vf vsplat(float s)
{
#if LANES == 16
    const vf r = {s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#elif LANES == 8
    const vf r = {s, s, s, s, s, s, s, s};
#else
    const vf r = {s, s, s, s};
#endif
    return r;
}
static inline vf vadd(vf a, vf b)
{
    return a + b;
}

static inline vf vsub(vf a, vf b)
{
    return a - b;
}

static inline vf vmul(vf a, vf b)
{
    return a * b;
}

static inline vf vneg(vf a)
{
    return -a;
}

static inline float vlane(vf a, int i)
{
    return a[i];
}

/* b > a ? b : a, lane by lane (max2's rule). */
static inline vf vmax(vf a, vf b)
{
    const vi m = b > a;
    return (vf)(((vi)b & m) | ((vi)a & ~m));
}

/* a < 0 ? 0 : a, lane by lane (the scalar ReLU's rule, -0 and NaN kept). */
static inline vf vrelu(vf a)
{
    const vf zero = {0};
    return (vf)((vi)a & ~(a < zero));
}
#else
#define LANES 4
typedef struct {
    float f[LANES];
} vf;

static vf vload(const float *v)
{
    vf r;
    memcpy(r.f, v, sizeof r.f);
    return r;
}

static void vstore(float *v, vf a)
{
    memcpy(v, a.f, sizeof a.f);
}

static vf vsplat(float s)
{
    vf r;
    int i;
    for (i = 0; i < LANES; i++)
        r.f[i] = s;
    return r;
}

static vf vadd(vf a, vf b)
{
    int i;
    for (i = 0; i < LANES; i++)
        a.f[i] += b.f[i];
    return a;
}

static vf vsub(vf a, vf b)
{
    int i;
    for (i = 0; i < LANES; i++)
        a.f[i] -= b.f[i];
    return a;
}

static vf vmul(vf a, vf b)
{
    int i;
    for (i = 0; i < LANES; i++)
        a.f[i] *= b.f[i];
    return a;
}

static vf vneg(vf a)
{
    int i;
    for (i = 0; i < LANES; i++)
        a.f[i] = -a.f[i];
    return a;
}

static float vlane(vf a, int i)
{
    return a.f[i];
}

static vf vmax(vf a, vf b)
{
    int i;
    for (i = 0; i < LANES; i++)
        a.f[i] = b.f[i] > a.f[i] ? b.f[i] : a.f[i];
    return a;
}

static vf vrelu(vf a)
{
    int i;
    for (i = 0; i < LANES; i++)
        a.f[i] = a.f[i] < 0.0f ? 0.0f : a.f[i];
    return a;
}
#endif

#if LANES > DNN_MAX_LANES
#error "dnn_c_lib: the padded buffers leave DNN_MAX_LANES floats for the last row's vector"
#endif

static inline vf vzero(void)
{
    return vsplat(0.0f);
}

/*
 * The first vector of an output row starts at 0, the next LANES further on, and the last one ends
 * at the row's end (overlapping the one before: those pixels are computed twice, alike), so every
 * store is a whole vector; a row narrower than a vector stores its n pixels one by one.
 */
static int next_tile(int ox0, int ow)
{
    if (ox0 + LANES >= ow)
        return ow;
    return ox0 + 2 * LANES <= ow ? ox0 + LANES : ow - LANES;
}

/*
 * Output pixels [ox0, ox0 + n) of `count` channels, planes `plane` apart; `at` is the pixels'
 * offset in their plane. Where a whole vector still ends inside the plane it is stored whole:
 * the lanes past the row land on pixels the kernel writes later.
 */
static void store_lanes(const vf *v, int count, float *out, size_t plane, size_t at, int n)
{
    const int whole = n == LANES || at + LANES <= plane;
    int j, i;
    for (j = 0; j < count; j++, out += plane) {
        if (whole) {
            vstore(out, v[j]);
        } else {
            for (i = 0; i < n; i++)
                out[i] = vlane(v[j], i);
        }
    }
}

/* acc[j] = acc[j] + bias[j] (bias may be NULL), then ReLU when asked. */
static void finish_lanes(vf *acc, int count, const float *bias, int relu)
{
    int j;
    for (j = 0; j < count; j++) {
        if (bias)
            acc[j] = vadd(acc[j], vsplat(bias[j]));
        if (relu)
            acc[j] = vrelu(acc[j]);
    }
}

#define LOOKUP_GROUPS 8     /* groups of 4 taps whose signed sums are held at once */
#define LOOKUP_CHANNELS 32  /* output channels accumulated at once */

static void window_max(const dnn_pool_t *p, const float *column, float *o);

/*
 * Where a row kernel's output goes: straight into y, or (a max pooling fused after it, the
 * pooled layout in y) each pooling window's rows reduced as they are computed, in the pooling's
 * order (down the window's rows, then across), into `rows` (count x (ow + DNN_MAX_LANES)
 * floats) and from there across the windows' columns into y.
 */
typedef struct {
    const dnn_conv_t *p;
    const dnn_pool_t *pool;
    float *rows;
} row_sink;

/*
 * Computes output rows oy and, when `two`, oy + 1 at pixels ox0 .. for the kernel's channels:
 * acc[j] for row oy, acc[LOOKUP_CHANNELS + j] for row oy + 1.
 */
typedef void (*row_tile_fn)(const void *kernel, int oy, int two, int ox0, vf *acc);

/* Runs `tile` over the output rows and their vectors for `count` channels from `first`. */
static void run_rows(const row_sink *s, const void *kernel, row_tile_fn tile, int first,
                     int count, float *y)
{
    const dnn_conv_t *p = s->p;
    int oy, ox0, r, j;
    vf acc[2 * LOOKUP_CHANNELS], best[LOOKUP_CHANNELS];
    if (!s->pool) {
        const size_t plane = (size_t)p->oh * p->ow;
        for (oy = 0; oy < p->oh; oy += 2) {
            const int two = oy + 1 < p->oh;
            for (ox0 = 0; ox0 < p->ow; ox0 = next_tile(ox0, p->ow)) {
                const int n = p->ow - ox0 < LANES ? p->ow - ox0 : LANES;
                const size_t at = (size_t)oy * p->ow + ox0;
                tile(kernel, oy, two, ox0, acc);
                store_lanes(acc, count, y + (size_t)first * plane + at, plane, at, n);
                if (two)
                    store_lanes(acc + LOOKUP_CHANNELS, count,
                                y + (size_t)first * plane + at + p->ow, plane, at + p->ow, n);
            }
        }
    } else {
        const dnn_pool_t *q = s->pool;
        const size_t stride = (size_t)p->ow + DNN_MAX_LANES;
        const size_t plane = (size_t)q->oh * q->ow;
        int py;
        for (py = 0; py < q->oh; py++) {
            for (ox0 = 0; ox0 < p->ow; ox0 = next_tile(ox0, p->ow)) {
                /* Down the window's rows in order, two at a time. */
                tile(kernel, py * q->sh, q->kh > 1, ox0, acc);
                for (j = 0; j < count; j++)
                    best[j] = q->kh > 1 ? vmax(acc[j], acc[LOOKUP_CHANNELS + j]) : acc[j];
                for (r = 2; r < q->kh; r += 2) {
                    const int two = r + 1 < q->kh;
                    tile(kernel, py * q->sh + r, two, ox0, acc);
                    for (j = 0; j < count; j++) {
                        best[j] = vmax(best[j], acc[j]);
                        if (two)
                            best[j] = vmax(best[j], acc[LOOKUP_CHANNELS + j]);
                    }
                }
                for (j = 0; j < count; j++)
                    vstore(s->rows + (size_t)j * stride + ox0, best[j]);
            }
            for (j = 0; j < count; j++)
                window_max(q, s->rows + (size_t)j * stride,
                           y + (size_t)(first + j) * plane + (size_t)py * q->ow);
        }
    }
}

typedef struct {
    const dnn_conv_t *p;
    const float *xg; /* the padded input of the block's group */
    const float *w;  /* the block's weights, [taps][8] */
    const float *bias;
} float_rows;

/* The 8 output channels of one block at output pixels (oy, ox0 ..), + bias, ReLU. */
static void float_row(const void *kernel, int oy, int ox0, vf *acc)
{
    const float_rows *k = (const float_rows *)kernel;
    const dnn_conv_t *p = k->p;
    const size_t in_plane = (size_t)p->hp * p->wp;
    const int cg = p->c / p->group;
    const float *wv = k->w;
    int c, ky, kx, j;
    vf a[8];
    for (j = 0; j < 8; j++)
        a[j] = vzero();
    for (c = 0; c < cg; c++) {
        for (ky = 0; ky < p->kh; ky++) {
            const float *row =
                k->xg + (size_t)c * in_plane + (size_t)(oy * p->sh + ky * p->dh) * p->wp + ox0;
            for (kx = 0; kx < p->kw; kx++, wv += 8) {
                const vf xv = vload(row + kx * p->dw);
                for (j = 0; j < 8; j++)
                    a[j] = vadd(a[j], vmul(xv, vsplat(wv[j])));
            }
        }
    }
    for (j = 0; j < 8; j++)
        acc[j] = a[j];
    finish_lanes(acc, 8, k->bias, p->relu);
}

static void float_rows_tile(const void *kernel, int oy, int two, int ox0, vf *acc)
{
    float_row(kernel, oy, ox0, acc);
    if (two)
        float_row(kernel, oy + 1, ox0, acc + LOOKUP_CHANNELS);
}

static void conv_rows(const dnn_conv_t *p, const dnn_pool_t *pool, const float *x,
                      const float *w, const float *bias, float *padded, float *rows, float *y)
{
    const int cg = p->c / p->group;
    const int mg = p->m / p->group;
    const size_t taps = (size_t)cg * p->kh * p->kw;
    const row_sink sink = {p, pool, rows};
    int mb;
    pad_input(p, x, padded);
    for (mb = 0; mb < p->m / 8; mb++) {
        float_rows k;
        k.p = p;
        k.xg = padded + (size_t)(mb * 8 / mg) * cg * p->hp * p->wp;
        k.w = w + (size_t)mb * taps * 8;
        k.bias = bias ? bias + mb * 8 : NULL;
        run_rows(&sink, &k, float_rows_tile, mb * 8, 8, y);
    }
}

void dnn_conv2d_rows(const dnn_conv_t *p, const float *x, const float *w, const float *bias,
                     float *padded, float *y)
{
    conv_rows(p, NULL, x, w, bias, padded, NULL, y);
}

void dnn_conv2d_rows_maxpool(const dnn_conv_t *p, const dnn_pool_t *pool, const float *x,
                             const float *w, const float *bias, float *padded, float *rows,
                             float *y)
{
    conv_rows(p, pool, x, w, bias, padded, rows, y);
}

/*
 * The 16 signed sums of 4 taps' inputs: t[i] = (s0 x0 + s1 x1) + (s2 x2 + s3 x3) with s_k = +1
 * where bit k of i is set, else -1. Each pair is one rounded addition (negation is exact).
 */
static void signed_sums(const vf x[4], vf t[16])
{
    const vf p01 = vadd(x[0], x[1]), d01 = vsub(x[0], x[1]);
    const vf p23 = vadd(x[2], x[3]), d23 = vsub(x[2], x[3]);
    const vf lo[4] = {vneg(p01), d01, vneg(d01), p01};
    const vf hi[4] = {vneg(p23), d23, vneg(d23), p23};
    int a, b;
    for (b = 0; b < 4; b++)
        for (a = 0; a < 4; a++)
            t[b * 4 + a] = vadd(lo[a], hi[b]);
}

typedef struct {
    const dnn_conv_t *p;
    const float *xg;       /* the padded input of the channels' group */
    const uint16_t *picks; /* the first channel's picks */
    const float *alpha, *bias;
    int count, taps, groups;
} bit_rows;

/* The signed sums of groups q0 .. q0 + nq of the taps of the row at `base` (missing taps read 0). */
static void row_sums(const bit_rows *k, const float *base, int q0, int nq, vf table[][16])
{
    const dnn_conv_t *p = k->p;
    const size_t in_plane = (size_t)p->hp * p->wp;
    const int kk = p->kh * p->kw;
    int t = 4 * q0, c = t / kk, ky = t % kk / p->kw, kx = t % p->kw, q, i;
    for (q = 0; q < nq; q++) {
        vf xs[4];
        for (i = 0; i < 4; i++, t++) {
            if (t >= k->taps) {
                xs[i] = vzero();
                continue;
            }
            xs[i] = vload(base + (size_t)c * in_plane + (size_t)ky * p->dh * p->wp +
                          (size_t)kx * p->dw);
            if (++kx == p->kw) {
                kx = 0;
                if (++ky == p->kh) {
                    ky = 0;
                    c++;
                }
            }
        }
        signed_sums(xs, table[q]);
    }
}

/*
 * `count` output channels at output pixels (oy, ox0 ..) and, when `two`, (oy + 1, ox0 ..):
 * alpha * (sum of +-x) + bias, ReLU. Each pick serves both rows.
 */
static void bit_rows_tile(const void *kernel, int oy, int two, int ox0, vf *acc)
{
    const bit_rows *k = (const bit_rows *)kernel;
    const dnn_conv_t *p = k->p;
    const float *base = k->xg + (size_t)oy * p->sh * p->wp + ox0;
    vf table[2][LOOKUP_GROUPS][16];
    const char *sums = (const char *)table[0];
    const char *next = (const char *)table[1];
    vf *acc1 = acc + LOOKUP_CHANNELS;
    int q0, q, j;
    for (j = 0; j < k->count; j++)
        acc[j] = acc1[j] = vzero();
    for (q0 = 0; q0 < k->groups; q0 += LOOKUP_GROUPS) {
        const int nq = k->groups - q0 < LOOKUP_GROUPS ? k->groups - q0 : LOOKUP_GROUPS;
        row_sums(k, base, q0, nq, table[0]);
        if (two)
            row_sums(k, base + (size_t)p->sh * p->wp, q0, nq, table[1]);
        /* Each channel adds the sum its 4 sign bits pick, group by group. */
        for (j = 0; j < k->count; j++) {
            const uint16_t *pick = k->picks + (size_t)j * k->groups + q0;
            vf a = acc[j], b = acc1[j];
            if (nq == LOOKUP_GROUPS && two) {
                /* Four picks a load, each for both rows. */
                for (q = 0; q < LOOKUP_GROUPS; q += 4) {
                    uint64_t four;
                    int i;
                    memcpy(&four, pick + q, sizeof four);
                    for (i = 0; i < 4; i++, four >>= 16) {
                        const unsigned at = (unsigned)(four & 0xffffu);
                        a = vadd(a, *(const vf *)(sums + at));
                        b = vadd(b, *(const vf *)(next + at));
                    }
                }
            } else {
                for (q = 0; q < nq; q++) {
                    a = vadd(a, *(const vf *)(sums + pick[q]));
                    if (two)
                        b = vadd(b, *(const vf *)(next + pick[q]));
                }
            }
            acc[j] = a;
            acc1[j] = b;
        }
    }
    for (j = 0; j < k->count; j++) {
        acc[j] = vmul(acc[j], vsplat(k->alpha[j]));
        acc1[j] = vmul(acc1[j], vsplat(k->alpha[j]));
    }
    finish_lanes(acc, k->count, k->bias, p->relu);
    if (two)
        finish_lanes(acc1, k->count, k->bias, p->relu);
}

void dnn_conv2d_rows_picks(const dnn_conv_t *p, const uint8_t *bits, uint16_t *picks)
{
    const int taps = p->c / p->group * p->kh * p->kw;
    const int groups = (taps + 3) / 4;
    const size_t row_bytes = ((size_t)taps + 7) / 8;
    int j, q;
    for (j = 0; j < p->m; j++) {
        for (q = 0; q < groups; q++) {
            const unsigned b = bits[(size_t)j * row_bytes + q / 2] >> (q & 1) * 4 & 15u;
            picks[(size_t)j * groups + q] = (uint16_t)(((q % LOOKUP_GROUPS) * 16 + b) * sizeof(vf));
        }
    }
}

static void conv_rows_bits(const dnn_conv_t *p, const dnn_pool_t *pool, const float *x,
                           const float *alpha, const float *bias, const uint16_t *picks,
                           float *padded, float *rows, float *y)
{
    const int cg = p->c / p->group;
    const int mg = p->m / p->group;
    const int taps = cg * p->kh * p->kw;
    const int groups = (taps + 3) / 4;
    const row_sink sink = {p, pool, rows};
    int g, m0;
    pad_input(p, x, padded);
    for (g = 0; g < p->group; g++) {
        for (m0 = 0; m0 < mg; m0 += LOOKUP_CHANNELS) {
            const int first = g * mg + m0;
            bit_rows k;
            k.p = p;
            k.xg = padded + (size_t)g * cg * p->hp * p->wp;
            k.picks = picks + (size_t)first * groups;
            k.alpha = alpha + first;
            k.bias = bias ? bias + first : NULL;
            k.count = mg - m0 < LOOKUP_CHANNELS ? mg - m0 : LOOKUP_CHANNELS;
            k.taps = taps;
            k.groups = groups;
            run_rows(&sink, &k, bit_rows_tile, first, k.count, y);
        }
    }
}

void dnn_conv2d_rows_bits(const dnn_conv_t *p, const float *x, const float *alpha,
                          const float *bias, const uint16_t *picks, float *padded, float *y)
{
    conv_rows_bits(p, NULL, x, alpha, bias, picks, padded, NULL, y);
}

void dnn_conv2d_rows_bits_maxpool(const dnn_conv_t *p, const dnn_pool_t *pool, const float *x,
                                  const float *alpha, const float *bias, const uint16_t *picks,
                                  float *padded, float *rows, float *y)
{
    conv_rows_bits(p, pool, x, alpha, bias, picks, padded, rows, y);
}

/*
 * sum_k x[k * stride] * w[k] in 8 interleaved partial sums (contiguous x) or in order; the
 * weight of a bit-packed row is +a where its bit is set, else -a.
 */
#if defined(__GNUC__) && !defined(DNN_PORTABLE)
typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));

static float dot(const float *x, int stride, const float *w, const uint8_t *bits, float a, int k)
{
    const v8u lane = {0, 1, 2, 3, 4, 5, 6, 7};
    const v8f av = {a, a, a, a, a, a, a, a};
    v8f acc = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    float sum;
    int i = 0;
    if (stride == 1) {
        for (; i + 8 <= k; i += 8) {
            v8f xv, wv;
            memcpy(&xv, x + i, sizeof xv);
            if (w) {
                memcpy(&wv, w + i, sizeof wv);
            } else {
                /* Bit j clear: flip the sign of lane j. */
                const v8u b = (v8u){0, 0, 0, 0, 0, 0, 0, 0} + (uint32_t)bits[i >> 3];
                wv = (v8f)((v8u)av ^ ((~b >> lane & 1u) << 31));
            }
            acc += xv * wv;
        }
    }
    sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < k; i++) {
        const float wv = w ? w[i] : ((bits[i >> 3] >> (i & 7)) & 1u ? a : -a);
        sum += x[(size_t)i * stride] * wv;
    }
    return sum;
}
#else
static float dot(const float *x, int stride, const float *w, const uint8_t *bits, float a, int k)
{
    float acc[8], sum;
    int i = 0, j;
    for (j = 0; j < 8; j++)
        acc[j] = 0.0f;
    if (stride == 1) {
        for (; i + 8 <= k; i += 8) {
            float wv[8];
            if (w) {
                for (j = 0; j < 8; j++)
                    wv[j] = w[i + j];
            } else {
                const unsigned b = bits[i >> 3];
                for (j = 0; j < 8; j++)
                    wv[j] = (b >> j) & 1u ? a : -a;
            }
            for (j = 0; j < 8; j++)
                acc[j] += x[i + j] * wv[j];
        }
    }
    sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < k; i++) {
        const float wv = w ? w[i] : ((bits[i >> 3] >> (i & 7)) & 1u ? a : -a);
        sum += x[(size_t)i * stride] * wv;
    }
    return sum;
}
#endif

static void gemm(const dnn_gemm_t *p, const float *x, const float *w, const uint8_t *bits,
                 const float *alpha_j, const float *bias, float *y)
{
    const size_t row_bytes = ((size_t)p->k + 7) / 8;
    int r, j;
    for (r = 0; r < p->rows; r++) {
        const float *xr = x + (size_t)r * p->row_stride;
        for (j = 0; j < p->n; j++) {
            float v = w ? dot(xr, p->k_stride, w + (size_t)j * p->k, NULL, 0.0f, p->k)
                        : dot(xr, p->k_stride, NULL, bits + (size_t)j * row_bytes, alpha_j[j], p->k);
            if (p->alpha != 1.0f)
                v *= p->alpha;
            if (bias)
                v += bias[(size_t)r * p->n + j];
            y[(size_t)r * p->n + j] = p->relu && v < 0.0f ? 0.0f : v;
        }
    }
}

void dnn_gemm(const dnn_gemm_t *p, const float *x, const float *w, const float *bias, float *y)
{
    gemm(p, x, w, NULL, NULL, bias, y);
}

void dnn_gemm_bits(const dnn_gemm_t *p, const float *x, const uint8_t *bits, const float *alpha_j,
                   const float *bias, float *y)
{
    gemm(p, x, NULL, bits, alpha_j, bias, y);
}

#define MAXPOOL_ROW 1024 /* widest input row the unchecked max pooling takes */

static float max2(float a, float b)
{
    return b > a ? b : a;
}

/* o[ox] = the maximum of column[ox * sw .. ox * sw + kw), the usual 2 x 2 and 4 x 4 unrolled. */
static void window_max(const dnn_pool_t *p, const float *column, float *o)
{
    int ox, j;
    if (p->kw == 2 && p->sw == 2) {
        for (ox = 0; ox < p->ow; ox++)
            o[ox] = max2(column[2 * ox], column[2 * ox + 1]);
    } else if (p->kw == 4 && p->sw == 4) {
        for (ox = 0; ox < p->ow; ox++) {
            const float *c = column + 4 * ox;
            o[ox] = max2(max2(max2(c[0], c[1]), c[2]), c[3]);
        }
    } else {
        for (ox = 0; ox < p->ow; ox++) {
            const float *window = column + ox * p->sw;
            float best = window[0];
            for (j = 1; j < p->kw; j++)
                best = max2(best, window[j]);
            o[ox] = best;
        }
    }
}

/*
 * Max pooling whose windows all lie inside the input (no padding, no dilation): per output row,
 * the maximum down each input column of the window's rows, then across each window's columns.
 */
static void maxpool_inside(const dnn_pool_t *p, const float *x, float *y)
{
    float column[MAXPOOL_ROW];
    int c, oy, i, ix;
    for (c = 0; c < p->c; c++) {
        const float *in = x + (size_t)c * p->h * p->w;
        float *out = y + (size_t)c * p->oh * p->ow;
        for (oy = 0; oy < p->oh; oy++) {
            const float *top = in + (size_t)oy * p->sh * p->w;
            if (p->kh == 2 && p->kw == 2 && p->sw == 2) {
                /* The usual 2 x 2: straight from the two rows, in the order below. */
                const float *r0 = top, *r1 = top + p->w;
                float *o = out + (size_t)oy * p->ow;
                int ox;
                for (ox = 0; ox < p->ow; ox++)
                    o[ox] = max2(max2(r0[2 * ox], r1[2 * ox]), max2(r0[2 * ox + 1], r1[2 * ox + 1]));
                continue;
            }
            if (p->kh == 4 && p->kw == 4 && p->sw == 4) {
                float *o = out + (size_t)oy * p->ow;
                int ox, j;
                for (ox = 0; ox < p->ow; ox++) {
                    const float *t = top + 4 * ox;
                    float v[4];
                    for (j = 0; j < 4; j++)
                        v[j] = max2(max2(max2(t[j], t[p->w + j]), t[2 * p->w + j]), t[3 * p->w + j]);
                    o[ox] = max2(max2(max2(v[0], v[1]), v[2]), v[3]);
                }
                continue;
            }
            /* Down the window's rows (whole vectors, the rest one by one), then across. */
            for (ix = 0; ix + LANES <= p->w; ix += LANES) {
                vf v = vload(top + ix);
                for (i = 1; i < p->kh; i++)
                    v = vmax(v, vload(top + (size_t)i * p->w + ix));
                vstore(column + ix, v);
            }
            for (; ix < p->w; ix++) {
                float v = top[ix];
                for (i = 1; i < p->kh; i++)
                    v = max2(v, top[(size_t)i * p->w + ix]);
                column[ix] = v;
            }
            window_max(p, column, out + (size_t)oy * p->ow);
        }
    }
}

void dnn_maxpool2d(const dnn_pool_t *p, const float *x, float *y)
{
    int c, oy, ox, i, j;
    if (p->pt == 0 && p->pl == 0 && p->dh == 1 && p->dw == 1 && p->w <= MAXPOOL_ROW &&
        (p->oh - 1) * p->sh + p->kh <= p->h && (p->ow - 1) * p->sw + p->kw <= p->w) {
        maxpool_inside(p, x, y);
        return;
    }
    for (c = 0; c < p->c; c++) {
        const float *in = x + (size_t)c * p->h * p->w;
        float *out = y + (size_t)c * p->oh * p->ow;
        for (oy = 0; oy < p->oh; oy++) {
            for (ox = 0; ox < p->ow; ox++) {
                float best = -INFINITY;
                for (i = 0; i < p->kh; i++) {
                    const int iy = oy * p->sh - p->pt + i * p->dh;
                    if (iy < 0 || iy >= p->h)
                        continue;
                    for (j = 0; j < p->kw; j++) {
                        const int ix = ox * p->sw - p->pl + j * p->dw;
                        float v;
                        if (ix < 0 || ix >= p->w)
                            continue;
                        v = in[(size_t)iy * p->w + ix];
                        if (v > best)
                            best = v;
                    }
                }
                out[(size_t)oy * p->ow + ox] = best;
            }
        }
    }
}

void dnn_avgpool2d(const dnn_pool_t *p, const float *x, float *y)
{
    int c, oy, ox, i, j;
    for (c = 0; c < p->c; c++) {
        const float *in = x + (size_t)c * p->h * p->w;
        float *out = y + (size_t)c * p->oh * p->ow;
        for (oy = 0; oy < p->oh; oy++) {
            for (ox = 0; ox < p->ow; ox++) {
                float sum = 0.0f;
                int inside = 0, padded = 0;
                for (i = 0; i < p->kh; i++) {
                    const int iy = oy * p->sh - p->pt + i * p->dh;
                    if (iy < -p->pt || iy >= p->h + p->pb)
                        continue;
                    for (j = 0; j < p->kw; j++) {
                        const int ix = ox * p->sw - p->pl + j * p->dw;
                        if (ix < -p->pl || ix >= p->w + p->pr)
                            continue;
                        padded++;
                        if (iy < 0 || iy >= p->h || ix < 0 || ix >= p->w)
                            continue;
                        sum += in[(size_t)iy * p->w + ix];
                        inside++;
                    }
                }
                out[(size_t)oy * p->ow + ox] =
                    sum / (float)(p->count_include_pad ? padded : (inside ? inside : 1));
            }
        }
    }
}

void dnn_global_avgpool(int c, int plane, const float *x, float *y)
{
    int k, i;
    for (k = 0; k < c; k++) {
        const float *in = x + (size_t)k * plane;
        float sum = 0.0f;
        for (i = 0; i < plane; i++)
            sum += in[i];
        y[k] = sum / (float)plane;
    }
}

void dnn_channel_affine(int c, int inner, const float *scale, const float *shift, int relu,
                        const float *x, float *y)
{
    int k, i;
    for (k = 0; k < c; k++) {
        for (i = 0; i < inner; i++) {
            const size_t at = (size_t)k * inner + i;
            const float v = x[at] * scale[k] + shift[k];
            y[at] = relu && v < 0.0f ? 0.0f : v;
        }
    }
}

void dnn_relu(size_t n, const float *x, float *y)
{
    size_t i;
    for (i = 0; i < n; i++)
        y[i] = x[i] < 0.0f ? 0.0f : x[i];
}

void dnn_sigmoid(size_t n, const float *x, float *y)
{
    size_t i;
    for (i = 0; i < n; i++)
        y[i] = 1.0f / (1.0f + expf(-x[i]));
}

void dnn_clip(size_t n, float lo, float hi, const float *x, float *y)
{
    size_t i;
    for (i = 0; i < n; i++) {
        const float v = x[i];
        y[i] = v < lo ? lo : (v > hi ? hi : v);
    }
}

static float apply(int op, float a, float b, int relu)
{
    float v;
    switch (op) {
    case DNN_ADD:
        v = a + b;
        break;
    case DNN_SUB:
        v = a - b;
        break;
    case DNN_MUL:
        v = a * b;
        break;
    default:
        v = a / b;
        break;
    }
    return relu && v < 0.0f ? 0.0f : v;
}

void dnn_binary(int op, size_t n, const float *a, const float *b, int relu, float *y)
{
    size_t i;
    for (i = 0; i < n; i++)
        y[i] = apply(op, a[i], b[i], relu);
}

void dnn_binary_broadcast(const dnn_broadcast_t *p, const float *a, const float *b, float *y)
{
    int index[DNN_MAX_RANK] = {0};
    size_t total = 1, i, ai = 0, bi = 0;
    int d;
    for (d = 0; d < p->rank; d++)
        total *= (size_t)p->shape[d];
    for (i = 0; i < total; i++) {
        y[i] = apply(p->op, a[ai], b[bi], p->relu);
        for (d = p->rank - 1; d >= 0; d--) {
            index[d]++;
            ai += (size_t)p->a_stride[d];
            bi += (size_t)p->b_stride[d];
            if (index[d] < p->shape[d])
                break;
            ai -= (size_t)p->a_stride[d] * (size_t)p->shape[d];
            bi -= (size_t)p->b_stride[d] * (size_t)p->shape[d];
            index[d] = 0;
        }
    }
}

void dnn_concat_part(size_t outer, size_t inner, size_t inner_out, size_t offset, const float *x,
                     float *y)
{
    size_t o, i;
    for (o = 0; o < outer; o++)
        for (i = 0; i < inner; i++)
            y[o * inner_out + offset + i] = x[o * inner + i];
}
