// The controlled study: variants × learning-rate grid × seeds, each run a
// `specopt train` subprocess, followed by a report (tables, claim verdicts,
// plots) in the spirit of "Delving into Muon and Beyond" (arXiv 2602.04669).
// This header: the study config, the plan, the runner and the run results; the analysis is
// specopt/analysis.h, the verdicts specopt/verdict.h, the report specopt/report.h.
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
// The only coupling to the trainer is its CLI and run-directory format (API.md):
// a run is finished when RUN_DIR/summary.json exists; a run with RUN_DIR/checkpoint.pt
// but no summary is resumed with `--resume`.
#pragma once

#include "specopt/variants.h"

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <string>
#include <vector>

namespace specopt {

// ---------------------------------------------------------------- config ---

// The [study] table of a study config plus the train config it shares.
//
//   [study]
//   name = "fmnist-quick"
//   variants = ["Adam", "AdamS", ..., "mSGDZ"]
//   lrs = [1e-3, 3e-3, 1e-2]          # one grid (optim.lr_matrix) for every variant, or
//   [study.lrs]                        # per-variant grids; `default` for the variants not named
//   default = [1e-3, 3e-3, 1e-2]
//   mSGD = [0.03, 0.1, 0.3]
//   seeds = [0, 1, 2]
//   workers = 1                        # parallel runs; each gets threads / workers threads
//   threads = 0                        # total threads of the study (0 = all cores)
//   study_dir = "runs/study/fmnist-quick"   # relative to the working directory
//   reference = "../shared/reference/paper_gpt2_124m.json"  # relative to the config file
//   stable_tolerance = 0.02            # see analyze_study()
//   reference_tolerance = 0.02         # the same, for the paper's numbers (loss level ~2.9)
//   [study.overrides]                  # extra per-variant train overrides (--set key=value)
//   AdamQ = ["optim.lr_vector=6e-4"]
//
// Every other table (run, model, data, optim, train) is the base train config (API.md).
struct StudyConfig {
  std::string name;
  std::vector<std::string> variants;                   // canonical names (parse_variant)
  std::map<std::string, std::vector<double>> lrs;      // variant → lr_matrix grid, ascending
  std::map<std::string, std::vector<std::string>> overrides;  // variant → extra "key=value"
  std::vector<int64_t> seeds = {0};
  int64_t workers = 1;
  int64_t threads = 0;
  std::string study_dir;                               // default runs/study/<name>
  std::string reference;      // resolved path of the paper's reference JSON ("" = none)
  bool reference_configured = false;                   // `reference` was given in the config
  double stable_tolerance = 0.02;
  double reference_tolerance = 0.02;
  std::string config_path;                             // the file it was loaded from
  std::string train_config_toml;                       // base train config, serialized TOML
};

// Loads and validates a study config. `overrides` are "dotted.key=value" strings applied to the
// file before validation (value parsed as a TOML value, else taken as a string), e.g.
// "study.workers=2" or "train.steps=50". Unknown [study] keys, an empty variant list, unknown
// variant names, empty/non-positive lr grids, a grid for a variant that is not studied, an empty
// seed list → c10::Error naming the offending key/value and the file.
StudyConfig load_study_config(const std::string& path, const std::vector<std::string>& overrides = {});

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

// This very binary (readlink /proc/self/exe): studies run the runs through their own CLI.
std::string self_executable();

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
};

// Reads RUN_DIR/summary.json (missing file → kMissing; malformed → c10::Error naming the file).
// "final_val_loss" may be a number, the string "inf"/"nan", or null; diverged = true or
// status "diverged" or a non-finite final loss → kDiverged with final_val_loss = +inf.
RunResult read_run_result(const StudyRun& run);
std::vector<RunResult> collect_results(const StudyConfig& config);

}  // namespace specopt
