# cython: language_level=3, boundscheck=False, wraparound=False
"""LSTM inference through fastrnn's C ABI from Cython, without the GIL.

lstm_forward runs one forward with the GIL released (other Python threads keep running);
lstm_forward_streams runs independent streams in parallel, a prange over them.
`params` is every parameter of the layer in one flat array, in PyTorch's order:
np.concatenate([p.ravel() for p in layer.params.values()]).
"""
cimport cython
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cimport fastrnn.cython.fastrnn as fr

import numpy as np

import fastrnn  # noqa: F401  (loads libfastrnn.so and its BLAS the way Python callers expect)


cdef _raise(int status):
    raise ValueError(f"{fr.fastrnn_status_name(status).decode()}: {fr.fastrnn_last_error().decode()}")


def lstm_forward(const cython.floating[::1] params, const cython.floating[:, :, ::1] x, int hidden_size,
                 int num_layers=1, bint bidirectional=False, const int64_t[::1] lengths=None):
    """Inference forward of an LSTM: returns y [T, N, D*H], (h_n, c_n) [L*D, N, H]."""
    D = 2 if bidirectional else 1
    dtype = np.float32 if cython.floating is float else np.float64
    y = np.empty((x.shape[0], x.shape[1], D * hidden_size), dtype)
    h_n = np.empty((num_layers * D, x.shape[1], hidden_size), dtype)
    c_n = np.empty_like(h_n)
    cdef cython.floating[:, :, ::1] yv = y, hv = h_n, cv = c_n
    cdef int status
    with nogil:
        if cython.floating is float:
            status = fr.lstm_forward_f32(params, x, yv, hv, cv, None, None, lengths)
        else:
            status = fr.lstm_forward_f64(params, x, yv, hv, cv, None, None, lengths)
    if status != fr.FASTRNN_OK:
        _raise(status)
    return y, (h_n, c_n)


def lstm_forward_streams(const float[::1] params, const float[:, :, :, ::1] xs, int hidden_size,
                         int num_layers=1, bint bidirectional=False, int num_threads=2):
    """Independent streams xs [S, T, N, C] (float32) on `num_threads` OpenMP threads, one
    fastrnn forward per stream: returns ys [S, T, N, D*H], h_n and c_n [S, L*D, N, H].

    Each call runs on its own thread; with fastrnn.set_num_threads(1) none waits for fastrnn's
    pool (the results are the same either way).
    """
    D = 2 if bidirectional else 1
    S = xs.shape[0]
    ys = np.empty((S, xs.shape[1], xs.shape[2], D * hidden_size), np.float32)
    hs = np.empty((S, num_layers * D, xs.shape[2], hidden_size), np.float32)
    cs = np.empty_like(hs)
    status = np.zeros(S, np.intc)
    cdef float[:, :, :, ::1] yv = ys, hv = hs, cv = cs
    cdef int[::1] sv = status
    cdef Py_ssize_t s
    for s in prange(S, nogil=True, num_threads=num_threads, schedule="dynamic"):
        sv[s] = fr.lstm_forward_f32(params, xs[s], yv[s], hv[s], cv[s])
    for s in range(S):
        if sv[s] != fr.FASTRNN_OK:  # the message is the failing thread's: rerun here to get it
            _raise(fr.lstm_forward_f32(params, xs[s], yv[s], hv[s], cv[s]))
    return ys, hs, cs


def lstm_stream_steps(const float[::1] params, const float[:, :, ::1] x, int hidden_size, int num_layers=1):
    """A streaming LSTM (fastrnn_stream_*), one step per call without the GIL: x [T, N, C] float32
    fed one step at a time, the state carried; returns y [T, N, H] and the final (h, c) [L, N, H].
    The same numbers as one forward over the whole sequence."""
    cdef fr.fastrnn_desc d
    cdef fr.fastrnn_plan* plan = NULL
    cdef fr.fastrnn_stream* stream = NULL
    cdef int status
    cdef Py_ssize_t t, T = x.shape[0], N = x.shape[1]
    fr.fastrnn_desc_init(&d)
    d.cell, d.dtype, d.input_size, d.hidden_size, d.num_layers = fr.FASTRNN_LSTM, fr.FASTRNN_FLOAT32, x.shape[2], \
        hidden_size, num_layers
    y = np.empty((T, N, hidden_size), np.float32)
    h = np.empty((num_layers, N, hidden_size), np.float32)
    c = np.empty_like(h)
    cdef float[:, :, ::1] yv = y, hv = h, cv = c
    status = fr.fastrnn_plan_create(&d, NULL, &plan)
    if status != fr.FASTRNN_OK:
        _raise(status)
    try:
        status = fr.fastrnn_plan_set_params(plan, &params[0], NULL)
        if status == fr.FASTRNN_OK:
            status = fr.fastrnn_stream_create(plan, N, 0.0, 0.0, &stream)
        if status != fr.FASTRNN_OK:
            _raise(status)
        with nogil:
            for t in range(T):
                status = fr.fastrnn_stream_step(stream, 1, &x[t, 0, 0], &yv[t, 0, 0], NULL)
                if status != fr.FASTRNN_OK:
                    break
            if status == fr.FASTRNN_OK:
                status = fr.fastrnn_stream_get_state(stream, &hv[0, 0, 0], &cv[0, 0, 0])
        if status != fr.FASTRNN_OK:
            _raise(status)
    finally:
        fr.fastrnn_stream_destroy(stream)
        fr.fastrnn_plan_destroy(plan)
    return y, (h, c)
