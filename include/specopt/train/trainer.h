// The trainer: one TrainConfig → a model, its data and a CompositeOptimizer,
// trained with warm-up + decay schedules, gradient accumulation, global
// gradient-norm clipping, periodic validation, divergence detection and
// versioned, resumable checkpoints. A run writes a run directory (run_dir.h,
// docs/training.md). The lr and p schedules are schedule.h's.
//
// Single process by default; TrainHooks lets a distributed driver average
// gradients, shard the batch, run the optimizer step its own way and keep
// files and logs to rank 0.
#pragma once

#include "specopt/core/make_optimizer.h"
#include "specopt/train/config.h"
#include "specopt/train/run_dir.h"
#include "specopt/train/schedule.h"

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace specopt {

// ---- hooks for multi-process training ---------------------------------------

// The defaults describe one process. A distributed driver sets rank and
// world_size and the callbacks; the trainer then
//  * draws the same global batch on every rank (same seeds) and keeps rows
//    [rank·B/W, (rank+1)·B/W) of it (batch_size must be divisible by
//    grad_accum·world_size), so W processes see exactly the single-process batch;
//  * calls after_backward once per step after all micro-batch backward passes,
//    before clipping (average the gradients there: each rank's loss is the
//    mean over its own rows, divided by grad_accum);
//  * runs the optimizer step through step_optimizer;
//  * sums the step loss and the validation sums with all_reduce_sum, so every
//    rank takes the same divergence and logging decisions;
//  * writes files (run directory, checkpoints) and logs only when is_main_process().
struct TrainHooks {
  int64_t rank = 0;
  int64_t world_size = 1;
  // Gradient synchronisation over the model parameters (those with a gradient).
  std::function<void(const std::vector<at::Tensor>& params)> after_backward;
  // Replaces optimizer.step() (e.g. a sharded step followed by a broadcast).
  std::function<void(CompositeOptimizer& optimizer)> step_optimizer;
  // In-place sum of a small float64 CPU tensor over all ranks.
  std::function<void(at::Tensor& values)> all_reduce_sum;
  // Checkpoints when optimizer state is spread over the ranks (train() calls
  // these on every rank): before_save before rank 0 writes a checkpoint
  // (collective: e.g. gather the state to rank 0), after_save after it, and
  // after_load after a checkpoint was loaded for --resume (e.g. drop the
  // state of parameters that other ranks own).
  std::function<void(CompositeOptimizer& optimizer)> before_save, after_save, after_load;

  bool is_main_process() const { return rank == 0; }
};

// ---- divergence ----------------------------------------------------------------

// The one definition of divergence, applied by Trainer::step(), train() and
// (through summary.json) the study: a run diverges at the first step whose
//  * training loss, global gradient norm, optimizer update (the spectral
//    transform refusing NaN/Inf input, or the optimizer refusing a non-finite
//    gradient) or any weight or optimizer state tensor after the step is
//    non-finite, or
//  * training loss, or a validation loss, exceeds kDivergenceLossFactor × the
//    run's first training loss (a finite blow-up: the loss of a model that
//    starts at ln(10) ≈ 2.3 does not come back from 6e8).
// A diverged run ends with status "diverged", no checkpoint of the diverged
// state is written (the last checkpoint on disk is the last good state), and
// `specopt train` exits 0: divergence is a result, not a failure.
constexpr double kDivergenceLossFactor = 10.0;

// Exit status of `specopt train` and `specopt study` stopped by SIGINT or
// SIGTERM after writing a checkpoint (EX_TEMPFAIL of sysexits.h: "try again";
// rerun with --resume, or rerun the study, to continue).
constexpr int kExitInterrupted = 75;

// ---- one training step --------------------------------------------------------

struct StepStats {
  int64_t step = 0;         // optimizer steps done after this one (1-based)
  double loss = 0.0;        // mean training loss over the step's batch (all micro-batches, all ranks)
  double grad_norm = 0.0;   // global L2 gradient norm before clipping
  double lr_matrix = 0.0, lr_vector = 0.0, p = 1.0;
  int64_t items = 0;        // tokens (gpt) or samples (images) of the global batch (all ranks)
  double step_s = 0.0;      // wall time of the whole step
  double optimizer_s = 0.0;  // wall time of the optimizer step alone
  double transform_s = 0.0;  // of which inside the spectral transform Ψ_p (this rank's share)
  // See "divergence" above. For a non-finite loss or gradient the parameters
  // were not updated; after a non-finite update or weight they may be
  // partially updated and steps_done() does not count the step (the state is
  // not to be checkpointed).
  bool diverged = false;
  std::string diverged_reason;  // e.g. "non-finite loss", "training loss 6.1e+08 > 10 × the initial loss 2.3"
};

// Clips the gradients of `params` in place to global L2 norm `max_norm`
// (torch.nn.utils.clip_grad_norm_: g ← g·min(1, max_norm/(‖g‖ + 1e-6))) and
// returns the norm before clipping. max_norm = 0 only measures. A non-finite
// norm leaves the gradients unchanged.
double clip_gradients(const std::vector<at::Tensor>& params, double max_norm);

// Running totals of a run (checkpointed, so a resumed run's summary covers
// the whole run).
struct RunTotals {
  double best_val_loss = 0.0;  // +inf until the first validation
  double last_val_loss = 0.0;  // +inf until the first validation
  double last_train_loss = 0.0;  // loss of the latest step; +inf before the first
  double initial_train_loss = 0.0;  // loss of the run's first step (divergence threshold); +inf before it
  int64_t items = 0;           // tokens or samples of all steps (global batches)
  double train_s = 0.0;        // wall time inside step() (no validation, no I/O)
  double optimizer_s = 0.0;    // wall time inside the optimizer step
  double transform_s = 0.0;    // wall time inside the spectral transform Ψ_p
  double wall_s = 0.0;         // wall time of the run so far (train() maintains it)
};

// Builds everything from the config (seeded: torch::manual_seed(run.seed)
// before the model is built; the data samplers have their own seeds), and
// steps on request. train() below is the usual entry point; tests and drivers
// can step a Trainer by hand.
class Trainer {
 public:
  explicit Trainer(const TrainConfig& config, TrainHooks hooks = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // One optimizer step: grad_accum forward/backward passes, after_backward,
  // clipping, optimizer step with the scheduled lr and p. A non-finite loss
  // or gradient returns stats.diverged = true without updating anything.
  StepStats step();
  // Mean validation loss over the fixed validation batches (model in eval
  // mode meanwhile; no gradients; no random numbers drawn).
  double evaluate();
  // Classification accuracy (fraction of validation examples whose argmax logit is the
  // label) of the last evaluate() on image data; NaN for token data and before it.
  double val_accuracy() const;

  int64_t steps_done() const;
  const TrainConfig& config() const;
  torch::nn::Module& model();
  CompositeOptimizer& optimizer();
  RunTotals& totals();
  // "tokens" (gpt) or "samples" (images).
  const std::string& item_unit() const;

  // See checkpoint.h for the file format. load_checkpoint checks the format
  // version and that the checkpoint's config equals this trainer's except for
  // the keys that do not change the computation (run.threads, run.run_dir,
  // train.log_every, train.eval_every, train.checkpoint_every).
  // save_checkpoint refuses (c10::Error naming the tensor, file untouched)
  // to write non-finite weights or optimizer state. load_checkpoint errors
  // always name the file.
  void save_checkpoint(const std::string& path) const;
  void load_checkpoint(const std::string& path);
  // The name of the first weight or optimizer state tensor holding NaN/Inf,
  // or "" when all are finite (one device sync).
  std::string first_non_finite_state() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- a whole run ------------------------------------------------------------------

enum class ProgressMode {
  kAuto,   // a live bar when stderr is a terminal, log lines otherwise
  kBar,    // always the live bar
  kLines,  // always log lines (every train.log_every steps and at validations)
  kQuiet,  // nothing
};

struct TrainOptions {
  bool resume = false;  // continue from RUN_DIR/checkpoint.pt when present
  // Catch SIGINT/SIGTERM for the run (restoring the previous handlers after):
  // the first signal finishes the current step, writes a checkpoint and the
  // metrics, and train() returns status "interrupted" (no summary.json, so
  // --resume continues); a second signal exits at once. `specopt train` sets it.
  bool handle_signals = false;
  ProgressMode progress = ProgressMode::kAuto;
  TrainHooks hooks;
};

// What train() returns: the run summary (run_dir.h).
using TrainResult = RunSummary;

// Trains per `config`, writing the run directory `run_dir` (created). Without
// options.resume an existing run there is replaced. With options.resume, a
// run that has a summary.json is not retrained (its summary is returned); one
// with a checkpoint continues from it (metrics.jsonl rows after the
// checkpoint's step are dropped first, so the file reads as if the run was
// never interrupted); otherwise a fresh run starts.
// Divergence is a result (status "diverged"), not an exception.
// The main process holds an exclusive flock(2) on RUN_DIR/lock (which holds
// its PID) for the whole call; a second train() on the same directory fails
// at once with an error naming that PID. Every write is checked: a metrics
// line that cannot be written (disk full) stops the run with an error, after
// an attempt to write a checkpoint; a checkpoint that cannot be written
// leaves no PATH.tmp behind.
TrainResult train(const TrainConfig& config, const std::string& run_dir,
                  const TrainOptions& options = {});

}  // namespace specopt
