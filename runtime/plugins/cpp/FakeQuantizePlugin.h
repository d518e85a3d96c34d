// qfsdk::FakeQuantize version 1: an IPluginV3 for TensorRT 10.x (written for 10.3 / JetPack 6).
//
// UNTESTED WITH TENSORRT: no TensorRT was available. Syntax-checked (g++ -Wall -Wextra -Woverloaded-virtual)
// against the IPluginV3 / IPluginCreatorV3One / IPluginRegistry declarations transcribed from NVIDIA's
// TensorRT 10.x headers; the CUDA kernel (fakeQuantizeKernel.cu) was run on a GPU and matches the ONNX reference.
#pragma once

#include "fakeQuantizeKernel.h"

#include <NvInferRuntime.h>

#include <vector>

namespace qfsdk
{

//! Exact k-bit activation fake quantization between float layers (simulation only: TensorRT cannot fuse
//! it into int8 kernels). Float32, linear format, one input, one output of the same shape.
class FakeQuantizePlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit FakeQuantizePlugin(FakeQuantizeParams params);
    FakeQuantizePlugin(FakeQuantizePlugin const& other);
    FakeQuantizePlugin& operator=(FakeQuantizePlugin const&) = delete;
    ~FakeQuantizePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    void initFields();

    FakeQuantizeParams mParams;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

//! Creates FakeQuantizePlugin from the ONNX node's attributes (build) or the serialized fields (runtime).
class FakeQuantizePluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    FakeQuantizePluginCreator();

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace qfsdk
