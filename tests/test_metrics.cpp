// Metrics people expect (issue 15 item 7) and the run directory's record of itself:
// validation accuracy of the image classifiers (metrics.jsonl, summary.json,
// TrainResult), wall time per metrics row, config.toml naming the real run dir.
#include "specopt/train/config.h"
#include "specopt/train/data.h"
#include "specopt/train/models.h"
#include "specopt/train/trainer.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "test_support.h"

namespace fs = std::filesystem;
using specopt::testing::slurp;

namespace {

fs::path scratch(const std::string& name) { return specopt::testing::scratch_dir("test_metrics", name); }

// 32 validation batches of 16 from the first 512 test images.
const std::vector<std::string> kMlp = {
    "model.kind=mlp",      "model.hidden=[32]",    "data.kind=fashion_mnist", "data.train_limit=2048",
    "data.val_limit=512",  "train.batch_size=16",  "train.steps=12",          "train.warmup_steps=2",
    "train.eval_every=6",  "train.eval_batches=0", "train.log_every=3",       "optim.variant=AdamS",
    "optim.lr_matrix=0.02", "optim.lr_vector=3e-3", "run.threads=1",           "run.run_dir=runs/elsewhere"};

std::vector<nlohmann::json> rows_of(const fs::path& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace

// The accuracy against an independent count: the MLP's argmax over the same 512 test images.
TEST(Metrics, ValidationAccuracyIsTheShareOfCorrectArgmax) {
  specopt::Trainer trainer(specopt::load_config("", kMlp));
  EXPECT_TRUE(std::isnan(trainer.val_accuracy()));
  for (int i = 0; i < 8; ++i) trainer.step();
  trainer.evaluate();
  const double accuracy = trainer.val_accuracy();

  auto* mlp = dynamic_cast<specopt::MLPImpl*>(&trainer.model());
  ASSERT_NE(mlp, nullptr);
  const auto val = specopt::fashion_mnist().second.slice(0, 512);
  torch::NoGradGuard no_grad;
  mlp->eval();
  const int64_t correct = mlp->forward(val.images).argmax(1).eq(val.labels).sum().item<int64_t>();
  EXPECT_EQ(accuracy, static_cast<double>(correct) / 512.0);
  EXPECT_GT(accuracy, 0.3);  // 8 steps of AdamS: well above chance (0.1)
}

TEST(Metrics, GptHasNoAccuracy) {
  specopt::Trainer trainer(specopt::load_config(
      "", {"model.kind=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
           "data.kind=kjv", "data.val_limit=8192", "train.batch_size=4", "train.eval_batches=1",
           "run.threads=1"}));
  trainer.evaluate();
  EXPECT_TRUE(std::isnan(trainer.val_accuracy()));
}

TEST(Metrics, RunDirectoryRecordsAccuracyWallTimeAndItsOwnPath) {
  const fs::path dir = scratch("run");
  specopt::TrainOptions options;
  options.progress = specopt::ProgressMode::kQuiet;
  const specopt::TrainResult r = specopt::train(specopt::load_config("", kMlp), dir.string(), options);
  ASSERT_EQ(r.status, "finished");

  const auto rows = rows_of(dir / "metrics.jsonl");
  ASSERT_EQ(rows.size(), 4u);  // steps 3, 6, 9, 12
  double last_wall = 0.0, last_accuracy = -1.0;
  for (const auto& row : rows) {
    const double wall = row.at("wall_s").get<double>();
    EXPECT_GE(wall, last_wall) << row;
    last_wall = wall;
    EXPECT_EQ(row.contains("val_accuracy"), row.contains("val_loss")) << row;
    if (row.contains("val_accuracy")) {
      last_accuracy = row["val_accuracy"].get<double>();
      EXPECT_GE(last_accuracy, 0.0);
      EXPECT_LE(last_accuracy, 1.0);
    }
  }
  EXPECT_LE(last_wall, r.wall_s);
  EXPECT_EQ(r.final_val_accuracy, last_accuracy);
  const auto summary = nlohmann::json::parse(slurp((dir / "summary.json").string()));
  EXPECT_EQ(summary.at("final_val_accuracy").get<double>(), last_accuracy);

  // config.toml names the directory the run is in, not the config's run.run_dir.
  const auto recorded = specopt::config_from_toml_string(slurp((dir / "config.toml").string()));
  EXPECT_EQ(recorded.run.run_dir, dir.string());

  // A complete run resumed returns its summary, accuracy included.
  options.resume = true;
  EXPECT_EQ(specopt::train(specopt::load_config("", kMlp), dir.string(), options).final_val_accuracy, last_accuracy);
}
