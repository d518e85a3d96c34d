#include "detector.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "backend.hpp"
#include "error.hpp"
#include "image.hpp"
#include "ov_pool.hpp"

namespace qfsdk {
namespace {

constexpr size_t kStrides[3] = {8, 16, 32};
constexpr const char* kKinds[4] = {"cls", "obj", "bbox", "kps"};
constexpr size_t kDivisor = 32;  // YuNet's input is padded to a multiple of its largest stride

std::string output_name(const char* kind, size_t stride) { return std::string(kind) + "_" + std::to_string(stride); }

std::string yunet_outputs() {
    std::string names;
    for (const char* kind : kKinds)
        for (size_t s : kStrides) names += (names.empty() ? "" : ", ") + output_name(kind, s);
    return names;
}

// Throws unless the model has YuNet's outputs and one (1, 3, H, W) input (detect.py _format_of, _image_input).
void check_yunet(const std::shared_ptr<ov::Model>& model, const std::string& path) {
    for (const char* kind : kKinds)
        for (size_t s : kStrides) {
            bool found = false;
            for (const auto& port : model->outputs()) found = found || port.get_names().count(output_name(kind, s)) > 0;
            if (!found)
                throw Error(QFSDK_ERR_UNSUPPORTED, path + ": not a face detector qfsdk can decode (a YuNet file has outputs " +
                                                       yunet_outputs() + "); pass a YuNet ONNX file");
        }
    const ov::PartialShape in = model->inputs().size() == 1 ? model->input().get_partial_shape() : ov::PartialShape{};
    if (model->inputs().size() != 1 || in.rank().is_dynamic() || in.rank().get_length() != 4 ||
        !(in[1].is_dynamic() || in[1].get_length() == 3))
        throw Error(QFSDK_ERR_UNSUPPORTED, path + ": a face detector takes one (1, 3, H, W) image input");
}

// Candidates scoring >= threshold of one stride, appended in row, column order (detect.py decode_yunet).
void decode_stride(ov::InferRequest& request, size_t stride, size_t padded_h, size_t padded_w, float threshold,
                   std::vector<Face>& out) {
    const size_t rows = padded_h / stride, cols = padded_w / stride, cells = rows * cols;
    const ov::Tensor cls = request.get_tensor(output_name("cls", stride)), obj = request.get_tensor(output_name("obj", stride));
    const ov::Tensor bbox = request.get_tensor(output_name("bbox", stride)), kps = request.get_tensor(output_name("kps", stride));
    if (cls.get_size() != cells || obj.get_size() != cells || bbox.get_size() != 4 * cells || kps.get_size() != 10 * cells)
        throw Error(QFSDK_ERR_BACKEND, "YuNet output cls_" + std::to_string(stride) + " has " + std::to_string(cls.get_size()) +
                                           " cells, expected " + std::to_string(rows) + "x" + std::to_string(cols));
    const float *c = cls.data<const float>(), *o = obj.data<const float>();
    const float *b = bbox.data<const float>(), *k = kps.data<const float>();
    const float step = static_cast<float>(stride);
    auto clip = [](float v) { return std::min(std::max(v, 0.0f), 1.0f); };
    for (size_t i = 0; i < cells; ++i) {
        const float score = std::sqrt(clip(c[i]) * clip(o[i]));
        if (!(score >= threshold)) continue;
        const float gx = static_cast<float>(i % cols), gy = static_cast<float>(i / cols);
        const float* bb = b + 4 * i;
        const float cx = (gx + bb[0]) * step, cy = (gy + bb[1]) * step;
        const float w = std::exp(bb[2]) * step, h = std::exp(bb[3]) * step;
        Face face{{cx - w / 2.0f, cy - h / 2.0f, w, h}, {}, score};
        for (int j = 0; j < 10; ++j) face.landmarks[j] = (k[10 * i + j] + (j % 2 ? gy : gx)) * step;
        out.push_back(face);
    }
}

}  // namespace

struct Detector::Model {
    ov::Core core;  // first member: destroyed last
    std::unique_ptr<RequestPool> pool;
    size_t fixed_h = 0, fixed_w = 0;  // a file with a static input size; 0: any size
};

Detector::Detector(const std::string& path, const qfsdk_detector_options& options)
    : model_(std::make_unique<Model>()), options_(options) {
    require_file(path, "detector");
    try {
        std::shared_ptr<ov::Model> model = model_->core.read_model(path);
        check_yunet(model, path);
        const ov::PartialShape in = model->input().get_partial_shape();
        if (in[2].is_static() && in[3].is_static()) {
            model_->fixed_h = static_cast<size_t>(in[2].get_length());
            model_->fixed_w = static_cast<size_t>(in[3].get_length());
        }
        ov::preprocess::PrePostProcessor ppp(model);
        ppp.input().tensor().set_element_type(ov::element::f32);
        for (size_t i = 0; i < model->outputs().size(); ++i) ppp.output(i).tensor().set_element_type(ov::element::f32);
        model = ppp.build();
        // f32 layers, as the Python runtime's OpenVINO backend (INFERENCE_PRECISION_HINT f32).
        ov::AnyMap config{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                          ov::hint::inference_precision(ov::element::f32)};
        if (options.num_threads > 0) config.emplace(ov::inference_num_threads(options.num_threads));
        model_->pool = std::make_unique<RequestPool>(model_->core.compile_model(model, "CPU", config));
    } catch (const ov::Exception& e) {
        throw Error(QFSDK_ERR_BACKEND, path + ": OpenVINO could not load the detector: " + e.what());
    }
}

Detector::~Detector() = default;

std::array<size_t, 2> Detector::network_size(size_t height, size_t width) const noexcept {
    return fit(height, width, options_.max_size);
}

std::array<size_t, 2> Detector::fit(size_t height, size_t width, int32_t limit) const noexcept {
    const double h = static_cast<double>(height), w = static_cast<double>(width);
    double scale = limit > 0 ? std::min(1.0, limit / std::max(h, w)) : 1.0;
    if (model_->fixed_h) scale = std::min({scale, model_->fixed_h / h, model_->fixed_w / w});
    auto rounded = [](double v) { return std::max<size_t>(1, static_cast<size_t>(std::nearbyint(v))); };  // half to even
    return {rounded(h * scale), rounded(w * scale)};
}

std::vector<Face> Detector::detect(const uint8_t* rgb, size_t height, size_t width, size_t stride) const {
    const auto [nh, nw] = network_size(height, width);
    std::vector<Face> faces = run(rgb, height, width, stride, nh, nw);
    if (options_.refine && (nh != height || nw != width)) refine(rgb, height, width, stride, faces);
    return faces;
}

std::vector<Face> Detector::run(const uint8_t* rgb, size_t height, size_t width, size_t stride, size_t nh,
                                size_t nw) const {
    std::vector<uint8_t> pixels(nh * nw * 3);
    resize(rgb, height, width, stride, nh, nw, pixels.data());
    const size_t ph = model_->fixed_h ? model_->fixed_h : (nh + kDivisor - 1) / kDivisor * kDivisor;
    const size_t pw = model_->fixed_w ? model_->fixed_w : (nw + kDivisor - 1) / kDivisor * kDivisor;
    std::vector<float> blob(3 * ph * pw, 0.0f);  // BGR 0..255, zero padding at the bottom and right
    for (size_t c = 0; c < 3; ++c)
        for (size_t y = 0; y < nh; ++y)
            for (size_t x = 0; x < nw; ++x) blob[(c * ph + y) * pw + x] = pixels[(y * nw + x) * 3 + (2 - c)];
    std::vector<Face> candidates;
    {
        RequestPool::Lease lease(*model_->pool);
        try {
            lease.request.set_input_tensor(ov::Tensor(ov::element::f32, ov::Shape{1, 3, ph, pw}, blob.data()));
            lease.request.infer();
            for (size_t s : kStrides)
                decode_stride(lease.request, s, ph, pw, static_cast<float>(options_.score_threshold), candidates);
        } catch (const ov::Exception& e) {
            throw Error(QFSDK_ERR_BACKEND, std::string("OpenVINO detection failed: ") + e.what());
        }
    }
    const std::vector<size_t> keep = nms(candidates, options_.nms_threshold, static_cast<size_t>(options_.top_k));
    const float sx = static_cast<float>(static_cast<double>(width) / static_cast<double>(nw));
    const float sy = static_cast<float>(static_cast<double>(height) / static_cast<double>(nh));
    std::vector<Face> faces;
    faces.reserve(keep.size());
    for (size_t i : keep) {
        Face f = candidates[i];
        f.box = {(f.box[0] + 0.5f) * sx - 0.5f, (f.box[1] + 0.5f) * sy - 0.5f, f.box[2] * sx, f.box[3] * sy};
        for (int j = 0; j < 10; ++j) f.landmarks[j] = (f.landmarks[j] + 0.5f) * (j % 2 ? sy : sx) - 0.5f;
        faces.push_back(f);
    }
    return faces;
}

void Detector::refine(const uint8_t* rgb, size_t height, size_t width, size_t stride, std::vector<Face>& faces) const {
    std::vector<std::array<size_t, 4>> windows(faces.size());
    std::vector<char> inside(faces.size());
    std::array<size_t, 4> all{width, height, 0, 0};  // the box around every window
    size_t area = 0, count = 0;
    for (size_t i = 0; i < faces.size(); ++i) {
        inside[i] = refine_window(faces[i].box, height, width, kDivisor, windows[i]);
        if (!inside[i]) continue;
        const auto& w = windows[i];
        area += (w[2] - w[0]) * (w[3] - w[1]);
        all = {std::min(all[0], w[0]), std::min(all[1], w[1]), std::max(all[2], w[2]), std::max(all[3], w[3])};
        ++count;
    }
    if (count > 1 && area > (all[2] - all[0]) * (all[3] - all[1]))  // one run on the box around them all is cheaper
        for (auto& w : windows) w = all;
    std::vector<std::pair<std::array<size_t, 4>, std::vector<Face>>> runs;  // detections by window
    for (size_t i = 0; i < faces.size(); ++i) {
        if (!inside[i]) continue;
        const std::array<size_t, 4>& win = windows[i];
        auto run_of = std::find_if(runs.begin(), runs.end(), [&](const auto& r) { return r.first == win; });
        if (run_of == runs.end()) {
            const size_t ch = win[3] - win[1], cw = win[2] - win[0];
            const auto [nh, nw] = fit(ch, cw, 0);
            runs.emplace_back(win, run(rgb + win[1] * stride + win[0] * 3, ch, cw, stride, nh, nw));
            run_of = runs.end() - 1;
        }
        const float ox = static_cast<float>(win[0]), oy = static_cast<float>(win[1]);
        double best = -1.0;
        const Face* match = nullptr;
        for (const Face& f : run_of->second) {
            const double overlap = iou({f.box[0] + ox, f.box[1] + oy, f.box[2], f.box[3]}, faces[i].box);
            if (overlap > best) best = overlap, match = &f;  // the first of the highest
        }
        if (!match || !(best > kRefineMinIou)) continue;
        Face& face = faces[i];
        face = *match;
        face.box[0] += ox;
        face.box[1] += oy;
        for (int j = 0; j < 10; ++j) face.landmarks[j] += j % 2 ? oy : ox;
    }
    std::stable_sort(faces.begin(), faces.end(), [](const Face& a, const Face& b) { return a.score > b.score; });
}

bool refine_window(const std::array<float, 4>& box, size_t height, size_t width, size_t grid, std::array<size_t, 4>& window) {
    const double x = box[0], y = box[1], w = box[2], h = box[3], g = static_cast<double>(grid);
    const double half = std::max(kRefineCrop * std::max(w, h), kRefineMinSide) / 2;
    if (!std::isfinite(x + y + half)) return false;
    const double centre[2] = {x + w / 2, y + h / 2}, limit[2] = {static_cast<double>(width), static_cast<double>(height)};
    for (int axis = 0; axis < 2; ++axis) {
        const double start = std::max(0.0, std::floor((centre[axis] - half) / g) * g);
        const double end = std::min(limit[axis], start + std::ceil((centre[axis] + half - start) / g) * g);
        if (!(end > start)) return false;
        window[axis] = static_cast<size_t>(start);
        window[axis + 2] = static_cast<size_t>(end);
    }
    return true;
}

double iou(const std::array<float, 4>& a, const std::array<float, 4>& b) {
    const double ax = a[0], ay = a[1], aw = a[2], ah = a[3], bx = b[0], by = b[1], bw = b[2], bh = b[3];
    const double w = std::min(ax + aw, bx + bw) - std::max(ax, bx), h = std::min(ay + ah, by + bh) - std::max(ay, by);
    const double inter = w > 0 && h > 0 ? w * h : 0.0, uni = aw * ah + bw * bh - inter;
    return uni > 0 ? inter / uni : 0.0;
}

std::vector<size_t> nms(const std::vector<Face>& faces, double threshold, size_t top_k) {
    std::vector<size_t> order(faces.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return faces[a].score > faces[b].score; });
    if (order.size() > top_k) order.resize(top_k);
    const size_t n = order.size();
    std::vector<double> x1(n), y1(n), x2(n), y2(n), area(n);
    for (size_t i = 0; i < n; ++i) {
        const auto& b = faces[order[i]].box;
        x1[i] = std::trunc(static_cast<double>(b[0]));
        y1[i] = std::trunc(static_cast<double>(b[1]));
        const double w = std::trunc(static_cast<double>(b[2])), h = std::trunc(static_cast<double>(b[3]));
        x2[i] = x1[i] + w;
        y2[i] = y1[i] + h;
        area[i] = w * h;
    }
    std::vector<char> alive(n, 1);
    std::vector<size_t> kept;
    for (size_t i = 0; i < n; ++i) {
        if (!alive[i]) continue;
        kept.push_back(order[i]);
        for (size_t j = i + 1; j < n; ++j) {
            if (!alive[j]) continue;
            const double w = std::min(x2[i], x2[j]) - std::max(x1[i], x1[j]);
            const double h = std::min(y2[i], y2[j]) - std::max(y1[i], y1[j]);
            const double inter = w > 0 && h > 0 ? w * h : 0.0, uni = area[i] + area[j] - inter;
            if ((uni > 0 ? inter / uni : 0.0) > threshold) alive[j] = 0;
        }
    }
    return kept;
}

}  // namespace qfsdk
