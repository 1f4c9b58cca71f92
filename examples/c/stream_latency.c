/* Streaming latency through the C ABI: an LSTM or a GRU stepped one frame per call with
 * fastrnn_stream_step, the state carried, each step timed; prints the latency distribution
 * (p50, p90, p99, p99.9, max) and its histogram, then resets one slot and checks the API's
 * errors are reported.
 *
 *   ./stream_latency [lstm|gru] [hidden_size=128] [steps=10000] [batch=1]
 *
 * input_size = hidden_size, one layer, float32, one thread; random weights U(-1/sqrt(H), 1/sqrt(H)).
 * Build: make stream_latency (Makefile: pkg-config of the installed wheel).
 */
#define _POSIX_C_SOURCE 200112L
#include <fastrnn/fastrnn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(call)                                                                             \
    do {                                                                                        \
        fastrnn_status s_ = (call);                                                             \
        if (s_ != FASTRNN_OK) {                                                                 \
            fprintf(stderr, "%s failed: %s: %s\n", #call, fastrnn_status_name(s_), fastrnn_last_error()); \
            return 1;                                                                           \
        }                                                                                       \
    } while (0)

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static int by_value(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform(float lo, float hi) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return lo + (hi - lo) * (float)((rng_state * 2685821657736338717ull) >> 40) / (float)(1 << 24);
}

int main(int argc, char** argv) {
    const char* cell = argc > 1 ? argv[1] : "lstm";
    const int64_t H = argc > 2 ? atoll(argv[2]) : 128, steps = argc > 3 ? atoll(argv[3]) : 10000,
                  N = argc > 4 ? atoll(argv[4]) : 1;
    if ((strcmp(cell, "lstm") && strcmp(cell, "gru")) || H < 1 || steps < 100 || N < 1) {
        fprintf(stderr, "usage: %s [lstm|gru] [hidden_size >= 1] [steps >= 100] [batch >= 1]\n", argv[0]);
        return 2;
    }
    CHECK(FASTRNN_CHECK_VERSION());
    CHECK(fastrnn_set_num_threads(1));

    fastrnn_desc d;
    CHECK(fastrnn_desc_init(&d));
    d.cell = strcmp(cell, "gru") ? FASTRNN_LSTM : FASTRNN_GRU;
    d.dtype = FASTRNN_FLOAT32;
    d.input_size = d.hidden_size = H;
    d.num_layers = 1;
    fastrnn_plan* plan = NULL;
    CHECK(fastrnn_plan_create(&d, NULL, &plan));
    int64_t n_params = 0, n_buffers = 0;
    CHECK(fastrnn_plan_param_count(plan, &n_params, &n_buffers));
    /* On a cache line: the stream reads weight rows in place with full-vector loads, and a row
     * that straddles two lines costs both (malloc aligns to 16 bytes only). */
    float* params = NULL;
    if (posix_memalign((void**)&params, 64, sizeof(float) * (size_t)n_params)) return 1;
    float* x = malloc(sizeof(float) * (size_t)(N * H));
    float* y = malloc(sizeof(float) * (size_t)(N * H));
    double* lat = malloc(sizeof(double) * (size_t)steps);
    if (!x || !y || !lat) return 1;
    const float k = 1.0f / sqrtf((float)H);
    for (int64_t i = 0; i < n_params; ++i) params[i] = uniform(-k, k);
    for (int64_t i = 0; i < N * H; ++i) x[i] = uniform(-1, 1);
    CHECK(fastrnn_plan_set_params(plan, params, NULL)); /* read in place: keep `params` alive */

    fastrnn_stream* stream = NULL;
    CHECK(fastrnn_stream_create(plan, N, 0.0, 0.0, &stream));
    for (int i = 0; i < 1000; ++i) CHECK(fastrnn_stream_step(stream, 1, x, y, NULL)); /* warm-up */
    for (int64_t i = 0; i < steps; ++i) {
        const double t0 = now_us();
        CHECK(fastrnn_stream_step(stream, 1, x, y, NULL));
        lat[i] = now_us() - t0;
        x[0] = y[0]; /* feed an output back: each step depends on the last */
    }
    qsort(lat, (size_t)steps, sizeof(double), by_value);
    double mean = 0;
    for (int64_t i = 0; i < steps; ++i) mean += lat[i] / (double)steps;
    const double p50 = lat[steps / 2], p90 = lat[steps * 9 / 10], p99 = lat[steps * 99 / 100],
                 p999 = lat[steps * 999 / 1000], worst = lat[steps - 1];
    const double weight_bytes = 4.0 * (double)n_params;
    printf("fastrnn %s, isa %s, %s H=%lld N=%lld, %lld steps of one frame (1 thread)\n", fastrnn_version_string(),
           fastrnn_get_isa(), cell, (long long)H, (long long)N, (long long)steps);
    printf("latency us: p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f  mean %.2f\n", p50, p90, p99, p999,
           worst, mean);
    printf("weights %.0f KB per step: %.1f GB/s at p50\n", weight_bytes / 1024, weight_bytes / p50 * 1e-3);

    /* Histogram from the fastest step to p99; the slower 1 % is the last row. */
    enum { BINS = 16, WIDTH = 50 };
    int64_t count[BINS + 1] = {0}, most = 0;
    const double lo = lat[0], span = (p99 - lo) > 0 ? (p99 - lo) : 1e-9;
    for (int64_t i = 0; i < steps; ++i) {
        int b = (int)((lat[i] - lo) / span * BINS);
        count[b < 0 ? 0 : b > BINS ? BINS : b]++;
    }
    for (int b = 0; b <= BINS; ++b) most = count[b] > most ? count[b] : most;
    for (int b = 0; b <= BINS; ++b) {
        if (b < BINS)
            printf("%8.2f us %7lld ", lo + span * b / BINS, (long long)count[b]);
        else
            printf(">%7.2f us %7lld ", p99, (long long)count[b]);
        for (int j = 0; j < (int)((double)count[b] / (double)most * WIDTH + 0.5); ++j) putchar('#');
        putchar('\n');
    }

    /* Slot 0 starts over; errors come back as a status and a message. */
    const int64_t slot = 0;
    CHECK(fastrnn_stream_reset(stream, &slot, 1));
    if (fastrnn_stream_step(stream, 0, x, y, NULL) != FASTRNN_ERR_INVALID) return 1;
    printf("a step of 0 frames: %s\n", fastrnn_last_error());

    fastrnn_stream_destroy(stream);
    fastrnn_plan_destroy(plan);
    free(params);
    free(x);
    free(y);
    free(lat);
    return 0;
}
