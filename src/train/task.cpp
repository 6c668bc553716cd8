// The task factory (task.h): the model kinds and the data kinds of a run.
// A new model kind is a build function and a row of kModelKinds; a new data
// kind a load function and a row of kDataKinds (docs/architecture.md).
#include "train/task.h"

#include "specopt/train/models.h"

#include <c10/util/Exception.h>
#include <torch/nn/functional/loss.h>

#include <algorithm>

namespace specopt {
namespace detail {

namespace {

// ---- model kinds ----------------------------------------------------------------

TaskModel build_gpt(const ModelConfig& model, int64_t vocab_size) {
  GPTConfig g;
  static_cast<GPTShape&>(g) = model;  // the gpt's [model] keys; the vocabulary is the data's
  g.vocab_size = vocab_size;
  GPT gpt(g);
  TaskModel t;
  t.module = gpt.ptr();
  t.loss_fn = [gpt](const at::Tensor& x, const at::Tensor& y) mutable { return gpt->loss(x, y); };
  t.eval_fn = [loss = t.loss_fn](const at::Tensor& x, const at::Tensor& y) {
    return BatchEval{loss(x, y).item<double>(), 0.0};
  };
  return t;
}

// A classifier of the images from its logits: the loss is their cross-entropy,
// the validation takes loss and accuracy from one forward pass.
template <class Module>
TaskModel classifier(Module net) {
  TaskModel t;
  t.module = net.ptr();
  t.loss_fn = [net](const at::Tensor& x, const at::Tensor& y) mutable {
    return torch::nn::functional::cross_entropy(net->forward(x), y);
  };
  t.eval_fn = [net](const at::Tensor& x, const at::Tensor& y) mutable {
    const at::Tensor logits = net->forward(x);
    const double loss = torch::nn::functional::cross_entropy(logits, y).item<double>();
    return BatchEval{loss, logits.argmax(1).eq(y).sum().item<double>()};
  };
  t.classifies = true;
  return t;
}

TaskModel build_mlp(const ModelConfig& model, int64_t /*vocab_size: images*/) {
  MLPConfig mc;
  mc.hidden = model.hidden;
  return classifier(MLP(mc));
}

TaskModel build_cnn(const ModelConfig& model, int64_t /*vocab_size: images*/) {
  CNNConfig cc;
  cc.channels1 = model.channels[0];
  cc.channels2 = model.channels[1];
  cc.hidden = model.fc_hidden;
  return classifier(CNN(cc));
}

struct ModelKind {
  const char* name;
  TaskInputs inputs;
  TaskModel (*build)(const ModelConfig& model, int64_t vocab_size);
};
const ModelKind kModelKinds[] = {
    {"gpt", TaskInputs::kTokens, build_gpt},
    {"mlp", TaskInputs::kImages, build_mlp},
    {"cnn", TaskInputs::kImages, build_cnn},
};

// ---- data kinds -----------------------------------------------------------------

TokenDataset take_prefix(const TokenDataset& d, int64_t limit) {
  return limit > 0 && limit < d.size() ? d.slice(0, limit) : d;
}
ImageDataset take_prefix(const ImageDataset& d, int64_t limit) {
  return limit > 0 && limit < d.size() ? d.slice(0, limit) : d;
}

// Token data from its (train, validation) split: random-offset sequences of
// model.block_size tokens; the vocabulary is data.vocab_size or else the data's.
TaskData token_data(std::pair<TokenDataset, TokenDataset> split, const TrainConfig& c) {
  const TokenDataset train = take_prefix(split.first, c.data.train_limit);
  const TokenDataset val = take_prefix(split.second, c.data.val_limit);
  TaskData d;
  d.vocab_size = std::max(train.vocab_size(), val.vocab_size());
  if (c.data.vocab_size > 0) {
    TORCH_CHECK(c.data.vocab_size >= d.vocab_size, "config key 'data.vocab_size' = ", c.data.vocab_size,
                " is smaller than the data's vocabulary (", d.vocab_size, ")");
    d.vocab_size = c.data.vocab_size;
  }
  const int64_t block = c.model.block_size;
  d.sampler = std::make_unique<TokenBatchSampler>(train, c.train.batch_size, block,
                                                  static_cast<uint64_t>(c.run.seed));
  d.num_val_batches = [val, block](int64_t micro) { return val.num_sequential_batches(micro, block); };
  d.val_batch = [val, block](int64_t i, int64_t micro) { return val.sequential_batch(i, micro, block); };
  d.val_name = "'" + val.name() + "' (" + std::to_string(val.size()) + " tokens)";
  d.example_note = " of block_size " + std::to_string(block) + " tokens";
  d.items_per_example = block;
  d.unit = "tokens";
  return d;
}

TaskData load_kjv(const TrainConfig& c) {
  return token_data(kjv_train_val(c.data.cache_dir.empty() ? default_cache_dir() : c.data.cache_dir), c);
}
TaskData load_text(const TrainConfig& c) {
  return token_data(split_train_val(TokenDataset::from_text_file(c.data.path), c.data.val_fraction, '\n'), c);
}
TaskData load_bin(const TrainConfig& c) { return token_data(bin_train_val(c.data.path, c.data.vocab_size), c); }

// Shuffled epochs of images; the validation batches are the test set in order.
TaskData load_fashion_mnist(const TrainConfig& c) {
  auto split = c.data.path.empty() ? fashion_mnist() : fashion_mnist(c.data.path);
  TaskData d;
  d.sampler = std::make_unique<ImageBatchSampler>(take_prefix(split.first, c.data.train_limit),
                                                  c.train.batch_size, static_cast<uint64_t>(c.run.seed));
  const ImageDataset val = take_prefix(split.second, c.data.val_limit);
  d.num_val_batches = [val](int64_t micro) { return val.num_batches(micro); };
  d.val_batch = [val](int64_t i, int64_t micro) { return val.batch(i, micro); };
  d.val_name = "of '" + (c.data.path.empty() ? std::string("fashion_mnist()") : c.data.path) + "'";
  d.items_per_example = 1;
  d.unit = "samples";
  return d;
}

struct DataKind {
  const char* name;
  TaskInputs inputs;
  TaskData (*load)(const TrainConfig& config);
};
const DataKind kDataKinds[] = {
    {"kjv", TaskInputs::kTokens, load_kjv},
    {"text", TaskInputs::kTokens, load_text},
    {"bin", TaskInputs::kTokens, load_bin},
    {"fashion_mnist", TaskInputs::kImages, load_fashion_mnist},
};

template <class Kind, size_t N>
const Kind& find_kind(const Kind (&kinds)[N], const std::string& name, const char* key) {
  for (const Kind& k : kinds)
    if (name == k.name) return k;
  TORCH_CHECK(false, "config key '", key, "': unknown value '", name, "'");
}

template <class Kind, size_t N>
std::vector<std::string> names(const Kind (&kinds)[N]) {
  std::vector<std::string> out;
  for (const Kind& k : kinds) out.emplace_back(k.name);
  return out;
}

}  // namespace

std::vector<std::string> model_kinds() { return names(kModelKinds); }
std::vector<std::string> data_kinds() { return names(kDataKinds); }
TaskInputs model_inputs(const std::string& kind) { return find_kind(kModelKinds, kind, "model.kind").inputs; }
TaskInputs data_inputs(const std::string& kind) { return find_kind(kDataKinds, kind, "data.kind").inputs; }

std::string describe_task_fits() {
  std::string out;
  const std::pair<TaskInputs, const char*> kinds_of_inputs[] = {{TaskInputs::kTokens, "token data"},
                                                                  {TaskInputs::kImages, "image data"}};
  for (const auto& [inputs, what] : kinds_of_inputs) {
    std::string models, data;
    for (const ModelKind& k : kModelKinds)
      if (k.inputs == inputs) models += (models.empty() ? "" : "/") + std::string(k.name);
    for (const DataKind& k : kDataKinds)
      if (k.inputs == inputs) data += (data.empty() ? "" : ", ") + std::string(k.name);
    out += out.empty() ? models + " trains on " : ", " + models + " on ";
    out += std::string(what) + " (" + data + ")";
  }
  return out;
}

TaskData load_task_data(const TrainConfig& config) {
  return find_kind(kDataKinds, config.data.kind, "data.kind").load(config);
}

TaskModel build_task_model(const ModelConfig& model, int64_t vocab_size) {
  return find_kind(kModelKinds, model.kind, "model.kind").build(model, vocab_size);
}

}  // namespace detail
}  // namespace specopt
