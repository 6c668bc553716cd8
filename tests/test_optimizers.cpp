// Tests of the spectral optimizers (update_rules.h, spectral_adamw.h,
// spectral_sgd.h, make_optimizer.h) against torch::optim::AdamW and against
// straightforward float64 implementations of the study's formulas written
// here, with Ψ_p from at::linalg_svd.
#include "paper_reference.h"
#include "test_support.h"
#include "specopt/core/make_optimizer.h"
#include "specopt/core/option_fields.h"
#include "specopt/train/models.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"
#include "specopt/train/trainer.h"
#include "specopt/core/update_rules.h"
#include "specopt/core/variants.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

using specopt::Family;
using specopt::Method;
using specopt::ScaleMode;

// ---- independent reference ----------------------------------------------------

// Ψ_p(O) = U Σ^p Vᵀ of O viewed as (dim0, rest), in float64 via the SVD.
// Singular values below 1e-12·σ_max are zero and stay zero (spectral.h's
// convention; Adam's first update m̂/√v̂ ≈ sign(g) is often rank-deficient).
at::Tensor reference_psi(const at::Tensor& O, double p) {
  const auto M = O.to(at::kDouble).reshape({O.size(0), -1});
  auto [U, S, Vh] = at::linalg_svd(M, /*full_matrices=*/false);
  const auto powered = at::where(S > 1e-12 * S.max(), S.pow(p), at::zeros_like(S));
  return at::matmul(U * powered.unsqueeze(0), Vh).reshape(O.sizes());
}

// The study's shape factor at p = 0 (ScaleMode::kAuto).
double reference_scale(const at::Tensor& O, double p) {
  const double rows = O.size(0), cols = O.numel() / O.size(0);
  return p == 0.0 ? std::sqrt(std::max(1.0, rows / cols)) : 1.0;
}

// Ψ_p of a matrix split into `blocks` row blocks, scale per block.
at::Tensor reference_transform(const at::Tensor& O, double p, int64_t blocks = 1) {
  std::vector<at::Tensor> out;
  for (const auto& b : O.chunk(blocks, 0)) out.push_back(reference_psi(b, p) * reference_scale(b, p));
  return at::cat(out, 0);
}

struct ReferenceAdam {  // one parameter, float64
  double lr, beta1, beta2, eps, wd;
  bool decay_vectors = false;
  int64_t blocks = 1;
  at::Tensor m, v;
  int64_t t = 0;
  void step(at::Tensor& W, const at::Tensor& g, double p) {
    if (!m.defined()) {
      m = at::zeros_like(W);
      v = at::zeros_like(W);
    }
    ++t;
    m = beta1 * m + (1 - beta1) * g;
    v = beta2 * v + (1 - beta2) * g * g;
    const auto mhat = m / (1 - std::pow(beta1, t));
    const auto vhat = v / (1 - std::pow(beta2, t));
    const auto u = mhat / (vhat.sqrt() + eps);
    if (W.dim() >= 2) {
      W = W * (1 - lr * wd) - lr * reference_transform(u, p, blocks);
    } else {
      W = W * (1 - lr * (decay_vectors ? wd : 0.0)) - lr * u;
    }
  }
};

struct ReferenceSGD {  // one parameter, float64
  double lr, mu, wd;
  bool nesterov = false;
  int64_t blocks = 1;
  at::Tensor b;
  void step(at::Tensor& W, const at::Tensor& g, double p) {
    b = b.defined() ? mu * b + g : g.clone();
    const auto d = nesterov ? g + mu * b : b;
    if (W.dim() >= 2) {
      W = W * (1 - lr * wd) - lr * reference_transform(d, p, blocks);
    } else {
      W = W - lr * d;
    }
  }
};

// ---- fixtures ----------------------------------------------------------------

// A parameter set covering tall, wide, same-shape (batched), >2-D and vector cases.
std::vector<at::Tensor> make_params(at::ScalarType dtype, uint64_t seed = 1) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const std::vector<std::vector<int64_t>> shapes = {{6, 4}, {4, 6}, {6, 4}, {4, 2, 3}, {5}, {6}};
  std::vector<at::Tensor> params;
  for (const auto& s : shapes) params.push_back(at::randn(s, gen, at::TensorOptions().dtype(dtype)));
  return params;
}

// Deterministic gradients: step k, parameter i.
at::Tensor make_grad(const at::Tensor& w, int step, size_t i) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 + 100 * step + i);
  return at::randn(w.sizes(), gen, at::TensorOptions().dtype(at::kDouble)).to(w.scalar_type());
}

std::vector<at::Tensor> clones(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone().requires_grad_(t.requires_grad()));
  return out;
}

void set_grads(std::vector<at::Tensor>& params, int step) {
  for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = make_grad(params[i], step, i);
}

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
  const auto A = a.to(at::kDouble), B = b.to(at::kDouble);
  return ((A - B).abs().max() / B.abs().max().clamp_min(1e-30)).item<double>();
}

// EXPECT that fn throws a c10::Error whose message contains every fragment.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "expected a c10::Error";
}

// ---- p = 1 is torch AdamW -----------------------------------------------------

TEST(SpectralAdamW, PEqualsOneMatchesTorchAdamW) {
  auto base = make_params(at::kFloat);
  auto ours = clones(base), theirs = clones(base);
  // Matrices decayed, vectors not (the default), in both.
  std::vector<at::Tensor> theirs_matrices, theirs_vectors;
  for (auto& t : theirs) (t.dim() >= 2 ? theirs_matrices : theirs_vectors).push_back(t);
  const double lr = 3e-3, wd = 0.1;
  torch::optim::AdamW reference(
      {torch::optim::OptimizerParamGroup(theirs_matrices,
                                         std::make_unique<torch::optim::AdamWOptions>(
                                             torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(wd))),
       torch::optim::OptimizerParamGroup(theirs_vectors,
                                         std::make_unique<torch::optim::AdamWOptions>(
                                             torch::optim::AdamWOptions(lr).betas({0.9, 0.95}).weight_decay(0)))},
      torch::optim::AdamWOptions(lr));
  specopt::SpectralAdamW opt(ours, specopt::SpectralAdamWOptions(lr).betas({0.9, 0.95}).weight_decay(wd));
  for (int step = 0; step < 20; ++step) {
    set_grads(ours, step);
    set_grads(theirs, step);
    opt.step();
    reference.step();
  }
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_LE(max_rel_diff(ours[i], theirs[i]), 1e-6) << "param " << i;
    EXPECT_FALSE(at::equal(ours[i], base[i])) << "param " << i << " did not move";
  }
}

TEST(SpectralAdamW, DecayVectorsMatchesTorchAdamWOnEveryParameter) {
  auto base = make_params(at::kFloat, 7);
  auto ours = clones(base), theirs = clones(base);
  torch::optim::AdamW reference(theirs, torch::optim::AdamWOptions(1e-2).weight_decay(0.05));
  specopt::SpectralAdamW opt(ours, specopt::SpectralAdamWOptions(1e-2).weight_decay(0.05).decay_vectors(true));
  for (int step = 0; step < 20; ++step) {
    set_grads(ours, step);
    set_grads(theirs, step);
    opt.step();
    reference.step();
  }
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_LE(max_rel_diff(ours[i], theirs[i]), 1e-6) << "param " << i;
}

// ---- the eight variants against the reference ----------------------------------

// Method svd: Adam's early updates m̂/(√v̂+ε) ≈ sign(g) are often nearly
// singular (σ_min ~ ε·σ_max), which only the SVD resolves in float64; the
// methods' own accuracy is the spectral tests' business.
void run_variant_against_reference(const specopt::Variant& v, const std::vector<double>& p_schedule,
                                   bool nesterov = false, Method method = Method::kSvd) {
  SCOPED_TRACE(v.name);
  auto params = make_params(at::kDouble, 3);
  std::vector<at::Tensor> ref = clones(params);
  const double lr = 0.05, wd = 0.1;
  std::unique_ptr<specopt::SpectralOptimizerBase> opt;
  std::vector<ReferenceAdam> adam(params.size(), ReferenceAdam{lr, 0.9, 0.95, 1e-8, wd});
  std::vector<ReferenceSGD> sgd(params.size(), ReferenceSGD{lr, 0.9, wd, nesterov});
  if (v.family == Family::kAdam) {
    opt = std::make_unique<specopt::SpectralAdamW>(
        params, specopt::SpectralAdamWOptions(lr).betas({0.9, 0.95}).weight_decay(wd).p(v.p).method(method));
  } else {
    opt = std::make_unique<specopt::SpectralSGD>(
        params,
        specopt::SpectralSGDOptions(lr).momentum(0.9).nesterov(nesterov).weight_decay(wd).p(v.p).method(method));
  }
  for (size_t step = 0; step < p_schedule.size(); ++step) {
    const double p = p_schedule[step];
    if (v.family == Family::kAdam) {
      static_cast<specopt::SpectralAdamWOptions&>(opt->param_groups()[0].options()).p(p);
    } else {
      static_cast<specopt::SpectralSGDOptions&>(opt->param_groups()[0].options()).p(p);
    }
    set_grads(params, step);
    opt->step();
    for (size_t i = 0; i < ref.size(); ++i) {
      const auto g = make_grad(ref[i], step, i);
      if (v.family == Family::kAdam) adam[i].step(ref[i], g, p);
      else sgd[i].step(ref[i], g, p);
    }
  }
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_LE(max_rel_diff(params[i], ref[i]), 1e-9) << "param " << i << " shape " << params[i].sizes();
}

TEST(Variants, EachMatchesReferenceOverTenSteps) {
  for (const auto& v : specopt::named_variants())
    run_variant_against_reference(v, std::vector<double>(10, v.p));
}

TEST(Variants, DefaultMethodMatchesReferenceForMSGDFamily) {
  // Momentum buffers are well conditioned: the default method (auto) meets the reference too.
  for (const char* name : {"mSGDS", "mSGDQ", "mSGDZ"}) {
    const auto v = specopt::parse_variant(name);
    run_variant_against_reference(v, std::vector<double>(10, v.p), false, Method::kAuto);
  }
}

TEST(Variants, NesterovMatchesReference) {
  run_variant_against_reference(specopt::parse_variant("mSGDS"), std::vector<double>(10, 0.5), true);
}

TEST(Variants, PChangeBetweenStepsTakesEffect) {
  // A p schedule 1 → ½ → ¼ → 0 → 0.3 applied through the group options.
  const std::vector<double> schedule = {1.0, 1.0, 0.5, 0.5, 0.25, 0.0, 0.0, 0.3};
  run_variant_against_reference(specopt::parse_variant("Adam"), schedule);
  run_variant_against_reference(specopt::parse_variant("mSGD"), schedule);
}

// ---- transform_matrix_updates ------------------------------------------------------

TEST(Transform, RowBlockSplitEqualsPerBlockTransform) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto qkv = at::randn({12, 4}, gen, at::TensorOptions().dtype(at::kDouble));  // 3 blocks of 4×4
  const auto wide = at::randn({6, 8}, gen, at::TensorOptions().dtype(at::kDouble));  // 3 blocks of 2×8
  for (double p : {0.0, 0.25, 0.5}) {
    const auto out = specopt::transform_matrix_updates(
        {qkv, wide}, specopt::MatrixTransformOptions().p(p).method(Method::kSvd).row_blocks(3));
    EXPECT_LE(max_rel_diff(out[0], reference_transform(qkv, p, 3)), 1e-10) << "p=" << p;
    EXPECT_LE(max_rel_diff(out[1], reference_transform(wide, p, 3)), 1e-10) << "p=" << p;
    // ... and is not the transform of the whole matrix.
    EXPECT_GT(max_rel_diff(out[0], reference_transform(qkv, p, 1)), 1e-3) << "p=" << p;
  }
}

TEST(Transform, SameShapeBatchingEqualsPerMatrixResults) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
  std::vector<at::Tensor> updates;
  for (int i = 0; i < 4; ++i) updates.push_back(at::randn({8, 5}, gen));
  updates.push_back(at::randn({5, 8}, gen));
  updates.push_back(at::randn({8, 5}, gen) * 1e-3);
  for (Method method : {Method::kSvd, Method::kEigh, Method::kAuto}) {
    const auto options = specopt::MatrixTransformOptions().p(0.25).method(method);
    const auto batched = specopt::transform_matrix_updates(updates, options);
    for (size_t i = 0; i < updates.size(); ++i) {
      const auto single = specopt::transform_matrix_updates({updates[i]}, options)[0];
      EXPECT_LE(max_rel_diff(batched[i], single), 1e-5) << specopt::method_name(method) << " matrix " << i;
      EXPECT_LE(max_rel_diff(batched[i], reference_psi(updates[i], 0.25)), 1e-4) << "matrix " << i;
    }
  }
}

TEST(Transform, ScaleModes) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  const auto tall = at::randn({16, 4}, gen, at::TensorOptions().dtype(at::kDouble));
  const auto psi0 = reference_psi(tall, 0.0);
  const auto with = [&](ScaleMode mode, double p) {
    return specopt::transform_matrix_updates({tall},
                                             specopt::MatrixTransformOptions().p(p).scale(mode).method(Method::kSvd))[0];
  };
  EXPECT_LE(max_rel_diff(with(ScaleMode::kAuto, 0.0), psi0 * 2.0), 1e-10);   // max(1, 16/4)^½ = 2
  EXPECT_LE(max_rel_diff(with(ScaleMode::kShape, 0.0), psi0 * 2.0), 1e-10);
  EXPECT_LE(max_rel_diff(with(ScaleMode::kNone, 0.0), psi0), 1e-10);
  EXPECT_LE(max_rel_diff(with(ScaleMode::kRmsMatch, 0.0), psi0 * 0.8), 1e-10);  // 0.2·√16
  EXPECT_LE(max_rel_diff(with(ScaleMode::kAuto, 0.5), reference_psi(tall, 0.5)), 1e-10);
  EXPECT_TRUE(with(ScaleMode::kAuto, 1.0).is_same(tall));  // Ψ_1 with unit scale: no copy
  // Wide matrices get no shape factor; `paper` at p = 0 has it built in already.
  EXPECT_DOUBLE_EQ(specopt::scale_factor(ScaleMode::kAuto, 0.0, 4, 16, Method::kSvd), 1.0);
  EXPECT_DOUBLE_EQ(specopt::scale_factor(ScaleMode::kAuto, 0.0, 16, 4, Method::kPaper), 1.0);
  EXPECT_DOUBLE_EQ(specopt::scale_factor(ScaleMode::kNone, 0.0, 16, 4, Method::kPaper), 0.5);
  EXPECT_EQ(specopt::parse_scale_mode("RMS"), ScaleMode::kRmsMatch);
  for (auto m : {ScaleMode::kAuto, ScaleMode::kNone, ScaleMode::kShape, ScaleMode::kRmsMatch})
    EXPECT_EQ(specopt::parse_scale_mode(specopt::scale_mode_name(m)), m);
  expect_error([] { specopt::parse_scale_mode("muon"); }, {"'muon'"});
}

TEST(SpectralAdamW, RowBlocksOptionMatchesReference) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(14);
  auto W = at::randn({12, 4}, gen, at::TensorOptions().dtype(at::kDouble));
  auto ref = W.clone();
  specopt::SpectralAdamW opt({W}, specopt::SpectralAdamWOptions(0.01).weight_decay(0).p(0.0).row_blocks(3).method(Method::kSvd));
  ReferenceAdam r{0.01, 0.9, 0.999, 1e-8, 0.0};
  r.blocks = 3;
  for (int step = 0; step < 5; ++step) {
    W.mutable_grad() = make_grad(W, step, 0);
    opt.step();
    r.step(ref, make_grad(ref, step, 0), 0.0);
  }
  EXPECT_LE(max_rel_diff(W, ref), 1e-9);
  expect_error([&] { specopt::SpectralAdamW({W}, specopt::SpectralAdamWOptions().row_blocks(5)).step(); },
               {"row_blocks = 5", "12 rows"});
}

// ---- robustness ----------------------------------------------------------------

TEST(Robustness, NonFiniteGradientThrowsNamingParameterAndChangesNothing) {
  for (bool adam : {true, false}) {
    auto params = make_params(at::kFloat);
    std::unique_ptr<specopt::SpectralOptimizerBase> opt;
    if (adam) opt = std::make_unique<specopt::SpectralAdamW>(params, specopt::SpectralAdamWOptions(0.01).p(0.5));
    else opt = std::make_unique<specopt::SpectralSGD>(params, specopt::SpectralSGDOptions(0.01).p(0.5));
    set_grads(params, 0);
    opt->step();
    set_grads(params, 1);
    params[3].mutable_grad()[1][0][2] = std::nan("");
    const auto before = clones(params);
    std::ostringstream saved;
    {
      torch::serialize::OutputArchive a;
      opt->save(a);
      a.save_to(saved);
    }
    expect_error([&] { opt->step(); }, {"parameter 3 of group 0", "[4, 2, 3]", "1 NaN"});
    for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(at::equal(params[i], before[i])) << i;
    std::ostringstream after;
    {
      torch::serialize::OutputArchive a;
      opt->save(a);
      a.save_to(after);
    }
    EXPECT_EQ(saved.str(), after.str()) << "optimizer state changed";
    // Names, when given, are used.
    opt->set_parameter_names(0, {"a", "b", "c", "blocks.0.weight", "e", "f"});
    params[3].mutable_grad()[0][0][0] = INFINITY;
    expect_error([&] { opt->step(); }, {"blocks.0.weight", "1 NaN and 1 Inf"});
  }
}

TEST(Robustness, HugeFiniteGradientsAreNotReportedAsNonFinite) {
  // Their float32 sum overflows; the entries are finite.
  auto big = at::full({4, 4}, 3e38, at::kFloat);
  EXPECT_NO_THROW(specopt::check_finite_grads({big, at::ones({3})}, {"big", "ones"}));
  big[2][1] = -INFINITY;
  expect_error([&] { specopt::check_finite_grads({at::ones({3}), big}, {"ones", "big"}); },
               {"big", "0 NaN and 1 Inf of 16"});
  expect_error([&] { specopt::check_finite_grads({at::ones({3}), big}, {}); }, {"gradient 1"});
}

TEST(Robustness, ZeroGradientsGiveAFiniteStep) {
  for (const auto& v : specopt::named_variants()) {
    auto params = make_params(at::kFloat);
    const auto before = clones(params);
    const std::vector<std::pair<std::string, at::Tensor>> list = {
        {"w0", params[0]}, {"w1", params[1]}, {"w2", params[2]}, {"w3", params[3]}, {"b0", params[4]}};
    auto opt = specopt::make_optimizer(list, specopt::OptimizerSpec{v.name});
    for (int step = 0; step < 2; ++step) {
      for (size_t i = 0; i < 5; ++i) params[i].mutable_grad() = at::zeros_like(params[i]);
      opt->step();
    }
    for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(at::equal(params[i], before[i])) << v.name << " param " << i;
  }
}

TEST(Robustness, BadOptionsNameTheValue) {
  auto params = make_params(at::kFloat);
  using specopt::SpectralAdamWOptions;
  using specopt::SpectralSGDOptions;
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions(-0.5)); }, {"learning rate", "-0.5"});
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions().betas({1.0, 0.9})); }, {"beta1", "1"});
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions().betas({0.9, 1.5})); }, {"beta2", "1.5"});
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions().eps(-1e-3)); }, {"epsilon", "-0.001"});
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions().p(1.5)); }, {"p must lie", "1.5"});
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions().p(-0.75)); }, {"-0.75"});
  expect_error([&] { specopt::SpectralAdamW(params, SpectralAdamWOptions().row_blocks(0)); }, {"row_blocks", "0"});
  expect_error([&] { specopt::SpectralSGD(params, SpectralSGDOptions(-2)); }, {"learning rate", "-2"});
  expect_error([&] { specopt::SpectralSGD(params, SpectralSGDOptions(0.1).momentum(1.0)); }, {"momentum", "1"});
  expect_error([&] { specopt::SpectralSGD(params, SpectralSGDOptions(0.1).weight_decay(-3)); }, {"weight_decay", "-3"});
  expect_error([&] { specopt::SpectralSGD(params, SpectralSGDOptions(0.1).momentum(0).nesterov(true)); },
               {"Nesterov"});
  // Options changed between steps are checked before the step changes anything.
  specopt::SpectralSGD opt(params, SpectralSGDOptions(0.1));
  set_grads(params, 0);
  static_cast<SpectralSGDOptions&>(opt.param_groups()[0].options()).p(2.0);
  const auto before = clones(params);
  expect_error([&] { opt.step(); }, {"p must lie", "2"});
  EXPECT_TRUE(at::equal(params[0], before[0]));
  // make_optimizer.
  const std::vector<std::pair<std::string, at::Tensor>> named = {{"w", params[0]}, {"b", params[4]}};
  expect_error([&] { specopt::make_optimizer(named, specopt::OptimizerSpec{"AdamX"}); }, {"'AdamX'"});
  expect_error([&] { specopt::make_optimizer(named, specopt::OptimizerSpec{"adam:p=3"}); }, {"3"});
  specopt::OptimizerSpec bad_lr;
  bad_lr.lr_vector = -1e-4;
  expect_error([&] { specopt::make_optimizer(named, bad_lr); }, {"lr_vector", "-0.0001"});
  const std::vector<std::pair<std::string, at::Tensor>> twice = {{"w", params[0]}, {"w", params[1]}};
  expect_error([&] { specopt::make_optimizer(twice, specopt::OptimizerSpec{}); }, {"duplicate", "'w'"});
}

// ---- save / load -------------------------------------------------------------------

std::string save_to_string(const std::function<void(torch::serialize::OutputArchive&)>& save) {
  torch::serialize::OutputArchive a;
  save(a);
  std::ostringstream os;
  a.save_to(os);
  return os.str();
}

void load_from_string(const std::string& bytes, const std::function<void(torch::serialize::InputArchive&)>& load) {
  torch::serialize::InputArchive a;
  std::istringstream is(bytes);
  a.load_from(is);
  load(a);
}

std::vector<std::pair<std::string, at::Tensor>> named(const std::vector<at::Tensor>& params) {
  const std::vector<std::string> names = {"attn.c_attn.weight", "mlp.c_proj.weight", "mlp.c_fc.weight",
                                          "conv.weight",        "ln.weight",          "ln.bias"};
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (size_t i = 0; i < params.size(); ++i) out.emplace_back(names[i], params[i]);
  return out;
}

specopt::OptimizerSpec spec_for(const std::string& variant) {
  specopt::OptimizerSpec spec;
  spec.variant = variant;
  spec.lr_matrix = 0.02;
  spec.lr_vector = 0.01;
  spec.weight_decay_matrix = 0.1;
  spec.split_rows_patterns = {"c_attn"};
  spec.split_rows_blocks = 2;  // the 6×4 c_attn → two 3×4 blocks
  return spec;
}

TEST(SaveLoad, ResumedRunIsBitIdenticalToUninterrupted) {
  for (const std::string variant : {"AdamQ", "mSGDZ", "msgd:p=0.3"}) {
    SCOPED_TRACE(variant);
    auto straight = make_params(at::kFloat, 5);
    auto resumed = clones(straight);
    auto opt = specopt::make_optimizer(named(straight), spec_for(variant));
    for (int step = 0; step < 10; ++step) {
      set_grads(straight, step);
      opt->step();
    }
    // Second run: 5 steps, save, fresh optimizer over copied parameters, load, 5 more.
    auto first = specopt::make_optimizer(named(resumed), spec_for(variant));
    for (int step = 0; step < 5; ++step) {
      set_grads(resumed, step);
      first->step();
    }
    const auto bytes = save_to_string([&](auto& a) { first->save(a); });
    auto continued = clones(resumed);
    auto second = specopt::make_optimizer(named(continued), spec_for(variant));
    load_from_string(bytes, [&](auto& a) { second->load(a); });
    for (int step = 5; step < 10; ++step) {
      set_grads(continued, step);
      second->step();
    }
    for (size_t i = 0; i < straight.size(); ++i) EXPECT_TRUE(at::equal(straight[i], continued[i])) << i;
  }
}

// A group keeps the options it was given, and a group without options gets the
// optimizer's defaults, on every LibTorch (2.14's add_param_group alone would
// replace the options of these custom types by the defaults; compat.h).
TEST(Groups, OwnOptionsKeptOthersGetTheDefaults) {
  auto params = make_params(at::kFloat);
  {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<at::Tensor>{params[0]},
                        std::make_unique<specopt::SpectralAdamWOptions>(
                            specopt::SpectralAdamWOptions(0.25).p(0.5).row_blocks(2).weight_decay(0.0)));
    groups.emplace_back(std::vector<at::Tensor>{params[4]});
    specopt::SpectralAdamW opt(groups, specopt::SpectralAdamWOptions(1e-3).p(0.0));
    const auto& g0 = static_cast<const specopt::SpectralAdamWOptions&>(opt.param_groups()[0].options());
    const auto& g1 = static_cast<const specopt::SpectralAdamWOptions&>(opt.param_groups()[1].options());
    EXPECT_EQ(g0.lr(), 0.25);
    EXPECT_EQ(g0.p(), 0.5);
    EXPECT_EQ(g0.row_blocks(), 2);
    EXPECT_EQ(g0.weight_decay(), 0.0);
    EXPECT_EQ(g1.lr(), 1e-3);
    EXPECT_EQ(g1.p(), 0.0);
    EXPECT_EQ(g1.weight_decay(), 1e-2);
  }
  {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<at::Tensor>{params[0]},
                        std::make_unique<specopt::SpectralSGDOptions>(
                            specopt::SpectralSGDOptions(0.5).momentum(0.5).nesterov(true).row_blocks(2)));
    groups.emplace_back(std::vector<at::Tensor>{params[4]});
    specopt::SpectralSGD opt(groups, specopt::SpectralSGDOptions(0.1).p(0.0));
    const auto& g0 = static_cast<const specopt::SpectralSGDOptions&>(opt.param_groups()[0].options());
    const auto& g1 = static_cast<const specopt::SpectralSGDOptions&>(opt.param_groups()[1].options());
    EXPECT_EQ(g0.lr(), 0.5);
    EXPECT_EQ(g0.momentum(), 0.5);
    EXPECT_TRUE(g0.nesterov());
    EXPECT_EQ(g0.row_blocks(), 2);
    EXPECT_EQ(g0.p(), 1.0);
    EXPECT_EQ(g1.lr(), 0.1);
    EXPECT_EQ(g1.p(), 0.0);
  }
}

TEST(SaveLoad, PerGroupOptionsSurvive) {
  auto params = make_params(at::kFloat);
  using specopt::SpectralAdamWOptions;
  auto spectral = specopt::SpectralOptions().tol(1e-3).iterations(7).compute_dtype(at::kDouble).check_finite(false);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<at::Tensor>{params[0], params[2]},
                      std::make_unique<SpectralAdamWOptions>(SpectralAdamWOptions(0.25)
                                                                 .betas({0.8, 0.9})
                                                                 .eps(1e-6)
                                                                 .weight_decay(0.3)
                                                                 .p(0.3)
                                                                 .method(Method::kSvd)
                                                                 .scale(ScaleMode::kRmsMatch)
                                                                 .row_blocks(2)
                                                                 .spectral(spectral)));
  groups.emplace_back(std::vector<at::Tensor>{params[4]},
                      std::make_unique<SpectralAdamWOptions>(SpectralAdamWOptions(0.5).decay_vectors(true)));
  specopt::SpectralAdamW opt(groups, SpectralAdamWOptions(1e-3));
  const auto bytes = save_to_string([&](auto& a) { opt.save(a); });

  specopt::SpectralAdamW fresh({torch::optim::OptimizerParamGroup({params[0], params[2]}),
                                torch::optim::OptimizerParamGroup({params[4]})},
                               SpectralAdamWOptions(1e-3));
  load_from_string(bytes, [&](auto& a) { fresh.load(a); });
  const auto& g0 = static_cast<const SpectralAdamWOptions&>(fresh.param_groups()[0].options());
  const auto& g1 = static_cast<const SpectralAdamWOptions&>(fresh.param_groups()[1].options());
  EXPECT_EQ(g0.lr(), 0.25);
  EXPECT_EQ(std::get<0>(g0.betas()), 0.8);
  EXPECT_EQ(std::get<1>(g0.betas()), 0.9);
  EXPECT_EQ(g0.eps(), 1e-6);
  EXPECT_EQ(g0.weight_decay(), 0.3);
  EXPECT_EQ(g0.p(), 0.3);
  EXPECT_EQ(g0.method(), Method::kSvd);
  EXPECT_EQ(g0.scale(), ScaleMode::kRmsMatch);
  EXPECT_EQ(g0.row_blocks(), 2);
  EXPECT_EQ(g0.spectral().tol(), 1e-3);
  EXPECT_EQ(g0.spectral().iterations(), 7);
  EXPECT_EQ(g0.spectral().compute_dtype(), c10::optional<c10::ScalarType>(at::kDouble));
  EXPECT_FALSE(g0.spectral().check_finite());
  EXPECT_EQ(g1.lr(), 0.5);
  EXPECT_TRUE(g1.decay_vectors());
  EXPECT_EQ(g1.p(), 1.0);

  // SGD options too.
  specopt::SpectralSGD sgd(params, specopt::SpectralSGDOptions(0.7).momentum(0.5).nesterov(true).p(0.0).scale(
                                       ScaleMode::kNone));
  const auto sgd_bytes = save_to_string([&](auto& a) { sgd.save(a); });
  specopt::SpectralSGD sgd_fresh(params, specopt::SpectralSGDOptions(0.1));
  load_from_string(sgd_bytes, [&](auto& a) { sgd_fresh.load(a); });
  const auto& s = static_cast<const specopt::SpectralSGDOptions&>(sgd_fresh.param_groups()[0].options());
  EXPECT_EQ(s.lr(), 0.7);
  EXPECT_EQ(s.momentum(), 0.5);
  EXPECT_TRUE(s.nesterov());
  EXPECT_EQ(s.p(), 0.0);
  EXPECT_EQ(s.scale(), ScaleMode::kNone);
}

TEST(SaveLoad, DifferentLayoutFailsAndLeavesStateAlone) {
  auto params = make_params(at::kFloat);
  specopt::SpectralAdamW opt(params, specopt::SpectralAdamWOptions(0.01).p(0.5));
  set_grads(params, 0);
  opt.step();
  const auto bytes = save_to_string([&](auto& a) { opt.save(a); });

  // Same count, one shape differs (the 4×6 matrix is now 6×4).
  auto other = make_params(at::kFloat);
  other[1] = at::randn({6, 4});
  specopt::SpectralAdamW wrong_shape(other, specopt::SpectralAdamWOptions(0.02));
  set_grads(other, 0);
  wrong_shape.step();
  const auto before = save_to_string([&](auto& a) { wrong_shape.save(a); });
  expect_error([&] { load_from_string(bytes, [&](auto& a) { wrong_shape.load(a); }); },
               {"parameter 1 of group 0", "[6, 4]", "[4, 6]"});
  EXPECT_EQ(before, save_to_string([&](auto& a) { wrong_shape.save(a); }));

  // Fewer parameters; more groups; another optimizer kind.
  specopt::SpectralAdamW fewer({params[0], params[1]});
  expect_error([&] { load_from_string(bytes, [&](auto& a) { fewer.load(a); }); }, {"group 0", "6 parameters", "2"});
  specopt::SpectralAdamW two_groups(
      {torch::optim::OptimizerParamGroup({params[0]}), torch::optim::OptimizerParamGroup({params[1]})});
  expect_error([&] { load_from_string(bytes, [&](auto& a) { two_groups.load(a); }); }, {"1 parameter groups", "2"});
  specopt::SpectralSGD sgd(params, specopt::SpectralSGDOptions(0.1));
  expect_error([&] { load_from_string(bytes, [&](auto& a) { sgd.load(a); }); }, {"SpectralAdamW"});

  // The wrapper checks names.
  auto wrapped = specopt::make_optimizer(named(params), spec_for("AdamS"));
  const auto wrapped_bytes = save_to_string([&](auto& a) { wrapped->save(a); });
  auto renamed_params = named(params);
  renamed_params[2].first = "mlp.other.weight";
  auto renamed = specopt::make_optimizer(renamed_params, spec_for("AdamS"));
  expect_error([&] { load_from_string(wrapped_bytes, [&](auto& a) { renamed->load(a); }); },
               {"mlp.other.weight", "mlp.c_fc.weight"});
  auto sgd_family = specopt::make_optimizer(named(params), spec_for("mSGDS"));
  expect_error([&] { load_from_string(wrapped_bytes, [&](auto& a) { sgd_family->load(a); }); }, {"Adam", "mSGD"});
}

// ---- make_optimizer --------------------------------------------------------------

TEST(MakeOptimizer, MSGDFamilyMatchesReferenceWithAdamWVectorsAndRowSplit) {
  auto params = make_params(at::kDouble, 9);
  auto ref = clones(params);
  auto spec = spec_for("mSGDZ");
  auto opt = specopt::make_optimizer(named(params), spec);
  ASSERT_EQ(opt->optimizers().size(), 2u);
  EXPECT_EQ(opt->parameter_names(),
            (std::vector<std::string>{"mlp.c_proj.weight", "mlp.c_fc.weight", "conv.weight", "attn.c_attn.weight",
                                      "ln.weight", "ln.bias"}));
  std::vector<ReferenceSGD> sgd(params.size(), ReferenceSGD{spec.lr_matrix, spec.momentum, spec.weight_decay_matrix});
  sgd[0].blocks = 2;
  std::vector<ReferenceAdam> adam(params.size(),
                                  ReferenceAdam{spec.lr_vector, spec.beta1, spec.beta2, spec.eps, spec.weight_decay_vector});
  const std::vector<double> lr_scale = {1.0, 0.5, 0.25, 1.0, 1.0, 1.0};
  for (int step = 0; step < 6; ++step) {
    opt->set_lr(spec.lr_matrix * lr_scale[step], spec.lr_vector * lr_scale[step]);
    set_grads(params, step);
    opt->step();
    opt->zero_grad();
    for (size_t i = 0; i < ref.size(); ++i) {
      sgd[i].lr = spec.lr_matrix * lr_scale[step];
      adam[i].lr = spec.lr_vector * lr_scale[step];
      const auto g = make_grad(ref[i], step, i);
      if (ref[i].dim() >= 2) sgd[i].step(ref[i], g, 0.0);
      else adam[i].step(ref[i], g, 1.0);
    }
  }
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_LE(max_rel_diff(params[i], ref[i]), 1e-9) << named(params)[i].first;
    EXPECT_FALSE(params[i].grad().defined());
  }
}

TEST(MakeOptimizer, AdamFamilyGroupsAndPSchedule) {
  auto params = make_params(at::kFloat);
  auto spec = spec_for("AdamZ");
  spec.weight_decay_vector = 0.5;
  auto opt = specopt::make_optimizer(named(params), spec);
  ASSERT_EQ(opt->optimizers().size(), 1u);
  const auto& groups = opt->optimizers()[0]->param_groups();
  ASSERT_EQ(groups.size(), 3u);  // matrices, row-split matrices, vectors
  const auto& m = static_cast<const specopt::SpectralAdamWOptions&>(groups[0].options());
  const auto& ms = static_cast<const specopt::SpectralAdamWOptions&>(groups[1].options());
  const auto& v = static_cast<const specopt::SpectralAdamWOptions&>(groups[2].options());
  EXPECT_EQ(m.p(), 0.0);
  EXPECT_EQ(ms.row_blocks(), 2);
  EXPECT_EQ(m.weight_decay(), 0.1);
  EXPECT_EQ(v.p(), 1.0);
  EXPECT_EQ(v.lr(), 0.01);
  EXPECT_EQ(v.weight_decay(), 0.5);
  opt->set_p(0.5);
  EXPECT_EQ(m.p(), 0.5);
  EXPECT_EQ(ms.p(), 0.5);
  EXPECT_EQ(v.p(), 1.0);
  EXPECT_EQ(opt->p(), 0.5);
  opt->set_lr(0.1, 0.2);
  EXPECT_EQ(m.lr(), 0.1);
  EXPECT_EQ(v.lr(), 0.2);
  expect_error([&] { opt->set_p(-1); }, {"-1"});
  // A NaN in a vector gradient is caught before the matrices are stepped.
  set_grads(params, 0);
  params[5].mutable_grad()[0] = std::nan("");
  const auto before = clones(params);
  expect_error([&] { opt->step(); }, {"ln.bias"});
  EXPECT_TRUE(at::equal(params[0], before[0]));
  EXPECT_EQ(specopt::make_optimizer(named(params), specopt::OptimizerSpec{})->variant().name, "Adam");
}

// ---- the published scheme in lockstep -----------------------------------------------

// One parameter of the published optimizers, in torch.optim.AdamW's arithmetic
// (the study's Adam and mSGD at p = 1 are bitwise identical to ours, issue 12),
// with Ψ_p from paper_reference::transform (QKV split by shape, p = 0 in
// float64). Weight decay 0, as the study's runs.
struct PaperReferenceParam {
  bool adam;  // Adam update (Adam family, and every vector); else momentum SGD
  double lr, p;
  at::Tensor m, v;  // Adam moments, or v unused and m the momentum buffer
  int64_t t = 0;
  void step(at::Tensor W, const at::Tensor& g, double beta1, double beta2, double eps, double mu) {
    const auto psi = [&](const at::Tensor& U) {
      return paper_reference::transform(U, p, /*split=*/true, /*f64_zero=*/true);
    };
    if (!adam) {  // b₁ = g, b ← μb + g;  W ← W − lr·Ψ_p(b)
      m = m.defined() ? m.mul_(mu).add_(g) : g.clone();
      W.add_(W.dim() >= 2 ? psi(m) : m, -lr);
      return;
    }
    if (!m.defined()) {
      m = at::zeros_like(W);
      v = at::zeros_like(W);
    }
    ++t;
    m.mul_(beta1).add_(g, 1 - beta1);
    v.mul_(beta2).addcmul_(g, g, 1 - beta2);
    const double bc1 = 1 - std::pow(beta1, static_cast<double>(t));
    const double bc2 = 1 - std::pow(beta2, static_cast<double>(t));
    const at::Tensor denom = (v.sqrt() / std::sqrt(bc2)).add_(eps);
    if (W.dim() < 2 || p == 1.0) {
      W.addcdiv_(m, denom, -lr / bc1);  // W ← W − (lr/(1−β₁ᵗ))·m/(√v̂ + ε)
    } else {
      W.add_(psi((m / bc1).div_(denom)), -lr);  // W ← W − lr·Ψ_p(m̂/(√v̂ + ε))
    }
  }
};

// make_optimizer with the study's conventions (method paper, the QKV split by
// shape, vectors on AdamW, gradients clipped to norm 1.0) against the reference
// above: a tiny GPT whose vocabulary is 3·n_embd (so the embedding is split
// too), float64 (p = 0 in float64 compute too), 12 steps on the same batches,
// every variant. Muon's quintic multiplies a perturbation along a null
// direction by up to 3.4445 per step (3.4445^15 ≈ 1e8), so at p = 0 float64
// rounding differences in the optimizer's arithmetic alone would show at 1e-9:
// the reference therefore uses torch's arithmetic, as the study did.
TEST(PaperScheme, EveryVariantInLockstepWithTheReference) {
  specopt::GPTConfig cfg;
  cfg.vocab_size = 48;
  cfg.block_size = 8;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 16;  // wte 48×16 and c_attn 48×16 are split, c_fc 64×16 is not
  for (const auto& v : specopt::named_variants()) {
    torch::manual_seed(0);
    specopt::GPT ours(cfg);
    torch::manual_seed(0);
    specopt::GPT theirs(cfg);
    ours->to(at::kDouble);
    theirs->to(at::kDouble);
    const auto initial = clones(theirs->parameters());

    specopt::OptimizerSpec spec;
    spec.variant = v.name;
    spec.lr_matrix = v.family == Family::kAdam ? 3e-3 : 3e-2;
    spec.lr_vector = 3e-3;
    spec.method = Method::kPaper;
    spec.split_rows_by_shape = true;
    spec.split_rows_blocks = 3;
    spec.spectral.compute_dtype(at::kDouble);
    auto opt = specopt::make_optimizer(ours->named_parameters(), spec);
    // The split group: wte and both c_attn.
    const auto& split = opt->optimizers()[0]->param_groups().at(1);
    ASSERT_EQ(split.params().size(), 3u) << v.name;
    EXPECT_TRUE(split.params()[0].is_same(ours->wte->weight)) << v.name;

    std::vector<at::Tensor> params = theirs->parameters();
    std::vector<PaperReferenceParam> ref;
    for (const auto& w : params) {
      const bool matrix = w.dim() >= 2;
      ref.push_back({!matrix || v.family == Family::kAdam, matrix ? spec.lr_matrix : spec.lr_vector,
                     matrix ? v.p : 1.0});
    }

    double worst = 0;
    for (int step = 0; step < 12; ++step) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(500 + step);
      const auto idx = at::randint(cfg.vocab_size, {4, cfg.block_size}, gen, at::kLong);
      const auto tgt = at::randint(cfg.vocab_size, {4, cfg.block_size}, gen, at::kLong);

      opt->zero_grad();
      ours->loss(idx, tgt).backward();
      specopt::clip_gradients(ours->parameters(), 1.0);
      opt->step();

      for (auto& w : params) w.mutable_grad() = at::Tensor();
      theirs->loss(idx, tgt).backward();
      torch::NoGradGuard no_grad;
      // torch's clip_grad_norm_: g ← g·min(1, 1/(‖(‖g_i‖)_i‖ + 1e-6)).
      std::vector<at::Tensor> norms;
      for (const auto& w : params) norms.push_back(w.grad().norm(2));
      const double coef = std::min(1.0, 1.0 / (at::stack(norms).norm(2).item<double>() + 1e-6));
      for (size_t i = 0; i < params.size(); ++i)
        ref[i].step(params[i].detach(), params[i].grad() * coef, spec.beta1, spec.beta2, spec.eps, spec.momentum);
    }
    const auto ours_params = ours->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      worst = std::max(worst, max_rel_diff(ours_params[i], params[i]));
      EXPECT_LE(max_rel_diff(ours_params[i], params[i]), 1e-10) << v.name << " parameter " << i;
      // The run moved every parameter (so agreement is not trivial).
      EXPECT_GT(max_rel_diff(params[i], initial[i]), 1e-4) << v.name << " parameter " << i;
    }
    std::cout << "[ lockstep ] " << v.name << ": largest relative parameter difference " << worst << "\n";
  }
}

// ---- training ------------------------------------------------------------------------

// A small two-layer regression: y = tanh(x A) B + noise, fitted by the same architecture.
TEST(Training, EveryVariantReducesTheLoss) {
  torch::manual_seed(0);
  const auto x = torch::randn({256, 16});
  const auto y = torch::tanh(x.mm(torch::randn({16, 32}) / 4)).mm(torch::randn({32, 8})) + 0.01 * torch::randn({256, 8});
  for (const auto& v : specopt::named_variants()) {
    torch::manual_seed(1);
    torch::nn::Linear l1(16, 32), l2(32, 8);
    std::vector<std::pair<std::string, at::Tensor>> params;
    for (const auto& p : l1->named_parameters()) params.emplace_back("l1." + p.key(), p.value());
    for (const auto& p : l2->named_parameters()) params.emplace_back("l2." + p.key(), p.value());
    specopt::OptimizerSpec spec;
    spec.variant = v.name;
    // Learning rates in the ranges the study found stable for each family.
    spec.lr_matrix = v.family == Family::kAdam ? 3e-2 : 0.05;
    spec.lr_vector = 1e-2;
    auto opt = specopt::make_optimizer(params, spec);
    const auto loss_of = [&] { return torch::mse_loss(l2(torch::tanh(l1(x))), y); };
    const double initial = loss_of().item<double>();
    for (int step = 0; step < 150; ++step) {
      opt->zero_grad();
      auto loss = loss_of();
      loss.backward();
      opt->step();
    }
    const double final_loss = loss_of().item<double>();
    EXPECT_TRUE(std::isfinite(final_loss)) << v.name;
    EXPECT_LT(final_loss, 0.05 * initial) << v.name << ": " << initial << " -> " << final_loss;
  }
}

// ---- field tables (option_fields.h) ------------------------------------------------

// Every field of SpectralOptions but method set away from its default.
specopt::SpectralOptions nondefault_spectral() {
  return specopt::SpectralOptions()
      .tol(3e-5)
      .iterations(7)
      .newton_lower(2e-3)
      .ns_steps(9)
      .ns_coefficients(specopt::NsCoefficients::kPolarExpress)
      .compute_dtype(at::kDouble)
      .neg_eps(5e-4)
      .rank_tol(1e-9)
      .check_finite(false);
}

void expect_same_spectral(const specopt::SpectralOptions& a, const specopt::SpectralOptions& b) {
  EXPECT_EQ(a.tol(), b.tol());
  EXPECT_EQ(a.iterations(), b.iterations());
  EXPECT_EQ(a.newton_lower(), b.newton_lower());
  EXPECT_EQ(a.ns_steps(), b.ns_steps());
  EXPECT_EQ(a.ns_coefficients(), b.ns_coefficients());
  EXPECT_EQ(a.compute_dtype(), b.compute_dtype());
  EXPECT_EQ(a.neg_eps(), b.neg_eps());
  EXPECT_EQ(a.rank_tol(), b.rank_tol());
  EXPECT_EQ(a.check_finite(), b.check_finite());
}

template <class Options>
void expect_same_group(const Options& a, const Options& b) {
  EXPECT_EQ(a.lr(), b.lr());
  EXPECT_EQ(a.weight_decay(), b.weight_decay());
  EXPECT_EQ(a.decay_vectors(), b.decay_vectors());
  EXPECT_EQ(a.p(), b.p());
  EXPECT_EQ(a.method(), b.method());
  EXPECT_EQ(a.scale(), b.scale());
  EXPECT_EQ(a.row_blocks(), b.row_blocks());
  expect_same_spectral(a.spectral(), b.spectral());
}

// The entries of a saved options archive, and the options read back.
template <class Options>
Options archive_round_trip(const Options& o, const std::vector<std::string>& keys) {
  const std::string bytes = save_to_string([&](torch::serialize::OutputArchive& a) { o.serialize(a); });
  Options back(0.0);
  load_from_string(bytes, [&](torch::serialize::InputArchive& a) {
    for (const auto& key : keys) {  // the archive format: these keys, as every earlier version wrote
      c10::IValue v;
      EXPECT_TRUE(a.try_read(key, v)) << key;
    }
    back.serialize(a);
  });
  return back;
}

const std::vector<std::string> kTransformKeys = {
    "p", "method", "scale", "row_blocks", "spectral.tol", "spectral.iterations", "spectral.newton_lower",
    "spectral.ns_steps", "spectral.ns_coefficients", "spectral.compute_dtype", "spectral.neg_eps",
    "spectral.rank_tol", "spectral.check_finite"};

std::vector<std::string> with_transform_keys(std::vector<std::string> keys) {
  keys.insert(keys.end(), kTransformKeys.begin(), kTransformKeys.end());
  return keys;
}

// Every field non-default, so one missing from visit_adamw_fields /
// visit_sgd_fields (or from its archive codec) fails here.
TEST(OptionFields, AdamWOptionsArchiveRoundTripsEveryField) {
  const auto o = specopt::SpectralAdamWOptions(2e-3)
                     .betas(std::make_tuple(0.8, 0.9))
                     .eps(1e-7)
                     .weight_decay(0.05)
                     .decay_vectors(true)
                     .p(0.25)
                     .method(Method::kNewton)
                     .scale(ScaleMode::kRmsMatch)
                     .row_blocks(3)
                     .spectral(nondefault_spectral());
  const auto back = archive_round_trip(
      o, with_transform_keys({"lr", "beta1", "beta2", "eps", "weight_decay", "decay_vectors"}));
  expect_same_group(o, back);
  EXPECT_EQ(o.betas(), back.betas());
  EXPECT_EQ(o.eps(), back.eps());
}

TEST(OptionFields, SGDOptionsArchiveRoundTripsEveryField) {
  const auto o = specopt::SpectralSGDOptions(0.02)
                     .momentum(0.8)
                     .nesterov(true)
                     .weight_decay(0.01)
                     .decay_vectors(true)
                     .p(0.5)
                     .method(Method::kEigh)
                     .scale(ScaleMode::kShape)
                     .row_blocks(2)
                     .spectral(nondefault_spectral());
  const auto back = archive_round_trip(
      o, with_transform_keys({"lr", "momentum", "nesterov", "weight_decay", "decay_vectors"}));
  expect_same_group(o, back);
  EXPECT_EQ(o.momentum(), back.momentum());
  EXPECT_EQ(o.nesterov(), back.nesterov());
}

// The transform's method wins over spectral.method (which is not saved).
TEST(OptionFields, TransformMethodWinsOverSpectralMethod) {
  const auto o = specopt::SpectralAdamWOptions().method(Method::kEigh).spectral(
      specopt::SpectralOptions().method(Method::kSvd));
  EXPECT_EQ(o.transform().method(), Method::kEigh);
  EXPECT_EQ(archive_round_trip(o, {"method"}).method(), Method::kEigh);
}

// Each field name of a table is documented: in a row of the section's option
// tables as `name` (a row may list several), or (tables_only = false, a
// section that lists the names in prose) anywhere in the section.
template <class Options, class Visit>
void expect_documented(const std::string& file, const std::string& heading, Options& o, Visit visit,
                       bool tables_only = true) {
  const auto lines = specopt::testing::doc_section(file, heading, tables_only);
  visit(o, [&](const std::string& name, const auto&) {
    const std::string text = tables_only ? "`" + name + "`" : name;
    const bool listed = std::any_of(lines.begin(), lines.end(),
                                    [&](const std::string& line) { return line.find(text) != std::string::npos; });
    EXPECT_TRUE(listed) << "docs/" << file << " (" << heading << ") does not list '" << name << "'";
  });
}

TEST(OptionFields, DocsListEveryField) {
  const auto visit_adamw = [](auto& o, auto&& v) { specopt::visit_adamw_fields(o, v); };
  const auto visit_sgd = [](auto& o, auto&& v) { specopt::visit_sgd_fields(o, v); };
  const auto visit_spec = [](auto& o, auto&& v) { specopt::visit_spec_fields(o, v); };
  specopt::SpectralAdamWOptions adamw;
  specopt::SpectralSGDOptions sgd(0.0);
  specopt::OptimizerSpec spec;
  expect_documented("optimizers.md", "`SpectralAdamWOptions`", adamw, visit_adamw);
  expect_documented("optimizers.md", "`SpectralSGDOptions`", sgd, visit_sgd);
  expect_documented("optimizers.md", "`OptimizerSpec`", spec, visit_spec);
  expect_documented("python.md", "## Optimizers", adamw, visit_adamw);
  expect_documented("python.md", "## Optimizers", sgd, visit_sgd);
  expect_documented("python.md", "### make_optimizer", spec, visit_spec, /*tables_only=*/false);
}

}  // namespace
