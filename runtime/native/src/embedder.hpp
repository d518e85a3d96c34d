// The embedder behind the C handle: batching, flip, normalisation, alignment.
#pragma once

#include <cstdint>
#include <string>

#include "backend.hpp"

namespace qfsdk {

class Embedder {
public:
    // backend: "openvino", "tensorrt" or empty for auto. Throws Error.
    Embedder(const std::string& path, const std::string& backend, const qfsdk_options& options);

    const Contract& contract() const noexcept { return model_.contract; }
    const std::string& contract_json() const noexcept { return model_.contract_json; }
    const char* backend_name() const noexcept { return model_.backend->name(); }

    // n packed HWC RGB crops of the contract's input size -> n x embedding_size floats.
    void embed_aligned(const uint8_t* rgb, size_t n, float* out) const;
    // Full image + 5 landmarks -> the aligned crop (input height x width x 3).
    void align(const uint8_t* rgb, size_t height, size_t width, size_t stride, const float landmarks[10],
               uint8_t* crop) const;

private:
    // Runs m preprocessed images through the backend in the batches it accepts.
    void run(const float* input, size_t m, float* raw) const;

    LoadedModel model_;
    qfsdk_options options_;
};

}  // namespace qfsdk
