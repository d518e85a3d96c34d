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

// The same fit for any 5-point template (x0, y0, ..., x4, y4), in either direction.
Affine similarity_map(const double landmarks[10], const double tmpl[10], bool template_to_landmarks);

// Output pixels of out_h x out_w onto an image of height x width (runtime/resize.py scale_map).
Affine scale_map(size_t height, size_t width, size_t out_h, size_t out_w);

// Steps 2-4 for any map (runtime/resize.py warp): the pyramid only when `pyramid`, then
// bilinear sampling and rounding; writes out_h x out_w x 3 bytes.
void warp(const uint8_t* rgb, size_t height, size_t width, size_t stride, Affine m, size_t out_h, size_t out_w,
          bool pyramid, uint8_t* out);

// runtime/resize.py resize: the image resized to out_h x out_w (the same size: copied).
void resize(const uint8_t* rgb, size_t height, size_t width, size_t stride, size_t out_h, size_t out_w, uint8_t* out);

// Steps 2-4: 2x2-mean pyramid while the scale is >= 2, bilinear float32 sampling with a
// constant-0 border, rounding half up. Writes contract.height x contract.width x 3 bytes.
void warp_face(const uint8_t* rgb, size_t height, size_t width, size_t stride, const double landmarks[10],
               const Contract& contract, uint8_t* out);

// runtime/align.py check_landmarks without the image: nullptr when the 5 points can align a
// face, else why not (not finite, all at one point, on one line: spread across the principal
// axis below kMinLandmarkFlatness of the spread along it).
constexpr double kMinLandmarkFlatness = 1e-2;  // align.MIN_LANDMARK_FLATNESS
const char* landmark_problem(const double landmarks[10]);

// n tightly packed HWC uint8 RGB crops -> NCHW float32 per the contract: channel order,
// (pixel - mean) / std. With mirror, each crop is flipped left-right.
void normalize_crops(const uint8_t* rgb, size_t n, const Contract& contract, bool mirror, float* out);

}  // namespace qfsdk
