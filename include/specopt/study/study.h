// The controlled study: variants × learning-rate grid × seeds, each run a
// `specopt train` subprocess, followed by a report (tables, claim verdicts,
// plots) in the spirit of "Delving into Muon and Beyond" (arXiv 2602.04669).
// This header: the study config, the plan, the runner and the run results; the analysis is
// specopt/study/analysis.h, the verdicts specopt/study/verdict.h, the report specopt/study/report.h.
//
//   StudyConfig cfg = load_study_config("configs/study/fmnist-quick.toml");
//   StudyOutcome out = run_study(cfg);                 // resumable, parallel
//   StudyAnalysis a = analyze_study(collect_results(cfg), cfg.variants, cfg.stable_tolerance);
//   write_study_report(cfg, a);                        // report.md, CSVs, PNGs
//
// Study directory layout:
//   STUDY_DIR/train_base.toml          the train config shared by every run ([study] removed)
//   STUDY_DIR/runs/<variant>_lr<lr>_s<seed>/   one `specopt train` run directory each
//                                      (+ train.log: the subprocess' stdout/stderr)
//   STUDY_DIR/report.md, results.csv, runs.csv, curves.csv, analysis.json, *.png
//
// The only coupling to the trainer is its CLI and run-directory format (train/run_dir.h):
// a run is finished when RUN_DIR/summary.json exists; a run with RUN_DIR/checkpoint.pt
// but no summary is resumed with `--resume`.
#pragma once

#include "specopt/core/variants.h"
#include "specopt/study/study_config.h"
#include "specopt/train/child_process.h"  // self_executable

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <limits>
#include <map>
#include <string>
#include <vector>

namespace specopt {

// ----------------------------------------------------------------- runs ---

struct StudyRun {
  std::string variant;
  double lr = 0.0;        // optim.lr_matrix
  int64_t seed = 0;
  std::string name;       // <variant>_lr<lr>_s<seed>
  std::string dir;        // STUDY_DIR/runs/<name>
};

// Shortest round-trip spelling of a learning rate for names and tables: 0.003 → "0.003",
// 1e-05 → "1e-05" is written "1e-5", 2.0 → "2".
std::string lr_label(double lr);
std::string run_name(const std::string& variant, double lr, int64_t seed);

// Every run of the study in a fixed order: variant (config order), lr (ascending), seed.
std::vector<StudyRun> plan_study(const StudyConfig& config);

enum class RunState {
  kPending,   // nothing usable: (re)start from scratch
  kPartial,   // checkpoint.pt but no summary.json: resume
  kFinished,  // summary.json present
};
RunState run_state(const std::string& run_dir);

// What a launcher is asked to do: run `executable args...` to completion.
struct LaunchRequest {
  StudyRun run;
  std::vector<std::string> args;   // argv[1:]: "train" BASE --set ... --run-dir DIR --quiet [--resume]
  bool resume = false;
  int64_t threads = 1;
  std::string log_path;            // where stdout/stderr should go (RUN_DIR/train.log)
};
// Returns the exit status of the run (0 = success). Called concurrently from worker threads.
using Launcher = std::function<int(const LaunchRequest&)>;

// Launches `executable` (a path, or a name looked up in PATH) as a child process with
// stdout/stderr appended to the request's log file, OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set
// to the request's threads (when > 0), and waits for it. A crash of the child is reported as
// 128 + signal number; a child that cannot be started → c10::Error.
// The child gets PR_SET_PDEATHSIG = SIGTERM: if the study dies (even by SIGKILL), its runs
// checkpoint and stop instead of running on beside a rerun. While run_study handles signals
// (StudyRunOptions::handle_signals), a SIGINT/SIGTERM of the study is forwarded to the children.
Launcher subprocess_launcher(std::string executable);


struct StudyRunOptions {
  int64_t workers = 0;            // 0: the config's value
  Launcher launcher;              // empty: subprocess_launcher(executable)
  std::string executable;         // empty: self_executable()
  std::ostream* progress = nullptr;  // one line per finished run (+ ETA); nullptr = quiet
  // Catch SIGINT/SIGTERM while the study runs: the signal is forwarded to the running
  // children (which checkpoint and exit with kExitInterrupted), no new run is launched, and
  // run_study returns with stop_signal set; a second signal is forwarded too and then exits
  // the study at once. `specopt study` sets it.
  bool handle_signals = false;
};

struct StudyOutcome {
  int64_t total = 0;              // runs in the plan
  int64_t skipped = 0;            // already finished before this call
  int64_t launched = 0;           // started fresh
  int64_t resumed = 0;            // continued from a checkpoint
  std::vector<std::string> failed;  // runs whose process failed without writing summary.json
  std::vector<std::string> interrupted;  // runs stopped by a forwarded signal (rerun to resume)
  int stop_signal = 0;            // the signal that stopped the study (handle_signals), else 0
  double wall_s = 0.0;
};

// Writes STUDY_DIR/train_base.toml and runs every unfinished run, `workers` at a time, each with
// threads = max(1, total_threads / workers). A failing run never stops the others.
StudyOutcome run_study(const StudyConfig& config, const StudyRunOptions& options = {});

// The argument list one run is launched with (exposed for tests and for printing).
std::vector<std::string> train_arguments(const StudyConfig& config, const StudyRun& run,
                                         bool resume, int64_t threads);

// --------------------------------------------------------------- results ---

enum class RunStatus { kMissing, kFinished, kDiverged };

struct RunResult {
  StudyRun run;
  RunStatus status = RunStatus::kMissing;
  double final_val_loss = 0.0;   // +inf when diverged
  double best_val_loss = 0.0;
  int64_t steps_done = 0;
  double throughput = 0.0;       // tokens/s or samples/s
  std::string throughput_unit;   // "tokens/s" or "samples/s"
  double spectral_share = 0.0;   // fraction of step time in the spectral transform
  double wall_s = 0.0;
  double final_val_accuracy = std::numeric_limits<double>::quiet_NaN();  // image tasks; else NaN
};

// Reads RUN_DIR/summary.json (missing file → kMissing; malformed → c10::Error naming the file).
// "final_val_loss" may be a number, the string "inf"/"nan", or null; diverged = true or
// status "diverged" or a non-finite final loss → kDiverged with final_val_loss = +inf.
RunResult read_run_result(const StudyRun& run);
std::vector<RunResult> collect_results(const StudyConfig& config);

}  // namespace specopt
