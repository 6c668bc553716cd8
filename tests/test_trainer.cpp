// Trainer behaviour: gradient clipping and accumulation, resume bit for bit
// (in process, and after SIGKILL of a real `specopt train`), divergence,
// checkpoint errors, and that training lowers the loss.
#include "test_support.h"

#include "specopt/train/checkpoint.h"
#include "specopt/train/config.h"
#include "specopt/train/data.h"
#include "specopt/train/run_dir.h"
#include "specopt/train/trainer.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/nn/utils/clip_grad.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

namespace fs = std::filesystem;

namespace {

using specopt::TrainConfig;

using specopt::testing::error_of;

// A fresh directory per test, removed when the test program ends.
struct TestDirs {
  std::vector<fs::path> dirs;
  ~TestDirs() {
    std::error_code ec;
    for (const auto& d : dirs) fs::remove_all(d, ec);
  }
};
TestDirs test_dirs;

std::string test_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::temp_directory_path() /
                       ("specopt_trainer_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  test_dirs.dirs.push_back(dir);
  return dir.string();
}

TrainConfig make_config(const std::vector<std::string>& base, const std::vector<std::string>& extra) {
  TrainConfig c;
  for (const auto& o : base) specopt::apply_override(c, o);
  for (const auto& o : extra) specopt::apply_override(c, o);
  c.validate();
  return c;
}

// Tiny Fashion-MNIST MLP: ~25k parameters, a few ms per step.
const std::vector<std::string> kMlp = {
    "model.kind=mlp",      "model.hidden=[32]",     "data.kind=fashion_mnist", "data.train_limit=2048",
    "data.val_limit=512",  "train.batch_size=32",   "train.steps=20",          "train.warmup_steps=2",
    "train.eval_every=10", "train.eval_batches=8",  "train.log_every=1",       "optim.variant=Adam",
    "optim.lr_matrix=3e-3", "optim.lr_vector=3e-3", "run.threads=1"};
// Tiny byte-level GPT on the KJV text.
const std::vector<std::string> kGpt = {
    "model.kind=gpt",       "model.n_layer=1",      "model.n_head=2",       "model.n_embd=32",
    "model.block_size=32",  "data.kind=kjv",        "data.val_limit=65536", "train.batch_size=16",
    "train.steps=30",       "train.warmup_steps=3", "train.eval_every=10",  "train.eval_batches=4",
    "train.log_every=1",    "optim.variant=Adam",   "optim.lr_matrix=1e-2", "optim.lr_vector=3e-3",
    "run.threads=1"};

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  return rows;
}
nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// (step, train_loss, val_loss or null) of every row: what must match bit for bit.
std::vector<std::tuple<int64_t, double, nlohmann::json>> losses_of(const std::vector<nlohmann::json>& rows) {
  std::vector<std::tuple<int64_t, double, nlohmann::json>> out;
  for (const auto& r : rows)
    out.emplace_back(r["step"].get<int64_t>(), r["train_loss"].get<double>(),
                     r.contains("val_loss") ? r["val_loss"] : nlohmann::json());
  return out;
}

using specopt::testing::slurp;
using specopt::testing::spawn_cli;
using specopt::testing::wait_exit_code;

// ---- gradient clipping -------------------------------------------------------------

TEST(Trainer, ClippingMatchesTorchClipGradNorm) {
  torch::manual_seed(3);
  for (double max_norm : {0.5, 1e3}) {  // clipping active / inactive
    std::vector<at::Tensor> a, b;
    for (auto shape : {std::vector<int64_t>{7, 5}, {5}, {3, 2, 2}}) {
      auto p = torch::randn(shape, torch::requires_grad());
      p.mutable_grad() = torch::randn(shape) * 2.0;
      auto q = p.detach().clone().requires_grad_();
      q.mutable_grad() = p.grad().clone();
      a.push_back(p);
      b.push_back(q);
    }
    // An independent float64 reference of the norm.
    double sq = 0;
    for (const auto& p : a) sq += p.grad().to(torch::kFloat64).pow(2).sum().item<double>();
    const double norm = specopt::clip_gradients(a, max_norm);
    const double torch_norm = torch::nn::utils::clip_grad_norm_(b, max_norm);
    EXPECT_NEAR(norm, std::sqrt(sq), 1e-5 * std::sqrt(sq));
    EXPECT_NEAR(norm, torch_norm, 1e-6 * norm);
    double clipped_sq = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_TRUE(torch::allclose(a[i].grad(), b[i].grad(), 1e-6, 1e-7)) << "param " << i;
      clipped_sq += a[i].grad().to(torch::kFloat64).pow(2).sum().item<double>();
    }
    EXPECT_NEAR(std::sqrt(clipped_sq), std::min(std::sqrt(sq), max_norm), 1e-5);
  }
  // max_norm = 0 only measures.
  auto p = torch::ones({4}, torch::requires_grad());
  p.mutable_grad() = torch::full({4}, 3.0);
  EXPECT_NEAR(specopt::clip_gradients({p}, 0.0), 6.0, 1e-6);
  EXPECT_TRUE(torch::equal(p.grad(), torch::full({4}, 3.0)));
}

// ---- gradient accumulation --------------------------------------------------------

TEST(Trainer, GradAccumulationTwoHalvesEqualsOneBatch) {
  // The same 32 examples per step as 1×32 or 2×16; the gradients reaching the
  // optimizer (seen through the after_backward hook) and the Adam updates agree.
  auto run = [](int64_t accum) {
    std::vector<std::vector<at::Tensor>> grads;
    specopt::TrainHooks hooks;
    hooks.after_backward = [&](const std::vector<at::Tensor>& params) {
      std::vector<at::Tensor> g;
      for (const auto& p : params) g.push_back(p.grad().clone());
      grads.push_back(g);
    };
    specopt::Trainer t(make_config(kMlp, {"train.grad_accum=" + std::to_string(accum)}), hooks);
    std::vector<double> losses;
    for (int i = 0; i < 4; ++i) losses.push_back(t.step().loss);
    std::vector<at::Tensor> params;
    for (const auto& p : t.model().parameters()) params.push_back(p.detach().clone());
    return std::make_tuple(grads, losses, params);
  };
  const auto [g1, l1, p1] = run(1);
  const auto [g2, l2, p2] = run(2);
  ASSERT_EQ(g1.size(), 4u);
  ASSERT_EQ(g2.size(), 4u);
  for (size_t s = 0; s < 4; ++s) {
    EXPECT_NEAR(l1[s], l2[s], 1e-6 * std::abs(l1[s])) << "step " << s;
    ASSERT_EQ(g1[s].size(), g2[s].size());
    for (size_t i = 0; i < g1[s].size(); ++i)
      EXPECT_TRUE(torch::allclose(g1[s][i], g2[s][i], 1e-4, 1e-7))
          << "step " << s << " param " << i << " max diff "
          << (g1[s][i] - g2[s][i]).abs().max().item<double>();
  }
  // Adam amplifies float rounding only where |g| ≈ ε, so parameters agree to
  // a small fraction of one step (lr = 3e-3).
  for (size_t i = 0; i < p1.size(); ++i)
    EXPECT_LT((p1[i] - p2[i]).abs().max().item<double>(), 3e-4) << "param " << i;
}

// ---- hooks: two ranks as two threads ------------------------------------------------

// A summing all-reduce over `n` threads (a stand-in for a process group).
class ThreadGroup {
 public:
  explicit ThreadGroup(int n) : n_(n) {}
  void all_reduce_sum(at::Tensor& t) {
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t generation = generation_;
    acc_ = arrived_ == 0 ? t.clone() : acc_ + t;
    if (++arrived_ == n_) {
      result_ = acc_;
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
    t.copy_(result_);
  }

 private:
  int n_, arrived_ = 0;
  int64_t generation_ = 0;
  at::Tensor acc_, result_;
  std::mutex mu_;
  std::condition_variable cv_;
};

TEST(Trainer, TwoRanksThroughHooksMatchOneProcess) {
  // Each rank takes half of every batch; gradients are averaged in
  // after_backward; losses and validation sums go through all_reduce_sum.
  const TrainConfig c = make_config(kGpt, {"train.grad_accum=2"});
  specopt::Trainer single(c);
  std::vector<double> single_losses;
  for (int i = 0; i < 3; ++i) single_losses.push_back(single.step().loss);
  const double single_val = single.evaluate();

  ThreadGroup group(2);
  std::vector<std::unique_ptr<specopt::Trainer>> ranks;
  for (int64_t r = 0; r < 2; ++r) {
    specopt::TrainHooks h;
    h.rank = r;
    h.world_size = 2;
    h.all_reduce_sum = [&group](at::Tensor& t) { group.all_reduce_sum(t); };
    h.after_backward = [&group](const std::vector<at::Tensor>& params) {
      for (const auto& p : params) {
        at::Tensor g = p.grad();
        group.all_reduce_sum(g);
        g.div_(2.0);
      }
    };
    ranks.push_back(std::make_unique<specopt::Trainer>(c, h));
  }
  EXPECT_FALSE((specopt::TrainHooks{1, 2}.is_main_process()));
  std::vector<double> losses[2], vals(2);
  auto work = [&](int r) {
    for (int i = 0; i < 3; ++i) losses[r].push_back(ranks[r]->step().loss);
    vals[r] = ranks[r]->evaluate();
  };
  std::thread t1(work, 1);
  work(0);
  t1.join();
  for (int r = 0; r < 2; ++r) {
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(losses[r][i], single_losses[i], 1e-5) << "rank " << r;
    EXPECT_NEAR(vals[r], single_val, 1e-5) << "rank " << r;
    const auto a = ranks[r]->model().parameters(), b = single.model().parameters();
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_LT((a[i] - b[i]).abs().max().item<double>(), 1e-4) << "rank " << r << " param " << i;
  }
}

// ---- training lowers the loss --------------------------------------------------------

TEST(Trainer, FashionMnistMlpLossGoesDown) {
  specopt::Trainer t(make_config(kMlp, {"train.steps=40"}));
  const double val_before = t.evaluate();
  double first = 0, last = 0;
  for (int i = 0; i < 40; ++i) {
    const auto s = t.step();
    ASSERT_FALSE(s.diverged);
    if (i < 5) first += s.loss / 5;
    if (i >= 35) last += s.loss / 5;
  }
  const double val_after = t.evaluate();
  EXPECT_NEAR(val_before, std::log(10.0), 0.3);  // near-uniform predictions at init
  EXPECT_LT(last, first - 0.5) << "first " << first << " last " << last;
  EXPECT_LT(val_after, val_before - 0.5);
}

TEST(Trainer, FashionMnistCnnLossGoesDown) {
  specopt::Trainer t(make_config(kMlp, {"model.kind=cnn", "model.channels=[4, 8]", "model.fc_hidden=16",
                                        "train.steps=30", "optim.lr_matrix=1e-2", "optim.lr_vector=1e-2"}));
  EXPECT_EQ(t.model().named_parameters()["conv1.weight"].sizes(), (std::vector<int64_t>{4, 1, 3, 3}));
  const double val_before = t.evaluate();
  for (int i = 0; i < 30; ++i) ASSERT_FALSE(t.step().diverged);
  EXPECT_LT(t.evaluate(), val_before - 0.5);
}

TEST(Trainer, TinyGptOnKjvLossGoesDown) {
  specopt::Trainer t(make_config(kGpt, {}));
  const double val_before = t.evaluate();
  for (int i = 0; i < 30; ++i) ASSERT_FALSE(t.step().diverged);
  const double val_after = t.evaluate();
  EXPECT_NEAR(val_before, std::log(256.0), 0.3);
  EXPECT_LT(val_after, val_before - 1.0) << "before " << val_before << " after " << val_after;
}

TEST(Trainer, TextAndBinDataKinds) {
  const std::string dir = test_dir();
  // text: a file split at a line start; vocabulary 256 (bytes).
  {
    std::ofstream out(dir + "/corpus.txt");
    for (int i = 0; i < 400; ++i) out << "In the beginning was the word " << i << ".\n";
  }
  specopt::Trainer text(make_config(kGpt, {"data.kind=text", "data.path=" + dir + "/corpus.txt",
                                           "data.val_limit=0", "train.eval_batches=2"}));
  EXPECT_EQ(text.model().named_parameters()["transformer.wte.weight"].size(0), 256);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(text.step().diverged);
  EXPECT_TRUE(std::isfinite(text.evaluate()));
  // bin: nanoGPT train.bin/val.bin; vocabulary = max token + 1 over both, or data.vocab_size.
  fs::create_directories(dir + "/bin");
  torch::manual_seed(1);
  specopt::write_bin(specopt::TokenDataset::from_tokens(torch::randint(0, 300, {20000}), 300),
                     dir + "/bin/train.bin");
  auto val_tokens = torch::randint(0, 300, {4000});
  val_tokens[17] = 499;
  specopt::write_bin(specopt::TokenDataset::from_tokens(val_tokens, 500), dir + "/bin/val.bin");
  specopt::Trainer bin(make_config(kGpt, {"data.kind=bin", "data.path=" + dir + "/bin", "data.val_limit=0"}));
  EXPECT_EQ(bin.model().named_parameters()["transformer.wte.weight"].size(0), 500);
  EXPECT_FALSE(bin.step().diverged);
  specopt::Trainer wide(make_config(kGpt, {"data.kind=bin", "data.path=" + dir + "/bin",
                                           "data.val_limit=0", "data.vocab_size=512"}));
  EXPECT_EQ(wide.model().named_parameters()["transformer.wte.weight"].size(0), 512);
  const std::string e = error_of([&] {
    specopt::Trainer t(make_config(kGpt, {"data.kind=bin", "data.path=" + dir + "/nowhere"}));
  });
  EXPECT_NE(e.find(dir + "/nowhere"), std::string::npos) << e;
}

// ---- a whole run: run directory ------------------------------------------------------

TEST(Trainer, RunDirectoryContents) {
  const std::string dir = test_dir();
  const TrainConfig c = make_config(kMlp, {"train.log_every=5", "optim.p_schedule=linear:1->0.5",
                                           "optim.variant=AdamS"});
  specopt::TrainOptions o;
  o.progress = specopt::ProgressMode::kQuiet;
  const auto r = specopt::train(c, dir, o);
  EXPECT_EQ(r.status, "finished");
  EXPECT_EQ(r.steps_done, 20);
  // config.toml is the resolved config, with the run directory actually used.
  const TrainConfig back = specopt::config_from_toml_string(slurp(dir + "/config.toml"));
  EXPECT_EQ(specopt::config_differences(c, back), std::vector<std::string>{"run.run_dir"});
  EXPECT_EQ(back.run.run_dir, dir);
  // metrics: steps 5,10,15,20 (10 and 20 with val_loss), p following the schedule.
  const auto rows = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(rows.size(), 4u);
  const specopt::PSchedule ps = specopt::PSchedule::parse("linear:1->0.5");
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t step = rows[i]["step"];
    EXPECT_EQ(step, 5 * int64_t(i + 1));
    EXPECT_EQ(rows[i].contains("val_loss"), step % 10 == 0);
    EXPECT_DOUBLE_EQ(rows[i]["p"].get<double>(), ps.at(step - 1, 20));
    EXPECT_DOUBLE_EQ(rows[i]["lr_matrix"].get<double>(), 3e-3 * specopt::lr_factor(step - 1, c.train));
    EXPECT_GT(rows[i]["samples_per_s"].get<double>(), 0);
  }
  const auto s = read_json(dir + "/summary.json");
  EXPECT_EQ(s["status"], "finished");
  EXPECT_EQ(s["diverged"], false);
  EXPECT_EQ(s["final_val_loss"].get<double>(), rows.back()["val_loss"].get<double>());
  EXPECT_EQ(s["best_val_loss"].get<double>(),
            std::min(rows[1]["val_loss"].get<double>(), rows[3]["val_loss"].get<double>()));
  EXPECT_EQ(s["variant"], "AdamS");
  EXPECT_GT(s["samples_per_s"].get<double>(), 0);
  // The transform's time is part of the optimizer step's, and the share is it over step time.
  EXPECT_GT(s["transform_s"].get<double>(), 0);
  EXPECT_LE(s["transform_s"].get<double>(), s["optimizer_s"].get<double>());
  EXPECT_DOUBLE_EQ(s["spectral_share"].get<double>(),
                   s["transform_s"].get<double>() / s["train_s"].get<double>());
  EXPECT_LT(s["spectral_share"].get<double>(), 1);
  EXPECT_FALSE(fs::exists(dir + "/checkpoint.pt"));  // checkpoint_every = 0
  // --resume of a complete run returns its summary without training.
  o.resume = true;
  const auto again = specopt::train(c, dir, o);
  EXPECT_EQ(again.final_val_loss, r.final_val_loss);
  EXPECT_EQ(read_jsonl(dir + "/metrics.jsonl").size(), 4u);
  // ... but not under another config.
  const std::string e = error_of([&] { specopt::train(make_config(kMlp, {"optim.lr_matrix=1e-2"}), dir, o); });
  EXPECT_NE(e.find("optim.lr_matrix"), std::string::npos) << e;
}

TEST(Trainer, ResumeAfterTheLastCheckpointRewritesTheSameSummary) {
  // Killed after the final checkpoint but before summary.json: resuming runs
  // no step and writes the summary from the checkpointed totals.
  const std::string dir = test_dir();
  const TrainConfig c = make_config(kGpt, {"train.steps=6", "train.eval_every=3", "train.checkpoint_every=3"});
  specopt::TrainOptions o;
  o.progress = specopt::ProgressMode::kQuiet;
  specopt::train(c, dir, o);
  const auto first = read_json(dir + "/summary.json");
  fs::remove(dir + "/summary.json");
  o.resume = true;
  const auto r = specopt::train(c, dir, o);
  EXPECT_EQ(r.steps_done, 6);
  const auto second = read_json(dir + "/summary.json");
  for (const char* key : {"status", "steps_done", "final_train_loss", "final_val_loss", "best_val_loss"})
    EXPECT_EQ(first[key], second[key]) << key;
  EXPECT_EQ(read_jsonl(dir + "/metrics.jsonl").size(), 6u);
}

// ---- resume --------------------------------------------------------------------------

// Runs 12 steps straight, then 5 steps + checkpoint + 1 more step (discarded,
// as by a killed run), then resumes a fresh trainer from the checkpoint:
// losses and final parameters must be identical.
void expect_resume_bit_for_bit(const TrainConfig& c, const std::string& dir) {
  std::vector<double> straight;
  std::vector<at::Tensor> straight_params;
  {
    specopt::Trainer t(c);
    for (int i = 0; i < 12; ++i) straight.push_back(t.step().loss);
    for (const auto& p : t.model().parameters()) straight_params.push_back(p.detach().clone());
  }
  const std::string ckpt = dir + "/checkpoint.pt";
  {
    specopt::Trainer t(c);
    for (int i = 0; i < 5; ++i) EXPECT_EQ(t.step().loss, straight[i]);
    t.save_checkpoint(ckpt);
    t.step();
  }
  torch::manual_seed(12345);  // disturb the global generator
  specopt::Trainer t(c);
  t.load_checkpoint(ckpt);
  EXPECT_EQ(t.steps_done(), 5);
  for (int i = 5; i < 12; ++i) EXPECT_EQ(t.step().loss, straight[i]) << "step " << i + 1;
  const auto params = t.model().parameters();
  ASSERT_EQ(params.size(), straight_params.size());
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i], straight_params[i]));
}

TEST(Trainer, ResumeInProcessIsBitForBitGpt) {
  // Dropout: the global RNG; the token sampler; AdamZ's state; the schedules.
  expect_resume_bit_for_bit(make_config(kGpt, {"model.dropout=0.1", "train.steps=12", "optim.variant=AdamZ"}),
                            test_dir());
}

TEST(Trainer, ResumeInProcessIsBitForBitMlp) {
  // The epoch sampler across an epoch boundary (256 examples = 8 batches);
  // mSGDQ's momentum buffers and the AdamW of its vectors.
  expect_resume_bit_for_bit(make_config(kMlp, {"data.train_limit=256", "train.steps=12",
                                               "optim.variant=mSGDQ", "optim.lr_matrix=0.05"}),
                            test_dir());
}

TEST(Trainer, ResumeAfterSigkillOfTheCliIsBitForBit) {
  const std::string dir = test_dir();
  const std::string config_path = dir + "/gpt.toml";
  {
    TrainConfig c = make_config(kGpt, {"train.steps=200", "train.eval_every=50", "model.dropout=0.1",
                                       "optim.variant=mSGDS", "optim.lr_matrix=0.05",
                                       "train.checkpoint_every=10"});
    std::ofstream(config_path) << specopt::config_to_toml(c);
  }
  const std::vector<std::string> common = {"train", config_path, "--threads", "1", "--progress", "lines"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = common;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };

  // Kill a run once it has written a checkpoint and gone some steps beyond it.
  const std::string killed = dir + "/killed";
  const pid_t pid = spawn_cli(with({"--run-dir", killed}), dir + "/killed.log");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(killed + "/checkpoint.pt") && fs::exists(killed + "/metrics.jsonl") &&
        fs::file_size(killed + "/metrics.jsonl") > 2500)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::kill(pid, SIGKILL);
  ASSERT_EQ(wait_exit_code(pid), -SIGKILL) << "the run ended before it could be killed:\n"
                                           << slurp(dir + "/killed.log");
  ASSERT_FALSE(fs::exists(killed + "/summary.json"));
  const size_t rows_at_kill = read_jsonl(killed + "/metrics.jsonl").size();

  const int resumed_rc = wait_exit_code(spawn_cli(with({"--run-dir", killed, "--resume"}), dir + "/resumed.log"));
  ASSERT_EQ(resumed_rc, 0) << slurp(dir + "/resumed.log");
  EXPECT_NE(slurp(dir + "/resumed.log").find("resuming"), std::string::npos);

  const std::string straight = dir + "/straight";
  ASSERT_EQ(wait_exit_code(spawn_cli(with({"--run-dir", straight, "--quiet"}), dir + "/straight.log")), 0)
      << slurp(dir + "/straight.log");

  const auto a = losses_of(read_jsonl(straight + "/metrics.jsonl"));
  const auto b = losses_of(read_jsonl(killed + "/metrics.jsonl"));
  ASSERT_EQ(a.size(), 200u);
  EXPECT_GT(rows_at_kill, 10u);
  EXPECT_LT(rows_at_kill, 200u);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << "row " << i;
  const auto sa = read_json(straight + "/summary.json"), sb = read_json(killed + "/summary.json");
  EXPECT_EQ(sa["final_val_loss"], sb["final_val_loss"]);
  EXPECT_EQ(sb["steps_done"], 200);
}

// ---- divergence ------------------------------------------------------------------------

TEST(Trainer, HugeLearningRateDivergesWithExitCodeZero) {
  const std::string dir = test_dir();
  const std::string config_path = dir + "/mlp.toml";
  std::ofstream(config_path) << specopt::config_to_toml(make_config(kMlp, {}));
  const std::string run = dir + "/run";
  const int rc = wait_exit_code(spawn_cli({"train", config_path, "--run-dir", run, "--progress", "lines",
                                           "--set", "optim.lr_matrix=1e30", "--set",
                                           "optim.lr_vector=1e30", "--set", "train.warmup_steps=0"},
                                          dir + "/log"));
  EXPECT_EQ(rc, 0) << slurp(dir + "/log");
  EXPECT_NE(slurp(dir + "/log").find("diverged"), std::string::npos);
  const auto s = read_json(run + "/summary.json");
  EXPECT_EQ(s["status"], "diverged");
  EXPECT_EQ(s["diverged"], true);
  EXPECT_EQ(s["final_val_loss"], "inf");
  EXPECT_LT(s["steps_done"].get<int64_t>(), 20);
  const auto rows = read_jsonl(run + "/metrics.jsonl");
  ASSERT_FALSE(rows.empty());
  EXPECT_TRUE(rows.back()["train_loss"].is_string()) << rows.back().dump();  // "nan" / "inf"
}

TEST(Trainer, OptimizerRefusingNonFiniteGradientsIsDivergence) {
  // A gradient that turns non-finite after the trainer's own check (here in a
  // custom optimizer step): the optimizer throws, the trainer reports divergence.
  specopt::TrainHooks h;
  h.step_optimizer = [](specopt::CompositeOptimizer& opt) {
    opt.optimizers()[0]->param_groups()[0].params()[0].mutable_grad().fill_(NAN);
    opt.step();
  };
  specopt::Trainer t(make_config(kGpt, {}), h);
  std::vector<at::Tensor> before;
  for (const auto& p : t.model().parameters()) before.push_back(p.detach().clone());
  const auto s = t.step();
  EXPECT_TRUE(s.diverged);
  EXPECT_EQ(t.steps_done(), 0);
  const auto after = t.model().parameters();
  for (size_t i = 0; i < after.size(); ++i) EXPECT_TRUE(torch::equal(after[i], before[i]));
  // Any other optimizer error is an error, not a divergence.
  h.step_optimizer = [](specopt::CompositeOptimizer&) { TORCH_CHECK(false, "disk on fire"); };
  specopt::Trainer t2(make_config(kGpt, {}), h);
  EXPECT_NE(error_of([&] { t2.step(); }).find("disk on fire"), std::string::npos);
}

// ---- checkpoint errors ------------------------------------------------------------------

TEST(Trainer, BadCheckpointsGiveClearErrors) {
  const std::string dir = test_dir();
  const TrainConfig c = make_config(kGpt, {});
  specopt::Trainer t(c);
  t.step();
  const std::string good = dir + "/good.pt";
  t.save_checkpoint(good);
  EXPECT_FALSE(fs::exists(good + ".tmp"));
  const std::string bytes = slurp(good);
  auto write = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir + "/" + name, std::ios::binary) << content;
    return dir + "/" + name;
  };
  // A failed load leaves the trainer as it was, so one trainer serves all cases.
  specopt::Trainer fresh(c);
  auto load_error = [&](const std::string& path) { return error_of([&] { fresh.load_checkpoint(path); }); };
  struct Case {
    std::string path, expect;
  };
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x5a;
  std::string future = bytes;
  future[8] = 99;  // format version field
  for (const auto& k : std::vector<Case>{
           {write("truncated.pt", bytes.substr(0, bytes.size() - 100)), "is truncated"},
           {write("header_only.pt", bytes.substr(0, 10)), "shorter than the 24-byte header"},
           {write("corrupt.pt", flipped), "is corrupt: CRC-32"},
           {write("version.pt", future), "has format version 99; this build of specopt reads version 1"},
           {write("foreign.pt", "PK\x03\x04 definitely not a checkpoint, long enough"), "not a specopt checkpoint"},
           {dir + "/missing.pt", "cannot open checkpoint"},
       }) {
    const std::string e = load_error(k.path);
    EXPECT_NE(e.find(k.expect), std::string::npos) << k.path << " → " << e;
    EXPECT_NE(e.find(k.path), std::string::npos) << "error should name the file: " << e;
  }
  // A checkpoint of another config is refused, naming the keys.
  EXPECT_EQ(fresh.steps_done(), 0);
  specopt::Trainer other_config(make_config(kGpt, {"optim.lr_matrix=2e-2", "run.seed=5"}));
  const std::string e = error_of([&] { other_config.load_checkpoint(good); });
  EXPECT_NE(e.find("optim.lr_matrix"), std::string::npos) << e;
  EXPECT_NE(e.find("run.seed"), std::string::npos) << e;
  // ... except for keys that do not change the computation.
  specopt::Trainer other(make_config(kGpt, {"train.log_every=7", "train.checkpoint_every=3"}));
  other.load_checkpoint(good);
  EXPECT_EQ(other.steps_done(), 1);
}

}  // namespace

// ---- the run directory module (run_dir.h) ------------------------------------------

TEST(RunDir, NonFiniteNumbersHaveOneEncoding) {
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(specopt::json_number(std::nan("")), nlohmann::json("nan"));
  EXPECT_EQ(specopt::json_number(inf), nlohmann::json("inf"));
  EXPECT_EQ(specopt::json_number(-inf), nlohmann::json("-inf"));
  EXPECT_EQ(specopt::json_number(0.25), nlohmann::json(0.25));
  for (const double v : {0.25, -3.0, inf, -inf})
    EXPECT_EQ(specopt::json_to_double(specopt::json_number(v), 7.0), v);
  EXPECT_TRUE(std::isnan(specopt::json_to_double(specopt::json_number(std::nan("")), 7.0)));
  EXPECT_EQ(specopt::json_to_double(nlohmann::json(), 7.0), 7.0);  // null: no value
}

TEST(RunDir, SummaryRoundTripsAndMetricsReaderSkipsTornLines) {
  const specopt::RunPaths paths(test_dir());
  specopt::RunSummary r;
  r.status = "diverged";
  r.diverged = true;
  r.diverged_reason = "non-finite training loss";
  r.steps_done = 12;
  r.final_train_loss = std::nan("");
  r.final_val_loss = std::numeric_limits<double>::infinity();
  r.best_val_loss = 2.5;
  r.throughput = 125.0;
  r.throughput_unit = "tokens";
  r.spectral_share = 0.375;
  r.wall_s = 3.0;
  specopt::write_summary(paths.summary, r, {{"steps", 20}});
  const specopt::RunSummary back = specopt::read_summary(paths.summary);
  EXPECT_EQ(back.status, r.status);
  EXPECT_EQ(back.diverged, r.diverged);
  EXPECT_EQ(back.diverged_reason, r.diverged_reason);
  EXPECT_EQ(back.steps_done, r.steps_done);
  EXPECT_TRUE(std::isnan(back.final_train_loss));
  EXPECT_EQ(back.final_val_loss, r.final_val_loss);
  EXPECT_EQ(back.best_val_loss, r.best_val_loss);
  EXPECT_EQ(back.throughput, r.throughput);
  EXPECT_EQ(back.throughput_unit, r.throughput_unit);
  EXPECT_EQ(back.spectral_share, r.spectral_share);
  EXPECT_EQ(back.wall_s, r.wall_s);
  const auto j = nlohmann::json::parse(specopt::testing::slurp(paths.summary));
  EXPECT_EQ(j.at("tokens_per_s"), 125.0);  // the rate also under its unit's key
  EXPECT_EQ(j.at("steps"), 20);            // and the context
  {
    std::ofstream out(paths.metrics);
    out << "{\"step\":1,\"train_loss\":\"nan\"}\n{\"step\":2,\"train_loss\":1.5}\n{\"no_step\":1}\n{\"step\":3,\"tr";
  }
  const auto rows = specopt::read_metrics(paths.metrics);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_TRUE(std::isnan(specopt::json_to_double(rows[0].at("train_loss"), 0.0)));
  EXPECT_EQ(rows[1].at("step"), 2);
  specopt::truncate_metrics(paths.metrics, 1);
  const auto kept = specopt::read_metrics(paths.metrics);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].at("step"), 1);
  std::ofstream(paths.summary) << "{\"status\": \"fin";  // torn
  const std::string err = error_of([&] { specopt::read_summary(paths.summary); });
  EXPECT_NE(err.find(paths.summary), std::string::npos) << err;
}
