// Gradient averaging, the sharded optimizer step and the trainer glue
// (sharded_step.h).
#include "specopt/dist/sharded_step.h"
#include "specopt/core/compat.h"
#include "specopt/core/update_rules.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <sstream>

namespace specopt {
namespace dist {

namespace {
using Seconds = std::chrono::duration<double>;
}  // namespace

// ---------------------------------------------------------------- training

GradientSynchronizer::GradientSynchronizer(std::shared_ptr<Communicator> comm, double bucket_mb)
    : comm_(std::move(comm)), bucket_bytes_(static_cast<int64_t>(bucket_mb * 1024.0 * 1024.0)) {
  TORCH_CHECK(comm_, "GradientSynchronizer needs a communicator");
  TORCH_CHECK(bucket_mb > 0, "gradient bucket size must be positive, got ", bucket_mb, " MB");
}

void GradientSynchronizer::synchronize(const std::vector<at::Tensor>& params) {
  if (comm_->world_size() == 1) return;
  std::vector<at::Tensor> grads;
  grads.reserve(params.size());
  for (const auto& p : params) {
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    grads.push_back(p.grad());
  }
  comm_->all_reduce_mean(grads, bucket_bytes_);
}

ShardedStep::ShardedStep(std::shared_ptr<Communicator> comm,
                         std::vector<std::pair<std::string, at::Tensor>> named_parameters)
    : comm_(std::move(comm)), params_(std::move(named_parameters)) {
  TORCH_CHECK(comm_, "ShardedStep needs a communicator");
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& np : params_) shapes.push_back(np.second.sizes().vec());
  plan_ = plan_shards(shapes, comm_->world_size());
}

void ShardedStep::step(const std::function<void()>& local_step) {
  using Clock = std::chrono::steady_clock;
  // Gradients are identical on all ranks, so checking all of them here makes
  // every rank fail together on a NaN/Inf, before any state changes.
  std::vector<at::Tensor> grads;
  std::vector<std::string> names;
  for (const auto& np : params_) {
    grads.push_back(np.second.grad());
    names.push_back(np.first);
  }
  check_finite_grads(grads, names);
  // Foreign gradients are set aside for the local step and put back after it
  // (also when it throws), so callers see the gradients they passed in.
  std::vector<at::Tensor> set_aside(params_.size());
  for (size_t i = 0; i < params_.size(); ++i)
    if (!owns(i)) {
      set_aside[i] = params_[i].second.grad();
      params_[i].second.mutable_grad().reset();
    }
  auto restore = [&] {
    for (size_t i = 0; i < params_.size(); ++i)
      if (set_aside[i].defined()) params_[i].second.mutable_grad() = set_aside[i];
  };
  auto t0 = Clock::now();
  try {
    local_step();
  } catch (...) {
    restore();
    throw;
  }
  restore();
  auto t1 = Clock::now();
  if (comm_->world_size() > 1) {
    at::NoGradGuard no_grad;
    for (int64_t r = 0; r < comm_->world_size(); ++r) {
      std::vector<at::Tensor> share;
      for (size_t i : plan_.owned_by(r)) share.push_back(params_[i].second);
      comm_->broadcast(share, r);
    }
  }
  auto t2 = Clock::now();
  last_local_s_ = Seconds(t1 - t0).count();
  last_broadcast_s_ = Seconds(t2 - t1).count();
}

namespace {
std::string save_to_bytes(torch::optim::Optimizer& opt) {
  torch::serialize::OutputArchive archive;
  opt.save(archive);
  std::ostringstream os;
  archive.save_to(os);
  return os.str();
}
}  // namespace

void ShardedStep::gather_full_state(const std::vector<torch::optim::Optimizer*>& optimizers) {
  if (comm_->world_size() == 1) return;
  for (auto* opt : optimizers) {
    TORCH_CHECK(opt != nullptr, "gather_full_state: null optimizer");
    auto blobs = comm_->gather_bytes(save_to_bytes(*opt), 0);
    if (!comm_->is_main()) continue;
    // Rank 0: keep its own state aside, load each other rank's archive (which
    // holds only that rank's parameters) and take the entries it owns.
    std::map<size_t, std::unique_ptr<torch::optim::OptimizerParamState>> collected;
    auto take = [&](int64_t from) {
      for (size_t i = 0; i < params_.size(); ++i) {
        if (plan_.owner[i] != from) continue;
        auto it = opt->state().find(compat::state_key(params_[i].second));
        if (it != opt->state().end() && it->second) collected[i] = std::move(it->second);
      }
    };
    take(0);
    for (int64_t r = 1; r < comm_->world_size(); ++r) {
      torch::serialize::InputArchive archive;
      std::istringstream is(blobs[static_cast<size_t>(r)]);
      archive.load_from(is);
      opt->load(archive);
      take(r);
    }
    opt->state().clear();
    for (auto& entry : collected) opt->state()[compat::state_key(params_[entry.first].second)] = std::move(entry.second);
  }
}

void ShardedStep::drop_unowned_state(const std::vector<torch::optim::Optimizer*>& optimizers) const {
  for (auto* opt : optimizers) {
    for (size_t i = 0; i < params_.size(); ++i)
      if (!owns(i)) opt->state().erase(compat::state_key(params_[i].second));
  }
}

std::vector<std::pair<std::string, at::Tensor>> named_parameters_of(CompositeOptimizer& optimizer) {
  // make_optimizer lists names optimizer by optimizer, group by group.
  std::vector<std::pair<std::string, at::Tensor>> out;
  const auto& names = optimizer.parameter_names();
  for (auto* opt : optimizer.optimizers())
    for (const auto& group : opt->param_groups())
      for (const auto& p : group.params()) {
        TORCH_CHECK(out.size() < names.size(), "named_parameters_of: more parameters than names");
        out.emplace_back(names[out.size()], p);
      }
  TORCH_CHECK(out.size() == names.size(), "named_parameters_of: ", names.size(), " names but ", out.size(),
              " parameters");
  return out;
}

TrainHooks make_train_hooks(std::shared_ptr<Communicator> comm, const TrainHookOptions& options) {
  TORCH_CHECK(comm, "make_train_hooks needs a communicator");
  TrainHooks hooks;
  hooks.rank = comm->rank();
  hooks.world_size = comm->world_size();
  auto sync = std::make_shared<GradientSynchronizer>(comm, options.bucket_mb());
  hooks.after_backward = [sync](const std::vector<at::Tensor>& params) { sync->synchronize(params); };
  hooks.all_reduce_sum = [comm](at::Tensor& values) { comm->all_reduce_sum(values); };
  if (!options.shard_optimizer()) return hooks;

  struct Shared {
    std::unique_ptr<ShardedStep> sharded;
    const CompositeOptimizer* built_for = nullptr;
  };
  auto shared = std::make_shared<Shared>();
  auto sharded_for = [comm, shared](CompositeOptimizer& opt) -> ShardedStep& {
    if (!shared->sharded || shared->built_for != &opt) {
      shared->sharded = std::make_unique<ShardedStep>(comm, named_parameters_of(opt));
      shared->built_for = &opt;
    }
    return *shared->sharded;
  };
  hooks.step_optimizer = [sharded_for](CompositeOptimizer& opt) {
    sharded_for(opt).step([&opt] { opt.step(); });
  };
  hooks.before_save = [sharded_for](CompositeOptimizer& opt) {
    sharded_for(opt).gather_full_state(opt.optimizers());
  };
  auto trim = [sharded_for](CompositeOptimizer& opt) { sharded_for(opt).drop_unowned_state(opt.optimizers()); };
  hooks.after_save = trim;
  hooks.after_load = trim;
  return hooks;
}

}  // namespace dist
}  // namespace specopt
