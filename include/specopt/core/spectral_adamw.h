// SpectralAdamW: the Adam family (Adam, AdamS, AdamQ, AdamZ, or any p) as a
// torch::optim::Optimizer, used exactly like torch::optim::AdamW.
//
//   m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  u = m̂/(√v̂ + ε)  (bias-corrected)
//   matrices: W ← W(1 − lr·wd) − lr·s·Ψ_p(u)      vectors: W ← W(1 − lr·wd') − lr·u
//
// With p = 1 (the default) and scale none/auto this is torch::optim::AdamW,
// except that weight decay applies to matrices only unless decay_vectors(true).
// Every option is per group and may change between steps (p schedules).
//
//   specopt::SpectralAdamW opt(model->parameters(),
//                              specopt::SpectralAdamWOptions(3e-3).p(0.5).betas({0.9, 0.95}));
//   loss.backward(); opt.step(); opt.zero_grad();
#pragma once

#include "specopt/core/group_options.h"
#include "specopt/core/optimizer_base.h"
#include "specopt/core/spectral.h"
#include "specopt/core/update_rules.h"

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <tuple>
#include <vector>

namespace specopt {

// Fields and chaining setters of its own, plus lr, weight_decay, decay_vectors and
// the transform (p, method, scale, row_blocks, spectral) of SpectralGroupOptions
// (weight_decay defaults to 1e-2, as in torch AdamW). The field table is visit_adamw_fields
// (option_fields.h).
struct SpectralAdamWOptions : public SpectralGroupOptions<SpectralAdamWOptions> {
  SpectralAdamWOptions(double lr = 1e-3);
  typedef std::tuple<double, double> betas_t;
  TORCH_ARG(betas_t, betas) = std::make_tuple(0.9, 0.999);
  TORCH_ARG(double, eps) = 1e-8;

 public:
  // Throws c10::Error naming the bad value.
  void check() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

struct SpectralAdamWParamState
    : public torch::optim::OptimizerCloneableParamState<SpectralAdamWParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(at::Tensor, exp_avg);
  TORCH_ARG(at::Tensor, exp_avg_sq);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class SpectralAdamW : public SpectralOptimizerBase {
 public:
  explicit SpectralAdamW(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                         SpectralAdamWOptions defaults = {});
  explicit SpectralAdamW(std::vector<at::Tensor> params, SpectralAdamWOptions defaults = {});

  // Checks every gradient for NaN/Inf first (throwing, with the parameter's
  // name, before anything changes), then one step per group.
  at::Tensor step(LossClosure closure = nullptr) override;

 protected:
  std::string kind() const override { return "SpectralAdamW"; }
  std::unique_ptr<torch::optim::OptimizerOptions> make_options() const override;
  std::unique_ptr<torch::optim::OptimizerParamState> make_state() const override;
  // The options' check(), and that row_blocks divides every matrix's dim 0.
  void check_param_group(size_t group) const override;
  void check_loaded_state(const torch::optim::OptimizerParamState& state, const at::Tensor& param,
                          const std::string& name) const override;
};

}  // namespace specopt
