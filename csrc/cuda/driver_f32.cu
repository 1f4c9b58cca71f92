// The CUDA driver for float data (see driver_impl.cuh).
#include "driver_impl.cuh"

namespace fastrnn {
namespace cuda {

template void forward<float>(const Desc&, const LayerWeights<float>*, const float*, const float*, const float*, const std::int64_t*,
                          const float*, float*, float*, float*, float*, void*, std::size_t, Stream);
template void backward<float>(const Desc&, const LayerWeights<float>*, const float*, const std::int64_t*, const float*, float*,
                           const float*, const float*, const float*, float*, float*, float*, const LayerGrads<float>*,
                           const BackwardOptions<float>&, void*, std::size_t, Stream);
template bool uses_persistent_for<float>(const Desc&, bool, bool);

}  // namespace cuda
}  // namespace fastrnn
