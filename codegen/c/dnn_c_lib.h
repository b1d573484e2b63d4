/*
 * dnn_c_lib: the layer library of ddnn-fog's generated device programs. Each function runs one
 * layer of one sample on tensors laid out as ONNX lays them (NCHW, batch 1). No function
 * allocates: the caller passes every buffer, and the shapes come from a const description the
 * generator wrote. C99, libm only.
 */
#ifndef DNN_C_LIB_H
#define DNN_C_LIB_H

#include <stddef.h>
#include <stdint.h>

/* A 2-D convolution (1-D ones have h = oh = kh = 1). Weights are [m][c / group][kh][kw]. */
typedef struct {
    int c, h, w;    /* input channels, height, width */
    int m, oh, ow;  /* output channels, height, width */
    int kh, kw;     /* kernel */
    int sh, sw;     /* strides */
    int dh, dw;     /* dilations */
    int pt, pl;     /* padding at the top and on the left (the bottom and right follow from oh, ow) */
    int hp, wp;     /* block8 only: the padded input plane the taps read (see dnn_conv2d_block8) */
    int group;
    int relu;       /* 1: ReLU fused after the bias */
} dnn_conv_t;

/*
 * y[m] = sum over taps of w * x, plus bias[m] (bias may be NULL); w is [m][c / group][kh][kw].
 * The _bits form has binarized weights, eBNN style: weight i (in that order) is +alpha[m] when bit
 * i of `bits` is set (byte i / 8, bit i % 8), else -alpha[m].
 */
void dnn_conv2d(const dnn_conv_t *p, const float *x, const float *w, const float *bias, float *y);
void dnn_conv2d_bits(const dnn_conv_t *p, const float *x, const uint8_t *bits, const float *alpha,
                     const float *bias, float *y);

/*
 * The same convolution for layers whose output channels per group are a multiple of 8: weights
 * in blocks of 8 output channels, [m / 8][c / group][kh][kw][8], so each tap is one 8-wide
 * multiply-add over 4 output pixels at a time. The input is first copied into `padded` (c planes
 * of hp x wp floats, zeros around), so no tap checks bounds. In the _bits form, byte t of `bits`
 * holds the signs of tap t's 8 weights (bit j: output channel 8 * block + j); each block's
 * weights are decoded into `scratch` (8 * c / group * kh * kw floats) before its taps run.
 */
void dnn_conv2d_block8(const dnn_conv_t *p, const float *x, const float *w, const float *bias,
                       float *padded, float *y);
void dnn_conv2d_block8_bits(const dnn_conv_t *p, const float *x, const uint8_t *bits,
                            const float *alpha, const float *bias, float *scratch, float *padded,
                            float *y);

/*
 * The same convolution for layers with horizontal stride 1, one output pixel per vector lane
 * along a row (16 lanes with AVX-512, 8 with AVX, else 4; the same floats whatever the width).
 * The input is copied into `padded` as for block8, with hp x wp the padded input plane; the
 * buffer holds DNN_MAX_LANES floats more, which the last row's vector reads and discards.
 * dnn_conv2d_rows takes the block8 weight layout (output channels per group a multiple of 8).
 * The bit-packed form runs from `picks`, which dnn_conv2d_rows_picks decodes from the sign bits
 * once (m * ceil(taps / 4) entries; taps = c / group * kh * kw): output channel m's signs are
 * ceil(taps / 8) bytes, in ONNX order, bit i set where tap i is +alpha[m], else -alpha[m]. Each
 * group of 4 taps' 16 signed input sums is computed once per row vector and each channel adds
 * the one its 4 bits pick, so y[m] = alpha[m] * (sum of +-x) + bias[m] (the floats differ from
 * the float weights' in the last bits).
 */
#define DNN_MAX_LANES 16
void dnn_conv2d_rows(const dnn_conv_t *p, const float *x, const float *w, const float *bias,
                     float *padded, float *y);
void dnn_conv2d_rows_picks(const dnn_conv_t *p, const uint8_t *bits, uint16_t *picks);
void dnn_conv2d_rows_bits(const dnn_conv_t *p, const float *x, const float *alpha,
                          const float *bias, const uint16_t *picks, float *padded, float *y);

/*
 * y[r][j] = alpha * sum_k x[r * row_stride + k * k_stride] * w[j][k] + bias[r][j] (bias may be
 * NULL). In the _bits form, row j of the weights is ceil(k / 8) bytes: bit k % 8 of byte k / 8
 * set means +alpha_j[j], else -alpha_j[j].
 */
typedef struct {
    int rows, k, n;
    int row_stride, k_stride;
    float alpha;
    int relu;
} dnn_gemm_t;

void dnn_gemm(const dnn_gemm_t *p, const float *x, const float *w, const float *bias, float *y);
void dnn_gemm_bits(const dnn_gemm_t *p, const float *x, const uint8_t *bits, const float *alpha_j,
                   const float *bias, float *y);

/* Max and average pooling over 2-D windows, per channel. */
typedef struct {
    int c, h, w, oh, ow;
    int kh, kw, sh, sw, dh, dw;
    int pt, pl, pb, pr;
    int count_include_pad; /* average pooling: divide by the window inside the padded input */
} dnn_pool_t;

void dnn_maxpool2d(const dnn_pool_t *p, const float *x, float *y);

/*
 * A row kernel's convolution (+ ReLU) and the max pooling after it in one pass, where the
 * pooling's windows lie inside the convolution's output (no padding, no dilation): each window's
 * rows are reduced as they are computed, so the convolution's output is never stored. `rows`
 * holds 32 x (ow + DNN_MAX_LANES) floats (ow: the convolution's). Same floats as the two layers.
 */
void dnn_conv2d_rows_maxpool(const dnn_conv_t *p, const dnn_pool_t *pool, const float *x,
                             const float *w, const float *bias, float *padded, float *rows,
                             float *y);
void dnn_conv2d_rows_bits_maxpool(const dnn_conv_t *p, const dnn_pool_t *pool, const float *x,
                                  const float *alpha, const float *bias, const uint16_t *picks,
                                  float *padded, float *rows, float *y);
void dnn_avgpool2d(const dnn_pool_t *p, const float *x, float *y);

/* y[c] = mean of the plane x[c][0 .. plane). */
void dnn_global_avgpool(int c, int plane, const float *x, float *y);

/* y = x * scale[c] + shift[c] per channel (a BatchNormalization that could not be folded). */
void dnn_channel_affine(int c, int inner, const float *scale, const float *shift, int relu,
                        const float *x, float *y);

/* Elementwise; x and y may be the same buffer. */
void dnn_relu(size_t n, const float *x, float *y);
void dnn_sigmoid(size_t n, const float *x, float *y);
void dnn_clip(size_t n, float lo, float hi, const float *x, float *y);

enum { DNN_ADD, DNN_SUB, DNN_MUL, DNN_DIV };

/* a op b for tensors of the same shape; y may be a or b. */
void dnn_binary(int op, size_t n, const float *a, const float *b, int relu, float *y);

/* a op b with numpy broadcasting: strides are 0 along a broadcast dimension. */
#define DNN_MAX_RANK 8
typedef struct {
    int op;
    int rank;
    int shape[DNN_MAX_RANK];
    int a_stride[DNN_MAX_RANK];
    int b_stride[DNN_MAX_RANK];
    int relu;
} dnn_broadcast_t;

void dnn_binary_broadcast(const dnn_broadcast_t *p, const float *a, const float *b, float *y);

/* Copies one input of a Concat into its place: `outer` blocks of `inner` values each. */
void dnn_concat_part(size_t outer, size_t inner, size_t inner_out, size_t offset, const float *x,
                     float *y);

#endif
