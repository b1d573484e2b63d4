/* tool_lib: see tool_lib.h. */
#include "tool_lib.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef DDNN_ZLIB
#include <zlib.h>
#endif

void tool_preprocess(const ddnn_stage_info *s, const uint8_t *pixels, float *x)
{
    const size_t plane = s->input_size / (size_t)s->channels;
    size_t i = 0, k;
    int c;
    for (c = 0; c < s->channels; c++) {
        const float mean = s->mean[c];
        const float std = s->std[c];
        for (k = 0; k < plane; k++, i++) {
            float v = (float)pixels[i] * s->input_scale;
            v = v - mean;
            x[i] = v / std;
        }
    }
}

double tool_normalized_entropy(const float *logits, int classes)
{
    double max = -HUGE_VAL, sum = 0.0, log_sum, h = 0.0, eta;
    int i;
    for (i = 0; i < classes; i++)
        if (logits[i] > max)
            max = logits[i];
    if (!isfinite(max))
        return NAN;
    for (i = 0; i < classes; i++)
        sum += exp((double)logits[i] - max);
    log_sum = log(sum);
    for (i = 0; i < classes; i++) {
        const double log_p = (double)logits[i] - max - log_sum;
        h -= exp(log_p) * log_p;
    }
    eta = h / log((double)classes);
    /* Rounding can leave eta a hair outside [0, 1]. */
    return eta < 0.0 ? 0.0 : (eta > 1.0 ? 1.0 : eta);
}

int tool_argmax(const float *v, int n)
{
    int best = 0, i;
    float value = -INFINITY;
    for (i = 0; i < n; i++) {
        if (v[i] > value) {
            value = v[i];
            best = i;
        }
    }
    return best;
}

int tool_exits(const ddnn_stage_info *s, double threshold, double eta)
{
    return !s->has_exit || eta < threshold;
}

#ifdef DDNN_ZLIB
#define IDX_OPEN(path) ((void *)gzopen((path), "rb"))
#define IDX_READ(f, buf, n) (gzread((gzFile)(f), (buf), (unsigned)(n)) == (int)(n))
#define IDX_CLOSE(f) gzclose((gzFile)(f))
#else
#define IDX_OPEN(path) ((void *)fopen((path), "rb"))
#define IDX_READ(f, buf, n) (fread((buf), 1, (n), (FILE *)(f)) == (n))
#define IDX_CLOSE(f) fclose((FILE *)(f))
#endif

int tool_idx_open(tool_idx *f, const char *path, char *err, size_t err_size)
{
    unsigned char magic[4], dim[4];
    int d;
    memset(f, 0, sizeof *f);
    f->file = IDX_OPEN(path);
    if (!f->file) {
        snprintf(err, err_size, "%s: cannot open", path);
        return -1;
    }
    if (!IDX_READ(f->file, magic, 4)) {
        snprintf(err, err_size, "%s: not an idx file (too short)", path);
        goto fail;
    }
#ifndef DDNN_ZLIB
    if (magic[0] == 0x1f && magic[1] == 0x8b) {
        snprintf(err, err_size, "%s: gzipped, and this program was built without zlib (make ZLIB=1)",
                 path);
        goto fail;
    }
#endif
    if (magic[0] != 0 || magic[1] != 0) {
        snprintf(err, err_size, "%s: not an idx file (bad magic number)", path);
        goto fail;
    }
    if (magic[2] != 0x08) {
        snprintf(err, err_size, "%s: idx element type 0x%02x is not supported (only unsigned bytes)",
                 path, magic[2]);
        goto fail;
    }
    f->rank = magic[3];
    if (f->rank < 1 || f->rank > DDNN_MAX_RANK) {
        snprintf(err, err_size, "%s: idx file has %d dimensions", path, f->rank);
        goto fail;
    }
    f->item_size = 1;
    for (d = 0; d < f->rank; d++) {
        if (!IDX_READ(f->file, dim, 4)) {
            snprintf(err, err_size, "%s: idx header is truncated", path);
            goto fail;
        }
        f->dims[d] = ((unsigned long)dim[0] << 24) | ((unsigned long)dim[1] << 16) |
                     ((unsigned long)dim[2] << 8) | (unsigned long)dim[3];
        if (d > 0)
            f->item_size *= f->dims[d];
    }
    f->count = f->dims[0];
    return 0;
fail:
    IDX_CLOSE(f->file);
    f->file = NULL;
    return -1;
}

int tool_idx_read(tool_idx *f, uint8_t *dst)
{
    return f->file && IDX_READ(f->file, dst, f->item_size) ? 0 : -1;
}

void tool_idx_close(tool_idx *f)
{
    if (f->file)
        IDX_CLOSE(f->file);
    f->file = NULL;
}

void tool_json_number(FILE *out, double v)
{
    char text[32];
    int digits;
    if (!isfinite(v)) {
        fputs("null", out);
        return;
    }
    if (v == 0.0) {
        fputs("0", out);
        return;
    }
    for (digits = 1; digits <= 17; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, v);
        if (strtod(text, NULL) == v)
            break;
    }
    fputs(text, out);
}

void tool_json_string(FILE *out, const char *s)
{
    const unsigned char *c;
    fputc('"', out);
    for (c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(out, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(out, "\\u%04x", *c);
        else
            fputc(*c, out);
    }
    fputc('"', out);
}
