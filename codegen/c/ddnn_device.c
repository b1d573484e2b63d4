/*
 * ddnn-device: a ddnn-fog device tier in C. It runs the generated model (dev_model_infer) on u8
 * samples, applies the DDNN exit rule, and either reports the stage's own exit table over an idx
 * data set (--eval) or, built with MQTT=1, offloads non-confident samples to the next stage over
 * MQTT (see ddnn_mqtt.c).
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime for --bench */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dev_model_infer.h"
#include "tool_lib.h"

#ifdef DDNN_MQTT
int ddnn_mqtt_main(int argc, char **argv);
#endif

static const char usage[] =
    "ddnn-device: the device stage of a ddnn-fog bundle, generated as C\n"
    "\n"
    "Usage: ddnn-device --eval IMAGES LABELS [--json] [--threshold T] [--limit N]\n"
    "                   [--predictions FILE] [--outputs FILE]\n"
#ifdef DDNN_MQTT
    "       ddnn-device --broker URL [--model NS/NAME] [--device-id ID] [flags]   (--help-mqtt)\n"
#endif
    "\n"
    "  --eval IMAGES LABELS  idx images and labels (gzipped or not): the stage's exit table\n"
    "  --json                print one JSON object: samples, threshold, stages[0] with exitRate,\n"
    "                        accuracyAll and accuracyExited (as `ddnn eval --json` prints them)\n"
    "  --threshold T         exit threshold (0..1) instead of the bundle's\n"
    "  --limit N             the first N samples only\n"
    "  --predictions FILE    one JSON line per sample: index, exited, label, entropy\n"
    "  --outputs FILE        the stage's outputs per sample as little-endian float32: features\n"
    "                        (when the stage has them), then logits\n"
    "  --bench N             instead: preprocess and run the first sample N times, print\n"
    "                        {\"samples\":N,\"usPerSample\":...} (wall clock)\n";

/* Static buffers: nothing below allocates. */
static uint8_t pixels[DEV_MODEL_INPUT_SIZE];
static float input[DEV_MODEL_INPUT_SIZE];
static float features[DEV_MODEL_FEATURES_SIZE];
static float logits[DEV_MODEL_CLASSES];

static double wall_us(void)
{
#ifdef CLOCK_MONOTONIC
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
#else
    return (double)clock() * 1e6 / CLOCKS_PER_SEC;
#endif
}

static int fail(const char *message)
{
    fprintf(stderr, "ddnn-device: %s\n", message);
    return 2;
}

static int parse_threshold(const char *text, double *out)
{
    char *end;
    double v = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || !(v >= 0.0 && v <= 1.0))
        return -1;
    *out = v;
    return 0;
}

static int eval_main(const char *images_path, const char *labels_path, int json, int has_threshold,
                     double threshold, long limit, const char *predictions_path,
                     const char *outputs_path)
{
    const ddnn_stage_info *s = &dev_model_info;
    tool_idx images, labels;
    char err[512];
    FILE *predictions = NULL, *outputs = NULL;
    size_t n, i, exited = 0, correct_all = 0, correct_exited = 0;
    clock_t started;
    double seconds;
    int code = 0;

    if (!has_threshold)
        threshold = s->threshold;
    if (s->stage_index != 0)
        return fail("--eval: this stage takes the previous stage's features, not images");
    if (has_threshold && !s->has_exit)
        return fail("--threshold: this stage is the bundle's last; it always answers");
    if (tool_idx_open(&images, images_path, err, sizeof err) != 0)
        return fail(err);
    if (tool_idx_open(&labels, labels_path, err, sizeof err) != 0) {
        tool_idx_close(&images);
        return fail(err);
    }
    if (images.item_size != s->input_size) {
        snprintf(err, sizeof err, "%s: items hold %lu values, the stage's input has %lu",
                 images_path, (unsigned long)images.item_size, (unsigned long)s->input_size);
        code = fail(err);
        goto done;
    }
    if (labels.rank != 1 || labels.count != images.count) {
        snprintf(err, sizeof err, "%s: %lu labels for %lu images", labels_path,
                 (unsigned long)labels.count, (unsigned long)images.count);
        code = fail(err);
        goto done;
    }
    if (predictions_path && !(predictions = fopen(predictions_path, "w"))) {
        snprintf(err, sizeof err, "--predictions: cannot write %s", predictions_path);
        code = fail(err);
        goto done;
    }
    if (outputs_path && !(outputs = fopen(outputs_path, "wb"))) {
        snprintf(err, sizeof err, "--outputs: cannot write %s", outputs_path);
        code = fail(err);
        goto done;
    }
    n = images.count;
    if (limit >= 0 && (size_t)limit < n)
        n = (size_t)limit;

    started = clock();
    for (i = 0; i < n; i++) {
        uint8_t truth;
        double eta;
        int label, exits;
        if (tool_idx_read(&images, pixels) != 0 || tool_idx_read(&labels, &truth) != 0) {
            snprintf(err, sizeof err, "%s: truncated at item %lu", images_path, (unsigned long)i);
            code = fail(err);
            goto done;
        }
        if (truth >= s->classes) {
            snprintf(err, sizeof err, "%s: label %u at item %lu is outside the %d labels",
                     labels_path, truth, (unsigned long)i, s->classes);
            code = fail(err);
            goto done;
        }
        tool_preprocess(s, pixels, input);
        dev_model_infer(input, features, logits);
        eta = tool_normalized_entropy(logits, s->classes);
        label = tool_argmax(logits, s->classes);
        exits = tool_exits(s, threshold, eta);
        correct_all += label == truth;
        if (exits) {
            exited++;
            correct_exited += label == truth;
        }
        if (predictions) {
            fprintf(predictions, "{\"index\":%lu,\"exited\":%s,\"label\":%d,\"entropy\":",
                    (unsigned long)i, exits ? "true" : "false", label);
            tool_json_number(predictions, eta);
            fputs("}\n", predictions);
        }
        if (outputs) {
            if (s->features_rank > 0)
                fwrite(features, sizeof(float), s->features_size, outputs);
            fwrite(logits, sizeof(float), (size_t)s->classes, outputs);
        }
    }
    seconds = (double)(clock() - started) / CLOCKS_PER_SEC;

    if (json) {
        printf("{\"samples\":%lu,\"threshold\":", (unsigned long)n);
        if (s->has_exit)
            tool_json_number(stdout, threshold);
        else
            fputs("null", stdout);
        printf(",\"stages\":[{\"name\":\"%s\",\"exitRate\":", s->stage_name);
        tool_json_number(stdout, n ? (double)exited / (double)n : 0.0);
        fputs(",\"accuracyAll\":", stdout);
        tool_json_number(stdout, n ? (double)correct_all / (double)n : 0.0);
        fputs(",\"accuracyExited\":", stdout);
        if (exited)
            tool_json_number(stdout, (double)correct_exited / (double)exited);
        else
            fputs("null", stdout);
        fputs("}]}\n", stdout);
    } else {
        printf("%s %s  stage %s  samples %lu\n", s->bundle_name, s->bundle_version, s->stage_name,
               (unsigned long)n);
        if (s->has_exit)
            printf("exit when normalized entropy < %g\n\n", threshold);
        else
            printf("the bundle's last stage: every sample answers here\n\n");
        printf("stage     exit rate  accuracy (all)  accuracy (exited)  us/sample\n");
        printf("%-8s  %8.2f%%  %13.2f%%  ", s->stage_name, n ? 100.0 * exited / n : 0.0,
               n ? 100.0 * correct_all / n : 0.0);
        if (exited)
            printf("%16.2f%%", 100.0 * correct_exited / exited);
        else
            printf("%17s", "-");
        printf("  %9.1f\n", n ? seconds * 1e6 / n : 0.0);
    }
done:
    if (predictions && fclose(predictions) != 0 && code == 0)
        code = fail("--predictions: write failed");
    if (outputs && fclose(outputs) != 0 && code == 0)
        code = fail("--outputs: write failed");
    tool_idx_close(&images);
    tool_idx_close(&labels);
    return code;
}

/* Batch-1 time of the stage: preprocessing and inference of one sample, repeated. */
static int bench_main(const char *images_path, long repeat)
{
    const ddnn_stage_info *s = &dev_model_info;
    tool_idx images;
    char err[512];
    double started, elapsed;
    long i;
    if (tool_idx_open(&images, images_path, err, sizeof err) != 0)
        return fail(err);
    if (images.item_size != s->input_size || tool_idx_read(&images, pixels) != 0) {
        tool_idx_close(&images);
        return fail("--bench: the first item is not one sample of the stage's input");
    }
    tool_idx_close(&images);
    for (i = 0; i < 10; i++) {
        tool_preprocess(s, pixels, input);
        dev_model_infer(input, features, logits);
    }
    started = wall_us();
    for (i = 0; i < repeat; i++) {
        tool_preprocess(s, pixels, input);
        dev_model_infer(input, features, logits);
    }
    elapsed = wall_us() - started;
    printf("{\"samples\":%ld,\"usPerSample\":", repeat);
    tool_json_number(stdout, elapsed / (double)repeat);
    printf(",\"label\":%d}\n", tool_argmax(logits, s->classes));
    return 0;
}

int main(int argc, char **argv)
{
    const char *images = NULL, *labels = NULL, *predictions = NULL, *outputs = NULL;
    int json = 0, has_threshold = 0, a;
    double threshold = 0.0;
    long limit = -1, bench = 0;

#ifdef DDNN_MQTT
    for (a = 1; a < argc; a++)
        if (strcmp(argv[a], "--broker") == 0 || strcmp(argv[a], "--help-mqtt") == 0)
            return ddnn_mqtt_main(argc, argv);
#endif
    for (a = 1; a < argc; a++) {
        const char *arg = argv[a];
        int has_value = a + 1 < argc;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else if (strcmp(arg, "--eval") == 0 && a + 2 < argc) {
            images = argv[++a];
            labels = argv[++a];
        } else if (strcmp(arg, "--json") == 0) {
            json = 1;
        } else if (strcmp(arg, "--threshold") == 0 && has_value) {
            if (parse_threshold(argv[++a], &threshold) != 0)
                return fail("--threshold: must be a number between 0 and 1");
            has_threshold = 1;
        } else if (strcmp(arg, "--limit") == 0 && has_value) {
            char *end;
            limit = strtol(argv[++a], &end, 10);
            if (*end != '\0' || limit < 1)
                return fail("--limit: must be a positive integer");
        } else if (strcmp(arg, "--bench") == 0 && has_value) {
            char *end;
            bench = strtol(argv[++a], &end, 10);
            if (*end != '\0' || bench < 1)
                return fail("--bench: must be a positive integer");
        } else if (strcmp(arg, "--predictions") == 0 && has_value) {
            predictions = argv[++a];
        } else if (strcmp(arg, "--outputs") == 0 && has_value) {
            outputs = argv[++a];
        } else {
            fprintf(stderr, "ddnn-device: unknown or incomplete flag \"%s\" (try --help)\n", arg);
            return 2;
        }
    }
    if (!images) {
        fputs(usage, stderr);
        return 2;
    }
    if (bench)
        return bench_main(images, bench);
    return eval_main(images, labels, json, has_threshold, threshold, limit, predictions, outputs);
}
