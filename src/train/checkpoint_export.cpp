// checkpoint_export.h: the model archive of a checkpoint, walked by name.
#include "specopt/train/checkpoint_export.h"

#include "specopt/train/checkpoint.h"
#include "specopt/train/config.h"

#include <c10/util/Exception.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/serialize/input-archive.h>

#include <vector>

namespace specopt {

namespace {

// nn::Module::save writes a module's parameters and buffers as tensors and each
// child as a nested archive under the child's name; every other attribute (the
// module's `training` flag) is no tensor and is skipped.
void collect(torch::serialize::InputArchive& archive, const std::string& prefix,
             torch::OrderedDict<std::string, at::Tensor>& out) {
  for (const auto& key : archive.keys()) {
    c10::IValue value;
    if (!archive.try_read(key, value)) continue;
    if (value.isTensor()) {
      out.insert(prefix + key, value.toTensor());
    } else if (value.isObject()) {
      torch::serialize::InputArchive child;
      archive.read(key, child);
      collect(child, prefix + key + ".", out);
    }
  }
}

// torch::pickle_save's container (a zip: data.pkl, one record per tensor storage,
// version), with the pickle written without type tags: pickle_save tags a typed
// dict with torch.jit._pickle.restore_type_tag, which torch.load(weights_only=True)
// (the default from torch 2.6) refuses. Untagged, it is what Python's torch.save
// writes for a dict of tensors.
std::string torch_save_bytes(const c10::IValue& value) {
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&](const char* buf, size_t n) { pickle.insert(pickle.end(), buf, buf + n); },
                              /*tensor_table=*/nullptr, /*type_renamer=*/nullptr,
                              /*memoized_class_types=*/nullptr, /*get_tensor_id=*/nullptr,
                              /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(value);
  pickler.stop();
  std::string bytes;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    bytes.append(static_cast<const char*>(data), n);
    return n;
  });
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
  return bytes;
}

torch::OrderedDict<std::string, at::Tensor> model_state(torch::serialize::InputArchive& archive,
                                                        const std::string& path) {
  torch::serialize::InputArchive model;
  TORCH_CHECK(archive.try_read("model", model), "checkpoint '", path, "' lacks 'model'");
  torch::OrderedDict<std::string, at::Tensor> state;
  collect(model, "", state);
  TORCH_CHECK(!state.is_empty(), "checkpoint '", path, "': its model holds no tensors");
  return state;
}

}  // namespace

torch::OrderedDict<std::string, at::Tensor> checkpoint_model_state(const std::string& path) {
  torch::serialize::InputArchive archive;
  read_checkpoint(path, archive, torch::Device(torch::kCPU));
  return model_state(archive, path);
}

int64_t export_checkpoint(const std::string& checkpoint, const std::string& out) {
  torch::serialize::InputArchive archive;
  read_checkpoint(checkpoint, archive, torch::Device(torch::kCPU));
  const auto state = model_state(archive, checkpoint);
  c10::IValue config_text;
  TORCH_CHECK(archive.try_read("config", config_text) && config_text.isString(), "checkpoint '",
              checkpoint, "' lacks 'config'");
  const TrainConfig config = config_from_toml_string(config_text.toStringRef(), checkpoint + " (config)");

  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& item : state) dict.insert(item.key(), item.value());
  if (config.model.kind == "gpt") {
    const at::Tensor* wte = state.find("transformer.wte.weight");
    TORCH_CHECK(wte != nullptr, "checkpoint '", checkpoint, "': a gpt without transformer.wte.weight");
    TORCH_CHECK(!state.contains("lm_head.weight"), "checkpoint '", checkpoint,
                "': the gpt already holds lm_head.weight");
    dict.insert("lm_head.weight", *wte);  // the tied head (models.h): same tensor, stored once
  }
  write_file_atomic(out, torch_save_bytes(c10::IValue(dict)));
  return static_cast<int64_t>(dict.size());
}

}  // namespace specopt
