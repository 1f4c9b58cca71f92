// The C ABI (csrc/include/fastrnn/fastrnn.h) over the C++ core: validate everything the core
// trusts, call the same driver functions as the Python binding, turn every exception into a
// status plus a thread-local message.
#include "fastrnn/fastrnn.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../core/driver.h"
#include "../core/plan.h"
#include "../core/stream.h"
#include "../core/threads.h"
#include "../dispatch/dispatch.h"

namespace {

using i64 = std::int64_t;
using std::to_string;

constexpr i64 kBlasIntMax = std::numeric_limits<std::int32_t>::max();
// A struct_size above this is garbage (an uninitialized struct), not a future struct.
constexpr std::uint32_t kMaxStructSize = 1024;
// The cache starts with a header recording what filled it; a multiple of 64 keeps the payload's
// alignment that of the caller's buffer.
constexpr std::size_t kCacheHeaderBytes = 128;
constexpr char kCacheMagic[8] = {'f', 'a', 's', 't', 'r', 'n', 'n', 'C'};
enum CacheState : std::uint32_t { kCacheInvalid = 0, kCacheFilled = 1, kCacheConsumed = 2 };

#define FASTRNN_STR2(x) #x
#define FASTRNN_STR(x) FASTRNN_STR2(x)
const char kVersionString[] =
    FASTRNN_STR(FASTRNN_VERSION_MAJOR) "." FASTRNN_STR(FASTRNN_VERSION_MINOR) "." FASTRNN_STR(FASTRNN_VERSION_PATCH);

// ---- errors ---------------------------------------------------------------------------------

struct Unsupported : std::runtime_error {
    using std::runtime_error::runtime_error;
};

thread_local std::string t_error;
thread_local const char* t_error_fallback = nullptr;  // when formatting the message itself fails

void set_error(const char* fn, const char* what) noexcept {
    try {
        t_error = fn ? std::string(fn) + ": " + what : std::string(what);
        t_error_fallback = nullptr;
    } catch (...) {
        t_error_fallback = "fastrnn: out of memory while formatting an error message";
    }
}

void clear_error() noexcept {
    t_error.clear();  // never throws (keeps capacity)
    t_error_fallback = nullptr;
}

[[noreturn]] void invalid(const std::string& msg) { throw std::invalid_argument(msg); }

// Runs body(); maps every exception to a status and this thread's message.
template <class F>
fastrnn_status guarded(const char* fn, F&& body) noexcept {
    try {
        body();
        clear_error();
        return FASTRNN_OK;
    } catch (const Unsupported& e) {
        set_error(fn, e.what());
        return FASTRNN_ERR_UNSUPPORTED;
    } catch (const std::invalid_argument& e) {
        set_error(fn, e.what());
        return FASTRNN_ERR_INVALID;
    } catch (const std::bad_alloc&) {
        set_error(fn, "out of memory (scratch or temporary buffers could not be allocated)");
        return FASTRNN_ERR_NOMEM;
    } catch (const std::length_error&) {
        set_error(fn, "out of memory (a buffer size exceeds what can be allocated)");
        return FASTRNN_ERR_NOMEM;
    } catch (const std::exception& e) {
        set_error(fn, (std::string("internal error: ") + e.what()).c_str());
        return FASTRNN_ERR_INTERNAL;
    } catch (...) {
        set_error(fn, "internal error: unknown exception");
        return FASTRNN_ERR_INTERNAL;
    }
}

// ---- checked arithmetic ---------------------------------------------------------------------

i64 product(const char* expr, std::initializer_list<i64> factors) {
    i64 r = 1;
    for (i64 f : factors)
        if (__builtin_mul_overflow(r, f, &r))
            invalid(std::string("desc: sizes too large, ") + expr + " overflows int64");
    return r;
}

i64 sum(const char* expr, std::initializer_list<i64> terms) {
    i64 r = 0;
    for (i64 t : terms)
        if (__builtin_add_overflow(r, t, &r))
            invalid(std::string("desc: sizes too large, ") + expr + " overflows int64");
    return r;
}

void blas_limit(const char* expr, i64 value) {
    if (value > kBlasIntMax)
        invalid(std::string("desc: ") + expr + " = " + to_string(value) + " exceeds " + to_string(kBlasIntMax) +
                " (32-bit BLAS indices); split the batch or the sequence");
}

std::size_t to_bytes(const char* what, i64 elements, std::size_t esize, std::size_t extra) {
    const auto n = static_cast<std::uint64_t>(elements);
    if (n > (std::numeric_limits<std::size_t>::max() - extra) / esize)
        invalid(std::string("desc: sizes too large, ") + what + " in bytes overflows size_t");
    return static_cast<std::size_t>(n) * esize + extra;
}

// ---- structs passed in with a struct_size ---------------------------------------------------

// Copies the caller's struct into a zeroed S: fields the caller's (older) header lacks read as
// zero, and fields a newer header adds must be zero (this library cannot honour them).
template <class S>
S read_struct(const S* p, const char* name) {
    std::uint32_t size;
    std::memcpy(&size, p, sizeof size);
    if (size < sizeof(S) || size > kMaxStructSize)  // every field of this version exists since v1
        invalid(std::string(name) + "->struct_size = " + to_string(size) + ", expected sizeof = " +
                to_string(sizeof(S)) + " (initialize the struct: fastrnn_desc_init, or struct_size = sizeof)");
    const auto* bytes = reinterpret_cast<const unsigned char*>(p);
    for (std::size_t i = sizeof(S); i < size; ++i)
        if (bytes[i])
            throw Unsupported(std::string(name) + " sets a field at byte " + to_string(i) +
                              " that fastrnn " + kVersionString + " does not know (struct_size " + to_string(size) +
                              " > " + to_string(sizeof(S)) + "); upgrade the library or leave that field zero");
    S out;
    std::memcpy(&out, p, sizeof(S));
    return out;
}

// ---- descriptor ------------------------------------------------------------------------------

const char* cell_name(int cell) {
    static const char* names[] = {"FASTRNN_RNN_TANH", "FASTRNN_RNN_RELU", "FASTRNN_LSTM",
                                  "FASTRNN_GRU",      "FASTRNN_LIGRU",    "FASTRNN_SLIGRU"};
    return names[cell];
}

// A validated descriptor and the sizes derived from it (all proven free of overflow).
struct Problem {
    fastrnn::Desc d;
    int dtype;
    std::size_t esize;
    bool lstm;
    i64 G, TN, x_elems, y_elems, states, diag_steps, params;
};

void expect_positive(const char* field, i64 v) {
    if (v < 1) invalid(std::string("desc->") + field + " = " + to_string(v) + ", expected >= 1");
}

void expect_bool(const char* field, std::int32_t v) {
    if (v != 0 && v != 1) invalid(std::string("desc->") + field + " = " + to_string(v) + ", expected 0 or 1");
}

// `plan`: the descriptor of a plan, which takes every cell and whose T and N come with each call
// (seq_len and batch replaced by T and N, or by 1 to check the sizes fixed at creation).
Problem check_desc(const fastrnn_desc* p, bool plan = false, i64 call_T = 1, i64 call_N = 1) {
    if (!p) invalid("desc: NULL");
    fastrnn_desc s = read_struct(p, "desc");
    if (s.cell < FASTRNN_RNN_TANH || s.cell > FASTRNN_SLIGRU)
        invalid("desc->cell = " + to_string(s.cell) +
                ", expected FASTRNN_RNN_TANH (0), FASTRNN_RNN_RELU (1), FASTRNN_LSTM (2), FASTRNN_GRU (3), "
                "FASTRNN_LIGRU (4) or FASTRNN_SLIGRU (5)");
    if (!plan && s.cell > FASTRNN_GRU)
        invalid("desc->cell = " + to_string(s.cell) + " (" + cell_name(s.cell) +
                "): the Li-GRU cells are served by plans (fastrnn_plan_create), not by this function");
    if (plan) {
        s.seq_len = call_T;
        s.batch = call_N;
    }
    if (s.dtype != FASTRNN_FLOAT32 && s.dtype != FASTRNN_FLOAT64)
        invalid("desc->dtype = " + to_string(s.dtype) + ", expected FASTRNN_FLOAT32 (1) or FASTRNN_FLOAT64 (2)");
    expect_bool("bias", s.bias);
    expect_bool("reset_after", s.reset_after);
    if (s.reserved0 != 0) invalid("desc->reserved0 = " + to_string(s.reserved0) + ", expected 0");
    expect_positive("seq_len", s.seq_len);
    expect_positive("batch", s.batch);
    expect_positive("input_size", s.input_size);
    expect_positive("hidden_size", s.hidden_size);
    expect_positive("num_layers", s.num_layers);
    if (s.num_directions != 1 && s.num_directions != 2)
        invalid("desc->num_directions = " + to_string(s.num_directions) + ", expected 1 or 2");

    Problem P;
    fastrnn::Desc& d = P.d;
    d.cell = fastrnn::CellKind(s.cell);
    d.reset_after = s.reset_after != 0;
    d.bias = s.bias != 0;
    d.T = s.seq_len; d.N = s.batch; d.C = s.input_size; d.H = s.hidden_size; d.L = s.num_layers;
    d.D = s.num_directions;
    P.dtype = s.dtype;
    P.esize = s.dtype == FASTRNN_FLOAT32 ? sizeof(float) : sizeof(double);
    P.lstm = fastrnn::cell_has_c(d);
    P.G = fastrnn::cell_gates(d);
    const i64 T = d.T, N = d.N, C = d.C, H = d.H, L = d.L, D = d.D, G = P.G;
    const i64 gates_kept = std::max<i64>(G, fastrnn::cell_cache_gates(d));

    // The GEMM extents and strides the core hands to a 32-bit BLAS (as fastrnn/core/validation.py).
    P.TN = product("T*N", {T, N});
    blas_limit("T*N", P.TN);
    P.x_elems = product("T*N*C", {P.TN, C});
    blas_limit("T*N*C", P.x_elems);
    P.y_elems = product("T*N*D*H", {P.TN, D, H});
    blas_limit("T*N*D*H", P.y_elems);
    blas_limit("T*N*G*H (cached gates)", product("T*N*G*H", {P.TN, gates_kept, H}));
    const i64 w_ih0 = product("G*H*C", {G, H, C}), w_hh = product("G*H*H", {G, H, H});
    const i64 w_ih = L > 1 ? product("G*H*D*H", {G, H, D, H}) : 0;
    blas_limit("G*H*C (weight_ih_l0)", w_ih0);
    blas_limit("G*H*H (weight_hh)", w_hh);
    blas_limit("G*H*D*H (weight_ih of layers > 0)", w_ih);
    // Everything the core derives (cache, scratch, offsets) stays far below this bound.
    product("L*D*T*N*H*64", {L, D, P.TN, H, 64});
    P.states = product("L*D*N*H", {L, D, N, H});
    P.diag_steps = product("L*D*T", {L, D, T});
    const i64 biases = d.bias ? 2 * G * H : 0;
    const i64 layer0 = sum("params of layer 0", {w_ih0, w_hh, biases});
    const i64 layer = sum("params of a layer", {w_ih, w_hh, biases});
    P.params = sum("the parameter count", {product("D*(params of layer 0)", {D, layer0}),
                                           product("(L-1)*D*(params of a layer)", {L - 1, D, layer})});
    return P;
}

// ---- pointers --------------------------------------------------------------------------------

void check_aligned(const void* p, const std::string& name, std::size_t align) {
    if (p && reinterpret_cast<std::uintptr_t>(p) % align != 0)
        invalid(name + ": pointer not aligned to " + to_string(align) + " bytes (its element size)");
}

void need(const void* p, const std::string& name, std::size_t align) {
    if (!p) invalid(name + ": NULL");
    check_aligned(p, name, align);
}

void need_null(const void* p, const std::string& name, const std::string& why) {
    if (p) invalid(name + ": must be NULL " + why);
}

std::string entry(const char* array, i64 i, const char* field) {
    return std::string(array) + "[" + to_string(i) + "]." + field;
}

// Both arrays have the same shape: four pointers per layer-direction.
template <class Entry>
void check_layer_pointers(const Problem& P, const Entry* e, const char* array) {
    if (!e) invalid(std::string(array) + ": NULL (expected L*D = " + to_string(P.d.L * P.d.D) + " entries)");
    for (i64 i = 0; i < P.d.L * P.d.D; ++i) {
        need(e[i].weight_ih, entry(array, i, "weight_ih"), P.esize);
        need(e[i].weight_hh, entry(array, i, "weight_hh"), P.esize);
        if (P.d.bias) {
            need(e[i].bias_ih, entry(array, i, "bias_ih"), P.esize);
            need(e[i].bias_hh, entry(array, i, "bias_hh"), P.esize);
        } else {
            need_null(e[i].bias_ih, entry(array, i, "bias_ih"), "when desc->bias = 0");
            need_null(e[i].bias_hh, entry(array, i, "bias_hh"), "when desc->bias = 0");
        }
    }
}

void check_lengths(const Problem& P, const std::int64_t* lengths) {
    if (!lengths) return;
    check_aligned(lengths, "lengths", alignof(std::int64_t));
    for (i64 n = 0; n < P.d.N; ++n)
        if (lengths[n] < 1 || lengths[n] > P.d.T)
            invalid("lengths[" + to_string(n) + "] = " + to_string(lengths[n]) + ", expected 1 <= lengths[n] <= T = " +
                    to_string(P.d.T));
}

void check_c_state(const Problem& P, const void* p, const char* name, bool required) {
    if (P.lstm) {
        if (required) need(p, name, P.esize);
        else check_aligned(p, name, P.esize);
    } else {
        need_null(p, name, std::string("for ") + cell_name(int(P.d.cell)) + " (only LSTM has a cell state)");
    }
}

// ---- training cache --------------------------------------------------------------------------

struct CacheHeader {
    char magic[8];
    std::uint32_t abi, state;
    std::int32_t cell, dtype, bias, reset_after, dropout, has_lengths;
    std::int64_t T, N, C, H, L, D;
};
static_assert(sizeof(CacheHeader) <= kCacheHeaderBytes, "cache header too large");

CacheHeader header_of(const Problem& P, bool dropout, bool has_lengths) {
    CacheHeader h;
    std::memset(&h, 0, sizeof h);
    std::memcpy(h.magic, kCacheMagic, sizeof h.magic);
    h.abi = FASTRNN_ABI_VERSION;
    h.state = kCacheFilled;
    h.cell = int(P.d.cell); h.dtype = P.dtype; h.bias = P.d.bias; h.reset_after = P.d.reset_after;
    h.dropout = dropout; h.has_lengths = has_lengths;
    h.T = P.d.T; h.N = P.d.N; h.C = P.d.C; h.H = P.d.H; h.L = P.d.L; h.D = P.d.D;
    return h;
}

std::size_t cache_bytes_of(const Problem& P, bool dropout) {
    return to_bytes("the cache", fastrnn::cache_elements(P.d, dropout), P.esize, kCacheHeaderBytes);
}

void check_cache(const Problem& P, const void* cache, std::size_t bytes, bool dropout) {
    need(cache, "cache", P.esize);
    const std::size_t needed = cache_bytes_of(P, dropout);
    if (bytes < needed)
        invalid("cache_bytes = " + to_string(bytes) + ", expected at least " + to_string(needed) +
                " (fastrnn_cache_size with dropout = " + to_string(int(dropout)) + ")");
}

void set_cache_state(void* cache, std::uint32_t state) {
    std::memcpy(static_cast<char*>(cache) + offsetof(CacheHeader, state), &state, sizeof state);
}

// What backward needs to know from the forward that filled the cache; rejects anything else.
CacheHeader check_filled_cache(const Problem& P, const void* cache, std::size_t bytes) {
    need(cache, "cache", P.esize);
    if (bytes < kCacheHeaderBytes)
        invalid("cache_bytes = " + to_string(bytes) + ", too small for a cache filled by fastrnn_forward");
    CacheHeader h;
    std::memcpy(&h, cache, sizeof h);
    if (std::memcmp(h.magic, kCacheMagic, sizeof h.magic) != 0 || h.abi != FASTRNN_ABI_VERSION ||
        h.state == kCacheInvalid)
        invalid("cache: not filled by a successful training fastrnn_forward (cache != NULL)");
    if (h.state == kCacheConsumed)
        invalid("cache: consumed by an earlier fastrnn_backward with retain = 0 (or a failed one); run a "
                "training forward again, or pass retain = 1 to keep it");
    const CacheHeader want = header_of(P, h.dropout != 0, h.has_lengths != 0);
    const struct {
        const char* field;
        i64 there, here;
    } fields[] = {{"cell", h.cell, want.cell},         {"dtype", h.dtype, want.dtype},
                  {"bias", h.bias, want.bias},         {"reset_after", h.reset_after, want.reset_after},
                  {"seq_len", h.T, want.T},            {"batch", h.N, want.N},
                  {"input_size", h.C, want.C},         {"hidden_size", h.H, want.H},
                  {"num_layers", h.L, want.L},         {"num_directions", h.D, want.D}};
    for (const auto& f : fields)
        if (f.there != f.here)
            invalid(std::string("cache: filled by a forward with desc->") + f.field + " = " + to_string(f.there) +
                    ", this call has " + to_string(f.here));
    if (bytes < cache_bytes_of(P, h.dropout != 0))
        invalid("cache_bytes = " + to_string(bytes) + ", expected at least " +
                to_string(cache_bytes_of(P, h.dropout != 0)));
    return h;
}

template <class T>
T* payload(void* cache) {
    return reinterpret_cast<T*>(static_cast<char*>(cache) + kCacheHeaderBytes);
}

// ---- weights ---------------------------------------------------------------------------------

template <class T>
std::vector<fastrnn::LayerWeights<T>> core_weights(const Problem& P, const fastrnn_weights* w) {
    std::vector<fastrnn::LayerWeights<T>> out(std::size_t(P.d.L * P.d.D));
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = {static_cast<const T*>(w[i].weight_ih), static_cast<const T*>(w[i].weight_hh),
                  static_cast<const T*>(w[i].bias_ih), static_cast<const T*>(w[i].bias_hh)};
    return out;
}

template <class T>
std::vector<fastrnn::LayerGrads<T>> core_grads(const Problem& P, const fastrnn_grads* g) {
    std::vector<fastrnn::LayerGrads<T>> out(std::size_t(P.d.L * P.d.D));
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = {static_cast<T*>(g[i].weight_ih), static_cast<T*>(g[i].weight_hh), static_cast<T*>(g[i].bias_ih),
                  static_cast<T*>(g[i].bias_hh)};
    return out;
}

// Points out[i] into a flat parameter array in PyTorch's order.
template <class Entry, class Ptr>
void split_flat(const Problem& P, Ptr base, i64 count, Entry* out, i64 out_len, const char* array) {
    need(base, array, P.esize);
    if (count != P.params)
        invalid("count = " + to_string(count) + ", expected " + to_string(P.params) + " (fastrnn_param_count)");
    if (!out) invalid("out: NULL");
    if (out_len < P.d.L * P.d.D)
        invalid("out_len = " + to_string(out_len) + ", expected at least L*D = " + to_string(P.d.L * P.d.D));
    using Byte = typename std::conditional<std::is_const<typename std::remove_pointer<Ptr>::type>::value,
                                           const char, char>::type;
    Byte* at = static_cast<Byte*>(base);
    const i64 GH = P.G * P.d.H;
    auto take = [&](i64 elements) {
        Byte* p = at;
        at += elements * i64(P.esize);
        return p;
    };
    for (i64 l = 0; l < P.d.L; ++l)
        for (i64 dir = 0; dir < P.d.D; ++dir) {
            Entry& e = out[l * P.d.D + dir];
            e.weight_ih = take(GH * (l == 0 ? P.d.C : P.d.D * P.d.H));
            e.weight_hh = take(GH * P.d.H);
            e.bias_ih = P.d.bias ? take(GH) : nullptr;
            e.bias_hh = P.d.bias ? take(GH) : nullptr;
        }
}

// A caller's optional output, or a temporary when it passed NULL.
template <class T>
T* or_scratch(void* p, i64 n, std::vector<T>& scratch) {
    if (p) return static_cast<T*>(p);
    scratch.resize(std::size_t(n));
    return scratch.data();
}

const char* intern(const std::string& s) {
    static std::mutex m;
    static auto* names = new std::set<std::string>();  // never freed: the pointers stay valid
    std::lock_guard<std::mutex> lk(m);
    return names->insert(s).first->c_str();
}

// ---- forward / backward ----------------------------------------------------------------------

template <class T>
void run_forward(const Problem& P, const fastrnn_weights* weights, const void* x, const void* h0, const void* c0,
                 const std::int64_t* lengths, void* y, void* h_n, void* c_n, void* cache, const void* masks) {
    const auto W = core_weights<T>(P, weights);
    std::vector<T> hn_tmp, cn_tmp;
    T* hn = or_scratch<T>(h_n, P.states, hn_tmp);
    T* cn = P.lstm ? or_scratch<T>(c_n, P.states, cn_tmp) : nullptr;
    if (cache) set_cache_state(cache, kCacheInvalid);  // until this forward has filled it
    fastrnn::forward<T>(P.d, W.data(), static_cast<const T*>(x), static_cast<const T*>(h0),
                        static_cast<const T*>(c0), lengths, static_cast<const T*>(masks), static_cast<T*>(y), hn, cn,
                        cache ? payload<T>(cache) : nullptr);
    if (cache) {
        const CacheHeader h = header_of(P, masks != nullptr, lengths != nullptr);
        std::memcpy(cache, &h, sizeof h);
    }
}

struct BackwardArgs {
    const fastrnn_weights* weights;
    const void *x, *grad_y, *grad_h_n, *grad_c_n, *masks;
    const std::int64_t* lengths;
    void *cache, *grad_x, *grad_h0, *grad_c0;
    const fastrnn_grads* grads;
    bool retain;
    double bptt_clip;
    double *grad_h_sq, *grad_c_sq;
};

template <class T>
void run_backward(const Problem& P, const BackwardArgs& a) {
    const auto W = core_weights<T>(P, a.weights);
    const auto G = core_grads<T>(P, a.grads);
    std::vector<T> gx_tmp, gh0_tmp, gc0_tmp;
    T* gx = or_scratch<T>(a.grad_x, P.x_elems, gx_tmp);
    T* gh0 = or_scratch<T>(a.grad_h0, P.states, gh0_tmp);
    T* gc0 = P.lstm ? or_scratch<T>(a.grad_c0, P.states, gc0_tmp) : nullptr;
    fastrnn::BackwardOptions<T> opt;
    opt.retain = a.retain;
    opt.bptt_clip = T(a.bptt_clip);
    opt.diag.grad_h_sq = a.grad_h_sq;
    opt.diag.grad_c_sq = a.grad_c_sq;
    // Consumed from here on unless retained: even a failure may leave it half overwritten.
    if (!a.retain) set_cache_state(a.cache, kCacheConsumed);
    fastrnn::backward<T>(P.d, W.data(), static_cast<const T*>(a.x), a.lengths, static_cast<const T*>(a.masks),
                         payload<T>(a.cache), static_cast<const T*>(a.grad_y), static_cast<const T*>(a.grad_h_n),
                         static_cast<const T*>(a.grad_c_n), gx, gh0, gc0, G.data(), opt);
}

// ---- plans -----------------------------------------------------------------------------------

constexpr char kPlanCacheMagic[8] = {'f', 'a', 's', 't', 'r', 'n', 'n', 'P'};

// What a plan call carries besides x and the states: which regularizers (a bit each) and whether
// its batch norm is frozen, recorded in the cache so the backward can check it gets the same.
enum CallBits : std::uint32_t {
    kInterLayerDropout = 1, kRecurrentDropout = 2, kZoneoutH = 4, kZoneoutC = 8, kWeightDrop = 16,
    kCandidateDropout = 32, kBnFrozen = 64
};

struct PlanCacheHeader {
    char magic[8];
    std::uint32_t abi, state;
    std::uint64_t plan_id;
    std::uint32_t call_bits, has_lengths;
    std::int64_t T, N;
};
static_assert(sizeof(PlanCacheHeader) <= kCacheHeaderBytes, "plan cache header too large");

}  // namespace

struct fastrnn_plan {
    Problem problem;               // the checked descriptor (T = N = 1)
    fastrnn_desc desc;             // as the caller gave it
    fastrnn::Plan core;            // settings, parameter layout, weights, packed weights
    std::uint64_t id;              // caches filled through this plan carry it
    i64 params = 0, buffers = 0;   // elements of the two flat arrays
    std::vector<i64> offsets;      // of each tensor of core.layout() in its flat array
    const void* param_data = nullptr;
    void* buffer_data = nullptr;
    fastrnn::Precision precision = fastrnn::Precision::Float;  // options->compute

    fastrnn_plan(const Problem& P, const fastrnn_desc& d, const fastrnn::Desc& config)
        : problem(P), desc(d), core(config, P.dtype == FASTRNN_FLOAT64) {
        static std::atomic<std::uint64_t> next{1};
        id = next++;
        for (const fastrnn::ParamInfo& t : core.layout()) {
            i64 n = 1;
            for (i64 e : t.shape) n = product("a parameter's size", {n, e});
            i64& total = t.buffer ? buffers : params;
            offsets.push_back(total);
            total = sum("the parameter count", {total, n});
        }
        blas_limit("the parameter count", params);
    }
};

namespace {

const fastrnn_plan& need_plan(const fastrnn_plan* plan) {
    if (!plan) invalid("plan: NULL");
    return *plan;
}

bool need_flag(const char* field, std::int32_t v) {
    if (v != 0 && v != 1) invalid(std::string(field) + " = " + to_string(v) + ", expected 0 or 1");
    return v != 0;
}

fastrnn_plan_options default_plan_options() {
    fastrnn_plan_options o;
    std::memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.activation = FASTRNN_ACT_RELU;
    o.normalization = FASTRNN_NORM_BATCH;
    o.bn_momentum = 0.05;
    return o;
}

// The core's configuration of a plan: the descriptor and the options, every field checked.
fastrnn::Desc plan_config(const Problem& P, const fastrnn_plan_options& o) {
    fastrnn::Desc d = P.d;
    const bool ligru = d.cell == fastrnn::CellKind::LIGRU || d.cell == fastrnn::CellKind::SLIGRU;
    if (o.compute < FASTRNN_COMPUTE_DEFAULT || o.compute > FASTRNN_COMPUTE_BF16)
        invalid("options->compute = " + to_string(o.compute) + ", expected a fastrnn_compute (0 to 2)");
    if (o.compute != FASTRNN_COMPUTE_DEFAULT && P.dtype != FASTRNN_FLOAT32)
        invalid(std::string("options->compute = ") + (o.compute == FASTRNN_COMPUTE_INT8 ? "FASTRNN_COMPUTE_INT8: int8 quantizes"
                : "FASTRNN_COMPUTE_BF16: bf16 compute takes") + " float32 plans (desc->dtype = FASTRNN_FLOAT32)");
    d.peephole = need_flag("options->peephole", o.peephole);
    d.layer_norm = need_flag("options->layer_norm", o.layer_norm);
    d.zoneout_c = need_flag("options->zoneout_c", o.zoneout_c);
    d.recurrent_affine = need_flag("options->recurrent_affine", o.recurrent_affine);
    if (o.proj_size < 0) invalid("options->proj_size = " + to_string(o.proj_size) + ", expected >= 0 (0: none)");
    d.P = o.proj_size;
    if (o.activation < FASTRNN_ACT_RELU || o.activation > FASTRNN_ACT_LEAKY_RELU)
        invalid("options->activation = " + to_string(o.activation) + ", expected a fastrnn_activation (0 to 3)");
    if (o.normalization < FASTRNN_NORM_NONE || o.normalization > FASTRNN_NORM_LAYER)
        invalid("options->normalization = " + to_string(o.normalization) +
                ", expected a fastrnn_normalization (0 to 2)");
    if (!(o.bn_momentum >= 0.0 && o.bn_momentum <= 1.0))  // also NaN
        invalid("options->bn_momentum = " + to_string(o.bn_momentum) + ", expected 0 <= m <= 1");
    // Li-GRU settings are the Li-GRU's: other cells leave them at their defaults.
    const fastrnn_plan_options def = default_plan_options();
    if (!ligru && (o.activation != def.activation || o.normalization != def.normalization ||
                   o.bn_momentum != def.bn_momentum))
        invalid(std::string("options: activation, normalization and bn_momentum are Li-GRU settings; leave them "
                            "at fastrnn_plan_options_init's values for ") + cell_name(int(d.cell)));
    if (ligru) {
        d.activation = fastrnn::Activation(o.activation);
        d.input_norm = fastrnn::InputNorm(o.normalization);
        d.bn_momentum = o.bn_momentum;
    }
    try {
        fastrnn::validate_config(d);
    } catch (const std::invalid_argument& e) {
        invalid(std::string("options: ") + e.what() + " (desc->cell = " + cell_name(int(d.cell)) + ")");
    }
    return d;
}

// The per-call pointers of `call` as the core's Noise, checked against the plan and the pass.
template <class T>
fastrnn::Noise<T> plan_noise(const fastrnn_plan& plan, const fastrnn_plan_call_options& c, bool training,
                             std::uint32_t* bits) {
    const fastrnn::Desc& d = plan.core.config();
    const unsigned variants = fastrnn::cell_info(d).variants;
    const std::string cell = cell_name(int(d.cell));
    const std::size_t es = sizeof(T);
    struct Mask {
        const void* p;
        const char* field;
        unsigned variant;
        std::uint32_t bit;
    } masks[] = {{c.recurrent_dropout, "recurrent_dropout", fastrnn::kRecurrentDropout, kRecurrentDropout},
                 {c.zoneout_h, "zoneout_h", fastrnn::kZoneout, kZoneoutH},
                 {c.zoneout_c, "zoneout_c", fastrnn::kZoneoutC, kZoneoutC},
                 {c.weight_drop, "weight_drop", fastrnn::kWeightDrop, kWeightDrop},
                 {c.candidate_dropout, "candidate_dropout", fastrnn::kCandidateDropout, kCandidateDropout}};
    std::uint32_t b = 0;
    for (const Mask& m : masks) {
        if (!m.p) continue;
        const std::string field = std::string("call->") + m.field;
        if (!(variants & m.variant)) invalid(field + ": not a regularizer of " + cell);
        if (!training) invalid(field + ": masks are for training calls (cache != NULL)");
        check_aligned(m.p, field, es);
        b |= m.bit;
    }
    if (c.zoneout_c && !d.zoneout_c)
        invalid("call->zoneout_c: the plan was made without options->zoneout_c = 1 (its cache has no room for it)");
    for (const auto& [rate, field, variant] :
         {std::tuple<double, const char*, unsigned>{c.zoneout_h_rate, "zoneout_h_rate", fastrnn::kZoneout},
          std::tuple<double, const char*, unsigned>{c.zoneout_c_rate, "zoneout_c_rate", fastrnn::kZoneoutC}}) {
        if (!(rate >= 0.0 && rate < 1.0))
            invalid(std::string("call->") + field + " = " + to_string(rate) + ", expected 0 <= rate < 1");
        if (rate > 0.0 && !(variants & variant)) invalid(std::string("call->") + field + ": not a regularizer of " + cell);
        if (rate > 0.0 && training)
            invalid(std::string("call->") + field + ": rates are for inference calls; training calls pass masks");
    }
    if (need_flag("call->bn_frozen", c.bn_frozen)) {
        if (!fastrnn::bn_ih(d)) invalid("call->bn_frozen: the plan has no batch norm (a Li-GRU with FASTRNN_NORM_BATCH)");
        if (!training) invalid("call->bn_frozen: for training calls (inference always uses the running statistics)");
        b |= kBnFrozen;
    }
    if (bits) *bits = b;
    fastrnn::Noise<T> nz;
    nz.rec_mask = static_cast<const T*>(c.recurrent_dropout);
    nz.zh_mask = static_cast<const T*>(c.zoneout_h);
    nz.zc_mask = static_cast<const T*>(c.zoneout_c);
    nz.zh_rate = T(c.zoneout_h_rate);
    nz.zc_rate = T(c.zoneout_c_rate);
    nz.w_mask = static_cast<const T*>(c.weight_drop);
    nz.cand_mask = static_cast<const T*>(c.candidate_dropout);
    return nz;
}

fastrnn_plan_call_options read_call(const fastrnn_plan_call_options* call) {
    fastrnn_plan_call_options c;
    std::memset(&c, 0, sizeof c);
    if (call) c = read_struct(call, "call");
    return c;
}

std::size_t plan_cache_bytes(const fastrnn_plan& plan, i64 T, i64 N, bool dropout) {
    const Problem P = check_desc(&plan.desc, true, T, N);
    return to_bytes("the cache", fastrnn::cache_elements(plan.core.call(T, N), dropout), P.esize, kCacheHeaderBytes);
}

// The arrays of the plan's layout (pointers into the two flat arrays).
template <class T, class Ptr>
std::vector<T*> plan_arrays(const fastrnn_plan& plan, Ptr params, Ptr buffers) {
    std::vector<T*> out;
    const auto& layout = plan.core.layout();
    for (std::size_t i = 0; i < layout.size(); ++i) {
        Ptr base = layout[i].buffer ? buffers : params;
        out.push_back(base ? const_cast<T*>(static_cast<const T*>(base)) + plan.offsets[i] : nullptr);
    }
    return out;
}

template <class T>
void plan_forward(const fastrnn_plan& plan, i64 T_, i64 N, const void* x, const void* h0, const void* c0,
                  const std::int64_t* lengths, void* y, void* h_n, void* c_n, void* cache,
                  const fastrnn_plan_call_options& c, std::uint32_t bits) {
    fastrnn::Desc d = plan.core.call(T_, N);
    d.bn_frozen = c.bn_frozen != 0;
    const auto& W = plan.core.weights<T>();
    const fastrnn::Noise<T> nz = plan_noise<T>(plan, c, cache != nullptr, nullptr);
    const i64 K = fastrnn::state_size(d), S = d.L * d.D * d.N * K, SC = d.L * d.D * d.N * d.H;
    std::vector<T> hn_tmp, cn_tmp;
    T* hn = or_scratch<T>(h_n, S, hn_tmp);
    T* cn = fastrnn::cell_has_c(d) ? or_scratch<T>(c_n, SC, cn_tmp) : nullptr;
    std::shared_ptr<const fastrnn::PackedWeights<T>> packed;
    std::shared_ptr<const fastrnn::ReducedWeights> low;
    const fastrnn::KernelSet<T>& ks = fastrnn::active_kernels<T>();
    if (plan.precision == fastrnn::Precision::Int8)  // quantized once while the weights are unchanged
        low = plan.core.reduced(ks.nr, fastrnn::int8_kernels());
    else if (plan.precision == fastrnn::Precision::BF16)
        low = plan.core.reduced(ks.nr, fastrnn::bf16_kernels());
    else if (!cache && !nz.w_mask)  // inference: W_hh packed once while unchanged
        packed = plan.core.packed<T>(ks.nr, ks.pack_forward);
    if (cache) set_cache_state(cache, kCacheInvalid);
    fastrnn::forward<T>(d, W.data(), static_cast<const T*>(x), static_cast<const T*>(h0), static_cast<const T*>(c0),
                        lengths, static_cast<const T*>(c.dropout_masks), static_cast<T*>(y), hn, cn,
                        cache ? payload<T>(cache) : nullptr, nz, packed.get(), false, low.get());
    if (cache) {
        PlanCacheHeader h;
        std::memset(&h, 0, sizeof h);
        std::memcpy(h.magic, kPlanCacheMagic, sizeof h.magic);
        h.abi = FASTRNN_ABI_VERSION;
        h.state = kCacheFilled;
        h.plan_id = plan.id;
        h.call_bits = bits;
        h.has_lengths = lengths != nullptr;
        h.T = T_;
        h.N = N;
        std::memcpy(cache, &h, sizeof h);
    }
}

template <class T>
void plan_backward(const fastrnn_plan& plan, const PlanCacheHeader& h, const void* x, const std::int64_t* lengths,
                   void* cache, const void* grad_y, const void* grad_h_n, const void* grad_c_n, void* grad_x,
                   void* grad_h0, void* grad_c0, void* grads, const fastrnn_plan_call_options& c,
                   const fastrnn_backward_options& o) {
    fastrnn::Desc d = plan.core.call(h.T, h.N);
    d.bn_frozen = c.bn_frozen != 0;
    const auto& W = plan.core.weights<T>();
    const auto G = plan.core.grads<T>(plan_arrays<T>(plan, grads, static_cast<void*>(nullptr)));
    const i64 K = fastrnn::state_size(d), S = d.L * d.D * d.N * K, SC = d.L * d.D * d.N * d.H;
    std::vector<T> gx_tmp, gh0_tmp, gc0_tmp;
    T* gx = or_scratch<T>(grad_x, d.T * d.N * d.C, gx_tmp);
    T* gh0 = or_scratch<T>(grad_h0, S, gh0_tmp);
    T* gc0 = fastrnn::cell_has_c(d) ? or_scratch<T>(grad_c0, SC, gc0_tmp) : nullptr;
    fastrnn::BackwardOptions<T> opt;
    opt.retain = o.retain != 0;
    opt.bptt_clip = T(o.bptt_clip);
    opt.diag.grad_h_sq = o.grad_h_sq;
    opt.diag.grad_c_sq = o.grad_c_sq;
    opt.noise = plan_noise<T>(plan, c, true, nullptr);
    opt.bf16 = plan.precision == fastrnn::Precision::BF16;  // as the forward that filled the cache
    if (!opt.retain) set_cache_state(cache, kCacheConsumed);
    fastrnn::backward<T>(d, W.data(), static_cast<const T*>(x), lengths, static_cast<const T*>(c.dropout_masks),
                         payload<T>(cache), static_cast<const T*>(grad_y), static_cast<const T*>(grad_h_n),
                         static_cast<const T*>(grad_c_n), gx, gh0, gc0, G.data(), opt);
}

}  // namespace

// ---- exported functions ------------------------------------------------------------------------

extern "C" {

const char* fastrnn_last_error(void) { return t_error_fallback ? t_error_fallback : t_error.c_str(); }

void fastrnn_set_last_error(const char* message) {
    if (message)
        set_error(nullptr, message);
    else
        clear_error();
}

const char* fastrnn_status_name(fastrnn_status status) {
    switch (status) {
        case FASTRNN_OK: return "FASTRNN_OK";
        case FASTRNN_ERR_INVALID: return "FASTRNN_ERR_INVALID";
        case FASTRNN_ERR_NOMEM: return "FASTRNN_ERR_NOMEM";
        case FASTRNN_ERR_UNSUPPORTED: return "FASTRNN_ERR_UNSUPPORTED";
        case FASTRNN_ERR_VERSION: return "FASTRNN_ERR_VERSION";
        case FASTRNN_ERR_INTERNAL: return "FASTRNN_ERR_INTERNAL";
        default: return "unknown status";
    }
}

int fastrnn_version(void) { return FASTRNN_VERSION; }
const char* fastrnn_version_string(void) { return kVersionString; }
int fastrnn_abi_version(void) { return FASTRNN_ABI_VERSION; }

fastrnn_status fastrnn_check_version(int abi_version, int version) {
    const bool abi_ok = abi_version == FASTRNN_ABI_VERSION && version >= 0 && version / 10000 == FASTRNN_VERSION_MAJOR;
    if (abi_ok && version / 100 % 100 <= FASTRNN_VERSION_MINOR) {
        clear_error();
        return FASTRNN_OK;
    }
    try {
        const std::string header = to_string(version / 10000) + "." + to_string(version / 100 % 100) + "." +
                                   to_string(version % 100) + " (ABI " + to_string(abi_version) + ")";
        const std::string msg = "compiled against the header of fastrnn " + header + ", but the loaded library is " +
                                kVersionString + " (ABI " + to_string(FASTRNN_ABI_VERSION) + "): " +
                                (abi_ok ? "the library is older than the header; upgrade it"
                                        : "incompatible ABI; rebuild against the installed headers");
        set_error("fastrnn_check_version", msg.c_str());
    } catch (...) {
        set_error("fastrnn_check_version", "header and library versions are incompatible");
    }
    return FASTRNN_ERR_VERSION;
}

fastrnn_status fastrnn_desc_init_(fastrnn_desc* desc, size_t struct_size) {
    return guarded("fastrnn_desc_init", [&] {
        if (!desc) invalid("desc: NULL");
        if (struct_size < sizeof(fastrnn_desc) || struct_size > kMaxStructSize)
            invalid("struct_size = " + to_string(struct_size) + ", expected sizeof(fastrnn_desc) = " +
                    to_string(sizeof(fastrnn_desc)));
        std::memset(static_cast<void*>(desc), 0, struct_size);  // also the fields of a newer header
        desc->struct_size = std::uint32_t(struct_size);
        desc->cell = FASTRNN_LSTM;
        desc->dtype = FASTRNN_FLOAT32;
        desc->bias = 1;
        desc->reset_after = 1;
        desc->num_layers = 1;
        desc->num_directions = 1;
    });
}

fastrnn_status fastrnn_param_count(const fastrnn_desc* desc, int64_t* count) {
    return guarded("fastrnn_param_count", [&] {
        const Problem P = check_desc(desc);
        if (!count) invalid("count: NULL");
        *count = P.params;
    });
}

fastrnn_status fastrnn_weights_from_flat(const fastrnn_desc* desc, const void* params, int64_t count,
                                         fastrnn_weights* out, int64_t out_len) {
    return guarded("fastrnn_weights_from_flat",
                   [&] { split_flat(check_desc(desc), params, count, out, out_len, "params"); });
}

fastrnn_status fastrnn_grads_from_flat(const fastrnn_desc* desc, void* grads, int64_t count, fastrnn_grads* out,
                                       int64_t out_len) {
    return guarded("fastrnn_grads_from_flat",
                   [&] { split_flat(check_desc(desc), grads, count, out, out_len, "grads"); });
}

fastrnn_status fastrnn_cache_size(const fastrnn_desc* desc, int dropout, size_t* bytes) {
    return guarded("fastrnn_cache_size", [&] {
        const Problem P = check_desc(desc);
        if (dropout != 0 && dropout != 1) invalid("dropout = " + to_string(dropout) + ", expected 0 or 1");
        if (!bytes) invalid("bytes: NULL");
        *bytes = cache_bytes_of(P, dropout != 0);
    });
}

fastrnn_status fastrnn_workspace_size(const fastrnn_desc* desc, int pass, size_t* bytes) {
    return guarded("fastrnn_workspace_size", [&] {
        const Problem P = check_desc(desc);
        if (pass < FASTRNN_PASS_INFERENCE || pass > FASTRNN_PASS_BACKWARD_RETAIN)
            invalid("pass = " + to_string(pass) + ", expected a fastrnn_pass value (0 to 3)");
        if (!bytes) invalid("bytes: NULL");
        const int threads = fastrnn::get_num_threads();
        const int nr = P.dtype == FASTRNN_FLOAT32 ? fastrnn::active_kernels<float>().nr
                                                  : fastrnn::active_kernels<double>().nr;
        const bool fwd = pass <= FASTRNN_PASS_TRAINING;
        const i64 elements = fwd ? fastrnn::forward_scratch_elements(P.d, pass == FASTRNN_PASS_TRAINING, threads, nr)
                                 : fastrnn::backward_scratch_elements(P.d, pass == FASTRNN_PASS_BACKWARD_RETAIN,
                                                                      threads, nr);
        // The core sizes its carving in doubles: allow a float region to round up further (64 B
        // each), and count backward's per-thread diagnostics accumulators.
        const i64 regions = 8 * P.d.D + 2 * i64(threads) + 4;
        const i64 diag = fwd ? 0 : product("the diagnostics", {2, threads, P.d.D, P.d.T});
        *bytes = to_bytes("the workspace", elements, P.esize, std::size_t(regions * 64 + diag * 8));
    });
}

fastrnn_status fastrnn_forward(const fastrnn_desc* desc, const fastrnn_weights* weights, const void* x,
                               const void* h0, const void* c0, const int64_t* lengths, void* y, void* h_n, void* c_n,
                               void* cache, size_t cache_bytes, const fastrnn_forward_options* options) {
    return guarded("fastrnn_forward", [&] {
        const Problem P = check_desc(desc);
        fastrnn_forward_options opt;
        std::memset(&opt, 0, sizeof opt);
        if (options) opt = read_struct(options, "options");
        if (opt.reserved0 != 0) invalid("options->reserved0 = " + to_string(opt.reserved0) + ", expected 0");
        check_layer_pointers(P, weights, "weights");
        need(x, "x", P.esize);
        check_aligned(h0, "h0", P.esize);
        check_c_state(P, c0, "c0", false);
        check_lengths(P, lengths);
        need(y, "y", P.esize);
        check_aligned(h_n, "h_n", P.esize);
        check_c_state(P, c_n, "c_n", false);
        const void* masks = opt.dropout_masks;
        if (masks) {
            if (!cache) invalid("options->dropout_masks: only used by a training forward (cache != NULL)");
            if (P.d.L == 1)
                invalid("options->dropout_masks: must be NULL when num_layers = 1 (dropout acts between layers)");
            check_aligned(masks, "options->dropout_masks", P.esize);
        }
        if (cache) check_cache(P, cache, cache_bytes, masks != nullptr);
        if (P.dtype == FASTRNN_FLOAT32)
            run_forward<float>(P, weights, x, h0, c0, lengths, y, h_n, c_n, cache, masks);
        else
            run_forward<double>(P, weights, x, h0, c0, lengths, y, h_n, c_n, cache, masks);
    });
}

fastrnn_status fastrnn_backward(const fastrnn_desc* desc, const fastrnn_weights* weights, const void* x,
                                const int64_t* lengths, void* cache, size_t cache_bytes, const void* grad_y,
                                const void* grad_h_n, const void* grad_c_n, void* grad_x, void* grad_h0,
                                void* grad_c0, const fastrnn_grads* grads, const fastrnn_backward_options* options) {
    return guarded("fastrnn_backward", [&] {
        const Problem P = check_desc(desc);
        fastrnn_backward_options opt;
        std::memset(&opt, 0, sizeof opt);
        if (options) opt = read_struct(options, "options");
        if (opt.retain != 0 && opt.retain != 1)
            invalid("options->retain = " + to_string(opt.retain) + ", expected 0 or 1");
        if (!(opt.bptt_clip >= 0))  // also NaN
            invalid("options->bptt_clip = " + to_string(opt.bptt_clip) + ", expected >= 0 (0: no clipping)");
        check_layer_pointers(P, weights, "weights");
        need(x, "x", P.esize);
        check_lengths(P, lengths);
        const CacheHeader h = check_filled_cache(P, cache, cache_bytes);
        if (bool(h.has_lengths) != (lengths != nullptr))
            invalid(std::string("lengths: ") + (lengths ? "given, but the forward that filled the cache had none"
                                                        : "NULL, but the forward that filled the cache had lengths"));
        if (h.dropout && !opt.dropout_masks)
            invalid("options->dropout_masks: NULL, but the forward that filled the cache used dropout masks");
        if (!h.dropout && opt.dropout_masks)
            invalid("options->dropout_masks: given, but the forward that filled the cache used none");
        check_aligned(opt.dropout_masks, "options->dropout_masks", P.esize);
        check_aligned(grad_y, "grad_y", P.esize);
        check_aligned(grad_h_n, "grad_h_n", P.esize);
        check_c_state(P, grad_c_n, "grad_c_n", false);
        check_aligned(grad_x, "grad_x", P.esize);
        check_aligned(grad_h0, "grad_h0", P.esize);
        check_c_state(P, grad_c0, "grad_c0", false);
        check_layer_pointers(P, grads, "grads");
        check_aligned(opt.grad_h_sq, "options->grad_h_sq", alignof(double));
        check_c_state(P, opt.grad_c_sq, "options->grad_c_sq", false);
        check_aligned(opt.grad_c_sq, "options->grad_c_sq", alignof(double));
        if (opt.grad_c_sq && !opt.grad_h_sq) invalid("options->grad_c_sq: needs options->grad_h_sq too");
        const BackwardArgs a{weights,  x,       grad_y,  grad_h_n, grad_c_n,       opt.dropout_masks, lengths,
                             cache,    grad_x,  grad_h0, grad_c0,  grads,          opt.retain != 0,   opt.bptt_clip,
                             opt.grad_h_sq, opt.grad_c_sq};
        if (P.dtype == FASTRNN_FLOAT32)
            run_backward<float>(P, a);
        else
            run_backward<double>(P, a);
    });
}

fastrnn_status fastrnn_plan_options_init_(fastrnn_plan_options* options, size_t struct_size) {
    return guarded("fastrnn_plan_options_init", [&] {
        if (!options) invalid("options: NULL");
        if (struct_size < sizeof(fastrnn_plan_options) || struct_size > kMaxStructSize)
            invalid("struct_size = " + to_string(struct_size) + ", expected sizeof(fastrnn_plan_options) = " +
                    to_string(sizeof(fastrnn_plan_options)));
        std::memset(static_cast<void*>(options), 0, struct_size);
        *options = default_plan_options();
        options->struct_size = std::uint32_t(struct_size);
    });
}

fastrnn_status fastrnn_plan_create(const fastrnn_desc* desc, const fastrnn_plan_options* options,
                                   fastrnn_plan** plan) {
    return guarded("fastrnn_plan_create", [&] {
        if (!plan) invalid("plan: NULL");
        *plan = nullptr;
        const Problem P = check_desc(desc, true);
        const fastrnn_plan_options o = options ? read_struct(options, "options") : default_plan_options();
        const fastrnn::Desc config = plan_config(P, o);
        fastrnn_desc d = read_struct(desc, "desc");
        d.seq_len = d.batch = 0;
        *plan = new fastrnn_plan(P, d, config);
        (*plan)->precision = o.compute == FASTRNN_COMPUTE_INT8   ? fastrnn::Precision::Int8
                             : o.compute == FASTRNN_COMPUTE_BF16 ? fastrnn::Precision::BF16
                                                                 : fastrnn::Precision::Float;
    });
}

void fastrnn_plan_destroy(fastrnn_plan* plan) { delete plan; }

fastrnn_status fastrnn_plan_param_count(const fastrnn_plan* plan, int64_t* params, int64_t* buffers) {
    return guarded("fastrnn_plan_param_count", [&] {
        const fastrnn_plan& p = need_plan(plan);
        if (!params && !buffers) invalid("params and buffers: both NULL");
        if (params) *params = p.params;
        if (buffers) *buffers = p.buffers;
    });
}

fastrnn_status fastrnn_plan_tensor_count(const fastrnn_plan* plan, int64_t* count) {
    return guarded("fastrnn_plan_tensor_count", [&] {
        const fastrnn_plan& p = need_plan(plan);
        if (!count) invalid("count: NULL");
        *count = i64(p.core.layout().size());
    });
}

fastrnn_status fastrnn_plan_tensor_info(const fastrnn_plan* plan, int64_t index, fastrnn_tensor_info* info) {
    return guarded("fastrnn_plan_tensor_info", [&] {
        const fastrnn_plan& p = need_plan(plan);
        const auto& layout = p.core.layout();
        if (index < 0 || index >= i64(layout.size()))
            invalid("index = " + to_string(index) + ", expected 0 <= index < " + to_string(layout.size()) +
                    " (fastrnn_plan_tensor_count)");
        if (!info) invalid("info: NULL");
        std::uint32_t size;
        std::memcpy(&size, info, sizeof size);
        if (size < sizeof(fastrnn_tensor_info) || size > kMaxStructSize)
            invalid("info->struct_size = " + to_string(size) + ", expected sizeof(fastrnn_tensor_info) = " +
                    to_string(sizeof(fastrnn_tensor_info)));
        const fastrnn::ParamInfo& t = layout[std::size_t(index)];
        fastrnn_tensor_info out;
        std::memset(&out, 0, sizeof out);
        out.struct_size = size;
        out.buffer = t.buffer;
        out.name = t.name.c_str();
        out.ndim = i64(t.shape.size());
        out.shape[0] = t.shape[0];
        out.shape[1] = t.shape.size() > 1 ? t.shape[1] : 1;
        out.offset = p.offsets[std::size_t(index)];
        out.layer = t.layer;
        out.direction = t.direction;
        std::memset(static_cast<void*>(info), 0, size);  // fields of a newer header: zero
        std::memcpy(static_cast<void*>(info), &out, sizeof out);
    });
}

fastrnn_status fastrnn_plan_set_params(fastrnn_plan* plan, const void* params, void* buffers) {
    return guarded("fastrnn_plan_set_params", [&] {
        if (!plan) invalid("plan: NULL");
        const std::size_t es = plan->problem.esize;
        need(params, "params", es);
        if (plan->buffers > 0)
            need(buffers, "buffers", es);
        else
            need_null(buffers, "buffers", "(this plan has no buffers: fastrnn_plan_param_count)");
        if (plan->problem.dtype == FASTRNN_FLOAT32)
            plan->core.set_weights<float>(plan_arrays<float>(*plan, params, static_cast<const void*>(buffers)));
        else
            plan->core.set_weights<double>(plan_arrays<double>(*plan, params, static_cast<const void*>(buffers)));
        plan->param_data = params;
        plan->buffer_data = buffers;
    });
}

fastrnn_status fastrnn_plan_cache_size(const fastrnn_plan* plan, int64_t seq_len, int64_t batch, int dropout,
                                       size_t* bytes) {
    return guarded("fastrnn_plan_cache_size", [&] {
        const fastrnn_plan& p = need_plan(plan);
        expect_positive("seq_len", seq_len);
        expect_positive("batch", batch);
        if (dropout != 0 && dropout != 1) invalid("dropout = " + to_string(dropout) + ", expected 0 or 1");
        if (!bytes) invalid("bytes: NULL");
        *bytes = plan_cache_bytes(p, seq_len, batch, dropout != 0);
    });
}

fastrnn_status fastrnn_plan_packed_bytes(const fastrnn_plan* plan, size_t* bytes) {
    return guarded("fastrnn_plan_packed_bytes", [&] {
        const fastrnn_plan& p = need_plan(plan);
        if (!bytes) invalid("bytes: NULL");
        *bytes = p.core.packed_bytes();
    });
}

fastrnn_status fastrnn_plan_forward(const fastrnn_plan* plan, int64_t seq_len, int64_t batch, const void* x,
                                    const void* h0, const void* c0, const int64_t* lengths, void* y, void* h_n,
                                    void* c_n, void* cache, size_t cache_bytes, const fastrnn_plan_call_options* call) {
    return guarded("fastrnn_plan_forward", [&] {
        const fastrnn_plan& p = need_plan(plan);
        expect_positive("seq_len", seq_len);
        expect_positive("batch", batch);
        const Problem P = check_desc(&p.desc, true, seq_len, batch);
        if (!p.param_data) invalid("plan: no parameters yet (fastrnn_plan_set_params)");
        const fastrnn_plan_call_options c = read_call(call);
        need(x, "x", P.esize);
        check_aligned(h0, "h0", P.esize);
        check_c_state(P, c0, "c0", false);
        check_lengths(P, lengths);
        need(y, "y", P.esize);
        check_aligned(h_n, "h_n", P.esize);
        check_c_state(P, c_n, "c_n", false);
        if (c.dropout_masks) {
            if (!cache) invalid("call->dropout_masks: only used by a training forward (cache != NULL)");
            if (P.d.L == 1)
                invalid("call->dropout_masks: must be NULL when num_layers = 1 (dropout acts between layers)");
            check_aligned(c.dropout_masks, "call->dropout_masks", P.esize);
        }
        if (p.precision == fastrnn::Precision::Int8 && cache)
            invalid("cache: the plan computes in int8 (options->compute), for inference only: pass cache = NULL");
        if (p.precision != fastrnn::Precision::Float && c.weight_drop)
            invalid("call->weight_drop: the plan computes in " +
                    std::string(p.precision == fastrnn::Precision::Int8 ? "int8" : "bf16") +
                    " (options->compute), on weights converted from the parameters, not from masked ones");
        std::uint32_t bits = 0;
        if (P.dtype == FASTRNN_FLOAT32)
            plan_noise<float>(p, c, cache != nullptr, &bits);
        else
            plan_noise<double>(p, c, cache != nullptr, &bits);
        if (c.dropout_masks) bits |= kInterLayerDropout;
        if (cache) {
            need(cache, "cache", P.esize);
            const std::size_t needed = plan_cache_bytes(p, seq_len, batch, c.dropout_masks != nullptr);
            if (cache_bytes < needed)
                invalid("cache_bytes = " + to_string(cache_bytes) + ", expected at least " + to_string(needed) +
                        " (fastrnn_plan_cache_size with dropout = " + to_string(int(c.dropout_masks != nullptr)) + ")");
        }
        if (P.dtype == FASTRNN_FLOAT32)
            plan_forward<float>(p, seq_len, batch, x, h0, c0, lengths, y, h_n, c_n, cache, c, bits);
        else
            plan_forward<double>(p, seq_len, batch, x, h0, c0, lengths, y, h_n, c_n, cache, c, bits);
    });
}

fastrnn_status fastrnn_plan_backward(const fastrnn_plan* plan, const void* x, const int64_t* lengths, void* cache,
                                     size_t cache_bytes, const void* grad_y, const void* grad_h_n,
                                     const void* grad_c_n, void* grad_x, void* grad_h0, void* grad_c0, void* grads,
                                     const fastrnn_plan_call_options* call, const fastrnn_backward_options* options) {
    return guarded("fastrnn_plan_backward", [&] {
        const fastrnn_plan& p = need_plan(plan);
        if (!p.param_data) invalid("plan: no parameters yet (fastrnn_plan_set_params)");
        need(cache, "cache", p.problem.esize);
        if (cache_bytes < kCacheHeaderBytes)
            invalid("cache_bytes = " + to_string(cache_bytes) + ", too small for a cache filled by fastrnn_plan_forward");
        PlanCacheHeader h;
        std::memcpy(&h, cache, sizeof h);
        if (std::memcmp(h.magic, kPlanCacheMagic, sizeof h.magic) != 0 || h.abi != FASTRNN_ABI_VERSION ||
            h.state == kCacheInvalid)
            invalid("cache: not filled by a successful training fastrnn_plan_forward (cache != NULL)");
        if (h.plan_id != p.id) invalid("cache: filled through another plan");
        if (h.state == kCacheConsumed)
            invalid("cache: consumed by an earlier fastrnn_plan_backward with retain = 0 (or a failed one); run a "
                    "training forward again, or pass retain = 1 to keep it");
        const Problem P = check_desc(&p.desc, true, h.T, h.N);
        const std::size_t needed = plan_cache_bytes(p, h.T, h.N, h.call_bits & kInterLayerDropout);
        if (cache_bytes < needed)
            invalid("cache_bytes = " + to_string(cache_bytes) + ", expected at least " + to_string(needed));
        fastrnn_backward_options o;
        std::memset(&o, 0, sizeof o);
        if (options) o = read_struct(options, "options");
        if (o.retain != 0 && o.retain != 1) invalid("options->retain = " + to_string(o.retain) + ", expected 0 or 1");
        if (!(o.bptt_clip >= 0))
            invalid("options->bptt_clip = " + to_string(o.bptt_clip) + ", expected >= 0 (0: no clipping)");
        if (o.dropout_masks) invalid("options->dropout_masks: must be NULL here (plans take them in call)");
        const fastrnn_plan_call_options c = read_call(call);
        need(x, "x", P.esize);
        check_lengths(P, lengths);
        if (bool(h.has_lengths) != (lengths != nullptr))
            invalid(std::string("lengths: ") + (lengths ? "given, but the forward that filled the cache had none"
                                                        : "NULL, but the forward that filled the cache had lengths"));
        std::uint32_t bits = 0;
        if (P.dtype == FASTRNN_FLOAT32)
            plan_noise<float>(p, c, true, &bits);
        else
            plan_noise<double>(p, c, true, &bits);
        if (c.dropout_masks) {
            check_aligned(c.dropout_masks, "call->dropout_masks", P.esize);
            bits |= kInterLayerDropout;
        }
        if (bits != h.call_bits)
            invalid("call: differs from the forward's (each mask the forward had, and only those, and the same "
                    "bn_frozen)");
        check_aligned(grad_y, "grad_y", P.esize);
        check_aligned(grad_h_n, "grad_h_n", P.esize);
        check_c_state(P, grad_c_n, "grad_c_n", false);
        check_aligned(grad_x, "grad_x", P.esize);
        check_aligned(grad_h0, "grad_h0", P.esize);
        check_c_state(P, grad_c0, "grad_c0", false);
        need(grads, "grads", P.esize);
        check_aligned(o.grad_h_sq, "options->grad_h_sq", alignof(double));
        check_c_state(P, o.grad_c_sq, "options->grad_c_sq", false);
        check_aligned(o.grad_c_sq, "options->grad_c_sq", alignof(double));
        if (o.grad_c_sq && !o.grad_h_sq) invalid("options->grad_c_sq: needs options->grad_h_sq too");
        if (P.dtype == FASTRNN_FLOAT32)
            plan_backward<float>(p, h, x, lengths, cache, grad_y, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0, grads,
                                 c, o);
        else
            plan_backward<double>(p, h, x, lengths, cache, grad_y, grad_h_n, grad_c_n, grad_x, grad_h0, grad_c0,
                                  grads, c, o);
    });
}

fastrnn_status fastrnn_set_num_threads(int n) {
    return guarded("fastrnn_set_num_threads", [&] {
        if (n < 1) invalid("n = " + to_string(n) + ", expected >= 1");
        fastrnn::set_num_threads(n);  // also caps the BLAS threads of the large hoisted GEMMs (core/blas.h)
    });
}

int fastrnn_get_num_threads(void) { return fastrnn::get_num_threads(); }

const char* fastrnn_get_isa(void) {
    try {
        return intern(fastrnn::get_isa());
    } catch (...) {
        return nullptr;
    }
}

const char* fastrnn_available_isa(int i) {
    try {
        const std::vector<std::string> isas = fastrnn::available_isas();
        return i >= 0 && std::size_t(i) < isas.size() ? intern(isas[std::size_t(i)]) : nullptr;
    } catch (...) {
        return nullptr;
    }
}

fastrnn_status fastrnn_set_isa(const char* name) {
    return guarded("fastrnn_set_isa", [&] {
        if (!name) invalid("name: NULL");
        fastrnn::set_isa(name);  // std::invalid_argument naming the available ISAs
    });
}

}  // extern "C"

// ---- streams ---------------------------------------------------------------------------------

struct fastrnn_stream {
    const fastrnn_plan* plan;
    std::unique_ptr<fastrnn::Stream<float>> f;
    std::unique_ptr<fastrnn::Stream<double>> d;
    i64 x_elems, y_elems;  // of one step: N*C, N*K
};

namespace {

fastrnn_stream& need_stream(const fastrnn_stream* stream) {
    if (!stream) invalid("stream: NULL");
    return *const_cast<fastrnn_stream*>(stream);
}

template <class T>
fastrnn::Stream<T>& typed(fastrnn_stream& s) {
    if constexpr (std::is_same_v<T, float>) return *s.f; else return *s.d;
}

template <class T>
void copy_state(fastrnn_stream& s, void* h, void* c, const void* h_in, const void* c_in) {
    fastrnn::Stream<T>& st = typed<T>(s);
    const std::size_t nh = std::size_t(st.state_elements()), nc = std::size_t(st.cell_state_elements());
    if (h) std::memcpy(h, st.h(), nh * sizeof(T));
    if (c && nc) std::memcpy(c, st.c(), nc * sizeof(T));
    if (h_in) std::memcpy(st.h(), h_in, nh * sizeof(T));
    if (c_in && nc) std::memcpy(st.c(), c_in, nc * sizeof(T));
}

}  // namespace

fastrnn_status fastrnn_stream_create(const fastrnn_plan* plan, int64_t batch, double zoneout_h_rate,
                                     double zoneout_c_rate, fastrnn_stream** stream) {
    return guarded("fastrnn_stream_create", [&] {
        if (!stream) invalid("stream: NULL");
        *stream = nullptr;
        const fastrnn_plan& p = need_plan(plan);
        expect_positive("batch", batch);
        const Problem P = check_desc(&p.desc, true, 1, batch);
        // The C plan owns its core plan; the stream borrows it (destroy streams before their plan).
        std::shared_ptr<const fastrnn::Plan> core(&p.core, [](const fastrnn::Plan*) {});
        auto s = std::make_unique<fastrnn_stream>();
        s->plan = plan;
        s->x_elems = product("batch*input_size", {batch, P.d.C});
        s->y_elems = product("batch*K", {batch, fastrnn::state_size(P.d)});
        if (P.dtype == FASTRNN_FLOAT32)
            s->f = std::make_unique<fastrnn::Stream<float>>(core, batch, zoneout_h_rate, zoneout_c_rate, p.precision);
        else
            s->d = std::make_unique<fastrnn::Stream<double>>(core, batch, zoneout_h_rate, zoneout_c_rate);
        *stream = s.release();
    });
}

void fastrnn_stream_destroy(fastrnn_stream* stream) { delete stream; }

fastrnn_status fastrnn_stream_step(fastrnn_stream* stream, int64_t steps, const void* x, void* y,
                                   const uint8_t* active) {
    return guarded("fastrnn_stream_step", [&] {
        fastrnn_stream& s = need_stream(stream);
        const fastrnn_plan& p = *s.plan;
        if (steps < 1) invalid("steps = " + to_string(steps) + ", expected >= 1");
        if (!p.param_data) invalid("plan: no parameters yet (fastrnn_plan_set_params)");
        product("steps*batch*input_size", {steps, s.x_elems});
        product("steps*batch*K", {steps, s.y_elems});
        need(x, "x", p.problem.esize);
        need(y, "y", p.problem.esize);
        if (s.f)
            s.f->step(static_cast<const float*>(x), steps, static_cast<float*>(y), active);
        else
            s.d->step(static_cast<const double*>(x), steps, static_cast<double*>(y), active);
    });
}

fastrnn_status fastrnn_stream_reset(fastrnn_stream* stream, const int64_t* slots, int64_t count) {
    return guarded("fastrnn_stream_reset", [&] {
        fastrnn_stream& s = need_stream(stream);
        if (slots && count < 0) invalid("count = " + to_string(count) + ", expected >= 0");
        if (s.f)
            s.f->reset(slots, count);
        else
            s.d->reset(slots, count);
    });
}

fastrnn_status fastrnn_stream_get_state(const fastrnn_stream* stream, void* h, void* c) {
    return guarded("fastrnn_stream_get_state", [&] {
        fastrnn_stream& s = need_stream(stream);
        if (!h && !c) invalid("h and c: both NULL");
        check_aligned(h, "h", s.plan->problem.esize);
        check_aligned(c, "c", s.plan->problem.esize);
        if (s.f) copy_state<float>(s, h, c, nullptr, nullptr); else copy_state<double>(s, h, c, nullptr, nullptr);
    });
}

fastrnn_status fastrnn_stream_set_state(fastrnn_stream* stream, const void* h, const void* c) {
    return guarded("fastrnn_stream_set_state", [&] {
        fastrnn_stream& s = need_stream(stream);
        if (!h && !c) invalid("h and c: both NULL");
        check_aligned(h, "h", s.plan->problem.esize);
        check_aligned(c, "c", s.plan->problem.esize);
        if (s.f) copy_state<float>(s, nullptr, nullptr, h, c); else copy_state<double>(s, nullptr, nullptr, h, c);
    });
}
