/* dnn_cl_lib: see dnn_cl_lib.h. */
#define CL_TARGET_OPENCL_VERSION 120

#include "dnn_cl_lib.h"

#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnn_cl_kernels.h"

static cl_context context;
static cl_command_queue queue;
static cl_kernel conv_kernel, gemm_kernel;
static cl_mem dummy;
static int ready;

/* Device buffers by host address and size: weights and parameters are written once, the arena's
   activations on every call. The generated model has a fixed set of them. */
#define MAX_BUFFERS 256
static struct {
    const void *host;
    size_t bytes;
    cl_mem mem;
} buffers[MAX_BUFFERS];
static int buffer_count;

static void check(cl_int err, const char *what)
{
    if (err != CL_SUCCESS) {
        fprintf(stderr, "ddnn-device: OpenCL: %s failed (error %d)\n", what, (int)err);
        exit(3);
    }
}

static void setup(void)
{
    cl_platform_id platforms[8];
    cl_device_id device = NULL;
    cl_uint n = 0, i;
    cl_int err;
    cl_program program;
    const char *source = dnn_cl_source;
    float zero = 0.0f;
    check(clGetPlatformIDs(8, platforms, &n), "clGetPlatformIDs");
    for (i = 0; i < n && !device; i++)
        if (clGetDeviceIDs(platforms[i], CL_DEVICE_TYPE_GPU, 1, &device, NULL) != CL_SUCCESS)
            device = NULL;
    for (i = 0; i < n && !device; i++)
        if (clGetDeviceIDs(platforms[i], CL_DEVICE_TYPE_ALL, 1, &device, NULL) != CL_SUCCESS)
            device = NULL;
    if (!device) {
        fprintf(stderr, "ddnn-device: OpenCL: no device (install an OpenCL driver, e.g. pocl-opencl-icd)\n");
        exit(3);
    }
    context = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    check(err, "clCreateContext");
    queue = clCreateCommandQueue(context, device, 0, &err);
    check(err, "clCreateCommandQueue");
    program = clCreateProgramWithSource(context, 1, &source, NULL, &err);
    check(err, "clCreateProgramWithSource");
    err = clBuildProgram(program, 1, &device, "-cl-std=CL1.2", NULL, NULL);
    if (err != CL_SUCCESS) {
        char log[4096] = "";
        clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
        fprintf(stderr, "ddnn-device: OpenCL: the kernels do not build:\n%s\n", log);
        exit(3);
    }
    conv_kernel = clCreateKernel(program, "conv2d", &err);
    check(err, "clCreateKernel(conv2d)");
    gemm_kernel = clCreateKernel(program, "gemm", &err);
    check(err, "clCreateKernel(gemm)");
    clReleaseProgram(program);
    dummy = clCreateBuffer(context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof zero, &zero, &err);
    check(err, "clCreateBuffer");
    ready = 1;
}

/* The device buffer for host data; `upload` copies the host bytes (always for activations). */
static cl_mem buffer(const void *host, size_t bytes, int constant)
{
    cl_int err;
    int i;
    if (!host)
        return dummy;
    for (i = 0; i < buffer_count; i++) {
        if (buffers[i].host == host && buffers[i].bytes == bytes) {
            if (!constant)
                check(clEnqueueWriteBuffer(queue, buffers[i].mem, CL_TRUE, 0, bytes, host, 0, NULL,
                                           NULL),
                      "clEnqueueWriteBuffer");
            return buffers[i].mem;
        }
    }
    if (buffer_count == MAX_BUFFERS) {
        fprintf(stderr, "ddnn-device: OpenCL: more than %d buffers\n", MAX_BUFFERS);
        exit(3);
    }
    buffers[buffer_count].host = host;
    buffers[buffer_count].bytes = bytes;
    buffers[buffer_count].mem = clCreateBuffer(
        context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, bytes, (void *)host, &err);
    check(err, "clCreateBuffer");
    return buffers[buffer_count++].mem;
}

static void run(const cl_kernel *which, const void *params, size_t param_bytes, const float *x,
                size_t x_floats, const float *w, size_t w_floats, const uint8_t *bits,
                size_t bit_bytes, const float *alpha, size_t channels, const float *bias,
                size_t bias_floats, float *y, size_t y_floats)
{
    cl_mem args[7];
    cl_int use_bits = bits != NULL, has_bias = bias != NULL;
    size_t global = y_floats;
    cl_kernel kernel;
    int a;
    if (!ready)
        setup();
    kernel = *which;
    args[0] = buffer(params, param_bytes, 1);
    args[1] = buffer(x, x_floats * sizeof(float), 0);
    args[2] = buffer(w, w_floats * sizeof(float), 1);
    args[3] = buffer(bits, bit_bytes, 1);
    args[4] = buffer(alpha, channels * sizeof(float), 1);
    args[5] = buffer(bias, bias_floats * sizeof(float), 1);
    args[6] = buffer(y, y_floats * sizeof(float), 1);
    for (a = 0; a < 6; a++)
        check(clSetKernelArg(kernel, (cl_uint)a, sizeof(cl_mem), &args[a]), "clSetKernelArg");
    check(clSetKernelArg(kernel, 6, sizeof use_bits, &use_bits), "clSetKernelArg");
    check(clSetKernelArg(kernel, 7, sizeof has_bias, &has_bias), "clSetKernelArg");
    check(clSetKernelArg(kernel, 8, sizeof(cl_mem), &args[6]), "clSetKernelArg");
    check(clEnqueueNDRangeKernel(queue, kernel, 1, NULL, &global, NULL, 0, NULL, NULL),
          "clEnqueueNDRangeKernel");
    check(clEnqueueReadBuffer(queue, args[6], CL_TRUE, 0, y_floats * sizeof(float), y, 0, NULL,
                              NULL),
          "clEnqueueReadBuffer");
}

static void conv(const dnn_conv_t *p, const float *x, const float *w, const uint8_t *bits,
                 const float *alpha, const float *bias, float *y)
{
    const size_t weights = (size_t)p->m * (p->c / p->group) * p->kh * p->kw;
    run(&conv_kernel, p, sizeof *p, x, (size_t)p->c * p->h * p->w, w, w ? weights : 0, bits,
        bits ? (weights + 7) / 8 : 0, alpha, alpha ? (size_t)p->m : 0, bias,
        bias ? (size_t)p->m : 0, y, (size_t)p->m * p->oh * p->ow);
}

void dnn_cl_conv2d(const dnn_conv_t *p, const float *x, const float *w, const float *bias, float *y)
{
    conv(p, x, w, NULL, NULL, bias, y);
}

void dnn_cl_conv2d_bits(const dnn_conv_t *p, const float *x, const uint8_t *bits,
                        const float *alpha, const float *bias, float *y)
{
    conv(p, x, NULL, bits, alpha, bias, y);
}

static void gemm(const dnn_gemm_t *p, const float *x, const float *w, const uint8_t *bits,
                 const float *alpha_j, const float *bias, float *y)
{
    const size_t x_floats = (size_t)(p->rows - 1) * p->row_stride + (size_t)(p->k - 1) * p->k_stride + 1;
    const size_t row_bytes = ((size_t)p->k + 7) / 8;
    run(&gemm_kernel, p, sizeof *p, x, x_floats, w, w ? (size_t)p->k * p->n : 0, bits,
        bits ? row_bytes * p->n : 0, alpha_j, alpha_j ? (size_t)p->n : 0, bias,
        bias ? (size_t)p->rows * p->n : 0, y, (size_t)p->rows * p->n);
}

void dnn_cl_gemm(const dnn_gemm_t *p, const float *x, const float *w, const float *bias, float *y)
{
    gemm(p, x, w, NULL, NULL, bias, y);
}

void dnn_cl_gemm_bits(const dnn_gemm_t *p, const float *x, const uint8_t *bits,
                      const float *alpha_j, const float *bias, float *y)
{
    gemm(p, x, NULL, bits, alpha_j, bias, y);
}
