// The non-template part of the CUDA backend: devices, memory, copies, workspace sizes. Built by
// nvcc against the CUDA runtime (linked statically, so importing fastrnn._cuda needs no CUDA
// library), or by the host compiler for the emulator, where "device" memory is host memory.
#include "driver_impl.cuh"

#include <cstdlib>
#include <cstring>

namespace fastrnn {
namespace cuda {

// Compiled in driver_f32.cu / driver_f64.cu.
extern template bool uses_persistent_for<float>(const Desc&, bool, bool);
extern template bool uses_persistent_for<double>(const Desc&, bool, bool);

#if defined(__CUDACC__)

const char* backend() { return "cuda"; }

int device_count(std::string* why) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (why)
            *why = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
                   ")";
        return 0;
    }
    if (n == 0 && why) *why = "no CUDA device is visible (cudaGetDeviceCount returned 0)";
    return n;
}

int runtime_version() {
    int v = 0;
    return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int driver_version() {
    int v = 0;
    return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

std::string device_name(int device) {
    cudaDeviceProp p;
    check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
    return p.name;
}

int device_capability(int device) {
    int major = 0, minor = 0;
    check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "cudaDeviceGetAttribute");
    return major * 10 + minor;
}

int get_device() { return current_device(); }
void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

void* device_malloc(std::size_t bytes) {
    void* p = nullptr;
    check(cudaMalloc(&p, std::max<std::size_t>(bytes, 1)), "cudaMalloc");
    return p;
}

void device_free(void* p) {
    if (p) check(cudaFree(p), "cudaFree");
}

void copy(void* dst, const void* src, std::size_t bytes, Stream stream) {
    if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, native(stream)), "cudaMemcpyAsync");
}

void zero(void* dst, std::size_t bytes, Stream stream) {
    if (bytes) check(cudaMemsetAsync(dst, 0, bytes, native(stream)), "cudaMemsetAsync");
}

void synchronize(Stream stream) { check(cudaStreamSynchronize(native(stream)), "cudaStreamSynchronize"); }

#else  // host emulator: one device, host memory, everything synchronous

const char* backend() { return "emulator"; }
int device_count(std::string*) { return emu::kDevices; }
int runtime_version() { return 0; }
int driver_version() { return 0; }
std::string device_name(int) { return "fastrnn CUDA host emulator"; }
int device_capability(int) { return 0; }
int get_device() { return emu::current_device(); }
void set_device(int device) { emu::set_current_device(device); }

void* device_malloc(std::size_t bytes) {
    void* p = std::malloc(std::max<std::size_t>(bytes, 1));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0xFF, bytes);  // NaN patterns: reads of memory no one wrote show up
    return p;
}

void device_free(void* p) { std::free(p); }
void copy(void* dst, const void* src, std::size_t bytes, Stream) {
    if (bytes) std::memcpy(dst, src, bytes);
}
void zero(void* dst, std::size_t bytes, Stream) {
    if (bytes) std::memset(dst, 0, bytes);
}
void synchronize(Stream) {}

#endif

namespace {
template <class Word>
void copy_words(void* dst, const void* src, int ndim, const std::int64_t* shape, const std::int64_t* strides,
                Stream stream) {
    typename StridedCopy<Word>::Args a{};
    a.src = static_cast<const char*>(src);
    a.dst = static_cast<Word*>(dst);
    a.ndim = ndim;
    a.n = 1;
    for (int k = 0; k < ndim; ++k) {
        a.shape[k] = shape[k];
        a.strides[k] = strides[k];
        a.n *= shape[k];
    }
    launch_elementwise<StridedCopy<Word>>(a.n, stream, a);
}
}  // namespace

void copy_strided(void* dst, const void* src, int ndim, const std::int64_t* shape, const std::int64_t* strides,
                  int itemsize, Stream stream) {
    if (ndim < 1 || ndim > kMaxDims) throw std::invalid_argument("copy_strided: 1 to 4 dimensions");
    switch (itemsize) {
        case 1: return copy_words<std::uint8_t>(dst, src, ndim, shape, strides, stream);
        case 2: return copy_words<std::uint16_t>(dst, src, ndim, shape, strides, stream);
        case 4: return copy_words<std::uint32_t>(dst, src, ndim, shape, strides, stream);
        case 8: return copy_words<std::uint64_t>(dst, src, ndim, shape, strides, stream);
        default: throw std::invalid_argument("copy_strided: itemsize must be 1, 2, 4 or 8");
    }
}

std::int64_t forward_workspace_bytes(const Desc& d, bool training, bool double_precision) {
    return double_precision ? forward_bytes<double>(d, training) : forward_bytes<float>(d, training);
}

std::int64_t backward_workspace_bytes(const Desc& d, bool retain, bool diagnostics, bool double_precision) {
    return double_precision ? backward_bytes<double>(d, retain, diagnostics)
                            : backward_bytes<float>(d, retain, diagnostics);
}

bool uses_persistent(const Desc& d, bool forward, bool diagnostics, bool double_precision) {
    return double_precision ? uses_persistent_for<double>(d, forward, diagnostics)
                            : uses_persistent_for<float>(d, forward, diagnostics);
}

}  // namespace cuda
}  // namespace fastrnn
