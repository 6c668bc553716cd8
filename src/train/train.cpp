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

TrainResult train(const TrainConfig& config, const std::string& run_dir, const TrainOptions& options) {
  const bool main_process = options.hooks.is_main_process();
  const RunPaths paths(run_dir);
  const std::string& checkpoint_path = paths.checkpoint;
  const std::string& metrics_path = paths.metrics;
  const std::string& summary_path = paths.summary;
  const std::string& config_path = paths.config;
  const ProgressMode mode = main_process ? options.progress : ProgressMode::kQuiet;
  const StopSignals stop_signals(options.handle_signals);

  // One writer per run directory, for the whole run (before anything in it is
  // read or replaced).
  std::unique_ptr<RunDirLock> lock;
  if (main_process) {
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    TORCH_CHECK(!ec, "cannot create run directory '", run_dir, "': ", ec.message());
    lock = std::make_unique<RunDirLock>(run_dir);
  }

  // A resumed run must be the same run: the config it was started with (its
  // config.toml) may differ only in keys that do not change the computation.
  if (options.resume && fs::exists(config_path)) {
    std::ifstream in(config_path);
    std::stringstream text;
    text << in.rdbuf();
    const TrainConfig before = config_from_toml_string(text.str(), config_path);
    std::string diff;
    for (const auto& key : config_differences(before, config))
      if (!resumable_difference(key)) diff += (diff.empty() ? "" : ", ") + key;
    TORCH_CHECK(diff.empty(), "cannot resume '", run_dir, "' with another config; these keys differ from ",
                config_path, ": ", diff);
  }
  if (options.resume && fs::exists(summary_path)) {
    TrainResult done = read_summary(summary_path);
    if (mode != ProgressMode::kQuiet)
      std::cerr << "run '" << run_dir << "' is already complete (" << summary_path << "); not retraining\n";
    return done;
  }

  std::error_code ec;
  Trainer trainer(config, options.hooks);
  const auto& c = trainer.config();
  Progress progress(mode, c.train.steps, c.train.log_every, trainer.item_unit());

  if (options.resume && fs::exists(checkpoint_path)) {
    trainer.load_checkpoint(checkpoint_path);
    if (options.hooks.after_load) options.hooks.after_load(trainer.optimizer());
    if (main_process) truncate_metrics(metrics_path, trainer.steps_done());
    progress.message(fmt::format("resuming '{}' at step {}/{}", run_dir, trainer.steps_done(), c.train.steps));
  } else if (main_process) {
    for (const auto& p : {metrics_path, summary_path, checkpoint_path, checkpoint_path + ".tmp"})
      fs::remove(p, ec);
  }
  if (main_process) write_file_atomic(config_path, config_to_toml(c));

  std::unique_ptr<MetricsFile> metrics;
  if (main_process) metrics = std::make_unique<MetricsFile>(metrics_path);
  auto& totals = trainer.totals();
  const auto run_start = Clock::now();
  const double wall_before = totals.wall_s;
  const std::string rate_key = trainer.item_unit() + "_per_s";

  bool diverged = false;
  std::string diverged_reason;
  int stop_signal = 0;
  auto save = [&] {
    if (options.hooks.before_save) options.hooks.before_save(trainer.optimizer());
    if (main_process) trainer.save_checkpoint(checkpoint_path);
    if (options.hooks.after_save) options.hooks.after_save(trainer.optimizer());
  };
  progress.start(trainer.steps_done());
  while (trainer.steps_done() < c.train.steps) {
    const StepStats s = trainer.step();
    nlohmann::json row = {{"step", s.step},
                          {"train_loss", json_number(s.loss)},
                          {"lr_matrix", s.lr_matrix},
                          {"lr_vector", s.lr_vector},
                          {"p", s.p},
                          {"grad_norm", json_number(s.grad_norm)},
                          {rate_key, s.items / std::max(s.step_s, 1e-12)}};
    totals.last_train_loss = s.loss;
    bool log_row = s.step % c.train.log_every == 0 || s.step == c.train.steps;
    if (s.diverged) {
      diverged = true;
      diverged_reason = s.diverged_reason;
      log_row = true;
    } else if (s.step % c.train.eval_every == 0 || s.step == c.train.steps) {
      const double val = trainer.evaluate();
      totals.last_val_loss = val;
      if (!std::isfinite(val)) {
        diverged = true;
        diverged_reason = "non-finite validation loss";
      } else if (val > kDivergenceLossFactor * totals.initial_train_loss) {
        diverged = true;
        diverged_reason = fmt::format("validation loss {:.4g} > {:g} × the initial loss {:.4g}", val,
                                      kDivergenceLossFactor, totals.initial_train_loss);
      } else {
        totals.best_val_loss = std::min(totals.best_val_loss, val);
      }
      row["val_loss"] = json_number(val);
      log_row = true;
      progress.message(fmt::format("step {}/{} | val_loss {:.4f} | best {:.4f}", s.step, c.train.steps,
                                   val, totals.best_val_loss));
    }
    if (main_process && log_row) {
      const std::string error = metrics->append(row.dump());
      if (!error.empty()) {
        // Disk full (or gone): stop, keeping what can be kept.
        progress.finish();
        std::string saved = "no checkpoint is written (train.checkpoint_every = 0)";
        if (c.train.checkpoint_every > 0 && !diverged) {
          try {
            save();
            saved = "a checkpoint of step " + std::to_string(trainer.steps_done()) + " was written to '" +
                    checkpoint_path + "'";
          } catch (const c10::Error& e) {
            saved = std::string("the checkpoint could not be written either: ") + e.what_without_backtrace();
          }
        }
        TORCH_CHECK(false, "run '", run_dir, "' stopped at step ", s.step, ": ", error, "; ", saved);
      }
    }
    totals.wall_s = wall_before + seconds_since(run_start);
    if (diverged) {
      progress.message(fmt::format("step {}/{}: {} — run diverged", s.step, c.train.steps, diverged_reason));
      break;
    }
    progress.update(s);
    // A stop signal on any rank stops every rank after the same step.
    double stop = stop_signals.received();
    if (options.hooks.world_size > 1 && options.handle_signals) {
      at::Tensor flag = torch::full({1}, stop, torch::kFloat64);
      options.hooks.all_reduce_sum(flag);
      stop = flag.item<double>();
    }
    const bool last = s.step == c.train.steps;
    if (stop != 0 && !last) {
      stop_signal = stop_signals.received() != 0 ? stop_signals.received() : SIGTERM;
      save();
      progress.finish();
      progress.message(fmt::format("{} at step {}/{}: checkpoint written to '{}'; rerun with --resume to continue",
                                   stop_signal == SIGINT ? "SIGINT" : stop_signal == SIGTERM ? "SIGTERM" : "signal",
                                   s.step, c.train.steps, checkpoint_path));
      break;
    }
    if (c.train.checkpoint_every > 0 && (s.step % c.train.checkpoint_every == 0 || last)) save();
  }
  progress.finish();

  TrainResult r;
  r.diverged = diverged;
  r.diverged_reason = diverged_reason;
  r.stop_signal = stop_signal;
  if (stop_signal != 0) {
    // No summary.json: the run is not complete, and --resume continues it.
    r.status = "interrupted";
    r.steps_done = trainer.steps_done();
    r.final_train_loss = totals.last_train_loss;
    r.final_val_loss = totals.last_val_loss;
    r.best_val_loss = totals.best_val_loss;
    r.throughput_unit = trainer.item_unit();
    r.wall_s = wall_before + seconds_since(run_start);
    return r;
  }
  r.status = diverged ? "diverged" : "finished";
  r.steps_done = trainer.steps_done();
  r.final_train_loss = totals.last_train_loss;
  r.final_val_loss = diverged ? kInf : totals.last_val_loss;
  r.best_val_loss = totals.best_val_loss;
  r.throughput_unit = trainer.item_unit();
  r.throughput = totals.train_s > 0 ? static_cast<double>(totals.items) / totals.train_s : 0.0;
  r.spectral_share = totals.train_s > 0 ? totals.transform_s / totals.train_s : 0.0;
  r.wall_s = wall_before + seconds_since(run_start);

  if (main_process) {
    int64_t parameters = 0;
    for (const auto& p : trainer.model().parameters()) parameters += p.numel();
    const nlohmann::json context = {
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
        {"cpu_threads", [] {
           const CpuThreads t = cpu_threads();
           return nlohmann::json{{"intra_op", t.intra_op}, {"blas", t.blas}, {"blas_kind", t.blas_kind}};
         }()},
    };
    write_summary(summary_path, r, context);
  }
  return r;
}

}  // namespace specopt
