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

    // The faces of one RGB image, best score first. Safe to call concurrently.
    std::vector<Face> detect(const uint8_t* rgb, size_t height, size_t width, size_t stride) const;

    // The (height, width) an image of that size is scaled to before detection.
    std::array<size_t, 2> network_size(size_t height, size_t width) const noexcept;

private:
    struct Model;
    std::unique_ptr<Model> model_;
    qfsdk_detector_options options_;
};

// Indices kept by greedy NMS, best score first (detect.py nms): stable sort by score, cut to
// top_k, IoU on integer-truncated boxes, suppressed above threshold.
std::vector<size_t> nms(const std::vector<Face>& faces, double threshold, size_t top_k);

}  // namespace qfsdk
