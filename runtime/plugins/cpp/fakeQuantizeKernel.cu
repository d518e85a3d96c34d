// qfsdk::FakeQuantize CUDA kernel: one grid-stride loop, float32.
#include "fakeQuantizeKernel.h"

#include <algorithm>

namespace qfsdk
{
namespace
{

constexpr int32_t kBLOCK_SIZE = 256;
constexpr int64_t kMAX_BLOCKS = 65535;

__global__ void fakeQuantizeKernel(float const* __restrict__ x, float* __restrict__ y, int64_t count, float scale,
    float zeroPoint, float qmin, float qmax)
{
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride)
    {
        // Explicit round-to-nearest intrinsics: no fast-math reciprocal, no FMA contraction.
        float q = __fadd_rn(rintf(__fdiv_rn(x[i], scale)), zeroPoint);
        q = fminf(fmaxf(q, qmin), qmax);
        y[i] = __fmul_rn(__fsub_rn(q, zeroPoint), scale);
    }
}

} // namespace

cudaError_t launchFakeQuantize(
    float const* x, float* y, int64_t count, FakeQuantizeParams const& params, cudaStream_t stream) noexcept
{
    if (count <= 0)
    {
        return cudaSuccess;
    }
    int64_t const blocks = std::min<int64_t>((count + kBLOCK_SIZE - 1) / kBLOCK_SIZE, kMAX_BLOCKS);
    fakeQuantizeKernel<<<static_cast<uint32_t>(blocks), kBLOCK_SIZE, 0, stream>>>(x, y, count, params.scale,
        static_cast<float>(params.zeroPoint), static_cast<float>(params.qmin), static_cast<float>(params.qmax));
    return cudaGetLastError();
}

} // namespace qfsdk
