// make_optimizer and CompositeOptimizer: the study's parameter grouping over
// SpectralAdamW / SpectralSGD (see make_optimizer.h).
#include "specopt/core/make_optimizer.h"

#include "specopt/core/compat.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

namespace specopt {

using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamGroup;

namespace {

// The archive's "kind": the class's name before it became CompositeOptimizer, kept
// because checkpoint files carry it (train/checkpoint.h).
constexpr const char* kArchiveKind = "SpectralOptimizer";

bool matches_any(const std::string& name, const std::vector<std::string>& patterns) {
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::string& p) { return name.find(p) != std::string::npos; });
}

// Both option types carry p; the vector AdamW of the mSGD family is never a matrix group.
OptimizerOptions& group_options(torch::optim::Optimizer& opt, size_t group) {
  return opt.param_groups().at(group).options();
}

void set_group_p(OptimizerOptions& o, double p) {
  if (auto* a = dynamic_cast<SpectralAdamWOptions*>(&o)) {
    a->p(p);
  } else if (auto* s = dynamic_cast<SpectralSGDOptions*>(&o)) {
    s->p(p);
  } else {
    TORCH_CHECK(false, "CompositeOptimizer::set_p: group options are not spectral options");
  }
}

double group_p(const OptimizerOptions& o) {
  if (auto* a = dynamic_cast<const SpectralAdamWOptions*>(&o)) return a->p();
  if (auto* s = dynamic_cast<const SpectralSGDOptions*>(&o)) return s->p();
  TORCH_CHECK(false, "CompositeOptimizer::p: group options are not spectral options");
}

c10::IValue get(torch::serialize::InputArchive& a, const std::string& key) {
  c10::IValue v;
  TORCH_CHECK(a.try_read(key, v), "CompositeOptimizer load: missing entry '", key, "'");
  return v;
}

}  // namespace

CompositeOptimizer::CompositeOptimizer(Variant variant,
                                     std::vector<std::unique_ptr<torch::optim::Optimizer>> optimizers,
                                     std::vector<Group> groups, std::vector<std::string> parameter_names)
    : variant_(std::move(variant)),
      optimizers_(std::move(optimizers)),
      groups_(std::move(groups)),
      names_(std::move(parameter_names)) {
  for (const auto& g : groups_) {
    const auto& params = optimizers_.at(g.optimizer)->param_groups().at(g.group).params();
    params_.insert(params_.end(), params.begin(), params.end());
  }
  TORCH_CHECK(params_.size() == names_.size(), "CompositeOptimizer: ", params_.size(), " parameters but ",
              names_.size(), " names");
  // step() checks all gradients at once, so a NaN in one optimizer's
  // parameters cannot leave the other one stepped.
  for (auto& opt : optimizers_)
    if (auto* base = dynamic_cast<SpectralOptimizerBase*>(opt.get())) base->set_check_finite_grads(false);
}

bool CompositeOptimizer::step() {
  std::vector<at::Tensor> grads;
  grads.reserve(params_.size());
  for (const auto& w : params_) grads.push_back(w.grad());
  if (!grads_finite(grads, names_, on_nonfinite_)) {
    ++skipped_steps_;
    return false;
  }
  for (auto& opt : optimizers_) opt->step();
  return true;
}

void CompositeOptimizer::zero_grad() {
  for (auto& opt : optimizers_) compat::zero_grad(*opt, /*set_to_none=*/true);
}

void CompositeOptimizer::set_lr(double lr_matrix, double lr_vector) {
  TORCH_CHECK(std::isfinite(lr_matrix) && lr_matrix >= 0, "CompositeOptimizer: invalid lr_matrix: ", lr_matrix);
  TORCH_CHECK(std::isfinite(lr_vector) && lr_vector >= 0, "CompositeOptimizer: invalid lr_vector: ", lr_vector);
  for (const auto& g : groups_)
    group_options(*optimizers_[g.optimizer], g.group).set_lr(g.matrix ? lr_matrix : lr_vector);
}

void CompositeOptimizer::set_p(double p) {
  TORCH_CHECK(p_in_range(p), "CompositeOptimizer: p must lie in [-0.5, 1], got ", p);
  for (const auto& g : groups_)
    if (g.matrix) set_group_p(group_options(*optimizers_[g.optimizer], g.group), p);
}

double CompositeOptimizer::p() const {
  for (const auto& g : groups_)
    if (g.matrix) return group_p(optimizers_[g.optimizer]->param_groups().at(g.group).options());
  return variant_.p;
}

std::vector<torch::optim::Optimizer*> CompositeOptimizer::optimizers() {
  std::vector<torch::optim::Optimizer*> out;
  for (auto& opt : optimizers_) out.push_back(opt.get());
  return out;
}

void CompositeOptimizer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("kind", c10::IValue(std::string(kArchiveKind)));
  archive.write("family", c10::IValue(family_name(variant_.family)));
  archive.write("names.size", c10::IValue(static_cast<int64_t>(names_.size())));
  for (size_t i = 0; i < names_.size(); ++i) archive.write("name." + std::to_string(i), c10::IValue(names_[i]));
  archive.write("optimizers", c10::IValue(static_cast<int64_t>(optimizers_.size())));
  for (size_t k = 0; k < optimizers_.size(); ++k) {
    torch::serialize::OutputArchive sub(archive.compilation_unit());
    optimizers_[k]->save(sub);
    archive.write("optimizer." + std::to_string(k), sub);
  }
}

void CompositeOptimizer::load(torch::serialize::InputArchive& archive) {
  c10::IValue kind;
  TORCH_CHECK(archive.try_read("kind", kind) && kind.isString() && kind.toStringRef() == kArchiveKind,
              "CompositeOptimizer load: the archive holds no CompositeOptimizer state");
  const std::string family = get(archive, "family").toStringRef();
  TORCH_CHECK(family == family_name(variant_.family), "CompositeOptimizer load: the archive is of the ", family,
              " family, this optimizer is ", variant_.name, " (", family_name(variant_.family), " family)");
  const int64_t n = get(archive, "names.size").toInt();
  TORCH_CHECK(n == static_cast<int64_t>(names_.size()), "CompositeOptimizer load: the archive has ", n,
              " parameters, this optimizer has ", names_.size());
  for (int64_t i = 0; i < n; ++i) {
    const std::string saved = get(archive, "name." + std::to_string(i)).toStringRef();
    TORCH_CHECK(saved == names_[i], "CompositeOptimizer load: parameter ", i, " is '", saved,
                "' in the archive but '", names_[i], "' in this optimizer");
  }
  const int64_t count = get(archive, "optimizers").toInt();
  TORCH_CHECK(count == static_cast<int64_t>(optimizers_.size()), "CompositeOptimizer load: the archive has ",
              count, " optimizers, this one has ", optimizers_.size());
  for (size_t k = 0; k < optimizers_.size(); ++k) {
    torch::serialize::InputArchive sub;
    archive.read("optimizer." + std::to_string(k), sub);
    optimizers_[k]->load(sub);
  }
}

namespace {

void check_spec(const OptimizerSpec& spec, size_t parameter_count) {
  TORCH_CHECK(parameter_count > 0, "make_optimizer: no parameters");
  TORCH_CHECK(std::isfinite(spec.lr_matrix) && spec.lr_matrix >= 0, "make_optimizer: invalid lr_matrix: ",
              spec.lr_matrix);
  TORCH_CHECK(std::isfinite(spec.lr_vector) && spec.lr_vector >= 0, "make_optimizer: invalid lr_vector: ",
              spec.lr_vector);
  TORCH_CHECK(spec.weight_decay_matrix >= 0, "make_optimizer: invalid weight_decay_matrix: ",
              spec.weight_decay_matrix);
  TORCH_CHECK(spec.weight_decay_vector >= 0, "make_optimizer: invalid weight_decay_vector: ",
              spec.weight_decay_vector);
  TORCH_CHECK(spec.split_rows_blocks >= 1, "make_optimizer: invalid split_rows_blocks: ", spec.split_rows_blocks);
}

struct Part {
  std::vector<at::Tensor> params;
  std::vector<std::string> names;
};
struct Parts {
  Part matrices, split, vectors;  // plain matrices, row-split matrices, vectors (and excluded matrices)
};

Parts partition(const std::vector<std::pair<std::string, at::Tensor>>& named_parameters,
                const OptimizerSpec& spec) {
  Parts parts;
  std::set<std::string> seen;
  for (const auto& [name, w] : named_parameters) {
    TORCH_CHECK(w.defined(), "make_optimizer: parameter '", name, "' is undefined");
    TORCH_CHECK(seen.insert(name).second, "make_optimizer: duplicate parameter name '", name, "'");
    // The shape rule: rows (dim 0) = split_rows_blocks × cols (the other dims together).
    const bool split_by_shape = spec.split_rows_by_shape && w.dim() >= 2 && w.numel() > 0 &&
                                w.size(0) == spec.split_rows_blocks * (w.numel() / w.size(0));
    const bool split_it = split_by_shape || matches_any(name, spec.split_rows_patterns);
    const bool excluded = std::find(spec.exclude_from_spectral.begin(), spec.exclude_from_spectral.end(), name) !=
                          spec.exclude_from_spectral.end();
    Part& part = (w.dim() < 2 || excluded) ? parts.vectors : (split_it ? parts.split : parts.matrices);
    part.params.push_back(w);
    part.names.push_back(name);
  }
  for (const auto& name : spec.exclude_from_spectral)
    TORCH_CHECK(seen.count(name), "make_optimizer: exclude_from_spectral names '", name,
                "', which is not a parameter name");
  return parts;
}

// The study's Adam options (lr, betas, eps, weight decay) of one group.
SpectralAdamWOptions adam_options(const OptimizerSpec& spec, double lr, double weight_decay) {
  return SpectralAdamWOptions(lr).betas(std::make_tuple(spec.beta1, spec.beta2)).eps(spec.eps).weight_decay(
      weight_decay);
}

// The matrix groups' Ψ_p: the variant's p, the spec's method, scale and spectral settings.
template <class Options>
Options with_transform(Options options, const OptimizerSpec& spec, double p) {
  return options.transform(
      MatrixTransformOptions().p(p).method(spec.method).scale(spec.scale).spectral(spec.spectral));
}

template <class Options>
struct GroupPlan {
  const Part* part;
  Options options;
  bool matrix;
};

// The optimizers being built and the CompositeOptimizer's records of their groups.
struct Assembly {
  std::vector<std::unique_ptr<torch::optim::Optimizer>> optimizers;
  std::vector<CompositeOptimizer::Group> groups;
  std::vector<std::string> names;

  // One Optimizer over the plans' non-empty parts (none if all are empty).
  template <class Optimizer, class Options>
  void add(const Options& defaults, const std::vector<GroupPlan<Options>>& plans) {
    std::vector<OptimizerParamGroup> param_groups;
    std::vector<std::vector<std::string>> group_names;
    for (const auto& plan : plans) {
      if (plan.part->params.empty()) continue;
      // clone() is public on the OptimizerOptions interface only.
      param_groups.emplace_back(plan.part->params, static_cast<const OptimizerOptions&>(plan.options).clone());
      group_names.push_back(plan.part->names);
      groups.push_back({optimizers.size(), param_groups.size() - 1, plan.matrix});
      names.insert(names.end(), plan.part->names.begin(), plan.part->names.end());
    }
    if (param_groups.empty()) return;
    auto opt = std::make_unique<Optimizer>(std::move(param_groups), defaults);
    for (size_t g = 0; g < group_names.size(); ++g) opt->set_parameter_names(g, group_names[g]);
    optimizers.push_back(std::move(opt));
  }
};

}  // namespace

std::unique_ptr<CompositeOptimizer> make_optimizer(
    const std::vector<std::pair<std::string, at::Tensor>>& named_parameters, const OptimizerSpec& spec) {
  const Variant variant = parse_variant(spec.variant);
  check_spec(spec, named_parameters.size());
  const Parts parts = partition(named_parameters, spec);
  const auto vectors = adam_options(spec, spec.lr_vector, spec.weight_decay_vector).decay_vectors(true).p(1.0);
  Assembly a;
  if (variant.family == Family::kAdam) {
    const auto m = with_transform(adam_options(spec, spec.lr_matrix, spec.weight_decay_matrix), spec, variant.p);
    const auto split = SpectralAdamWOptions(m).row_blocks(spec.split_rows_blocks);
    a.add<SpectralAdamW>(m, {{&parts.matrices, m, true}, {&parts.split, split, true},
                             {&parts.vectors, vectors, false}});
  } else {  // mSGD: SpectralSGD for the matrices, AdamW (p = 1) for the vectors, as the study did
    const auto m = with_transform(SpectralSGDOptions(spec.lr_matrix)
                                      .momentum(spec.momentum)
                                      .nesterov(spec.nesterov)
                                      .weight_decay(spec.weight_decay_matrix),
                                  spec, variant.p);
    const auto split = SpectralSGDOptions(m).row_blocks(spec.split_rows_blocks);
    a.add<SpectralSGD>(m, {{&parts.matrices, m, true}, {&parts.split, split, true}});
    a.add<SpectralAdamW>(vectors, {{&parts.vectors, vectors, false}});
  }
  auto opt = std::make_unique<CompositeOptimizer>(variant, std::move(a.optimizers), std::move(a.groups),
                                                 std::move(a.names));
  opt->set_on_nonfinite(spec.on_nonfinite);
  return opt;
}

std::unique_ptr<CompositeOptimizer> make_optimizer(
    const torch::OrderedDict<std::string, at::Tensor>& named_parameters, const OptimizerSpec& spec) {
  std::vector<std::pair<std::string, at::Tensor>> pairs;
  for (const auto& item : named_parameters) pairs.emplace_back(item.key(), item.value());
  return make_optimizer(pairs, spec);
}

}  // namespace specopt
