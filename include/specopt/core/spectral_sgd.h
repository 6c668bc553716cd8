// SpectralSGD: the mSGD family (mSGD, mSGDS, mSGDQ, mSGDZ, or any p) as a
// torch::optim::Optimizer.
//
//   b₁ = g,  b ← μb + g  (no dampening, no bias correction);  d = b, or g + μb (Nesterov)
//   matrices: W ← W(1 − lr·wd) − lr·s·Ψ_p(d)      vectors: W ← W(1 − lr·wd') − lr·d
//
// The study trains vectors of the mSGD runs with AdamW instead; make_optimizer
// (make_optimizer.h) sets that up. Every option is per group and may change
// between steps.
#pragma once

#include "specopt/core/group_options.h"
#include "specopt/core/optimizer_base.h"
#include "specopt/core/spectral.h"
#include "specopt/core/update_rules.h"

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <vector>

namespace specopt {

// Fields and chaining setters of its own, plus lr, weight_decay, decay_vectors and
// the transform (p, method, scale, row_blocks, spectral) of SpectralGroupOptions
// (weight_decay defaults to 0). The field table is visit_sgd_fields
// (option_fields.h).
struct SpectralSGDOptions : public SpectralGroupOptions<SpectralSGDOptions> {
  SpectralSGDOptions(double lr);  // no default lr, as torch::optim::SGD
  TORCH_ARG(double, momentum) = 0.9;
  TORCH_ARG(bool, nesterov) = false;

 public:
  // Throws c10::Error naming the bad value.
  void check() const;
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

struct SpectralSGDParamState
    : public torch::optim::OptimizerCloneableParamState<SpectralSGDParamState> {
  TORCH_ARG(at::Tensor, momentum_buffer);

 public:
  void serialize(torch::serialize::InputArchive& archive) override;
  void serialize(torch::serialize::OutputArchive& archive) const override;
};

class SpectralSGD : public SpectralOptimizerBase {
 public:
  explicit SpectralSGD(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                       SpectralSGDOptions defaults);
  explicit SpectralSGD(std::vector<at::Tensor> params, SpectralSGDOptions defaults);

  // Checks every gradient for NaN/Inf first (throwing, with the parameter's
  // name, before anything changes), then one step per group.
  at::Tensor step(LossClosure closure = nullptr) override;

 protected:
  std::string kind() const override { return "SpectralSGD"; }
  std::unique_ptr<torch::optim::OptimizerOptions> make_options() const override;
  std::unique_ptr<torch::optim::OptimizerParamState> make_state() const override;
  // The options' check(), and that row_blocks divides every matrix's dim 0.
  void check_param_group(size_t group) const override;
  void check_loaded_state(const torch::optim::OptimizerParamState& state, const at::Tensor& param,
                          const std::string& name) const override;
};

}  // namespace specopt
