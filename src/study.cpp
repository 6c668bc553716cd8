// The study runner: config, plan, resumable parallel launch of `specopt train`
// subprocesses, and reading their run directories. The analysis and the report
// are in report.cpp.
#include "specopt/study.h"

#include "specopt/config.h"
#include "specopt/trainer.h"  // kExitInterrupted

#include "stop_signals.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <toml++/toml.h>

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

namespace {

// ---------------------------------------------------------------- config ---

const std::vector<std::string>& study_keys() {
  static const std::vector<std::string> keys = {
      "name", "variants", "families", "ps", "lrs", "seeds", "workers", "threads",
      "study_dir", "reference", "stable_tolerance", "reference_tolerance", "overrides"};
  return keys;
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// "a.b.c=value": the value is parsed as a TOML value (numbers, booleans, arrays, quoted
// strings); anything that does not parse is taken as a bare string (variant=AdamS).
void apply_study_override(toml::table& root, const std::string& assignment, const std::string& file) {
  const auto eq = assignment.find('=');
  TORCH_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment,
              "': expected key=value (e.g. study.workers=2 or train.steps=100)");
  const std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) {
    TORCH_CHECK(!part.empty(), "--set '", assignment, "': empty component in key '", key, "'");
    parts.push_back(part);
  }
  toml::table* table = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    toml::node* child = table->get(parts[i]);
    if (!child) {
      table->insert(parts[i], toml::table{});
      child = table->get(parts[i]);
    }
    TORCH_CHECK(child->is_table(), "--set '", assignment, "': '", parts[i],
                "' is not a table in ", file);
    table = child->as_table();
  }
  toml::table parsed;
  bool is_toml = true;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    is_toml = false;
  }
  if (is_toml && parsed.get("v") != nullptr) {
    // Copy the parsed node whatever its type.
    parsed.get("v")->visit([&](auto&& node) { table->insert_or_assign(parts.back(), node); });
  } else {
    table->insert_or_assign(parts.back(), value);
  }
}

std::vector<double> read_lr_grid(const toml::node& node, const std::string& key,
                                 const std::string& file) {
  const toml::array* arr = node.as_array();
  TORCH_CHECK(arr != nullptr, key, " in ", file, " must be an array of learning rates");
  TORCH_CHECK(!arr->empty(), key, " in ", file, " is empty: give at least one learning rate");
  std::vector<double> grid;
  for (const auto& item : *arr) {
    const auto v = item.value<double>();
    TORCH_CHECK(v.has_value(), key, " in ", file, ": every entry must be a number");
    TORCH_CHECK(std::isfinite(*v) && *v > 0, key, " in ", file,
                ": learning rates must be finite and > 0, got ", *v);
    grid.push_back(*v);
  }
  std::sort(grid.begin(), grid.end());
  TORCH_CHECK(std::adjacent_find(grid.begin(), grid.end()) == grid.end(), key, " in ", file,
              " lists a learning rate twice");
  return grid;
}

int64_t read_int(const toml::node& node, const std::string& key, const std::string& file,
                 int64_t min) {
  const auto v = node.value<int64_t>();
  TORCH_CHECK(v.has_value() && node.is_integer(), key, " in ", file, " must be an integer");
  TORCH_CHECK(*v >= min, key, " in ", file, " must be >= ", min, ", got ", *v);
  return *v;
}

std::string read_string(const toml::node& node, const std::string& key, const std::string& file) {
  const auto v = node.value<std::string>();
  TORCH_CHECK(v.has_value() && node.is_string(), key, " in ", file, " must be a string");
  return *v;
}

}  // namespace

StudyConfig load_study_config(const std::string& path, const std::vector<std::string>& overrides) {
  TORCH_CHECK(fs::exists(path), "study config '", path, "' does not exist");
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& err) {
    TORCH_CHECK(false, "study config '", path, "' line ", err.source().begin.line, ": ",
                std::string(err.description()));
  }
  for (const auto& o : overrides) apply_study_override(root, o, path);

  StudyConfig cfg;
  cfg.config_path = path;
  const toml::table* study = root["study"].as_table();
  TORCH_CHECK(study != nullptr, "study config '", path, "' has no [study] table");

  for (const auto& [k, v] : *study) {
    const std::string key(k.str());
    const auto& keys = study_keys();
    TORCH_CHECK(std::find(keys.begin(), keys.end(), key) != keys.end(), "unknown key 'study.", key,
                "' in ", path, " (valid: ", join(keys, ", "), ")");
  }

  cfg.name = fs::path(path).stem().string();
  if (const auto* n = study->get("name")) cfg.name = read_string(*n, "study.name", path);
  TORCH_CHECK(!cfg.name.empty(), "study.name in ", path, " is empty");

  // Variants: named, or the p axis (families × ps, each pair a variant "adam:p=0.125").
  auto add_variant = [&](const std::string& text, const std::string& key) {
    Variant v;
    try {
      v = parse_variant(text);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, key, " in ", path, ": ", e.what_without_backtrace());
    }
    TORCH_CHECK(std::find(cfg.variants.begin(), cfg.variants.end(), v.name) == cfg.variants.end(),
                key, " in ", path, " lists '", v.name, "' twice");
    cfg.variants.push_back(v.name);
  };
  const toml::node* variants = study->get("variants");
  const toml::node* ps = study->get("ps");
  TORCH_CHECK(variants != nullptr || ps != nullptr, "study config '", path,
              "' lacks study.variants (or the p axis study.ps with study.families)");
  TORCH_CHECK(!(variants && ps), "study config '", path,
              "': give study.variants or study.ps (with study.families), not both");
  TORCH_CHECK(ps || !study->get("families"), "study.families in ", path,
              " needs study.ps (the p values of each family)");
  if (variants) {
    const toml::array* varr = variants->as_array();
    TORCH_CHECK(varr != nullptr, "study.variants in ", path, " must be an array of variant names");
    TORCH_CHECK(!varr->empty(), "study.variants in ", path, " is empty: name at least one variant");
    for (const auto& item : *varr) {
      const auto s = item.value<std::string>();
      TORCH_CHECK(s.has_value(), "study.variants in ", path, ": every entry must be a string");
      add_variant(*s, "study.variants");
    }
  } else {
    std::vector<Family> families = {Family::kAdam, Family::kSGD};
    if (const auto* f = study->get("families")) {
      const toml::array* arr = f->as_array();
      TORCH_CHECK(arr && !arr->empty(), "study.families in ", path,
                  " must be a non-empty array of \"Adam\" / \"mSGD\"");
      families.clear();
      for (const auto& item : *arr) {
        const auto s = item.value<std::string>();
        TORCH_CHECK(s.has_value(), "study.families in ", path, ": every entry must be a string");
        // A family is its p = 1 variant's name (Adam, mSGD).
        const Variant v = parse_variant(*s);
        TORCH_CHECK(v.p == 1.0, "study.families in ", path, ": '", *s,
                    "' is not a family (\"Adam\" or \"mSGD\")");
        families.push_back(v.family);
      }
    }
    const toml::array* arr = ps->as_array();
    TORCH_CHECK(arr && !arr->empty(), "study.ps in ", path, " must be a non-empty array of p values");
    for (Family fam : families)
      for (const auto& item : *arr) {
        const auto p = item.value<double>();
        TORCH_CHECK(p.has_value(), "study.ps in ", path, ": every entry must be a number");
        add_variant(variant_name(fam, *p), "study.ps");
      }
  }

  // Learning-rate grids: an array for all variants, or a table of per-variant arrays with an
  // optional `default`.
  const toml::node* lrs = study->get("lrs");
  TORCH_CHECK(lrs != nullptr, "study config '", path, "' lacks study.lrs");
  std::vector<double> default_grid;
  std::map<std::string, std::vector<double>> named;
  std::map<Family, std::vector<double>> by_family;  // [study.lrs.family]: Adam = [...], mSGD = [...]
  if (lrs->is_array()) {
    default_grid = read_lr_grid(*lrs, "study.lrs", path);
  } else if (const toml::table* t = lrs->as_table()) {
    for (const auto& [k, v] : *t) {
      const std::string key(k.str());
      const std::string full = "study.lrs." + key;
      if (key == "default") {
        default_grid = read_lr_grid(v, full, path);
        continue;
      }
      if (key == "family") {
        const toml::table* ft = v.as_table();
        TORCH_CHECK(ft != nullptr, full, " in ", path,
                    " must be a table of per-family grids ([study.lrs.family] Adam = [...])");
        for (const auto& [fk, fv] : *ft) {
          const std::string fname(fk.str());
          const Variant fam = parse_variant(fname);
          TORCH_CHECK(fam.p == 1.0, full, ".", fname, " in ", path,
                      ": not a family (\"Adam\" or \"mSGD\")");
          by_family[fam.family] = read_lr_grid(fv, full + "." + fname, path);
        }
        continue;
      }
      Variant var;
      try {
        var = parse_variant(key);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, full, " in ", path, ": ", e.what_without_backtrace());
      }
      TORCH_CHECK(std::find(cfg.variants.begin(), cfg.variants.end(), var.name) != cfg.variants.end(),
                  full, " in ", path, ": variant '", var.name, "' is not in study.variants");
      named[var.name] = read_lr_grid(v, full, path);
    }
  } else {
    TORCH_CHECK(false, "study.lrs in ", path,
                " must be an array or a table of per-variant arrays ([study.lrs])");
  }
  for (const auto& v : cfg.variants) {
    auto it = named.find(v);
    const auto fam = by_family.find(parse_variant(v).family);
    if (it != named.end()) {
      cfg.lrs[v] = it->second;
    } else if (fam != by_family.end()) {
      cfg.lrs[v] = fam->second;
    } else {
      TORCH_CHECK(!default_grid.empty(), "study config '", path, "': no learning-rate grid for '", v,
                  "' (add study.lrs.", v, " or study.lrs.default)");
      cfg.lrs[v] = default_grid;
    }
  }

  if (const auto* s = study->get("seeds")) {
    const toml::array* arr = s->as_array();
    TORCH_CHECK(arr != nullptr, "study.seeds in ", path, " must be an array of integers");
    TORCH_CHECK(!arr->empty(), "study.seeds in ", path, " is empty");
    cfg.seeds.clear();
    for (const auto& item : *arr) cfg.seeds.push_back(read_int(item, "study.seeds", path, 0));
    std::set<int64_t> unique(cfg.seeds.begin(), cfg.seeds.end());
    TORCH_CHECK(unique.size() == cfg.seeds.size(), "study.seeds in ", path, " lists a seed twice");
  }
  if (const auto* w = study->get("workers")) cfg.workers = read_int(*w, "study.workers", path, 1);
  if (const auto* t = study->get("threads")) cfg.threads = read_int(*t, "study.threads", path, 0);
  for (auto [key, field] : {std::pair<const char*, double*>{"stable_tolerance", &cfg.stable_tolerance},
                            {"reference_tolerance", &cfg.reference_tolerance}}) {
    if (const auto* t = study->get(key)) {
      const auto v = t->value<double>();
      TORCH_CHECK(v.has_value() && std::isfinite(*v) && *v >= 0, "study.", key, " in ", path,
                  " must be a number >= 0");
      *field = *v;
    }
  }
  cfg.study_dir = "runs/study/" + cfg.name;
  if (const auto* d = study->get("study_dir")) cfg.study_dir = read_string(*d, "study.study_dir", path);
  if (const auto* r = study->get("reference")) {
    cfg.reference_configured = true;
    fs::path ref = read_string(*r, "study.reference", path);
    if (ref.is_relative()) ref = fs::path(path).parent_path() / ref;
    cfg.reference = ref.lexically_normal().string();
  }

  if (const auto* o = study->get("overrides")) {
    const toml::table* t = o->as_table();
    TORCH_CHECK(t != nullptr, "study.overrides in ", path,
                " must be a table of per-variant arrays of \"key=value\" strings");
    for (const auto& [k, v] : *t) {
      const std::string full = "study.overrides." + std::string(k.str());
      Variant var;
      try {
        var = parse_variant(std::string(k.str()));
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, full, " in ", path, ": ", e.what_without_backtrace());
      }
      TORCH_CHECK(std::find(cfg.variants.begin(), cfg.variants.end(), var.name) != cfg.variants.end(),
                  full, " in ", path, ": variant '", var.name, "' is not in study.variants");
      const toml::array* arr = v.as_array();
      TORCH_CHECK(arr != nullptr, full, " in ", path, " must be an array of \"key=value\" strings");
      for (const auto& item : *arr) {
        const auto s = item.value<std::string>();
        TORCH_CHECK(s.has_value(), full, " in ", path, ": every entry must be a \"key=value\" string");
        cfg.overrides[var.name].push_back(*s);
      }
    }
  }

  // Base train config: everything but [study]. Validated now (unknown keys, bad values) so a
  // typo fails before the first of many runs starts, with the trainer's own message.
  toml::table base = root;
  base.erase("study");
  std::ostringstream os;
  os << base << "\n";
  cfg.train_config_toml = os.str();
  try {
    const TrainConfig base_config = config_from_toml_string(cfg.train_config_toml, path);
    for (const auto& [variant, sets] : cfg.overrides) {
      TrainConfig c = base_config;
      for (const auto& s : sets) apply_override(c, s);
      c.validate();
    }
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "study config '", path, "': ", e.what_without_backtrace());
  }
  return cfg;
}

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
  if (fs::exists(fs::path(run_dir) / "summary.json")) return RunState::kFinished;
  if (fs::exists(fs::path(run_dir) / "checkpoint.pt")) return RunState::kPartial;
  return RunState::kPending;
}

std::vector<std::string> train_arguments(const StudyConfig& config, const StudyRun& run,
                                         bool resume, int64_t threads) {
  const std::string base = (fs::path(config.study_dir) / "train_base.toml").string();
  std::vector<std::string> args = {
      "train", base,
      "--set", "optim.variant=\"" + run.variant + "\"",
      // %.17g: the exact double, so the trainer sees the grid value bit for bit.
      "--set", fmt::format("optim.lr_matrix={:.17g}", run.lr),
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

std::string self_executable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  TORCH_CHECK(!ec, "cannot resolve /proc/self/exe: ", ec.message());
  return p.string();
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

// The file posix_spawnp would run: `name` itself when it has a '/', else the
// first executable PATH entry (resolved before fork: the child may only make
// async-signal-safe calls).
std::string resolve_executable(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return name;  // execve fails with ENOENT, reported by the caller
}

}  // namespace

Launcher subprocess_launcher(std::string executable) {
  return [executable](const LaunchRequest& req) -> int {
    std::vector<std::string> argv_s;
    argv_s.push_back(executable);
    argv_s.insert(argv_s.end(), req.args.begin(), req.args.end());
    std::vector<char*> argv;
    for (auto& s : argv_s) argv.push_back(s.data());
    argv.push_back(nullptr);

    // The child's thread pools (OpenMP, OpenBLAS) get the run's share of the threads too, so
    // parallel workers do not oversubscribe the cores.
    std::vector<std::string> env_s;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string var(*e);
      if (req.threads > 0 && (var.rfind("OMP_NUM_THREADS=", 0) == 0 ||
                              var.rfind("OPENBLAS_NUM_THREADS=", 0) == 0))
        continue;
      env_s.push_back(var);
    }
    if (req.threads > 0) {
      env_s.push_back("OMP_NUM_THREADS=" + std::to_string(req.threads));
      env_s.push_back("OPENBLAS_NUM_THREADS=" + std::to_string(req.threads));
    }
    std::vector<char*> envp;
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);

    // fork + execve rather than posix_spawn, for PR_SET_PDEATHSIG: a study killed
    // by SIGKILL must not leave its runs going on beside a rerun. The signal is
    // sent when the forking thread ends; it is the worker that waits for this
    // child, so it outlives it. A CLOEXEC pipe reports an exec failure.
    const std::string path = resolve_executable(executable);
    int pipe_fds[2];
    TORCH_CHECK(::pipe2(pipe_fds, O_CLOEXEC) == 0, "cannot start '", executable, "' for run ",
                req.run.name, ": pipe: ", std::strerror(errno));
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // Child: async-signal-safe calls only.
      int err = 0;
      if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent) ::_exit(127);
      // Its own process group: a Ctrl-C at the terminal reaches the study only,
      // which forwards it once (a run that got it twice would exit at once,
      // without its checkpoint).
      ::setpgid(0, 0);
      if (!req.log_path.empty()) {
        const int fd = ::open(req.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd < 0 || ::dup2(fd, 1) < 0 || ::dup2(1, 2) < 0) err = errno;
        if (fd > 2) ::close(fd);
      }
      // The study's handlers are reset by execve; its blocked set is not.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      if (err == 0) {
        ::execve(path.c_str(), argv.data(), envp.data());
        err = errno;
      }
      const ssize_t ignored = ::write(pipe_fds[1], &err, sizeof(err));
      (void)ignored;
      ::_exit(127);
    }
    const int fork_err = errno;
    ::close(pipe_fds[1]);
    if (pid < 0) {
      ::close(pipe_fds[0]);
      TORCH_CHECK(false, "cannot start '", executable, "' for run ", req.run.name, ": fork: ",
                  std::strerror(fork_err));
    }
    const size_t slot = register_child(pid);
    // A stop signal that came between the worker's check and the registration.
    if (g_forwarding.load() && g_study_stop.load() != 0) ::kill(pid, g_study_stop.load());
    int exec_err = 0;
    ssize_t n;
    while ((n = ::read(pipe_fds[0], &exec_err, sizeof(exec_err))) < 0 && errno == EINTR) {
    }
    ::close(pipe_fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) {
        if (slot < kChildSlots) g_children[slot] = 0;
        TORCH_CHECK(false, "waitpid failed for run ", req.run.name, ": ", std::strerror(errno));
      }
    }
    if (slot < kChildSlots) g_children[slot] = 0;
    TORCH_CHECK(n <= 0, "cannot start '", executable, "' for run ", req.run.name, ": ",
                std::strerror(exec_err));
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 255;
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

namespace {

double json_loss(const nlohmann::json& j, const char* key, const std::string& file) {
  if (!j.contains(key) || j[key].is_null()) return std::numeric_limits<double>::infinity();
  const auto& v = j[key];
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    if (s == "inf" || s == "+inf" || s == "infinity" || s == "nan")
      return std::numeric_limits<double>::infinity();
  }
  TORCH_CHECK(false, file, ": '", key, "' must be a number, \"inf\" or null, got ", v.dump());
}

}  // namespace

RunResult read_run_result(const StudyRun& run) {
  RunResult r;
  r.run = run;
  const fs::path file = fs::path(run.dir) / "summary.json";
  if (!fs::exists(file)) return r;
  nlohmann::json j;
  try {
    std::ifstream in(file);
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "malformed run summary ", file.string(), ": ", e.what());
  }
  TORCH_CHECK(j.is_object(), "malformed run summary ", file.string(), ": not a JSON object");
  const std::string status = j.value("status", std::string("finished"));
  const bool diverged_flag = j.contains("diverged") && j["diverged"].is_boolean() && j["diverged"].get<bool>();
  r.final_val_loss = json_loss(j, "final_val_loss", file.string());
  r.best_val_loss = j.contains("best_val_loss") ? json_loss(j, "best_val_loss", file.string())
                                                 : r.final_val_loss;
  const bool diverged = diverged_flag || status == "diverged" || !std::isfinite(r.final_val_loss);
  r.status = diverged ? RunStatus::kDiverged : RunStatus::kFinished;
  if (diverged) r.final_val_loss = std::numeric_limits<double>::infinity();
  auto num = [&](const char* key) {
    return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
  };
  r.steps_done = static_cast<int64_t>(num("steps_done"));
  if (num("tokens_per_s") > 0) {
    r.throughput = num("tokens_per_s");
    r.throughput_unit = "tokens/s";
  } else if (num("samples_per_s") > 0) {
    r.throughput = num("samples_per_s");
    r.throughput_unit = "samples/s";
  }
  r.spectral_share = num("spectral_share");
  r.wall_s = num("wall_s");
  return r;
}

std::vector<RunResult> collect_results(const StudyConfig& config) {
  std::vector<RunResult> out;
  for (const auto& run : plan_study(config)) out.push_back(read_run_result(run));
  return out;
}

}  // namespace specopt
