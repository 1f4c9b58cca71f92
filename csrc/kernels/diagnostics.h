// The gradient diagnostics recorded inside BPTT (fastrnn.diagnostics): per step, the squared norm
// of the total dL/dh_t (and dL/dc_t) over a thread's units, and the propagation records (what
// arrived through the recurrence against the previous step's state gradient). Sums run in
// double, per thread, and the driver adds the threads up in thread order.
#pragma once
#include "step_common.h"

#ifndef FASTRNN_ISA_NS
#error "include from an ISA kernel file that defines FASTRNN_ISA_NS"
#endif

namespace fastrnn {
namespace FASTRNN_ISA_NS {

// Sum of squares in double with 8 independent accumulators (one chain would be latency-bound,
// and the compiler may not reorder a floating-point reduction by itself).
template <class T>
double sum_squares(const T* v, i64 n) {
    double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    i64 j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k) a[k] += double(v[j + k]) * double(v[j + k]);
    for (; j < n; ++j) a[0] += double(v[j]) * double(v[j]);
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// dh_total = carry + recurrent part (tile, times the recurrent dropout mask) + dL/dy_t into the
// tile row. With `sq` (diagnostics), adds the sums of squares of what arrived through the
// recurrence (carry + tile) to sq[0] and of the total to sq[1].
template <class T>
void gather_state_grad(T* tile_row, const T* carry, const T* dy, const T* rmask, i64 cnt, double* sq) {
    if (rmask)
        for (i64 j = 0; j < cnt; ++j) tile_row[j] = tile_row[j] * rmask[j] + carry[j];
    else
        for (i64 j = 0; j < cnt; ++j) tile_row[j] += carry[j];
    if (sq) sq[0] += sum_squares(tile_row, cnt);
    if (dy)
        for (i64 j = 0; j < cnt; ++j) tile_row[j] += dy[j];
    if (sq) sq[1] += dy ? sum_squares(tile_row, cnt) : sq[0];
}

// The diagnostics of one row's units at a step: the total dL/dh_t norm, and for the
// propagation records what arrived through the recurrence and the state gradient, with c_in the
// squares of the LSTM's arriving dL/dc_t (c_arrival).
template <class T>
void record_state_grad(const ThreadCtx<T>& tc, i64 N, i64 t, i64 n, const double* sq, double c_in) {
    tc.grad_h_sq[t] += sq[1];
    if (tc.rows) {
        tc.rows[n] += sq[0] + c_in;      // arrived through the recurrence
        tc.rows[N + n] += sq[1] + c_in;  // the state gradient at this step
    }
}

// Sum of squares of the LSTM's dL/dc_t arriving from step t+1 (own units), for the propagation
// records (0 when they are off).
template <class T>
double c_arrival(const Recurrence<T>& r, const ThreadCtx<T>& tc, i64 n, i64 u0, i64 cnt) {
    return tc.rows ? sum_squares(r.dc + n * r.H + u0, cnt) : 0.0;
}

// Per-row sums of this step (this thread's units) -> the propagation records: for rows valid at
// this step and at the step BPTT processed before it, what arrived through the recurrence and
// what that previous step's state gradient was. rows: [carried, state, previous state] x N.
template <class T>
void record_propagation(const Recurrence<T>& r, ThreadCtx<T>& tc, i64 s, i64 t) {
    const i64 N = r.N, tp = s > 0 ? bptt_time_of(r, s - 1) : -1;
    double *carried = tc.rows, *state = tc.rows + N, *previous = tc.rows + 2 * N;
    for (i64 n = 0; n < N; ++n) {
        const bool now = row_valid(r.lengths, n, t), before = tp >= 0 && row_valid(r.lengths, n, tp);
        if (now && before) {
            tc.carried_sq[t] += carried[n];
            tc.prev_state_sq[t] += previous[n];
        }
        previous[n] = now ? state[n] : 0.0;
        carried[n] = state[n] = 0.0;
    }
}

template <class T>
inline void record_dc(ThreadCtx<T>& tc, i64 t, i64 cnt) {
    if (tc.grad_c_sq) tc.grad_c_sq[t] += sum_squares(tc.dc_total, cnt);
}

}  // namespace FASTRNN_ISA_NS
}  // namespace fastrnn
