/*
 * fastrnn C ABI: fused CPU kernels for RNN (tanh/relu), LSTM, GRU, Li-GRU and SLi-GRU, forward
 * and BPTT.
 *
 * Plain C (C89 and later, and C++). No C++ type or exception crosses this interface: every
 * function that can fail returns a fastrnn_status and, on failure, leaves a message naming the
 * function and the offending field in fastrnn_last_error() (per thread).
 *
 * Conventions (the same as the Python API, see docs/design.md, "Conventions"):
 *   T steps, N batch, C input features, H hidden units, L layers, D directions (1 or 2),
 *   G gates (RNN 1, Li-GRU and SLi-GRU 2, GRU 3, LSTM 4). Arrays are dense, row-major (C order), time-major:
 *   x [T, N, C], y [T, N, D*H], states h0/c0/h_n/c_n [L*D, N, H] (entry l*D + d; d = 1 is the
 *   reverse direction). Every float array of a call has the descriptor's dtype. Gate order and
 *   weight layout are PyTorch's: per layer l and direction d
 *   weight_ih [G*H, C_l] (C_0 = C, else D*H), weight_hh [G*H, H], bias_ih [G*H], bias_hh [G*H].
 *   lengths [N] (int64, each in [1, T]) or NULL: steps past a sequence's length give zero output
 *   and leave its state alone, so h_n is the state at its last valid step (packed sequences).
 *   Buffers must not overlap unless a function says otherwise.
 *
 * ABI stability (how this header grows without breaking compiled callers):
 *   - Functions are never removed or changed within one FASTRNN_ABI_VERSION; new ones are added.
 *   - Structs a caller passes in (fastrnn_desc, fastrnn_*_options) start with `struct_size`,
 *     which the caller sets to sizeof() as compiled (fastrnn_desc_init does it). New fields are
 *     only appended, and a new field's zero value always means the old behaviour. The library
 *     reads the first struct_size bytes; a caller compiled against a newer header works with an
 *     older library as long as every field the older library does not know is zero (otherwise:
 *     FASTRNN_ERR_UNSUPPORTED). Reserved fields must be zero.
 *   - fastrnn_weights / fastrnn_grads (arrays of L*D entries) are frozen: tensors of future
 *     cell variants (projection, peepholes, layer norm) will come as separate arrays in the
 *     option structs, NULL meaning "not used".
 *   - fastrnn_forward / fastrnn_backward serve the plain cells only. The plans (fastrnn_plan_*,
 *     since 0.2) serve every cell and variant of the Python API: LSTMP, peepholes, LayerNorm
 *     LSTM/GRU, Li-GRU and SLi-GRU, recurrent dropout, zoneout, DropConnect (docs/variants.md).
 *   - Enum values are explicit and never reused; int32 fields hold them in structs.
 *   Check at start-up that the loaded library can serve this header: FASTRNN_CHECK_VERSION().
 *
 * Threads: the calls are reentrant; several threads may run forward/backward at once (each
 * uses its own buffers). fastrnn's own thread pool serves one call at a time; a call that finds
 * it busy runs on its calling thread alone (same results, bitwise). A C program starts with one
 * fastrnn thread (Python's `import fastrnn` sets FASTRNN_NUM_THREADS or all cores); thread
 * count and ISA are process-wide and shared with the Python module.
 *
 * Linking: pkg-config fastrnn, or CMake find_package(fastrnn) (target fastrnn::fastrnn); by
 * hand -l:libfastrnn.so.1 (soname libfastrnn.so.<FASTRNN_ABI_VERSION>; the installed package has
 * no unversioned libfastrnn.so). The fastrnn_* functions carry the symbol version FASTRNN_1;
 * the library exports nothing else for callers (FASTRNN_PRIVATE is fastrnn's own). It finds
 * the BLAS of the scipy-openblas32 wheel through its run path $ORIGIN/../../scipy_openblas32/lib
 * (both installed in the same site-packages).
 */
#ifndef FASTRNN_FASTRNN_H
#define FASTRNN_FASTRNN_H

#include <stddef.h>
#include <stdint.h>

#define FASTRNN_VERSION_MAJOR 0
#define FASTRNN_VERSION_MINOR 2
#define FASTRNN_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH */
#define FASTRNN_VERSION (FASTRNN_VERSION_MAJOR * 10000 + FASTRNN_VERSION_MINOR * 100 + FASTRNN_VERSION_PATCH)
/* Bumped only by an incompatible change of this interface. */
#define FASTRNN_ABI_VERSION 1

#if defined(_WIN32)
#if defined(FASTRNN_BUILDING)
#define FASTRNN_API __declspec(dllexport)
#else
#define FASTRNN_API __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define FASTRNN_API __attribute__((visibility("default")))
#else
#define FASTRNN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status ------------------------------------------------------------------------------ */

typedef int fastrnn_status;
enum fastrnn_status_code {
    FASTRNN_OK = 0,
    FASTRNN_ERR_INVALID = 1,     /* an argument is invalid; the message names it */
    FASTRNN_ERR_NOMEM = 2,       /* scratch memory could not be allocated */
    FASTRNN_ERR_UNSUPPORTED = 3, /* a struct sets fields this (older) library does not know */
    FASTRNN_ERR_VERSION = 4,     /* fastrnn_check_version: header and library are incompatible */
    FASTRNN_ERR_INTERNAL = 5     /* unexpected failure inside fastrnn (a bug: please report) */
};

/* Message of the last call on this thread that returned a status: "" after a success. Valid
 * until the next fastrnn call on this thread. */
FASTRNN_API const char* fastrnn_last_error(void);
/* "FASTRNN_OK", "FASTRNN_ERR_INVALID", ...; "unknown status" for other values. */
FASTRNN_API const char* fastrnn_status_name(fastrnn_status status);
/* For wrappers built on this ABI: sets this thread's fastrnn_last_error() (NULL: ""). */
FASTRNN_API void fastrnn_set_last_error(const char* message);

/* ---- Version ----------------------------------------------------------------------------- */

FASTRNN_API int fastrnn_version(void);                /* FASTRNN_VERSION of the loaded library */
FASTRNN_API const char* fastrnn_version_string(void); /* "MAJOR.MINOR.PATCH" */
FASTRNN_API int fastrnn_abi_version(void);            /* FASTRNN_ABI_VERSION of the library */
/* FASTRNN_OK when the loaded library serves code compiled against header `version` with ABI
 * `abi_version`: same ABI, same major version, and a library minor version at least the
 * header's (a newer header may declare functions an older library lacks).
 * Else FASTRNN_ERR_VERSION with both versions in the message. */
FASTRNN_API fastrnn_status fastrnn_check_version(int abi_version, int version);
#define FASTRNN_CHECK_VERSION() fastrnn_check_version(FASTRNN_ABI_VERSION, FASTRNN_VERSION)

/* ---- Descriptor -------------------------------------------------------------------------- */

enum fastrnn_cell {
    FASTRNN_RNN_TANH = 0, /* h' = tanh(W_ih x + b_ih + W_hh h + b_hh) */
    FASTRNN_RNN_RELU = 1, /* the same with relu */
    FASTRNN_LSTM = 2,     /* gates i, f, g, o (PyTorch) */
    FASTRNN_GRU = 3,      /* gates r, z, n (PyTorch); see reset_after */
    FASTRNN_LIGRU = 4,    /* Light GRU (SpeechBrain's LiGRU): gates a, z; plans only (below) */
    FASTRNN_SLIGRU = 5    /* SLi-GRU: Li-GRU with a LayerNorm of W_hh h; plans only */
};

enum fastrnn_dtype { FASTRNN_FLOAT32 = 1, FASTRNN_FLOAT64 = 2 };

/* A stack of L recurrent layers with D directions, for inputs of T steps and N sequences.
 * Start from fastrnn_desc_init(&desc), then set the fields. */
typedef struct fastrnn_desc {
    uint32_t struct_size;   /* sizeof(fastrnn_desc) as compiled by the caller */
    int32_t cell;           /* enum fastrnn_cell (default FASTRNN_LSTM) */
    int32_t dtype;          /* enum fastrnn_dtype of every float array (default FASTRNN_FLOAT32) */
    int32_t bias;           /* 1: b_ih and b_hh are used (default); 0: no biases */
    int32_t reset_after;    /* GRU: 1 (default) n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), PyTorch;
                               0: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), Keras v1 / ONNX.
                               0 or 1 for the other cells (ignored) */
    int32_t reserved0;      /* must be 0 */
    int64_t seq_len;        /* T >= 1 */
    int64_t batch;          /* N >= 1 */
    int64_t input_size;     /* C >= 1 */
    int64_t hidden_size;    /* H >= 1 */
    int64_t num_layers;     /* L >= 1 (default 1) */
    int64_t num_directions; /* D: 1 (default) or 2 (bidirectional) */
} fastrnn_desc;

/* Zeroes *desc, sets struct_size and the defaults above (sizes stay 0: set them). */
FASTRNN_API fastrnn_status fastrnn_desc_init_(fastrnn_desc* desc, size_t struct_size);
#define fastrnn_desc_init(desc) fastrnn_desc_init_((desc), sizeof(fastrnn_desc))

/* ---- Weights ----------------------------------------------------------------------------- */

/* One layer-direction's parameters (PyTorch layout, dtype of the descriptor). Calls take an
 * array of L*D of them, entry l*D + d. Biases are NULL exactly when desc->bias == 0. */
typedef struct fastrnn_weights {
    const void* weight_ih; /* [G*H, C_l] */
    const void* weight_hh; /* [G*H, H] */
    const void* bias_ih;   /* [G*H] */
    const void* bias_hh;   /* [G*H] */
} fastrnn_weights;

/* Parameter gradients, same layout; fastrnn_backward adds (+=) into them. */
typedef struct fastrnn_grads {
    void* weight_ih;
    void* weight_hh;
    void* bias_ih;
    void* bias_hh;
} fastrnn_grads;

/* Flat layout: all parameters in one array, in PyTorch's order (torch.nn.LSTM's
 * named_parameters / fastrnn's layer.params): for l in 0..L-1, for d in 0..D-1:
 * weight_ih, weight_hh, then (if bias) bias_ih, bias_hh, each dense row-major.
 * fastrnn_param_count gives its length in elements. */
FASTRNN_API fastrnn_status fastrnn_param_count(const fastrnn_desc* desc, int64_t* count);
/* Fill out[0 .. L*D-1] with pointers into `params` (count elements, the flat layout).
 * out_len is the number of entries `out` has room for (at least L*D). */
FASTRNN_API fastrnn_status fastrnn_weights_from_flat(const fastrnn_desc* desc, const void* params, int64_t count,
                                                     fastrnn_weights* out, int64_t out_len);
FASTRNN_API fastrnn_status fastrnn_grads_from_flat(const fastrnn_desc* desc, void* grads, int64_t count,
                                                   fastrnn_grads* out, int64_t out_len);

/* ---- Sizes ------------------------------------------------------------------------------- */

/* Bytes of the training cache a forward fills and the backward reads (`dropout`: 1 when the
 * forward gets dropout masks, which keep the dropped inputs too). The caller allocates it; its
 * content is private (a small header lets fastrnn_backward check that it matches). */
FASTRNN_API fastrnn_status fastrnn_cache_size(const fastrnn_desc* desc, int dropout, size_t* bytes);

enum fastrnn_pass {
    FASTRNN_PASS_INFERENCE = 0,      /* fastrnn_forward without a cache */
    FASTRNN_PASS_TRAINING = 1,       /* fastrnn_forward with a cache */
    FASTRNN_PASS_BACKWARD = 2,       /* fastrnn_backward, retain = 0 */
    FASTRNN_PASS_BACKWARD_RETAIN = 3 /* fastrnn_backward, retain = 1 */
};
/* Upper bound of the scratch bytes one call allocates for itself (once per call, freed before
 * it returns), for the current thread count and ISA. Optional outputs passed as NULL add their
 * own size. Informational: callers never pass a workspace. */
FASTRNN_API fastrnn_status fastrnn_workspace_size(const fastrnn_desc* desc, int pass, size_t* bytes);

/* ---- Forward ----------------------------------------------------------------------------- */

typedef struct fastrnn_forward_options {
    uint32_t struct_size; /* sizeof(fastrnn_forward_options) */
    int32_t reserved0;    /* must be 0 */
    /* Training forward with L > 1 only: inter-layer dropout masks [L-1, T, N, D*H], already
     * scaled (0 or 1/(1-p)); layer l+1 reads layer l's output times mask l. NULL: no dropout.
     * The cache must then be sized with dropout = 1, and fastrnn_backward gets the same masks. */
    const void* dropout_masks;
} fastrnn_forward_options;

/* y = the stack applied to x. h0/c0 NULL: zeros. c0 and c_n are for LSTM only (NULL otherwise).
 * h_n/c_n NULL: not wanted. cache NULL: inference; else a training forward that fills `cache`
 * (cache_bytes >= fastrnn_cache_size) for fastrnn_backward. options may be NULL. */
FASTRNN_API fastrnn_status fastrnn_forward(const fastrnn_desc* desc, const fastrnn_weights* weights, const void* x,
                                           const void* h0, const void* c0, const int64_t* lengths, void* y,
                                           void* h_n, void* c_n, void* cache, size_t cache_bytes,
                                           const fastrnn_forward_options* options);

/* ---- Backward ---------------------------------------------------------------------------- */

typedef struct fastrnn_backward_options {
    uint32_t struct_size; /* sizeof(fastrnn_backward_options) */
    int32_t retain;       /* 1: keep the cache for more backward calls (costs a copy of the gates);
                             0: the cache is consumed (overwritten by the gate gradients) */
    double bptt_clip;     /* > 0: clip dL/d(gate pre-activations) to [-clip, clip] at every step
                             (Graves 2013, "Generating sequences with RNNs", eq. 23); 0: off */
    const void* dropout_masks; /* the masks the forward used: required exactly when it had some */
    double* grad_h_sq;    /* [L, D, T] or NULL: adds (+=) sum over batch and units of (dL/dh_t)^2,
                             the total gradient reaching h_t (vanishing/exploding diagnostics) */
    double* grad_c_sq;    /* LSTM, [L, D, T] or NULL: the same for dL/dc_t; needs grad_h_sq */
} fastrnn_backward_options;

/* Gradients of sum(y*grad_y) + sum(h_n*grad_h_n) + sum(c_n*grad_c_n) for the training forward
 * that filled `cache` (same desc, weights, x and lengths; NULL grad_* inputs are zeros).
 * Writes grad_x [T, N, C], grad_h0 and grad_c0 [L*D, N, H] (each NULL: not wanted), adds into
 * grads[0 .. L*D-1]. Gradients at padded steps (t >= lengths[n]) are ignored.
 * options may be NULL (retain 0, no clipping, no diagnostics). */
FASTRNN_API fastrnn_status fastrnn_backward(const fastrnn_desc* desc, const fastrnn_weights* weights, const void* x,
                                            const int64_t* lengths, void* cache, size_t cache_bytes,
                                            const void* grad_y, const void* grad_h_n, const void* grad_c_n,
                                            void* grad_x, void* grad_h0, void* grad_c0, const fastrnn_grads* grads,
                                            const fastrnn_backward_options* options);

/* ---- Plans -------------------------------------------------------------------------------- */

/* A plan is a layer stack configured once: its cell and variants, every size but T and N, and the
 * parameters it reads (two flat arrays the caller owns and keeps alive). Its settings are checked
 * when it is made; a call then passes only its own data (x, states, lengths, outputs, cache).
 * Inference calls reuse W_hh packed for the microkernel while the weights are unchanged: each
 * such call compares the weights with a copy taken when they were packed (one read of W_hh, no
 * write) and packs again when they differ, so a plan never computes with stale weights, whoever
 * writes the arrays (docs/design.md, "The plan"). Training calls pack into their own scratch.
 * The one exception: the streams of a plan with options->compute INT8 or BF16 convert the weights
 * at their first step and again after fastrnn_plan_set_params, not at every step (the comparison
 * would cost more than the step): call fastrnn_plan_set_params after writing new values.
 *
 * Threads: forward/backward calls on one plan may run at once from several threads (each with
 * its own buffers); fastrnn_plan_set_params and fastrnn_plan_destroy must not overlap a call on
 * the same plan. */
typedef struct fastrnn_plan fastrnn_plan; /* opaque */

/* Li-GRU: the candidate's nonlinearity (SpeechBrain's `nonlinearity`). */
enum fastrnn_activation {
    FASTRNN_ACT_RELU = 0,
    FASTRNN_ACT_TANH = 1,
    FASTRNN_ACT_SIN = 2,
    FASTRNN_ACT_LEAKY_RELU = 3 /* slope 0.01 */
};

/* Li-GRU: the normalization of the input projection W_ih x (SpeechBrain's `normalization`). */
enum fastrnn_normalization {
    FASTRNN_NORM_NONE = 0,  /* W_ih x + bias_ih (bias_ih present when desc->bias = 1) */
    FASTRNN_NORM_BATCH = 1, /* batch norm over the T*N rows (running statistics in inference) */
    FASTRNN_NORM_LAYER = 2  /* layer norm of each row over its 2H features */
};

/* What a plan's products compute in. */
enum fastrnn_compute {
    FASTRNN_COMPUTE_DEFAULT = 0, /* the plan's dtype */
    FASTRNN_COMPUTE_INT8 = 1,    /* float32 plans, inference: dynamic quantization (W per output row, the
                                  * inputs per row at each use, int32 sums; states and gates float32) */
    FASTRNN_COMPUTE_BF16 = 2     /* float32 plans, inference and training: the products' operands rounded to
                                  * bf16 (W once per call, the inputs at each use), float32 sums; states, gates
                                  * and gradients float32 (not with weight_drop masks) */
};

/* Cell variants, Li-GRU settings and the compute type. Start from fastrnn_plan_options_init,
 * which sets the defaults: no variant, SpeechBrain's LiGRU defaults for the Li-GRU cells,
 * FASTRNN_COMPUTE_DEFAULT. */
typedef struct fastrnn_plan_options {
    uint32_t struct_size;     /* sizeof(fastrnn_plan_options) */
    int32_t peephole;         /* LSTM: 1 = diagonal peepholes (weight_peephole [3, H]) */
    int64_t proj_size;        /* LSTM: P > 0 = a projection h = W_hr m (weight_hr [P, H]); 0 = none */
    int32_t layer_norm;       /* LSTM, GRU (reset_after = 1): LayerNorm of both projections (and of c) */
    int32_t zoneout_c;        /* LSTM: 1 when training calls pass zoneout_c masks (a larger cache) */
    int32_t activation;       /* Li-GRU: enum fastrnn_activation (default FASTRNN_ACT_RELU) */
    int32_t normalization;    /* Li-GRU: enum fastrnn_normalization (default FASTRNN_NORM_BATCH) */
    double bn_momentum;       /* Li-GRU batch norm: running = (1 - m) running + m batch (default 0.05) */
    int32_t recurrent_affine; /* SLi-GRU: 1 = its LayerNorm of W_hh h has a gain and a shift */
    int32_t compute;          /* enum fastrnn_compute. FASTRNN_COMPUTE_INT8: training calls (a cache, backward)
                               * fail with FASTRNN_STATUS_INVALID_ARGUMENT. Both: the plan's streams run
                               * in that precision, on the weights converted at their first step or the
                               * last fastrnn_plan_set_params (see Plans).
                               * (0.2 named it reserved0 and required 0: the same layout and default.) */
} fastrnn_plan_options;

FASTRNN_API fastrnn_status fastrnn_plan_options_init_(fastrnn_plan_options* options, size_t struct_size);
#define fastrnn_plan_options_init(options) fastrnn_plan_options_init_((options), sizeof(fastrnn_plan_options))

/* A plan for `desc` (its seq_len and batch are not used: each call gives T and N; 0 is allowed)
 * and `options` (NULL: the defaults). *plan receives it; free it with fastrnn_plan_destroy. */
FASTRNN_API fastrnn_status fastrnn_plan_create(const fastrnn_desc* desc, const fastrnn_plan_options* options,
                                               fastrnn_plan** plan);
/* Frees the plan (NULL: nothing). Not the caller's arrays. */
FASTRNN_API void fastrnn_plan_destroy(fastrnn_plan* plan);

/* Elements of the two flat arrays: the trained parameters and the buffers (Li-GRU batch norm's
 * running mean and variance; 0 for every other cell). */
FASTRNN_API fastrnn_status fastrnn_plan_param_count(const fastrnn_plan* plan, int64_t* params, int64_t* buffers);

/* One tensor of the flat arrays: its name (fastrnn's and torch's, e.g. "weight_hh_l0_reverse"),
 * shape (ndim 1 or 2, unused dims 1), which array (buffer 0: params, 1: buffers) and its offset
 * there in elements. Tensors are numbered 0 .. count-1 (fastrnn_plan_tensor_count), params first
 * in the Python API's order (torch's for the plain cells: weight_ih, weight_hh, bias_ih, bias_hh
 * of each layer and direction, then a variant's own tensors), then the buffers. */
typedef struct fastrnn_tensor_info {
    uint32_t struct_size; /* the caller sets sizeof(fastrnn_tensor_info) */
    int32_t buffer;
    const char* name;     /* valid while the plan lives */
    int64_t ndim;
    int64_t shape[2];
    int64_t offset;
    int64_t layer, direction;
} fastrnn_tensor_info;

FASTRNN_API fastrnn_status fastrnn_plan_tensor_count(const fastrnn_plan* plan, int64_t* count);
FASTRNN_API fastrnn_status fastrnn_plan_tensor_info(const fastrnn_plan* plan, int64_t index,
                                                    fastrnn_tensor_info* info);

/* The arrays later calls read: params (fastrnn_plan_param_count elements) and buffers (NULL when
 * there are none). Kept by pointer: the caller keeps them alive and may write them between calls
 * (an optimizer step); training forwards with batch norm update `buffers` in place. */
FASTRNN_API fastrnn_status fastrnn_plan_set_params(fastrnn_plan* plan, const void* params, void* buffers);

/* Regularizer noise and per-call settings of a plan call, drawn by the caller; fastrnn_plan_backward
 * takes the same struct the forward got. K = proj_size if set, else H; G = the cell's gates. */
typedef struct fastrnn_plan_call_options {
    uint32_t struct_size;             /* sizeof(fastrnn_plan_call_options) */
    int32_t bn_frozen;                /* Li-GRU batch norm in a training forward: 1 = normalize with the
                                         running statistics and leave them alone (a module in eval mode
                                         under autograd); 0 = batch statistics */
    const void* dropout_masks;        /* training, L > 1: between layers [L-1, T, N, D*K], scaled */
    const void* recurrent_dropout;    /* training: on h_{t-1} [L*D, N, K], scaled 0 or 1/(1-p) */
    const void* zoneout_h;            /* training: [L*D, T, N, K], 1 keeps h_{t-1}, 0 takes the update */
    const void* zoneout_c;            /* training, LSTM with options->zoneout_c: [L*D, T, N, H] */
    double zoneout_h_rate;            /* inference: the expected update with zoneout on h (0: off) */
    double zoneout_c_rate;            /* inference: the same on c */
    const void* weight_drop;          /* training: DropConnect on W_hh [L*D, G*H, K], scaled */
    const void* candidate_dropout;    /* training, Li-GRU: on the candidate [L*D, N, H], scaled */
} fastrnn_plan_call_options;

/* Bytes of the cache of a training call of T steps and N sequences (`dropout`: 1 when the call
 * has dropout_masks). */
FASTRNN_API fastrnn_status fastrnn_plan_cache_size(const fastrnn_plan* plan, int64_t seq_len, int64_t batch,
                                                   int dropout, size_t* bytes);

/* As fastrnn_forward, with the plan's weights: x [T, N, C], y [T, N, D*K], states [L*D, N, K]
 * (c0/c_n: LSTM only, [L*D, N, H]). call may be NULL (no regularizer). */
FASTRNN_API fastrnn_status fastrnn_plan_forward(const fastrnn_plan* plan, int64_t seq_len, int64_t batch, const void* x,
                                                const void* h0, const void* c0, const int64_t* lengths, void* y,
                                                void* h_n, void* c_n, void* cache, size_t cache_bytes,
                                                const fastrnn_plan_call_options* call);

/* As fastrnn_backward: gradients for the training forward that filled `cache` (same plan,
 * weights, x, lengths and `call`; T and N are the forward's). `grads` is one flat array laid out
 * like the params (fastrnn_plan_param_count elements), added into (+=). options may be NULL;
 * its dropout_masks field must be NULL (they come with `call`). */
FASTRNN_API fastrnn_status fastrnn_plan_backward(const fastrnn_plan* plan, const void* x, const int64_t* lengths,
                                                 void* cache, size_t cache_bytes, const void* grad_y,
                                                 const void* grad_h_n, const void* grad_c_n, void* grad_x,
                                                 void* grad_h0, void* grad_c0, void* grads,
                                                 const fastrnn_plan_call_options* call,
                                                 const fastrnn_backward_options* options);

/* Bytes the plan holds for packed weights (W_hh packed for inference, and the copy that tells
 * when they changed); 0 before its first inference call. */
FASTRNN_API fastrnn_status fastrnn_plan_packed_bytes(const fastrnn_plan* plan, size_t* bytes);

/* ---- Streams ------------------------------------------------------------------------------ */

/* A stream runs a plan's inference one step (or a few) per call with the state carried between
 * calls, for `batch` independent slots (streams) that start and stop on their own: online speech,
 * keyword spotting, noise suppression, control. The plan must be unidirectional and have its
 * parameters set before the first step. With up to 8 slots the recurrent products read the
 * plan's arrays in place (nothing packed: whatever the caller writes into them is used by the
 * next step); with more, the plan's packed copy, checked against the arrays at every step. New
 * arrays set with fastrnn_plan_set_params are picked up at the next step. A step allocates
 * nothing (after the first step on a thread, which sizes that thread's scratch).
 *
 * Threads: one stream is used by one thread at a time; streams of one plan may step at once.
 * Destroy every stream of a plan before the plan. */
typedef struct fastrnn_stream fastrnn_stream; /* opaque */

/* A stream of `batch` slots on `plan`, its state zero. zoneout_*_rate: inference's expected update
 * with zoneout (0: off; as fastrnn_plan_call_options). *stream receives it; free it with
 * fastrnn_stream_destroy. FASTRNN_ERR_INVALID for a bidirectional plan. */
FASTRNN_API fastrnn_status fastrnn_stream_create(const fastrnn_plan* plan, int64_t batch, double zoneout_h_rate,
                                                 double zoneout_c_rate, fastrnn_stream** stream);
/* Frees the stream (NULL: nothing). */
FASTRNN_API void fastrnn_stream_destroy(fastrnn_stream* stream);

/* `steps` (>= 1) steps: x [steps, N, C] -> y [steps, N, K] (K = proj_size if set, else H), the state
 * carried. active [N] (NULL: every slot): slots with 0 wait, keeping their state, and get zero
 * output rows. */
FASTRNN_API fastrnn_status fastrnn_stream_step(fastrnn_stream* stream, int64_t steps, const void* x, void* y,
                                               const uint8_t* active);

/* Zeroes the state of `count` slots listed in `slots` (indices in [0, N)); slots NULL: every slot. */
FASTRNN_API fastrnn_status fastrnn_stream_reset(fastrnn_stream* stream, const int64_t* slots, int64_t count);

/* Copies the state out, or in: h [L, N, K], c [L, N, H] (LSTM; ignored for other cells). Either
 * pointer may be NULL (that part is not copied), not both. */
FASTRNN_API fastrnn_status fastrnn_stream_get_state(const fastrnn_stream* stream, void* h, void* c);
FASTRNN_API fastrnn_status fastrnn_stream_set_state(fastrnn_stream* stream, const void* h, const void* c);

/* ---- Threads and instruction sets -------------------------------------------------------- */

/* Threads of fastrnn's kernels and of its BLAS (n >= 1). */
FASTRNN_API fastrnn_status fastrnn_set_num_threads(int n);
FASTRNN_API int fastrnn_get_num_threads(void);
/* Name of the ISA the kernels use now ("scalar", "avx2", ...); a static string. */
FASTRNN_API const char* fastrnn_get_isa(void);
/* The i-th ISA this CPU and build support, best first (static string); NULL past the end. */
FASTRNN_API const char* fastrnn_available_isa(int i);
/* Force an ISA by name (like FASTRNN_ISA=name); FASTRNN_ERR_INVALID if unknown or unsupported. */
FASTRNN_API fastrnn_status fastrnn_set_isa(const char* name);

#ifdef __cplusplus
}
#endif

#endif /* FASTRNN_FASTRNN_H */
