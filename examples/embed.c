/* embed - print (or save) face embeddings of image files with libqfsdk.
 *
 *   embed MODEL [options] IMAGE...
 *
 * Images are binary PPM (P6) or PGM (P5, grey is replicated to RGB), maxval 255; convert
 * others with e.g. `convert face.jpg face.ppm` or PIL. An image of the model's input size is
 * taken as an aligned crop; any other size needs --landmarks.
 * Options:
 *   --backend NAME       openvino | tensorrt (default: from the file name)
 *   --threads N          inference threads (default: backend's choice)
 *   --flip               add the embedding of the mirrored crop
 *   --normalize          L2-normalise embeddings
 *   --landmarks "x0 y0 ... x4 y4"   5 landmarks (image pixels) used for every image
 *   --repeat N           embed every image N times (leak and RSS checks); keeps the last
 *   --out FILE.npy       write an (images, embedding_size) float32 .npy instead of printing
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qfsdk.h"

typedef struct {
    size_t height, width;
    unsigned char* rgb; /* height * width * 3 */
} image;

static int next_int(FILE* f, long* value) {
    int c = fgetc(f);
    while (c == '#' || c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        if (c == '#')
            while (c != '\n' && c != EOF) c = fgetc(f);
        c = fgetc(f);
    }
    if (c < '0' || c > '9') return 0;
    *value = 0;
    for (; c >= '0' && c <= '9'; c = fgetc(f)) {
        if (*value > 100000) return 0;
        *value = *value * 10 + (c - '0');
    }
    return 1; /* the single whitespace after the header's last number is consumed here */
}

/* Reads a P6/P5 file into img; returns 0 on success, else prints why. */
static int read_pnm(const char* path, image* img) {
    FILE* f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "embed: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char magic[2] = {0};
    long w = 0, h = 0, maxval = 0;
    int ok = fread(magic, 1, 2, f) == 2 && magic[0] == 'P' && (magic[1] == '6' || magic[1] == '5') &&
             next_int(f, &w) && next_int(f, &h) && next_int(f, &maxval) && w > 0 && h > 0 && maxval == 255;
    int channels = magic[1] == '6' ? 3 : 1;
    size_t n = (size_t)w * (size_t)h;
    img->rgb = ok ? malloc(n * 3) : NULL;
    if (img->rgb) ok = fread(img->rgb, (size_t)channels, n, f) == n;
    fclose(f);
    if (!ok || !img->rgb) {
        fprintf(stderr, "embed: %s: not a binary PPM/PGM with maxval 255\n", path);
        free(img->rgb);
        img->rgb = NULL;
        return -1;
    }
    for (size_t i = n; channels == 1 && i-- > 0;) /* grey -> RGB, back to front in place */
        img->rgb[3 * i] = img->rgb[3 * i + 1] = img->rgb[3 * i + 2] = img->rgb[i];
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

static int usage(void) {
    fprintf(stderr, "usage: embed MODEL [--backend NAME] [--threads N] [--flip] [--normalize] "
                    "[--landmarks \"x0 y0 ... x4 y4\"] [--repeat N] [--out FILE.npy] IMAGE...\n");
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 3) return usage();
    const char *model = argv[1], *backend = NULL, *out_path = NULL;
    qfsdk_options opts;
    qfsdk_options_init(&opts);
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
    if (count <= 0 || repeat < 1) return usage();

    qfsdk_embedder* h = NULL;
    qfsdk_status st = qfsdk_embedder_create(model, backend, &opts, &h);
    if (st != QFSDK_OK) {
        fprintf(stderr, "embed: %s: %s\n", qfsdk_status_name(st), qfsdk_last_error(NULL));
        return 1;
    }
    size_t dim = qfsdk_embedding_size(h);
    float* embeddings = calloc((size_t)count * dim, sizeof(float));
    int rc = embeddings ? 0 : 1;
    for (int i = 0; i < count && rc == 0; ++i) {
        image img = {0, 0, NULL};
        if (read_pnm(argv[first_image + i], &img) != 0) {
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
        free(img.rgb);
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
