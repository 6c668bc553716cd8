// The task factory: what a model kind and a data kind bring to a run, keyed
// by model.kind and data.kind. A model kind builds the module, its loss and
// its validation; a data kind loads the training sampler and the validation
// batches and says what a throughput counts. The kinds are the rows of two
// tables in task.cpp: TrainConfig::validate takes the accepted names and
// which model fits which data from there, and the Trainer builds through
// them without branching on a kind. Private to the train layer.
#pragma once

#include "specopt/train/config.h"
#include "specopt/train/data.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace torch {
namespace nn {
class Module;
}  // namespace nn
}  // namespace torch

namespace specopt {
namespace detail {

// What a model takes as input and a data kind provides: a model fits the data
// kinds of its inputs.
enum class TaskInputs { kTokens, kImages };

// The accepted names, in table order (for messages), and their inputs (an
// error for an unknown name).
std::vector<std::string> model_kinds();
std::vector<std::string> data_kinds();
TaskInputs model_inputs(const std::string& model_kind);
TaskInputs data_inputs(const std::string& data_kind);
// Which models fit which data, for messages: "gpt trains on token data (kjv,
// text, bin), mlp/cnn on image data (fashion_mnist)".
std::string describe_task_fits();

// (inputs, targets) → the mean loss of the batch.
using LossFn = std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>;

// One validation batch: its mean loss and, for a classifier, how many of its
// examples the argmax logit labels correctly (0 otherwise).
struct BatchEval {
  double loss = 0.0;
  double correct = 0.0;
};

// A model of the config (on the CPU, initialised from the global generator).
struct TaskModel {
  std::shared_ptr<torch::nn::Module> module;
  LossFn loss_fn;
  // The loss of loss_fn and the correct predictions from one forward pass.
  std::function<BatchEval(const at::Tensor&, const at::Tensor&)> eval_fn;
  bool classifies = false;  // the validation accuracy is meaningful
};

// A data kind loaded for a run (no global random numbers drawn).
struct TaskData {
  // Training batches of train.batch_size examples, seeded with run.seed.
  std::unique_ptr<BatchSampler> sampler;
  // The fixed validation batches of `micro` examples: how many, and batch i.
  std::function<int64_t(int64_t micro)> num_val_batches;
  std::function<std::pair<at::Tensor, at::Tensor>(int64_t index, int64_t micro)> val_batch;
  // For the error when the validation set is too small for one batch: the
  // set ("'NAME' (N tokens)") and what a batch example is (" of block_size T tokens").
  std::string val_name, example_note;
  int64_t vocab_size = 0;         // token data: the model's vocabulary; 0 for images
  int64_t items_per_example = 1;  // what a throughput counts: tokens per sequence, or 1 per image
  std::string unit;               // "tokens" or "samples"
};

// The data of config.data (its kind's row), limited to data.train_limit /
// data.val_limit; the config is validated.
TaskData load_task_data(const TrainConfig& config);
// The model of config.model (its kind's row) for a vocabulary of vocab_size
// (token models). The caller seeds the global generator first.
TaskModel build_task_model(const ModelConfig& model, int64_t vocab_size);

}  // namespace detail
}  // namespace specopt
