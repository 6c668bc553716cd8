// The run directory module (run_dir.h).
#include "specopt/train/run_dir.h"

#include "specopt/train/checkpoint.h"  // write_file_atomic

#include "train/posix_io.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

namespace specopt {

namespace fs = std::filesystem;

RunPaths::RunPaths(const std::string& d)
    : dir(d),
      config((fs::path(d) / "config.toml").string()),
      metrics((fs::path(d) / "metrics.jsonl").string()),
      summary((fs::path(d) / "summary.json").string()),
      checkpoint((fs::path(d) / "checkpoint.pt").string()),
      lock((fs::path(d) / "lock").string()) {}

nlohmann::json json_number(double v) {
  if (std::isfinite(v)) return v;
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

namespace {

// The number json_number encoded in `j`; nullopt for anything else (null included).
std::optional<double> decode_number(const nlohmann::json& j) {
  if (j.is_number()) return j.get<double>();
  if (!j.is_string()) return std::nullopt;
  const auto& s = j.get_ref<const std::string&>();
  if (s == "inf") return std::numeric_limits<double>::infinity();
  if (s == "-inf") return -std::numeric_limits<double>::infinity();
  if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
  return std::nullopt;
}

}  // namespace

double json_to_double(const nlohmann::json& j, double missing) {
  return decode_number(j).value_or(missing);
}

void write_summary(const std::string& path, const RunSummary& r, const nlohmann::json& context) {
  nlohmann::json summary = {
      {"status", r.status},
      {"diverged", r.diverged},
      {"diverged_reason", r.diverged_reason},
      {"steps_done", r.steps_done},
      {"final_train_loss", json_number(r.final_train_loss)},
      {"final_val_loss", json_number(r.final_val_loss)},
      {"best_val_loss", json_number(r.best_val_loss)},
      {r.throughput_unit + "_per_s", r.throughput},
      {"throughput", r.throughput},
      {"throughput_unit", r.throughput_unit},
      {"spectral_share", r.spectral_share},
      {"wall_s", r.wall_s},
  };
  if (std::isfinite(r.final_val_accuracy)) summary["final_val_accuracy"] = r.final_val_accuracy;
  summary.update(context);
  write_file_atomic(path, summary.dump(2) + "\n");
}

namespace {

// summary.json's value of `key` as a T, `fallback` when the key is absent. A value of another
// JSON type is an error naming the file and the key: a hand-edited or foreign summary must not
// pass for a default (a loss of the wrong type for a diverged run).
template <class T>
T summary_value(const nlohmann::json& s, const char* key, T fallback, const std::string& path) {
  const auto it = s.find(key);
  if (it == s.end()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    TORCH_CHECK(false, "'", path, "': '", key, "' has the wrong type (", it->dump(), ")");
  }
}

// A loss or accuracy: a number, or json_number's "inf" / "-inf" / "nan"; `missing` when the key
// is absent or null (no value). Any other JSON is an error naming the file and the key.
double summary_number(const nlohmann::json& s, const char* key, double missing, const std::string& path) {
  const auto it = s.find(key);
  if (it == s.end() || it->is_null()) return missing;
  const auto v = decode_number(*it);
  TORCH_CHECK(v.has_value(), "'", path, "': '", key,
              "' must be a number, \"inf\", \"-inf\", \"nan\" or null, got ", it->dump());
  return *v;
}

}  // namespace

RunSummary read_summary(const std::string& path) {
  std::ifstream in(path);
  const auto s = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  TORCH_CHECK(!s.is_discarded(), "cannot parse '", path, "'");
  TORCH_CHECK(s.is_object(), "'", path, "' is not a JSON object");
  constexpr double kInf = std::numeric_limits<double>::infinity();
  RunSummary r;
  r.status = summary_value<std::string>(s, "status", "finished", path);
  r.diverged = summary_value(s, "diverged", false, path);
  r.diverged_reason = summary_value<std::string>(s, "diverged_reason", "", path);
  r.steps_done = summary_value(s, "steps_done", int64_t{0}, path);
  r.final_train_loss = summary_number(s, "final_train_loss", kInf, path);
  r.final_val_loss = summary_number(s, "final_val_loss", kInf, path);
  r.best_val_loss = summary_number(s, "best_val_loss", kInf, path);
  r.throughput_unit = summary_value<std::string>(s, "throughput_unit", "", path);
  r.throughput = summary_value(s, "throughput", 0.0, path);
  r.spectral_share = summary_value(s, "spectral_share", 0.0, path);
  r.wall_s = summary_value(s, "wall_s", 0.0, path);
  r.final_val_accuracy =
      summary_number(s, "final_val_accuracy", std::numeric_limits<double>::quiet_NaN(), path);
  return r;
}

std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (row.is_discarded() || !row.is_object() || !row.contains("step")) continue;
    rows.push_back(std::move(row));
  }
  return rows;
}

void truncate_metrics(const std::string& path, int64_t last_step) {
  if (!fs::exists(path)) return;
  std::string kept;
  for (const auto& row : read_metrics(path))
    if (row["step"].get<int64_t>() <= last_step) kept += row.dump() + "\n";
  write_file_atomic(path, kept);
}

MetricsFile::MetricsFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  TORCH_CHECK(fd_ >= 0, "cannot open '", path_, "' for writing: ", std::strerror(errno));
}

MetricsFile::~MetricsFile() { ::close(fd_); }

std::string MetricsFile::append(const std::string& line) {
  const std::string text = line + "\n";
  const off_t before = ::lseek(fd_, 0, SEEK_END);
  if (detail::write_all(fd_, text.data(), text.size())) return "";
  const int err = errno;
  // Drop the torn line, so the file stays whole lines (resume reads it).
  if (before >= 0) {
    const int ignored = ::ftruncate(fd_, before);
    (void)ignored;
  }
  return fmt::format("cannot write '{}': {}", path_, std::strerror(err));
}

RunDirLock::RunDirLock(const std::string& dir) {
  const std::string path = RunPaths(dir).lock;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  TORCH_CHECK(fd_ >= 0, "cannot open the lock file '", path, "': ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder;
    // The holder writes its PID just after it locks: give it a moment.
    for (int attempt = 0; attempt < 20 && holder.empty(); ++attempt) {
      char buf[32] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof(buf) - 1, 0);
      for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) holder.push_back(buf[i]);
      if (holder.empty()) ::usleep(10000);
    }
    ::close(fd_);
    TORCH_CHECK(err == EWOULDBLOCK, "cannot lock '", path, "': ", std::strerror(err));
    TORCH_CHECK(false, "run directory '", dir, "' is in use by process ",
                holder.empty() ? std::string("(unknown PID)") : holder, " (it holds the lock '", path,
                "'); wait for that run to end, or choose another run directory");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    const int err = errno;
    ::close(fd_);
    TORCH_CHECK(false, "cannot write the lock file '", path, "': ", std::strerror(err));
  }
}

RunDirLock::~RunDirLock() { ::close(fd_); }

}  // namespace specopt
