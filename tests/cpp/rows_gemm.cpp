// rows_gemm (csrc/kernels/gemm.h), the streaming steps' products with the weights read in place,
// on every register-blocking branch it has, whatever the CPU: the portable Scalar<T> (16
// registers: up to 4 slots, blocks of 3 or 4 rows, groups of 12 or 8 rows), Wide16<T> (an
// array-backed 16-lane vector with 32 registers: the AVX-512 branch, 4 slots, plain loads, hsum per
// row), and with -DWITH_AVX2 the AVX2 types (prefetch, hsum4). For rows 1-25 (two groups of 12),
// depths 1-40, 128-131 and 601 (where more than 4 rows of A take groups of 8), 1-8 rows of A,
// padded lda and ldc, `next` null or set, and the rows split between two calls:
// - every result within a float64 reference's rounding bound;
// - bit for bit the result of one row of A at a time over all rows (a row's sum never depends on
//   the slots or on the split);
// - nothing written in ldc's padding, nothing read or written past the arrays (each ends, or
//   starts, at a PROT_NONE page).
// Prints "ok <checks>" and exits 0, or prints the first failures and exits 1.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/interface.h"
#define FASTRNN_ISA_NS isa_test
#include "simd/scalar.h"
#ifdef WITH_AVX2
#include "simd/avx2.h"
#endif

namespace fastrnn {
int microkernel_rows() { return 4; }  // gemm.h's packed-path helpers name it; rows_gemm does not use it
namespace isa_test {

// 16 lanes and 32 registers, as AVX-512: rows_gemm takes its 32-register branch.
template <class T>
struct Wide16 {
    using value_type = T;
    static constexpr int width = 16;
    static constexpr int regs = 32;
    T v[16];
    static Wide16 load(const T* p) {
        Wide16 r;
        std::memcpy(r.v, p, sizeof r.v);
        return r;
    }
    static Wide16 zero() { return Wide16{}; }
};
template <class T>
Wide16<T> fmadd(Wide16<T> a, Wide16<T> b, Wide16<T> c) {
    for (int i = 0; i < 16; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
}
template <class T>
T hsum(Wide16<T> a) {
    T s = 0;
    for (T x : a.v) s += x;
    return s;
}

}  // namespace isa_test
}  // namespace fastrnn

#include "kernels/gemm.h"

using namespace fastrnn::isa_test;

namespace {

// n elements whose end (or start) touches a PROT_NONE page.
template <class T>
struct Guarded {
    char* base;
    std::size_t total;
    T* p;
    Guarded(std::size_t n, bool at_end) {
        const std::size_t page = std::size_t(sysconf(_SC_PAGESIZE)), bytes = n * sizeof(T);
        const std::size_t body = (bytes + page - 1) / page * page;
        total = body + 2 * page;
        base = static_cast<char*>(mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        mprotect(base, page, PROT_NONE);
        mprotect(base + page + body, page, PROT_NONE);
        p = reinterpret_cast<T*>(at_end ? base + page + body - bytes : base + page);
    }
    ~Guarded() { munmap(base, total); }
    Guarded(const Guarded&) = delete;
    Guarded& operator=(const Guarded&) = delete;
};

long long checks = 0, failures = 0;

void fail(const char* type, const char* what, int rows, int depth, int N, int split, int n, int r, double got,
          double want) {
    if (failures++ < 20)
        std::printf("%s %s: rows %d depth %d N %d split %d n %d r %d: got %.9g want %.9g\n", type, what, rows, depth,
                    N, split, n, r, got, want);
}

template <class V>
void check_type(const char* type) {
    using T = typename V::value_type;
    std::mt19937 rng(123);
    std::uniform_real_distribution<double> uniform(-1, 1);
    std::vector<int> depths;
    for (int d = 1; d <= 40; ++d) depths.push_back(d);
    for (int d = 128; d <= 131; ++d) depths.push_back(d);
    depths.push_back(601);
    const int maxN = 8;
    for (int at_end = 0; at_end < 2; ++at_end)
        for (int rows = 1; rows <= 25; ++rows)
            for (int depth : depths) {
                const int lda = depth + 3 * at_end;
                Guarded<T> W(std::size_t(rows) * depth, at_end), A(std::size_t(maxN - 1) * lda + depth, at_end);
                for (int i = 0; i < rows * depth; ++i) W.p[i] = T(uniform(rng));
                for (int i = 0; i < (maxN - 1) * lda + depth; ++i) A.p[i] = T(uniform(rng));
                // the reference, and one row of A at a time over all rows
                std::vector<double> ref(std::size_t(maxN) * rows), bound(ref.size());
                std::vector<T> single(ref.size());
                // one guarded output for every call below, its used part against the guard page
                const std::size_t most = std::size_t(maxN - 1) * (rows + 5) + rows;
                Guarded<T> out(most, at_end);
                const auto output = [&](std::size_t len) { return at_end ? out.p + (most - len) : out.p; };
                for (int n = 0; n < maxN; ++n) {
                    for (int r = 0; r < rows; ++r) {
                        double s = 0, m = 0;
                        for (int k = 0; k < depth; ++k) {
                            const double p = double(W.p[r * depth + k]) * double(A.p[n * lda + k]);
                            s += p, m += std::fabs(p);
                        }
                        ref[n * rows + r] = s;
                        bound[n * rows + r] = 2.0 * depth * std::numeric_limits<T>::epsilon() * m + 1e-30;
                    }
                    T* c = output(rows);
                    rows_gemm<V>(rows, depth, W.p, 1, A.p + n * lda, lda, c, rows, nullptr);
                    for (int r = 0; r < rows; ++r) single[n * rows + r] = c[r];
                }
                for (int N = 1; N <= maxN; ++N)
                    for (int with_next = 0; with_next < 2; ++with_next)
                        for (int split = 0; split < rows; split += rows > 6 ? 3 : 1) {
                            const int ldc = rows + 5 * with_next;
                            const std::size_t len = std::size_t(N - 1) * ldc + rows;
                            T* c = output(len);
                            for (std::size_t i = 0; i < len; ++i) c[i] = T(NAN);
                            const T* next = with_next ? W.p : nullptr;  // any readable rows
                            if (split == 0) {
                                rows_gemm<V>(rows, depth, W.p, N, A.p, lda, c, ldc, next);
                            } else {
                                rows_gemm<V>(split, depth, W.p, N, A.p, lda, c, ldc, with_next ? W.p + split * depth : nullptr);
                                rows_gemm<V>(rows - split, depth, W.p + split * depth, N, A.p, lda, c + split, ldc, next);
                            }
                            for (int n = 0; n < N; ++n) {
                                for (int r = 0; r < rows; ++r) {
                                    const T got = c[n * ldc + r], alone = single[n * rows + r];
                                    ++checks;
                                    if (!(std::fabs(double(got) - ref[n * rows + r]) <= bound[n * rows + r]))
                                        fail(type, "value", rows, depth, N, split, n, r, got, ref[n * rows + r]);
                                    if (std::memcmp(&got, &alone, sizeof(T)) != 0)
                                        fail(type, "bits", rows, depth, N, split, n, r, got, alone);
                                }
                                for (int r = rows; n + 1 < N && r < ldc; ++r)
                                    if (!std::isnan(c[n * ldc + r]))
                                        fail(type, "padding written", rows, depth, N, split, n, r, c[n * ldc + r], NAN);
                            }
                        }
            }
}

}  // namespace

int main() {
    static_assert(!prefetch_next_rows<Scalar<float>>() && !has_hsum4<Scalar<float>>::value, "the portable branch");
    static_assert(!prefetch_next_rows<Wide16<float>>() && !has_hsum4<Wide16<float>>::value, "the AVX-512 branch");
    check_type<Scalar<float>>("scalar float");
    check_type<Scalar<double>>("scalar double");
    check_type<Wide16<float>>("wide16 float");
    check_type<Wide16<double>>("wide16 double");
#ifdef WITH_AVX2
    static_assert(prefetch_next_rows<Avx2F>() && has_hsum4<Avx2F>::value, "the AVX2 branch");
    check_type<Avx2F>("avx2 float");
    check_type<Avx2D>("avx2 double");
#endif
    if (failures) {
        std::printf("%lld of %lld checks failed\n", failures, checks);
        return 1;
    }
    std::printf("ok %lld\n", checks);
    return 0;
}
