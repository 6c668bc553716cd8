// SpectralSGD (spectral_sgd.h) as a torch::optim::Optimizer: groups, lazy
// state and serialization. The arithmetic lives in update_rules.cpp.
#include "specopt/core/spectral_sgd.h"

#include "specopt/core/compat.h"
#include "core/optimizer_archive.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/types.h>

#include <cmath>

namespace specopt {

using namespace detail;

// ---- SpectralSGD --------------------------------------------------------------

SpectralSGDOptions::SpectralSGDOptions(double lr) : SpectralGroupOptions(lr, 0.0) {}

void SpectralSGDOptions::check() const {
  check_lr("SpectralSGD");
  TORCH_CHECK(momentum() >= 0 && momentum() < 1.0, "SpectralSGD: invalid momentum (must lie in [0, 1)): ",
              momentum());
  TORCH_CHECK(!nesterov() || momentum() > 0, "SpectralSGD: Nesterov momentum needs momentum > 0, got ",
              momentum());
  check_group("SpectralSGD");
}

void SpectralSGDOptions::serialize(OutputArchive& a) const { visit_sgd_fields(*this, ArchiveWriter{a, ""}); }

void SpectralSGDOptions::serialize(InputArchive& a) { visit_sgd_fields(*this, ArchiveReader{a, ""}); }

void SpectralSGDParamState::serialize(OutputArchive& a) const {
  a.write("momentum_buffer", momentum_buffer());
}

void SpectralSGDParamState::serialize(InputArchive& a) {
  at::Tensor b;
  a.read("momentum_buffer", b);
  momentum_buffer(b);
}

SpectralSGD::SpectralSGD(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                         SpectralSGDOptions defaults)
    : SpectralOptimizerBase(std::move(param_groups), std::make_unique<SpectralSGDOptions>(defaults)) {
  defaults.check();
  for (const auto& group : param_groups_) static_cast<const SpectralSGDOptions&>(group.options()).check();
}

SpectralSGD::SpectralSGD(std::vector<at::Tensor> params, SpectralSGDOptions defaults)
    : SpectralSGD(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(
                      std::move(params))},
                  std::move(defaults)) {}

std::unique_ptr<OptimizerOptions> SpectralSGD::make_options() const {
  return std::make_unique<SpectralSGDOptions>(0.0);
}
std::unique_ptr<OptimizerParamState> SpectralSGD::make_state() const {
  return std::make_unique<SpectralSGDParamState>();
}

void SpectralSGD::check_loaded_state(const OptimizerParamState& state, const at::Tensor& param,
                                     const std::string& name) const {
  check_state_tensor(static_cast<const SpectralSGDParamState&>(state).momentum_buffer(), param,
                     "momentum_buffer", name);
}

void SpectralSGD::check_param_group(size_t group) const {
  const auto& o = static_cast<const SpectralSGDOptions&>(param_groups_[group].options());
  o.check();
  check_row_blocks(group, o.row_blocks());
}

at::Tensor SpectralSGD::step(LossClosure closure) {
  at::Tensor loss;
  if (!begin_step(closure, loss)) return loss;  // on_nonfinite = skip_step

  at::NoGradGuard no_grad;
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const SpectralSGDOptions&>(group.options());
    std::vector<at::Tensor> params, grads, buffers;
    std::vector<SpectralSGDParamState*> states;  // nullptr: first step of that parameter
    for (auto& w : group.params()) {
      if (!w.grad().defined()) continue;
      auto* found = static_cast<SpectralSGDParamState*>(find_state(w));
      params.push_back(w);
      grads.push_back(w.grad());
      buffers.push_back(found ? found->momentum_buffer() : at::Tensor());  // undefined: b₁ = g
      states.push_back(found);
    }
    if (params.empty()) continue;
    spectral_sgd_step(params, grads, buffers, o.lr(), o.momentum(), o.nesterov(), o.weight_decay(),
                      o.transform(), o.decay_vectors());
    for (size_t i = 0; i < states.size(); ++i) {
      if (states[i]) continue;  // its buffer was updated in place
      auto state = std::make_unique<SpectralSGDParamState>();
      state->momentum_buffer(buffers[i]);
      set_state(params[i], std::move(state));
    }
  }
  return loss;
}

}  // namespace specopt
