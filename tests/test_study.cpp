// The study runner and report: config validation, planning and resumability (with an injected
// launcher that counts launches), aggregation and claim verdicts on synthetic run directories
// checked against independent computations, the report files, and the subprocess launcher.
#include "test_support.h"

#include "specopt/train/config.h"
#include "specopt/study/report.h"
#include "specopt/study/study.h"
#include "specopt/train/trainer.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <tuple>

namespace fs = std::filesystem;
using specopt::RunStatus;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

fs::path scratch_root() {
  return fs::temp_directory_path() / ("specopt_test_study_" + std::to_string(::getpid()));
}

// Removes this process' scratch directories at exit.
struct ScratchCleanup : ::testing::Environment {
  void TearDown() override { fs::remove_all(scratch_root()); }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

// A fresh empty directory per test.
fs::path scratch(const std::string& name) {
  const fs::path dir = scratch_root() / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path);
  f << text;
}

std::string read_file(const fs::path& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The three ways a diverged run may be written to summary.json (read_run_result, study.h).
enum class DivergedStyle { kInfString, kNullAndFlag, kStatusOnly };

void write_summary(const fs::path& run_dir, double final_loss,
                   DivergedStyle style = DivergedStyle::kInfString) {
  nlohmann::json j;
  const bool diverged = std::isinf(final_loss);
  j["steps_done"] = 10;
  j["wall_s"] = 1.5;
  j["samples_per_s"] = 1000.0;
  j["spectral_share"] = 0.02;
  if (!diverged) {
    j["status"] = "finished";
    j["final_val_loss"] = final_loss;
    j["best_val_loss"] = final_loss;
    j["diverged"] = false;
  } else if (style == DivergedStyle::kInfString) {
    j["status"] = "diverged";
    j["final_val_loss"] = "inf";
    j["diverged"] = true;
  } else if (style == DivergedStyle::kNullAndFlag) {
    j["status"] = "finished";  // the flag alone must be enough
    j["final_val_loss"] = nullptr;
    j["diverged"] = true;
  } else {
    j["status"] = "diverged";
    j["final_val_loss"] = 12.0;  // a finite last value before the blow-up is still diverged
  }
  write_file(run_dir / "summary.json", j.dump());
}

// A study config on disk: [study] + a minimal base train config.
fs::path write_study_config(const fs::path& dir, const std::string& study_table,
                            const std::string& extra = "") {
  const fs::path p = dir / "study.toml";
  // study_dir goes right under [study] (before any [study.lrs] sub-table).
  std::string text = study_table;
  const auto at = text.find("[study]\n");
  if (at != std::string::npos)
    text.insert(at + 8, "study_dir = \"" + (dir / "out").string() + "\"\n");
  write_file(p, text + "\n\n[model]\nkind = \"mlp\"\n\n[data]\nkind = \"fashion_mnist\"\n\n[train]\nsteps = 5\n" + extra);
  return p;
}

using specopt::testing::error_of;

}  // namespace

// ------------------------------------------------------------------ config ---

TEST(StudyConfig, LoadsGridsSeedsAndBaseConfig) {
  const auto dir = scratch("load");
  const auto path = write_study_config(dir, R"([study]
name = "demo"
variants = ["adam", "mSGDZ", "msgd:p=0.3"]
seeds = [3, 1]
workers = 2
threads = 4
stable_tolerance = 0.05
reference_tolerance = 0.03
reference = "ref/paper.json"
[study.lrs]
default = [3e-3, 1e-3]
mSGDZ = [0.1, 0.03])");
  const auto cfg = specopt::load_study_config(path.string(), {"train.steps=7", "study.workers=3"});
  EXPECT_EQ(cfg.name, "demo");
  EXPECT_EQ(cfg.variants, (std::vector<std::string>{"Adam", "mSGDZ", "msgd:p=0.3"}));
  EXPECT_EQ(cfg.lrs.at("Adam"), (std::vector<double>{1e-3, 3e-3}));  // sorted
  EXPECT_EQ(cfg.lrs.at("msgd:p=0.3"), (std::vector<double>{1e-3, 3e-3}));
  EXPECT_EQ(cfg.lrs.at("mSGDZ"), (std::vector<double>{0.03, 0.1}));
  EXPECT_EQ(cfg.seeds, (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(cfg.workers, 3);
  EXPECT_EQ(cfg.threads, 4);
  EXPECT_DOUBLE_EQ(cfg.stable_tolerance, 0.05);
  EXPECT_DOUBLE_EQ(cfg.reference_tolerance, 0.03);
  // Relative to the config file, not the working directory.
  EXPECT_EQ(cfg.reference, (dir / "ref" / "paper.json").lexically_normal().string());
  // The base config lost [study] and took the override.
  EXPECT_EQ(cfg.train_config_toml.find("[study]"), std::string::npos);
  EXPECT_EQ(cfg.train_config_toml.find("variants"), std::string::npos);
  EXPECT_NE(cfg.train_config_toml.find("steps = 7"), std::string::npos) << cfg.train_config_toml;
  EXPECT_NE(cfg.train_config_toml.find("mlp"), std::string::npos) << cfg.train_config_toml;

  const auto runs = specopt::plan_study(cfg);
  ASSERT_EQ(runs.size(), 3u * 2u * 2u);
  EXPECT_EQ(runs[0].name, "Adam_lr0.001_s3");
  EXPECT_EQ(runs[1].name, "Adam_lr0.001_s1");
  EXPECT_EQ(runs[4].name, "mSGDZ_lr0.03_s3");
  EXPECT_EQ(runs.back().name, "msgd-p-0.3_lr0.003_s1");
  EXPECT_EQ(runs[0].dir, (dir / "out" / "runs" / "Adam_lr0.001_s3").string());
  std::set<std::string> names;
  for (const auto& r : runs) names.insert(r.name);
  EXPECT_EQ(names.size(), runs.size());
}

TEST(StudyConfig, LrLabels) {
  EXPECT_EQ(specopt::lr_label(0.003), "0.003");
  EXPECT_EQ(specopt::lr_label(1e-5), "1e-5");
  EXPECT_EQ(specopt::lr_label(2.0), "2");
  EXPECT_EQ(specopt::lr_label(0.125), "0.125");
  EXPECT_EQ(specopt::lr_label(3e-4), "0.0003");
  EXPECT_EQ(specopt::run_name("AdamQ", 0.02, 7), "AdamQ_lr0.02_s7");
}

TEST(StudyConfig, PAxisExpandsFamiliesTimesPsWithFamilyGrids) {
  const auto dir = scratch("p_axis");
  const auto cfg = specopt::load_study_config(
      write_study_config(dir, "[study]\nfamilies = [\"Adam\", \"mSGD\"]\nps = [0.0, 0.125, 1.0]\n"
                              "[study.lrs]\nmSGDZ = [0.5]\n[study.lrs.family]\nAdam = [1e-2, 1e-3]\n"
                              "mSGD = [0.1]")
          .string());
  // Each (family, p) is a variant, named by the variant table where p has a name.
  EXPECT_EQ(cfg.variants, (std::vector<std::string>{"AdamZ", "adam:p=0.125", "Adam", "mSGDZ",
                                                     "msgd:p=0.125", "mSGD"}));
  EXPECT_EQ(cfg.lrs.at("adam:p=0.125"), (std::vector<double>{1e-3, 1e-2}));  // sorted
  EXPECT_EQ(cfg.lrs.at("msgd:p=0.125"), (std::vector<double>{0.1}));
  EXPECT_EQ(cfg.lrs.at("mSGDZ"), (std::vector<double>{0.5}));  // a variant's own grid wins
  EXPECT_EQ(specopt::plan_study(cfg)[2].name, "adam-p-0.125_lr0.001_s0");
  auto load = [&](const std::string& table) {
    return error_of([&] { specopt::load_study_config(write_study_config(dir, table).string()); });
  };
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\nps = [0.5]\nlrs = [1e-3]").find("not both"),
            std::string::npos);
  EXPECT_NE(load("[study]\nfamilies = [\"Adam\"]\nvariants = [\"Adam\"]\nlrs = [1e-3]")
                .find("study.families"),
            std::string::npos);
  EXPECT_NE(load("[study]\nfamilies = [\"AdamS\"]\nps = [0.5]\nlrs = [1e-3]").find("AdamS"),
            std::string::npos);
  EXPECT_NE(load("[study]\nps = [0.5, 0.5]\nlrs = [1e-3]").find("twice"), std::string::npos);
  EXPECT_NE(load("[study]\nps = [2.0]\nlrs = [1e-3]").find("study.ps"), std::string::npos);
}

TEST(StudyConfig, BadConfigsNameTheProblem) {
  const auto dir = scratch("bad");
  auto load = [&](const std::string& table) {
    return error_of([&] { specopt::load_study_config(write_study_config(dir, table).string()); });
  };
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\nlrs = [1e-3]\nworkerz = 2").find("study.workerz"),
            std::string::npos);
  EXPECT_NE(load("[study]\nvariants = []\nlrs = [1e-3]").find("study.variants"), std::string::npos);
  EXPECT_NE(load("[study]\nvariants = []\nlrs = [1e-3]").find("empty"), std::string::npos);
  EXPECT_NE(load("[study]\nvariants = [\"Adamm\"]\nlrs = [1e-3]").find("Adamm"), std::string::npos);
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\nlrs = [1e-3, -1.0]").find("study.lrs"),
            std::string::npos);
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\nlrs = []").find("study.lrs"), std::string::npos);
  // A per-variant grid for a variant that is not studied, and a variant without a grid.
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\n[study.lrs]\nAdam = [1e-3]\nmSGD = [0.1]")
                .find("study.lrs.mSGD"),
            std::string::npos);
  EXPECT_NE(load("[study]\nvariants = [\"Adam\", \"AdamZ\"]\n[study.lrs]\nAdam = [1e-3]").find("AdamZ"),
            std::string::npos);
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\nlrs = [1e-3]\nseeds = []").find("study.seeds"),
            std::string::npos);
  EXPECT_NE(load("[study]\nvariants = [\"Adam\"]\nlrs = [1e-3]\nworkers = 0").find("study.workers"),
            std::string::npos);
  EXPECT_NE(error_of([&] { specopt::load_study_config((dir / "nope.toml").string()); }).find("nope.toml"),
            std::string::npos);
  write_file(dir / "broken.toml", "[study\nvariants = 1");
  EXPECT_NE(error_of([&] { specopt::load_study_config((dir / "broken.toml").string()); }).find("broken.toml"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              specopt::load_study_config(
                  write_study_config(dir, "[study]\nvariants = [\"Adam\"]\nlrs = [1e-3]").string(),
                  {"study.lrs"});
            }).find("key=value"),
            std::string::npos);
}

// ---------------------------------------------------------------- resuming ---

namespace {

// Counts launches and plays the trainer: writes summary.json (loss = lr) unless told to fail.
struct FakeTrainer {
  std::mutex mu;
  std::vector<specopt::LaunchRequest> requests;
  std::set<std::string> fail;  // run names that "crash"

  specopt::Launcher launcher() {
    return [this](const specopt::LaunchRequest& req) {
      {
        std::lock_guard<std::mutex> lock(mu);
        requests.push_back(req);
      }
      if (fail.count(req.run.name)) return 1;
      write_summary(req.run.dir, 1.0 + req.run.lr);
      return 0;
    };
  }
  std::set<std::string> names() {
    std::set<std::string> s;
    for (const auto& r : requests) s.insert(r.run.name);
    return s;
  }
};

}  // namespace

TEST(StudyRunner, LaunchesOnlyUnfinishedRunsAndResumesPartialOnes) {
  const auto dir = scratch("resume");
  const auto path = write_study_config(
      dir, "[study]\nvariants = [\"Adam\", \"mSGD\"]\nlrs = [0.01, 0.1]\nseeds = [0, 1]\nworkers = 2\nthreads = 4");
  const auto cfg = specopt::load_study_config(path.string());
  const auto plan = specopt::plan_study(cfg);
  ASSERT_EQ(plan.size(), 8u);
  // Three finished, one with a checkpoint only, one with leftovers but no checkpoint.
  write_summary(plan[0].dir, 2.0);
  write_summary(plan[3].dir, 2.0);
  write_summary(plan[6].dir, kInf);  // a diverged run is finished too
  write_file(fs::path(plan[5].dir) / "checkpoint.pt", "x");
  write_file(fs::path(plan[7].dir) / "metrics.jsonl", "{\"step\": 1}\n");

  FakeTrainer fake;
  fake.fail = {plan[2].name};
  specopt::StudyRunOptions options;
  options.launcher = fake.launcher();
  const auto outcome = specopt::run_study(cfg, options);

  EXPECT_EQ(outcome.total, 8);
  EXPECT_EQ(outcome.skipped, 3);
  EXPECT_EQ(outcome.launched, 4);
  EXPECT_EQ(outcome.resumed, 1);
  EXPECT_EQ(outcome.failed, (std::vector<std::string>{plan[2].name}));
  EXPECT_EQ(fake.names(), (std::set<std::string>{plan[1].name, plan[2].name, plan[4].name,
                                                 plan[5].name, plan[7].name}));
  EXPECT_TRUE(fs::exists(fs::path(cfg.study_dir) / "train_base.toml"));
  for (const auto& req : fake.requests) {
    EXPECT_EQ(req.resume, req.run.name == plan[5].name) << req.run.name;
    EXPECT_EQ(req.threads, 2) << "4 threads over 2 workers";
    EXPECT_EQ(req.args, specopt::train_arguments(cfg, req.run, req.resume, 2));
    EXPECT_EQ(req.log_path, (fs::path(req.run.dir) / "train.log").string());
  }

  // Rerun: only the failed run is launched again.
  FakeTrainer again;
  options.launcher = again.launcher();
  options.workers = 1;
  const auto second = specopt::run_study(cfg, options);
  EXPECT_EQ(again.names(), (std::set<std::string>{plan[2].name}));
  EXPECT_EQ(second.skipped, 7);
  EXPECT_TRUE(second.failed.empty());
  EXPECT_EQ(again.requests.at(0).threads, 4);

  // And then nothing.
  FakeTrainer third;
  options.launcher = third.launcher();
  EXPECT_EQ(specopt::run_study(cfg, options).skipped, 8);
  EXPECT_TRUE(third.requests.empty());
}

TEST(StudyRunner, TrainArgumentsCarryTheGridPoint) {
  const auto dir = scratch("args");
  const auto cfg = specopt::load_study_config(
      write_study_config(dir, "[study]\nvariants = [\"AdamQ\"]\nlrs = [0.1]").string());
  const auto run = specopt::plan_study(cfg).at(0);
  const auto args = specopt::train_arguments(cfg, run, true, 3);
  auto has = [&](const std::string& a) { return std::find(args.begin(), args.end(), a) != args.end(); };
  EXPECT_EQ(args.at(0), "train");
  EXPECT_EQ(args.at(1), (fs::path(cfg.study_dir) / "train_base.toml").string());
  EXPECT_TRUE(has("optim.variant=\"AdamQ\""));
  EXPECT_TRUE(has("run.seed=0"));
  const auto threads = std::find(args.begin(), args.end(), "--threads");
  ASSERT_NE(threads, args.end());
  EXPECT_EQ(*std::next(threads), "3");
  EXPECT_TRUE(has("--resume"));
  EXPECT_TRUE(has(run.dir));
  // The lr is passed exactly.
  const auto it = std::find_if(args.begin(), args.end(),
                               [](const std::string& a) { return a.rfind("optim.lr_matrix=", 0) == 0; });
  ASSERT_NE(it, args.end());
  EXPECT_EQ(std::strtod(it->c_str() + 16, nullptr), 0.1);
}

TEST(StudyRunner, PerVariantOverridesGoOnlyToTheirVariant) {
  const auto dir = scratch("overrides");
  const auto cfg = specopt::load_study_config(
      write_study_config(dir, "[study]\nvariants = [\"Adam\", \"AdamQ\"]\nlrs = [0.1]\n"
                              "[study.overrides]\nadamq = [\"optim.lr_vector=6e-4\"]")
          .string());
  const auto runs = specopt::plan_study(cfg);
  const auto adam = specopt::train_arguments(cfg, runs.at(0), false, 1);
  const auto adamq = specopt::train_arguments(cfg, runs.at(1), false, 1);
  EXPECT_EQ(std::find(adam.begin(), adam.end(), "optim.lr_vector=6e-4"), adam.end());
  const auto extra = std::find(adamq.begin(), adamq.end(), "optim.lr_vector=6e-4");
  ASSERT_NE(extra, adamq.end());
  // Before the grid point's own keys, so those win over an override of the same key.
  EXPECT_LT(extra, std::find(adamq.begin(), adamq.end(), "optim.variant=\"AdamQ\""));
  // A misspelt train key in an override is caught when the config loads.
  const std::string err = error_of([&] {
    specopt::load_study_config(
        write_study_config(dir, "[study]\nvariants = [\"Adam\"]\nlrs = [0.1]\n"
                                "[study.overrides]\nAdam = [\"optim.lr_vectr=1\"]")
            .string());
  });
  EXPECT_NE(err.find("lr_vectr"), std::string::npos) << err;
  // And a misspelt base train key too.
  const std::string err2 = error_of([&] {
    specopt::load_study_config(
        write_study_config(dir, "[study]\nvariants = [\"Adam\"]\nlrs = [0.1]", "bach_size = 3\n")
            .string());
  });
  EXPECT_NE(err2.find("bach_size"), std::string::npos) << err2;
}

TEST(StudyRunner, SubprocessLauncherReportsExitStatusAndLogs) {
  const auto dir = scratch("spawn");
  auto launch = specopt::subprocess_launcher("/bin/sh");
  specopt::LaunchRequest req;
  req.run.name = "x";
  req.log_path = (dir / "log.txt").string();
  req.args = {"-c", "echo out; echo err 1>&2; exit 3"};
  EXPECT_EQ(launch(req), 3);
  const std::string log = read_file(dir / "log.txt");
  EXPECT_NE(log.find("out"), std::string::npos);
  EXPECT_NE(log.find("err"), std::string::npos);
  // The child's thread pools get the run's threads.
  req.threads = 3;
  req.args = {"-c", "echo omp=$OMP_NUM_THREADS blas=$OPENBLAS_NUM_THREADS"};
  EXPECT_EQ(launch(req), 0);
  EXPECT_NE(read_file(dir / "log.txt").find("omp=3 blas=3"), std::string::npos);
  req.args = {"-c", "kill -9 $$"};  // a crash is a status, not an exception
  EXPECT_EQ(launch(req), 128 + 9);
  EXPECT_ANY_THROW(specopt::subprocess_launcher("/nonexistent/specopt")(req));
}

// ---------------------------------------------------------------- analysis ---

namespace {

struct Synthetic {
  specopt::StudyConfig cfg;
  std::map<std::string, double> loss;  // run name → final val loss (inf = diverged), absent = missing
};

// Writes the run directories of a synthetic study with losses from `f(variant, lr, seed)`.
Synthetic make_synthetic(const std::string& name, const std::string& study_table,
                         const std::function<double(const specopt::StudyRun&)>& f,
                         const std::set<std::string>& missing = {}) {
  Synthetic s;
  const auto dir = scratch(name);
  s.cfg = specopt::load_study_config(write_study_config(dir, study_table).string());
  int k = 0;
  for (const auto& run : specopt::plan_study(s.cfg)) {
    if (missing.count(run.name)) continue;
    const double l = f(run);
    // Rotate through the three diverged spellings.
    write_summary(run.dir, l, static_cast<DivergedStyle>(k++ % 3));
    s.loss[run.name] = l;
  }
  return s;
}

}  // namespace

TEST(StudyAnalysis, AggregatesAgainstIndependentComputation) {
  std::mt19937 gen(42);
  std::uniform_real_distribution<double> noise(-0.05, 0.05);
  // Adam: bowl around lr 1e-2; mSGD: bowl around 0.3, diverges at lr 3.
  const std::set<std::string> missing = {"mSGD_lr0.1_s2"};
  auto f = [&](const specopt::StudyRun& r) {
    if (r.variant == "mSGD" && r.lr == 3.0 && r.seed == 1) return kInf;
    const double centre = r.variant == "Adam" ? 1e-2 : 0.3;
    const double d = std::log10(r.lr / centre);
    return (r.variant == "Adam" ? 1.0 : 1.3) + 0.5 * d * d + noise(gen);
  };
  const auto s = make_synthetic(
      "aggregate",
      "[study]\nvariants = [\"Adam\", \"mSGD\"]\nseeds = [0, 1, 2]\nstable_tolerance = 0.3\n"
      "[study.lrs]\nAdam = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]\nmSGD = [0.03, 0.1, 0.3, 1.0, 3.0]",
      f, missing);
  const auto results = specopt::collect_results(s.cfg);
  ASSERT_EQ(results.size(), 30u);
  for (const auto& r : results) {
    if (missing.count(r.run.name)) {
      EXPECT_EQ(r.status, RunStatus::kMissing);
      continue;
    }
    const double expected = s.loss.at(r.run.name);
    EXPECT_EQ(r.status, std::isinf(expected) ? RunStatus::kDiverged : RunStatus::kFinished) << r.run.name;
    EXPECT_EQ(r.final_val_loss, expected) << r.run.name;
  }
  const auto a = specopt::analyze_study(results, s.cfg.variants, 0.3);
  ASSERT_EQ(a.variants.size(), 2u);
  EXPECT_EQ(a.runs_total, 30);
  EXPECT_EQ(a.runs_missing, 1);
  EXPECT_EQ(a.runs_diverged, 1);
  EXPECT_EQ(a.runs_finished, 28);

  // Independent: one-pass sums in long double, std from Σx² − n·mean².
  std::map<std::string, std::map<double, std::pair<long double, long double>>> expect;
  std::map<std::string, std::map<double, int>> count;
  std::map<std::string, std::map<double, bool>> diverged;
  for (const auto& [name, l] : s.loss) {
    const auto us = name.find('_');
    const std::string v = name.substr(0, us);
    const double lr = std::stod(name.substr(us + 3, name.rfind('_') - us - 3));
    if (std::isinf(l)) {
      diverged[v][lr] = true;
      continue;
    }
    expect[v][lr].first += l;
    expect[v][lr].second += static_cast<long double>(l) * l;
    count[v][lr] += 1;
  }
  double global_best = kInf;
  std::map<std::string, std::pair<double, double>> best;  // variant → (lr, mean)
  for (const auto& v : a.variants) {
    ASSERT_EQ(v.cells.size(), 5u);
    best[v.variant] = {0.0, kInf};
    for (const auto& c : v.cells) {
      if (diverged[v.variant][c.lr]) {
        EXPECT_TRUE(std::isinf(c.mean)) << v.variant << " " << c.lr;
        EXPECT_EQ(c.n_diverged, 1);
        EXPECT_FALSE(c.stable);
        continue;
      }
      const int n = count[v.variant][c.lr];
      const long double mean = expect[v.variant][c.lr].first / n;
      const long double var = (expect[v.variant][c.lr].second - n * mean * mean) / (n - 1);
      EXPECT_EQ(static_cast<int>(c.losses.size()), n);
      EXPECT_NEAR(c.mean, static_cast<double>(mean), 1e-12) << v.variant << " " << c.lr;
      EXPECT_NEAR(c.std, std::sqrt(static_cast<double>(var)), 1e-9) << v.variant << " " << c.lr;
      if (mean < best[v.variant].second) best[v.variant] = {c.lr, static_cast<double>(mean)};
    }
    EXPECT_EQ(v.cells[v.best].lr, best[v.variant].first);
    global_best = std::min(global_best, best[v.variant].second);
  }
  EXPECT_DOUBLE_EQ(a.reference_level, global_best);
  EXPECT_EQ(a.variants[1].cells[1].n_missing, 1);
  EXPECT_EQ(a.variants[1].diverged_runs, 1);

  // Stable range, by hand: cells within (1 + 0.3)·L*, contiguous around the best.
  const double threshold = 1.3 * global_best;
  for (const auto& v : a.variants) {
    const auto& cells = v.cells;
    int lo = static_cast<int>(v.best), hi = lo;
    auto ok = [&](int i) { return std::isfinite(cells[i].mean) && cells[i].mean <= threshold; };
    if (!ok(lo)) {
      EXPECT_EQ(v.stable_points, 0);
      continue;
    }
    while (lo > 0 && ok(lo - 1)) --lo;
    while (hi < 4 && ok(hi + 1)) ++hi;
    EXPECT_EQ(v.stable_points, hi - lo + 1) << v.variant;
    EXPECT_NEAR(v.stable_decades, std::log10(cells[hi].lr / cells[lo].lr), 1e-12);
  }
  // With these bowls Adam (level 1.0) is stable from 1e-3 (+0.5·1² = 1.5 > 1.3: no) — so the
  // range is 3e-3..3e-2 give or take noise; mSGD (level 1.3 ≈ 1.3·L*) has at most its best point.
  EXPECT_GE(a.variants[0].stable_points, 3);
  EXPECT_LE(a.variants[1].stable_points, 1);
}

// Decade grid 1e-5 … 10 around 1e-2; d = log10(lr / 1e-2) ∈ {-3, …, 3}. Seeds shift every loss
// by 0.002 · seed.
constexpr const char* kDecadeGrid = "lrs = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]\n";

TEST(StudyAnalysis, ClaimsSupportedWhenTheDataSaySo) {
  // Adam flat over |d| ≤ 2, AdamZ the same 0.02 higher, mSGD one point (diverging from 0.1),
  // mSGDZ |d| ≤ 1: wider Adam family, p < 1 widens mSGD, p = 0 never beats Adam.
  auto f = [](const specopt::StudyRun& r) {
    const double d = std::round(std::log10(r.lr / 1e-2));
    const double shift = 0.002 * static_cast<double>(r.seed);
    const auto flat = [&](double level, double half) {
      return std::abs(d) <= half ? level + 0.01 * d * d + shift : 1.0 + 0.5 * d * d + shift;
    };
    if (r.variant == "Adam") return flat(1.0, 2);
    if (r.variant == "AdamZ") return flat(1.02, 2);
    if (r.variant == "mSGD") return r.lr >= 1e-1 ? kInf : flat(1.0, 0);
    return flat(1.0, 1);  // mSGDZ
  };
  const auto s = make_synthetic(
      "claims_hold",
      std::string("[study]\nvariants = [\"Adam\", \"AdamZ\", \"mSGD\", \"mSGDZ\"]\n"
                  "seeds = [0, 1, 2]\nstable_tolerance = 0.05\n") + kDecadeGrid,
      f);
  const auto a = specopt::analyze_study(specopt::collect_results(s.cfg), s.cfg.variants, 0.05);
  ASSERT_EQ(a.claims.size(), 3u);
  // The seed-mean table: Adam 1 + 0.01·d² + 0.002 ≤ 1.05 · 1.002 for |d| ≤ 2 (4 decades).
  EXPECT_EQ(a.variants[0].stable_points, 5);
  EXPECT_NEAR(a.variants[0].stable_decades, 4.0, 1e-12);
  EXPECT_EQ(a.variants[2].stable_points, 1);
  EXPECT_EQ(a.variants[2].diverged_runs, 9);
  // Verdicts at 5 %, 2.5 % and 10 %; per-seed widths (each decade point counts one decade):
  // Adam 5, AdamZ 3 (1.06 > 1.05 at |d| = 2), mSGD 1, mSGDZ 3.
  ASSERT_EQ(a.verdicts.size(), 3u);
  const auto& v = a.verdicts.front();
  EXPECT_EQ(v.tolerance, 0.05);
  const std::vector<double> widths = {5.0, 3.0, 1.0, 3.0};
  for (size_t k = 0; k < widths.size(); ++k) {
    EXPECT_NEAR(v.widths[k].width.estimate, widths[k], 1e-9) << v.widths[k].variant;
    EXPECT_TRUE(v.widths[k].bracketed) << v.widths[k].bracket_note;
  }
  EXPECT_NEAR(a.claims[0].difference.estimate, 4.0 - 2.0, 1e-9);
  EXPECT_NEAR(a.claims[1].difference.estimate, 2.0, 1e-9);
  for (const auto& c : a.claims) EXPECT_EQ(c.verdict, specopt::Verdict::kSupported) << c.evidence;
}

TEST(StudyAnalysis, ClaimsContradictedWhenTheDataSaySo) {
  // The reverse world: mSGD flat over |d| ≤ 2, mSGDS over |d| ≤ 1, Adam one point at 1.1
  // (unstable), AdamZ one point at 1.0: AdamZ beats Adam by 0.1 in every seed.
  auto f = [](const specopt::StudyRun& r) {
    const double d = std::round(std::log10(r.lr / 1e-2));
    const double shift = 0.002 * static_cast<double>(r.seed);
    const auto flat = [&](double level, double half) {
      return std::abs(d) <= half ? level + 0.005 * d * d + shift : 1.0 + 0.5 * d * d + shift;
    };
    if (r.variant == "mSGD") return flat(1.0, 2);
    if (r.variant == "mSGDS") return flat(1.0, 1);
    if (r.variant == "Adam") return r.lr >= 1.0 ? kInf : flat(1.1, 0);
    return flat(1.0, 0);  // AdamZ
  };
  const auto s = make_synthetic(
      "claims_fail",
      std::string("[study]\nvariants = [\"Adam\", \"AdamZ\", \"mSGD\", \"mSGDS\"]\n"
                  "seeds = [0, 1, 2]\nstable_tolerance = 0.05\n") + kDecadeGrid,
      f);
  const auto a = specopt::analyze_study(specopt::collect_results(s.cfg), s.cfg.variants, 0.05);
  // Adam family (0 + 1) / 2 against mSGD family (5 + 3) / 2; mSGDS 3 against mSGD 5.
  EXPECT_NEAR(a.claims[0].difference.estimate, 0.5 - 4.0, 1e-9);
  EXPECT_NEAR(a.claims[1].difference.estimate, -2.0, 1e-9);
  EXPECT_NEAR(a.claims[2].difference.estimate, 0.1, 1e-9);
  for (const auto& c : a.claims) EXPECT_EQ(c.verdict, specopt::Verdict::kContradicted) << c.evidence;
}

TEST(StudyAnalysis, ClaimsNotTestedWithoutTheNeededVariants) {
  const auto s = make_synthetic("claims_na", "[study]\nvariants = [\"AdamS\"]\nlrs = [1e-3, 1e-2]",
                                [](const specopt::StudyRun& r) { return 1.0 + r.lr; });
  const auto a = specopt::analyze_study(specopt::collect_results(s.cfg), s.cfg.variants, 0.02);
  for (const auto& c : a.claims) EXPECT_EQ(c.verdict, specopt::Verdict::kNotTested) << c.number;
}

TEST(StudyAnalysis, MalformedSummaryNamesTheFile) {
  const auto s = make_synthetic("malformed", "[study]\nvariants = [\"Adam\"]\nlrs = [1e-3]",
                                [](const specopt::StudyRun&) { return 1.0; });
  const auto run = specopt::plan_study(s.cfg).at(0);
  write_file(fs::path(run.dir) / "summary.json", "{\"final_val_loss\": ");
  EXPECT_NE(error_of([&] { specopt::read_run_result(run); }).find("summary.json"), std::string::npos);
  // A value of the wrong JSON type is an error naming the file and the key (read_summary,
  // run_dir.h), never a diverged run nor a default.
  const std::vector<std::pair<std::string, std::string>> wrong_types = {
      {"{\"final_val_loss\": [1]}", "final_val_loss"},
      {"{\"final_val_loss\": {\"v\": 1}}", "final_val_loss"},
      {"{\"final_val_loss\": \"low\"}", "final_val_loss"},
      {"{\"final_val_loss\": 1.0, \"best_val_loss\": true}", "best_val_loss"},
      {"{\"final_val_loss\": 1.0, \"final_val_accuracy\": \"high\"}", "final_val_accuracy"},
      {"{\"final_val_loss\": 1.0, \"status\": 3}", "status"},
      {"{\"final_val_loss\": 1.0, \"steps_done\": \"10\"}", "steps_done"},
  };
  for (const auto& [text, key] : wrong_types) {
    write_file(fs::path(run.dir) / "summary.json", text);
    const std::string err = error_of([&] { specopt::read_run_result(run); });
    EXPECT_NE(err.find("summary.json"), std::string::npos) << text << ": " << err;
    EXPECT_NE(err.find("'" + key + "'"), std::string::npos) << text << ": " << err;
  }
  write_file(fs::path(run.dir) / "summary.json", "[1.0]");
  EXPECT_NE(error_of([&] { specopt::read_run_result(run); }).find("summary.json"), std::string::npos);
  // "nan" (what the trainer writes for a NaN loss) is a divergence too.
  write_file(fs::path(run.dir) / "summary.json", "{\"final_val_loss\": \"nan\", \"status\": \"finished\"}");
  EXPECT_EQ(specopt::read_run_result(run).status, RunStatus::kDiverged);
}

// The paper's published numbers, kept in the repository (configs/reference/README.md).
const fs::path kPaperReference = fs::path(SPECOPT_SOURCE_DIR) / "configs" / "reference" / "paper_gpt2_124m.json";

// Every preset's "vs paper" section survives a fresh clone: its reference resolves to the file above.
TEST(StudyConfig, PresetsUseTheReferenceInTheRepository) {
  int presets = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(SPECOPT_SOURCE_DIR) / "configs" / "study")) {
    if (entry.path().extension() != ".toml") continue;
    ++presets;
    const auto cfg = specopt::load_study_config(entry.path().string());
    if (entry.path().filename() == "p-sweep.toml") {  // p ∈ {0, ⅛, …, 1}: no published counterpart
      EXPECT_FALSE(cfg.reference_configured);
      continue;
    }
    ASSERT_TRUE(cfg.reference_configured) << entry.path();
    ASSERT_TRUE(fs::exists(cfg.reference)) << entry.path() << ": " << cfg.reference;
    EXPECT_TRUE(fs::equivalent(cfg.reference, kPaperReference)) << entry.path() << ": " << cfg.reference;
  }
  EXPECT_GE(presets, 3);
}

namespace {

// Every field of a study config but where it was loaded from (config_path, set_overrides:
// already applied), for comparisons.
auto study_fields_of(const specopt::StudyConfig& c) {
  return std::tie(c.name, c.variants, c.lrs, c.overrides, c.seeds, c.workers, c.threads, c.study_dir,
                  c.reference, c.reference_configured, c.stable_tolerance, c.reference_tolerance,
                  c.train_config_toml);
}

}  // namespace

// study_config_to_toml writes a file that loads to the same study: every preset, and a config
// that sets every [study] key to a value other than its default.
TEST(StudyConfig, PresetsRoundTripThroughTheirPrintedConfig) {
  const auto dir = scratch("round_trip");
  std::vector<fs::path> configs;
  for (const auto& entry : fs::directory_iterator(fs::path(SPECOPT_SOURCE_DIR) / "configs" / "study"))
    if (entry.path().extension() == ".toml") configs.push_back(entry.path());
  ASSERT_GE(configs.size(), 3u);
  write_file(dir / "ref" / "paper.json", "{}");
  configs.push_back(write_study_config(dir, R"([study]
name = "every-key"
variants = ["AdamQ", "msgd:p=0.3", "mSGD"]
seeds = [4, 2]
workers = 3
threads = 5
reference = "ref/paper.json"
stable_tolerance = 0.07
reference_tolerance = 0.25
[study.lrs]
default = [0.5]
AdamQ = [1e-3, 3e-4]
[study.lrs.family]
mSGD = [0.1, 0.3]
[study.overrides]
"msgd:p=0.3" = ["optim.lr_vector=6e-4", "train.steps=3"])"));
  for (const auto& path : configs) {
    const auto cfg = specopt::load_study_config(path.string());
    const std::string text = specopt::study_config_to_toml(cfg);
    write_file(dir / "printed.toml", text);
    const auto back = specopt::load_study_config((dir / "printed.toml").string());
    EXPECT_TRUE(study_fields_of(cfg) == study_fields_of(back))
        << path << ":\n" << text << "\nloads back as\n" << specopt::study_config_to_toml(back);
    EXPECT_EQ(specopt::study_config_to_toml(back), text);
  }
  // The last one really has every key away from its default.
  const auto cfg = specopt::load_study_config(configs.back().string());
  const specopt::StudyConfig defaults;
  EXPECT_EQ(cfg.lrs.at("AdamQ"), (std::vector<double>{3e-4, 1e-3}));
  EXPECT_EQ(cfg.lrs.at("msgd:p=0.3"), (std::vector<double>{0.1, 0.3}));
  EXPECT_EQ(cfg.overrides.at("msgd:p=0.3").size(), 2u);
  EXPECT_NE(cfg.seeds, defaults.seeds);
  EXPECT_NE(cfg.workers, defaults.workers);
  EXPECT_NE(cfg.threads, defaults.threads);
  EXPECT_NE(cfg.stable_tolerance, defaults.stable_tolerance);
  EXPECT_NE(cfg.reference_tolerance, defaults.reference_tolerance);
  EXPECT_TRUE(cfg.reference_configured);
  // The CLI prints the same text.
  const std::string log = (dir / "print.log").string();
  ASSERT_EQ(specopt::testing::wait_exit_code(specopt::testing::spawn_cli(
                {"study", configs.back().string(), "--print-config"}, log)),
            0);
  EXPECT_EQ(read_file(log), specopt::study_config_to_toml(cfg));
}

// docs/study.md's table of [study] keys names every key the config reads.
TEST(StudyConfig, DocsTableListsEveryKey) {
  const std::string docs = read_file(fs::path(SPECOPT_SOURCE_DIR) / "docs" / "study.md");
  const auto table = docs.find("| key | default | meaning |");
  ASSERT_NE(table, std::string::npos);
  const std::string rows = docs.substr(table, docs.find("\n\n", table) - table);
  const auto keys = specopt::study_config_keys();
  EXPECT_EQ(keys.size(), 13u);
  for (const auto& key : keys)
    EXPECT_TRUE(rows.find("`" + key + "`") != std::string::npos ||
                rows.find("`[study." + key + "]`") != std::string::npos)
        << key;
}

TEST(StudyAnalysis, PaperReferenceOneSeedLeansTowardsAllThreeClaims) {
  const fs::path ref = kPaperReference;
  const auto results = specopt::reference_results(ref.string());
  const auto variants = specopt::reference_variants(ref.string());
  ASSERT_EQ(variants, (std::vector<std::string>{"Adam", "AdamS", "AdamQ", "AdamZ", "mSGD", "mSGDS",
                                                 "mSGDQ", "mSGDZ"}));
  ASSERT_EQ(results.size(), 48u);
  const auto a = specopt::analyze_study(results, variants, 0.02);
  // Read off the published table by hand: best AdamS 2.870 at 1e-2 is L*; mSGDS diverged at 0.3.
  EXPECT_DOUBLE_EQ(a.reference_level, 2.870);
  EXPECT_EQ(a.variants[1].cells[a.variants[1].best].lr, 1e-2);
  EXPECT_EQ(a.variants[3].cells[a.variants[3].best].lr, 7e-3);
  EXPECT_EQ(a.variants[5].diverged_runs, 1);
  // 1.02 · 2.870 = 2.9274: mSGD (best 3.092) has no stable lr; Adam is stable on 6e-4..8e-3.
  EXPECT_EQ(a.variants[4].stable_points, 0);
  EXPECT_EQ(a.variants[0].stable_points, 5);
  EXPECT_NEAR(a.variants[0].stable_decades, std::log10(8e-3 / 6e-4), 1e-12);
  // One seed: every verdict is inconclusive; the point estimates lean towards all three claims.
  // Adam's grid has no clear rise at its smallest lr (2.884 at 6e-4 against 1.02 · 2.871), so
  // the claims involving Adam also name its grid to widen.
  for (const auto& c : a.claims) {
    EXPECT_EQ(c.verdict, specopt::Verdict::kInconclusive) << c.evidence;
    EXPECT_EQ(c.point_verdict, specopt::Verdict::kSupported) << c.evidence;
  }
  EXPECT_FALSE(a.verdicts.front().widths[0].bracketed);
  EXPECT_EQ(a.claims[2].widen.front(), "Adam");
  // Adam's stable run 6e-4..8e-3, each point counting to halfway (in log lr) to its neighbours,
  // mirrored below the smallest lr.
  const double l = std::log10(6e-4), r = std::log10(3e-3);
  EXPECT_NEAR(a.verdicts.front().widths[0].per_seed.at(0),
              0.5 * (std::log10(8e-3) + std::log10(1e-2)) - (l - 0.5 * (r - l)), 1e-12);
}

// ------------------------------------------------------------------ report ---

// The report's header names the command that made it, --set overrides included, and the base
// train config is written with shortest round-trip floats (0.003, not 0.0030000000000000001).
TEST(StudyReport, HeaderListsTheSetOverrides) {
  const auto dir = scratch("header");
  const std::vector<std::string> sets = {"train.steps=3", "optim.lr_vector=0.003"};
  const auto cfg = specopt::load_study_config(
      write_study_config(dir, "[study]\nvariants = [\"Adam\"]\nlrs = [0.01]").string(), sets);
  EXPECT_EQ(cfg.set_overrides, sets);
  EXPECT_NE(cfg.train_config_toml.find("lr_vector = 0.003\n"), std::string::npos) << cfg.train_config_toml;
  const auto results = specopt::collect_results(cfg);
  specopt::ReportOptions opt;
  opt.plots = false;
  const std::string md =
      read_file(specopt::write_study_report(cfg, specopt::analyze_study(results, cfg.variants, 0.02), results, opt));
  const std::string command =
      "command `specopt study " + cfg.config_path + " --set train.steps=3 --set optim.lr_vector=0.003`";
  EXPECT_NE(md.find(command), std::string::npos) << md.substr(0, 400);
  const auto j = nlohmann::json::parse(read_file(fs::path(cfg.study_dir) / "analysis.json"));
  EXPECT_EQ(j["set"], nlohmann::json(sets));
}

// Image tasks: the summary table gets the mean validation accuracy at each variant's best lr
// (finished seeds only), runs.csv the accuracy of every run.
TEST(StudyReport, AccuracyColumnAtTheBestLr) {
  auto s = make_synthetic("accuracy", "[study]\nvariants = [\"Adam\", \"mSGD\"]\nseeds = [0, 1]\nlrs = [0.01, 0.1]",
                          [](const specopt::StudyRun& r) { return r.variant == "Adam" ? 1.0 + r.lr : 2.0 - r.lr; });
  for (const auto& run : specopt::plan_study(s.cfg)) {
    auto j = nlohmann::json::parse(read_file(fs::path(run.dir) / "summary.json"));
    j["final_val_accuracy"] = (run.variant == "Adam" ? 0.5 : 0.7) + 0.1 * run.seed + run.lr;
    if (run.variant == "mSGD") j.erase("final_val_accuracy");  // e.g. written by an older trainer
    write_file(fs::path(run.dir) / "summary.json", j.dump());
  }
  const auto results = specopt::collect_results(s.cfg);
  specopt::ReportOptions opt;
  opt.plots = false;
  const std::string md =
      read_file(specopt::write_study_report(s.cfg, specopt::analyze_study(results, s.cfg.variants, 0.02), results, opt));
  EXPECT_NE(md.find("| best final val loss | val accuracy at best lr (mean) | stable lr range |"), std::string::npos)
      << md;
  // Adam's best lr is 0.01: seeds 0 and 1 → (0.51 + 0.61) / 2; mSGD has none.
  EXPECT_NE(md.find(fmt::format("| {:.4f} |", (0.51 + 0.61) / 2)), std::string::npos) << md;
  EXPECT_NE(md.find("| – |"), std::string::npos) << md;
  const std::string runs = read_file(fs::path(s.cfg.study_dir) / "runs.csv");
  EXPECT_NE(runs.find(",final_val_accuracy\n"), std::string::npos) << runs;
  EXPECT_NE(runs.find(",0.61\n"), std::string::npos) << runs;
}

TEST(StudyReport, WritesTablesThatMatchTheAnalysis) {
  auto s = make_synthetic(
      "report",
      "[study]\nvariants = [\"Adam\", \"mSGD\"]\nseeds = [0, 1]\nlrs = [0.01, 0.1]\n"
      "reference = \"missing/paper.json\"",
      [](const specopt::StudyRun& r) {
        return r.variant == "mSGD" && r.lr == 0.1 && r.seed == 1 ? kInf : 1.0 + r.lr + 0.001 * r.seed;
      });
  for (const auto& run : specopt::plan_study(s.cfg))
    write_file(fs::path(run.dir) / "metrics.jsonl",
               "{\"step\": 1, \"train_loss\": 2.5}\n{\"step\": 2, \"train_loss\": 2.0, \"val_loss\": 1.9}\n");
  const auto results = specopt::collect_results(s.cfg);
  const auto a = specopt::analyze_study(results, s.cfg.variants, s.cfg.stable_tolerance);
  specopt::ReportOptions opt;
  opt.plot_script = std::string(SPECOPT_SOURCE_DIR) + "/scripts/plot_study.py";
  opt.plots = fs::exists("/usr/bin/python3");
  const auto report = specopt::write_study_report(s.cfg, a, results, opt);
  const fs::path dir = s.cfg.study_dir;
  const std::string md = read_file(report);
  EXPECT_NE(md.find("inf (1/2 diverged)"), std::string::npos) << md;
  EXPECT_NE(md.find("not found"), std::string::npos) << "missing reference is noted";
  // The verdict table comes first, then the evidence.
  EXPECT_LT(md.find("## Verdicts"), md.find("## Evidence"));
  EXPECT_LT(md.find("## Evidence"), md.find("## Final validation loss per learning rate"));

  // results.csv: one row per (variant, lr), values as analysed.
  std::ifstream csv(dir / "results.csv");
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "variant,family,p,lr,n_seeds,n_diverged,n_missing,mean_val_loss,std_val_loss,stable,best");
  std::vector<std::vector<std::string>> rows;
  while (std::getline(csv, line)) {
    std::vector<std::string> cols;
    std::stringstream ss(line);
    for (std::string c; std::getline(ss, c, ',');) cols.push_back(c);
    if (line.back() == ',') cols.push_back("");
    rows.push_back(cols);
  }
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0][0], "Adam");
  EXPECT_NEAR(std::stod(rows[0][7]), 1.0105, 1e-6);            // mean of 1.01, 1.011
  EXPECT_NEAR(std::stod(rows[0][8]), std::sqrt(2 * 0.0005 * 0.0005), 1e-6);  // sample std
  EXPECT_EQ(rows[0][10], "1");                                   // best
  EXPECT_EQ(rows[3][0], "mSGD");
  EXPECT_EQ(rows[3][5], "1");                                    // n_diverged
  EXPECT_EQ(rows[3][7], "inf");
  // curves.csv: the two seeds at each variant's best lr, two points each.
  std::ifstream curves(dir / "curves.csv");
  int n_lines = 0;
  while (std::getline(curves, line)) ++n_lines;
  EXPECT_EQ(n_lines, 1 + 2 * 2 * 2);
  const auto j = nlohmann::json::parse(read_file(dir / "analysis.json"));
  ASSERT_EQ(j["verdicts"].size(), a.verdicts.size());
  EXPECT_EQ(j["verdicts"][0]["claims"].size(), 3u);
  EXPECT_EQ(j["verdicts"][0]["claims"][0]["verdict"], specopt::verdict_name(a.claims[0].verdict));
  // verdicts.csv: one row per tolerance and claim; widths.csv: one per tolerance and variant.
  for (const auto& [file, rows_expected] :
       {std::pair<const char*, size_t>{"verdicts.csv", 3 * a.verdicts.size()},
        {"widths.csv", 2 * a.verdicts.size()}}) {
    std::ifstream in(dir / file);
    size_t n = 0;
    while (std::getline(in, line)) ++n;
    EXPECT_EQ(n, 1 + rows_expected) << file;
  }
  EXPECT_EQ(j["variants"][1]["diverged_runs"], 1);
  if (opt.plots) {
    EXPECT_TRUE(fs::exists(dir / "lr_sweep.png")) << read_file(dir / "plot.log");
    EXPECT_TRUE(fs::exists(dir / "curves.png")) << read_file(dir / "plot.log");
  }
}

// ------------------------------------------------------------- end to end ---

// Every shipped preset loads and its base config passes the trainer's validation.
TEST(StudyPresets, AllPresetsLoad) {
  const fs::path dir = fs::path(SPECOPT_SOURCE_DIR) / "configs" / "study";
  int n = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".toml") continue;
    const auto cfg = specopt::load_study_config(entry.path().string());
    EXPECT_GE(cfg.variants.size(), 8u) << entry.path();
    for (const auto& v : cfg.variants) EXPECT_GE(cfg.lrs.at(v).size(), 5u) << entry.path() << " " << v;
    ++n;
  }
  EXPECT_GE(n, 5);
}

// The CPU studies' designs (issue 16): the quick study ≥ 5 lrs per variant at most half a decade
// apart (1-3-10) and ≥ 3 seeds; kjv-gpt-small ≥ 7 lrs spanning ≥ 2 decades, at most half a decade apart,
// 3 seeds, all 8 variants; the p-sweep both families at six values of p, ≥ 4 lrs, 3 seeds.
TEST(StudyPresets, CpuStudyDesigns) {
  const fs::path dir = fs::path(SPECOPT_SOURCE_DIR) / "configs" / "study";
  auto check_grids = [](const specopt::StudyConfig& c, size_t min_lrs, double min_decades) {
    for (const auto& v : c.variants) {
      const auto& g = c.lrs.at(v);
      EXPECT_GE(g.size(), min_lrs) << c.name << " " << v;
      EXPECT_GE(std::log10(g.back() / g.front()), min_decades - 1e-9) << c.name << " " << v;
      for (size_t k = 1; k < g.size(); ++k)
        // Half a decade in the 1-3-10 spelling: log10(3) = 0.477 and log10(10/3) = 0.523.
        EXPECT_LE(std::log10(g[k] / g[k - 1]), std::log10(10.0 / 3.0) + 1e-9)
            << c.name << " " << v << " " << g[k];
    }
    EXPECT_GE(c.seeds.size(), 3u) << c.name;
  };
  const auto quick = specopt::load_study_config((dir / "fmnist-quick.toml").string());
  EXPECT_EQ(quick.variants.size(), 8u);
  check_grids(quick, 5, 2.0);
  const auto small = specopt::load_study_config((dir / "kjv-gpt-small.toml").string());
  EXPECT_EQ(small.variants.size(), 8u);
  check_grids(small, 7, 2.0);
  const auto ps = specopt::load_study_config((dir / "p-sweep.toml").string());
  EXPECT_EQ(ps.variants.size(), 12u);
  check_grids(ps, 4, 1.5);
}

// A real tiny study through the CLI binary: 2 variants × 2 lrs × 1 seed, a few steps each.
TEST(StudyEndToEnd, TinyStudyRunsResumesAndReports) {
  const auto dir = scratch("e2e");
  const fs::path cfg_path = dir / "tiny.toml";
  write_file(cfg_path, "[study]\nname = \"tiny\"\nvariants = [\"Adam\", \"mSGDZ\"]\nseeds = [0]\n"
                       "workers = 2\nthreads = 2\nstudy_dir = \"" + (dir / "out").string() + "\"\n"
                       "[study.lrs]\nAdam = [1e-3, 1e-2]\nmSGDZ = [0.01, 0.1]\n\n"
                       "[model]\nkind = \"mlp\"\nhidden = [16]\n\n"
                       "[data]\nkind = \"fashion_mnist\"\ntrain_limit = 512\nval_limit = 256\n\n"
                       "[train]\nsteps = 4\nbatch_size = 32\nwarmup_steps = 1\neval_every = 2\n"
                       "eval_batches = 0\nlog_every = 1\ncheckpoint_every = 4\n");
  const auto cfg = specopt::load_study_config(cfg_path.string());
  specopt::StudyRunOptions options;
  options.executable = SPECOPT_CLI_PATH;
  const auto first = specopt::run_study(cfg, options);
  ASSERT_TRUE(first.failed.empty()) << read_file(fs::path(cfg.study_dir) / "runs" / first.failed[0] / "train.log");
  EXPECT_EQ(first.launched, 4);
  for (const auto& run : specopt::plan_study(cfg)) {
    const auto r = specopt::read_run_result(run);
    EXPECT_EQ(r.status, RunStatus::kFinished) << run.name;
    EXPECT_TRUE(std::isfinite(r.final_val_loss)) << run.name;
    EXPECT_EQ(r.steps_done, 4);
    // The trainer ran the grid point it was given.
    const auto s = nlohmann::json::parse(read_file(fs::path(run.dir) / "summary.json"));
    EXPECT_EQ(s["variant"], run.variant);
    EXPECT_EQ(s["lr_matrix"].get<double>(), run.lr);
  }

  // An interrupted run (checkpoint, no summary) is resumed, the others skipped.
  const auto victim = specopt::plan_study(cfg).at(2);
  fs::remove(fs::path(victim.dir) / "summary.json");
  const auto second = specopt::run_study(cfg, options);
  EXPECT_EQ(second.skipped, 3);
  EXPECT_EQ(second.resumed, 1);
  EXPECT_EQ(second.launched, 0);
  EXPECT_TRUE(second.failed.empty());
  EXPECT_EQ(specopt::run_state(victim.dir), specopt::RunState::kFinished);

  const auto results = specopt::collect_results(cfg);
  const auto a = specopt::analyze_study(results, cfg.variants, cfg.stable_tolerance);
  EXPECT_EQ(a.runs_finished + a.runs_diverged, 4);
  specopt::ReportOptions ro;
  ro.plots = false;
  const auto report = read_file(specopt::write_study_report(cfg, a, results, ro));
  EXPECT_NE(report.find("mSGDZ"), std::string::npos);
  // curves.csv holds the 4 logged steps of the best-lr run of each variant.
  std::ifstream curves(fs::path(cfg.study_dir) / "curves.csv");
  int lines = 0;
  for (std::string line; std::getline(curves, line);) ++lines;
  EXPECT_GE(lines, 1 + 2 * 4);
}

// ------------------------------------------------------ signals and orphans ---

namespace {

// Three long runs (one worker): long enough that a signal always finds the
// first one running and the others not started.
specopt::StudyConfig long_study(const fs::path& dir) {
  const fs::path cfg_path = dir / "long.toml";
  write_file(cfg_path, "[study]\nname = \"long\"\nvariants = [\"Adam\"]\nseeds = [0, 1, 2]\n"
                       "workers = 1\nthreads = 1\nstudy_dir = \"" + (dir / "out").string() + "\"\n"
                       "[study.lrs]\nAdam = [1e-3]\n\n"
                       "[model]\nkind = \"mlp\"\nhidden = [16]\n\n"
                       "[data]\nkind = \"fashion_mnist\"\ntrain_limit = 2048\nval_limit = 256\n\n"
                       "[train]\nsteps = 100000\nbatch_size = 32\nwarmup_steps = 1\neval_every = 100000\n"
                       "eval_batches = 2\nlog_every = 1\ncheckpoint_every = 0\n");
  return specopt::load_study_config(cfg_path.string());
}

// The PID in RUN_DIR/lock once the run's trainer has started and logged a few steps, else 0.
pid_t running_trainer(const specopt::StudyRun& run, double seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string lock = read_file(fs::path(run.dir) / "lock");
    std::ifstream metrics(fs::path(run.dir) / "metrics.jsonl");
    int rows = 0;
    for (std::string line; std::getline(metrics, line);) ++rows;
    if (!lock.empty() && rows >= 3) return static_cast<pid_t>(std::stol(lock));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return 0;
}

bool alive(pid_t pid) {
  // Reparented children are reaped by init; a zombie counts as gone.
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (stat.empty()) return false;
  const auto close = stat.rfind(')');
  return close == std::string::npos || stat.substr(close + 2, 1) != "Z";
}

}  // namespace

TEST(StudySignals, SigtermIsForwardedToTheRunAndNoNewRunStarts) {
  const auto dir = scratch("sigterm");
  const auto cfg = long_study(dir);
  const auto plan = specopt::plan_study(cfg);
  ASSERT_EQ(plan.size(), 3u);
  const pid_t study = specopt::testing::spawn_cli({"study", (dir / "long.toml").string(), "--no-plots"},
                                                  (dir / "study.log").string());
  const pid_t child = running_trainer(plan[0]);
  ASSERT_GT(child, 0) << read_file(dir / "study.log");
  ::kill(study, SIGTERM);  // the study only: it must pass the signal on
  EXPECT_EQ(specopt::testing::wait_exit_code(study), specopt::kExitInterrupted) << read_file(dir / "study.log");
  EXPECT_NE(read_file(dir / "study.log").find("1 run(s) interrupted"), std::string::npos)
      << read_file(dir / "study.log");
  // The run checkpointed and stopped (exit 75), and it is resumable.
  EXPECT_NE(read_file(fs::path(plan[0].dir) / "train.log").find("interrupted by signal 15"), std::string::npos)
      << read_file(fs::path(plan[0].dir) / "train.log");
  EXPECT_EQ(specopt::run_state(plan[0].dir), specopt::RunState::kPartial);
  EXPECT_FALSE(alive(child));
  // No other run was started.
  for (size_t i = 1; i < plan.size(); ++i) EXPECT_FALSE(fs::exists(fs::path(plan[i].dir) / "metrics.jsonl"));
}

TEST(StudySignals, RunsDieWithAStudyKilledBySigkill) {
  const auto dir = scratch("orphans");
  const auto cfg = long_study(dir);
  const auto plan = specopt::plan_study(cfg);
  const pid_t study = specopt::testing::spawn_cli({"study", (dir / "long.toml").string(), "--no-plots"},
                                                  (dir / "study.log").string());
  const pid_t child = running_trainer(plan[0]);
  ASSERT_GT(child, 0) << read_file(dir / "study.log");
  ::kill(study, SIGKILL);
  EXPECT_EQ(specopt::testing::wait_exit_code(study), -SIGKILL);
  // PR_SET_PDEATHSIG = SIGTERM: the run checkpoints and ends within seconds
  // (it had ~100 s of steps left).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (alive(child) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const bool orphan = alive(child);
  if (orphan) ::kill(child, SIGKILL);
  EXPECT_FALSE(orphan) << "specopt train " << child << " outlived its study";
  EXPECT_EQ(specopt::run_state(plan[0].dir), specopt::RunState::kPartial);
}

TEST(StudySignals, CtrlCAtTheTerminalReachesEachRunOnce) {
  // A terminal sends SIGINT to the whole foreground process group. The runs
  // sit in their own groups, so each gets the study's forwarded SIGINT only
  // (two would make it exit at once, without a checkpoint).
  const auto dir = scratch("ctrl_c");
  const auto cfg = long_study(dir);
  const auto plan = specopt::plan_study(cfg);
  const pid_t study = specopt::testing::spawn_cli({"study", (dir / "long.toml").string(), "--no-plots"},
                                                  (dir / "study.log").string(), [] { ::setpgid(0, 0); });
  ASSERT_GT(running_trainer(plan[0]), 0) << read_file(dir / "study.log");
  ::kill(-study, SIGINT);  // the study's process group, as Ctrl-C
  EXPECT_EQ(specopt::testing::wait_exit_code(study), specopt::kExitInterrupted) << read_file(dir / "study.log");
  EXPECT_NE(read_file(fs::path(plan[0].dir) / "train.log").find("interrupted by signal 2"), std::string::npos)
      << read_file(fs::path(plan[0].dir) / "train.log");
  EXPECT_EQ(specopt::run_state(plan[0].dir), specopt::RunState::kPartial);
}
// The GPT study presets use the published study's QKV split rule: by shape, not by name.
TEST(StudyConfig, GptPresetsSplitByShape) {
  for (const char* preset : {"gpt2-124m-owt.toml", "kjv-gpt.toml"}) {
    const auto cfg =
        specopt::load_study_config((fs::path(SPECOPT_SOURCE_DIR) / "configs" / "study" / preset).string());
    const auto train = specopt::config_from_toml_string(cfg.train_config_toml);
    EXPECT_TRUE(train.optim.split_rows_by_shape) << preset;
    EXPECT_TRUE(train.optim.split_rows_patterns.empty()) << preset;
    EXPECT_EQ(train.optim.split_rows_blocks, 3) << preset;
  }
}
