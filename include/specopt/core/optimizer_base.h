// What SpectralAdamW, SpectralSGD and Muon share (layer 3): parameter names
// for error messages, the checks that open every step, and save/load of the
// full state keyed by (group index, parameter index) with layout checks,
// independent of how the LibTorch version keys Optimizer::state_ (see compat.h).
#pragma once

#include "specopt/core/update_rules.h"

#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace specopt {

class SpectralOptimizerBase : public torch::optim::Optimizer {
 public:
  // Each group keeps the options it comes with, on every LibTorch version
  // (compat::keep_group_options); a group without options gets `defaults`.
  SpectralOptimizerBase(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                        std::unique_ptr<torch::optim::OptimizerOptions> defaults);

  // Names used in error messages (e.g. "transformer.h.0.attn.c_attn.weight")
  // for the parameters of group `group`, in order.
  void set_parameter_names(size_t group, std::vector<std::string> names);
  // The name given, else "parameter <index> of group <group>, shape [..]".
  std::string parameter_name(size_t group, size_t index) const;

  // Writes: kind, group count, per group its options and parameter shapes,
  // and per parameter its state (when it has one).
  void save(torch::serialize::OutputArchive& archive) const override;
  // Reads what save() wrote. Throws c10::Error, leaving the optimizer as it
  // was, if the archive is of another optimizer kind or its layout (group
  // count, parameter count per group, shapes) differs from this optimizer's.
  void load(torch::serialize::InputArchive& archive) override;

  // step() checks every gradient for NaN/Inf first (on by default). A wrapper
  // that checks all its optimizers' gradients itself turns this off.
  void set_check_finite_grads(bool on) { check_finite_grads_ = on; }
  // What step() does on a non-finite gradient: raise (default) or skip the
  // step, changing nothing (update_rules.h, OnNonFinite).
  void set_on_nonfinite(OnNonFinite policy) { on_nonfinite_ = policy; }
  OnNonFinite on_nonfinite() const { return on_nonfinite_; }
  // Steps skipped under OnNonFinite::kSkipStep (not saved: a run-time count).
  int64_t skipped_steps() const { return skipped_steps_; }

 protected:
  // The opening of every step(): the closure's loss (with grad mode on, as
  // torch's optimizers), then check_param_group for every group (groups and their
  // options may have changed since the last step) and check_grads, all before
  // anything changes. False: skip the step (a non-finite gradient under
  // kSkipStep); `loss` is set either way.
  bool begin_step(const LossClosure& closure, at::Tensor& loss);
  // Throws c10::Error naming the bad option or parameter of group `group`.
  virtual void check_param_group(size_t group) const = 0;
  // False (the step is skipped) if a gradient is non-finite under kSkipStep;
  // under kRaise throws, naming the parameter. True when unchecked.
  bool check_grads();
  // Throws, naming the parameter, if `row_blocks` does not divide dim 0 of a
  // matrix of group `group`.
  void check_row_blocks(size_t group, int64_t row_blocks) const;
  // Throws, naming `name`, if a state read by load() does not fit `param`.
  virtual void check_loaded_state(const torch::optim::OptimizerParamState& state, const at::Tensor& param,
                                  const std::string& name) const = 0;
  // "SpectralAdamW" / "SpectralSGD": stored and checked by save/load.
  virtual std::string kind() const = 0;
  virtual std::unique_ptr<torch::optim::OptimizerOptions> make_options() const = 0;
  virtual std::unique_ptr<torch::optim::OptimizerParamState> make_state() const = 0;
  // The state of `param`, or nullptr before its first step.
  torch::optim::OptimizerParamState* find_state(const at::Tensor& param) const;
  void set_state(const at::Tensor& param, std::unique_ptr<torch::optim::OptimizerParamState> state);

 private:
  std::vector<std::vector<std::string>> names_;
  bool check_finite_grads_ = true;
  OnNonFinite on_nonfinite_ = OnNonFinite::kRaise;
  int64_t skipped_steps_ = 0;
};

}  // namespace specopt
