// Data-parallel training steps (ZeRO-1 style, as the distributed Muon
// implementations do):
//  * GradientSynchronizer: averages gradients with bucketed all-reduce
//    (flatten into ~bucket_mb buckets, all-reduce, unflatten).
//  * ShardedStep: runs the optimizer step on this rank's share only
//    (shard_plan.h) and then broadcasts every parameter from its owner, so all
//    ranks hold the same parameters. Optimizer state of a parameter lives only
//    on its owner. Checkpoints still hold the whole state: gather_full_state()
//    collects it on rank 0 before saving, and drop_unowned_state() trims a
//    full state loaded on any number of ranks.
//  * make_train_hooks: the trainer glue (TrainHooks).
#pragma once

#include "specopt/dist/communicator.h"
#include "specopt/dist/shard_plan.h"
#include "specopt/train/trainer.h"

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace specopt {
namespace dist {

// Averages the gradients of `params` across ranks. A parameter without a
// gradient contributes zeros (its gradient is created) so that every rank
// takes part in the same collectives.
class GradientSynchronizer {
 public:
  GradientSynchronizer(std::shared_ptr<Communicator> comm, double bucket_mb = 25.0);
  void synchronize(const std::vector<at::Tensor>& params);

 private:
  std::shared_ptr<Communicator> comm_;
  int64_t bucket_bytes_;
};

class ShardedStep {
 public:
  ShardedStep(std::shared_ptr<Communicator> comm,
              std::vector<std::pair<std::string, at::Tensor>> named_parameters);

  const ShardPlan& plan() const { return plan_; }
  bool owns(size_t index) const { return plan_.owner[index] == comm_->rank(); }
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const {
    return params_;
  }

  // 1. sets aside the gradients of parameters owned by other ranks (optimizers
  //    in the torch::optim mould skip parameters without a gradient, so they
  //    neither update them nor create state for them), 2. runs `local_step`,
  //    3. puts those gradients back, 4. broadcasts each parameter from its
  //    owner. Gradients must already be identical on all ranks
  //    (GradientSynchronizer); a NaN/Inf gradient throws before step 1.
  void step(const std::function<void()>& local_step);

  // Checkpointing with state that lives on its owners only. Both are
  // collective (every rank calls them with its optimizers in the same order).
  // gather_full_state: afterwards rank 0's optimizers hold the state of every
  // parameter (save them, then call drop_unowned_state); other ranks are
  // unchanged. Uses each optimizer's own save()/load().
  void gather_full_state(const std::vector<torch::optim::Optimizer*>& optimizers);
  // Removes state of parameters this rank does not own (after loading a full
  // checkpoint, whatever the number of ranks that wrote it). Local.
  void drop_unowned_state(const std::vector<torch::optim::Optimizer*>& optimizers) const;

  // Seconds spent in the last step: local optimizer step, and broadcast.
  double last_local_step_s() const { return last_local_s_; }
  double last_broadcast_s() const { return last_broadcast_s_; }

 private:
  std::shared_ptr<Communicator> comm_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  ShardPlan plan_;
  double last_local_s_ = 0.0, last_broadcast_s_ = 0.0;
};

// Pairs each parameter of `optimizer` with its name, in parameter_names() order.
std::vector<std::pair<std::string, at::Tensor>> named_parameters_of(CompositeOptimizer& optimizer);

struct TrainHookOptions {
  TORCH_ARG(double, bucket_mb) = 25.0;  // gradient all-reduce bucket size
  // true: sharded spectral step + broadcast, state on owners (ZeRO-1);
  // false: every rank steps every parameter (replicated optimizer).
  TORCH_ARG(bool, shard_optimizer) = true;
};

// TrainHooks that make specopt::train()/Trainer run as rank comm->rank():
// gradients averaged by GradientSynchronizer, the optimizer step through a
// ShardedStep (built on first use from the optimizer's parameters), the full
// optimizer state gathered to rank 0 around checkpoint writes and trimmed to
// the owned share after loading, metrics summed over ranks.
TrainHooks make_train_hooks(std::shared_ptr<Communicator> comm, const TrainHookOptions& options = {});

}  // namespace dist
}  // namespace specopt
