/* Checks fastrnn's model of the AVX512-BF16 instructions (csrc/kernels/bf16.h) against this CPU:
 *   1. vcvtneps2bf16 against the model's rounding (nearest even, denormal inputs to zero, NaN
 *      quieted), over every float32 bit pattern (or every 257th with --quick);
 *   2. vdpbf16ps against the model's pair (odd product first, exact products, each sum rounded
 *      once to float32 with an unbounded exponent, then flushed below 2^-126; DAZ), on random
 *      pairs with denormals, values near 2^-126, overflows and signed zeros;
 *   3. float32 FMAs on widened bf16 with the MXCSR's FTZ and DAZ (csrc/kernels/bf16_fma.cpp)
 *      against vdpbf16ps on the same pairs.
 * Build and run (x86-64, GCC or clang):  cc -O2 -o bf16_model bench/bf16_hardware_model.c -lm
 *                                        ./bf16_model [--quick]
 * Prints the mismatches of each check and exits 1 if there are any, 2 without AVX512-BF16.
 * tests/test_bf16.py runs it with --quick where the CPU has the instructions. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static float f32(uint32_t b) { float x; memcpy(&x, &b, 4); return x; }
static uint32_t bits(float x) { uint32_t b; memcpy(&b, &x, 4); return b; }

static uint16_t model_round(float x) {
    uint32_t b = bits(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
    if ((b & 0x7f800000u) == 0) b &= 0x80000000u;
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
static float daz(float x) { return (bits(x) & 0x7f800000u) == 0 ? f32(bits(x) & 0x80000000u) : x; }
static double bf(uint16_t h) { return daz(f32((uint32_t)h << 16)); }
/* s rounded to 24 bits with an unbounded exponent, then to float32 with FTZ */
static float round_ftz(double s) {
    if (s == 0 || !isfinite(s)) return (float)s;
    int e;
    const double m = frexp(s, &e), r = ldexp(nearbyint(ldexp(m, 24)), e - 24);
    if (fabs(r) < 0x1p-126) return signbit(r) ? -0.0f : 0.0f;
    return (float)r;
}
static float model_pair(float acc, uint16_t a0, uint16_t a1, uint16_t w0, uint16_t w1) {
    acc = round_ftz((double)daz(acc) + bf(a1) * bf(w1));
    return round_ftz((double)acc + bf(a0) * bf(w0));
}

static uint32_t state = 12345;
static uint32_t rnd(void) { state ^= state << 13; state ^= state >> 17; state ^= state << 5; return state; }
static uint16_t random_bf16(int near_tiny) {
    const uint16_t s = (uint16_t)((rnd() & 1u) << 15);
    const unsigned kind = rnd() % 16;
    if (near_tiny) return s | (uint16_t)(((60 + rnd() % 8) << 7) | (rnd() & 0x7f)); /* products near 2^-126 */
    if (kind == 0) return s | (uint16_t)(rnd() & 0x7f);                               /* denormal */
    if (kind == 1) return s | (uint16_t)(((rnd() % 3 + 1) << 7) | (rnd() & 0x7f));    /* tiny */
    if (kind == 2) return s | (uint16_t)(((250 + rnd() % 5) << 7) | (rnd() & 0x7f));  /* huge */
    return s | (uint16_t)(((110 + rnd() % 36) << 7) | (rnd() & 0x7f));
}
static float random_acc(void) {
    const uint32_t s = (rnd() & 1u) << 31;
    switch (rnd() % 8) {
        case 0: return f32(s | (rnd() & 0x7fffffu));                           /* denormal or zero */
        case 1: return f32(s | ((rnd() % 4 + 1) << 23) | (rnd() & 0x7fffffu)); /* near 2^-126 */
        default: return f32(s | ((100 + rnd() % 50) << 23) | (rnd() & 0x7fffffu));
    }
}

__attribute__((target("avx512f,avx512bf16,avx512vl,fma"))) static long check_rounding(uint64_t step) {
    long bad = 0;
    for (uint64_t i = 0; i < (1ull << 32); i += 16 * step) {
        uint32_t in[16];
        for (int j = 0; j < 16; ++j) in[j] = (uint32_t)(i + (uint64_t)j * step);
        __m256bh r = _mm512_cvtneps_pbh(_mm512_castsi512_ps(_mm512_loadu_si512(in)));
        uint16_t out[16];
        memcpy(out, &r, 32);
        for (int j = 0; j < 16; ++j) bad += out[j] != model_round(f32(in[j]));
    }
    return bad;
}

__attribute__((target("avx512f,avx512bf16,avx512vl,fma"))) static void check_pairs(long iters, long* bad_model,
                                                                                    long* bad_fma, long* count) {
    const unsigned csr = _mm_getcsr();
    for (long it = 0; it < iters; ++it) {
        const int near_tiny = (int)(it & 1);
        float acc[16];
        uint16_t a[32], w[32];
        for (int j = 0; j < 16; ++j) acc[j] = random_acc();
        for (int j = 0; j < 32; ++j) { a[j] = random_bf16(near_tiny); w[j] = random_bf16(near_tiny); }
        __m512bh va, vw;
        memcpy(&va, a, 64);
        memcpy(&vw, w, 64);
        float hw[16], fm[16];
        _mm512_storeu_ps(hw, _mm512_dpbf16_ps(_mm512_loadu_ps(acc), va, vw));
        const __m512i ia = _mm512_loadu_si512(a), iw = _mm512_loadu_si512(w), high = _mm512_set1_epi32((int)0xffff0000u);
        _mm_setcsr(csr | 0x8040u);
        __m512 r = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(ia, high)),
                                   _mm512_castsi512_ps(_mm512_and_si512(iw, high)), _mm512_loadu_ps(acc));
        r = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(ia, 16)), _mm512_castsi512_ps(_mm512_slli_epi32(iw, 16)), r);
        _mm512_storeu_ps(fm, r);
        _mm_setcsr(csr);
        for (int j = 0; j < 16; ++j) {
            const float m = model_pair(acc[j], a[2 * j], a[2 * j + 1], w[2 * j], w[2 * j + 1]);
            const int hw_nan = hw[j] != hw[j];
            *bad_model += bits(m) != bits(hw[j]) && !(hw_nan && m != m);
            *bad_fma += bits(fm[j]) != bits(hw[j]) && !(hw_nan && fm[j] != fm[j]);
            ++*count;
        }
    }
}

int main(int argc, char** argv) {
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512bf16")) {
        puts("this CPU has no AVX512-BF16");
        return 2;
    }
    const uint64_t step = quick ? 257 : 1;
    const long round_bad = check_rounding(step);
    printf("vcvtneps2bf16: %ld mismatches over %s float32 bit patterns\n", round_bad, quick ? "every 257th of the" : "all");
    long bad_model = 0, bad_fma = 0, count = 0;
    check_pairs(quick ? 20000 : 8000000, &bad_model, &bad_fma, &count);
    printf("vdpbf16ps: %ld mismatches with the model, %ld with FMAs under FTZ/DAZ, of %ld pairs\n", bad_model, bad_fma,
           count);
    return round_bad || bad_model || bad_fma ? 1 : 0;
}
