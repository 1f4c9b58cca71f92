// The CUDA driver for double data (see driver_impl.cuh).
#include "driver_impl.cuh"

namespace fastrnn {
namespace cuda {

template void forward<double>(const Desc&, const LayerWeights<double>*, const double*, const double*, const double*, const std::int64_t*,
                          const double*, double*, double*, double*, double*, void*, std::size_t, Stream);
template void backward<double>(const Desc&, const LayerWeights<double>*, const double*, const std::int64_t*, const double*, double*,
                           const double*, const double*, const double*, double*, double*, double*, const LayerGrads<double>*,
                           const BackwardOptions<double>&, void*, std::size_t, Stream);
template bool uses_persistent_for<double>(const Desc&, bool, bool);

}  // namespace cuda
}  // namespace fastrnn
