// What SpectralAdamW and SpectralSGD share (layer 3): parameter names for
// error messages, and save/load of the full state keyed by (group index,
// parameter index) with layout checks, independent of how the LibTorch version
// keys Optimizer::state_ (see compat.h).
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <memory>
#include <string>
#include <vector>

namespace specopt {

class SpectralOptimizerBase : public torch::optim::Optimizer {
 public:
  using torch::optim::Optimizer::Optimizer;

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

 protected:
  // "SpectralAdamW" / "SpectralSGD": stored and checked by save/load.
  virtual std::string kind() const = 0;
  virtual std::unique_ptr<torch::optim::OptimizerOptions> make_options() const = 0;
  virtual std::unique_ptr<torch::optim::OptimizerParamState> make_state() const = 0;
  // The state of `param`, or nullptr before its first step.
  torch::optim::OptimizerParamState* find_state(const at::Tensor& param) const;
  void set_state(const at::Tensor& param, std::unique_ptr<torch::optim::OptimizerParamState> state);

 private:
  std::vector<std::vector<std::string>> names_;
};

}  // namespace specopt
