// Photos in, one embedding per face out (runtime/photos.py embed_photos): detect, align each
// face to the model's template in the detector's landmark semantics, embed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "detector.hpp"
#include "embedder.hpp"

namespace qfsdk {

// How detected faces are aligned for a contract (photos.py detector_template): the template in
// the detector's points, the fit direction and whether the template's own pipeline samples
// through the halving pyramid. Throws Error(QFSDK_ERR_UNSUPPORTED) when the contract has no template.
struct DetectorTemplate {
    double points[10];
    bool template_to_landmarks;
    bool pyramid;
};
DetectorTemplate detector_template(const Contract& contract);

// The faces of one photo that can be aligned (best score first); the first min(found, capacity)
// are aligned and embedded into embeddings (capacity x embedding_size floats).
std::vector<Face> embed_photo(const Embedder& embedder, const Detector& detector, const uint8_t* rgb, size_t height,
                              size_t width, size_t stride, size_t capacity, float* embeddings);

}  // namespace qfsdk
