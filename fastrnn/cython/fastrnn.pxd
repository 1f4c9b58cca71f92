# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# Cython declarations of the fastrnn C ABI (fastrnn/include/fastrnn/fastrnn.h), all `nogil`,
# plus typed-memoryview helpers that run a forward pass without the GIL.
#
#     cimport fastrnn.cython.fastrnn as fr
#
#     with nogil:
#         status = fr.lstm_forward_f32(params, x, y, h_n, c_n)        # inside prange too
#
# Build the extension with include_dirs=[fastrnn.get_include()], libraries=[":libfastrnn.so.1"],
# library_dirs and runtime_library_dirs=[fastrnn.get_library_dir()] (docs/embed.md).
# See fastrnn.h for the meaning of every field and argument; this file only mirrors it.
# No bounds checks (header directives): the helpers check every shape before taking an address.
#
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.stdio cimport snprintf

cdef extern from "fastrnn/fastrnn.h" nogil:
    enum:
        FASTRNN_VERSION_MAJOR
        FASTRNN_VERSION_MINOR
        FASTRNN_VERSION_PATCH
        FASTRNN_VERSION
        FASTRNN_ABI_VERSION

    ctypedef int fastrnn_status
    enum fastrnn_status_code:
        FASTRNN_OK
        FASTRNN_ERR_INVALID
        FASTRNN_ERR_NOMEM
        FASTRNN_ERR_UNSUPPORTED
        FASTRNN_ERR_VERSION
        FASTRNN_ERR_INTERNAL

    const char* fastrnn_last_error()
    const char* fastrnn_status_name(fastrnn_status status)
    void fastrnn_set_last_error(const char* message)

    int fastrnn_version()
    const char* fastrnn_version_string()
    int fastrnn_abi_version()
    fastrnn_status fastrnn_check_version(int abi_version, int version)
    fastrnn_status FASTRNN_CHECK_VERSION()

    enum fastrnn_cell:
        FASTRNN_RNN_TANH
        FASTRNN_RNN_RELU
        FASTRNN_LSTM
        FASTRNN_GRU
        FASTRNN_LIGRU
        FASTRNN_SLIGRU

    enum fastrnn_dtype:
        FASTRNN_FLOAT32
        FASTRNN_FLOAT64

    ctypedef struct fastrnn_desc:
        uint32_t struct_size
        int32_t cell
        int32_t dtype
        int32_t bias
        int32_t reset_after
        int32_t reserved0
        int64_t seq_len
        int64_t batch
        int64_t input_size
        int64_t hidden_size
        int64_t num_layers
        int64_t num_directions

    fastrnn_status fastrnn_desc_init(fastrnn_desc* desc)

    ctypedef struct fastrnn_weights:
        const void* weight_ih
        const void* weight_hh
        const void* bias_ih
        const void* bias_hh

    ctypedef struct fastrnn_grads:
        void* weight_ih
        void* weight_hh
        void* bias_ih
        void* bias_hh

    fastrnn_status fastrnn_param_count(const fastrnn_desc* desc, int64_t* count)
    fastrnn_status fastrnn_weights_from_flat(const fastrnn_desc* desc, const void* params, int64_t count,
                                             fastrnn_weights* out, int64_t out_len)
    fastrnn_status fastrnn_grads_from_flat(const fastrnn_desc* desc, void* grads, int64_t count,
                                           fastrnn_grads* out, int64_t out_len)

    fastrnn_status fastrnn_cache_size(const fastrnn_desc* desc, int dropout, size_t* bytes)

    enum fastrnn_pass:
        FASTRNN_PASS_INFERENCE
        FASTRNN_PASS_TRAINING
        FASTRNN_PASS_BACKWARD
        FASTRNN_PASS_BACKWARD_RETAIN
    fastrnn_status fastrnn_workspace_size(const fastrnn_desc* desc, int pass_, size_t* bytes)

    ctypedef struct fastrnn_forward_options:
        uint32_t struct_size
        int32_t reserved0
        const void* dropout_masks

    fastrnn_status fastrnn_forward(const fastrnn_desc* desc, const fastrnn_weights* weights, const void* x,
                                   const void* h0, const void* c0, const int64_t* lengths, void* y,
                                   void* h_n, void* c_n, void* cache, size_t cache_bytes,
                                   const fastrnn_forward_options* options)

    ctypedef struct fastrnn_backward_options:
        uint32_t struct_size
        int32_t retain
        double bptt_clip
        const void* dropout_masks
        double* grad_h_sq
        double* grad_c_sq

    fastrnn_status fastrnn_backward(const fastrnn_desc* desc, const fastrnn_weights* weights, const void* x,
                                    const int64_t* lengths, void* cache, size_t cache_bytes,
                                    const void* grad_y, const void* grad_h_n, const void* grad_c_n,
                                    void* grad_x, void* grad_h0, void* grad_c0, const fastrnn_grads* grads,
                                    const fastrnn_backward_options* options)

    ctypedef struct fastrnn_plan:
        pass

    enum fastrnn_activation:
        FASTRNN_ACT_RELU
        FASTRNN_ACT_TANH
        FASTRNN_ACT_SIN
        FASTRNN_ACT_LEAKY_RELU

    enum fastrnn_normalization:
        FASTRNN_NORM_NONE
        FASTRNN_NORM_BATCH
        FASTRNN_NORM_LAYER

    enum fastrnn_compute:
        FASTRNN_COMPUTE_DEFAULT
        FASTRNN_COMPUTE_INT8
        FASTRNN_COMPUTE_BF16

    ctypedef struct fastrnn_plan_options:
        uint32_t struct_size
        int32_t peephole
        int64_t proj_size
        int32_t layer_norm
        int32_t zoneout_c
        int32_t activation
        int32_t normalization
        double bn_momentum
        int32_t recurrent_affine
        int32_t compute  # enum fastrnn_compute

    fastrnn_status fastrnn_plan_options_init(fastrnn_plan_options* options)
    fastrnn_status fastrnn_plan_create(const fastrnn_desc* desc, const fastrnn_plan_options* options,
                                       fastrnn_plan** plan)
    void fastrnn_plan_destroy(fastrnn_plan* plan)
    fastrnn_status fastrnn_plan_param_count(const fastrnn_plan* plan, int64_t* params, int64_t* buffers)

    ctypedef struct fastrnn_tensor_info:
        uint32_t struct_size
        int32_t buffer
        const char* name
        int64_t ndim
        int64_t shape[2]
        int64_t offset
        int64_t layer
        int64_t direction

    fastrnn_status fastrnn_plan_tensor_count(const fastrnn_plan* plan, int64_t* count)
    fastrnn_status fastrnn_plan_tensor_info(const fastrnn_plan* plan, int64_t index, fastrnn_tensor_info* info)
    fastrnn_status fastrnn_plan_set_params(fastrnn_plan* plan, const void* params, void* buffers)

    ctypedef struct fastrnn_plan_call_options:
        uint32_t struct_size
        int32_t bn_frozen
        const void* dropout_masks
        const void* recurrent_dropout
        const void* zoneout_h
        const void* zoneout_c
        double zoneout_h_rate
        double zoneout_c_rate
        const void* weight_drop
        const void* candidate_dropout

    fastrnn_status fastrnn_plan_cache_size(const fastrnn_plan* plan, int64_t seq_len, int64_t batch, int dropout,
                                           size_t* bytes)
    fastrnn_status fastrnn_plan_forward(const fastrnn_plan* plan, int64_t seq_len, int64_t batch, const void* x,
                                        const void* h0, const void* c0, const int64_t* lengths, void* y,
                                        void* h_n, void* c_n, void* cache, size_t cache_bytes,
                                        const fastrnn_plan_call_options* call)
    fastrnn_status fastrnn_plan_backward(const fastrnn_plan* plan, const void* x, const int64_t* lengths,
                                         void* cache, size_t cache_bytes, const void* grad_y,
                                         const void* grad_h_n, const void* grad_c_n, void* grad_x,
                                         void* grad_h0, void* grad_c0, void* grads,
                                         const fastrnn_plan_call_options* call,
                                         const fastrnn_backward_options* options)
    fastrnn_status fastrnn_plan_packed_bytes(const fastrnn_plan* plan, size_t* bytes)

    ctypedef struct fastrnn_stream:
        pass

    fastrnn_status fastrnn_stream_create(const fastrnn_plan* plan, int64_t batch, double zoneout_h_rate,
                                         double zoneout_c_rate, fastrnn_stream** stream)
    void fastrnn_stream_destroy(fastrnn_stream* stream)
    fastrnn_status fastrnn_stream_step(fastrnn_stream* stream, int64_t steps, const void* x, void* y,
                                       const uint8_t* active)
    fastrnn_status fastrnn_stream_reset(fastrnn_stream* stream, const int64_t* slots, int64_t count)
    fastrnn_status fastrnn_stream_get_state(const fastrnn_stream* stream, void* h, void* c)
    fastrnn_status fastrnn_stream_set_state(fastrnn_stream* stream, const void* h, const void* c)

    fastrnn_status fastrnn_set_num_threads(int n)
    int fastrnn_get_num_threads()
    const char* fastrnn_get_isa()
    const char* fastrnn_available_isa(int i)
    fastrnn_status fastrnn_set_isa(const char* name)


# ---- typed-memoryview helpers ------------------------------------------------------------------
#
# forward_f32 / forward_f64 run an inference forward of `cell` (an enum fastrnn_cell value) on
# C-contiguous memoryviews, taking every size from the shapes:
#   params  [P]          all parameters, flat, PyTorch order (np.concatenate of layer.params);
#                        with or without biases, told apart by P
#   x       [T, N, C]    input (time-major)
#   y       [T, N, D*H]  output; D (1 or 2) = y.shape[2] // H
#   h_n     [L*D, N, H]  final hidden state; H = h_n.shape[2], L = h_n.shape[0] // D
#   c_n     [L*D, N, H]  LSTM final cell state (None for the other cells)
#   h0, c0  [L*D, N, H]  initial states, or None (zeros)
#   lengths [N] int64    or None (every sequence has length T)
# GRU runs PyTorch's reset_after variant (use fastrnn_forward directly for the other one).
# They return a fastrnn_status; on failure fastrnn_last_error() names the argument. They need no
# GIL, so they can run inside `with nogil:` or a prange over independent streams.

ctypedef fused _real:
    float
    double


cdef inline fastrnn_status _shape_error(const char* fn, const char* name, Py_ssize_t got,
                                        Py_ssize_t want) noexcept nogil:
    cdef char msg[200]
    snprintf(msg, sizeof(msg), "%s: %s has %zd, expected %zd (see fastrnn/cython/fastrnn.pxd)", fn, name, got, want)
    fastrnn_set_last_error(msg)
    return FASTRNN_ERR_INVALID


cdef inline fastrnn_status _check_state(const char* fn, const char* name, const _real[:, :, ::1] s,
                                        const _real[:, :, ::1] h_n) noexcept nogil:
    cdef int k
    for k in range(3):
        if s.shape[k] != h_n.shape[k]:
            return _shape_error(fn, name, s.shape[k], h_n.shape[k])
    return FASTRNN_OK


cdef inline fastrnn_status _forward(const char* fn, int cell, const _real[::1] params, const _real[:, :, ::1] x,
                                    _real[:, :, ::1] y, _real[:, :, ::1] h_n, _real[:, :, ::1] c_n,
                                    const _real[:, :, ::1] h0, const _real[:, :, ::1] c0,
                                    const int64_t[::1] lengths) noexcept nogil:
    cdef fastrnn_desc d
    cdef fastrnn_weights* w
    cdef int64_t count
    cdef fastrnn_status s
    fastrnn_desc_init(&d)
    d.cell = cell
    d.dtype = FASTRNN_FLOAT32 if _real is float else FASTRNN_FLOAT64
    d.seq_len = x.shape[0]
    d.batch = x.shape[1]
    d.input_size = x.shape[2]
    d.hidden_size = h_n.shape[2]
    if d.hidden_size < 1:
        return _shape_error(fn, "h_n.shape[2] (H)", h_n.shape[2], 1)
    d.num_directions = y.shape[2] // d.hidden_size
    if y.shape[2] != d.num_directions * d.hidden_size or not 1 <= d.num_directions <= 2:
        return _shape_error(fn, "y.shape[2] (H, or 2*H if bidirectional)", y.shape[2], d.hidden_size)
    d.num_layers = h_n.shape[0] // d.num_directions
    s = fastrnn_param_count(&d, &count)  # validates the sizes (all >= 1, D in {1, 2}) first
    if s != FASTRNN_OK:
        return s
    if h_n.shape[0] != d.num_layers * d.num_directions:
        return _shape_error(fn, "h_n.shape[0] (L*D)", h_n.shape[0], d.num_layers * d.num_directions)
    if y.shape[0] != x.shape[0] or y.shape[1] != x.shape[1]:
        return _shape_error(fn, "y.shape[0] * y.shape[1] (T*N)", y.shape[0] * y.shape[1], x.shape[0] * x.shape[1])
    if h_n.shape[1] != x.shape[1]:
        return _shape_error(fn, "h_n.shape[1] (N)", h_n.shape[1], x.shape[1])
    if c_n is not None and _check_state(fn, "c_n.shape[k]", c_n, h_n):
        return FASTRNN_ERR_INVALID
    if h0 is not None and _check_state(fn, "h0.shape[k]", h0, h_n):
        return FASTRNN_ERR_INVALID
    if c0 is not None and _check_state(fn, "c0.shape[k]", c0, h_n):
        return FASTRNN_ERR_INVALID
    if lengths is not None and lengths.shape[0] != x.shape[1]:
        return _shape_error(fn, "lengths.shape[0] (N)", lengths.shape[0], x.shape[1])
    if count != params.shape[0]:
        d.bias = 0
        s = fastrnn_param_count(&d, &count)
        if s == FASTRNN_OK and count != params.shape[0]:
            d.bias = 1
    w = <fastrnn_weights*>malloc(sizeof(fastrnn_weights) * d.num_layers * d.num_directions)
    if w == NULL:
        fastrnn_set_last_error("fastrnn.pxd: out of memory")
        return FASTRNN_ERR_NOMEM
    s = fastrnn_weights_from_flat(&d, &params[0] if params.shape[0] else NULL, params.shape[0], w,
                                  d.num_layers * d.num_directions)
    if s == FASTRNN_OK:
        s = fastrnn_forward(&d, w, &x[0, 0, 0], &h0[0, 0, 0] if h0 is not None else NULL,
                            &c0[0, 0, 0] if c0 is not None else NULL,
                            &lengths[0] if lengths is not None else NULL, &y[0, 0, 0], &h_n[0, 0, 0],
                            &c_n[0, 0, 0] if c_n is not None else NULL, NULL, 0, NULL)
    free(w)
    return s


cdef inline fastrnn_status forward_f32(int cell, const float[::1] params, const float[:, :, ::1] x,
                                       float[:, :, ::1] y, float[:, :, ::1] h_n, float[:, :, ::1] c_n=None,
                                       const float[:, :, ::1] h0=None, const float[:, :, ::1] c0=None,
                                       const int64_t[::1] lengths=None) noexcept nogil:
    return _forward("forward_f32", cell, params, x, y, h_n, c_n, h0, c0, lengths)


cdef inline fastrnn_status forward_f64(int cell, const double[::1] params, const double[:, :, ::1] x,
                                       double[:, :, ::1] y, double[:, :, ::1] h_n, double[:, :, ::1] c_n=None,
                                       const double[:, :, ::1] h0=None, const double[:, :, ::1] c0=None,
                                       const int64_t[::1] lengths=None) noexcept nogil:
    return _forward("forward_f64", cell, params, x, y, h_n, c_n, h0, c0, lengths)


cdef inline fastrnn_status lstm_forward_f32(const float[::1] params, const float[:, :, ::1] x,
                                            float[:, :, ::1] y, float[:, :, ::1] h_n, float[:, :, ::1] c_n,
                                            const float[:, :, ::1] h0=None, const float[:, :, ::1] c0=None,
                                            const int64_t[::1] lengths=None) noexcept nogil:
    return _forward("lstm_forward_f32", FASTRNN_LSTM, params, x, y, h_n, c_n, h0, c0, lengths)


cdef inline fastrnn_status lstm_forward_f64(const double[::1] params, const double[:, :, ::1] x,
                                            double[:, :, ::1] y, double[:, :, ::1] h_n, double[:, :, ::1] c_n,
                                            const double[:, :, ::1] h0=None, const double[:, :, ::1] c0=None,
                                            const int64_t[::1] lengths=None) noexcept nogil:
    return _forward("lstm_forward_f64", FASTRNN_LSTM, params, x, y, h_n, c_n, h0, c0, lengths)
