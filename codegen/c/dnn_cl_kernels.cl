/*
 * dnn_cl_kernels: the convolutions and matrix products of a ddnn-fog device stage as OpenCL 1.2
 * kernels, one work-item per output value. Same layouts as dnn_c_lib's dnn_conv2d and dnn_gemm:
 * conv weights [m][c / group][kh][kw], gemm weights [n][k]; binarized weights as sign bits with
 * one magnitude per output channel. The parameters are the host's structs, as ints.
 */
#pragma OPENCL FP_CONTRACT OFF

/* dnn_conv_t: c h w m oh ow kh kw sh sw dh dw pt pl hp wp group relu */
__kernel void conv2d(__global const int *p, __global const float *x, __global const float *w,
                     __global const uchar *bits, __global const float *alpha,
                     __global const float *bias, int use_bits, int has_bias, __global float *y)
{
    const int c = p[0], h = p[1], wd = p[2], m_all = p[3], oh = p[4], ow = p[5];
    const int kh = p[6], kw = p[7], sh = p[8], sw = p[9], dh = p[10], dw = p[11];
    const int pt = p[12], pl = p[13], group = p[16], relu = p[17];
    const int gid = get_global_id(0);
    const int plane = oh * ow;
    if (gid >= m_all * plane)
        return;
    const int m = gid / plane, oy = (gid % plane) / ow, ox = gid % ow;
    const int cg = c / group, mg = m_all / group, g = m / mg;
    float acc = 0.0f;
    for (int ci = 0; ci < cg; ci++) {
        __global const float *in = x + (g * cg + ci) * h * wd;
        for (int ky = 0; ky < kh; ky++) {
            const int iy = oy * sh - pt + ky * dh;
            if (iy < 0 || iy >= h)
                continue;
            for (int kx = 0; kx < kw; kx++) {
                const int ix = ox * sw - pl + kx * dw;
                if (ix < 0 || ix >= wd)
                    continue;
                const int wi = ((m * cg + ci) * kh + ky) * kw + kx;
                const float wv = use_bits ? (((bits[wi >> 3] >> (wi & 7)) & 1) ? alpha[m] : -alpha[m])
                                          : w[wi];
                acc += in[iy * wd + ix] * wv;
            }
        }
    }
    float v = has_bias ? acc + bias[m] : acc;
    y[gid] = relu && v < 0.0f ? 0.0f : v;
}

/* dnn_gemm_t: rows k n row_stride k_stride alpha(float) relu */
__kernel void gemm(__global const int *p, __global const float *x, __global const float *w,
                   __global const uchar *bits, __global const float *alpha_j,
                   __global const float *bias, int use_bits, int has_bias, __global float *y)
{
    const int rows = p[0], k = p[1], n = p[2], row_stride = p[3], k_stride = p[4], relu = p[6];
    const float alpha = as_float(p[5]);
    const int gid = get_global_id(0);
    if (gid >= rows * n)
        return;
    const int r = gid / n, j = gid % n;
    const int row_bits = ((k + 7) / 8) * 8;
    float acc = 0.0f;
    for (int i = 0; i < k; i++) {
        const int b = j * row_bits + i;
        const float wv = use_bits ? (((bits[b >> 3] >> (b & 7)) & 1) ? alpha_j[j] : -alpha_j[j])
                                  : w[j * k + i];
        acc += x[r * row_stride + i * k_stride] * wv;
    }
    float v = alpha == 1.0f ? acc : alpha * acc;
    if (has_bias)
        v += bias[r * n + j];
    y[gid] = relu && v < 0.0f ? 0.0f : v;
}
