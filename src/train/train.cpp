// train() (trainer.h): a whole run in a run directory (run_dir.h), with
// resume, signals, metrics, checkpoints and the summary.
#include "specopt/train/trainer.h"

#include "specopt/train/checkpoint.h"  // write_file_atomic
#include "specopt/train/run_dir.h"
#include "specopt/core/threads.h"
#include "specopt/core/variants.h"

#include "train/progress.h"
#include "train/stop_signals.h"
#include "train/trainer_impl.h"  // kInf, resumable_difference

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace specopt {

namespace fs = std::filesystem;
using detail::Clock;
using detail::kInf;
using detail::Progress;
using detail::resumable_difference;
using detail::seconds_since;

namespace {

// ---- SIGINT / SIGTERM (TrainOptions::handle_signals) --------------------------

std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

// Async-signal-safe: an atomic store, write(2), signal(2), raise(3).
extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    // The second signal: the default action (exit by that signal) at once.
    ::signal(sig, SIG_DFL);
    ::raise(sig);
    return;
  }
  static const char msg[] =
      "\nspecopt: signal received: finishing this step, then writing a checkpoint and the metrics "
      "(send it again to exit at once)\n";
  const ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof(msg) - 1);
  (void)ignored;
}

// Installs on_stop_signal for SIGINT and SIGTERM while it lives.
class StopSignals {
 public:
  // The flag is cleared before the handler is installed.
  explicit StopSignals(bool on) : handler_((g_stop_signal = 0, on), on_stop_signal) {}
  int received() const { return handler_.on() ? g_stop_signal.load() : 0; }

 private:
  detail::ScopedStopHandler handler_;
};

}  // namespace

namespace {

// The resumed run must be the same run: the config it was started with (its
// config.toml) may differ only in keys that do not change the computation.
void check_resumable(const TrainConfig& config, const RunPaths& paths) {
  std::ifstream in(paths.config);
  std::stringstream text;
  text << in.rdbuf();
  const TrainConfig before = config_from_toml_string(text.str(), paths.config);
  std::string diff;
  for (const auto& key : config_differences(before, config))
    if (!resumable_difference(key)) diff += (diff.empty() ? "" : ", ") + key;
  TORCH_CHECK(diff.empty(), "cannot resume '", paths.dir, "' with another config; these keys differ from ",
              paths.config, ": ", diff);
}

// One writer per run directory, for the whole run (before anything in it is
// read or replaced).
std::unique_ptr<RunDirLock> lock_run_dir(const std::string& run_dir) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  TORCH_CHECK(!ec, "cannot create run directory '", run_dir, "': ", ec.message());
  return std::make_unique<RunDirLock>(run_dir);
}

// The description of a run that summary.json holds beside its RunSummary.
nlohmann::json summary_context(Trainer& trainer) {
  const TrainConfig& c = trainer.config();
  const RunTotals& totals = trainer.totals();
  int64_t parameters = 0;
  for (const auto& p : trainer.model().parameters()) parameters += p.numel();
  const CpuThreads t = cpu_threads();
  return {
      {"steps", c.train.steps},
      {"train_s", totals.train_s},
      {"optimizer_s", totals.optimizer_s},
      {"transform_s", totals.transform_s},
      {"variant", parse_variant(c.optim.variant).name},
      {"lr_matrix", c.optim.lr_matrix},
      {"lr_vector", c.optim.lr_vector},
      {"seed", c.run.seed},
      {"model", c.model.kind},
      {"data", c.data.kind},
      {"parameters", parameters},
      {"device", c.run.device},
      {"cpu_threads", nlohmann::json{{"intra_op", t.intra_op}, {"blas", t.blas}, {"blas_kind", t.blas_kind}}},
  };
}

// The steps of one run after its Trainer exists (train() below): the loop,
// metrics rows, validation, checkpoints, stop signals, the result.
class Run {
 public:
  Run(Trainer& trainer, const RunPaths& paths, const TrainOptions& options, ProgressMode mode,
      const StopSignals& stop_signals)
      : trainer_(trainer),
        c_(trainer.config()),
        paths_(paths),
        options_(options),
        main_(options.hooks.is_main_process()),
        stop_signals_(stop_signals),
        progress_(mode, c_.train.steps, c_.train.log_every, trainer.item_unit()),
        wall_before_(trainer.totals().wall_s),
        rate_key_(trainer.item_unit() + "_per_s") {}

  // Resumes from the checkpoint when asked and present; else clears the directory.
  void start() {
    if (options_.resume && fs::exists(paths_.checkpoint)) {
      trainer_.load_checkpoint(paths_.checkpoint);
      if (options_.hooks.after_load) options_.hooks.after_load(trainer_.optimizer());
      if (main_) truncate_metrics(paths_.metrics, trainer_.steps_done());
      progress_.message(
          fmt::format("resuming '{}' at step {}/{}", paths_.dir, trainer_.steps_done(), c_.train.steps));
    } else if (main_) {
      std::error_code ec;
      for (const auto& p : {paths_.metrics, paths_.summary, paths_.checkpoint, paths_.checkpoint + ".tmp"})
        fs::remove(p, ec);
    }
    if (main_) {
      write_file_atomic(paths_.config, config_to_toml(c_));
      metrics_ = std::make_unique<MetricsFile>(paths_.metrics);
    }
    wall_before_ = trainer_.totals().wall_s;
    run_start_ = Clock::now();
  }

  void loop() {
    progress_.start(trainer_.steps_done());
    while (trainer_.steps_done() < c_.train.steps && step()) {
    }
    progress_.finish();
  }

  TrainResult result() const;

 private:
  // One step with its row, validation and checkpoint; false ends the loop.
  bool step() {
    const StepStats s = trainer_.step();
    nlohmann::json row = {{"step", s.step},
                          {"train_loss", json_number(s.loss)},
                          {"lr_matrix", s.lr_matrix},
                          {"lr_vector", s.lr_vector},
                          {"p", s.p},
                          {"grad_norm", json_number(s.grad_norm)},
                          {rate_key_, s.items / std::max(s.step_s, 1e-12)}};
    trainer_.totals().last_train_loss = s.loss;
    bool log_row = s.step % c_.train.log_every == 0 || s.step == c_.train.steps;
    if (s.diverged) {
      diverge(s.diverged_reason);
      log_row = true;
    } else if (s.step % c_.train.eval_every == 0 || s.step == c_.train.steps) {
      row["val_loss"] = json_number(validate(s.step));
      log_row = true;
    }
    if (main_ && log_row) append(row.dump(), s.step);
    trainer_.totals().wall_s = wall_before_ + seconds_since(run_start_);
    if (diverged_) {
      progress_.message(fmt::format("step {}/{}: {} — run diverged", s.step, c_.train.steps, diverged_reason_));
      return false;
    }
    progress_.update(s);
    const bool last = s.step == c_.train.steps;
    const bool stop = stop_requested();  // collective: every rank asks at every step
    if (stop && !last) {
      stop_signal_ = stop_signals_.received() != 0 ? stop_signals_.received() : SIGTERM;
      save();
      progress_.finish();
      progress_.message(fmt::format("{} at step {}/{}: checkpoint written to '{}'; rerun with --resume to continue",
                                    stop_signal_ == SIGINT ? "SIGINT" : stop_signal_ == SIGTERM ? "SIGTERM" : "signal",
                                    s.step, c_.train.steps, paths_.checkpoint));
      return false;
    }
    if (c_.train.checkpoint_every > 0 && (s.step % c_.train.checkpoint_every == 0 || last)) save();
    return true;
  }

  void diverge(std::string reason) {
    diverged_ = true;
    diverged_reason_ = std::move(reason);
  }

  // The validation loss after step `step`, with the divergence rules of trainer.h.
  double validate(int64_t step) {
    RunTotals& totals = trainer_.totals();
    const double val = trainer_.evaluate();
    totals.last_val_loss = val;
    if (!std::isfinite(val)) {
      diverge("non-finite validation loss");
    } else if (val > kDivergenceLossFactor * totals.initial_train_loss) {
      diverge(fmt::format("validation loss {:.4g} > {:g} × the initial loss {:.4g}", val, kDivergenceLossFactor,
                          totals.initial_train_loss));
    } else {
      totals.best_val_loss = std::min(totals.best_val_loss, val);
    }
    progress_.message(fmt::format("step {}/{} | val_loss {:.4f} | best {:.4f}", step, c_.train.steps, val,
                                  totals.best_val_loss));
    return val;
  }

  // A metrics line that cannot be written (disk full, or gone) stops the run,
  // keeping what can be kept.
  void append(const std::string& line, int64_t step) {
    const std::string error = metrics_->append(line);
    if (error.empty()) return;
    progress_.finish();
    std::string saved = "no checkpoint is written (train.checkpoint_every = 0)";
    if (c_.train.checkpoint_every > 0 && !diverged_) {
      try {
        save();
        saved = "a checkpoint of step " + std::to_string(trainer_.steps_done()) + " was written to '" +
                paths_.checkpoint + "'";
      } catch (const c10::Error& e) {
        saved = std::string("the checkpoint could not be written either: ") + e.what_without_backtrace();
      }
    }
    TORCH_CHECK(false, "run '", paths_.dir, "' stopped at step ", step, ": ", error, "; ", saved);
  }

  // A stop signal on any rank stops every rank after the same step.
  bool stop_requested() const {
    double stop = stop_signals_.received();
    if (options_.hooks.world_size > 1 && options_.handle_signals) {
      at::Tensor flag = torch::full({1}, stop, torch::kFloat64);
      options_.hooks.all_reduce_sum(flag);
      stop = flag.item<double>();
    }
    return stop != 0;
  }

  void save() {
    if (options_.hooks.before_save) options_.hooks.before_save(trainer_.optimizer());
    if (main_) trainer_.save_checkpoint(paths_.checkpoint);
    if (options_.hooks.after_save) options_.hooks.after_save(trainer_.optimizer());
  }

  Trainer& trainer_;
  const TrainConfig& c_;
  const RunPaths& paths_;
  const TrainOptions& options_;
  const bool main_;
  const StopSignals& stop_signals_;
  Progress progress_;
  std::unique_ptr<MetricsFile> metrics_;
  Clock::time_point run_start_ = Clock::now();
  double wall_before_;
  const std::string rate_key_;
  bool diverged_ = false;
  std::string diverged_reason_;
  int stop_signal_ = 0;
};

TrainResult Run::result() const {
  const RunTotals& totals = trainer_.totals();
  TrainResult r;
  r.diverged = diverged_;
  r.diverged_reason = diverged_reason_;
  r.stop_signal = stop_signal_;
  r.steps_done = trainer_.steps_done();
  r.final_train_loss = totals.last_train_loss;
  r.best_val_loss = totals.best_val_loss;
  r.throughput_unit = trainer_.item_unit();
  r.wall_s = wall_before_ + seconds_since(run_start_);
  if (stop_signal_ != 0) {
    // No summary.json: the run is not complete, and --resume continues it.
    r.status = "interrupted";
    r.final_val_loss = totals.last_val_loss;
    return r;
  }
  r.status = diverged_ ? "diverged" : "finished";
  r.final_val_loss = diverged_ ? kInf : totals.last_val_loss;
  r.throughput = totals.train_s > 0 ? static_cast<double>(totals.items) / totals.train_s : 0.0;
  r.spectral_share = totals.train_s > 0 ? totals.transform_s / totals.train_s : 0.0;
  return r;
}

}  // namespace

TrainResult train(const TrainConfig& config, const std::string& run_dir, const TrainOptions& options) {
  const bool main_process = options.hooks.is_main_process();
  const RunPaths paths(run_dir);
  const ProgressMode mode = main_process ? options.progress : ProgressMode::kQuiet;
  const StopSignals stop_signals(options.handle_signals);
  const std::unique_ptr<RunDirLock> lock = main_process ? lock_run_dir(run_dir) : nullptr;
  if (options.resume && fs::exists(paths.config)) check_resumable(config, paths);
  if (options.resume && fs::exists(paths.summary)) {
    TrainResult done = read_summary(paths.summary);
    if (mode != ProgressMode::kQuiet)
      std::cerr << "run '" << run_dir << "' is already complete (" << paths.summary << "); not retraining\n";
    return done;
  }

  Trainer trainer(config, options.hooks);
  Run run(trainer, paths, options, mode, stop_signals);
  run.start();
  run.loop();
  const TrainResult r = run.result();
  if (main_process && r.status != "interrupted") write_summary(paths.summary, r, summary_context(trainer));
  return r;
}

}  // namespace specopt
