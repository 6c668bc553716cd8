// Layer 3: SpectralAdamW and SpectralSGD as torch::optim::Optimizers, and
// their shared base (names, save/load). The arithmetic lives in
// update_rules.cpp; this file handles groups, lazy state and serialization.
#include "specopt/core/compat.h"
#include "specopt/core/optimizer_base.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>
#include <torch/types.h>

#include <cmath>
#include <sstream>

namespace specopt {

using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;
using torch::serialize::InputArchive;
using torch::serialize::OutputArchive;

namespace {

// ---- small archive helpers --------------------------------------------------

template <typename T>
void put(OutputArchive& a, const std::string& key, T value) {
  a.write(key, c10::IValue(value));
}

c10::IValue get(InputArchive& a, const std::string& key) {
  c10::IValue v;
  TORCH_CHECK(a.try_read(key, v), "optimizer archive: missing entry '", key, "'");
  return v;
}

// The Ψ_p options shared by both option structs, spectral settings included.
void write_transform(OutputArchive& a, const MatrixTransformOptions& t) {
  put(a, "p", t.p());
  put(a, "method", method_name(t.method()));
  put(a, "scale", scale_mode_name(t.scale()));
  put(a, "row_blocks", t.row_blocks());
  const SpectralOptions& s = t.spectral();
  put(a, "spectral.tol", s.tol());
  put(a, "spectral.iterations", s.iterations());
  put(a, "spectral.newton_lower", s.newton_lower());
  put(a, "spectral.ns_steps", s.ns_steps());
  put(a, "spectral.ns_coefficients", ns_coefficients_name(s.ns_coefficients()));
  put(a, "spectral.compute_dtype",
      static_cast<int64_t>(s.compute_dtype() ? static_cast<int>(*s.compute_dtype()) : -1));
  put(a, "spectral.neg_eps", s.neg_eps());
  put(a, "spectral.rank_tol", s.rank_tol());
  put(a, "spectral.check_finite", s.check_finite());
}

MatrixTransformOptions read_transform(InputArchive& a) {
  SpectralOptions s;
  s.tol(get(a, "spectral.tol").toDouble())
      .iterations(get(a, "spectral.iterations").toInt())
      .newton_lower(get(a, "spectral.newton_lower").toDouble())
      .ns_steps(get(a, "spectral.ns_steps").toInt())
      .ns_coefficients(parse_ns_coefficients(get(a, "spectral.ns_coefficients").toStringRef()))
      .neg_eps(get(a, "spectral.neg_eps").toDouble())
      .rank_tol(get(a, "spectral.rank_tol").toDouble())
      .check_finite(get(a, "spectral.check_finite").toBool());
  const int64_t dtype = get(a, "spectral.compute_dtype").toInt();
  if (dtype >= 0) s.compute_dtype(static_cast<c10::ScalarType>(dtype));
  return MatrixTransformOptions()
      .p(get(a, "p").toDouble())
      .method(parse_method(get(a, "method").toStringRef()))
      .scale(parse_scale_mode(get(a, "scale").toStringRef()))
      .row_blocks(get(a, "row_blocks").toInt())
      .spectral(s);
}

template <typename Options>
void assign_transform(Options& o, const MatrixTransformOptions& t) {
  o.p(t.p()).method(t.method()).scale(t.scale()).row_blocks(t.row_blocks()).spectral(t.spectral());
}

template <typename Options>
MatrixTransformOptions transform_of(const Options& o) {
  return MatrixTransformOptions()
      .p(o.p())
      .method(o.method())
      .scale(o.scale())
      .row_blocks(o.row_blocks())
      .spectral(o.spectral());
}

void write_shape(OutputArchive& a, const std::string& key, at::IntArrayRef sizes) {
  a.write(key, torch::tensor(sizes.vec(), torch::kInt64));
}

std::vector<int64_t> read_shape(InputArchive& a, const std::string& key) {
  at::Tensor t;
  TORCH_CHECK(a.try_read(key, t), "optimizer archive: missing entry '", key, "'");
  t = t.to(at::kCPU).contiguous();
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << sizes;
  return os.str();
}

// A state tensor read from an archive must match its parameter.
void check_state_tensor(const at::Tensor& t, const at::Tensor& param, const std::string& what,
                        const std::string& name) {
  TORCH_CHECK(t.defined() && t.sizes() == param.sizes(), "optimizer load: state '", what, "' of ", name,
              " has shape ", t.defined() ? shape_string(t.sizes()) : "undefined", ", parameter has ",
              shape_string(param.sizes()));
}

}  // namespace

// ---- SpectralOptimizerBase ------------------------------------------------------

SpectralOptimizerBase::SpectralOptimizerBase(std::vector<torch::optim::OptimizerParamGroup> param_groups,
                                             std::unique_ptr<OptimizerOptions> defaults)
    : Optimizer(param_groups, std::move(defaults)) {
  compat::keep_group_options(param_groups_, param_groups);
}

void SpectralOptimizerBase::set_parameter_names(size_t group, std::vector<std::string> names) {
  TORCH_CHECK(group < param_groups_.size(), "set_parameter_names: group ", group, " does not exist (",
              param_groups_.size(), " groups)");
  TORCH_CHECK(names.size() == param_groups_[group].params().size(), "set_parameter_names: group ", group,
              " has ", param_groups_[group].params().size(), " parameters, got ", names.size(), " names");
  if (names_.size() <= group) names_.resize(group + 1);
  names_[group] = std::move(names);
}

std::string SpectralOptimizerBase::parameter_name(size_t group, size_t index) const {
  if (group < names_.size() && index < names_[group].size()) return names_[group][index];
  std::ostringstream os;
  os << "parameter " << index << " of group " << group;
  if (group < param_groups_.size() && index < param_groups_[group].params().size())
    os << ", shape " << param_groups_[group].params()[index].sizes();
  return os.str();
}

void SpectralOptimizerBase::check_grads() const {
  if (!check_finite_grads_) return;
  std::vector<at::Tensor> grads;
  std::vector<std::string> names;
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& params = param_groups_[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      if (!params[i].grad().defined()) continue;
      grads.push_back(params[i].grad());
      names.push_back(parameter_name(g, i));
    }
  }
  check_finite_grads(grads, names);
}

void SpectralOptimizerBase::check_row_blocks(size_t group, int64_t row_blocks) const {
  const auto& params = param_groups_[group].params();
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].dim() < 2) continue;
    TORCH_CHECK(params[i].size(0) % row_blocks == 0, kind(), ": row_blocks = ", row_blocks,
                " does not divide the ", params[i].size(0), " rows of ", parameter_name(group, i));
  }
}

OptimizerParamState* SpectralOptimizerBase::find_state(const at::Tensor& param) const {
  auto it = state_.find(compat::state_key(param));
  return it == state_.end() ? nullptr : it->second.get();
}

void SpectralOptimizerBase::set_state(const at::Tensor& param, std::unique_ptr<OptimizerParamState> state) {
  state_[compat::state_key(param)] = std::move(state);
}

void SpectralOptimizerBase::save(OutputArchive& archive) const {
  put(archive, "kind", kind());
  put(archive, "groups", static_cast<int64_t>(param_groups_.size()));
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    OutputArchive group(archive.compilation_unit());
    OutputArchive options(archive.compilation_unit());
    param_groups_[g].options().serialize(options);
    group.write("options", options);
    const auto& params = param_groups_[g].params();
    put(group, "size", static_cast<int64_t>(params.size()));
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string key = "param." + std::to_string(i);
      write_shape(group, key + ".shape", params[i].sizes());
      const OptimizerParamState* state = find_state(params[i]);
      put(group, key + ".has_state", state != nullptr);
      if (state) {
        OutputArchive s(archive.compilation_unit());
        state->serialize(s);
        group.write(key + ".state", s);
      }
    }
    archive.write("group." + std::to_string(g), group);
  }
}

void SpectralOptimizerBase::load(InputArchive& archive) {
  c10::IValue kind_value;
  TORCH_CHECK(archive.try_read("kind", kind_value) && kind_value.isString(), "load into ", kind(),
              ": the archive holds no spectral optimizer state");
  TORCH_CHECK(kind_value.toStringRef() == kind(), "load into ", kind(), ": the archive holds the state of a ",
              kind_value.toStringRef());
  const int64_t groups = get(archive, "groups").toInt();
  TORCH_CHECK(groups == static_cast<int64_t>(param_groups_.size()), "load into ", kind(), ": the archive has ",
              groups, " parameter groups, this optimizer has ", param_groups_.size());

  // Read and check everything first; change the optimizer only when all of it fits.
  std::vector<std::unique_ptr<OptimizerOptions>> options(groups);
  std::vector<std::vector<std::unique_ptr<OptimizerParamState>>> states(groups);
  for (int64_t g = 0; g < groups; ++g) {
    InputArchive group;
    archive.read("group." + std::to_string(g), group);
    InputArchive options_archive;
    group.read("options", options_archive);
    options[g] = make_options();
    options[g]->serialize(options_archive);
    const auto& params = param_groups_[g].params();
    const int64_t size = get(group, "size").toInt();
    TORCH_CHECK(size == static_cast<int64_t>(params.size()), "load into ", kind(), ": group ", g,
                " has ", size, " parameters in the archive, ", params.size(), " in this optimizer");
    states[g].resize(size);
    for (int64_t i = 0; i < size; ++i) {
      const std::string key = "param." + std::to_string(i);
      const auto shape = read_shape(group, key + ".shape");
      TORCH_CHECK(at::IntArrayRef(shape) == params[i].sizes(), "load into ", kind(), ": ",
                  parameter_name(g, i), " has shape ", shape_string(params[i].sizes()),
                  " but the archive holds state for shape ", shape_string(shape));
      if (!get(group, key + ".has_state").toBool()) continue;
      InputArchive s;
      group.read(key + ".state", s);
      states[g][i] = make_state();
      states[g][i]->serialize(s);
      check_loaded_state(*states[g][i], params[i], parameter_name(g, i));
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    param_groups_[g].set_options(std::move(options[g]));
    const auto& params = param_groups_[g].params();
    for (size_t i = 0; i < params.size(); ++i) {
      if (states[g][i]) {
        set_state(params[i], std::move(states[g][i]));
      } else {
        state_.erase(compat::state_key(params[i]));
      }
    }
  }
}

// ---- SpectralAdamW ------------------------------------------------------------

SpectralAdamWOptions::SpectralAdamWOptions(double lr) : lr_(lr) {}

MatrixTransformOptions SpectralAdamWOptions::transform() const { return transform_of(*this); }

void SpectralAdamWOptions::check() const {
  TORCH_CHECK(std::isfinite(lr()) && lr() >= 0, "SpectralAdamW: invalid learning rate: ", lr());
  TORCH_CHECK(std::isfinite(eps()) && eps() >= 0, "SpectralAdamW: invalid epsilon value: ", eps());
  const auto [beta1, beta2] = betas();
  TORCH_CHECK(beta1 >= 0 && beta1 < 1.0, "SpectralAdamW: invalid beta1 (must lie in [0, 1)): ", beta1);
  TORCH_CHECK(beta2 >= 0 && beta2 < 1.0, "SpectralAdamW: invalid beta2 (must lie in [0, 1)): ", beta2);
  TORCH_CHECK(std::isfinite(weight_decay()) && weight_decay() >= 0,
              "SpectralAdamW: invalid weight_decay value: ", weight_decay());
  check_transform_options(transform());
}

void SpectralAdamWOptions::serialize(OutputArchive& a) const {
  put(a, "lr", lr());
  put(a, "beta1", std::get<0>(betas()));
  put(a, "beta2", std::get<1>(betas()));
  put(a, "eps", eps());
  put(a, "weight_decay", weight_decay());
  put(a, "decay_vectors", decay_vectors());
  write_transform(a, transform());
}

void SpectralAdamWOptions::serialize(InputArchive& a) {
  lr(get(a, "lr").toDouble());
  betas(std::make_tuple(get(a, "beta1").toDouble(), get(a, "beta2").toDouble()));
  eps(get(a, "eps").toDouble());
  weight_decay(get(a, "weight_decay").toDouble());
  decay_vectors(get(a, "decay_vectors").toBool());
  assign_transform(*this, read_transform(a));
}

double SpectralAdamWOptions::get_lr() const { return lr(); }
void SpectralAdamWOptions::set_lr(const double lr) { this->lr(lr); }

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

at::Tensor SpectralAdamW::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  // Validate everything before anything changes.
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& o = static_cast<const SpectralAdamWOptions&>(param_groups_[g].options());
    o.check();
    check_row_blocks(g, o.row_blocks());
  }
  check_grads();

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

// ---- SpectralSGD --------------------------------------------------------------

SpectralSGDOptions::SpectralSGDOptions(double lr) : lr_(lr) {}

MatrixTransformOptions SpectralSGDOptions::transform() const { return transform_of(*this); }

void SpectralSGDOptions::check() const {
  TORCH_CHECK(std::isfinite(lr()) && lr() >= 0, "SpectralSGD: invalid learning rate: ", lr());
  TORCH_CHECK(momentum() >= 0 && momentum() < 1.0, "SpectralSGD: invalid momentum (must lie in [0, 1)): ",
              momentum());
  TORCH_CHECK(!nesterov() || momentum() > 0, "SpectralSGD: Nesterov momentum needs momentum > 0, got ",
              momentum());
  TORCH_CHECK(std::isfinite(weight_decay()) && weight_decay() >= 0,
              "SpectralSGD: invalid weight_decay value: ", weight_decay());
  check_transform_options(transform());
}

void SpectralSGDOptions::serialize(OutputArchive& a) const {
  put(a, "lr", lr());
  put(a, "momentum", momentum());
  put(a, "nesterov", nesterov());
  put(a, "weight_decay", weight_decay());
  put(a, "decay_vectors", decay_vectors());
  write_transform(a, transform());
}

void SpectralSGDOptions::serialize(InputArchive& a) {
  lr(get(a, "lr").toDouble());
  momentum(get(a, "momentum").toDouble());
  nesterov(get(a, "nesterov").toBool());
  weight_decay(get(a, "weight_decay").toDouble());
  decay_vectors(get(a, "decay_vectors").toBool());
  assign_transform(*this, read_transform(a));
}

double SpectralSGDOptions::get_lr() const { return lr(); }
void SpectralSGDOptions::set_lr(const double lr) { this->lr(lr); }

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

at::Tensor SpectralSGD::step(LossClosure closure) {
  at::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (size_t g = 0; g < param_groups_.size(); ++g) {
    const auto& o = static_cast<const SpectralSGDOptions&>(param_groups_[g].options());
    o.check();
    check_row_blocks(g, o.row_blocks());
  }
  check_grads();

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
