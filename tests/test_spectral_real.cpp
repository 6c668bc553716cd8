// Ψ_p on the matrices real optimizers transform, and training acceptance of
// the SVD-free method (issue 10).
//
// Real-update suite: the tests train the tiny GPT on KJV (Adam family: AdamS;
// mSGD family: mSGDZ) and the Fashion-MNIST MLP (AdamQ, mSGDS) with the
// trainer, and capture, through TrainHooks::step_optimizer (after clipping,
// before the step), the matrices the optimizer hands to Ψ_p: Adam's
// RMS-normalised update u = m̂/(√v̂ + ε) or the heavy-ball buffer b = μb + g
// (update_rules.h), recomputed from the clipped gradients with the config's
// β₁, β₂, ε, μ. Every parameter with dim ≥ 2 (embeddings included), c_attn
// split in its 3 row blocks, at steps 1, 3, 10, 40 and 150. The capture is
// cached in the test's working directory (the build dir under ctest):
// real_updates/<run>.pt; delete it to recapture.
//
// Tolerances on these matrices (float32, default options), against the
// float64 SVD, dominant subspace σ ≥ 1e-3 σ_max (kDominantTol):
//   svd 1e-4 (float32 LAPACK), eigh 1e-4 (float64 Gram), newton 1e-2 for
//   p ∈ {0, ¼, ½}, on the tol path (default tol) and on the fixed-iteration
//   path (iterations = 8); gain ‖Ψ̃‖₂ / max σ^p ≤ 1.01 for all three.
//   paper: finite and gain ≤ 1.3 (its ridge distorts the small σ by design).
// newton must also cost fewer matmul FLOPs than paper on each matrix.
//
// Training acceptance: every spectral variant on kjv-gpt-tiny and fmnist-mlp
// at the lr it was accepted at (issue 10: the middle of its grid in the presets of
// that time, kjv-gpt.toml and the 3-point fmnist-quick.toml; pinned below so the
// criterion does not move with the study grids), method=newton ends within 1 % of method=eigh's final
// validation loss, and diverges only where eigh does. Short for CI (40 GPT and
// 60 MLP steps); SPECOPT_ACCEPTANCE_STEPS=N runs N steps of both instead
// (docs/transform.md has the longer command and its table).
#include "specopt/train/config.h"
#include "specopt/core/spectral.h"
#include "specopt/train/trainer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/module.h>
#include <torch/serialize.h>
#include <toml++/toml.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

using specopt::Method;
using specopt::SpectralInfo;
using specopt::SpectralOptions;

constexpr double kDominantFloor = 1e-3;
constexpr double kDominantTol = 1e-2;  // newton (the issue's target)
constexpr double kExactTol = 1e-4;     // svd (float32) and eigh (float64 Gram)
constexpr double kGainTol = 1.01;

std::string config_path(const std::string& name) {
  return std::string(SPECOPT_SOURCE_DIR) + "/configs/" + name;
}

// The captured matrices of one training run (see the file comment).
struct RunSpec {
  std::string tag, config, variant;
  double lr;
};

std::vector<at::Tensor> capture(const RunSpec& run) {
  const std::set<int64_t> at_steps = {1, 3, 10, 40, 150};
  const fs::path cache = fs::path("real_updates") / (run.tag + ".pt");
  std::vector<at::Tensor> out;
  if (fs::exists(cache)) {
    torch::load(out, cache.string());
    return out;
  }
  auto cfg = specopt::load_config(
      config_path(run.config),
      {"optim.variant=" + run.variant, "optim.lr_matrix=" + std::to_string(run.lr),
       "optim.method=eigh", "train.steps=150", "train.eval_every=1000", "train.eval_batches=1",
       "run.run_dir=" + (fs::temp_directory_path() / ("specopt_capture_" + run.tag)).string()});
  const bool adam = run.variant.rfind("Adam", 0) == 0;
  const auto& o = cfg.optim;
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> state;  // name -> (m or b, v)
  int64_t t = 0;
  specopt::Trainer* trainer = nullptr;
  specopt::TrainHooks hooks;
  hooks.step_optimizer = [&](specopt::CompositeOptimizer& opt) {
    ++t;
    for (const auto& item : trainer->model().named_parameters()) {
      const at::Tensor& p = item.value();
      if (p.dim() < 2 || !p.grad().defined()) continue;
      const at::Tensor g = p.grad().detach().to(at::kFloat).reshape({p.size(0), -1});
      auto& [m, v] = state[item.key()];
      at::Tensor upd;
      if (adam) {
        if (!m.defined()) {
          m = at::zeros_like(g);
          v = at::zeros_like(g);
        }
        m = m * o.beta1 + g * (1 - o.beta1);
        v = v * o.beta2 + g * g * (1 - o.beta2);
        const double bc1 = 1 - std::pow(o.beta1, double(t)), bc2 = 1 - std::pow(o.beta2, double(t));
        upd = (m / bc1) / ((v / bc2).sqrt() + o.eps);
      } else {
        m = m.defined() ? m * o.momentum + g : g.clone();
        upd = o.nesterov ? g + m * o.momentum : m;
      }
      if (!at_steps.count(t)) continue;
      const bool split = item.key().find("c_attn") != std::string::npos;
      if (split) {
        for (const auto& blk : upd.chunk(o.split_rows_blocks, 0)) out.push_back(blk.contiguous());
      } else {
        out.push_back(upd.clone());
      }
    }
    opt.step();
  };
  specopt::Trainer tr(cfg, hooks);
  trainer = &tr;
  for (int64_t i = 0; i < cfg.train.steps; ++i) {
    const auto s = tr.step();
    EXPECT_FALSE(s.diverged) << run.tag << " step " << i;
  }
  fs::create_directories(cache.parent_path());
  torch::save(out, cache.string());
  return out;
}

const std::vector<RunSpec>& capture_runs() {
  static const std::vector<RunSpec> runs = {
      {"kjv_AdamS", "train/kjv-gpt-tiny.toml", "AdamS", 1e-2},
      {"kjv_mSGDZ", "train/kjv-gpt-tiny.toml", "mSGDZ", 3e-2},
      {"fmnist_AdamQ", "train/fmnist-mlp.toml", "AdamQ", 3e-2},
      {"fmnist_mSGDS", "train/fmnist-mlp.toml", "mSGDS", 0.1},
  };
  return runs;
}

struct Errors {
  double dominant, gain;
};

// Dominant-subspace error against the float64 SVD and the gain
// ‖Y‖₂ / max_{kept σ} σ^p.
Errors errors(const at::Tensor& Y, const at::Tensor& O, double p) {
  auto [U, S, Vh] = at::linalg_svd(O.to(at::kDouble), false);
  const double smax = S.max().item<double>();
  const at::Tensor keep = S >= smax * kDominantFloor;
  const at::Tensor Ud = U.index({at::indexing::Slice(), keep});
  const at::Tensor Vd = Vh.index({keep});
  const at::Tensor f = S.index({keep}).pow(p);
  const at::Tensor P = at::matmul(at::matmul(Ud.t(), Y.to(at::kDouble)), Vd.t());
  const double dom = ((P - at::diag(f)).norm() / f.norm()).item<double>();
  const double gain = (at::linalg_matrix_norm(Y.to(at::kDouble), 2) / f.max()).item<double>();
  return {dom, gain};
}

TEST(RealUpdates, EveryMethodOnCapturedMatrices) {
  int64_t checked = 0;
  double worst_newton = 0, worst_newton_fixed = 0;
  double paper_flops = 0, newton_flops = 0, newton_flops_fixed = 0;
  for (const auto& run : capture_runs()) {
    const auto mats = capture(run);
    ASSERT_GE(mats.size(), 15u) << run.tag;  // ≥ 3 matrices × 5 steps
    for (size_t i = 0; i < mats.size(); ++i) {
      const at::Tensor& O = mats[i];
      if (O.abs().max().item<double>() == 0) continue;
      for (double p : {0.0, 0.25, 0.5}) {
        SCOPED_TRACE(run.tag + " #" + std::to_string(i) + " " + std::to_string(O.size(0)) + "x" +
                     std::to_string(O.size(1)) + " p=" + std::to_string(p));
        SpectralInfo paper_info, info;
        const at::Tensor Yp =
            specopt::spectral_power(O, p, SpectralOptions().method(Method::kPaper), &paper_info);
        ASSERT_TRUE(at::isfinite(Yp).all().item<bool>());
        const double shape =
            p == 0 ? std::sqrt(std::max(1.0, double(O.size(0)) / double(O.size(1)))) : 1.0;
        EXPECT_LT(errors(Yp / shape, O, p).gain, 1.3) << "paper";
        for (Method m : {Method::kSvd, Method::kEigh}) {
          const auto e = errors(specopt::spectral_power(O, p, SpectralOptions().method(m)), O, p);
          EXPECT_LT(e.dominant, kExactTol) << specopt::method_name(m);
          EXPECT_LT(e.gain, kGainTol) << specopt::method_name(m);
        }
        for (int64_t iters : {int64_t{0}, int64_t{8}}) {
          const auto opt = SpectralOptions().method(Method::kNewton).iterations(iters);
          const at::Tensor Y = specopt::spectral_power(O, p, opt, &info);
          ASSERT_EQ(info.method, Method::kNewton);  // never a fall-back
          ASSERT_TRUE(at::isfinite(Y).all().item<bool>());
          const auto e = errors(Y, O, p);
          EXPECT_LT(e.dominant, kDominantTol) << "newton iterations=" << iters;
          EXPECT_LT(e.gain, kGainTol) << "newton iterations=" << iters;
          // Per matrix where m/n ≤ 4 (long side / short side); above it
          // newton's m·n² products (≥ 5) can outweigh paper's 2 at p = ½ (the
          // 784×128 layer at iterations = 8: 1.008×, the 128×10 head: 1.3×;
          // docs/transform.md). The suite totals below cover every matrix.
          const double aspect = double(std::max(O.size(0), O.size(1))) /
                                double(std::min(O.size(0), O.size(1)));
          if (aspect <= 4) {
            EXPECT_LT(info.matmul_flops, paper_info.matmul_flops) << "newton iterations=" << iters;
          }
          (iters ? newton_flops_fixed : newton_flops) += info.matmul_flops;
          (iters ? worst_newton_fixed : worst_newton) =
              std::max(iters ? worst_newton_fixed : worst_newton, e.dominant);
        }
        paper_flops += paper_info.matmul_flops;
        ++checked;
      }
    }
  }
  // Over the whole suite newton is cheaper on both paths.
  EXPECT_LT(newton_flops, paper_flops);
  EXPECT_LT(newton_flops_fixed, paper_flops);
  std::printf("real-update suite: %lld (matrix, p) cases; newton worst dominant error %.2e (tol), "
              "%.2e (iterations=8); matmul FLOPs newton/paper %.3f (tol), %.3f (iterations=8)\n",
              static_cast<long long>(checked), worst_newton, worst_newton_fixed,
              newton_flops / paper_flops, newton_flops_fixed / paper_flops);
}

// The acceptance lr of each variant (see the top of this file). Known and open: at
// fmnist-mlp mSGDZ lr 0.1 (the middle of the 5-point grid of issue 16) newton ends 5 %
// below eigh after 60 steps and 2.8 % below after 200 (svd = eigh within 0.2 %): at p = 0
// and high lr the two treat the tiny singular values differently (docs/transform.md).
double acceptance_lr(const std::string& config, const std::string& variant) {
  static const std::map<std::string, std::map<std::string, double>> lrs = {
      {"train/kjv-gpt-tiny.toml",
       {{"AdamS", 0.008}, {"AdamQ", 0.016}, {"AdamZ", 0.016}, {"mSGDS", 0.1}, {"mSGDQ", 0.03}, {"mSGDZ", 0.016}}},
      {"train/fmnist-mlp.toml",
       {{"AdamS", 0.01}, {"AdamQ", 0.03}, {"AdamZ", 0.03}, {"mSGDS", 0.1}, {"mSGDQ", 0.03}, {"mSGDZ", 0.03}}}};
  return lrs.at(config).at(variant);
}

struct Outcome {
  bool diverged = false;
  double val = 0;
};

Outcome train(const std::string& config, const std::string& variant, double lr,
              const std::string& method, int64_t steps, bool gpt) {
  std::vector<std::string> ov = {
      "optim.variant=" + variant, "optim.lr_matrix=" + std::to_string(lr), "optim.method=" + method,
      "train.steps=" + std::to_string(steps), "train.eval_every=100000",
      "train.warmup_steps=" + std::to_string(std::max<int64_t>(1, steps / 10)),
      "run.run_dir=" + (fs::temp_directory_path() / "specopt_acceptance").string()};
  if (gpt) ov.push_back("train.eval_batches=8");
  auto cfg = specopt::load_config(config_path(config), ov);
  specopt::Trainer tr(cfg);
  Outcome out;
  for (int64_t i = 0; i < steps; ++i) {
    if (tr.step().diverged) {
      out.diverged = true;
      return out;
    }
  }
  out.val = tr.evaluate();
  out.diverged = !std::isfinite(out.val);
  return out;
}

TEST(TrainingAcceptance, NewtonWithinOnePercentOfEigh) {
  const char* env = std::getenv("SPECOPT_ACCEPTANCE_STEPS");
  const int64_t override_steps = env ? std::atoll(env) : 0;
  struct Model {
    std::string config;
    int64_t steps;
    bool gpt;
  };
  const std::vector<Model> models = {{"train/kjv-gpt-tiny.toml", 40, true},
                                     {"train/fmnist-mlp.toml", 60, false}};
  for (const auto& md : models) {
    const int64_t steps = override_steps > 0 ? override_steps : md.steps;
    for (const std::string variant : {"AdamS", "AdamQ", "AdamZ", "mSGDS", "mSGDQ", "mSGDZ"}) {
      const double lr = acceptance_lr(md.config, variant);
      const auto ref = train(md.config, variant, lr, "eigh", steps, md.gpt);
      const auto nw = train(md.config, variant, lr, "newton", steps, md.gpt);
      std::printf("%s %s lr=%g steps=%lld: eigh %s %.4f, newton %s %.4f\n", md.config.c_str(),
                  variant.c_str(), lr, static_cast<long long>(steps),
                  ref.diverged ? "diverged" : "val", ref.val, nw.diverged ? "diverged" : "val",
                  nw.val);
      if (ref.diverged) continue;
      EXPECT_FALSE(nw.diverged) << md.config << " " << variant;
      EXPECT_LT(std::abs(nw.val - ref.val), 0.01 * ref.val) << md.config << " " << variant;
    }
  }
}

}  // namespace
