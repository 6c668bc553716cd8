// SpectralOptimizerBase (optimizer_base.h): parameter names, gradient checks and
// save/load of the full state, shared by SpectralAdamW and SpectralSGD.
#include "specopt/core/optimizer_base.h"

#include "specopt/core/compat.h"
#include "core/optimizer_archive.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/types.h>

#include <cmath>

namespace specopt {

using namespace detail;

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

bool SpectralOptimizerBase::begin_step(const LossClosure& closure, at::Tensor& loss) {
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (size_t g = 0; g < param_groups_.size(); ++g) check_param_group(g);
  return check_grads();
}

bool SpectralOptimizerBase::check_grads() {
  if (!check_finite_grads_) return true;
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
  if (grads_finite(grads, names, on_nonfinite_)) return true;
  ++skipped_steps_;
  return false;
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

}  // namespace specopt
