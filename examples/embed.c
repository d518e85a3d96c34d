/* embed - print (or save) face embeddings of image files with libqfsdk.
 *
 *   embed MODEL [options] IMAGE...
 *   embed MODEL --detect DETECTOR.onnx [options] PHOTO...   every face of each photo
 *
 * Images are PNG (8 or 16 bits per channel; 16 is reduced to 8), JPEG (baseline or progressive)
 * or binary PPM/PGM, decoded by the vendored stb_image (runtime/native/third_party/stb). Grey is
 * replicated to RGB and alpha dropped; EXIF orientation is ignored (qfsdk embed applies it).
 * An image of the model's input size is taken as an aligned crop; any other size needs --landmarks,
 * or --detect: faces are found by the YuNet detector, aligned and embedded (qfsdk_embed_photo),
 * one line per face: "PHOTO#K: box X Y W H score S embedding E0 E1 ..." (K from 0, best score
 * first), "PHOTO: no face" for a photo without one. The packaged detector is at
 *   python -c "import qfsdk.runtime.detect as d; print(d.DEFAULT_DETECTOR)"
 * Options:
 *   --backend NAME       openvino | tensorrt (default: from the file name)
 *   --threads N          inference threads (default: backend's choice)
 *   --flip               add the embedding of the mirrored crop
 *   --normalize          L2-normalise embeddings
 *   --landmarks "x0 y0 ... x4 y4"   5 landmarks (image pixels) used for every image
 *   --detect FILE        photos in: detect faces with this YuNet ONNX file
 *   --detect-size N      longest side the detector sees (default 640; 0: full size); faces found
 *                        on a scaled photo are refined at full resolution
 *   --detect-threshold T least detection score (default 0.6)
 *   --repeat N           embed every image N times (leak and RSS checks); keeps the last
 *   --out FILE.npy       write an (images or faces, embedding_size) float32 .npy instead of printing
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qfsdk.h"

#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNM
#define STBI_NO_STDIO /* files are read here, so an open error names its cause */
#define STBI_MAX_DIMENSIONS (1 << 16)
#define STB_IMAGE_IMPLEMENTATION
#include "stb_image.h"

typedef struct {
    size_t height, width;
    unsigned char* rgb; /* height * width * 3, from stbi_load_from_memory (free with stbi_image_free) */
} image;

/* Reads a whole file into a malloc'ed buffer; returns NULL (errno set) on failure. */
static unsigned char* read_file(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char* data = NULL;
    long length = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (length >= 0 && length <= 0x7FFFFFFF && fseek(f, 0, SEEK_SET) == 0) {
        data = malloc(length > 0 ? (size_t)length : 1);
        if (data && fread(data, 1, (size_t)length, f) != (size_t)length) {
            free(data);
            data = NULL;
        }
    }
    if (!data && errno == 0) errno = EIO;
    fclose(f);
    *size = (size_t)(length > 0 ? length : 0);
    return data;
}

/* Decodes a PNG, JPEG or binary PPM/PGM file into img (RGB); returns 0 on success, else prints why. */
static int read_image(const char* path, image* img) {
    errno = 0;
    size_t size = 0;
    unsigned char* data = read_file(path, &size);
    if (!data) {
        fprintf(stderr, "embed: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int w = 0, h = 0, channels = 0;
    img->rgb = size <= 0x7FFFFFFF ? stbi_load_from_memory(data, (int)size, &w, &h, &channels, 3) : NULL;
    free(data);
    if (!img->rgb) {
        fprintf(stderr, "embed: %s: cannot decode (%s); pass a PNG, JPEG or binary PPM/PGM image\n", path,
                stbi_failure_reason());
        return -1;
    }
    img->height = (size_t)h;
    img->width = (size_t)w;
    return 0;
}

static int write_npy(const char* path, const float* data, size_t rows, size_t cols) {
    char header[128];
    int len = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows, cols);
    int padded = ((10 + len + 1 + 63) / 64) * 64 - 10; /* header incl. '\n' so data starts at a multiple of 64 */
    FILE* f = fopen(path, "wb");
    if (!f) return -1;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    unsigned char hl[2] = {(unsigned char)(padded & 0xFF), (unsigned char)(padded >> 8)};
    fwrite(hl, 1, 2, f);
    fwrite(header, 1, (size_t)len, f);
    for (int i = len; i < padded - 1; ++i) fputc(' ', f);
    fputc('\n', f);
    size_t written = fwrite(data, sizeof(float), rows * cols, f); /* little-endian hosts */
    return fclose(f) == 0 && written == rows * cols ? 0 : -1;
}

/* Room for the faces of one photo: boxes, landmarks, scores and embeddings of `capacity` faces. */
typedef struct {
    size_t capacity, dim;
    float *boxes, *landmarks, *scores, *embeddings;
} face_buffers;

static int grow(face_buffers* b, size_t capacity) {
    float* arrays[4] = {b->boxes, b->landmarks, b->scores, b->embeddings};
    const size_t widths[4] = {4, 10, 1, b->dim};
    for (int k = 0; k < 4; ++k) {
        float* grown = realloc(arrays[k], capacity * widths[k] * sizeof(float));
        if (!grown) return -1;
        arrays[k] = grown;
        b->boxes = arrays[0], b->landmarks = arrays[1], b->scores = arrays[2], b->embeddings = arrays[3];
    }
    b->capacity = capacity;
    return 0;
}

/* The faces of one photo into b (grown until they fit); *found their number. */
static qfsdk_status embed_faces(qfsdk_embedder* h, qfsdk_detector* d, const image* img, face_buffers* b, size_t* found) {
    for (;;) {
        *found = b->capacity;
        qfsdk_status st = qfsdk_embed_photo(h, d, img->rgb, img->height, img->width, 0, b->boxes, b->landmarks,
                                            b->scores, b->embeddings, found);
        if (st != QFSDK_ERR_BUFFER_TOO_SMALL) return st;
        if (grow(b, *found) != 0) return QFSDK_ERR_INTERNAL;
    }
}

/* --detect: every face of each photo, printed one line each, or all their embeddings into out_path. */
static int embed_photos(qfsdk_embedder* h, qfsdk_detector* d, char** photos, int count, long repeat, const char* out_path) {
    face_buffers b = {0, qfsdk_embedding_size(h), NULL, NULL, NULL, NULL};
    float* all = NULL; /* --out: the embeddings of every face so far */
    size_t total = 0;
    int rc = grow(&b, 8) == 0 ? 0 : 1;
    for (int i = 0; i < count && rc == 0; ++i) {
        image img = {0, 0, NULL};
        if (read_image(photos[i], &img) != 0) {
            rc = 1;
            break;
        }
        size_t found = 0;
        qfsdk_status st = QFSDK_OK;
        for (long r = 0; r < repeat && st == QFSDK_OK; ++r) st = embed_faces(h, d, &img, &b, &found);
        stbi_image_free(img.rgb);
        if (st != QFSDK_OK) {
            fprintf(stderr, "embed: %s: %s: %s\n", photos[i], qfsdk_status_name(st), qfsdk_last_error(h));
            rc = 1;
        } else if (out_path) {
            float* grown = realloc(all, (total + found) * b.dim * sizeof(float) + 1);
            if (!grown) rc = 1;
            else {
                all = grown;
                memcpy(all + total * b.dim, b.embeddings, found * b.dim * sizeof(float));
                total += found;
            }
        } else if (found == 0) {
            printf("%s: no face\n", photos[i]);
        } else {
            for (size_t k = 0; k < found; ++k) {
                const float* box = b.boxes + 4 * k;
                printf("%s#%zu: box %.3f %.3f %.3f %.3f score %.5f embedding", photos[i], k, box[0], box[1], box[2], box[3],
                       b.scores[k]);
                for (size_t j = 0; j < b.dim; ++j) printf(" %.9g", b.embeddings[k * b.dim + j]);
                printf("\n");
            }
        }
    }
    if (rc == 0 && out_path && write_npy(out_path, all, total, b.dim) != 0) {
        fprintf(stderr, "embed: cannot write %s\n", out_path);
        rc = 1;
    }
    free(all);
    free(b.boxes), free(b.landmarks), free(b.scores), free(b.embeddings);
    return rc;
}

static int usage(void) {
    fprintf(stderr, "usage: embed MODEL [--backend NAME] [--threads N] [--flip] [--normalize] "
                    "[--landmarks \"x0 y0 ... x4 y4\" | --detect YUNET.onnx [--detect-size N] [--detect-threshold T]] "
                    "[--repeat N] [--out FILE.npy] IMAGE...\n");
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 3) return usage();
    const char *model = argv[1], *backend = NULL, *out_path = NULL, *detector_path = NULL;
    qfsdk_options opts;
    qfsdk_options_init(&opts);
    qfsdk_detector_options detect_opts;
    qfsdk_detector_options_init(&detect_opts);
    float landmarks[10];
    int have_landmarks = 0;
    long repeat = 1;
    int first_image = argc;
    for (int i = 2; i < argc; ++i) {
        const char* a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "--flip")) opts.flip = 1;
        else if (!strcmp(a, "--normalize")) opts.normalize = 1;
        else if (!strcmp(a, "--backend") && has_value) backend = argv[++i];
        else if (!strcmp(a, "--out") && has_value) out_path = argv[++i];
        else if (!strcmp(a, "--threads") && has_value) opts.num_threads = atoi(argv[++i]);
        else if (!strcmp(a, "--repeat") && has_value) repeat = atol(argv[++i]);
        else if (!strcmp(a, "--detect") && has_value) detector_path = argv[++i];
        else if (!strcmp(a, "--detect-size") && has_value) detect_opts.max_size = atoi(argv[++i]);
        else if (!strcmp(a, "--detect-threshold") && has_value) detect_opts.score_threshold = atof(argv[++i]);
        else if (!strcmp(a, "--landmarks") && has_value) {
            const char* s = argv[++i];
            char* end;
            for (int k = 0; k < 10; ++k, s = end) {
                landmarks[k] = strtof(s, &end);
                if (end == s) return usage();
            }
            have_landmarks = 1;
        } else if (a[0] == '-' && a[1] == '-') return usage();
        else {
            first_image = i;
            break;
        }
    }
    int count = argc - first_image;
    if (count <= 0 || repeat < 1 || (detector_path && have_landmarks)) return usage();

    qfsdk_embedder* h = NULL;
    qfsdk_status st = qfsdk_embedder_create(model, backend, &opts, &h);
    if (st != QFSDK_OK) {
        fprintf(stderr, "embed: %s: %s\n", qfsdk_status_name(st), qfsdk_last_error(NULL));
        return 1;
    }
    detect_opts.num_threads = opts.num_threads;
    if (detector_path) {
        qfsdk_detector* d = NULL;
        st = qfsdk_detector_create(detector_path, &detect_opts, &d);
        int rc = 1;
        if (st != QFSDK_OK) fprintf(stderr, "embed: %s: %s\n", qfsdk_status_name(st), qfsdk_last_error(NULL));
        else rc = embed_photos(h, d, argv + first_image, count, repeat, out_path);
        qfsdk_detector_destroy(d);
        qfsdk_embedder_destroy(h);
        return rc;
    }
    size_t dim = qfsdk_embedding_size(h);
    float* embeddings = calloc((size_t)count * dim, sizeof(float));
    int rc = embeddings ? 0 : 1;
    for (int i = 0; i < count && rc == 0; ++i) {
        image img = {0, 0, NULL};
        if (read_image(argv[first_image + i], &img) != 0) {
            rc = 1;
            break;
        }
        float* out = embeddings + (size_t)i * dim;
        for (long r = 0; r < repeat && st == QFSDK_OK; ++r) {
            if (have_landmarks)
                st = qfsdk_embed_landmarks(h, img.rgb, img.height, img.width, 0, landmarks, out, dim);
            else
                st = qfsdk_embed_aligned(h, img.rgb, 1, img.height, img.width, out, dim);
        }
        stbi_image_free(img.rgb);
        if (st != QFSDK_OK) {
            fprintf(stderr, "embed: %s: %s: %s\n", argv[first_image + i], qfsdk_status_name(st), qfsdk_last_error(h));
            rc = 1;
        }
    }
    if (rc == 0 && out_path) {
        if (write_npy(out_path, embeddings, (size_t)count, dim) != 0) {
            fprintf(stderr, "embed: cannot write %s\n", out_path);
            rc = 1;
        }
    } else if (rc == 0) {
        for (int i = 0; i < count; ++i) {
            printf("%s:", argv[first_image + i]);
            for (size_t j = 0; j < dim; ++j) printf(" %.9g", embeddings[(size_t)i * dim + j]);
            printf("\n");
        }
    }
    free(embeddings);
    qfsdk_embedder_destroy(h);
    return rc;
}
