// The study runner: plan, resumable parallel launch of `specopt train` subprocesses, and
// reading their run directories. The config is study_config.cpp, the analysis analysis.cpp and
// verdict.cpp, the report report.cpp.
#include "specopt/study/study.h"
#include "specopt/train/child_process.h"
#include "specopt/train/config.h"  // toml_float

#include "specopt/train/run_dir.h"
#include "specopt/train/trainer.h"  // kExitInterrupted

#include "train/stop_signals.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

extern char** environ;

namespace specopt {

namespace fs = std::filesystem;

// ----------------------------------------------------------------- runs ---

std::string lr_label(double lr) {
  std::string s = fmt::format("{}", lr);
  // fmt writes 1e-05; drop the exponent's sign padding and a leading '+'.
  const auto e = s.find('e');
  if (e != std::string::npos) {
    std::string mant = s.substr(0, e), exp = s.substr(e + 1);
    bool neg = false;
    if (!exp.empty() && (exp[0] == '-' || exp[0] == '+')) {
      neg = exp[0] == '-';
      exp = exp.substr(1);
    }
    while (exp.size() > 1 && exp[0] == '0') exp = exp.substr(1);
    s = mant + "e" + (neg ? "-" : "") + exp;
  }
  return s;
}

std::string run_name(const std::string& variant, double lr, int64_t seed) {
  // ':' and '=' of "adam:p=0.3" are awkward in paths.
  std::string v = variant;
  for (char& c : v)
    if (c == ':' || c == '=' || c == '/') c = '-';
  return fmt::format("{}_lr{}_s{}", v, lr_label(lr), seed);
}

std::vector<StudyRun> plan_study(const StudyConfig& config) {
  std::vector<StudyRun> runs;
  for (const auto& v : config.variants) {
    for (double lr : config.lrs.at(v)) {
      for (int64_t seed : config.seeds) {
        StudyRun r;
        r.variant = v;
        r.lr = lr;
        r.seed = seed;
        r.name = run_name(v, lr, seed);
        r.dir = (fs::path(config.study_dir) / "runs" / r.name).string();
        runs.push_back(std::move(r));
      }
    }
  }
  return runs;
}

RunState run_state(const std::string& run_dir) {
  const RunPaths paths(run_dir);
  if (fs::exists(paths.summary)) return RunState::kFinished;
  if (fs::exists(paths.checkpoint)) return RunState::kPartial;
  return RunState::kPending;
}

std::vector<std::string> train_arguments(const StudyConfig& config, const StudyRun& run,
                                         bool resume, int64_t threads) {
  const std::string base = (fs::path(config.study_dir) / "train_base.toml").string();
  std::vector<std::string> args = {
      "train", base,
      "--set", "optim.variant=\"" + run.variant + "\"",
      // The shortest round-trip form: the trainer sees the grid value bit for bit.
      "--set", "optim.lr_matrix=" + toml_float(run.lr),
      "--set", fmt::format("run.seed={}", run.seed),
      "--threads", std::to_string(threads),
      "--run-dir", run.dir, "--quiet"};
  const auto extra = config.overrides.find(run.variant);
  if (extra != config.overrides.end()) {
    // Before --run-dir: the grid point's own keys above stay as given.
    std::vector<std::string> sets;
    for (const auto& s : extra->second) {
      sets.push_back("--set");
      sets.push_back(s);
    }
    args.insert(args.begin() + 2, sets.begin(), sets.end());
  }
  if (resume) args.push_back("--resume");
  return args;
}

namespace {

// ---- signals: forwarded to the running children ------------------------------------

// The PIDs of running children, in fixed slots so the signal handler can read
// them without a lock (kill(2) is async-signal-safe).
constexpr size_t kChildSlots = 1024;
std::atomic<pid_t> g_children[kChildSlots];
std::atomic<int> g_study_stop{0};
std::atomic<bool> g_forwarding{false};  // run_study handles signals now

void forward_to_children(int sig) {
  for (auto& slot : g_children) {
    const pid_t pid = slot.load();
    if (pid > 0) ::kill(pid, sig);
  }
}

extern "C" void on_study_signal(int sig) {
  const bool second = g_study_stop.exchange(sig) != 0;
  forward_to_children(sig);
  if (second) {
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}

size_t register_child(pid_t pid) {
  for (size_t i = 0; i < kChildSlots; ++i) {
    pid_t empty = 0;
    if (g_children[i].compare_exchange_strong(empty, pid)) return i;
  }
  return kChildSlots;  // more children than slots: not forwarded (workers are far fewer)
}

}  // namespace

Launcher subprocess_launcher(std::string executable) {
  return [executable](const LaunchRequest& req) -> int {
    // The child's thread pools (OpenMP, OpenBLAS) get the run's share of the
    // threads; its own process group: a Ctrl-C at the terminal reaches the study
    // only, which forwards it once (a run that got it twice would exit at once,
    // without its checkpoint).
    ChildOptions child;
    child.executable = executable;
    child.args = req.args;
    child.threads = req.threads;
    child.own_process_group = true;
    child.log_path = req.log_path;
    const std::string what = "run " + req.run.name;
    const pid_t pid = start_child(child, what);
    const size_t slot = register_child(pid);
    // A stop signal that came between the worker's check and the registration.
    if (g_forwarding.load() && g_study_stop.load() != 0) ::kill(pid, g_study_stop.load());
    struct Unregister {
      size_t slot;
      ~Unregister() {
        if (slot < kChildSlots) g_children[slot] = 0;
      }
    } unregister{slot};
    return wait_child(pid, what);
  };
}

namespace {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

}  // namespace

StudyOutcome run_study(const StudyConfig& config, const StudyRunOptions& options) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  StudyOutcome outcome;

  fs::create_directories(fs::path(config.study_dir) / "runs");
  {
    const fs::path base = fs::path(config.study_dir) / "train_base.toml";
    std::ofstream f(base);
    TORCH_CHECK(f.good(), "cannot write ", base.string());
    f << "# Base train config of study '" << config.name << "' (from " << config.config_path
      << ").\n# Each run adds --set optim.variant, optim.lr_matrix, run.seed, run.threads.\n"
      << config.train_config_toml;
  }

  const auto plan = plan_study(config);
  outcome.total = static_cast<int64_t>(plan.size());
  struct PendingRun {
    StudyRun run;
    bool resume;
  };
  std::vector<PendingRun> pending;
  for (const auto& r : plan) {
    const RunState s = run_state(r.dir);
    if (s == RunState::kFinished) {
      ++outcome.skipped;
    } else {
      pending.push_back({r, s == RunState::kPartial});
    }
  }

  const int64_t workers = std::max<int64_t>(
      1, std::min<int64_t>(options.workers > 0 ? options.workers : config.workers,
                           std::max<size_t>(pending.size(), 1)));
  const int64_t total_threads =
      config.threads > 0 ? config.threads
                         : std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  const int64_t threads = std::max<int64_t>(1, total_threads / workers);

  Launcher launcher = options.launcher;
  if (!launcher)
    launcher = subprocess_launcher(options.executable.empty() ? self_executable() : options.executable);

  std::mutex mu;
  if (options.progress) {
    int64_t resumes = 0;
    for (const auto& t : pending) resumes += t.resume;
    *options.progress << fmt::format(
        "study {}: {} runs ({} finished, {} to resume, {} to start); {} worker(s) x {} thread(s); "
        "dir {}\n",
        config.name, plan.size(), outcome.skipped, resumes, pending.size() - resumes, workers, threads,
        config.study_dir)
                      << std::flush;
  }

  // SIGINT/SIGTERM: forwarded to the children, no new launches (see study.h).
  struct StudySignals {
    detail::ScopedStopHandler handler;
    // The flags are set before the handler is installed.
    explicit StudySignals(bool on)
        : handler((g_study_stop = 0, g_forwarding = on, on), on_study_signal) {}
    ~StudySignals() { g_forwarding = false; }
    int received() const { return handler.on() ? g_study_stop.load() : 0; }
  } signals(options.handle_signals);

  std::atomic<size_t> next{0};
  int64_t done = 0;
  auto work = [&]() {
    for (size_t i = next++; i < pending.size() && signals.received() == 0; i = next++) {
      const PendingRun& t = pending[i];
      // Without --resume the trainer replaces whatever an interrupted run left there.
      fs::create_directories(t.run.dir);
      LaunchRequest req;
      req.run = t.run;
      req.resume = t.resume;
      req.threads = threads;
      req.args = train_arguments(config, t.run, t.resume, threads);
      req.log_path = (fs::path(t.run.dir) / "train.log").string();
      const auto t0 = Clock::now();
      int rc = 0;
      std::string launch_error;
      try {
        rc = launcher(req);
      } catch (const std::exception& e) {
        rc = -1;
        launch_error = e.what();
      }
      const double run_s = std::chrono::duration<double>(Clock::now() - t0).count();
      const bool finished = run_state(t.run.dir) == RunState::kFinished;

      std::string what;
      if (finished) {
        try {
          const RunResult res = read_run_result(t.run);
          what = res.status == RunStatus::kDiverged
                     ? "diverged"
                     : fmt::format("val {:.4f}", res.final_val_loss);
        } catch (const std::exception& e) {
          what = "unreadable summary.json";
        }
      } else {
        what = launch_error.empty()
                   ? fmt::format("FAILED (exit {}, see {})", rc, req.log_path)
                   : "FAILED (" + launch_error + ")";
      }
      const int sig = signals.received();
      const bool interrupted = !finished && sig != 0 &&
                               (rc == kExitInterrupted || rc == 128 + SIGINT || rc == 128 + SIGTERM);
      if (interrupted) what = fmt::format("interrupted (exit {}); rerun to resume", rc);
      std::lock_guard<std::mutex> lock(mu);
      if (t.resume) ++outcome.resumed; else ++outcome.launched;
      if (interrupted) {
        outcome.interrupted.push_back(t.run.name);
      } else if (!finished) {
        outcome.failed.push_back(t.run.name);
      }
      ++done;
      if (options.progress) {
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        const double eta = elapsed / done * static_cast<double>(pending.size() - done);
        *options.progress << fmt::format("[{}/{}] {} {} ({}){}\n", outcome.skipped + done,
                                         plan.size(), t.run.name, what, format_duration(run_s),
                                         done < static_cast<int64_t>(pending.size())
                                             ? "  ETA " + format_duration(eta)
                                             : "")
                          << std::flush;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int64_t w = 0; w < workers; ++w) pool.emplace_back(work);
  for (auto& th : pool) th.join();

  outcome.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  outcome.stop_signal = signals.received();
  std::sort(outcome.failed.begin(), outcome.failed.end());
  std::sort(outcome.interrupted.begin(), outcome.interrupted.end());
  return outcome;
}

// --------------------------------------------------------------- results ---

RunResult read_run_result(const StudyRun& run) {
  RunResult r;
  r.run = run;
  const RunPaths paths(run.dir);
  if (!fs::exists(paths.summary)) return r;
  RunSummary s;
  try {
    s = read_summary(paths.summary);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "malformed run summary ", paths.summary, ": ", e.what_without_backtrace());
  }
  // read_summary gives +inf for a missing / null / "inf" loss and NaN for "nan": every
  // non-finite final loss, the diverged flag and status "diverged" are all a divergence.
  const bool diverged = s.diverged || s.status == "diverged" || !std::isfinite(s.final_val_loss);
  r.status = diverged ? RunStatus::kDiverged : RunStatus::kFinished;
  r.final_val_loss = diverged ? std::numeric_limits<double>::infinity() : s.final_val_loss;
  r.best_val_loss = s.best_val_loss;
  r.steps_done = s.steps_done;
  r.throughput = s.throughput;
  r.throughput_unit = s.throughput_unit.empty() ? "" : s.throughput_unit + "/s";
  r.spectral_share = s.spectral_share;
  r.wall_s = s.wall_s;
  r.final_val_accuracy = s.final_val_accuracy;
  return r;
}

std::vector<RunResult> collect_results(const StudyConfig& config) {
  std::vector<RunResult> out;
  for (const auto& run : plan_study(config)) out.push_back(read_run_result(run));
  return out;
}

}  // namespace specopt
