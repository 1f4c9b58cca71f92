// Row-major GEMM on the BLAS from scipy-openblas32 (symbols carry the scipy_ prefix).
// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cblas.h>

#include "threads.h"

namespace fastrnn {

namespace blas_detail {
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a, int lda,
                 const float* b, int ldb, float beta, float* c, int ldc) {
    scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha, const double* a, int lda,
                 const double* b, int ldb, double beta, double* c, int ldc) {
    scipy_cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void gemv(CBLAS_TRANSPOSE t, int m, int n, float alpha, const float* a, int lda, const float* x, int incx,
                 float beta, float* y) {
    scipy_cblas_sgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, 1);
}
inline void gemv(CBLAS_TRANSPOSE t, int m, int n, double alpha, const double* a, int lda, const double* x, int incx,
                 double beta, double* y) {
    scipy_cblas_dgemv(CblasRowMajor, t, m, n, alpha, a, lda, x, incx, beta, y, 1);
}
}  // namespace blas_detail

// Large products are split by output rows over fastrnn's own threads (or the OpenMP runtime set
// by set_thread_omp), each calling a one-thread BLAS: OpenBLAS's own threads would form a second
// pool whose idle threads spin after each call and take cores from the step threads (and from
// torch's OpenMP workers under fastrnn.torch). Small products (a few hundred microseconds) run
// on the calling thread: waking threads would cost more than it saves. The line, 2e7 flops
// (~150 us of one core's SGEMM here; waking a parked pool thread costs 10-50 us), lets the
// input product of a sequence at N = 1 (T = 100, H = 256: 5e7 flops) run on the threads
// that then split its steps.
// Checked on every call (from the calling thread, before any parallel region): someone else
// (threadpoolctl, a user) may have given OpenBLAS threads since, and each part would then start
// its own threads on cores that are already busy.
inline void one_blas_thread() {
    if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

// Sizes are validated in Python to fit in int (BLAS uses 32-bit indices).
template <class T>
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha, const T* a,
          std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c, std::int64_t ldc) {
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS would still scale C by beta; keep that meaning explicitly
        for (std::int64_t i = 0; i < m; ++i)
            for (std::int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
        return;
    }
    one_blas_thread();
    const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    if (m == 1) {
        BlasCall in_blas;  // a fork waits until this call is done
        if (beta == T(0))  // scratch may hold NaN patterns; BLAS is not required to ignore them
            for (std::int64_t j = 0; j < n; ++j) c[j] = T(0);
        // One output row: sgemm is ~6x slower than sgemv here (OpenBLAS); use op(B)^T * a.
        const int inc_a = trans_a ? int(lda) : 1;
        if (trans_b)  // B is [n, k]
            blas_detail::gemv(CblasNoTrans, int(n), int(k), alpha, b, int(ldb), a, inc_a, beta, c);
        else  // B is [k, n]
            blas_detail::gemv(CblasTrans, int(k), int(n), alpha, b, int(ldb), a, inc_a, beta, c);
        return;
    }
    const double flops = 2.0 * double(m) * double(n) * double(k);
    constexpr double kSplitFlops = 2e7;
    const int threads = flops >= kSplitFlops ? int(std::min<std::int64_t>(get_num_threads(), m / 16)) : 1;
    auto rows = [&](std::int64_t i0, std::int64_t i1) {
        if (i1 <= i0) return;
        BlasCall in_blas;  // per thread, never around parallel_run: a fork waits for each call
        const T* a0 = trans_a ? a + i0 : a + i0 * lda;  // op(A) row i0
        blas_detail::gemm(ta, tb, int(i1 - i0), int(n), int(k), alpha, a0, int(lda), b, int(ldb), beta,
                          c + i0 * ldc, int(ldc));
    };
    if (threads <= 1) {
        rows(0, m);
        return;
    }
    parallel_run(threads, [&](int tid, int nt) { rows(m * tid / nt, m * (tid + 1) / nt); }, "gemm");
}

}  // namespace fastrnn
