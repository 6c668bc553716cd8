// The controlled study: variants × learning-rate grid × seeds, each run a
// `specopt train` subprocess, followed by a report (tables, claim verdicts,
// plots) in the spirit of "Delving into Muon and Beyond" (arXiv 2602.04669).
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
#include "specopt/train/child_process.h"  // self_executable

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <limits>
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
//   reference = "../reference/paper_gpt2_124m.json"  # relative to the config file
//   stable_tolerance = 0.02            # see analyze_study()
//   reference_tolerance = 0.02         # the same, for the paper's numbers (loss level ~2.9)
//   [study.overrides]                  # extra per-variant train overrides (--set key=value)
//   AdamQ = ["optim.lr_vector=6e-4"]
//
// Every other table (run, model, data, optim, train) is the base train config (train/config.h).
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
  std::vector<std::string> set_overrides;              // load_study_config's `overrides` (--set)
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

// ------------------------------------------------------------- analysis ---
//
// Definitions (also in docs/study.md):
//  * cell (variant, lr): over its seeds with a summary, mean and sample standard deviation
//    (n - 1 denominator; 0 for one seed) of the final validation loss. If any seed diverged the
//    cell's mean is +inf (std NaN) and the cell is marked diverged.
//  * best lr of a variant: the lr of its smallest finite cell mean.
//  * reference level L*: the smallest best mean over all variants of the study.
//  * stable cell: no seed diverged and mean ≤ (1 + tolerance) · L*.
//  * stable range of a variant: the contiguous run of stable grid points around its best lr
//    (empty when the best cell itself is not stable). Its width is reported as the number of
//    grid points and as log10(lr_max / lr_min) in decades (0 for one point). Widths are lower
//    bounds: a range that touches the end of the grid may extend further.

struct LrCell {
  double lr = 0.0;
  std::map<int64_t, double> losses;   // seed → final val loss (+inf = diverged)
  int64_t n_missing = 0;
  int64_t n_diverged = 0;
  double mean = 0.0;                  // +inf if any seed diverged; NaN if no seed has a result
  double std = 0.0;
  bool stable = false;
};

struct VariantResult {
  std::string variant;
  Family family = Family::kAdam;
  double p = 1.0;
  std::vector<LrCell> cells;          // ascending lr
  int64_t best = -1;                  // index into cells (-1: no finite cell)
  bool best_at_edge = false;          // best lr is the smallest or largest of ≥ 2 grid points:
                                      // the optimum may lie outside the grid
  int64_t stable_points = 0;
  double stable_lo = 0.0, stable_hi = 0.0;   // lr range of the stable run (valid if points > 0)
  double stable_decades = 0.0;        // log10(stable_hi / stable_lo)
  int64_t diverged_runs = 0;
  double throughput = 0.0;            // median over finished runs (0 = unknown)
  std::string throughput_unit;
  double spectral_share = 0.0;        // median over finished runs
};

enum class Verdict { kHolds, kPartly, kFails, kNotTested };
std::string verdict_name(Verdict v);  // "holds", "partly holds", "does not hold", "not tested"

struct ClaimVerdict {
  int number = 0;                 // 1, 2, 3 (the study's claims, in the reference's order)
  std::string claim;
  Verdict verdict = Verdict::kNotTested;
  std::string evidence;           // the numbers behind the verdict, one sentence or more
};

struct StudyAnalysis {
  std::vector<VariantResult> variants;   // in the given variant order
  double reference_level = 0.0;          // L* (NaN if no finite cell)
  double tolerance = 0.0;
  std::vector<ClaimVerdict> claims;
  int64_t runs_total = 0, runs_finished = 0, runs_diverged = 0, runs_missing = 0;
};

// Aggregates run results (any order) per variant and lr, then evaluates the three claims:
//  (1) RMS-normalised updates (Adam family) are more stable across learning rates than
//      first-moment updates (mSGD family): compares the family means of the stable widths
//      (decades, then points) and the families' diverged-run counts. Holds if one criterion
//      favours the Adam family and none the mSGD family; does not hold if the reverse (or neither
//      favours Adam); partly otherwise.
//  (2) p < 1 stabilises momentum SGD: each mSGD variant with p < 1 against mSGD (p = 1): it
//      stabilises if its stable range is wider (decades, then points), or equally wide with fewer
//      diverged runs. Holds if all do, partly if some, does not hold if none.
//  (3) p = 0 is not consistently better than Adam: each p = 0 variant at its best lr against Adam
//      at Adam's best lr, paired by seed; "consistently better" = lower final loss in every
//      common seed. Holds if no p = 0 variant is consistently better, else does not hold.
StudyAnalysis analyze_study(const std::vector<RunResult>& results,
                            const std::vector<std::string>& variant_order, double tolerance);

// The paper's published final validation losses (reference JSON, one seed, null = diverged)
// as run results, so the same analysis applies. Unknown/malformed file → c10::Error naming it.
std::vector<RunResult> reference_results(const std::string& path);
std::vector<std::string> reference_variants(const std::string& path);

// ---------------------------------------------------------------- report ---

struct ReportOptions {
  std::string python = "/usr/bin/python3";   // env SPECOPT_PYTHON overrides
  std::string plot_script;                   // "" = search (env SPECOPT_PLOT_SCRIPT, next to the
                                             // executable's ../scripts, ./scripts)
  bool plots = true;
};

// Writes STUDY_DIR/{results.csv, runs.csv, curves.csv, analysis.json, report.md} and, through
// scripts/plot_study.py, lr_sweep.png, curves.png (and lr_sweep_reference.png with a reference).
// Returns the path of report.md.
std::string write_study_report(const StudyConfig& config, const StudyAnalysis& analysis,
                               const std::vector<RunResult>& results,
                               const ReportOptions& options = {});

}  // namespace specopt
