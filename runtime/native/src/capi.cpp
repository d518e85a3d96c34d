// The C boundary: argument checks, exceptions -> status codes, per-handle and thread errors.
#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "detector.hpp"
#include "embedder.hpp"
#include "error.hpp"
#include "photo.hpp"
#include "qfsdk.h"

namespace {

// A handle's latest failure message, readable from any thread.
struct ErrorSlot {
    void set(const char* message) const {
        std::lock_guard<std::mutex> lock(mutex);
        last_error = message;
    }
    std::string get() const {
        std::lock_guard<std::mutex> lock(mutex);
        return last_error;
    }
    mutable std::mutex mutex;
    mutable std::string last_error;
};

}  // namespace

struct qfsdk_embedder {
    qfsdk_embedder(const std::string& path, const std::string& backend, const qfsdk_options& options)
        : impl(path, backend, options) {}
    qfsdk::Embedder impl;
    ErrorSlot errors;
};

struct qfsdk_detector {
    qfsdk_detector(const std::string& path, const qfsdk_detector_options& options) : impl(path, options) {}
    qfsdk::Detector impl;
    ErrorSlot errors;
};

namespace {

using qfsdk::Error;

thread_local std::string t_last_error;  // this thread's latest failure
thread_local std::string t_returned;    // what qfsdk_last_error handed out last

void record(const ErrorSlot* slot, const char* message) noexcept {
    try {
        t_last_error = message;
        if (slot) slot->set(message);
    } catch (...) {  // out of memory while reporting: keep the status code
    }
}

// Runs body, mapping every exception to a status and a message recorded on slot (may be NULL).
template <class Body>
qfsdk_status guarded(const ErrorSlot* slot, Body&& body) noexcept {
    try {
        body();
        return QFSDK_OK;
    } catch (const Error& e) {
        record(slot, e.what());
        return e.status();
    } catch (const std::bad_alloc&) {
        record(slot, "out of memory");
    } catch (const std::exception& e) {
        record(slot, e.what());
    } catch (...) {
        record(slot, "unknown internal error");
    }
    return QFSDK_ERR_INTERNAL;
}

const ErrorSlot* slot_of(const qfsdk_embedder* h) { return h ? &h->errors : nullptr; }
const ErrorSlot* slot_of(const qfsdk_detector* d) { return d ? &d->errors : nullptr; }

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

// Copies the caller's options over the defaults in out; older callers may pass a shorter struct.
template <class Options>
void read_options(const Options* given, Options& out) {
    if (!given) return;
    require(given->struct_size >= sizeof(uint32_t), "opts->struct_size is 0; call the options' _init function first");
    std::memcpy(&out, given, std::min<size_t>(given->struct_size, sizeof(out)));
    out.struct_size = sizeof(out);
}

void check_detector_options(const qfsdk_detector_options& o) {
    auto text = [](double v) { return std::to_string(v); };
    require(o.num_threads >= 0, "num_threads must be >= 0");
    if (!(o.score_threshold >= 0.0 && o.score_threshold <= 1.0))
        throw Error(QFSDK_ERR_INVALID_ARGUMENT, "score_threshold must lie in 0..1, got " + text(o.score_threshold));
    if (!(o.nms_threshold >= 0.0 && o.nms_threshold <= 1.0))
        throw Error(QFSDK_ERR_INVALID_ARGUMENT, "nms_threshold must lie in 0..1, got " + text(o.nms_threshold));
    if (o.top_k < 1) throw Error(QFSDK_ERR_INVALID_ARGUMENT, "top_k must be >= 1, got " + std::to_string(o.top_k));
    if (o.max_size != 0 && o.max_size < 32)
        throw Error(QFSDK_ERR_INVALID_ARGUMENT, "max_size must be 0 (full size) or >= 32 pixels, got " + std::to_string(o.max_size));
}

// The capacity *count after checking the arguments every photo call shares.
size_t photo_capacity(const uint8_t* rgb, size_t height, size_t width, size_t& stride, const size_t* count,
                      size_t floats_per_face) {
    require(rgb && count, "rgb and count must not be NULL");
    check_image(height, width, stride);
    require(*count <= std::numeric_limits<size_t>::max() / sizeof(float) / floats_per_face, "*count too large");
    return *count;
}

// Writes the first min(found, capacity) faces into the arrays that are not NULL and sets *count
// to the number found; throws QFSDK_ERR_BUFFER_TOO_SMALL when they did not all fit.
void write_faces(const std::vector<qfsdk::Face>& faces, size_t capacity, float* boxes, float* landmarks, float* scores,
                 size_t* count) {
    const size_t k = std::min(capacity, faces.size());
    for (size_t i = 0; i < k; ++i) {
        if (boxes) std::copy(faces[i].box.begin(), faces[i].box.end(), boxes + 4 * i);
        if (landmarks) std::copy(faces[i].landmarks.begin(), faces[i].landmarks.end(), landmarks + 10 * i);
        if (scores) scores[i] = faces[i].score;
    }
    *count = faces.size();
    if (faces.size() > capacity)
        throw Error(QFSDK_ERR_BUFFER_TOO_SMALL, "found " + std::to_string(faces.size()) + " faces but *count was " +
                                                    std::to_string(capacity) + ": pass arrays for " +
                                                    std::to_string(faces.size()) + " faces (the " + std::to_string(k) +
                                                    " best were written)");
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
        read_options(opts, options);
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
    return guarded(slot_of(h), [&] {
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
    return guarded(slot_of(h), [&] {
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
    return guarded(slot_of(h), [&] {
        require(h && rgb && landmarks && out, "h, rgb, landmarks and out must not be NULL");
        check_image(height, width, stride_bytes);
        const qfsdk::Contract& c = h->impl.contract();
        check_output(c, 1, out_len);
        std::vector<uint8_t> crop(c.height * c.width * 3);
        h->impl.align(rgb, height, width, stride_bytes, landmarks, crop.data());
        h->impl.embed_aligned(crop.data(), 1, out);
    });
}

void qfsdk_detector_options_init(qfsdk_detector_options* opts) {
    if (!opts) return;
    std::memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
    opts->score_threshold = 0.6;  // runtime/detect.py DetectorOptions
    opts->nms_threshold = 0.3;
    opts->top_k = 5000;
    opts->max_size = 640;  // DEFAULT_MAX_SIZE
    opts->refine = 1;
}

qfsdk_status qfsdk_detector_create(const char* model_path, const qfsdk_detector_options* opts, qfsdk_detector** out) {
    if (out) *out = nullptr;
    return guarded(nullptr, [&] {
        require(out != nullptr, "out must not be NULL");
        require(model_path != nullptr && *model_path,
                "model_path must name a YuNet ONNX file; the packaged one is at `python -c \"import "
                "qfsdk.runtime.detect as d; print(d.DEFAULT_DETECTOR)\"`");
        qfsdk_detector_options options;
        qfsdk_detector_options_init(&options);
        read_options(opts, options);
        check_detector_options(options);
        *out = std::make_unique<qfsdk_detector>(model_path, options).release();
    });
}

void qfsdk_detector_destroy(qfsdk_detector* d) {
    try {
        std::unique_ptr<qfsdk_detector> owned(d);
    } catch (...) {
    }
}

qfsdk_status qfsdk_detect(qfsdk_detector* d, const uint8_t* rgb, size_t height, size_t width, size_t stride_bytes,
                          float* boxes, float* landmarks, float* scores, size_t* count) {
    return guarded(slot_of(d), [&] {
        require(d != nullptr, "d must not be NULL");
        const size_t capacity = photo_capacity(rgb, height, width, stride_bytes, count, 10);
        write_faces(d->impl.detect(rgb, height, width, stride_bytes), capacity, boxes, landmarks, scores, count);
    });
}

qfsdk_status qfsdk_embed_photo(qfsdk_embedder* h, qfsdk_detector* d, const uint8_t* rgb, size_t height, size_t width,
                               size_t stride_bytes, float* boxes, float* landmarks, float* scores, float* embeddings,
                               size_t* count) {
    return guarded(slot_of(h), [&] {
        require(h && d, "h and d must not be NULL");
        const size_t dim = h->impl.contract().embedding_size;
        const size_t capacity = photo_capacity(rgb, height, width, stride_bytes, count, std::max<size_t>(dim, 10));
        require(embeddings || capacity == 0, "embeddings must not be NULL when *count > 0");
        const std::vector<qfsdk::Face> faces =
            qfsdk::embed_photo(h->impl, d->impl, rgb, height, width, stride_bytes, capacity, embeddings);
        write_faces(faces, capacity, boxes, landmarks, scores, count);
    });
}

const char* qfsdk_detector_last_error(const qfsdk_detector* d) {
    try {
        t_returned = d ? d->errors.get() : t_last_error;
        return t_returned.c_str();
    } catch (...) {
        return "";
    }
}

size_t qfsdk_embedding_size(const qfsdk_embedder* h) { return h ? h->impl.contract().embedding_size : 0; }

qfsdk_status qfsdk_input_size(const qfsdk_embedder* h, size_t* height, size_t* width) {
    return guarded(slot_of(h), [&] {
        require(h && height && width, "h, height and width must not be NULL");
        *height = h->impl.contract().height;
        *width = h->impl.contract().width;
    });
}

const char* qfsdk_contract_json(const qfsdk_embedder* h) { return h ? h->impl.contract_json().c_str() : nullptr; }

const char* qfsdk_backend_name(const qfsdk_embedder* h) { return h ? h->impl.backend_name() : nullptr; }

const char* qfsdk_last_error(const qfsdk_embedder* h) {
    try {
        t_returned = h ? h->errors.get() : t_last_error;
        return t_returned.c_str();
    } catch (...) {
        return "";
    }
}

}  // extern "C"
