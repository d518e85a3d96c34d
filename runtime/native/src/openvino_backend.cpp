// OpenVINO backend: reads ONNX (or IR), takes the contract from the ONNX metadata that the
// ONNX frontend exposes as rt_info["framework"][key], and pools one infer request per
// concurrent call (ov_pool.hpp).
#include <cstring>
#include <openvino/openvino.hpp>
#include <vector>

#include "backend.hpp"
#include "error.hpp"
#include "ov_pool.hpp"

namespace qfsdk {
namespace {

constexpr const char* kContractKey = "qfsdk.contract";

std::string dims_text(const ov::PartialShape& shape) { return shape.to_string(); }

class OpenVinoBackend final : public Backend {
public:
    OpenVinoBackend(ov::Core core, ov::CompiledModel compiled, size_t fixed_batch, const Contract& c)
        : core_(std::move(core)), pool_(std::move(compiled)), fixed_batch_(fixed_batch),
          height_(c.height), width_(c.width), embedding_size_(c.embedding_size) {}

    const char* name() const noexcept override { return "openvino"; }
    size_t fixed_batch() const noexcept override { return fixed_batch_; }

    void infer(const float* input, size_t n, float* output) override {
        RequestPool::Lease lease(pool_);
        try {
            ov::Tensor tensor(ov::element::f32, ov::Shape{n, 3, height_, width_}, const_cast<float*>(input));
            lease.request.set_input_tensor(tensor);
            lease.request.infer();
            const ov::Tensor result = lease.request.get_output_tensor();
            if (result.get_size() != n * embedding_size_)
                throw Error(QFSDK_ERR_BACKEND, "model output has shape " + result.get_shape().to_string() + ", expected " +
                                                   std::to_string(n) + " x " + std::to_string(embedding_size_));
            std::memcpy(output, result.data<const float>(), n * embedding_size_ * sizeof(float));
        } catch (const ov::Exception& e) {
            throw Error(QFSDK_ERR_BACKEND, std::string("OpenVINO inference failed: ") + e.what());
        }
    }

private:
    ov::Core core_;  // first member: destroyed last
    RequestPool pool_;
    size_t fixed_batch_, height_, width_, embedding_size_;
};

std::string contract_text(const std::shared_ptr<ov::Model>& model, const std::string& path) {
    if (!model->has_rt_info("framework", kContractKey))
        throw Error(QFSDK_ERR_NO_CONTRACT, path + ": no '" + kContractKey +
                                               "' metadata; export the model with `qfsdk convert` so it carries its "
                                               "preprocessing contract");
    return model->get_rt_info<std::string>("framework", kContractKey);
}

// Checks the model's single input/output against the contract; returns the static batch or 0.
size_t check_shapes(const std::shared_ptr<ov::Model>& model, const Contract& c, const std::string& path) {
    if (model->inputs().size() != 1 || model->outputs().size() != 1)
        throw Error(QFSDK_ERR_BAD_CONTRACT, path + ": expected one input and one output, got " +
                                                std::to_string(model->inputs().size()) + " and " +
                                                std::to_string(model->outputs().size()));
    ov::PartialShape in = model->input().get_partial_shape();
    const int64_t want[3] = {3, static_cast<int64_t>(c.height), static_cast<int64_t>(c.width)};
    bool ok = in.rank().is_static() && in.rank().get_length() == 4;
    for (int i = 0; ok && i < 3; ++i) ok = in[i + 1].is_dynamic() || in[i + 1].get_length() == want[i];
    if (!ok)
        throw Error(QFSDK_ERR_BAD_CONTRACT, path + ": model input " + dims_text(in) + " does not match the contract's 3 x " +
                                                std::to_string(c.height) + " x " + std::to_string(c.width));
    if (in[1].is_dynamic() || in[2].is_dynamic() || in[3].is_dynamic())
        model->reshape(ov::PartialShape{in[0], 3, want[1], want[2]});
    ov::PartialShape out = model->output().get_partial_shape();  // (batch, embedding_size[, 1, 1])
    size_t per_item = 1;
    bool known = out.rank().is_static() && out.rank().get_length() >= 2;
    for (int64_t i = 1; known && i < out.rank().get_length(); ++i) {
        known = out[i].is_static();
        if (known) per_item *= static_cast<size_t>(out[i].get_length());
    }
    if (known && per_item != c.embedding_size)
        throw Error(QFSDK_ERR_BAD_CONTRACT, path + ": model output " + dims_text(out) + " has " + std::to_string(per_item) +
                                                " values per face, the contract's embedding_size is " +
                                                std::to_string(c.embedding_size));
    return in[0].is_static() ? static_cast<size_t>(in[0].get_length()) : 0;
}

}  // namespace

LoadedModel open_openvino(const std::string& path, const qfsdk_options& options) {
    require_file(path, "model");
    try {
        ov::Core core;
        std::shared_ptr<ov::Model> model = core.read_model(path);
        LoadedModel loaded;
        loaded.contract_json = contract_text(model, path);
        loaded.contract = parse_contract(loaded.contract_json);
        size_t fixed_batch = check_shapes(model, loaded.contract, path);

        ov::preprocess::PrePostProcessor ppp(model);
        ppp.input().tensor().set_element_type(ov::element::f32);
        ppp.output().tensor().set_element_type(ov::element::f32);
        model = ppp.build();

        // ACCURACY keeps float layers in f32 (no implicit bf16 on AMX CPUs), so embeddings
        // match the float reference; Q/DQ layers still run in int8.
        ov::AnyMap config{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY),
                          ov::hint::execution_mode(ov::hint::ExecutionMode::ACCURACY)};
        if (options.num_threads > 0) config.emplace(ov::inference_num_threads(options.num_threads));
        ov::CompiledModel compiled = core.compile_model(model, "CPU", config);
        loaded.backend = std::make_unique<OpenVinoBackend>(std::move(core), std::move(compiled), fixed_batch, loaded.contract);
        return loaded;
    } catch (const ov::Exception& e) {
        throw Error(QFSDK_ERR_BACKEND, path + ": OpenVINO could not load the model: " + e.what());
    }
}

}  // namespace qfsdk
