// Error checking and device selection for the CUDA entry points.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pyprune::cuda {

/// Throw std::runtime_error naming the call and CUDA's message when it failed.
inline void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("pyprune CUDA: ") + what + ": " + cudaGetErrorString(e));
}

#define PYPRUNE_CUDA(call) ::pyprune::cuda::check_cuda((call), #call)

/// Makes `device` current for its lifetime, then restores the caller's device.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        PYPRUNE_CUDA(cudaGetDevice(&previous_));
        if (device != previous_) PYPRUNE_CUDA(cudaSetDevice(device));
    }
    ~DeviceGuard() { cudaSetDevice(previous_); }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;

private:
    int previous_ = 0;
};

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

/// Device memory from the stream-ordered allocator, freed on the same stream.
class DeviceBuffer {
public:
    DeviceBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
        PYPRUNE_CUDA(cudaMallocAsync(&ptr_, bytes > 0 ? bytes : 1, stream));
    }
    ~DeviceBuffer() { cudaFreeAsync(ptr_, stream_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    template <class T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }

private:
    void* ptr_ = nullptr;
    cudaStream_t stream_;
};

}  // namespace pyprune::cuda
