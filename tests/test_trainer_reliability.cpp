// Issue 13, "nothing lost, nothing silently wrong": divergence is detected at
// the step that produces NaN/Inf or a blow-up and never reaches a checkpoint;
// SIGTERM/SIGINT stop a run after a checkpoint with a distinct exit status;
// one writer per run directory; a full disk stops the run and leaves no
// .tmp; checkpoint reading is bounded and its errors name the file.
#include "test_support.h"

#include "specopt/train/checkpoint.h"
#include "specopt/train/config.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/train/trainer.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <thread>

namespace fs = std::filesystem;

namespace {

using specopt::TrainConfig;
using specopt::testing::error_of;
using specopt::testing::slurp;
using specopt::testing::spawn_cli;
using specopt::testing::wait_exit_code;

// This program's scratch directories, removed when it ends.
struct Cleanup : ::testing::Environment {
  static std::vector<fs::path>& dirs() {
    static std::vector<fs::path> d;
    return d;
  }
  void TearDown() override {
    std::error_code ec;
    for (const auto& d : dirs()) fs::remove_all(d, ec);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new Cleanup);

std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::temp_directory_path() /
                       ("specopt_reliability_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  Cleanup::dirs().push_back(dir);
  return dir.string();
}

// A tiny Fashion-MNIST MLP (784-32-10, ~25k parameters, ~1 ms a step).
TrainConfig mlp(const std::vector<std::string>& extra = {}) {
  TrainConfig c;
  for (const char* o : {"model.kind=mlp", "model.hidden=[32]", "data.kind=fashion_mnist", "data.train_limit=2048",
                        "data.val_limit=256", "train.batch_size=32", "train.steps=20", "train.warmup_steps=2",
                        "train.eval_every=10", "train.eval_batches=4", "train.log_every=1", "optim.variant=Adam",
                        "optim.lr_matrix=3e-3", "optim.lr_vector=3e-3", "run.threads=1"})
    specopt::apply_override(c, o);
  for (const auto& o : extra) specopt::apply_override(c, o);
  c.validate();
  return c;
}

std::string write_config(const std::string& dir, const TrainConfig& c) {
  const std::string path = dir + "/config_in.toml";
  std::ofstream(path) << specopt::config_to_toml(c);
  return path;
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

bool all_finite(torch::nn::Module& m) {
  for (const auto& p : m.parameters())
    if (!p.isfinite().all().item<bool>()) return false;
  return true;
}

// Waits (≤ 60 s) until `pred` holds.
template <class F>
bool wait_for(F&& pred, double seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}
size_t lines_of(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

// Quiet training options whose optimizer step runs `after` once, right
// after the step with 1-based index `at` (to corrupt the state at a known step).
specopt::TrainOptions quiet_with_fault_after_step(int at, std::function<void(specopt::CompositeOptimizer&)> after) {
  specopt::TrainOptions o;
  o.progress = specopt::ProgressMode::kQuiet;
  o.hooks.step_optimizer = [at, after, calls = 0](specopt::CompositeOptimizer& opt) mutable {
    opt.step();
    if (++calls == at) after(opt);
  };
  return o;
}

// ---- item 4: no checkpoint ever holds NaN ------------------------------------------

TEST(Divergence, NonFiniteWeightsEndTheRunAtThatStepAndKeepTheLastGoodCheckpoint) {
  // Step 3 writes NaN into a weight (as eps = 0 in float32 did): the run must
  // end as diverged at step 3, with the step-2 checkpoint left on disk.
  const std::string dir = test_dir();
  const auto o = quiet_with_fault_after_step(3, [](specopt::CompositeOptimizer& opt) {
    opt.optimizers()[0]->param_groups()[0].params()[0].detach().view(-1)[7] = NAN;
  });
  const TrainConfig c = mlp({"train.checkpoint_every=1"});
  const auto r = specopt::train(c, dir, o);
  EXPECT_EQ(r.status, "diverged");
  EXPECT_EQ(r.steps_done, 2);
  EXPECT_NE(r.diverged_reason.find("non-finite weight"), std::string::npos) << r.diverged_reason;
  specopt::Trainer back(c);
  back.load_checkpoint(dir + "/checkpoint.pt");
  EXPECT_EQ(back.steps_done(), 2);
  EXPECT_TRUE(all_finite(back.model()));
  EXPECT_TRUE(back.first_non_finite_state().empty());
  const auto summary = nlohmann::json::parse(slurp(dir + "/summary.json"));
  EXPECT_EQ(summary["status"], "diverged");
  EXPECT_NE(summary["diverged_reason"].get<std::string>().find("non-finite weight"), std::string::npos);
}

TEST(Divergence, SaveCheckpointRefusesNonFiniteOptimizerState) {
  const std::string dir = test_dir();
  specopt::Trainer t(mlp());
  t.step();
  const std::string path = dir + "/c.pt";
  t.save_checkpoint(path);
  const std::string good = slurp(path);
  for (auto* opt : t.optimizer().optimizers())
    for (auto& kv : opt->state())
      if (auto* st = dynamic_cast<specopt::SpectralAdamWParamState*>(kv.second.get())) st->exp_avg_sq().fill_(INFINITY);
  EXPECT_NE(t.first_non_finite_state().find("exp_avg_sq"), std::string::npos) << t.first_non_finite_state();
  const std::string e = error_of([&] { t.save_checkpoint(path); });
  EXPECT_NE(e.find("refusing to write checkpoint '" + path + "'"), std::string::npos) << e;
  EXPECT_EQ(slurp(path), good);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// ---- item 5: one definition of divergence --------------------------------------------

TEST(Divergence, TheTransformRefusingNonFiniteInputIsDivergenceNotAFailure) {
  // Finite gradients, but an Adam state that turned Inf: the Adam update is
  // Inf and the spectral transform raises "spectral_power: input contains NaN
  // or Inf". That is a diverged step, not an error.
  int calls = 0;
  specopt::TrainHooks h;
  h.step_optimizer = [&](specopt::CompositeOptimizer& opt) {
    if (++calls == 2)
      for (auto* o : opt.optimizers())
        for (auto& kv : o->state())
          if (auto* st = dynamic_cast<specopt::SpectralAdamWParamState*>(kv.second.get()))
            if (st->exp_avg().dim() == 2) st->exp_avg().fill_(INFINITY);
    opt.step();
  };
  specopt::Trainer t(mlp({"optim.variant=AdamS", "optim.method=newton"}), h);
  EXPECT_FALSE(t.step().diverged);
  specopt::StepStats s;
  ASSERT_NO_THROW(s = t.step());
  EXPECT_TRUE(s.diverged);
  EXPECT_NE(s.diverged_reason.find("non-finite update"), std::string::npos) << s.diverged_reason;
  EXPECT_NE(s.diverged_reason.find("NaN or Inf"), std::string::npos) << s.diverged_reason;
  EXPECT_EQ(t.steps_done(), 1);
}

TEST(Divergence, AFiniteBlowUpIsDivergedNotFinished) {
  // After step 5 every weight is scaled by 100: the logits grow ~10^4-fold,
  // the loss to ~10^4 — finite, but far above 10 × the initial ln(10).
  const std::string dir = test_dir();
  const auto o = quiet_with_fault_after_step(5, [](specopt::CompositeOptimizer& opt) {
    torch::NoGradGuard no_grad;
    for (auto* op : opt.optimizers())
      for (auto& g : op->param_groups())
        for (auto& p : g.params()) p.mul_(100.0);
  });
  const auto r = specopt::train(mlp(), dir, o);
  EXPECT_EQ(r.status, "diverged");
  EXPECT_EQ(r.steps_done, 6);
  EXPECT_NE(r.diverged_reason.find("× the initial loss"), std::string::npos) << r.diverged_reason;
  EXPECT_TRUE(std::isinf(r.final_val_loss));
  const auto rows = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(rows.size(), 6u);
  EXPECT_GT(rows.back()["train_loss"].get<double>(), specopt::kDivergenceLossFactor * rows[0]["train_loss"].get<double>());
}

// ---- item 1 and 9: signals, and one writer per run directory -----------------------------

TEST(Signals, SigtermCheckpointsAndExits75WhileASecondWriterIsRefused) {
  const std::string dir = test_dir();
  const std::string config = write_config(dir, mlp({"train.steps=1500", "train.eval_every=1000"}));
  const std::string run = dir + "/run";
  const pid_t first = spawn_cli({"train", config, "--run-dir", run, "--progress", "lines"}, dir + "/first.log");
  ASSERT_TRUE(wait_for([&] { return lines_of(run + "/metrics.jsonl") >= 5; })) << slurp(dir + "/first.log");

  // The run is stopped while the second writer is tried: the 1500 steps take
  // about as long as a process start, so a running first run could finish
  // (and leave its signal handler) before SIGTERM arrives.
  ::kill(first, SIGSTOP);

  // Item 9: a second process on the same directory is refused at once, by PID.
  const int second = wait_exit_code(spawn_cli({"train", config, "--run-dir", run, "--quiet"}, dir + "/second.log"));
  EXPECT_EQ(second, 1);
  const std::string refusal = slurp(dir + "/second.log");
  EXPECT_NE(refusal.find("is in use by process " + std::to_string(first)), std::string::npos) << refusal;
  EXPECT_NE(refusal.find(run + "/lock"), std::string::npos) << refusal;

  // Item 1: SIGTERM finishes the step, writes the checkpoint and the metrics, exits 75.
  ::kill(first, SIGTERM);  // pending until the run continues
  ::kill(first, SIGCONT);
  ASSERT_EQ(wait_exit_code(first), specopt::kExitInterrupted) << slurp(dir + "/first.log");
  const std::string log = slurp(dir + "/first.log");
  EXPECT_NE(log.find("SIGTERM at step"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(run + "/summary.json"));
  specopt::Trainer back(mlp({"train.steps=1500", "train.eval_every=1000"}));
  back.load_checkpoint(run + "/checkpoint.pt");
  const auto rows = read_jsonl(run + "/metrics.jsonl");
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows.back()["step"].get<int64_t>(), back.steps_done());  // log_every = 1: every step is there
  EXPECT_LT(back.steps_done(), 1500);

  // --resume continues from there to the end; the rows read as one run.
  ASSERT_EQ(wait_exit_code(spawn_cli({"train", config, "--run-dir", run, "--resume", "--quiet"}, dir + "/resume.log")), 0)
      << slurp(dir + "/resume.log");
  const auto all = read_jsonl(run + "/metrics.jsonl");
  ASSERT_EQ(all.size(), 1500u);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i]["step"].get<int64_t>(), int64_t(i + 1));
}

TEST(Signals, ASecondSignalExitsAtOnce) {
  // Two different signals pending at once (the process is stopped while they
  // are sent), so the second is not merged into the first: the first asks for
  // a checkpoint, the second ends the process by that signal.
  const std::string dir = test_dir();
  const std::string config = write_config(dir, mlp({"train.steps=100000", "train.eval_every=100000"}));
  const std::string run = dir + "/run";
  const pid_t pid = spawn_cli({"train", config, "--run-dir", run, "--quiet"}, dir + "/log");
  ASSERT_TRUE(wait_for([&] { return lines_of(run + "/metrics.jsonl") >= 3; })) << slurp(dir + "/log");
  ::kill(pid, SIGSTOP);
  ::kill(pid, SIGTERM);
  ::kill(pid, SIGINT);
  ::kill(pid, SIGCONT);
  const int rc = wait_exit_code(pid);
  EXPECT_TRUE(rc == -SIGINT || rc == -SIGTERM) << rc << "\n" << slurp(dir + "/log");
  EXPECT_FALSE(fs::exists(run + "/summary.json"));
}

TEST(RunDirLock, TheLockIsHeldForTheRunAndNamesTheHolder) {
  // A process that holds the lock (as a running `specopt train` does) blocks
  // train() in another; once it is gone the directory is free again.
  const std::string dir = test_dir();
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t holder = ::fork();
  if (holder == 0) {
    const int fd = ::open((dir + "/lock").c_str(), O_RDWR | O_CREAT, 0644);
    ::flock(fd, LOCK_EX);
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::write(fd, pid.data(), pid.size()) < 0 || ::write(ready[1], "x", 1) < 0) ::_exit(1);
    ::pause();
    ::_exit(0);
  }
  char x;
  ASSERT_EQ(::read(ready[0], &x, 1), 1);
  specopt::TrainOptions o;
  o.progress = specopt::ProgressMode::kQuiet;
  const std::string e = error_of([&] { specopt::train(mlp({"train.steps=2"}), dir, o); });
  EXPECT_NE(e.find("is in use by process " + std::to_string(holder)), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(dir + "/metrics.jsonl"));
  ::kill(holder, SIGKILL);
  wait_exit_code(holder);
  EXPECT_EQ(specopt::train(mlp({"train.steps=2"}), dir, o).status, "finished");
  EXPECT_EQ(slurp(dir + "/lock"), std::to_string(::getpid()) + "\n");
}

// ---- item 8: disk full -----------------------------------------------------------------

TEST(DiskFull, AFailedAtomicWriteLeavesNoTmpAndTheOldFile) {
  // PATH.tmp → /dev/full: every write fails with ENOSPC.
  const std::string dir = test_dir();
  const std::string path = dir + "/checkpoint.pt";
  specopt::write_file_atomic(path, "old");
  fs::create_symlink("/dev/full", path + ".tmp");
  const std::string e = error_of([&] { specopt::write_file_atomic(path, std::string(1 << 20, 'x')); });
  EXPECT_NE(e.find("No space left on device"), std::string::npos) << e;
  EXPECT_NE(e.find(path + ".tmp"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(fs::symlink_status(path + ".tmp")));
  EXPECT_EQ(slurp(path), "old");
}

// Runs the CLI on `run` (2000 steps, a checkpoint due at 1000, a metrics row
// per step) and expects it to stop at the first metrics line that cannot be
// written, with `error` in the message, after trying a checkpoint that does not
// fit either, leaving whole lines and no checkpoint.pt.tmp.
void expect_stop_at_full_metrics(const std::string& dir, const std::string& run, const std::string& error,
                                 const std::function<void()>& in_child = {}) {
  const std::string config = write_config(dir, mlp({"train.steps=2000", "train.eval_every=1000",
                                                    "train.checkpoint_every=1000"}));
  const int rc = wait_exit_code(spawn_cli({"train", config, "--run-dir", run, "--quiet"}, dir + "/log", in_child));
  const std::string log = slurp(dir + "/log");
  EXPECT_EQ(rc, 1) << log;
  EXPECT_NE(log.find("cannot write '" + run + "/metrics.jsonl': " + error), std::string::npos) << log;
  EXPECT_NE(log.find("the checkpoint could not be written either"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(run + "/checkpoint.pt.tmp"));
  EXPECT_FALSE(fs::exists(run + "/summary.json"));
  const auto rows = read_jsonl(run + "/metrics.jsonl");  // whole lines only
  ASSERT_GT(rows.size(), 10u);
  EXPECT_LT(rows.back()["step"].get<int64_t>(), 1000);
}

TEST(DiskFull, AMetricsWriteThatFailsStopsTheRunAndLeavesNoTmp) {
  // A 16 KB file size limit (RLIMIT_FSIZE, SIGXFSZ ignored: writes past it
  // fail with EFBIG, as on a full disk; no privileges needed). metrics.jsonl
  // reaches it after ~100 rows; the checkpoint (~300 KB) is over it too.
  const std::string dir = test_dir();
  expect_stop_at_full_metrics(dir, dir + "/run", "File too large", [] {
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit {16384, 16384};
    ::setrlimit(RLIMIT_FSIZE, &limit);
  });
}

TEST(DiskFull, OnATwelveKilobyteTmpfs) {
  // The issue's own setting, where mounting is allowed (root with
  // CAP_SYS_ADMIN): a real ENOSPC.
  const std::string dir = test_dir();
  const std::string mnt = dir + "/tmpfs";
  fs::create_directories(mnt);
  if (std::system(("mount -t tmpfs -o size=12k tmpfs '" + mnt + "' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)";
  struct Unmount {
    std::string path;
    ~Unmount() { EXPECT_EQ(std::system(("umount '" + path + "'").c_str()), 0); }
  } unmount{mnt};
  expect_stop_at_full_metrics(dir, mnt + "/run", "No space left on device");
}

// ---- item 7: checkpoint reading ------------------------------------------------------------

TEST(CheckpointReading, NonRegularFilesAreRefusedByName) {
  const std::string dir = test_dir();
  specopt::Trainer t(mlp());
  fs::create_symlink("/dev/zero", dir + "/zero.pt");
  fs::create_directories(dir + "/dir.pt");
  ASSERT_EQ(::mkfifo((dir + "/fifo.pt").c_str(), 0644), 0);
  for (const auto& [name, what] : std::vector<std::pair<std::string, std::string>>{
           {"zero.pt", "a character device"}, {"dir.pt", "a directory"}, {"fifo.pt", "a FIFO"}}) {
    const std::string path = dir + "/" + name;
    const std::string e = error_of([&] { t.load_checkpoint(path); });
    EXPECT_NE(e.find("checkpoint '" + path + "' is not a regular file (" + what + ")"), std::string::npos) << e;
  }
}

// ---- item 6: data errors name the data ----------------------------------------------------

TEST(DataErrors, AValidationSetTooSmallFailsAtConstructionNamingTheFile) {
  TrainConfig c;
  for (const char* o : {"model.kind=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                        "model.block_size=32", "data.kind=kjv", "data.val_limit=40", "train.batch_size=8",
                        "run.threads=1"})
    specopt::apply_override(c, o);
  const std::string e = error_of([&] { specopt::Trainer t(c); });
  EXPECT_NE(e.find("the validation set '"), std::string::npos) << e;
  // The name is the file and the slices taken of it: kjv.txt[train end:size][0:40].
  EXPECT_NE(e.find("kjv.txt["), std::string::npos) << e;
  EXPECT_NE(e.find("][0:40]' (40 tokens) is too small for one batch of 8 examples of block_size 32"),
            std::string::npos) << e;
}

}  // namespace
