// Inference backends: each reads a model file and its contract and runs NCHW float32 batches.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "contract.hpp"
#include "qfsdk.h"

namespace qfsdk {

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const noexcept = 0;
    // The batch every call must have (static-batch model), or 0 when any batch works.
    virtual size_t fixed_batch() const noexcept = 0;
    // The largest batch one call may have, or 0 for no limit.
    virtual size_t max_batch() const noexcept { return fixed_batch(); }
    // n x 3 x H x W floats in, n x embedding_size floats out. Safe to call concurrently.
    // Throws Error(QFSDK_ERR_BACKEND) when the engine fails.
    virtual void infer(const float* input, size_t n, float* output) = 0;
};

// A loaded model: the backend, its contract and the contract's JSON text as stored.
struct LoadedModel {
    std::unique_ptr<Backend> backend;
    Contract contract;
    std::string contract_json;
};

LoadedModel open_openvino(const std::string& path, const qfsdk_options& options);
LoadedModel open_tensorrt(const std::string& path, const qfsdk_options& options);

// Throws Error(QFSDK_ERR_NOT_FOUND) unless path names a readable regular file.
void require_file(const std::string& path, const char* what);

}  // namespace qfsdk
