// GPT model tests: names and shapes, causality, parameter count, the
// initialisation, weight tying, loss at initialisation, QK-norm, dropout, and
// the forward pass against an independent float64 re-implementation.
#include "specopt/train/models.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/utils.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace {

using specopt::GPT;
using specopt::GPTConfig;

GPTConfig tiny_config(bool qk_norm = false) {
  GPTConfig c;
  c.vocab_size = 37;
  c.block_size = 12;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 16;
  c.qk_norm = qk_norm;
  return c;
}

std::map<std::string, at::Tensor> params_by_name(GPT& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : model->named_parameters()) out[item.key()] = item.value();
  return out;
}

TEST(GPT, ParameterNamesAndShapesFollowNanoGPT) {
  torch::manual_seed(0);
  const GPTConfig c = tiny_config();
  GPT model(c);
  const int64_t d = c.n_embd;
  std::map<std::string, std::vector<int64_t>> expected = {
      {"transformer.wte.weight", {c.vocab_size, d}},
      {"transformer.wpe.weight", {c.block_size, d}},
      {"transformer.ln_f.weight", {d}},
  };
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    expected[p + "ln_1.weight"] = {d};
    expected[p + "attn.c_attn.weight"] = {3 * d, d};
    expected[p + "attn.c_proj.weight"] = {d, d};
    expected[p + "ln_2.weight"] = {d};
    expected[p + "mlp.c_fc.weight"] = {4 * d, d};
    expected[p + "mlp.c_proj.weight"] = {d, 4 * d};
  }
  const auto params = params_by_name(model);
  ASSERT_EQ(params.size(), expected.size());
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(params.count(name)) << "missing parameter " << name;
    EXPECT_EQ(params.at(name).sizes(), at::IntArrayRef(shape)) << name;
  }

  auto idx = at::randint(c.vocab_size, {3, 10}, at::kLong);
  auto logits = model->forward(idx);
  EXPECT_EQ(logits.sizes(), at::IntArrayRef({3, 10, c.vocab_size}));
}

TEST(GPT, ParameterCountMatchesClosedForm) {
  for (bool qk : {false, true}) {
    const GPTConfig c = tiny_config(qk);
    GPT model(c);
    int64_t counted = 0;
    for (const auto& p : model->parameters()) counted += p.numel();
    EXPECT_EQ(counted, specopt::gpt_parameter_count(c));
  }
  // GPT-2 124M as in the study (V = 50304, T = 1024, 12 × 768, no biases):
  // independent per-tensor sum, written out here.
  GPTConfig big;
  big.vocab_size = 50304;
  big.block_size = 1024;
  big.n_layer = 12;
  big.n_head = 12;
  big.n_embd = 768;
  const int64_t d = 768;
  const int64_t per_block = d + 3 * d * d + d * d + d + 4 * d * d + 4 * d * d;
  EXPECT_EQ(specopt::gpt_parameter_count(big), 50304 * d + 1024 * d + 12 * per_block + d);
  // nanoGPT reports the non-embedding count (minus wpe) as 123.59M for this model.
  EXPECT_NEAR((specopt::gpt_parameter_count(big) - 1024 * d) / 1e6, 123.59, 0.005);
}

TEST(GPT, ForwardIsCausal) {
  for (bool qk : {false, true}) {
    torch::manual_seed(1);
    const GPTConfig c = tiny_config(qk);
    GPT model(c);
    model->eval();
    auto idx = at::randint(c.vocab_size, {2, c.block_size}, at::kLong);
    const int64_t t = 5;
    auto changed = idx.clone();
    changed.select(1, t).add_(1).remainder_(c.vocab_size);
    torch::NoGradGuard no_grad;
    auto a = model->forward(idx), b = model->forward(changed);
    EXPECT_TRUE(at::allclose(a.slice(1, 0, t), b.slice(1, 0, t), 0.0, 1e-6)) << "qk_norm " << qk;
    // The changed token does influence its own and later positions.
    for (int64_t s = t; s < c.block_size; ++s) {
      EXPECT_GT((a.select(1, s) - b.select(1, s)).abs().max().item<double>(), 1e-6) << s;
    }
  }
}

TEST(GPT, InitialisationStatistics) {
  torch::manual_seed(2);
  GPTConfig c;
  c.vocab_size = 256;
  c.block_size = 64;
  c.n_layer = 6;
  c.n_head = 4;
  c.n_embd = 128;
  GPT model(c);
  const double residual_std = 0.02 / std::sqrt(2.0 * c.n_layer);
  std::vector<at::Tensor> residual, other;
  for (const auto& item : model->named_parameters()) {
    const auto& name = item.key();
    const auto& p = item.value();
    if (p.dim() == 1) {
      EXPECT_TRUE(at::equal(p, at::ones_like(p))) << name << " (LayerNorm weight must start at 1)";
    } else if (name.find("c_proj") != std::string::npos) {
      residual.push_back(p.detach().flatten());
    } else {
      other.push_back(p.detach().flatten());
    }
  }
  ASSERT_EQ(residual.size(), 2u * c.n_layer);
  // n ≈ 1e5 .. 1e6 samples: the relative standard error of a sample std is
  // 1/√(2n) < 0.3 %; 3 % is > 10 standard errors.
  auto r = at::cat(residual).to(at::kDouble), o = at::cat(other).to(at::kDouble);
  EXPECT_NEAR(r.std().item<double>() / residual_std, 1.0, 0.03);
  EXPECT_NEAR(r.mean().item<double>(), 0.0, 5.0 * residual_std / std::sqrt(r.numel()));
  EXPECT_NEAR(o.std().item<double>() / 0.02, 1.0, 0.03);
  EXPECT_NEAR(o.mean().item<double>(), 0.0, 5.0 * 0.02 / std::sqrt(o.numel()));
  // Per layer too: each c_proj has ≥ 16384 entries.
  for (const auto& t : residual) {
    EXPECT_NEAR(t.std().item<double>() / residual_std, 1.0, 0.05);
  }
}

TEST(GPT, WeightsAreTiedAndGradientsReachEveryParameter) {
  torch::manual_seed(3);
  const GPTConfig c = tiny_config();
  GPT model(c);
  const auto params = params_by_name(model);
  for (const auto& item : params) {
    EXPECT_EQ(item.first.find("lm_head"), std::string::npos) << item.first;
  }
  ASSERT_EQ(model->wte->weight.data_ptr(), params.at("transformer.wte.weight").data_ptr());

  // Inputs and targets use tokens 0..9 only: token 20 receives gradient only
  // through the LM head (the tied use of wte), never through the embedding.
  auto idx = at::randint(10, {2, 8}, at::kLong), targets = at::randint(10, {2, 8}, at::kLong);
  model->loss(idx, targets).backward();
  for (const auto& item : params) {
    ASSERT_TRUE(item.second.grad().defined()) << item.first;
    EXPECT_GT(item.second.grad().abs().sum().item<double>(), 0.0) << item.first;
  }
  EXPECT_GT(model->wte->weight.grad()[20].abs().sum().item<double>(), 0.0);
  // The LM head is wte: perturbing row 20 of wte changes the logit of token 20.
  torch::NoGradGuard no_grad;
  auto before = model->forward(idx);
  // (a random direction: a constant shift would be invisible, as ln_f's output has zero mean)
  model->wte->weight[20].add_(at::randn({c.n_embd}));
  auto after = model->forward(idx);
  auto diff = (after - before).abs().amax({0, 1});  // per vocab entry
  EXPECT_GT(diff[20].item<double>(), 1e-3);
  diff[20] = 0;
  EXPECT_LT(diff.max().item<double>(), 1e-12);
}

TEST(GPT, LossAtInitialisationIsNearLogVocab) {
  torch::manual_seed(4);
  GPTConfig c;
  c.vocab_size = 256;
  c.block_size = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 64;
  GPT model(c);
  auto idx = at::randint(c.vocab_size, {8, 32}, at::kLong);
  auto targets = at::randint(c.vocab_size, {8, 32}, at::kLong);
  torch::NoGradGuard no_grad;
  // Logits have std ≈ 0.02·√d ≈ 0.16 at initialisation, so the loss exceeds
  // ln V by about var/2 ≈ 0.013.
  const double loss = model->loss(idx, targets).item<double>();
  EXPECT_NEAR(loss, std::log(256.0), 0.1);
}

// ---- independent reference: float64, plain at:: ops, head by head ----

at::Tensor ref_layer_norm(const at::Tensor& x, const at::Tensor& w) {
  auto mean = x.mean(-1, true);
  auto var = (x - mean).pow(2).mean(-1, true);  // biased, as LayerNorm
  return (x - mean) / at::sqrt(var + 1e-5) * w;
}

at::Tensor ref_softmax_rows(const at::Tensor& s) {
  auto e = at::exp(s - std::get<0>(s.max(-1, true)));
  return e / e.sum(-1, true);
}

at::Tensor ref_gpt_logits(const std::map<std::string, at::Tensor>& P, const GPTConfig& c,
                          const at::Tensor& idx /* (T) */) {
  const int64_t T = idx.size(0), d = c.n_embd, nh = c.n_head, hs = d / nh;
  auto x = P.at("transformer.wte.weight").index_select(0, idx) +
           P.at("transformer.wpe.weight").slice(0, 0, T);  // (T, d)
  for (int64_t l = 0; l < c.n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    auto a = ref_layer_norm(x, P.at(p + "ln_1.weight"));
    auto W = P.at(p + "attn.c_attn.weight");  // rows: q (d), k (d), v (d)
    std::vector<at::Tensor> heads;
    for (int64_t h = 0; h < nh; ++h) {
      auto q = at::matmul(a, W.slice(0, h * hs, (h + 1) * hs).t());
      auto k = at::matmul(a, W.slice(0, d + h * hs, d + (h + 1) * hs).t());
      auto v = at::matmul(a, W.slice(0, 2 * d + h * hs, 2 * d + (h + 1) * hs).t());
      if (c.qk_norm) {
        q = q / at::sqrt(q.pow(2).mean(-1, true) + 1e-6);
        k = k / at::sqrt(k.pow(2).mean(-1, true) + 1e-6);
      }
      auto s = at::matmul(q, k.t()) / std::sqrt(static_cast<double>(hs));
      for (int64_t i = 0; i < T; ++i) {
        for (int64_t j = i + 1; j < T; ++j) s[i][j] = -1e300;  // position i sees j ≤ i
      }
      heads.push_back(at::matmul(ref_softmax_rows(s), v));
    }
    x = x + at::matmul(at::cat(heads, 1), P.at(p + "attn.c_proj.weight").t());
    auto m = ref_layer_norm(x, P.at(p + "ln_2.weight"));
    auto u = at::matmul(m, P.at(p + "mlp.c_fc.weight").t());
    u = 0.5 * u * (1.0 + at::erf(u / std::sqrt(2.0)));  // exact GELU
    x = x + at::matmul(u, P.at(p + "mlp.c_proj.weight").t());
  }
  x = ref_layer_norm(x, P.at("transformer.ln_f.weight"));
  return at::matmul(x, P.at("transformer.wte.weight").t());
}

TEST(GPT, ForwardMatchesIndependentFloat64Reference) {
  for (bool qk : {false, true}) {
    torch::manual_seed(5);
    const GPTConfig c = tiny_config(qk);
    GPT model(c);
    model->to(at::kDouble);
    // Move LayerNorm weights away from 1 so they are exercised.
    {
      torch::NoGradGuard no_grad;
      for (auto& p : model->parameters()) {
        if (p.dim() == 1) p.uniform_(0.5, 1.5);
      }
    }
    auto params = params_by_name(model);
    for (auto& item : params) item.second = item.second.detach();
    auto idx = at::randint(c.vocab_size, {3, 9}, at::kLong);
    torch::NoGradGuard no_grad;
    auto logits = model->forward(idx);
    ASSERT_EQ(logits.scalar_type(), at::kDouble);
    for (int64_t b = 0; b < idx.size(0); ++b) {
      auto ref = ref_gpt_logits(params, c, idx[b]);
      const double err = (logits[b] - ref).abs().max().item<double>();
      EXPECT_LT(err, 1e-10) << "qk_norm " << qk << " batch " << b;
    }
    // The loss is the mean cross entropy of those logits.
    auto targets = at::randint(c.vocab_size, {3, 9}, at::kLong);
    auto logp = at::log_softmax(logits, -1);
    const double ce = -logp.gather(2, targets.unsqueeze(2)).mean().item<double>();
    EXPECT_NEAR(model->loss(idx, targets).item<double>(), ce, 1e-12);
  }
}

TEST(GPT, QKNormChangesTheFunctionButNotTheParameters) {
  torch::manual_seed(6);
  GPT plain(tiny_config(false));
  GPT normed(tiny_config(true));
  {
    torch::NoGradGuard no_grad;
    auto src = params_by_name(plain);
    for (auto& item : normed->named_parameters()) item.value().copy_(src.at(item.key()));
  }
  auto idx = at::randint(37, {2, 12}, at::kLong);
  torch::NoGradGuard no_grad;
  auto a = plain->forward(idx), b = normed->forward(idx);
  EXPECT_TRUE(at::isfinite(b).all().item<bool>());
  EXPECT_GT((a - b).abs().max().item<double>(), 1e-4);
}

TEST(GPT, DropoutOnlyInTrainingMode) {
  GPTConfig c = tiny_config();
  c.dropout = 0.2;
  torch::manual_seed(7);
  GPT model(c);
  GPTConfig c0 = tiny_config();
  torch::manual_seed(7);
  GPT reference(c0);  // same draws → same weights
  auto idx = at::randint(c.vocab_size, {2, 12}, at::kLong);
  torch::NoGradGuard no_grad;
  model->train();
  auto t1 = model->forward(idx), t2 = model->forward(idx);
  EXPECT_GT((t1 - t2).abs().max().item<double>(), 1e-4);
  model->eval();
  reference->eval();
  EXPECT_TRUE(at::allclose(model->forward(idx), reference->forward(idx), 0.0, 0.0));
}

TEST(GPT, BadConfigAndInputsRaiseClearErrors) {
  GPTConfig c = tiny_config();
  c.n_embd = 15;
  try {
    GPT bad(c);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("n_embd"), std::string::npos) << e.what();
  }
  GPT model(tiny_config());
  try {
    model->forward(at::zeros({1, 13}, at::kLong));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("block_size"), std::string::npos) << e.what();
  }
  // Token ids outside [0, vocab_size) are named (on CUDA they would only trip a device assert).
  for (int64_t bad : {int64_t{37}, int64_t{1000}, int64_t{-1}}) {
    auto idx = at::zeros({2, 5}, at::kLong);
    idx[1][3] = bad;
    try {
      model->forward(idx);
      FAIL() << "expected an error for token id " << bad;
    } catch (const c10::Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("token id " + std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("vocab_size = 37"), std::string::npos) << msg;
    }
  }
  EXPECT_NO_THROW(model->forward(at::full({2, 5}, 36, at::kLong)));  // the largest valid id
  EXPECT_THROW(model->forward(at::zeros({4}, at::kLong)), c10::Error);
  EXPECT_THROW(model->forward(at::zeros({1, 4}, at::kFloat)), c10::Error);
}

}  // namespace
