#include "image.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "contract.hpp"
#include "error.hpp"

namespace qfsdk {
namespace {

// (A, c) with target ~= A source + c, A = [[a, -b], [b, a]]. Sums in numpy's order:
// means and 5-term sums left to right, the 10-term sum pairwise as numpy does.
struct Fit {
    double a, b, c0, c1;
};

Fit fit_similarity(const double src[10], const double dst[10]) {
    double p[2], q[2];
    for (int k = 0; k < 2; ++k) {
        double sp = src[k], sq = dst[k];
        for (int i = 1; i < 5; ++i) {
            sp += src[2 * i + k];
            sq += dst[2 * i + k];
        }
        p[k] = sp / 5;
        q[k] = sq / 5;
    }
    double P[10], Q[10], sq[10];
    for (int i = 0; i < 10; ++i) {
        P[i] = src[i] - p[i % 2];
        Q[i] = dst[i] - q[i % 2];
        sq[i] = P[i] * P[i];
    }
    double n = (((sq[0] + sq[1]) + (sq[2] + sq[3])) + ((sq[4] + sq[5]) + (sq[6] + sq[7]))) + sq[8];
    n += sq[9];
    if (!(n > 0.0) || !std::isfinite(n))
        throw Error(QFSDK_ERR_INVALID_ARGUMENT, "landmarks are degenerate (all at one point) or not finite: cannot align");
    double dot = P[0] * Q[0] + P[1] * Q[1], cross = P[0] * Q[1] - P[1] * Q[0];
    for (int i = 1; i < 5; ++i) {
        dot += P[2 * i] * Q[2 * i] + P[2 * i + 1] * Q[2 * i + 1];
        cross += P[2 * i] * Q[2 * i + 1] - P[2 * i + 1] * Q[2 * i];
    }
    double a = dot / n, b = cross / n;
    return {a, b, q[0] - (a * p[0] + -b * p[1]), q[1] - (b * p[0] + a * p[1])};
}

// Bilinear sampling of one image level; At(y, x, c) returns the float pixel.
template <class At>
void sample(const At& at, long rows, long cols, const Affine& m, size_t out_h, size_t out_w, uint8_t* out) {
    auto pixel = [&](long y, long x, int ch) { return (y < 0 || x < 0 || y >= rows || x >= cols) ? 0.0f : at(y, x, ch); };
    for (size_t v = 0; v < out_h; ++v) {
        for (size_t u = 0; u < out_w; ++u) {
            const double du = static_cast<double>(u), dv = static_cast<double>(v);
            const float x = static_cast<float>(m.m00 * du + m.m01 * dv + m.t0);
            const float y = static_cast<float>(m.m10 * du + m.m11 * dv + m.t1);
            uint8_t* o = out + (v * out_w + u) * 3;
            if (!(std::fabs(x) < 1e9f && std::fabs(y) < 1e9f)) {  // far outside: all neighbours are border
                o[0] = o[1] = o[2] = 0;
                continue;
            }
            const float x0f = std::floor(x), y0f = std::floor(y), fx = x - x0f, fy = y - y0f;
            const float w00 = (1.0f - fx) * (1.0f - fy), w01 = fx * (1.0f - fy), w10 = (1.0f - fx) * fy, w11 = fx * fy;
            const long x0 = static_cast<long>(x0f), y0 = static_cast<long>(y0f);
            for (int ch = 0; ch < 3; ++ch) {
                float value = ((pixel(y0, x0, ch) * w00 + pixel(y0, x0 + 1, ch) * w01) + pixel(y0 + 1, x0, ch) * w10) +
                              pixel(y0 + 1, x0 + 1, ch) * w11;
                float r = std::floor(value + 0.5f);
                o[ch] = static_cast<uint8_t>(r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r));
            }
        }
    }
}

// One pyramid level: 2x2 means, an odd last row or column dropped.
template <class At>
std::vector<float> halve(const At& at, long in_rows, long in_cols) {
    const long rows = in_rows / 2, cols = in_cols / 2;
    std::vector<float> level(static_cast<size_t>(rows * cols * 3));
    for (long y = 0; y < rows; ++y)
        for (long x = 0; x < cols; ++x)
            for (int ch = 0; ch < 3; ++ch)
                level[static_cast<size_t>((y * cols + x) * 3 + ch)] =
                    ((at(2 * y, 2 * x, ch) + at(2 * y, 2 * x + 1, ch)) + (at(2 * y + 1, 2 * x, ch) + at(2 * y + 1, 2 * x + 1, ch))) *
                    0.25f;
    return level;
}

}  // namespace

Affine similarity_map(const double landmarks[10], const double tmpl[10], bool template_to_landmarks) {
    if (template_to_landmarks) {
        Fit f = fit_similarity(tmpl, landmarks);
        return {f.a, -f.b, f.b, f.a, f.c0, f.c1};
    }
    Fit f = fit_similarity(landmarks, tmpl);  // landmarks -> template, inverted
    double det = f.a * f.a + f.b * f.b;
    double i00 = f.a / det, i01 = f.b / det, i10 = -f.b / det, i11 = f.a / det;
    return {i00, i01, i10, i11, -(i00 * f.c0 + i01 * f.c1), -(i10 * f.c0 + i11 * f.c1)};
}

Affine output_to_image(const double landmarks[10], const Contract& c) {
    double tmpl[10];
    for (int i = 0; i < 10; ++i) tmpl[i] = c.landmark_template[i / 2][i % 2];
    return similarity_map(landmarks, tmpl, c.fit_template_to_landmarks);
}

Affine scale_map(size_t height, size_t width, size_t out_h, size_t out_w) {
    const double sy = static_cast<double>(height) / static_cast<double>(out_h);
    const double sx = static_cast<double>(width) / static_cast<double>(out_w);
    return {sx, 0.0, 0.0, sy, (sx - 1) / 2, (sy - 1) / 2};
}

void warp(const uint8_t* rgb, size_t height, size_t width, size_t stride, Affine m, size_t out_h, size_t out_w,
          bool pyramid, uint8_t* out) {
    long rows = static_cast<long>(height), cols = static_cast<long>(width);
    auto source = [&](long y, long x, int ch) { return static_cast<float>(rgb[static_cast<size_t>(y) * stride + static_cast<size_t>(x) * 3 + ch]); };
    std::vector<float> level;
    auto levels = [&](long y, long x, int ch) { return level[static_cast<size_t>((y * cols + x) * 3 + ch)]; };
    bool halved = false;  // false: sample the uint8 source itself
    while (pyramid && std::sqrt(std::fabs(m.m00 * m.m11 - m.m01 * m.m10)) >= 2.0 && rows >= 2 && cols >= 2) {
        std::vector<float> next = halved ? halve(levels, rows, cols) : halve(source, rows, cols);
        level.swap(next);
        rows /= 2;
        cols /= 2;
        halved = true;
        m = {m.m00 / 2, m.m01 / 2, m.m10 / 2, m.m11 / 2, (m.t0 - 0.5) / 2, (m.t1 - 0.5) / 2};
    }
    if (halved) sample(levels, rows, cols, m, out_h, out_w, out);
    else sample(source, rows, cols, m, out_h, out_w, out);
}

void warp_face(const uint8_t* rgb, size_t height, size_t width, size_t stride, const double landmarks[10],
               const Contract& c, uint8_t* out) {
    warp(rgb, height, width, stride, output_to_image(landmarks, c), c.height, c.width, true, out);
}

void resize(const uint8_t* rgb, size_t height, size_t width, size_t stride, size_t out_h, size_t out_w, uint8_t* out) {
    if (out_h == height && out_w == width) {
        for (size_t y = 0; y < height; ++y) std::memcpy(out + y * width * 3, rgb + y * stride, width * 3);
        return;
    }
    warp(rgb, height, width, stride, scale_map(height, width, out_h, out_w), out_h, out_w, true, out);
}

const char* landmark_problem(const double p[10]) {
    double mean[2] = {0.0, 0.0}, largest = 1.0;
    for (int i = 0; i < 10; ++i) {
        if (!std::isfinite(p[i])) return "landmarks hold NaN or infinite values";
        mean[i % 2] += p[i] / 5;
        largest = std::max(largest, std::fabs(p[i]));
    }
    double xx = 0.0, xy = 0.0, yy = 0.0;  // X^T X of the centred points: its eigenvalues are the squared spreads
    for (int i = 0; i < 5; ++i) {
        const double dx = p[2 * i] - mean[0], dy = p[2 * i + 1] - mean[1];
        xx += dx * dx;
        xy += dx * dy;
        yy += dy * dy;
    }
    const double half = (xx + yy) / 2, root = std::sqrt((xx - yy) * (xx - yy) / 4 + xy * xy);
    const double major = std::sqrt(half + root), minor = std::sqrt(std::max(0.0, half - root));
    if (major <= 1e-9 * largest) return "landmarks are all at one point: cannot align";
    if (minor < kMinLandmarkFlatness * major) return "landmarks lie on one line (no face has that shape): cannot align";
    return nullptr;
}

void normalize_crops(const uint8_t* rgb, size_t n, const Contract& contract, bool mirror, float* out) {
    const size_t h = contract.height, w = contract.width, plane = h * w;
    for (size_t i = 0; i < n; ++i) {
        const uint8_t* img = rgb + i * plane * 3;
        float* dst = out + i * plane * 3;
        for (size_t c = 0; c < 3; ++c) {
            const size_t src_c = contract.bgr ? 2 - c : c;
            const float mean = contract.mean[c], std = contract.std[c];
            for (size_t y = 0; y < h; ++y)
                for (size_t x = 0; x < w; ++x) {
                    size_t sx = mirror ? w - 1 - x : x;
                    dst[c * plane + y * w + x] = (static_cast<float>(img[(y * w + sx) * 3 + src_c]) - mean) / std;
                }
        }
    }
}

}  // namespace qfsdk
