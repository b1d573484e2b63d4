/*
 * dnn_cl_lib: the convolutions and matrix products of dnn_c_lib run as OpenCL kernels (OpenCL 1.2,
 * as on the Odroid-XU4's Mali-T628; tested on PoCL). Same arguments and layouts as dnn_conv2d,
 * dnn_conv2d_bits, dnn_gemm and dnn_gemm_bits; the other layers stay on the CPU. Weights go to the
 * device once; activations are copied in and out around each kernel. The first call picks the
 * first GPU (else any device) and builds the kernels; an OpenCL error ends the program (exit 3).
 */
#ifndef DNN_CL_LIB_H
#define DNN_CL_LIB_H

#include "dnn_c_lib.h"

void dnn_cl_conv2d(const dnn_conv_t *p, const float *x, const float *w, const float *bias, float *y);
void dnn_cl_conv2d_bits(const dnn_conv_t *p, const float *x, const uint8_t *bits,
                        const float *alpha, const float *bias, float *y);
void dnn_cl_gemm(const dnn_gemm_t *p, const float *x, const float *w, const float *bias, float *y);
void dnn_cl_gemm_bits(const dnn_gemm_t *p, const float *x, const uint8_t *bits,
                      const float *alpha_j, const float *bias, float *y);

#endif
