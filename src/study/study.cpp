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

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const auto t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

void write_train_base(const StudyConfig& config) {
  const fs::path base = fs::path(config.study_dir) / "train_base.toml";
  std::ofstream f(base);
  TORCH_CHECK(f.good(), "cannot write ", base.string());
  f << "# Base train config of study '" << config.name << "' (from " << config.config_path
    << ").\n# Each run adds --set optim.variant, optim.lr_matrix, run.seed, run.threads.\n"
    << config.train_config_toml;
}

struct PendingRun {
  StudyRun run;
  bool resume;
};

// The runs of the plan without a summary (a checkpoint: resumed); the finished ones are skipped.
std::vector<PendingRun> pending_runs(const std::vector<StudyRun>& plan, StudyOutcome& outcome) {
  std::vector<PendingRun> pending;
  for (const auto& r : plan) {
    const RunState s = run_state(r.dir);
    if (s == RunState::kFinished) {
      ++outcome.skipped;
    } else {
      pending.push_back({r, s == RunState::kPartial});
    }
  }
  return pending;
}

// SIGINT/SIGTERM while the study runs: forwarded to the children, no new launches (study.h).
class StudySignals {
 public:
  // The flags are set before the handler is installed.
  explicit StudySignals(bool on) : handler_((g_study_stop = 0, g_forwarding = on, on), on_study_signal) {}
  ~StudySignals() { g_forwarding = false; }
  int received() const { return handler_.on() ? g_study_stop.load() : 0; }

 private:
  detail::ScopedStopHandler handler_;
};

// What became of one launched run, for the outcome and the progress line.
struct LaunchedRun {
  bool finished = false;     // it wrote summary.json
  bool interrupted = false;  // a forwarded signal stopped it (rerun to resume)
  std::string what;
  double run_s = 0.0;
};

// The progress text of a finished run: its final loss or the divergence.
std::string finished_text(const StudyRun& run) {
  try {
    const RunResult res = read_run_result(run);
    return res.status == RunStatus::kDiverged ? "diverged" : fmt::format("val {:.4f}", res.final_val_loss);
  } catch (const std::exception&) {
    return "unreadable summary.json";
  }
}

LaunchedRun launch_run(const StudyConfig& config, const PendingRun& t, int64_t threads,
                       const Launcher& launcher, const StudySignals& signals) {
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
  LaunchedRun out;
  out.run_s = seconds_since(t0);
  out.finished = run_state(t.run.dir) == RunState::kFinished;
  if (out.finished) {
    out.what = finished_text(t.run);
  } else {
    out.what = launch_error.empty() ? fmt::format("FAILED (exit {}, see {})", rc, req.log_path)
                                    : "FAILED (" + launch_error + ")";
  }
  const int sig = signals.received();
  out.interrupted = !out.finished && sig != 0 &&
                    (rc == kExitInterrupted || rc == 128 + SIGINT || rc == 128 + SIGTERM);
  if (out.interrupted) out.what = fmt::format("interrupted (exit {}); rerun to resume", rc);
  return out;
}

void record(StudyOutcome& outcome, const PendingRun& t, const LaunchedRun& r) {
  if (t.resume) ++outcome.resumed; else ++outcome.launched;
  if (r.interrupted) {
    outcome.interrupted.push_back(t.run.name);
  } else if (!r.finished) {
    outcome.failed.push_back(t.run.name);
  }
}

// The study's share-out: `workers` runs at a time, each with threads = total / workers.
struct Parallelism {
  int64_t workers = 1, threads = 1;
};

Parallelism parallelism(const StudyConfig& config, const StudyRunOptions& options, size_t pending) {
  Parallelism p;
  p.workers = std::max<int64_t>(
      1, std::min<int64_t>(options.workers > 0 ? options.workers : config.workers,
                           std::max<size_t>(pending, 1)));
  const int64_t total_threads =
      config.threads > 0 ? config.threads
                         : std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  p.threads = std::max<int64_t>(1, total_threads / p.workers);
  return p;
}

void print_plan(std::ostream& out, const StudyConfig& config, size_t planned, int64_t skipped,
                const std::vector<PendingRun>& pending, const Parallelism& p) {
  int64_t resumes = 0;
  for (const auto& t : pending) resumes += t.resume;
  out << fmt::format(
             "study {}: {} runs ({} finished, {} to resume, {} to start); {} worker(s) x {} thread(s); "
             "dir {}\n",
             config.name, planned, skipped, resumes, pending.size() - resumes, p.workers, p.threads,
             config.study_dir)
      << std::flush;
}

}  // namespace

StudyOutcome run_study(const StudyConfig& config, const StudyRunOptions& options) {
  const auto start = Clock::now();
  StudyOutcome outcome;
  fs::create_directories(fs::path(config.study_dir) / "runs");
  write_train_base(config);

  const auto plan = plan_study(config);
  outcome.total = static_cast<int64_t>(plan.size());
  const std::vector<PendingRun> pending = pending_runs(plan, outcome);
  const Parallelism par = parallelism(config, options, pending.size());
  Launcher launcher = options.launcher;
  if (!launcher)
    launcher = subprocess_launcher(options.executable.empty() ? self_executable() : options.executable);
  if (options.progress) print_plan(*options.progress, config, plan.size(), outcome.skipped, pending, par);

  const StudySignals signals(options.handle_signals);
  std::mutex mu;
  std::atomic<size_t> next{0};
  int64_t done = 0;
  auto work = [&]() {
    for (size_t i = next++; i < pending.size() && signals.received() == 0; i = next++) {
      const LaunchedRun r = launch_run(config, pending[i], par.threads, launcher, signals);
      std::lock_guard<std::mutex> lock(mu);
      record(outcome, pending[i], r);
      ++done;
      if (!options.progress) continue;
      const double eta = seconds_since(start) / done * static_cast<double>(pending.size() - done);
      *options.progress << fmt::format("[{}/{}] {} {} ({}){}\n", outcome.skipped + done, plan.size(),
                                       pending[i].run.name, r.what, format_duration(r.run_s),
                                       done < static_cast<int64_t>(pending.size())
                                           ? "  ETA " + format_duration(eta)
                                           : "")
                        << std::flush;
    }
  };
  std::vector<std::thread> pool;
  for (int64_t w = 0; w < par.workers; ++w) pool.emplace_back(work);
  for (auto& th : pool) th.join();

  outcome.wall_s = seconds_since(start);
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
