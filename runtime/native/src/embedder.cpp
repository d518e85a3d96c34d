#include "embedder.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "error.hpp"
#include "image.hpp"

namespace qfsdk {

void require_file(const std::string& path, const char* what) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
        throw Error(QFSDK_ERR_NOT_FOUND, std::string(what) + " file not found: " + path);
}

namespace {

bool ends_with(const std::string& s, const char* suffix) {
    size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

LoadedModel open_model(const std::string& path, std::string backend, const qfsdk_options& options) {
    if (backend.empty()) backend = ends_with(path, ".engine") || ends_with(path, ".plan") ? "tensorrt" : "openvino";
    if (backend == "openvino") return open_openvino(path, options);
    if (backend == "tensorrt") {
#ifdef QFSDK_WITH_TENSORRT
        return open_tensorrt(path, options);
#else
        throw Error(QFSDK_ERR_BACKEND_UNAVAILABLE, "this libqfsdk was built without TensorRT (no NvInfer.h found at build time)");
#endif
    }
    throw Error(QFSDK_ERR_BACKEND_UNAVAILABLE, "unknown backend '" + backend + "'; choose \"openvino\" or \"tensorrt\"");
}

}  // namespace

Embedder::Embedder(const std::string& path, const std::string& backend, const qfsdk_options& options)
    : model_(open_model(path, backend, options)), options_(options) {}

void Embedder::run(const float* input, size_t m, float* raw) const {
    const Contract& c = model_.contract;
    const size_t item = 3 * c.height * c.width, fixed = model_.backend->fixed_batch();
    const size_t step = fixed ? fixed : (model_.backend->max_batch() ? model_.backend->max_batch() : m);
    std::vector<float> padded_in, padded_out;
    for (size_t start = 0; start < m; start += step) {
        size_t count = std::min(step, m - start);
        if (fixed && count < fixed) {  // static batch: pad the last group with zeros
            padded_in.assign(fixed * item, 0.0f);
            padded_out.resize(fixed * c.embedding_size);
            std::memcpy(padded_in.data(), input + start * item, count * item * sizeof(float));
            model_.backend->infer(padded_in.data(), fixed, padded_out.data());
            std::memcpy(raw + start * c.embedding_size, padded_out.data(), count * c.embedding_size * sizeof(float));
        } else {
            model_.backend->infer(input + start * item, count, raw + start * c.embedding_size);
        }
    }
}

void Embedder::embed_aligned(const uint8_t* rgb, size_t n, float* out) const {
    const Contract& c = model_.contract;
    const size_t pixels = c.height * c.width * 3, e = c.embedding_size;
    const size_t chunk = options_.batch_hint > 0 ? static_cast<size_t>(options_.batch_hint) : n;
    const size_t copies = options_.flip ? 2 : 1;  // the flipped crops follow the originals
    std::vector<float> input, raw;
    for (size_t start = 0; start < n; start += chunk) {
        size_t k = std::min(chunk, n - start);
        input.resize(copies * k * pixels);
        raw.resize(copies * k * e);
        normalize_crops(rgb + start * pixels, k, c, false, input.data());
        if (options_.flip) normalize_crops(rgb + start * pixels, k, c, true, input.data() + k * pixels);
        run(input.data(), copies * k, raw.data());
        for (size_t i = 0; i < k; ++i) {
            float* dst = out + (start + i) * e;
            for (size_t j = 0; j < e; ++j) dst[j] = raw[i * e + j] + (options_.flip ? raw[(k + i) * e + j] : 0.0f);
            if (options_.normalize) {  // after the flip-sum, as the Python Embedder does
                double sum = 0;
                for (size_t j = 0; j < e; ++j) sum += static_cast<double>(dst[j]) * dst[j];
                const float norm = std::max(static_cast<float>(std::sqrt(sum)), 1e-12f);
                for (size_t j = 0; j < e; ++j) dst[j] /= norm;
            }
        }
    }
}

void Embedder::align(const uint8_t* rgb, size_t height, size_t width, size_t stride, const float landmarks[10],
                     uint8_t* crop) const {
    const Contract& c = model_.contract;
    if (c.landmark_template.size() != 5)
        throw Error(QFSDK_ERR_UNSUPPORTED, "the model's contract has no landmark template (alignment '" + c.alignment +
                                               "'); align crops yourself and call qfsdk_embed_aligned");
    double points[10];
    for (int i = 0; i < 10; ++i) {
        if (!std::isfinite(landmarks[i])) throw Error(QFSDK_ERR_INVALID_ARGUMENT, "landmarks must be finite numbers");
        points[i] = landmarks[i];
    }
    // The Python runtime's check_landmarks: a point off the image would embed a mostly black crop.
    for (int i = 0; i < 5; ++i) {
        const double x = points[2 * i], y = points[2 * i + 1];
        if (!(x >= -0.5 && x <= width - 0.5 && y >= -0.5 && y <= height - 0.5)) {
            char what[160];
            std::snprintf(what, sizeof what, "landmark %d at (%g, %g) lies outside the %zux%zu image", i, x, y, width, height);
            throw Error(QFSDK_ERR_INVALID_ARGUMENT, what);
        }
    }
    if (const char* problem = landmark_problem(points)) throw Error(QFSDK_ERR_INVALID_ARGUMENT, problem);
    warp_face(rgb, height, width, stride, points, c, crop);
}

}  // namespace qfsdk
