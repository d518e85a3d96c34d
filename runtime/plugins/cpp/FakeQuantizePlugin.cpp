// qfsdk::FakeQuantize IPluginV3 implementation and its creator; registered when the library is loaded.
#include "FakeQuantizePlugin.h"

#include <cstring>
#include <exception>
#include <string>

using namespace nvinfer1;

namespace qfsdk
{
namespace
{

char const* const kPLUGIN_NAME{"FakeQuantize"};
char const* const kPLUGIN_VERSION{"1"};
char const* const kPLUGIN_NAMESPACE{"qfsdk"};

//! Reads an integer field whatever width the caller used (the ONNX parser, a serialized engine).
bool readInt(PluginField const& field, int32_t& value)
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(field.data); return true;
    case PluginFieldType::kINT64: value = static_cast<int32_t>(*static_cast<int64_t const*>(field.data)); return true;
    default: return false;
    }
}

bool readFloat(PluginField const& field, float& value)
{
    if (field.data == nullptr || field.length < 1)
    {
        return false;
    }
    switch (field.type)
    {
    case PluginFieldType::kFLOAT32: value = *static_cast<float const*>(field.data); return true;
    case PluginFieldType::kFLOAT64: value = static_cast<float>(*static_cast<double const*>(field.data)); return true;
    default: return false;
    }
}

} // namespace

// ---- FakeQuantizePlugin ---------------------------------------------------------------------------------------------

FakeQuantizePlugin::FakeQuantizePlugin(FakeQuantizeParams params)
    : mParams(params)
{
    initFields();
}

FakeQuantizePlugin::FakeQuantizePlugin(FakeQuantizePlugin const& other)
    : mParams(other.mParams)
{
    initFields(); // the field pointers must point into this object, not the copied one
}

void FakeQuantizePlugin::initFields()
{
    mFields = {PluginField("scale", &mParams.scale, PluginFieldType::kFLOAT32, 1),
        PluginField("zero_point", &mParams.zeroPoint, PluginFieldType::kINT32, 1),
        PluginField("qmin", &mParams.qmin, PluginFieldType::kINT32, 1),
        PluginField("qmax", &mParams.qmax, PluginFieldType::kINT32, 1)};
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

IPluginCapability* FakeQuantizePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* FakeQuantizePlugin::clone() noexcept
{
    try
    {
        return new FakeQuantizePlugin(*this);
    }
    catch (std::exception const&)
    {
        return nullptr;
    }
}

char const* FakeQuantizePlugin::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* FakeQuantizePlugin::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* FakeQuantizePlugin::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

int32_t FakeQuantizePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return (nbInputs == 1 && nbOutputs == 1) ? 0 : -1;
}

int32_t FakeQuantizePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t FakeQuantizePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        return -1;
    }
    outputs[0] = inputs[0];
    return 0;
}

bool FakeQuantizePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    PluginTensorDesc const& desc = inOut[pos].desc;
    return desc.type == DataType::kFLOAT && desc.format == TensorFormat::kLINEAR;
}

int32_t FakeQuantizePlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t FakeQuantizePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return 0;
}

int32_t FakeQuantizePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    int64_t count = 1;
    for (int32_t i = 0; i < inputDesc[0].dims.nbDims; ++i)
    {
        count *= inputDesc[0].dims.d[i];
    }
    cudaError_t const status = launchFakeQuantize(
        static_cast<float const*>(inputs[0]), static_cast<float*>(outputs[0]), count, mParams, stream);
    return status == cudaSuccess ? 0 : -1;
}

IPluginV3* FakeQuantizePlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    return clone();
}

PluginFieldCollection const* FakeQuantizePlugin::getFieldsToSerialize() noexcept
{
    return &mFieldCollection;
}

// ---- FakeQuantizePluginCreator --------------------------------------------------------------------------------------

FakeQuantizePluginCreator::FakeQuantizePluginCreator()
    : mFields{PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1),
        PluginField("zero_point", nullptr, PluginFieldType::kINT32, 1),
        PluginField("qmin", nullptr, PluginFieldType::kINT32, 1),
        PluginField("qmax", nullptr, PluginFieldType::kINT32, 1)}
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

char const* FakeQuantizePluginCreator::getPluginName() const noexcept
{
    return kPLUGIN_NAME;
}

char const* FakeQuantizePluginCreator::getPluginVersion() const noexcept
{
    return kPLUGIN_VERSION;
}

char const* FakeQuantizePluginCreator::getPluginNamespace() const noexcept
{
    return kPLUGIN_NAMESPACE;
}

PluginFieldCollection const* FakeQuantizePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

IPluginV3* FakeQuantizePluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        FakeQuantizeParams params{0.F, 0, 0, 0};
        int32_t found = 0; // bit per field: scale, zero_point, qmin, qmax
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            std::string const fieldName{field.name};
            if (fieldName == "scale" && readFloat(field, params.scale))
            {
                found |= 1;
            }
            else if (fieldName == "zero_point" && readInt(field, params.zeroPoint))
            {
                found |= 2;
            }
            else if (fieldName == "qmin" && readInt(field, params.qmin))
            {
                found |= 4;
            }
            else if (fieldName == "qmax" && readInt(field, params.qmax))
            {
                found |= 8;
            }
        }
        if (found != 15 || !(params.scale > 0.F) || params.qmin > params.qmax)
        {
            return nullptr; // missing or invalid attributes: the parser reports the node
        }
        return new FakeQuantizePlugin(params);
    }
    catch (std::exception const&)
    {
        return nullptr;
    }
}

namespace
{

// REGISTER_TENSORRT_PLUGIN would register under the empty namespace; register under "qfsdk" so the lookup
// by (op type, plugin_version, plugin_namespace) that TensorRT's ONNX parser makes finds this creator.
struct Registrar
{
    Registrar()
    {
        getPluginRegistry()->registerCreator(creator, kPLUGIN_NAMESPACE);
    }
    FakeQuantizePluginCreator creator;
};

Registrar gRegistrar; // constructed when the library is loaded (ctypes.CDLL, dlopen, trtexec --staticPlugins)

} // namespace
} // namespace qfsdk
