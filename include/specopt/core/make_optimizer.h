// make_optimizer: the study's optimizer setup from one spec.
//
// Parameters are split into a matrix group (dim ≥ 2) and a vector group
// (dim < 2), each with its own lr and weight decay.
//   Adam family: one SpectralAdamW with both groups (the vector group has p = 1).
//   mSGD family: a SpectralSGD for the matrices and a SpectralAdamW with p = 1
//                (= AdamW) for the vectors, as the study did.
// CompositeOptimizer wraps the one or two optimizers so trainers see one object.
#pragma once

#include "specopt/core/optimizer_spec.h"
#include "specopt/core/update_rules.h"
#include "specopt/core/variants.h"

#include <ATen/core/Tensor.h>
#include <torch/ordered_dict.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize/archive.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace specopt {

class CompositeOptimizer {
 public:
  // One parameter group of one of the underlying optimizers.
  struct Group {
    size_t optimizer;  // index into optimizers()
    size_t group;      // index into that optimizer's param_groups()
    bool matrix;       // matrix group (lr_matrix, p) or vector group (lr_vector, p = 1)
  };
  // Use make_optimizer().
  CompositeOptimizer(Variant variant,
                    std::vector<std::unique_ptr<torch::optim::Optimizer>> optimizers,
                    std::vector<Group> groups, std::vector<std::string> parameter_names);

  // Checks all gradients for NaN/Inf before anything changes: then, as
  // on_nonfinite() says (make_optimizer sets OptimizerSpec::on_nonfinite),
  // throws naming the parameter, or skips the step (returns false, counted by
  // skipped_steps()). Else steps every underlying optimizer and returns true.
  bool step();
  void set_on_nonfinite(OnNonFinite policy) { on_nonfinite_ = policy; }
  OnNonFinite on_nonfinite() const { return on_nonfinite_; }
  int64_t skipped_steps() const { return skipped_steps_; }
  void zero_grad();  // releases the gradients (set_to_none), on every LibTorch version
  void set_lr(double lr_matrix, double lr_vector);  // per-step schedules
  void set_p(double p);                             // p schedules (matrix groups)
  double p() const;                                 // current p of the matrix groups
  void save(torch::serialize::OutputArchive& archive) const;
  // Throws c10::Error (state unchanged) if the archive holds other parameter
  // names or another family.
  void load(torch::serialize::InputArchive& archive);
  std::vector<torch::optim::Optimizer*> optimizers();  // the underlying ones
  const std::vector<Group>& groups() const { return groups_; }
  const Variant& variant() const { return variant_; }
  // Names of all managed parameters in order (matrices first, then vectors).
  const std::vector<std::string>& parameter_names() const { return names_; }

 private:
  Variant variant_;
  std::vector<std::unique_ptr<torch::optim::Optimizer>> optimizers_;
  std::vector<Group> groups_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;  // in the order of names_
  OnNonFinite on_nonfinite_ = OnNonFinite::kRaise;
  int64_t skipped_steps_ = 0;
};

// The composite's earlier name (it is not a torch::optim::Optimizer, unlike
// SpectralOptimizerBase), kept so that existing code still compiles.
using SpectralOptimizer [[deprecated("renamed CompositeOptimizer")]] = CompositeOptimizer;

// Throws c10::Error naming the bad value (unknown variant, negative lr, ...),
// or if the parameter list is empty / has duplicate names.
std::unique_ptr<CompositeOptimizer> make_optimizer(
    const std::vector<std::pair<std::string, at::Tensor>>& named_parameters,
    const OptimizerSpec& spec);
std::unique_ptr<CompositeOptimizer> make_optimizer(
    const torch::OrderedDict<std::string, at::Tensor>& named_parameters, const OptimizerSpec& spec);

}  // namespace specopt
