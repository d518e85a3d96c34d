/* qfsdk.h - C ABI of the qfsdk face-embedding runtime.
 *
 * Link with -lqfsdk. No Python at run time. The model file carries its preprocessing
 * contract (ONNX metadata key "qfsdk.contract"; a TensorRT engine "<engine>.json" sidecar,
 * key "contract"), so crops are normalised exactly as the Python runtime does.
 *
 * Images are uint8 RGB, interleaved (HWC), row-major.
 * Every function returns a status (or a neutral value) and never throws or aborts;
 * on failure the message is available from qfsdk_last_error().
 *
 * Thread-safety: after creation, every function may be called concurrently on one handle.
 * The OpenVINO backend runs concurrent calls in parallel (one inference request per
 * in-flight call, pooled); the TensorRT backend serialises calls on a handle internally.
 * qfsdk_embedder_destroy() must not race with other calls on the same handle.
 * A qfsdk_detector handle behaves the same way (OpenVINO, one pooled request per call).
 *
 * Photos in: qfsdk_detector_create() loads a YuNet face detector; qfsdk_embed_photo() finds
 * every face of a photo, aligns each to the model's template and embeds it, exactly as the
 * Python runtime's Embedder.embed_photos does (same decoding, NMS and alignment).
 */
#ifndef QFSDK_H
#define QFSDK_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(QFSDK_BUILDING)
#define QFSDK_API __declspec(dllexport)
#elif defined(_WIN32)
#define QFSDK_API __declspec(dllimport)
#elif defined(__GNUC__)
#define QFSDK_API __attribute__((visibility("default")))
#else
#define QFSDK_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change to this header. */
#define QFSDK_ABI_VERSION 1

typedef enum qfsdk_status {
    QFSDK_OK = 0,
    QFSDK_ERR_INVALID_ARGUMENT = 1,    /* NULL pointer, zero count, bad option */
    QFSDK_ERR_NOT_FOUND = 2,           /* model file (or engine sidecar) missing or unreadable */
    QFSDK_ERR_NO_CONTRACT = 3,         /* model carries no qfsdk contract */
    QFSDK_ERR_BAD_CONTRACT = 4,        /* contract malformed or inconsistent with the model */
    QFSDK_ERR_INPUT_SIZE = 5,          /* image size differs from the contract's input_size */
    QFSDK_ERR_BUFFER_TOO_SMALL = 6,    /* out_len < images x embedding size */
    QFSDK_ERR_BACKEND_UNAVAILABLE = 7, /* backend unknown or not compiled in */
    QFSDK_ERR_BACKEND = 8,             /* the inference engine failed */
    QFSDK_ERR_UNSUPPORTED = 9,         /* e.g. landmarks given but the contract has no template */
    QFSDK_ERR_INTERNAL = 10            /* out of memory or another unexpected failure */
} qfsdk_status;

typedef struct qfsdk_embedder qfsdk_embedder; /* opaque */
typedef struct qfsdk_detector qfsdk_detector; /* opaque */

typedef struct qfsdk_options {
    uint32_t struct_size; /* sizeof(qfsdk_options); set by qfsdk_options_init() */
    int32_t num_threads;  /* inference threads; 0 = backend default */
    int32_t flip;         /* nonzero: embedding = f(crop) + f(mirrored crop) */
    int32_t normalize;    /* nonzero: L2-normalise each embedding (default 0: raw model output,
                             which the contract's distance and threshold refer to) */
    int32_t batch_hint;   /* most crops per inference call; 0 = a whole call's batch */
} qfsdk_options;

/* Face detector settings (the Python runtime's DetectorOptions, same defaults). */
typedef struct qfsdk_detector_options {
    uint32_t struct_size;   /* sizeof(qfsdk_detector_options); set by qfsdk_detector_options_init() */
    int32_t num_threads;    /* inference threads; 0 = backend default */
    double score_threshold; /* least score of a face, 0..1 (default 0.6) */
    double nms_threshold;   /* IoU above which the lower-scoring of two boxes is dropped, 0..1 (default 0.3) */
    int32_t top_k;          /* most candidates kept before NMS, >= 1 (default 5000) */
    int32_t max_size;       /* longest image side the detector sees (larger photos are scaled
                               down first); 0 = full size; else >= 32 (default 640) */
    int32_t refine;         /* nonzero: each face found on a scaled-down photo is detected again on
                               a full-resolution crop around it, as full-size detection places its
                               landmarks (default 1; runtime/detect.py explains) */
} qfsdk_detector_options;

/* File name of the YuNet 2023mar detector (OpenCV zoo, MIT) that ships with qfsdk. The C library
 * does not search for it: pass its path. It is in the Python package, at
 *   python -c "import qfsdk.runtime.detect as d; print(d.DEFAULT_DETECTOR)"
 * and `cmake --install` copies it to PREFIX/share/qfsdk/. Any YuNet-format ONNX file works. */
#define QFSDK_DEFAULT_DETECTOR_FILE "face_detection_yunet_2023mar.onnx"

/* QFSDK_ABI_VERSION of the library actually loaded. */
QFSDK_API int qfsdk_abi_version(void);

/* Static English name of a status, e.g. "QFSDK_ERR_NOT_FOUND". */
QFSDK_API const char* qfsdk_status_name(qfsdk_status status);

/* Fill *opts with the defaults (all zero except struct_size). */
QFSDK_API void qfsdk_options_init(qfsdk_options* opts);

/* Load a model. backend: "openvino", "tensorrt" or NULL (auto: .engine/.plan -> tensorrt,
 * anything else -> openvino). opts may be NULL for the defaults. On success *out holds a
 * new handle; on failure *out is NULL and qfsdk_last_error(NULL) explains why. */
QFSDK_API qfsdk_status qfsdk_embedder_create(const char* model_path, const char* backend,
                                             const qfsdk_options* opts, qfsdk_embedder** out);

/* Release a handle and everything it owns. NULL is ignored. */
QFSDK_API void qfsdk_embedder_destroy(qfsdk_embedder* h);

/* Embed n aligned crops. rgb holds n * height * width * 3 bytes, tightly packed;
 * (height, width) must equal the contract's input_size. out receives n * embedding_size
 * floats (out_len counts floats). */
QFSDK_API qfsdk_status qfsdk_embed_aligned(qfsdk_embedder* h, const uint8_t* rgb, size_t n,
                                           size_t height, size_t width, float* out, size_t out_len);

/* Embed one face from a full image and its 5 landmarks (x0, y0, ..., x4, y4 in image pixels,
 * in the order of the contract's template). The face is aligned with a similarity transform
 * onto the contract's template, exactly as the Python runtime's align module does.
 * stride_bytes: bytes per image row; 0 = width * 3. out receives embedding_size floats.
 * Landmarks that cannot align a face (not finite, outside the image, all at one point or on one
 * line) give QFSDK_ERR_INVALID_ARGUMENT, as the Python runtime's LandmarkError. */
QFSDK_API qfsdk_status qfsdk_embed_landmarks(qfsdk_embedder* h, const uint8_t* rgb, size_t height,
                                             size_t width, size_t stride_bytes,
                                             const float landmarks[10], float* out, size_t out_len);

/* Align only: write the height x width x 3 uint8 crop that qfsdk_embed_landmarks() would embed.
 * crop_len counts bytes and must be at least input height * input width * 3. */
QFSDK_API qfsdk_status qfsdk_align(qfsdk_embedder* h, const uint8_t* rgb, size_t height, size_t width,
                                   size_t stride_bytes, const float landmarks[10], uint8_t* crop,
                                   size_t crop_len);

/* Fill *opts with the defaults above. */
QFSDK_API void qfsdk_detector_options_init(qfsdk_detector_options* opts);

/* Load a YuNet-format face detector (ONNX; see QFSDK_DEFAULT_DETECTOR_FILE) on OpenVINO. opts may
 * be NULL for the defaults. On failure *out is NULL, qfsdk_last_error(NULL) explains why, and
 * the status is QFSDK_ERR_NOT_FOUND (no such file), QFSDK_ERR_UNSUPPORTED (the file is not a
 * YuNet detector), QFSDK_ERR_BACKEND (OpenVINO cannot read it) or QFSDK_ERR_INVALID_ARGUMENT. */
QFSDK_API qfsdk_status qfsdk_detector_create(const char* model_path, const qfsdk_detector_options* opts,
                                             qfsdk_detector** out);

/* Release a detector. NULL is ignored. */
QFSDK_API void qfsdk_detector_destroy(qfsdk_detector* d);

/* Faces of one photo (uint8 RGB, any size; stride_bytes as for qfsdk_embed_landmarks), best
 * score first, in the photo's pixels. Results go to caller-owned arrays with room for
 * *count faces: boxes (*count x 4: x, y, width, height), landmarks (*count x 5 x 2: (x, y) of the
 * eye on the image's left, the eye on its right, nose tip, mouth corner on the left, on the
 * right), scores (*count); any of them may be NULL (not written). On return *count holds the
 * number of faces found. When more faces were found than fit, the best that fit are written,
 * *count is the number found and the status is QFSDK_ERR_BUFFER_TOO_SMALL: call again with
 * arrays that large (or use the ones written). *count = 0 asks for the number only. */
QFSDK_API qfsdk_status qfsdk_detect(qfsdk_detector* d, const uint8_t* rgb, size_t height, size_t width,
                                    size_t stride_bytes, float* boxes, float* landmarks, float* scores,
                                    size_t* count);

/* Detect the faces of one photo with d, align each to h's template and embed it with h.
 * Arrays and *count as for qfsdk_detect, plus embeddings (*count x embedding_size floats,
 * required when *count > 0). Faces whose landmarks cannot align a face (all at one point, on one
 * line) are not counted. A model whose contract has no template gives QFSDK_ERR_UNSUPPORTED.
 * Failures are recorded on h (qfsdk_last_error(h)) and the calling thread. */
QFSDK_API qfsdk_status qfsdk_embed_photo(qfsdk_embedder* h, qfsdk_detector* d, const uint8_t* rgb, size_t height,
                                         size_t width, size_t stride_bytes, float* boxes, float* landmarks,
                                         float* scores, float* embeddings, size_t* count);

/* Message of the latest failure on detector d (from any thread); "" when none. Valid until this
 * thread calls qfsdk_detector_last_error again. */
QFSDK_API const char* qfsdk_detector_last_error(const qfsdk_detector* d);

/* Embedding length (0 if h is NULL). */
QFSDK_API size_t qfsdk_embedding_size(const qfsdk_embedder* h);

/* Model input size in pixels. */
QFSDK_API qfsdk_status qfsdk_input_size(const qfsdk_embedder* h, size_t* height, size_t* width);

/* The contract JSON as stored in the model; owned by the handle (NULL if h is NULL). */
QFSDK_API const char* qfsdk_contract_json(const qfsdk_embedder* h);

/* "openvino" or "tensorrt"; owned by the library (NULL if h is NULL). */
QFSDK_API const char* qfsdk_backend_name(const qfsdk_embedder* h);

/* Message of the latest failure: on handle h (from any thread), or, with h == NULL, of the
 * calling thread's latest failure of any call (use this after qfsdk_embedder_create fails).
 * "" when none. The pointer stays valid until this thread calls qfsdk_last_error again. */
QFSDK_API const char* qfsdk_last_error(const qfsdk_embedder* h);

#ifdef __cplusplus
}
#endif

#endif /* QFSDK_H */
