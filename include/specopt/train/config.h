// The training configuration: TOML files → one typed struct, with
// `--set table.key=value` overrides.
//
// Every key has a typed default (the member initialisers below), so a config
// file only names what differs. Keys are written `table.key` in overrides,
// matching the TOML layout
//
//   [train]
//   steps = 200
//
// An unknown table or key, a value of the wrong type, or a value outside its
// domain (an unknown variant, a negative step count, ...) is a c10::Error
// whose message names the key. The resolved config (defaults + file +
// overrides) is written to RUN_DIR/config.toml and reads back to an equal
// TrainConfig (config_to_toml / config_from_toml_string round trip).
//
// The key table with defaults and meaning is in docs/training.md.
#pragma once

#include "specopt/core/optimizer_spec.h"

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

struct RunConfig {
  int64_t seed = 0;                   // model init, data order, dropout
  std::string device = "cpu";         // "cpu", "cuda", "cuda:N" (error if CUDA is absent)
  int64_t threads = 0;                // set_cpu_threads (threads.h); 0 = OMP_NUM_THREADS or all cores
  std::string run_dir = "runs/train";  // used when the CLI gets no --run-dir
};

// The gpt's shape, one definition for its [model] keys (ModelConfig) and for
// the model itself (GPTConfig in models.h adds the vocabulary, which comes
// from the data).
struct GPTShape {
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_embd = 128;      // must be divisible by n_head
  int64_t block_size = 128;  // maximum sequence length (rows of wpe)
  bool qk_norm = false;
  double dropout = 0.0;      // applied (in training mode) after the embedding,
                             // to the attention weights and to both residual branches
};

// The [model] table: the gpt's GPTShape, then the image classifiers' widths.
struct ModelConfig : GPTShape {
  std::string kind = "gpt";  // "gpt" | "mlp" | "cnn" (the model kinds of src/train/task.cpp)
  // mlp: hidden layer widths
  std::vector<int64_t> hidden = {256, 256};
  // cnn: the two convolution widths and the fully connected hidden width
  std::vector<int64_t> channels = {32, 64};
  int64_t fc_hidden = 128;
};

struct DataConfig {
  std::string kind = "kjv";  // "kjv" | "text" | "bin" | "fashion_mnist"
  // text: a UTF-8/byte text file; bin: a directory with nanoGPT train.bin and
  // val.bin (uint16 tokens); fashion_mnist: the IDX directory ("" = the system copy).
  std::string path;
  std::string cache_dir;                 // kjv: where the corpus text is cached ("" = default_cache_dir())
  int64_t vocab_size = 0;                // gpt vocabulary; 0 = from the data (256 for bytes, max token + 1 for bin)
  double val_fraction = 0.1;             // text: the tail fraction held out for validation
  int64_t train_limit = 0;               // use only the first N training examples/tokens (0 = all)
  int64_t val_limit = 0;                 // use only the first N validation examples/tokens (0 = all)
};

// The [optim] table: make_optimizer's OptimizerSpec (the trainer passes it as
// is) with the config's defaults, plus the config-only p_schedule. Its TOML
// keys (config.cpp's visit_fields) are the spec's field names except
// optim.split_rows (split_rows_patterns) and optim.spectral_tol,
// optim.newton_lower, optim.ns_steps (spectral.tol, .newton_lower, .ns_steps);
// exclude_from_spectral, on_nonfinite and the other spectral settings keep the
// spec's defaults.
struct OptimConfig : OptimizerSpec {
  // The config's defaults where they differ from OptimizerSpec's: variant
  // "Adam" and split_rows ["c_attn"] (the GPT's packed QKV).
  OptimConfig();
  // p as a function of the step (matrix group): "" = the variant's constant p;
  // "constant:P", "linear:A->B" or "cosine:A->B" (from A at step 0 to B at the last step).
  std::string p_schedule;
};

struct TrainLoopConfig {
  int64_t steps = 1000;        // optimizer steps
  int64_t batch_size = 32;     // examples (sequences / images) per optimizer step, all micro-batches together
  int64_t grad_accum = 1;      // micro-batches per step (batch_size must be divisible by it)
  int64_t warmup_steps = 100;  // linear warm-up length
  std::string lr_schedule = "cosine";  // after warm-up: "cosine" | "linear" | "constant"
  double min_lr_ratio = 0.1;   // decay to lr·min_lr_ratio at the last step
  double min_lr = 0.0;         // > 0: decay every group to this absolute lr instead (the study: 3e-6 / 1e-6)
  double grad_clip = 1.0;      // global L2 norm bound; 0 = off
  int64_t eval_every = 100;    // steps between validations (and always at the last step)
  int64_t eval_batches = 20;   // validation batches of batch_size; 0 = whole validation set
  int64_t log_every = 10;      // steps between metric lines (and log lines off a terminal)
  int64_t checkpoint_every = 0;  // steps between checkpoints (and at the end); 0 = never
};

struct TrainConfig {
  RunConfig run;
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  TrainLoopConfig train;

  // Throws c10::Error naming the key of the first value outside its domain.
  void validate() const;
};

// Apply the TOML document `text` (source name `origin`, used in messages) on
// top of `config`. Unknown keys and wrongly typed values throw.
void apply_toml(TrainConfig& config, const std::string& text, const std::string& origin);

// Apply one override "table.key=value". The value is read as a TOML value
// ("3e-3", "true", "[64, 64]", "\"x\""); for string keys an unquoted word is
// taken as is, for string lists "a,b" means ["a", "b"].
void apply_override(TrainConfig& config, const std::string& assignment);

// Defaults ← file (if `path` is not empty) ← overrides, then validate().
TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Parse a complete TOML document on top of the defaults and validate it.
TrainConfig config_from_toml_string(const std::string& text, const std::string& origin = "<string>");

// The resolved config as a TOML document (every key, grouped by table); floats
// in the shortest form that reads back as the same double (toml_float).
std::string config_to_toml(const TrainConfig& config);

// `value` as a TOML float in the shortest text that parses back to exactly this
// double ("0.003", "1e-05", "2.0", "inf"), where toml++ 3.3 prints 17 significant
// digits ("0.0030000000000000001").
std::string toml_float(double value);

// All keys ("table.key") in declaration order.
std::vector<std::string> config_keys();

// Keys whose values differ between a and b (for resume checks).
std::vector<std::string> config_differences(const TrainConfig& a, const TrainConfig& b);

}  // namespace specopt
