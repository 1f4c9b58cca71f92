// The CUDA driver for float data (see driver_impl.cuh).
#include "driver_impl.cuh"

namespace fastrnn {
namespace cuda {

using U = float;
template void forward<U>(const Desc&, const LayerWeights<U>*, const U*, const U*, const U*, const std::int64_t*,
                         const U*, U*, U*, U*, U*, void*, std::size_t, Stream);
template void backward<U>(const Desc&, const LayerWeights<U>*, const U*, const std::int64_t*, const U*, U*, const U*,
                          const U*, const U*, U*, U*, U*, const LayerGrads<U>*, const BackwardOptions<U>&, void*,
                          std::size_t, Stream);
template bool uses_persistent_for<U>(const Desc&, bool, bool);

}  // namespace cuda
}  // namespace fastrnn
