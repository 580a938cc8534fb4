// TensorRT IPluginV3 wrappers of the NLD decode-step kernels; see nld_plugins.h.
#include "nld_plugins.h"

#include <cstring>
#include <memory>

#include "nld_kernels.h"

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace nld::trt {
namespace {

bool float_type(DataType type) { return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16; }

DType kernel_type(DataType type) {
  return type == DataType::kHALF ? DType::kFloat16 : type == DataType::kBF16 ? DType::kBFloat16 : DType::kFloat32;
}

size_t element_size(DataType type) { return type == DataType::kFLOAT ? 4 : 2; }

int64_t volume(nvinfer1::Dims const& dims) {
  int64_t count = 1;
  for (int32_t i = 0; i < dims.nbDims; ++i) count *= dims.d[i];
  return count;
}

int32_t status(cudaError_t error) { return error == cudaSuccess ? 0 : -1; }

// One scalar attribute read from a creator's field collection, or its default.
template <typename T>
T field_value(PluginFieldCollection const* fc, char const* name, T fallback) {
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    PluginField const& field = fc->fields[i];
    if (std::strcmp(field.name, name) != 0 || field.data == nullptr) continue;
    if (field.type == PluginFieldType::kFLOAT32) return static_cast<T>(*static_cast<float const*>(field.data));
    if (field.type == PluginFieldType::kINT32) return static_cast<T>(*static_cast<int32_t const*>(field.data));
  }
  return fallback;
}

// ---------------------------------------------------------------------------------------------------------
class Top1Confidence : public KernelPlugin {
 public:
  Top1Confidence(int32_t exclude_id, float temperature, int32_t seed)
      : KernelPlugin({"NldTop1Confidence", 1, 2}), exclude_id_(exclude_id), temperature_(temperature), seed_(seed) {}
  nvinfer1::IPluginV3* clone() noexcept override { return new Top1Confidence(exclude_id_, temperature_, seed_); }
  int32_t getOutputDataTypes(DataType* outputs, int32_t, DataType const*, int32_t) const noexcept override {
    outputs[0] = DataType::kINT64;
    outputs[1] = DataType::kFLOAT;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t, DimsExprs const*, int32_t, DimsExprs* outputs, int32_t,
                          nvinfer1::IExprBuilder&) noexcept override {
    for (int32_t i = 0; i < 2; ++i) {
      outputs[i].nbDims = 1;
      outputs[i].d[0] = inputs[0].d[0];
    }
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    DataType const type = io[pos].desc.type;
    bool const linear = io[pos].desc.format == TensorFormat::kLINEAR;
    if (pos == 0) return linear && float_type(type);
    return linear && type == (pos == 1 ? DataType::kINT64 : DataType::kFLOAT);
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    return status(launch_top1_confidence(inputs[0], kernel_type(in[0].type), in[0].dims.d[0], in[0].dims.d[1],
                                         exclude_id_, temperature_, static_cast<uint32_t>(seed_),
                                         static_cast<int64_t*>(outputs[0]), static_cast<float*>(outputs[1]), stream));
  }

 protected:
  void describeFields(Fields& fields) const override {
    fields.names = {"exclude_id", "temperature", "seed"};
    fields.types = {PluginFieldType::kINT32, PluginFieldType::kFLOAT32, PluginFieldType::kINT32};
    fields.ints = {exclude_id_, seed_};
    fields.floats = {temperature_};
  }

 private:
  int32_t exclude_id_;
  float temperature_;
  int32_t seed_;
};

// ---------------------------------------------------------------------------------------------------------
class SelectCommits : public KernelPlugin {
 public:
  SelectCommits(int32_t use_threshold, float threshold)
      : KernelPlugin({"NldSelectCommits", 3, 1}), use_threshold_(use_threshold), threshold_(threshold) {}
  nvinfer1::IPluginV3* clone() noexcept override { return new SelectCommits(use_threshold_, threshold_); }
  int32_t getOutputDataTypes(DataType* outputs, int32_t, DataType const*, int32_t) const noexcept override {
    outputs[0] = DataType::kBOOL;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t, DimsExprs const*, int32_t, DimsExprs* outputs, int32_t,
                          nvinfer1::IExprBuilder&) noexcept override {
    outputs[0] = inputs[0];
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    static constexpr DataType kTypes[] = {DataType::kFLOAT, DataType::kBOOL, DataType::kINT64, DataType::kBOOL};
    return io[pos].desc.format == TensorFormat::kLINEAR && io[pos].desc.type == kTypes[pos];
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    return status(launch_select_commits(static_cast<float const*>(inputs[0]), static_cast<bool const*>(inputs[1]),
                                        static_cast<int64_t const*>(inputs[2]), in[0].dims.d[0], in[0].dims.d[1],
                                        use_threshold_ != 0, threshold_, static_cast<bool*>(outputs[0]), stream));
  }

 protected:
  void describeFields(Fields& fields) const override {
    fields.names = {"use_threshold", "threshold"};
    fields.types = {PluginFieldType::kINT32, PluginFieldType::kFLOAT32};
    fields.ints = {use_threshold_};
    fields.floats = {threshold_};
  }

 private:
  int32_t use_threshold_;
  float threshold_;
};

// ---------------------------------------------------------------------------------------------------------
class AcceptDrafts : public KernelPlugin {
 public:
  AcceptDrafts() : KernelPlugin({"NldAcceptDrafts", 2, 2}) {}
  nvinfer1::IPluginV3* clone() noexcept override { return new AcceptDrafts(); }
  int32_t getOutputDataTypes(DataType* outputs, int32_t, DataType const*, int32_t) const noexcept override {
    outputs[0] = outputs[1] = DataType::kINT64;
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t, DimsExprs const*, int32_t, DimsExprs* outputs, int32_t,
                          nvinfer1::IExprBuilder&) noexcept override {
    outputs[0].nbDims = 1;
    outputs[0].d[0] = inputs[0].d[0];
    outputs[1] = inputs[0];
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t, int32_t) noexcept override {
    return io[pos].desc.format == TensorFormat::kLINEAR && io[pos].desc.type == DataType::kINT64;
  }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    return status(launch_accept_drafts(static_cast<int64_t const*>(inputs[0]), static_cast<int64_t const*>(inputs[1]),
                                       in[0].dims.d[0], in[0].dims.d[1], static_cast<int64_t*>(outputs[0]),
                                       static_cast<int64_t*>(outputs[1]), stream));
  }
};

// ---------------------------------------------------------------------------------------------------------
// The cache plugins return a transformed copy of `values` (input 0); the remaining inputs are int64.
class CacheCopyPlugin : public KernelPlugin {
 public:
  using KernelPlugin::KernelPlugin;
  int32_t getOutputDataTypes(DataType* outputs, int32_t, DataType const* inputs, int32_t) const noexcept override {
    outputs[0] = inputs[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t, DimsExprs const*, int32_t, DimsExprs* outputs, int32_t,
                          nvinfer1::IExprBuilder&) noexcept override {
    outputs[0] = inputs[0];
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* io, int32_t nbInputs,
                                 int32_t) noexcept override {
    if (io[pos].desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return float_type(io[0].desc.type);
    if (pos == nbInputs) return io[pos].desc.type == io[0].desc.type;  // the output
    return io[pos].desc.type == DataType::kINT64;
  }

 protected:
  // Copies values into the output; returns the output pointer (nullptr on failure).
  static void* copy_values(PluginTensorDesc const& desc, void const* input, void* output, cudaStream_t stream) {
    size_t const bytes = static_cast<size_t>(volume(desc.dims)) * element_size(desc.type);
    return cudaMemcpyAsync(output, input, bytes, cudaMemcpyDeviceToDevice, stream) == cudaSuccess ? output : nullptr;
  }
};

class KvKeep : public CacheCopyPlugin {
 public:
  KvKeep() : CacheCopyPlugin({"NldKvKeep", 4, 1}) {}
  nvinfer1::IPluginV3* clone() noexcept override { return new KvKeep(); }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    void* values = copy_values(in[0], inputs[0], outputs[0], stream);
    if (values == nullptr) return -1;
    nvinfer1::Dims const& dims = in[0].dims;
    return status(launch_kv_keep(values, kernel_type(in[0].type), dims.d[0], dims.d[1], dims.d[2], dims.d[3],
                                 static_cast<int64_t const*>(inputs[1]), static_cast<int64_t const*>(inputs[2]),
                                 in[2].dims.d[1], static_cast<int64_t const*>(inputs[3]), stream));
  }
};

class KvCrop : public CacheCopyPlugin {
 public:
  KvCrop() : CacheCopyPlugin({"NldKvCrop", 3, 1}) {}
  nvinfer1::IPluginV3* clone() noexcept override { return new KvCrop(); }
  int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                  void*, cudaStream_t stream) noexcept override {
    void* values = copy_values(in[0], inputs[0], outputs[0], stream);
    if (values == nullptr) return -1;
    nvinfer1::Dims const& dims = in[0].dims;
    return status(launch_kv_crop(values, kernel_type(in[0].type), dims.d[0], dims.d[1], dims.d[2], dims.d[3],
                                 static_cast<int64_t const*>(inputs[1]), static_cast<int64_t const*>(inputs[2]),
                                 stream));
  }
};

// ---------------------------------------------------------------------------------------------------------
// One creator per plugin: its name, its fields (for getFieldNames) and how to make it from a collection.
class Creator : public nvinfer1::IPluginCreatorV3One {
 public:
  using Factory = nvinfer1::IPluginV3* (*)(PluginFieldCollection const*);
  Creator(char const* name, std::vector<PluginField> fields, Factory factory)
      : name_(name), fields_(std::move(fields)), factory_(factory) {
    collection_.nbFields = static_cast<int32_t>(fields_.size());
    collection_.fields = fields_.data();
  }
  char const* getPluginName() const noexcept override { return name_; }
  char const* getPluginVersion() const noexcept override { return "1"; }
  char const* getPluginNamespace() const noexcept override { return "nld"; }
  PluginFieldCollection const* getFieldNames() noexcept override { return &collection_; }
  nvinfer1::IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase) noexcept override {
    try {
      return factory_(fc);
    } catch (...) {
      return nullptr;
    }
  }

 private:
  char const* name_;
  std::vector<PluginField> fields_;
  PluginFieldCollection collection_{};
  Factory factory_;
};

PluginField declared(char const* name, PluginFieldType type) { return PluginField(name, nullptr, type, 1); }

Creator& top1_creator() {
  static Creator creator("NldTop1Confidence",
                         {declared("exclude_id", PluginFieldType::kINT32),
                          declared("temperature", PluginFieldType::kFLOAT32), declared("seed", PluginFieldType::kINT32)},
                         [](PluginFieldCollection const* fc) -> nvinfer1::IPluginV3* {
                           return new Top1Confidence(field_value<int32_t>(fc, "exclude_id", -1),
                                                     field_value<float>(fc, "temperature", 0.0f),
                                                     field_value<int32_t>(fc, "seed", 0));
                         });
  return creator;
}

Creator& commits_creator() {
  static Creator creator(
      "NldSelectCommits",
      {declared("use_threshold", PluginFieldType::kINT32), declared("threshold", PluginFieldType::kFLOAT32)},
      [](PluginFieldCollection const* fc) -> nvinfer1::IPluginV3* {
        return new SelectCommits(field_value<int32_t>(fc, "use_threshold", 0), field_value<float>(fc, "threshold", 0.0f));
      });
  return creator;
}

Creator& accept_creator() {
  static Creator creator("NldAcceptDrafts", {},
                         [](PluginFieldCollection const*) -> nvinfer1::IPluginV3* { return new AcceptDrafts(); });
  return creator;
}

Creator& keep_creator() {
  static Creator creator("NldKvKeep", {}, [](PluginFieldCollection const*) -> nvinfer1::IPluginV3* { return new KvKeep(); });
  return creator;
}

Creator& crop_creator() {
  static Creator creator("NldKvCrop", {}, [](PluginFieldCollection const*) -> nvinfer1::IPluginV3* { return new KvCrop(); });
  return creator;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
nvinfer1::IPluginCapability* KernelPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE:
      return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD:
      return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME:
      return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

int32_t KernelPlugin::configurePlugin(DynamicPluginTensorDesc const*, int32_t nbInputs, DynamicPluginTensorDesc const*,
                                      int32_t nbOutputs) noexcept {
  return nbInputs == spec_.inputs && nbOutputs == spec_.outputs ? 0 : -1;
}

int32_t KernelPlugin::onShapeChange(PluginTensorDesc const*, int32_t nbInputs, PluginTensorDesc const*,
                                    int32_t nbOutputs) noexcept {
  return nbInputs == spec_.inputs && nbOutputs == spec_.outputs ? 0 : -1;
}

PluginFieldCollection const* KernelPlugin::getFieldsToSerialize() noexcept {
  serialized_ = Fields{};
  describeFields(serialized_);
  fields_.clear();
  size_t next_int = 0, next_float = 0;
  for (size_t i = 0; i < serialized_.names.size(); ++i) {
    bool const is_float = serialized_.types[i] == PluginFieldType::kFLOAT32;
    void const* data = is_float ? static_cast<void const*>(&serialized_.floats[next_float++])
                                : static_cast<void const*>(&serialized_.ints[next_int++]);
    fields_.emplace_back(serialized_.names[i].c_str(), data, serialized_.types[i], 1);
  }
  collection_.nbFields = static_cast<int32_t>(fields_.size());
  collection_.fields = fields_.data();
  return &collection_;
}

namespace {
nvinfer1::ILoggerFinder* logger_finder = nullptr;  // kept for diagnostics; the plugins log nothing yet
}  // namespace

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { logger_finder = finder; }

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&top1_creator(), &commits_creator(), &accept_creator(),
                                                                 &keep_creator(), &crop_creator()};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

}  // namespace nld::trt
