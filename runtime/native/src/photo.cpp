#include "photo.hpp"

#include <algorithm>
#include <cmath>

#include "error.hpp"
#include "image.hpp"

namespace qfsdk {
namespace {

// runtime/align.py TEMPLATES and DETECTOR_TEMPLATES, photos.py PYRAMID; keep them in step.
struct KnownTemplate {
    const char* name;
    double points[10];             // as the contract holds it
    const double* detector_points; // in the detector's points, or nullptr: the same
    bool pyramid;
};
constexpr double kDlibDetector[10] = {47.8407, 42.9802, 100.5669, 44.0908, 69.9749, 76.4420, 50.8267, 102.3241, 96.5580, 103.6683};
constexpr KnownTemplate kTemplates[] = {
    {"arcface", {38.2946, 51.6963, 73.5318, 51.5014, 56.0252, 71.7366, 41.5493, 92.3655, 70.7299, 92.2041}, nullptr, false},
    {"dlib", {110.4078, 45.8888, 89.0862, 47.4336, 36.6092, 45.9117, 57.9311, 47.4433, 73.5126, 87.2624}, kDlibDetector, true},
};

bool all_close(const double* a, const double* b) {  // numpy.allclose(a, b): |a - b| <= 1e-8 + 1e-5 |b|
    for (int i = 0; i < 10; ++i)
        if (!(std::fabs(a[i] - b[i]) <= 1e-8 + 1e-5 * std::fabs(b[i]))) return false;
    return true;
}

}  // namespace

DetectorTemplate detector_template(const Contract& c) {
    if (c.landmark_template.size() != 5)
        throw Error(QFSDK_ERR_UNSUPPORTED, "the model's contract has no alignment template (alignment '" + c.alignment +
                                               "'): detected faces cannot be aligned for it; pass aligned crops instead");
    DetectorTemplate out{{}, c.fit_template_to_landmarks, false};
    for (int i = 0; i < 10; ++i) out.points[i] = c.landmark_template[i / 2][i % 2];
    for (const KnownTemplate& known : kTemplates)
        if (all_close(out.points, known.points)) {
            if (known.detector_points) std::copy(known.detector_points, known.detector_points + 10, out.points);
            out.pyramid = known.pyramid;
            break;
        }
    return out;
}

std::vector<Face> embed_photo(const Embedder& embedder, const Detector& detector, const uint8_t* rgb, size_t height,
                              size_t width, size_t stride, size_t capacity, float* embeddings) {
    const Contract& c = embedder.contract();
    const DetectorTemplate tmpl = detector_template(c);  // before any work
    std::vector<Face> faces = detector.detect(rgb, height, width, stride);
    std::vector<Face> aligned;
    std::vector<Affine> maps;  // of the faces to embed
    for (const Face& face : faces) {
        double points[10];
        std::copy(face.landmarks.begin(), face.landmarks.end(), points);
        if (landmark_problem(points)) continue;  // degenerate points: no face to align (photos.py align_faces)
        if (aligned.size() < capacity) {
            maps.push_back(similarity_map(points, tmpl.points, tmpl.template_to_landmarks));
        }
        aligned.push_back(face);
    }
    const size_t k = maps.size(), pixels = c.height * c.width * 3;
    if (k == 0) return aligned;
    std::vector<uint8_t> crops(k * pixels);
    for (size_t i = 0; i < k; ++i)
        warp(rgb, height, width, stride, maps[i], c.height, c.width, tmpl.pyramid, crops.data() + i * pixels);
    embedder.embed_aligned(crops.data(), k, embeddings);
    return aligned;
}

}  // namespace qfsdk
