// TensorRT IPluginV3 wrappers of the NLD decode-step kernels (plugins/kernels). Built only with
// -DTENSORRT_ROOT=... (the TensorRT headers; the pip wheels ship none). Each plugin is one kernel:
//   NldTop1Confidence  logits [N, V] (float/half/bf16) -> ids [N] int64, confidence [N] float
//                      fields: exclude_id (int32), temperature (float32), seed (int32)
//   NldSelectCommits   confidence [S, B] float, is_mask [S, B] bool, counts [S] int64 -> commit [S, B] bool
//                      fields: use_threshold (int32 0/1), threshold (float32)
//   NldAcceptDrafts    block [S, B] int64, verified [S, B] int64 -> accepted [S] int64, emitted [S, B] int64
//   NldKvKeep          values [S, R, P, D], starts [S], offsets [S, K], counts [S] (int64) -> values' (the
//                      gather applied to a copy: TensorRT outputs do not alias inputs)
//   NldKvCrop          values [S, R, P, D], lengths [S], new_lengths [S] (int64) -> values' (cropped copy)
// Semantics: nld/kernels/reference.py. Version "1", namespace "nld".
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace nld::trt {

// What differs between the plugins; everything else is KernelPlugin's.
struct PluginSpec {
  const char* name;
  int32_t inputs;
  int32_t outputs;
};

// Attribute values of a plugin, by field name (all plugins' fields are int32 or float32 scalars).
struct Fields {
  std::vector<std::string> names;
  std::vector<nvinfer1::PluginFieldType> types;
  std::vector<float> floats;
  std::vector<int32_t> ints;
};

class KernelPlugin : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit KernelPlugin(PluginSpec spec) : spec_(spec) {}
  ~KernelPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return spec_.name; }
  char const* getPluginVersion() const noexcept override { return "1"; }
  char const* getPluginNamespace() const noexcept override { return "nld"; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return spec_.outputs; }
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override {
    return 0;
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override { return clone(); }
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 protected:
  // The plugin's attributes, serialized as PluginFields.
  virtual void describeFields(Fields& fields) const {}
  PluginSpec spec_;

 private:
  Fields serialized_;
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection collection_{};
};

// The entry points TensorRT's plugin loader (IPluginRegistry::loadLibrary) looks up: the creators of
// every NLD plugin, and the logger TensorRT offers the library.
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

}  // namespace nld::trt
