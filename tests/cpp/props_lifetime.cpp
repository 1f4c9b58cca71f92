// The CUDA driver's props() (csrc/cuda/driver_impl.cuh) must not hand out a reference into its
// per-device cache: the cache grows when a device is first used (by this thread or another),
// which leaves such a reference dangling. Built on the host emulator (two devices) with
// AddressSanitizer by tests/test_cuda.py, where a dangling read is a heap-use-after-free.
#include <cstdio>

#include "cuda/driver_impl.cuh"

int main() {
    using namespace fastrnn::cuda;
    emu::set_current_device(0);
    const DeviceProps& first = props();
    emu::set_current_device(1);  // the cache grows to two devices
    const DeviceProps& second = props();
    std::printf("sms %d %d\n", first.sms, second.sms);
    return first.sms == kEmuSms && second.sms == kEmuSms ? 0 : 1;
}
