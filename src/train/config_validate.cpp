// TrainConfig::validate (config.h): every key's domain, table by table; the
// model and data kinds come from the task factory (task.h).
#include "specopt/train/config.h"

#include "specopt/core/spectral.h"
#include "specopt/core/update_rules.h"
#include "specopt/core/variants.h"
#include "specopt/train/schedule.h"

#include "train/task.h"  // the model and data kinds

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace specopt {

namespace {

// The sane ranges of sizes and counts (validate(); docs/training.md lists them).
constexpr int64_t kMaxThreads = 4096;
constexpr int64_t kMaxLayers = 256;         // model.n_layer, entries of model.hidden
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxWidth = 65536;        // model.n_embd, model.hidden[i], model.fc_hidden
constexpr int64_t kMaxChannels = 4096;      // model.channels[i]
constexpr int64_t kMaxBlockSize = 1 << 20;  // tokens per sequence
constexpr int64_t kMaxVocab = 1 << 20;      // data.vocab_size (bin tokens are uint16: 65536)
constexpr int64_t kMaxRowBlocks = 1024;
constexpr int64_t kMaxNsSteps = 1000;       // Newton–Schulz / Newton iterations per transform
constexpr int64_t kMaxSteps = 10000000000;  // 1e10: steps and step intervals
constexpr int64_t kMaxBatch = 1 << 24;      // examples per step
constexpr double kMaxFloat32 = 3.4028234663852886e38;    // FLT_MAX
constexpr double kMinNormalFloat32 = 1.1754943508222875e-38;  // FLT_MIN

void one_of(const std::string& key, const std::string& value, const std::vector<std::string>& allowed) {
  std::string list;
  for (const auto& a : allowed) {
    if (value == a) return;
    list += (list.empty() ? "" : ", ") + a;
  }
  TORCH_CHECK(false, "config key '", key, "': unknown value '", value, "' (valid: ", list, ")");
}
template <class T>
void non_negative(const std::string& key, T v) {
  TORCH_CHECK(v >= 0, "config key '", key, "' must be >= 0, got ", v);
}
// Sizes and counts: checked against a sane range before anything is
// allocated or looped over (the ranges are listed in docs/training.md).
void in_range(const std::string& key, int64_t v, int64_t lo, int64_t hi) {
  TORCH_CHECK(v >= lo && v <= hi, "config key '", key, "' must lie in [", lo, ", ", hi, "], got ", v);
}
// Real values must be finite in float32, the compute dtype of the models
// (a larger value cannot even be handed to the optimizer's float math).
void float_range(const std::string& key, double v, double lo) {
  TORCH_CHECK(std::isfinite(v) && v >= lo && v <= kMaxFloat32, "config key '", key, "' must lie in [",
              lo, ", ", kMaxFloat32, "] (finite in float32), got ", v);
}
// Re-throw a domain parser's error with the key in front.
template <class Parse>
void with_key(const std::string& key, Parse&& parse) {
  try {
    parse();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config key '", key, "': ", e.what_without_backtrace());
  }
}

void validate_run(const RunConfig& run) {
  TORCH_CHECK(run.device == "cpu" || run.device == "cuda" || run.device.rfind("cuda:", 0) == 0,
              "config key 'run.device': unknown device '", run.device,
              "' (valid: cpu, cuda, cuda:N)");
  in_range("run.threads", run.threads, 0, kMaxThreads);
}

void validate_model(const ModelConfig& model) {
  one_of("model.kind", model.kind, detail::model_kinds());
  in_range("model.n_layer", model.n_layer, 1, kMaxLayers);
  in_range("model.n_head", model.n_head, 1, kMaxHeads);
  in_range("model.n_embd", model.n_embd, 1, kMaxWidth);
  in_range("model.block_size", model.block_size, 1, kMaxBlockSize);
  TORCH_CHECK(model.n_embd % model.n_head == 0, "config key 'model.n_embd' (", model.n_embd,
              ") must be divisible by model.n_head (", model.n_head, ")");
  TORCH_CHECK(model.dropout >= 0 && model.dropout < 1, "config key 'model.dropout' must lie in [0, 1), got ",
              model.dropout);
  TORCH_CHECK(model.hidden.size() <= static_cast<size_t>(kMaxLayers), "config key 'model.hidden' must list at most ",
              kMaxLayers, " widths, got ", model.hidden.size());
  for (auto h : model.hidden) in_range("model.hidden", h, 1, kMaxWidth);
  for (auto c : model.channels) in_range("model.channels", c, 1, kMaxChannels);
  TORCH_CHECK(model.channels.size() == 2, "config key 'model.channels' must list 2 widths (conv1, conv2), got ",
              model.channels.size());
  in_range("model.fc_hidden", model.fc_hidden, 1, kMaxWidth);
}

void validate_data(const DataConfig& data) {
  one_of("data.kind", data.kind, detail::data_kinds());
  TORCH_CHECK((data.kind != "text" && data.kind != "bin") || !data.path.empty(),
              "config key 'data.path' must name a ", data.kind == "text" ? "text file" : "directory",
              " when data.kind = \"", data.kind, "\"");
  TORCH_CHECK(data.val_fraction > 0 && data.val_fraction < 1,
              "config key 'data.val_fraction' must lie in (0, 1), got ", data.val_fraction);
  in_range("data.vocab_size", data.vocab_size, 0, kMaxVocab);
  non_negative("data.train_limit", data.train_limit);
  non_negative("data.val_limit", data.val_limit);
}

// The model must take what the data provides (task.h).
void validate_task(const ModelConfig& model, const DataConfig& data) {
  TORCH_CHECK(detail::model_inputs(model.kind) == detail::data_inputs(data.kind), "config keys 'model.kind' = \"",
              model.kind, "\" and 'data.kind' = \"", data.kind, "\" do not fit: ", detail::describe_task_fits());
}

void validate_optim(const OptimConfig& optim) {
  with_key("optim.variant", [&] { parse_variant(optim.variant); });
  with_key("optim.p_schedule", [&] { PSchedule::parse(optim.p_schedule); });
  float_range("optim.lr_matrix", optim.lr_matrix, 0.0);
  float_range("optim.lr_vector", optim.lr_vector, 0.0);
  float_range("optim.weight_decay_matrix", optim.weight_decay_matrix, 0.0);
  float_range("optim.weight_decay_vector", optim.weight_decay_vector, 0.0);
  TORCH_CHECK(optim.beta1 >= 0 && optim.beta1 < 1, "config key 'optim.beta1' must lie in [0, 1), got ",
              optim.beta1);
  TORCH_CHECK(optim.beta2 >= 0 && optim.beta2 < 1, "config key 'optim.beta2' must lie in [0, 1), got ",
              optim.beta2);
  // eps below the smallest normal float32 rounds to 0 (or a denormal, flushed
  // to 0 on many CPUs/GPUs): m/(√v + 0) is 0/0 = NaN where v = 0.
  TORCH_CHECK(optim.eps >= kMinNormalFloat32 && optim.eps <= 1.0, "config key 'optim.eps' must lie in [",
              kMinNormalFloat32, ", 1] (non-zero in float32, the compute dtype), got ", optim.eps);
  TORCH_CHECK(optim.momentum >= 0 && optim.momentum < 1,
              "config key 'optim.momentum' must lie in [0, 1), got ", optim.momentum);
  in_range("optim.split_rows_blocks", optim.split_rows_blocks, 1, kMaxRowBlocks);
  TORCH_CHECK(optim.spectral.tol() > 0 && optim.spectral.tol() <= 1,
              "config key 'optim.spectral_tol' must lie in (0, 1], got ", optim.spectral.tol());
  TORCH_CHECK(optim.spectral.newton_lower() > 0 && optim.spectral.newton_lower() <= 1,
              "config key 'optim.newton_lower' must lie in (0, 1], got ", optim.spectral.newton_lower());
  in_range("optim.ns_steps", optim.spectral.ns_steps(), 1, kMaxNsSteps);
}

// [train], and train.min_lr against the [optim] lrs it decays to.
void validate_train(const TrainLoopConfig& train, const OptimConfig& optim) {
  in_range("train.steps", train.steps, 1, kMaxSteps);
  in_range("train.batch_size", train.batch_size, 1, kMaxBatch);
  in_range("train.grad_accum", train.grad_accum, 1, kMaxBatch);
  TORCH_CHECK(train.batch_size % train.grad_accum == 0, "config key 'train.batch_size' (",
              train.batch_size, ") must be divisible by train.grad_accum (", train.grad_accum, ")");
  in_range("train.warmup_steps", train.warmup_steps, 0, kMaxSteps);
  one_of("train.lr_schedule", train.lr_schedule, {"cosine", "linear", "constant"});
  TORCH_CHECK(train.min_lr_ratio >= 0 && train.min_lr_ratio <= 1,
              "config key 'train.min_lr_ratio' must lie in [0, 1], got ", train.min_lr_ratio);
  float_range("train.min_lr", train.min_lr, 0.0);
  TORCH_CHECK(train.min_lr <= std::min(optim.lr_matrix, optim.lr_vector),
              "config key 'train.min_lr' (", train.min_lr, ") must not exceed optim.lr_matrix (",
              optim.lr_matrix, ") or optim.lr_vector (", optim.lr_vector, ")");
  float_range("train.grad_clip", train.grad_clip, 0.0);
  in_range("train.eval_every", train.eval_every, 1, kMaxSteps);
  in_range("train.eval_batches", train.eval_batches, 0, kMaxSteps);
  in_range("train.log_every", train.log_every, 1, kMaxSteps);
  in_range("train.checkpoint_every", train.checkpoint_every, 0, kMaxSteps);
}

}  // namespace

// Table by table, in the order of config.h, so the first bad key is reported.
void TrainConfig::validate() const {
  validate_run(run);
  validate_model(model);
  validate_data(data);
  validate_task(model, data);
  validate_optim(optim);
  validate_train(train, optim);
}

}  // namespace specopt
