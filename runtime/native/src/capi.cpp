// The C boundary: argument checks, exceptions -> status codes, per-handle and thread errors.
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "embedder.hpp"
#include "error.hpp"
#include "qfsdk.h"

struct qfsdk_embedder {
    qfsdk_embedder(const std::string& path, const std::string& backend, const qfsdk_options& options)
        : impl(path, backend, options) {}
    qfsdk::Embedder impl;
    mutable std::mutex mutex;           // guards last_error
    mutable std::string last_error;
};

namespace {

using qfsdk::Error;

thread_local std::string t_last_error;  // this thread's latest failure
thread_local std::string t_returned;    // what qfsdk_last_error handed out last

void record(const qfsdk_embedder* h, const char* message) noexcept {
    try {
        t_last_error = message;
        if (h) {
            std::lock_guard<std::mutex> lock(h->mutex);
            h->last_error = message;
        }
    } catch (...) {  // out of memory while reporting: keep the status code
    }
}

// Runs body, mapping every exception to a status and a recorded message.
template <class Body>
qfsdk_status guarded(const qfsdk_embedder* h, Body&& body) noexcept {
    try {
        body();
        return QFSDK_OK;
    } catch (const Error& e) {
        record(h, e.what());
        return e.status();
    } catch (const std::bad_alloc&) {
        record(h, "out of memory");
    } catch (const std::exception& e) {
        record(h, e.what());
    } catch (...) {
        record(h, "unknown internal error");
    }
    return QFSDK_ERR_INTERNAL;
}

void require(bool ok, const char* message) {
    if (!ok) throw Error(QFSDK_ERR_INVALID_ARGUMENT, message);
}

// Checks the crop size against the contract and out_len against n embeddings.
void check_output(const qfsdk::Contract& c, size_t n, size_t out_len) {
    if (n > std::numeric_limits<size_t>::max() / (c.height * c.width * 3 + c.embedding_size))
        throw Error(QFSDK_ERR_INVALID_ARGUMENT, "too many images");
    if (out_len < n * c.embedding_size)
        throw Error(QFSDK_ERR_BUFFER_TOO_SMALL, "out_len " + std::to_string(out_len) + " < " + std::to_string(n) + " x " +
                                                    std::to_string(c.embedding_size) + " floats");
}

void check_image(size_t height, size_t width, size_t& stride) {
    require(height > 0 && width > 0, "image height and width must be > 0");
    require(width <= std::numeric_limits<size_t>::max() / 3, "image too wide");
    if (stride == 0) stride = width * 3;
    require(stride >= width * 3, "stride_bytes must be 0 or >= width * 3");
    require(height <= std::numeric_limits<size_t>::max() / stride, "image too large");
}

}  // namespace

extern "C" {

int qfsdk_abi_version(void) { return QFSDK_ABI_VERSION; }

const char* qfsdk_status_name(qfsdk_status status) {
    static const char* const names[] = {
        "QFSDK_OK", "QFSDK_ERR_INVALID_ARGUMENT", "QFSDK_ERR_NOT_FOUND", "QFSDK_ERR_NO_CONTRACT",
        "QFSDK_ERR_BAD_CONTRACT", "QFSDK_ERR_INPUT_SIZE", "QFSDK_ERR_BUFFER_TOO_SMALL",
        "QFSDK_ERR_BACKEND_UNAVAILABLE", "QFSDK_ERR_BACKEND", "QFSDK_ERR_UNSUPPORTED", "QFSDK_ERR_INTERNAL"};
    auto i = static_cast<unsigned>(status);
    return i < sizeof(names) / sizeof(names[0]) ? names[i] : "QFSDK_UNKNOWN_STATUS";
}

void qfsdk_options_init(qfsdk_options* opts) {
    if (!opts) return;
    std::memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
}

qfsdk_status qfsdk_embedder_create(const char* model_path, const char* backend, const qfsdk_options* opts,
                                   qfsdk_embedder** out) {
    if (out) *out = nullptr;
    return guarded(nullptr, [&] {
        require(out != nullptr, "out must not be NULL");
        require(model_path != nullptr && *model_path, "model_path must be a non-empty string");
        qfsdk_options options;
        qfsdk_options_init(&options);
        if (opts) {  // older callers may pass a shorter struct: copy what they know
            require(opts->struct_size >= sizeof(uint32_t), "opts->struct_size is 0; call qfsdk_options_init first");
            std::memcpy(&options, opts, std::min<size_t>(opts->struct_size, sizeof(options)));
            options.struct_size = sizeof(options);
        }
        require(options.num_threads >= 0 && options.batch_hint >= 0, "num_threads and batch_hint must be >= 0");
        *out = std::make_unique<qfsdk_embedder>(model_path, backend ? backend : "", options).release();
    });
}

void qfsdk_embedder_destroy(qfsdk_embedder* h) {
    try {
        std::unique_ptr<qfsdk_embedder> owned(h);
    } catch (...) {
    }
}

qfsdk_status qfsdk_embed_aligned(qfsdk_embedder* h, const uint8_t* rgb, size_t n, size_t height, size_t width,
                                 float* out, size_t out_len) {
    return guarded(h, [&] {
        require(h && rgb && out, "h, rgb and out must not be NULL");
        require(n > 0, "n must be > 0");
        const qfsdk::Contract& c = h->impl.contract();
        if (height != c.height || width != c.width)
            throw Error(QFSDK_ERR_INPUT_SIZE, "crops are " + std::to_string(height) + "x" + std::to_string(width) +
                                                  " but the model's contract wants " + std::to_string(c.height) + "x" +
                                                  std::to_string(c.width) + " (height x width)");
        check_output(c, n, out_len);
        h->impl.embed_aligned(rgb, n, out);
    });
}

qfsdk_status qfsdk_align(qfsdk_embedder* h, const uint8_t* rgb, size_t height, size_t width, size_t stride_bytes,
                         const float landmarks[10], uint8_t* crop, size_t crop_len) {
    return guarded(h, [&] {
        require(h && rgb && landmarks && crop, "h, rgb, landmarks and crop must not be NULL");
        check_image(height, width, stride_bytes);
        const qfsdk::Contract& c = h->impl.contract();
        if (crop_len < c.height * c.width * 3)
            throw Error(QFSDK_ERR_BUFFER_TOO_SMALL, "crop_len must be at least " + std::to_string(c.height * c.width * 3));
        h->impl.align(rgb, height, width, stride_bytes, landmarks, crop);
    });
}

qfsdk_status qfsdk_embed_landmarks(qfsdk_embedder* h, const uint8_t* rgb, size_t height, size_t width,
                                   size_t stride_bytes, const float landmarks[10], float* out, size_t out_len) {
    return guarded(h, [&] {
        require(h && rgb && landmarks && out, "h, rgb, landmarks and out must not be NULL");
        check_image(height, width, stride_bytes);
        const qfsdk::Contract& c = h->impl.contract();
        check_output(c, 1, out_len);
        std::vector<uint8_t> crop(c.height * c.width * 3);
        h->impl.align(rgb, height, width, stride_bytes, landmarks, crop.data());
        h->impl.embed_aligned(crop.data(), 1, out);
    });
}

size_t qfsdk_embedding_size(const qfsdk_embedder* h) { return h ? h->impl.contract().embedding_size : 0; }

qfsdk_status qfsdk_input_size(const qfsdk_embedder* h, size_t* height, size_t* width) {
    return guarded(h, [&] {
        require(h && height && width, "h, height and width must not be NULL");
        *height = h->impl.contract().height;
        *width = h->impl.contract().width;
    });
}

const char* qfsdk_contract_json(const qfsdk_embedder* h) { return h ? h->impl.contract_json().c_str() : nullptr; }

const char* qfsdk_backend_name(const qfsdk_embedder* h) { return h ? h->impl.backend_name() : nullptr; }

const char* qfsdk_last_error(const qfsdk_embedder* h) {
    try {
        if (h) {
            std::lock_guard<std::mutex> lock(h->mutex);
            t_returned = h->last_error;
        } else {
            t_returned = t_last_error;
        }
        return t_returned.c_str();
    } catch (...) {
        return "";
    }
}

}  // extern "C"
