// Face alignment and crop normalisation, mirroring runtime/align.py (warp_face) and
// FaceContract.preprocess step by step; keep them in step.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qfsdk {

struct Contract;

// Output pixel (u, v) lies at (m00 u + m01 v + t0, m10 u + m11 v + t1) in the image.
struct Affine {
    double m00, m01, m10, m11, t0, t1;
};

// Step 1: least-squares similarity between the 5 landmarks and the contract's template
// (float64, no reflection), in the direction of the contract's template_fit.
// Throws Error(QFSDK_ERR_INVALID_ARGUMENT) for degenerate landmarks.
Affine output_to_image(const double landmarks[10], const Contract& contract);

// Steps 2-4: 2x2-mean pyramid while the scale is >= 2, bilinear float32 sampling with a
// constant-0 border, rounding half up. Writes contract.height x contract.width x 3 bytes.
void warp_face(const uint8_t* rgb, size_t height, size_t width, size_t stride, const double landmarks[10],
               const Contract& contract, uint8_t* out);

// n tightly packed HWC uint8 RGB crops -> NCHW float32 per the contract: channel order,
// (pixel - mean) / std. With mirror, each crop is flipped left-right.
void normalize_crops(const uint8_t* rgb, size_t n, const Contract& contract, bool mirror, float* out);

}  // namespace qfsdk
