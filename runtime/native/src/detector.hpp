// The face detector behind qfsdk_detector: YuNet on OpenVINO, mirroring runtime/detect.py
// (FaceDetector.detect, decode_yunet, nms) step by step; keep them in step.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qfsdk.h"

namespace qfsdk {

// One face in image pixels: box x, y, width, height; 5 landmarks (x, y) in the detector's
// order (eye on the image's left, on its right, nose tip, mouth corner left, right); score.
struct Face {
    std::array<float, 4> box;
    std::array<float, 10> landmarks;
    float score;
};

class Detector {
public:
    // Throws Error (NOT_FOUND, UNSUPPORTED for a file that is no YuNet detector, BACKEND).
    Detector(const std::string& path, const qfsdk_detector_options& options);
    ~Detector();
    Detector(const Detector&) = delete;
    Detector& operator=(const Detector&) = delete;

    // The faces of one RGB image, best score first; faces of a scaled-down image refined at full
    // resolution unless options.refine is 0. Safe to call concurrently.
    std::vector<Face> detect(const uint8_t* rgb, size_t height, size_t width, size_t stride) const;

    // The (height, width) an image of that size is scaled to before detection.
    std::array<size_t, 2> network_size(size_t height, size_t width) const noexcept;

private:
    // (height, width) scaled so the longer side is at most limit (0: any) and a fixed input holds it.
    std::array<size_t, 2> fit(size_t height, size_t width, int32_t limit) const noexcept;
    // The faces of the image scaled to nh x nw, in the image's pixels (detect.py FaceDetector._detect).
    std::vector<Face> run(const uint8_t* rgb, size_t height, size_t width, size_t stride, size_t nh, size_t nw) const;
    // Each face replaced by its match on a full-resolution crop around it, then sorted (detect.py _refine).
    void refine(const uint8_t* rgb, size_t height, size_t width, size_t stride, std::vector<Face>& faces) const;

    struct Model;
    std::unique_ptr<Model> model_;
    qfsdk_detector_options options_;
};

// Indices kept by greedy NMS, best score first (detect.py nms): stable sort by score, cut to
// top_k, IoU on integer-truncated boxes, suppressed above threshold.
std::vector<size_t> nms(const std::vector<Face>& faces, double threshold, size_t top_k);

// detect.py refine_window: the crop {x0, y0, x1, y1} refining a face's box in a height x width image
// (grid: the network's input divisor); false when nothing of it is inside (or the box is not finite).
constexpr double kRefineCrop = 1.25;     // detect.py REFINE_CROP
constexpr double kRefineMinSide = 512;   // detect.py REFINE_MIN_SIDE
constexpr double kRefineMinIou = 0.5;    // detect.py REFINE_MIN_IOU
bool refine_window(const std::array<float, 4>& box, size_t height, size_t width, size_t grid, std::array<size_t, 4>& window);

// detect.py iou: the IoU (double) of two x, y, width, height boxes.
double iou(const std::array<float, 4>& a, const std::array<float, 4>& b);

}  // namespace qfsdk
