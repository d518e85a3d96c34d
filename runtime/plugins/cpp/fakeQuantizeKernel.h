// qfsdk::FakeQuantize CUDA kernel launcher (no TensorRT dependency).
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

namespace qfsdk
{

//! Per-tensor fake quantization: y = (clamp(round(x / scale) + zeroPoint, qmin, qmax) - zeroPoint) * scale.
struct FakeQuantizeParams
{
    float scale;
    int32_t zeroPoint;
    int32_t qmin;
    int32_t qmax;
};

//! Float32, IEEE division, round half to even: bit-identical to the ONNX reference function.
cudaError_t launchFakeQuantize(
    float const* x, float* y, int64_t count, FakeQuantizeParams const& params, cudaStream_t stream) noexcept;

} // namespace qfsdk
