// TensorRT backend (TensorRT 10/11, enqueueV3). UNTESTED: TensorRT cannot be installed on
// the build machines; this file is compiled only when CMake finds NvInfer.h and libnvinfer.
// Reads a serialized engine and its sidecar JSON (key "contract"); calls on one handle are
// serialised because an execution context is not thread-safe.
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iterator>
#include <mutex>
#include <vector>

#include "backend.hpp"
#include "error.hpp"

namespace qfsdk {
namespace {

void cuda_check(cudaError_t rc, const char* what) {
    if (rc != cudaSuccess) throw Error(QFSDK_ERR_BACKEND, std::string(what) + ": " + cudaGetErrorString(rc));
}

std::string read_all(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(QFSDK_ERR_NOT_FOUND, path + ": cannot be read");
    return std::string(std::istreambuf_iterator<char>(in), {});
}

class Logger final : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity > Severity::kERROR) return;
        try {
            std::lock_guard<std::mutex> lock(mutex_);
            last_ = msg;
        } catch (...) {
        }
    }
    std::string last() {
        std::lock_guard<std::mutex> lock(mutex_);
        return last_;
    }

private:
    std::mutex mutex_;
    std::string last_;
};

struct CudaFree {
    void operator()(void* p) const noexcept { cudaFree(p); }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;

DeviceBuffer device_alloc(size_t bytes) {
    void* p = nullptr;
    cuda_check(cudaMalloc(&p, bytes), "cudaMalloc");
    return DeviceBuffer(p);
}

class TensorRtBackend final : public Backend {
public:
    TensorRtBackend(const std::string& blob, const Contract& c, const std::string& path)
        : height_(c.height), width_(c.width), embedding_size_(c.embedding_size) {
        runtime_.reset(nvinfer1::createInferRuntime(logger_));
        if (runtime_) engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
        if (!engine_)
            throw Error(QFSDK_ERR_BACKEND, path + ": TensorRT could not deserialize the engine (built for another GPU or "
                                                  "TensorRT version?): " + logger_.last());
        for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
            const char* name = engine_->getIOTensorName(i);
            (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? input_ : output_) = name;
            if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
                throw Error(QFSDK_ERR_BAD_CONTRACT, path + ": tensor '" + name + "' is not float32");
        }
        if (engine_->getNbIOTensors() != 2 || input_.empty() || output_.empty())
            throw Error(QFSDK_ERR_BAD_CONTRACT, path + ": expected one input and one output tensor");
        nvinfer1::Dims in = engine_->getTensorShape(input_.c_str());
        if (in.nbDims != 4 || in.d[1] != 3 || in.d[2] != static_cast<int64_t>(height_) || in.d[3] != static_cast<int64_t>(width_))
            throw Error(QFSDK_ERR_BAD_CONTRACT, path + ": engine input does not match the contract's 3 x " +
                                                    std::to_string(height_) + " x " + std::to_string(width_));
        fixed_batch_ = in.d[0] > 0 ? static_cast<size_t>(in.d[0]) : 0;
        max_batch_ = fixed_batch_ ? fixed_batch_
                                  : static_cast<size_t>(engine_->getProfileShape(input_.c_str(), 0, nvinfer1::OptProfileSelector::kMAX).d[0]);
        context_.reset(engine_->createExecutionContext());
        if (!context_) throw Error(QFSDK_ERR_BACKEND, path + ": cannot create an execution context: " + logger_.last());
        cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    }

    ~TensorRtBackend() override {
        if (stream_) cudaStreamDestroy(stream_);
    }

    const char* name() const noexcept override { return "tensorrt"; }
    size_t fixed_batch() const noexcept override { return fixed_batch_; }
    size_t max_batch() const noexcept override { return max_batch_; }

    void infer(const float* input, size_t n, float* output) override {
        std::lock_guard<std::mutex> lock(mutex_);
        const size_t in_bytes = n * 3 * height_ * width_ * sizeof(float), out_bytes = n * embedding_size_ * sizeof(float);
        if (n > capacity_) {
            d_input_ = device_alloc(in_bytes);
            d_output_ = device_alloc(out_bytes);
            capacity_ = n;
        }
        nvinfer1::Dims shape{4, {static_cast<int64_t>(n), 3, static_cast<int64_t>(height_), static_cast<int64_t>(width_)}};
        if (!context_->setInputShape(input_.c_str(), shape) || !context_->setTensorAddress(input_.c_str(), d_input_.get()) ||
            !context_->setTensorAddress(output_.c_str(), d_output_.get()))
            throw Error(QFSDK_ERR_BACKEND, "TensorRT rejected batch " + std::to_string(n) + ": " + logger_.last());
        cuda_check(cudaMemcpyAsync(d_input_.get(), input, in_bytes, cudaMemcpyHostToDevice, stream_), "copy to GPU");
        if (!context_->enqueueV3(stream_)) throw Error(QFSDK_ERR_BACKEND, "TensorRT enqueueV3 failed: " + logger_.last());
        cuda_check(cudaMemcpyAsync(output, d_output_.get(), out_bytes, cudaMemcpyDeviceToHost, stream_), "copy from GPU");
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    }

private:
    Logger logger_;  // outlives the runtime objects below (declared first)
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    std::string input_, output_;
    size_t height_, width_, embedding_size_, fixed_batch_ = 0, max_batch_ = 0, capacity_ = 0;
    cudaStream_t stream_ = nullptr;
    DeviceBuffer d_input_, d_output_;
    std::mutex mutex_;
};

}  // namespace

LoadedModel open_tensorrt(const std::string& path, const qfsdk_options& /*options*/) {
    require_file(path, "engine");
    // Sidecar: "<engine>.json" (model.engine.json), else the engine's name with .json (model.json).
    std::string sidecar = path + ".json";
    if (!std::ifstream(sidecar)) sidecar = path.substr(0, path.find_last_of('.')) + ".json";
    if (!std::ifstream(sidecar))
        throw Error(QFSDK_ERR_NO_CONTRACT, path + ": no sidecar " + path + ".json with the model contract");
    LoadedModel loaded;
    loaded.contract_json = contract_text_from_sidecar(read_all(sidecar), sidecar);
    loaded.contract = parse_contract(loaded.contract_json);
    loaded.backend = std::make_unique<TensorRtBackend>(read_all(path), loaded.contract, path);
    return loaded;
}

}  // namespace qfsdk
