// Muon: torch.optim.Muon (PyTorch ≥ 2.9) as a specopt optimizer, with its
// signature, defaults and arithmetic, and Ψ_p for any p one option away.
//
//   B ← μB + (1−μ)g            (EMA momentum: B.lerp_(g, 1−μ); B₀ = 0)
//   d = g.lerp(B, μ) = (1−μ)g + μB   (Nesterov, default)   or   d = B
//   O = NS(d)   (p = 0, method auto: torch.optim.Muon's Newton–Schulz, below)
//     = Ψ_p(d)  (otherwise: spectral_power(d, p) with `method` and `spectral`)
//   W ← W(1 − lr·wd) − lr·a(m, n)·O   (decoupled weight decay with the UNADJUSTED lr)
//
// a(m, n) for an m×n parameter is adjust_lr_fn's ratio (torch's _adjust_lr):
//   original           max(1, m/n)^½   (Keller Jordan's Muon; the default)
//   match_rms_adamw    0.2·√max(m, n)  (Moonlight, arXiv 2502.16982)
//   spectral_unclamped √(m/n)          (Bernstein, "Deriving Muon")
//
// NS(d) is torch.optim.Muon's _zeropower_via_newtonschulz operation for
// operation (so results agree bit for bit on the same LibTorch): X = d in
// bfloat16, transposed when m > n, X ← X / max(‖X‖_F, eps) (in bfloat16), then
// ns_steps times  A = XXᵀ;  B = b·A + c·A·A (addmm);  X = a·X + B·X (addmm);
// transposed back. Unlike torch it always copies d first, so a bfloat16
// momentum buffer is never normalised in place.
//
// Like torch.optim.Muon, only 2-D parameters are accepted (embeddings, the
// head and vectors belong to AdamW: make_optimizer's groups, docs/muon.md).
//
//   specopt::Muon opt(hidden_matrices, specopt::MuonOptions(0.02));          // torch's Muon
//   specopt::Muon opt(hidden_matrices, specopt::MuonOptions(0.02).p(0.5));   // Muon with Ψ_½
#pragma once

#include "specopt/core/optimizer_base.h"
#include "specopt/core/spectral.h"

#include <ATen/core/Tensor.h>
#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <string>
#include <tuple>
#include <vector>

namespace specopt {

// torch.optim.Muon's adjust_lr_fn (None there = original).
enum class AdjustLr {
  kOriginal,           // "original"
  kMatchRmsAdamW,      // "match_rms_adamw"
  kSpectralUnclamped,  // "spectral_unclamped"
};
std::string adjust_lr_name(AdjustLr fn);
// Throws c10::Error naming the bad string and the valid names.
AdjustLr parse_adjust_lr(const std::string& name);
// a(m, n) above, for a parameter of shape (rows, cols).
double adjust_lr_ratio(AdjustLr fn, int64_t rows, int64_t cols);

// NS(G) above, for one 2-D G; returns a bfloat16 tensor (as torch does).
at::Tensor muon_newton_schulz(const at::Tensor& G, std::tuple<double, double, double> abc, int64_t steps,
                              double eps);

struct MuonOptions : public torch::optim::OptimizerCloneableOptions<MuonOptions> {
  MuonOptions(double lr = 1e-3);
  TORCH_ARG(double, lr) = 1e-3;
  TORCH_ARG(double, weight_decay) = 0.1;
  TORCH_ARG(double, momentum) = 0.95;
  TORCH_ARG(bool, nesterov) = true;
  typedef std::tuple<double, double, double> coefficients_t;
  TORCH_ARG(coefficients_t, ns_coefficients) = std::make_tuple(3.4445, -4.7750, 2.0315);
  TORCH_ARG(double, eps) = 1e-7;
  TORCH_ARG(int64_t, ns_steps) = 5;
  TORCH_ARG(AdjustLr, adjust_lr_fn) = AdjustLr::kOriginal;
  // Ψ_p of the update: 0 = Muon. p ≠ 0, or a method other than auto, goes
  // through spectral_power (auto there: the fastest method meeting
  // spectral.tol on the device).
  TORCH_ARG(double, p) = 0.0;
  TORCH_ARG(Method, method) = Method::kAuto;
  TORCH_ARG(SpectralOptions, spectral) = {};

 public:
  // True when the update is torch.optim.Muon's NS (p = 0, method auto).
  bool uses_muon_newton_schulz() const;
  // Throws c10::Error naming the bad value.
  void check() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
  double get_lr() const override;
  void set_lr(const double lr) override;
};

struct MuonParamState : public torch::optim::OptimizerCloneableParamState<MuonParamState> {
  TORCH_ARG(at::Tensor, momentum_buffer);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

// One Muon step (the formulas above) in place on params and momentum_buffers;
// an undefined buffer is created as zeros (B₀ = 0) and written back. Every
// param must be 2-D. Does not check gradients (see check_finite_grads).
void muon_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
               std::vector<at::Tensor>& momentum_buffers, const MuonOptions& options);

class Muon : public SpectralOptimizerBase {
 public:
  explicit Muon(std::vector<torch::optim::OptimizerParamGroup> param_groups, MuonOptions defaults = {});
  explicit Muon(std::vector<at::Tensor> params, MuonOptions defaults = {});

  // Checks options, shapes and gradients (see on_nonfinite) before anything
  // changes, then one muon_step per group.
  at::Tensor step(LossClosure closure = nullptr) override;

 protected:
  std::string kind() const override { return "Muon"; }
  std::unique_ptr<torch::optim::OptimizerOptions> make_options() const override;
  std::unique_ptr<torch::optim::OptimizerParamState> make_state() const override;
  void check_loaded_state(const torch::optim::OptimizerParamState& state, const at::Tensor& param,
                          const std::string& name) const override;
  // The options' check(), and that every parameter is a matrix.
  void check_param_group(size_t group) const override;
};

}  // namespace specopt
