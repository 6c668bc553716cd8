// SpectralAdamW (spectral_adamw.h) as a torch::optim::Optimizer: groups, lazy
// state and serialization. The arithmetic lives in update_rules.cpp.
#include "specopt/core/spectral_adamw.h"

#include "specopt/core/compat.h"
#include "core/optimizer_archive.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/types.h>

#include <cmath>

namespace specopt {

using namespace detail;

// ---- SpectralAdamW ------------------------------------------------------------

SpectralAdamWOptions::SpectralAdamWOptions(double lr) : SpectralGroupOptions(lr, 1e-2) {}

void SpectralAdamWOptions::check() const {
  check_lr("SpectralAdamW");
  TORCH_CHECK(std::isfinite(eps()) && eps() >= 0, "SpectralAdamW: invalid epsilon value: ", eps());
  const auto [beta1, beta2] = betas();
  TORCH_CHECK(beta1 >= 0 && beta1 < 1.0, "SpectralAdamW: invalid beta1 (must lie in [0, 1)): ", beta1);
  TORCH_CHECK(beta2 >= 0 && beta2 < 1.0, "SpectralAdamW: invalid beta2 (must lie in [0, 1)): ", beta2);
  check_group("SpectralAdamW");
}

void SpectralAdamWOptions::serialize(OutputArchive& a) const { visit_adamw_fields(*this, ArchiveWriter{a, ""}); }

void SpectralAdamWOptions::serialize(InputArchive& a) { visit_adamw_fields(*this, ArchiveReader{a, ""}); }

void SpectralAdamWParamState::serialize(OutputArchive& a) const {
  put(a, "step", step());
  a.write("exp_avg", exp_avg());
  a.write("exp_avg_sq", exp_avg_sq());
}

void SpectralAdamWParamState::serialize(InputArchive& a) {
  step(get(a, "step").toInt());
  at::Tensor m, v;
  a.read("exp_avg", m);
  a.read("exp_avg_sq", v);
  exp_avg(m);
  exp_avg_sq(v);
}

SpectralAdamW::SpectralAdamW(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                             SpectralAdamWOptions defaults)
    : SpectralOptimizerBase(std::move(param_groups), std::make_unique<SpectralAdamWOptions>(defaults)) {
  defaults.check();
  for (const auto& group : param_groups_) static_cast<const SpectralAdamWOptions&>(group.options()).check();
}

SpectralAdamW::SpectralAdamW(std::vector<at::Tensor> params, SpectralAdamWOptions defaults)
    : SpectralAdamW(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(
                        std::move(params))},
                    std::move(defaults)) {}

std::unique_ptr<OptimizerOptions> SpectralAdamW::make_options() const {
  return std::make_unique<SpectralAdamWOptions>();
}
std::unique_ptr<OptimizerParamState> SpectralAdamW::make_state() const {
  return std::make_unique<SpectralAdamWParamState>();
}

void SpectralAdamW::check_loaded_state(const OptimizerParamState& state, const at::Tensor& param,
                                       const std::string& name) const {
  const auto& s = static_cast<const SpectralAdamWParamState&>(state);
  TORCH_CHECK(s.step() >= 1, "optimizer load: ", name, " has step count ", s.step());
  check_state_tensor(s.exp_avg(), param, "exp_avg", name);
  check_state_tensor(s.exp_avg_sq(), param, "exp_avg_sq", name);
}

void SpectralAdamW::check_param_group(size_t group) const {
  const auto& o = static_cast<const SpectralAdamWOptions&>(param_groups_[group].options());
  o.check();
  check_row_blocks(group, o.row_blocks());
}

at::Tensor SpectralAdamW::step(LossClosure closure) {
  at::Tensor loss;
  if (!begin_step(closure, loss)) return loss;  // on_nonfinite = skip_step

  at::NoGradGuard no_grad;
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const SpectralAdamWOptions&>(group.options());
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs;
    std::vector<int64_t> steps;
    for (auto& w : group.params()) {
      if (!w.grad().defined()) continue;
      auto* found = static_cast<SpectralAdamWParamState*>(find_state(w));
      if (!found) {
        auto state = std::make_unique<SpectralAdamWParamState>();
        state->exp_avg(at::zeros_like(w, at::MemoryFormat::Preserve));
        state->exp_avg_sq(at::zeros_like(w, at::MemoryFormat::Preserve));
        found = state.get();
        set_state(w, std::move(state));
      }
      found->step(found->step() + 1);
      params.push_back(w);
      grads.push_back(w.grad());
      exp_avgs.push_back(found->exp_avg());
      exp_avg_sqs.push_back(found->exp_avg_sq());
      steps.push_back(found->step());
    }
    if (params.empty()) continue;
    spectral_adamw_step(params, grads, exp_avgs, exp_avg_sqs, steps, o.lr(), std::get<0>(o.betas()),
                        std::get<1>(o.betas()), o.eps(), o.weight_decay(), o.transform(), o.decay_vectors());
  }
  return loss;
}

}  // namespace specopt
