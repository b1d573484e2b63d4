/*
 * tool_lib: what a ddnn-fog device does around its model: preprocessing of u8 pixels as the bundle
 * says, the DDNN exit rule (normalized entropy of the softmax below a threshold), idx data files
 * (gzipped ones through zlib when built with DDNN_ZLIB), and JSON numbers as JavaScript prints them.
 */
#ifndef TOOL_LIB_H
#define TOOL_LIB_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define DDNN_MAX_RANK 8

/* What the generated model says about its bundle and stage (dev_model_info in the model source). */
typedef struct {
    const char *bundle_name;
    const char *bundle_version;
    const char *digest;          /* sha256 (hex) of the bundle's ddnn.json */
    const char *stage_name;
    int stage_index;
    const char *next_stage_name; /* NULL when this stage is the bundle's last */
    int stage_count;             /* the bundle's stages and their names, in order */
    const char *const *stage_names;
    int input_rank;              /* per-sample shape, without the batch dimension */
    int input_shape[DDNN_MAX_RANK];
    size_t input_size;
    float input_scale;           /* x = (u8 * scale - mean[c]) / std[c] */
    int channels;
    const float *mean;           /* one value per channel */
    const float *std;
    int features_rank;           /* 0 when the stage has no features */
    int features_shape[DDNN_MAX_RANK];
    size_t features_size;
    int classes;
    const char *const *labels;
    int has_exit;                /* 0: the last stage, which always answers */
    double threshold;            /* the manifest's exit threshold */
} ddnn_stage_info;

/* Stage-0 input from u8 pixels (CHW): each step rounded to float as numpy and PyTorch do. */
void tool_preprocess(const ddnn_stage_info *s, const uint8_t *pixels, float *x);

/* eta = -sum(p ln p) / ln C of p = softmax(logits), in [0, 1]; NaN when a logit is not finite. */
double tool_normalized_entropy(const float *logits, int classes);

/* Index of the largest value (the first on ties). */
int tool_argmax(const float *v, int n);

/* The exit rule: a sample leaves at this stage when eta < threshold (never when eta is NaN). */
int tool_exits(const ddnn_stage_info *s, double threshold, double eta);

/* An idx file (the MNIST format) of unsigned bytes, read item by item. */
typedef struct {
    void *file;
    int rank;
    unsigned long dims[DDNN_MAX_RANK];
    size_t count;     /* dims[0] */
    size_t item_size; /* product of the other dims */
} tool_idx;

/* 0 on success; otherwise -1 with a message in err. */
int tool_idx_open(tool_idx *f, const char *path, char *err, size_t err_size);
/* Reads the next item into dst (item_size bytes); 0 on success, -1 at the end or on an error. */
int tool_idx_read(tool_idx *f, uint8_t *dst);
void tool_idx_close(tool_idx *f);

/* Writes a double the way JavaScript's JSON.stringify does (shortest round trip; null if not finite). */
void tool_json_number(FILE *out, double v);

/* Writes a JSON string (quotes, escapes) of UTF-8 text. */
void tool_json_string(FILE *out, const char *s);

#endif
