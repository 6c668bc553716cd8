// Config parsing/overrides/round trip and the step schedules (no training).
#include "test_support.h"

#include "specopt/train/config.h"
#include "specopt/train/trainer.h"

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

namespace {

using specopt::TrainConfig;

using specopt::testing::error_of;

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("specopt_test_cfg_" + name);
  std::ofstream(path) << text;
  return path.string();
}

// ---- lr schedule ----------------------------------------------------------------

// nanoGPT-style warm-up + cosine, written out independently of lr_factor:
// peak 1, W warm-up steps, decay over steps W .. N-1 to ratio r.
double reference_cosine(int64_t step, int64_t W, int64_t N, double r) {
  if (step < W) return (step + 1.0) / W;
  const double t = double(step - W) / double(N - 1 - W);
  return r + 0.5 * (1.0 - r) * (1.0 + std::cos(3.14159265358979323846 * t));
}

TEST(LrSchedule, WarmupThenCosineMatchesFormula) {
  specopt::TrainLoopConfig t;
  t.steps = 111;
  t.warmup_steps = 10;
  t.min_lr_ratio = 0.1;
  t.lr_schedule = "cosine";
  // Hand values: first warm-up step, end of warm-up, middle of the decay, last step.
  EXPECT_DOUBLE_EQ(specopt::lr_factor(0, t), 0.1);
  EXPECT_DOUBLE_EQ(specopt::lr_factor(9, t), 1.0);
  EXPECT_DOUBLE_EQ(specopt::lr_factor(10, t), 1.0);
  EXPECT_NEAR(specopt::lr_factor(60, t), 0.55, 1e-15);  // t = ½: r + (1-r)/2
  EXPECT_NEAR(specopt::lr_factor(110, t), 0.1, 1e-15);
  for (int64_t s : {0, 3, 9, 10, 11, 35, 60, 85, 109, 110})
    EXPECT_NEAR(specopt::lr_factor(s, t), reference_cosine(s, 10, 111, 0.1), 1e-14) << "step " << s;
  for (int64_t s = 11; s < 111; ++s)
    EXPECT_LE(specopt::lr_factor(s, t), specopt::lr_factor(s - 1, t)) << "not decaying at step " << s;
}

TEST(LrSchedule, AbsoluteMinLrFloorMatchesFormula) {
  // The study's schedule: warm-up to the peak, cosine to an absolute floor (3e-6).
  specopt::TrainLoopConfig t;
  t.steps = 111;
  t.warmup_steps = 10;
  t.min_lr_ratio = 0.5;  // ignored once min_lr is set
  t.min_lr = 3e-6;
  const double peak = 6e-3;
  for (int64_t s : {0, 5, 9})
    EXPECT_DOUBLE_EQ(specopt::scheduled_lr(s, peak, t), peak * (s + 1.0) / 10) << "step " << s;
  for (int64_t s : {10, 35, 60, 85, 110})
    EXPECT_NEAR(specopt::scheduled_lr(s, peak, t),
                3e-6 + (peak - 3e-6) * reference_cosine(s, 10, 111, 0.0), 1e-17) << "step " << s;
  EXPECT_NEAR(specopt::scheduled_lr(110, peak, t), 3e-6, 1e-18);
  // Without a floor it is peak · lr_factor.
  t.min_lr = 0.0;
  for (int64_t s : {0, 10, 60, 110})
    EXPECT_DOUBLE_EQ(specopt::scheduled_lr(s, peak, t), peak * specopt::lr_factor(s, t));
}

TEST(LrSchedule, LinearConstantAndNoWarmup) {
  specopt::TrainLoopConfig t;
  t.steps = 101;
  t.warmup_steps = 0;
  t.min_lr_ratio = 0.0;
  t.lr_schedule = "linear";
  EXPECT_DOUBLE_EQ(specopt::lr_factor(0, t), 1.0);
  EXPECT_NEAR(specopt::lr_factor(25, t), 0.75, 1e-15);
  EXPECT_NEAR(specopt::lr_factor(100, t), 0.0, 1e-15);
  t.lr_schedule = "constant";
  t.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(specopt::lr_factor(1, t), 0.5);
  EXPECT_DOUBLE_EQ(specopt::lr_factor(50, t), 1.0);
  EXPECT_DOUBLE_EQ(specopt::lr_factor(100, t), 1.0);
}

TEST(PSchedule, ParsesAndInterpolates) {
  using specopt::PSchedule;
  EXPECT_FALSE(PSchedule::parse("").active());
  const auto lin = PSchedule::parse("linear:1.0->0.0");
  EXPECT_DOUBLE_EQ(lin.at(0, 11), 1.0);
  EXPECT_NEAR(lin.at(5, 11), 0.5, 1e-15);
  EXPECT_DOUBLE_EQ(lin.at(10, 11), 0.0);
  const auto cos = PSchedule::parse("cosine:1->0.25");
  EXPECT_DOUBLE_EQ(cos.at(0, 101), 1.0);
  EXPECT_NEAR(cos.at(50, 101), 0.625, 1e-15);
  EXPECT_NEAR(cos.at(25, 101), 0.25 + 0.75 * 0.5 * (1 + std::cos(M_PI / 4)), 1e-15);
  EXPECT_DOUBLE_EQ(PSchedule::parse("constant:0.5").at(7, 10), 0.5);
  EXPECT_NE(error_of([] { PSchedule::parse("linear:1->2"); }).find("outside [-0.5, 1]"), std::string::npos);
  EXPECT_NE(error_of([] { PSchedule::parse("step:1->0"); }).find("unknown kind 'step'"), std::string::npos);
  EXPECT_NE(error_of([] { PSchedule::parse("linear:1"); }).find("'linear:1'"), std::string::npos);
}

// ---- config ------------------------------------------------------------------------

TEST(Config, DefaultsAreTheDocumentedOnes) {
  const TrainConfig c = specopt::load_config("");
  EXPECT_EQ(c.run.seed, 0);
  EXPECT_EQ(c.run.device, "cpu");
  EXPECT_EQ(c.model.kind, "gpt");
  EXPECT_EQ(c.data.kind, "kjv");
  EXPECT_EQ(c.optim.variant, "Adam");
  EXPECT_EQ(c.optim.split_rows_patterns, std::vector<std::string>{"c_attn"});
  EXPECT_EQ(c.train.grad_accum, 1);
  EXPECT_EQ(c.train.grad_clip, 1.0);
  EXPECT_EQ(c.train.min_lr_ratio, 0.1);
  EXPECT_EQ(c.train.lr_schedule, "cosine");
  EXPECT_TRUE(specopt::config_differences(c, TrainConfig{}).empty());
}

TEST(Config, FileThenTypedOverrides) {
  const std::string path = write_temp("file.toml", R"(
[model]
kind = "mlp"
hidden = [64, 32]
[data]
kind = "fashion_mnist"
[optim]
variant = "mSGDZ"
lr_matrix = 1   # an integer is a fine double
[train]
steps = 50
)");
  const TrainConfig c = specopt::load_config(
      path, {"train.steps=7", "optim.lr_vector=3e-3", "optim.nesterov=true", "model.hidden=[8]",
             "run.device=cpu", "optim.split_rows=c_attn,c_fc", "optim.p_schedule=linear:1->0",
             "data.path=\"/tmp/x y\""});
  EXPECT_EQ(c.model.kind, "mlp");
  EXPECT_EQ(c.optim.variant, "mSGDZ");
  EXPECT_EQ(c.optim.lr_matrix, 1.0);
  EXPECT_EQ(c.train.steps, 7);  // override wins over the file
  EXPECT_EQ(c.optim.lr_vector, 3e-3);
  EXPECT_TRUE(c.optim.nesterov);
  EXPECT_EQ(c.model.hidden, std::vector<int64_t>{8});
  EXPECT_EQ(c.optim.split_rows_patterns, (std::vector<std::string>{"c_attn", "c_fc"}));
  EXPECT_EQ(c.optim.p_schedule, "linear:1->0");
  EXPECT_EQ(c.data.path, "/tmp/x y");
  EXPECT_EQ(c.train.batch_size, TrainConfig{}.train.batch_size);  // untouched default
}

TEST(Config, UnknownKeysAreErrorsNamingThem) {
  TrainConfig c;
  const std::string e1 = error_of([&] { specopt::apply_override(c, "train.stepz=3"); });
  EXPECT_NE(e1.find("'train.stepz'"), std::string::npos) << e1;
  EXPECT_NE(e1.find("train.steps"), std::string::npos) << "should list the valid keys: " << e1;
  const std::string e2 = error_of([&] { specopt::apply_toml(c, "[optim]\nlearning_rate = 1\n", "x.toml"); });
  EXPECT_NE(e2.find("'optim.learning_rate'"), std::string::npos) << e2;
  EXPECT_NE(e2.find("x.toml"), std::string::npos) << e2;
  const std::string e3 = error_of([&] { specopt::apply_toml(c, "[optimizer]\nlr = 1\n", "x.toml"); });
  EXPECT_NE(e3.find("[optimizer]"), std::string::npos) << e3;
  const std::string e4 = error_of([&] { specopt::apply_toml(c, "steps = 3\n", "x.toml"); });
  EXPECT_NE(e4.find("'steps'"), std::string::npos) << e4;
  const std::string e5 = error_of([&] { specopt::apply_override(c, "train.steps"); });
  EXPECT_NE(e5.find("table.key=value"), std::string::npos) << e5;
}

TEST(Config, BadValuesAreErrorsNamingTheKey) {
  auto load_error = [](const std::string& o) { return error_of([&] { specopt::load_config("", {o}); }); };
  for (const auto& [override_text, expect] : std::vector<std::pair<std::string, std::string>>{
           {"train.steps=1.5", "'train.steps': expected an integer"},
           {"train.steps=abc", "'train.steps'"},
           {"optim.lr_matrix=fast", "'optim.lr_matrix'"},
           {"optim.nesterov=1", "'optim.nesterov': expected true or false"},
           {"model.hidden=[1.5]", "'model.hidden[0]'"},
           {"train.steps=0", "'train.steps' must lie in [1, 10000000000], got 0"},
           {"optim.lr_matrix=-1", "'optim.lr_matrix' must lie in [0, "},
           {"optim.lr_matrix=nan", "'optim.lr_matrix'"},
           {"optim.variant=Adamm", "'optim.variant'"},
           {"optim.method=magic", "'optim.method'"},
           {"optim.scale=huge", "'optim.scale'"},
           {"optim.p_schedule=linear:0->3", "'optim.p_schedule'"},
           {"model.kind=rnn", "'model.kind': unknown value 'rnn'"},
           {"train.grad_accum=3", "'train.batch_size' (32) must be divisible by train.grad_accum (3)"},
           {"run.device=tpu", "'run.device'"},
           {"train.min_lr=-1e-6", "'train.min_lr' must lie in [0, "},
           {"train.min_lr=1", "'train.min_lr' (1) must not exceed optim.lr_matrix"},
           {"data.kind=fashion_mnist", "do not fit"},
       }) {
    const std::string e = load_error(override_text);
    EXPECT_NE(e.find(expect), std::string::npos) << override_text << " → " << e;
  }
  const std::string path = write_temp("bad.toml", "[train]\nsteps = \"many\"\n");
  const std::string e = error_of([&] { specopt::load_config(path); });
  EXPECT_NE(e.find("'train.steps': expected an integer"), std::string::npos) << e;
  const std::string syntax = write_temp("syntax.toml", "[train\nsteps = 1\n");
  const std::string es = error_of([&] { specopt::load_config(syntax); });
  EXPECT_NE(es.find("line 1"), std::string::npos) << es;
  EXPECT_NE(error_of([] { specopt::load_config("/nonexistent/c.toml"); }).find("/nonexistent/c.toml"),
            std::string::npos);
}

TEST(Config, ResolvedConfigRoundTrips) {
  TrainConfig c;
  for (const char* o : {"run.seed=42", "run.device=cuda:1", "run.threads=3", "model.kind=cnn",
                        "model.channels=[4, 8]", "model.fc_hidden=17", "model.dropout=0.1",
                        "data.kind=fashion_mnist", "data.train_limit=1000", "optim.variant=adam:p=0.3",
                        "optim.lr_matrix=0.30000000000000004", "optim.eps=1e-12", "optim.split_rows=[]",
                        "optim.p_schedule=cosine:1->0", "train.lr_schedule=linear", "train.grad_clip=0"})
    specopt::apply_override(c, o);
  const std::string text = specopt::config_to_toml(c);
  const TrainConfig back = specopt::config_from_toml_string(text, "round trip");
  EXPECT_TRUE(specopt::config_differences(c, back).empty()) << text;
  EXPECT_EQ(back.optim.lr_matrix, 0.30000000000000004);  // bit-exact double
  EXPECT_EQ(back.optim.eps, 1e-12);
  EXPECT_EQ(back.model.channels, (std::vector<int64_t>{4, 8}));
  EXPECT_TRUE(back.optim.split_rows_patterns.empty());
  // Every key is in the document, so the file is the whole config.
  for (const auto& key : specopt::config_keys())
    EXPECT_NE(text.find(key.substr(key.find('.') + 1) + " = "), std::string::npos) << key;
  // And differences are reported by key.
  TrainConfig d = c;
  d.train.steps += 1;
  d.optim.beta2 = 0.99;
  EXPECT_EQ(specopt::config_differences(c, d), (std::vector<std::string>{"optim.beta2", "train.steps"}));
}

// Issue 13, item 2: every typed read gives the exact value or an error naming
// the key. An integer that a double cannot hold exactly used to come back as
// an empty optional, dereferenced into garbage (6.95e-310, different each run).
TEST(Config, IntegersForRealKeysAreExactOrErrors) {
  for (const char* key : {"optim.lr_matrix", "model.dropout", "train.min_lr", "train.min_lr_ratio",
                          "data.val_fraction"}) {
    for (const char* value : {"9007199254740993", "9223372036854775807", "-9223372036854775807"}) {
      const std::string o = std::string(key) + "=" + value;
      const std::string e = error_of([&] {
        TrainConfig c;
        specopt::apply_override(c, o);
      });
      EXPECT_NE(e.find(std::string("config key '") + key + "'"), std::string::npos) << o << " → " << e;
      EXPECT_NE(e.find("no exact double value"), std::string::npos) << o << " → " << e;
    }
  }
  // Integers a double holds exactly are taken as they are, from files too.
  TrainConfig c;
  specopt::apply_override(c, "optim.lr_matrix=9007199254740992");
  EXPECT_EQ(c.optim.lr_matrix, 9007199254740992.0);
  specopt::apply_override(c, "optim.lr_vector=0");
  EXPECT_EQ(c.optim.lr_vector, 0.0);
  specopt::apply_toml(c, "[model]\ndropout = 0\n[optim]\nbeta2 = 1\n", "t.toml");
  EXPECT_EQ(c.model.dropout, 0.0);
  EXPECT_EQ(c.optim.beta2, 1.0);
  const std::string e = error_of([&] { specopt::apply_toml(c, "[train]\nmin_lr = 9007199254740995\n", "t.toml"); });
  EXPECT_NE(e.find("'train.min_lr'"), std::string::npos) << e;
}

// Issue 13, item 3 (and the float32 limits of items 4 and 5): sizes, counts
// and real values are checked against documented ranges before anything is
// built, so ns_steps = 2^63 - 1 or n_layer = 2^32 + 1 are errors, not a spin
// or an allocation until memory runs out.
TEST(Config, SizesAndRealsOutsideTheirSaneRangesAreErrors) {
  auto load_error = [](const std::string& o) { return error_of([&] { specopt::load_config("", {o}); }); };
  for (const auto& [o, expect] : std::vector<std::pair<std::string, std::string>>{
           {"optim.ns_steps=9223372036854775807", "'optim.ns_steps' must lie in [1, 1000], got 9223372036854775807"},
           {"model.n_layer=4294967297", "'model.n_layer' must lie in [1, 256], got 4294967297"},
           {"model.n_head=100000", "'model.n_head' must lie in [1, 1024]"},
           {"model.n_embd=1000000", "'model.n_embd' must lie in [1, 65536]"},
           {"model.block_size=9223372036854775807", "'model.block_size' must lie in [1, 1048576]"},
           {"model.hidden=[64, 4294967297]", "'model.hidden' must lie in [1, 65536]"},
           {"model.channels=[4, 100000]", "'model.channels' must lie in [1, 4096]"},
           {"model.fc_hidden=0", "'model.fc_hidden' must lie in [1, 65536]"},
           {"data.vocab_size=100000000", "'data.vocab_size' must lie in [0, 1048576]"},
           {"optim.split_rows_blocks=100000", "'optim.split_rows_blocks' must lie in [1, 1024]"},
           {"train.batch_size=9223372036854775807", "'train.batch_size' must lie in [1, 16777216]"},
           {"train.steps=9223372036854775807", "'train.steps' must lie in [1, 10000000000]"},
           {"train.eval_batches=-1", "'train.eval_batches' must lie in [0, 10000000000]"},
           {"run.threads=100000", "'run.threads' must lie in [0, 4096]"},
           {"optim.lr_matrix=1e308", "'optim.lr_matrix' must lie in [0, 3.40282e+38] (finite in float32)"},
           {"optim.lr_vector=inf", "'optim.lr_vector' must lie in [0, 3.40282e+38]"},
           {"optim.weight_decay_matrix=1e39", "'optim.weight_decay_matrix'"},
           {"train.grad_clip=nan", "'train.grad_clip'"},
           {"optim.eps=1e-300", "'optim.eps' must lie in [1.17549e-38, 1] (non-zero in float32"},
           {"optim.eps=1e-50", "'optim.eps' must lie in"},
           {"optim.eps=0", "'optim.eps' must lie in"},
           {"optim.spectral_tol=2", "'optim.spectral_tol' must lie in (0, 1]"},
       }) {
    const std::string e = load_error(o);
    EXPECT_NE(e.find(expect), std::string::npos) << o << " → " << e;
  }
  // The bounds themselves are inside.
  EXPECT_NO_THROW(specopt::load_config("", {"optim.ns_steps=1000", "model.n_layer=256", "optim.eps=1.2e-38",
                                            "optim.lr_matrix=1e30", "optim.lr_vector=1e30"}));
}

// ---- the [optim] table: OptimizerSpec's field table under the config's keys ----------

// The [optim] keys exactly as configs/ and run directories spell them.
TEST(Config, OptimKeysAreUnchanged) {
  std::vector<std::string> optim;
  for (const auto& key : specopt::config_keys())
    if (key.rfind("optim.", 0) == 0) optim.push_back(key);
  EXPECT_EQ(optim, (std::vector<std::string>{
                       "optim.variant", "optim.lr_matrix", "optim.lr_vector", "optim.weight_decay_matrix",
                       "optim.weight_decay_vector", "optim.beta1", "optim.beta2", "optim.eps", "optim.momentum",
                       "optim.nesterov", "optim.method", "optim.scale", "optim.split_rows",
                       "optim.split_rows_by_shape", "optim.split_rows_blocks", "optim.spectral_tol",
                       "optim.newton_lower", "optim.ns_steps", "optim.p_schedule"}));
}

// Every [optim] key set away from its default, through --set and back through
// the written TOML, so a key missing from the table fails here.
TEST(Config, EveryOptimKeyRoundTrips) {
  const TrainConfig c = specopt::load_config(
      "", {"optim.variant=mSGDQ", "optim.lr_matrix=0.02", "optim.lr_vector=0.004", "optim.weight_decay_matrix=0.1",
           "optim.weight_decay_vector=0.2", "optim.beta1=0.8", "optim.beta2=0.99", "optim.eps=1e-6",
           "optim.momentum=0.7", "optim.nesterov=true", "optim.method=Newton", "optim.scale=rms",
           "optim.split_rows=a,b", "optim.split_rows_by_shape=true", "optim.split_rows_blocks=4",
           "optim.spectral_tol=0.001", "optim.newton_lower=0.01", "optim.ns_steps=7",
           "optim.p_schedule=linear:1->0"});
  const std::string text = specopt::config_to_toml(c);
  const TrainConfig back = specopt::config_from_toml_string(text, "round trip");
  EXPECT_TRUE(specopt::config_differences(c, back).empty()) << text;
  for (const TrainConfig* x : {&c, &back}) {
    const specopt::OptimConfig& o = x->optim;
    EXPECT_EQ(o.variant, "mSGDQ");
    EXPECT_EQ(o.lr_matrix, 0.02);
    EXPECT_EQ(o.lr_vector, 0.004);
    EXPECT_EQ(o.weight_decay_matrix, 0.1);
    EXPECT_EQ(o.weight_decay_vector, 0.2);
    EXPECT_EQ(o.beta1, 0.8);
    EXPECT_EQ(o.beta2, 0.99);
    EXPECT_EQ(o.eps, 1e-6);
    EXPECT_EQ(o.momentum, 0.7);
    EXPECT_TRUE(o.nesterov);
    EXPECT_EQ(o.method, specopt::Method::kNewton);
    EXPECT_EQ(o.scale, specopt::ScaleMode::kRmsMatch);
    EXPECT_EQ(o.split_rows_patterns, (std::vector<std::string>{"a", "b"}));
    EXPECT_TRUE(o.split_rows_by_shape);
    EXPECT_EQ(o.split_rows_blocks, 4);
    EXPECT_EQ(o.spectral.tol(), 0.001);
    EXPECT_EQ(o.spectral.newton_lower(), 0.01);
    EXPECT_EQ(o.spectral.ns_steps(), 7);
    EXPECT_EQ(o.p_schedule, "linear:1->0");
  }
  EXPECT_NE(text.find("method = 'newton'"), std::string::npos) << text;  // enums by their names
}

// docs/training.md's key table has a row for every config key.
TEST(Config, DocsListEveryKey) {
  const auto rows = specopt::testing::doc_section("training.md", "## Config keys", /*tables_only=*/true);
  for (const auto& key : specopt::config_keys()) {
    const bool listed = std::any_of(rows.begin(), rows.end(), [&](const std::string& row) {
      return row.find("`" + key + "`") != std::string::npos;
    });
    EXPECT_TRUE(listed) << "docs/training.md has no row for '" << key << "'";
  }
}

}  // namespace
