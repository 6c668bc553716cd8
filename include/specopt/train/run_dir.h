// A run directory (docs/training.md): its file names, summary.json
// (RunSummary and its JSON encoding), metrics.jsonl (append and read), and the
// lock that keeps one writer per directory. The trainer writes and resumes
// through this module; the study reads runs through it.
//
//   config.toml    the resolved config
//   metrics.jsonl  one JSON object per logged step
//   summary.json   written when the run ends (finished or diverged)
//   checkpoint.pt  see checkpoint.h
//   lock           flock(2)ed by the process writing the run (holds its PID)
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace specopt {

// The paths of the files of run directory `dir`.
struct RunPaths {
  explicit RunPaths(const std::string& dir);
  std::string dir, config, metrics, summary, checkpoint, lock;
};

// Non-finite numbers in summary.json and metrics.jsonl (JSON has none): NaN is
// written "nan", ±∞ "inf" / "-inf"; finite numbers as numbers.
nlohmann::json json_number(double v);
// The inverse of json_number; `missing` for null (no value). Any other JSON
// (an object, another string) is also `missing`.
double json_to_double(const nlohmann::json& j, double missing);

// The outcome of a run, as summary.json holds it (train() returns it).
struct RunSummary {
  std::string status;          // "finished" | "diverged" | "interrupted" (options.handle_signals)
  bool diverged = false;
  std::string diverged_reason;  // see StepStats
  int stop_signal = 0;          // the signal that interrupted the run (status "interrupted"; not in the file)
  int64_t steps_done = 0;
  double final_train_loss = 0.0;
  double final_val_loss = 0.0;  // +inf when diverged
  double best_val_loss = 0.0;   // +inf when no finite validation
  double throughput = 0.0;      // items per second of training time
  std::string throughput_unit;  // "tokens" | "samples"
  // Share of the training step time spent in the spectral transform Ψ_p
  // (RunTotals::transform_s / RunTotals::train_s).
  double spectral_share = 0.0;
  double wall_s = 0.0;
  // Image data: the last validation's accuracy (Trainer::val_accuracy); NaN for token
  // data and when diverged (then not in the file).
  double final_val_accuracy = std::numeric_limits<double>::quiet_NaN();
};

// summary.json: `r` (its throughput also under the key "<unit>_per_s") and
// the run's description `context` (steps, timings, variant, lr, seed, model,
// data, parameters, device, threads), written atomically.
void write_summary(const std::string& path, const RunSummary& r, const nlohmann::json& context);
// Reads summary.json; c10::Error naming the file when it cannot be parsed, and the file and
// the key when a value has the wrong JSON type (a loss or the accuracy must be a number,
// "inf", "-inf", "nan" or null; absent or null losses read +inf, an absent accuracy NaN).
RunSummary read_summary(const std::string& path);

// The rows of metrics.jsonl in order; unparsable lines (the torn last line of
// a killed run) and rows without "step" are skipped. A missing file has none.
std::vector<nlohmann::json> read_metrics(const std::string& path);
// Keeps the rows of metrics.jsonl with step ≤ last_step (and drops a torn last
// line of a killed run), so a resumed run appends where its checkpoint left off.
void truncate_metrics(const std::string& path, int64_t last_step);

// metrics.jsonl, appended line by line with checked write(2)s (an ofstream
// would fail silently on a full disk and leave half a line).
class MetricsFile {
 public:
  explicit MetricsFile(std::string path);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;
  // "" on success, else the error naming the file; a torn line is removed.
  std::string append(const std::string& line);

 private:
  std::string path_;
  int fd_ = -1;
};

// An exclusive flock(2) on RUN_DIR/lock for the lifetime of the object; the
// file holds the holder's PID for the error message of the next comer. The
// kernel drops the lock when the process dies (even by SIGKILL), so a stale
// file never blocks a rerun. A held lock is a c10::Error naming that PID.
class RunDirLock {
 public:
  explicit RunDirLock(const std::string& dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace specopt
