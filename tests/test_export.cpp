// Checkpoints PyTorch can read (issue 15 item 6): the model state of a trainer
// checkpoint by name, and `specopt export`'s torch.load-able state_dict
// (python/tests/test_checkpoint.py loads the same files with torch.load).
#include "specopt/train/checkpoint_export.h"
#include "specopt/train/config.h"
#include "specopt/train/trainer.h"

#include <gtest/gtest.h>
#include <torch/serialize.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_support.h"

namespace fs = std::filesystem;
using specopt::testing::error_of;
using specopt::testing::slurp;

namespace {

fs::path scratch(const std::string& name) { return specopt::testing::scratch_dir("test_export", name); }

const std::vector<std::string> kGpt = {
    "model.kind=gpt",      "model.n_layer=1",     "model.n_head=2",      "model.n_embd=16",
    "model.block_size=16", "data.kind=kjv",       "data.val_limit=8192", "train.batch_size=4",
    "train.steps=2",       "train.eval_batches=1", "optim.variant=AdamS", "run.threads=1"};
const std::vector<std::string> kMlp = {
    "model.kind=mlp",     "model.hidden=[16]",   "data.kind=fashion_mnist", "data.train_limit=256",
    "data.val_limit=64",  "train.batch_size=16", "train.steps=2",           "train.eval_batches=1",
    "optim.variant=mSGDZ", "optim.lr_matrix=0.01", "run.threads=1"};

// Trains two steps and checkpoints; returns the trainer's named tensors (cloned).
std::vector<std::pair<std::string, at::Tensor>> train_and_save(const std::vector<std::string>& sets,
                                                               const std::string& path) {
  specopt::Trainer trainer(specopt::load_config("", sets));
  trainer.step();
  trainer.step();
  trainer.save_checkpoint(path);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (const auto& p : trainer.model().named_parameters()) named.emplace_back(p.key(), p.value().clone());
  for (const auto& b : trainer.model().named_buffers()) named.emplace_back(b.key(), b.value().clone());
  return named;
}

void expect_state_equals_model(const torch::OrderedDict<std::string, at::Tensor>& state,
                               const std::vector<std::pair<std::string, at::Tensor>>& named) {
  ASSERT_EQ(state.size(), named.size());
  for (const auto& [name, tensor] : named) {
    const at::Tensor* t = state.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_TRUE(t->equal(tensor)) << name;  // bit for bit
  }
}

c10::Dict<c10::IValue, c10::IValue> read_export(const std::string& path) {
  const std::string bytes = slurp(path);
  return torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end())).toGenericDict();
}

}  // namespace

TEST(Export, GptStateHasNanoGptNamesAndExactValues) {
  const fs::path dir = scratch("gpt");
  const auto named = train_and_save(kGpt, (dir / "checkpoint.pt").string());
  const auto state = specopt::checkpoint_model_state((dir / "checkpoint.pt").string());
  expect_state_equals_model(state, named);
  EXPECT_EQ(state.keys().front(), "transformer.wte.weight");

  const std::string out = (dir / "model.pt").string();
  EXPECT_EQ(specopt::export_checkpoint((dir / "checkpoint.pt").string(), out),
            static_cast<int64_t>(named.size()) + 1);
  const auto dict = read_export(out);
  ASSERT_EQ(dict.size(), named.size() + 1);
  for (const auto& [name, tensor] : named) EXPECT_TRUE(dict.at(name).toTensor().equal(tensor)) << name;
  // nanoGPT's tied head: the same values as the token embedding, under its own key.
  EXPECT_TRUE(dict.at("lm_head.weight").toTensor().equal(state["transformer.wte.weight"]));
  // nanoGPT's key set for bias=False, n_layer=1.
  for (const char* key : {"transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                          "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.weight",
                          "transformer.h.0.ln_2.weight", "transformer.h.0.mlp.c_fc.weight",
                          "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight"})
    EXPECT_TRUE(dict.contains(key)) << key;
}

TEST(Export, MlpStateHasNoHeadAlias) {
  const fs::path dir = scratch("mlp");
  const auto named = train_and_save(kMlp, (dir / "checkpoint.pt").string());
  expect_state_equals_model(specopt::checkpoint_model_state((dir / "checkpoint.pt").string()), named);
  const std::string out = (dir / "model.pt").string();
  EXPECT_EQ(specopt::export_checkpoint((dir / "checkpoint.pt").string(), out), static_cast<int64_t>(named.size()));
  const auto dict = read_export(out);
  EXPECT_FALSE(dict.contains("lm_head.weight"));
  for (const auto& [name, tensor] : named) EXPECT_TRUE(dict.at(name).toTensor().equal(tensor)) << name;
}

TEST(Export, BadCheckpointIsNamedAndNothingIsWritten) {
  const fs::path dir = scratch("bad");
  { std::ofstream(dir / "junk.pt") << "not a checkpoint at all, just some bytes"; }
  const std::string out = (dir / "out.pt").string();
  EXPECT_NE(error_of([&] { specopt::export_checkpoint((dir / "junk.pt").string(), out); }).find("junk.pt"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_NE(error_of([&] { specopt::checkpoint_model_state((dir / "missing.pt").string()); }).find("missing.pt"),
            std::string::npos);
}
