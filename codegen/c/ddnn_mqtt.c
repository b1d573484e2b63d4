/*
 * ddnn-device's MQTT side (built with `make MQTT=1`): the device tier as docs/protocol.md
 * describes it. Each sample runs the generated stage; a confident exit answers at once, anything
 * else goes to the next stage as a DDN1 frame (f32 or u8q, deflated or not) and waits for the
 * reply until its deadline. No reply in time, no broker, or an error reply: the device answers
 * with its own exit's prediction, marked degraded, as the Node agent does. One JSON line per
 * answer on stdout. Single-threaded: libmosquitto's network loop runs while a reply is awaited.
 */
#define _POSIX_C_SOURCE 200809L

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "dev_model_infer.h"
#include "tool_lib.h"

#ifndef DDNN_ZLIB
#error "the MQTT side deflates frames: build with ZLIB=1 (the default)"
#endif

static const char mqtt_usage[] =
    "ddnn-device --broker URL: the device tier over MQTT (DDN1 frames, docs/protocol.md)\n"
    "\n"
    "Usage: ddnn-device --broker mqtt[s]://HOST[:PORT] [--model NS/NAME] [--device-id ID]\n"
    "                   (--replay IMAGES [--fps N] [--limit N] | --stdin) [flags]\n"
    "\n"
    "  --broker URL        the MQTT broker: mqtt:// (default port 1883) or mqtts:// (TLS, 8883;\n"
    "                      the certificate and host name are verified)\n"
    "  --broker-ca FILE    PEM file of the CA(s) that sign an mqtts:// broker's certificate\n"
    "                      (default: the system's, /etc/ssl/certs)\n"
    "  --model NS/NAME     the model reference (default: default/<bundle name>)\n"
    "  --device-id ID      names the reply topic and request ids (default: c-device)\n"
    "  --replay IMAGES     classify the items of an idx file (gzipped or not)\n"
    "  --fps N             replay at N samples per second (default 0: one after the other)\n"
    "  --limit N           the first N items only\n"
    "  --stdin             read raw samples from stdin: input-size bytes each, until EOF\n"
    "  --deadline-ms N     how long an offloaded sample may wait for its answer (default 250)\n"
    "  --dtype f32|u8q     encoding of the features sent upstream (default f32)\n"
    "  --compression none|deflate   (default none)\n"
    "  --threshold T       exit threshold instead of the bundle's\n"
    "\n"
    "The environment may give DDNN_BROKER_USERNAME and DDNN_BROKER_PASSWORD (never a flag, so\n"
    "that no process list shows them). A broker that cannot be reached or refuses the client is\n"
    "named on stderr once per kind of failure; the samples are answered locally meanwhile.\n"
    "\n"
    "Each answer is one JSON line: index, label, labelName, stage, stageIndex, tier, entropy,\n"
    "degraded (with reason: deadline, broker_unreachable, upstream_error), timings (ms: device,\n"
    "comm, upstream, total) and bytesSent.\n";

#define TOPIC_MAX 1100
#define ID_MAX 160
#define HEADER_MAX 2048

/* Static buffers for one sample and its frame: nothing per sample allocates except zlib/cJSON. */
static uint8_t pixels[DEV_MODEL_INPUT_SIZE];
static float input[DEV_MODEL_INPUT_SIZE];
static float features[DEV_MODEL_FEATURES_SIZE];
static float logits[DEV_MODEL_CLASSES];
static uint8_t body[DEV_MODEL_FEATURES_SIZE * 4];
static uint8_t packed[DEV_MODEL_FEATURES_SIZE * 4 + 1024];
static uint8_t frame[8 + HEADER_MAX + DEV_MODEL_FEATURES_SIZE * 4 + 1024];

typedef struct {
    struct mosquitto *mosq;
    int connected;  /* CONNACK received */
    int subscribed; /* SUBACK for the reply topic received */
    int sub_mid;
    char reply_topic[TOPIC_MAX];
    /* The request being waited for, and its reply once it came. */
    char waiting[ID_MAX];
    int replied;
    int reply_ok;
    int reply_stage;
    int reply_label;
    double reply_entropy;
    double reply_upstream_ms;
    char reply_tier[64];
    /* The last broker failure written to stderr (0: none since the last success). */
    int reported;
} session;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static long long unix_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* [A-Za-z0-9._-], 1..n characters (ids and model names go into topics and JSON unescaped). */
static int plain_name(const char *s, size_t n, int allow_slash)
{
    size_t i, len = strlen(s);
    if (len == 0 || len > n)
        return 0;
    for (i = 0; i < len; i++) {
        const char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || (allow_slash && c == '/')))
            return 0;
    }
    return 1;
}

/* A broker failure, on stderr once until it changes or the broker is back. */
static void report(session *s, int code, const char *text)
{
    if (code == s->reported)
        return;
    s->reported = code;
    fprintf(stderr, "ddnn-device: broker: %s; answering locally until it is back\n", text);
}

static void report_rc(session *s, int rc)
{
    const char *text = rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc);
    if (rc == MOSQ_ERR_TLS)
        text = "TLS handshake failed (is its certificate signed by the --broker-ca CA, for this "
               "host name?)";
    report(s, 1000 + rc, text);
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    session *s = obj;
    if (rc != 0) {
        /* The broker refused the client: bad credentials, not authorised, ... */
        report(s, 2000 + rc, mosquitto_connack_string(rc));
        return;
    }
    if (s->reported != 0)
        fprintf(stderr, "ddnn-device: broker: connected\n");
    s->reported = 0;
    s->connected = 1;
    s->subscribed = 0;
    /* With a clean session the broker forgets subscriptions: subscribe on every connect. */
    mosquitto_subscribe(mosq, &s->sub_mid, s->reply_topic, 1);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    session *s = obj;
    (void)mosq;
    (void)rc;
    s->connected = 0;
    s->subscribed = 0;
}

static void on_subscribe(struct mosquitto *mosq, void *obj, int mid, int qos_count,
                         const int *granted)
{
    session *s = obj;
    (void)mosq;
    (void)qos_count;
    (void)granted;
    if (mid == s->sub_mid)
        s->subscribed = 1;
}

static double number_field(const cJSON *o, const char *name, double fallback)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

/* A reply frame: DDN1, H (little-endian), H bytes of JSON. Other ids are late or foreign. */
static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *m)
{
    session *s = obj;
    const uint8_t *p = m->payload;
    uint32_t h;
    cJSON *json, *id, *status, *timings, *t, *tier;
    (void)mosq;
    if (m->payloadlen < 8 || memcmp(p, "DDN1", 4) != 0)
        return;
    h = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
    if (h > 65536 || 8 + (size_t)h > (size_t)m->payloadlen)
        return;
    json = cJSON_ParseWithLength((const char *)p + 8, h);
    if (!json)
        return;
    id = cJSON_GetObjectItemCaseSensitive(json, "id");
    if (s->waiting[0] && cJSON_IsString(id) && strcmp(id->valuestring, s->waiting) == 0 &&
        !s->replied) {
        status = cJSON_GetObjectItemCaseSensitive(json, "status");
        s->replied = 1;
        s->reply_ok = cJSON_IsString(status) && strcmp(status->valuestring, "ok") == 0;
        s->reply_stage = (int)number_field(json, "stage", -1);
        s->reply_label = (int)number_field(json, "label", -1);
        s->reply_entropy = number_field(json, "entropy", NAN);
        s->reply_upstream_ms = 0.0;
        timings = cJSON_GetObjectItemCaseSensitive(json, "timings");
        cJSON_ArrayForEach(t, timings)
        {
            size_t n = t->string ? strlen(t->string) : 0;
            if (cJSON_IsNumber(t) && !(n >= 5 && strcmp(t->string + n - 5, "Queue") == 0))
                s->reply_upstream_ms += t->valuedouble;
        }
        tier = cJSON_GetObjectItemCaseSensitive(json, "tier");
        snprintf(s->reply_tier, sizeof s->reply_tier, "%s",
                 cJSON_IsString(tier) ? tier->valuestring : "");
        if (s->reply_ok && (s->reply_label < 0 || s->reply_label >= DEV_MODEL_CLASSES))
            s->reply_ok = 0;
    }
    cJSON_Delete(json);
}

/* Runs the network loop for up to `ms`; reconnects (at most every 200 ms) when the link is down. */
static void pump(session *s, double ms)
{
    static double last_try = -1e9;
    int rc;
    if (ms < 0)
        ms = 0;
    rc = mosquitto_loop(s->mosq, (int)ms, 1);
    if (rc == MOSQ_ERR_NO_CONN || rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_ERRNO ||
        rc == MOSQ_ERR_TLS || rc == MOSQ_ERR_PROTOCOL || rc == MOSQ_ERR_AUTH) {
        s->connected = 0;
        s->subscribed = 0;
        if (rc != MOSQ_ERR_NO_CONN)
            report_rc(s, rc);
        if (now_ms() - last_try >= 200.0) {
            last_try = now_ms();
            rc = mosquitto_reconnect(s->mosq);
            if (rc != MOSQ_ERR_SUCCESS)
                report_rc(s, rc);
        } else {
            struct timespec t = {0, 0};
            const double wait = ms < 20.0 ? ms : 20.0;
            t.tv_nsec = (long)(wait * 1e6);
            nanosleep(&t, NULL);
        }
    }
}

/* The features as the request body: f32 little-endian, or u8q as the project's encoder does. */
static size_t encode_body(const char *dtype, double *scale, int *zero)
{
    const size_t n = dev_model_info.features_size;
    size_t i;
    if (strcmp(dtype, "f32") == 0) {
        for (i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &features[i], 4);
            body[4 * i] = bits & 0xff;
            body[4 * i + 1] = (bits >> 8) & 0xff;
            body[4 * i + 2] = (bits >> 16) & 0xff;
            body[4 * i + 3] = (bits >> 24) & 0xff;
        }
        return 4 * n;
    } else {
        /* A range that includes 0, so ReLU features get zero = 0; JavaScript's Math.round. */
        double lo = 0.0, hi = 0.0;
        for (i = 0; i < n; i++) {
            if (features[i] < lo)
                lo = features[i];
            if (features[i] > hi)
                hi = features[i];
        }
        *scale = hi > lo ? (hi - lo) / 255.0 : 1.0;
        *zero = (int)floor(-lo / *scale + 0.5);
        if (*zero < 0)
            *zero = 0;
        if (*zero > 255)
            *zero = 255;
        for (i = 0; i < n; i++) {
            double q = floor((double)features[i] / *scale + 0.5) + *zero;
            body[i] = (uint8_t)(q < 0 ? 0 : (q > 255 ? 255 : q));
        }
        return n;
    }
}

typedef struct {
    const char *model;
    const char *device_id;
    const char *dtype;
    const char *compression;
    double deadline_ms;
    double threshold;
    char request_topic[TOPIC_MAX];
    unsigned long boot;
    unsigned long counter;
} offload_config;

/* Builds the request frame for the current features; returns its size (0 on failure). */
static size_t build_request(const offload_config *c, const char *id, long long deadline)
{
    const ddnn_stage_info *info = &dev_model_info;
    double scale = 1.0;
    int zero = 0, d;
    size_t raw = encode_body(c->dtype, &scale, &zero), size = raw, hl;
    const uint8_t *payload = body;
    char header[HEADER_MAX], shape[256], extra[128] = "";
    int at = snprintf(shape, sizeof shape, "[1");
    for (d = 0; d < info->features_rank; d++)
        at += snprintf(shape + at, sizeof shape - (size_t)at, ",%d", info->features_shape[d]);
    snprintf(shape + at, sizeof shape - (size_t)at, "]");
    if (strcmp(c->compression, "deflate") == 0) {
        uLongf out = sizeof packed;
        if (compress2(packed, &out, body, (uLong)raw, 6) != Z_OK)
            return 0;
        payload = packed;
        size = out;
    }
    if (strcmp(c->dtype, "u8q") == 0)
        snprintf(extra, sizeof extra, ",\"scale\":%.17g,\"zero\":%d", scale, zero);
    hl = (size_t)snprintf(header, sizeof header,
                          "{\"kind\":\"infer\",\"id\":\"%s\",\"model\":\"%s\",\"digest\":\"%s\","
                          "\"stage\":%d,\"replyTo\":\"ddnn/%s/reply/%s\",\"deadline\":%lld,"
                          "\"dtype\":\"%s\",\"shape\":%s,\"compression\":\"%s\"%s,\"sentAt\":%lld}",
                          id, c->model, info->digest, info->stage_index + 1, c->model,
                          c->device_id, deadline, c->dtype, shape, c->compression, extra,
                          unix_ms());
    if (hl >= sizeof header)
        return 0;
    memcpy(frame, "DDN1", 4);
    frame[4] = hl & 0xff;
    frame[5] = (hl >> 8) & 0xff;
    frame[6] = (hl >> 16) & 0xff;
    frame[7] = (hl >> 24) & 0xff;
    memcpy(frame + 8, header, hl);
    memcpy(frame + 8 + hl, payload, size);
    return 8 + hl + size;
}

static void print_answer(unsigned long index, int label, int stage_index, const char *stage,
                         const char *tier, double entropy, const char *reason, double device,
                         double comm, double upstream, double total, size_t bytes_sent)
{
    const ddnn_stage_info *info = &dev_model_info;
    printf("{\"index\":%lu,\"label\":%d,\"labelName\":", index, label);
    tool_json_string(stdout, label >= 0 && label < info->classes ? info->labels[label] : "?");
    fputs(",\"stage\":", stdout);
    tool_json_string(stdout, stage);
    printf(",\"stageIndex\":%d,\"tier\":", stage_index);
    tool_json_string(stdout, tier);
    fputs(",\"entropy\":", stdout);
    tool_json_number(stdout, entropy);
    printf(",\"degraded\":%s", reason ? "true" : "false");
    if (reason)
        printf(",\"reason\":\"%s\"", reason);
    fputs(",\"timings\":{\"device\":", stdout);
    tool_json_number(stdout, device);
    fputs(",\"comm\":", stdout);
    tool_json_number(stdout, comm);
    fputs(",\"upstream\":", stdout);
    tool_json_number(stdout, upstream);
    fputs(",\"total\":", stdout);
    tool_json_number(stdout, total);
    printf("},\"bytesSent\":%lu}\n", (unsigned long)bytes_sent);
    fflush(stdout);
}

/* One sample of `pixels`: the stage, the exit, and the offload when it is not confident. */
static void classify(session *s, offload_config *c, unsigned long index)
{
    const ddnn_stage_info *info = &dev_model_info;
    const double started = now_ms();
    const long long deadline = unix_ms() + (long long)c->deadline_ms;
    const double until = started + c->deadline_ms;
    double device, eta, sent;
    int label;
    size_t size;
    const char *reason;

    tool_preprocess(info, pixels, input);
    dev_model_infer(input, features, logits);
    eta = tool_normalized_entropy(logits, info->classes);
    label = tool_argmax(logits, info->classes);
    device = now_ms() - started;
    if (tool_exits(info, c->threshold, eta)) {
        print_answer(index, label, info->stage_index, info->stage_name, "device", eta, NULL, device,
                     0, 0, now_ms() - started, 0);
        return;
    }
    reason = "broker_unreachable";
    if (s->connected && s->subscribed) {
        snprintf(s->waiting, sizeof s->waiting, "%s-%lx-%lu", c->device_id, c->boot, ++c->counter);
        s->replied = 0;
        size = build_request(c, s->waiting, deadline);
        sent = now_ms();
        if (size > 0 && mosquitto_publish(s->mosq, NULL, c->request_topic, (int)size, frame, 1,
                                          false) == MOSQ_ERR_SUCCESS) {
            while (!s->replied && s->connected && now_ms() < until)
                pump(s, until - now_ms());
            if (s->replied && s->reply_ok) {
                const double rtt = now_ms() - sent;
                const int k = s->reply_stage;
                const char *stage = k >= 0 && k < info->stage_count ? info->stage_names[k]
                                                                    : "upstream";
                s->waiting[0] = '\0';
                print_answer(index, s->reply_label, k, stage,
                             s->reply_tier[0] ? s->reply_tier : stage, s->reply_entropy, NULL,
                             device, rtt > s->reply_upstream_ms ? rtt - s->reply_upstream_ms : 0,
                             s->reply_upstream_ms, now_ms() - started, size);
                return;
            }
            reason = s->replied ? "upstream_error" : (s->connected ? "deadline" : "broker_unreachable");
        }
        s->waiting[0] = '\0';
    }
    print_answer(index, label, info->stage_index, info->stage_name, "device", eta, reason, device, 0,
                 0, now_ms() - started, 0);
}

static int parse_broker(const char *url, char *host, size_t host_size, int *port, int *tls)
{
    const char *p = url, *colon;
    size_t n;
    *tls = 0;
    if (strncmp(p, "mqtt://", 7) == 0)
        p += 7;
    else if (strncmp(p, "mqtts://", 8) == 0) {
        p += 8;
        *tls = 1;
    } else if (strstr(p, "://"))
        return -1;
    colon = strrchr(p, ':');
    n = colon ? (size_t)(colon - p) : strlen(p);
    if (n == 0 || n >= host_size)
        return -1;
    memcpy(host, p, n);
    host[n] = '\0';
    *port = *tls ? 8883 : 1883;
    if (colon) {
        char *end;
        long v = strtol(colon + 1, &end, 10);
        if (*end != '\0' && *end != '/')
            return -1;
        if (v < 1 || v > 65535)
            return -1;
        *port = (int)v;
    }
    return 0;
}

static int usage_error(const char *message)
{
    fprintf(stderr, "ddnn-device: %s\n", message);
    return 2;
}

int ddnn_mqtt_main(int argc, char **argv)
{
    const ddnn_stage_info *info = &dev_model_info;
    static char model[256], host[256], client_id[ID_MAX];
    static session s;
    offload_config c;
    const char *broker = NULL, *replay = NULL, *broker_ca = NULL;
    const char *username = getenv("DDNN_BROKER_USERNAME"), *password = getenv("DDNN_BROKER_PASSWORD");
    int use_stdin = 0, port = 1883, tls = 0, a, rc;
    double fps = 0.0;
    long limit = -1;
    unsigned long index = 0;
    tool_idx images;
    char err[512];

    memset(&c, 0, sizeof c);
    c.device_id = "c-device";
    c.dtype = "f32";
    c.compression = "none";
    c.deadline_ms = 250.0;
    c.threshold = info->threshold;
    snprintf(model, sizeof model, "default/%s", info->bundle_name);
    for (a = 1; a < argc; a++) {
        const char *arg = argv[a];
        const int has_value = a + 1 < argc;
        if (strcmp(arg, "--help-mqtt") == 0) {
            fputs(mqtt_usage, stdout);
            return 0;
        } else if (strcmp(arg, "--broker") == 0 && has_value) {
            broker = argv[++a];
        } else if (strcmp(arg, "--broker-ca") == 0 && has_value) {
            broker_ca = argv[++a];
        } else if (strcmp(arg, "--model") == 0 && has_value) {
            snprintf(model, sizeof model, "%s", argv[++a]);
        } else if (strcmp(arg, "--device-id") == 0 && has_value) {
            c.device_id = argv[++a];
        } else if (strcmp(arg, "--replay") == 0 && has_value) {
            replay = argv[++a];
        } else if (strcmp(arg, "--stdin") == 0) {
            use_stdin = 1;
        } else if (strcmp(arg, "--fps") == 0 && has_value) {
            fps = strtod(argv[++a], NULL);
            if (!(fps >= 0))
                return usage_error("--fps: must be a number >= 0");
        } else if (strcmp(arg, "--limit") == 0 && has_value) {
            limit = strtol(argv[++a], NULL, 10);
            if (limit < 1)
                return usage_error("--limit: must be a positive integer");
        } else if (strcmp(arg, "--deadline-ms") == 0 && has_value) {
            c.deadline_ms = strtod(argv[++a], NULL);
            if (!(c.deadline_ms > 0))
                return usage_error("--deadline-ms: must be a positive number");
        } else if (strcmp(arg, "--dtype") == 0 && has_value) {
            c.dtype = argv[++a];
            if (strcmp(c.dtype, "f32") != 0 && strcmp(c.dtype, "u8q") != 0)
                return usage_error("--dtype: f32 or u8q");
        } else if (strcmp(arg, "--compression") == 0 && has_value) {
            c.compression = argv[++a];
            if (strcmp(c.compression, "none") != 0 && strcmp(c.compression, "deflate") != 0)
                return usage_error("--compression: none or deflate");
        } else if (strcmp(arg, "--threshold") == 0 && has_value) {
            char *end;
            c.threshold = strtod(argv[++a], &end);
            if (*end != '\0' || !(c.threshold >= 0 && c.threshold <= 1))
                return usage_error("--threshold: must be a number between 0 and 1");
        } else {
            fprintf(stderr, "ddnn-device: unknown or incomplete flag \"%s\" (try --help-mqtt)\n",
                    arg);
            return 2;
        }
    }
    c.model = model;
    if (!broker || parse_broker(broker, host, sizeof host, &port, &tls) != 0)
        return usage_error("--broker: give mqtt://HOST[:PORT] or mqtts://HOST[:PORT]");
    if (broker_ca && !tls)
        return usage_error("--broker-ca: a broker CA only applies to mqtts:// brokers, not mqtt://");
    if (broker_ca) {
        FILE *f = fopen(broker_ca, "r");
        if (!f) {
            snprintf(err, sizeof err, "--broker-ca %s: cannot read it (%s)", broker_ca,
                     strerror(errno));
            return usage_error(err);
        }
        fclose(f);
    }
    if (password && *password && !(username && *username))
        return usage_error("DDNN_BROKER_PASSWORD is set without DDNN_BROKER_USERNAME");
    if (!plain_name(model, 200, 1) || !strchr(model, '/'))
        return usage_error("--model: NS/NAME of letters, digits, '.', '_' and '-'");
    if (!plain_name(c.device_id, 64, 0))
        return usage_error("--device-id: 1..64 letters, digits, '.', '_' or '-'");
    if ((replay == NULL) == (use_stdin == 0))
        return usage_error("give one of --replay IMAGES and --stdin");
    if (info->stage_index != 0)
        return usage_error("this stage takes the previous stage's features, not images");
    if (info->next_stage_name)
        snprintf(c.request_topic, sizeof c.request_topic, "ddnn/%s/%s/req", model,
                 info->next_stage_name);
    snprintf(s.reply_topic, sizeof s.reply_topic, "ddnn/%s/reply/%s", model, c.device_id);
    c.boot = (unsigned long)unix_ms() ^ ((unsigned long)clock() << 16);
    snprintf(client_id, sizeof client_id, "%s-%lx", c.device_id, c.boot);

    if (replay) {
        if (tool_idx_open(&images, replay, err, sizeof err) != 0)
            return usage_error(err);
        if (images.item_size != info->input_size) {
            tool_idx_close(&images);
            return usage_error("--replay: items do not have the stage's input size");
        }
    }
    /* A broker that goes away must not kill the device: writes to its socket fail instead. */
    signal(SIGPIPE, SIG_IGN);
    mosquitto_lib_init();
    s.mosq = mosquitto_new(client_id, true, &s);
    if (!s.mosq) {
        if (replay)
            tool_idx_close(&images);
        mosquitto_lib_cleanup();
        return usage_error("cannot create an MQTT client");
    }
    mosquitto_int_option(s.mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    if (username && *username &&
        mosquitto_username_pw_set(s.mosq, username, password && *password ? password : NULL) !=
            MOSQ_ERR_SUCCESS) {
        mosquitto_destroy(s.mosq);
        mosquitto_lib_cleanup();
        return usage_error("DDNN_BROKER_USERNAME: not a valid MQTT user name");
    }
    if (tls) {
        /* The broker's certificate chain and host name are verified (never tls_insecure). */
        rc = mosquitto_tls_set(s.mosq, broker_ca, broker_ca ? NULL : "/etc/ssl/certs", NULL, NULL,
                               NULL);
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_tls_opts_set(s.mosq, 1, NULL, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            snprintf(err, sizeof err, "--broker %s: cannot set up TLS (%s)", broker,
                     mosquitto_strerror(rc));
            mosquitto_destroy(s.mosq);
            mosquitto_lib_cleanup();
            return usage_error(err);
        }
    }
    mosquitto_int_option(s.mosq, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_callback_set(s.mosq, on_connect);
    mosquitto_disconnect_callback_set(s.mosq, on_disconnect);
    mosquitto_subscribe_callback_set(s.mosq, on_subscribe);
    mosquitto_message_callback_set(s.mosq, on_message);
    /* Not reachable now: the samples answer locally until a reconnect succeeds. */
    rc = mosquitto_connect(s.mosq, host, port, 30);
    if (rc == MOSQ_ERR_SUCCESS) {
        const double until = now_ms() + 2000.0;
        while (!s.subscribed && now_ms() < until)
            pump(&s, 50);
    } else {
        report_rc(&s, rc);
    }
    {
        const double period = fps > 0 ? 1000.0 / fps : 0.0;
        double next = now_ms();
        for (;;) {
            if (limit >= 0 && index >= (unsigned long)limit)
                break;
            if (replay) {
                if (index >= images.count || tool_idx_read(&images, pixels) != 0)
                    break;
            } else if (fread(pixels, 1, sizeof pixels, stdin) != sizeof pixels) {
                break;
            }
            while (period > 0 && now_ms() < next)
                pump(&s, next - now_ms());
            next += period;
            pump(&s, 0);
            classify(&s, &c, index++);
        }
    }
    mosquitto_disconnect(s.mosq);
    mosquitto_loop(s.mosq, 50, 1);
    mosquitto_destroy(s.mosq);
    mosquitto_lib_cleanup();
    if (replay)
        tool_idx_close(&images);
    return 0;
}
