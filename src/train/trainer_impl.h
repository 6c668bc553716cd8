// Trainer's state (Trainer::Impl), shared by trainer.cpp (building and
// stepping) and trainer_checkpoint.cpp (save/load). Private to the train layer.
#pragma once

#include "specopt/train/data.h"
#include "specopt/train/schedule.h"
#include "specopt/train/trainer.h"
#include "train/task.h"

#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace specopt {

namespace detail {
constexpr double kInf = std::numeric_limits<double>::infinity();

// The keys that may differ between a checkpoint and the resuming config: they
// change where and how often things are written, not what is computed.
bool resumable_difference(const std::string& key);
}  // namespace detail

struct Trainer::Impl {
  TrainConfig config;
  TrainHooks hooks;
  torch::Device device{torch::kCPU};

  detail::TaskModel model;  // of model.kind: module, loss, validation (task.h)
  detail::TaskData data;    // of data.kind: sampler, validation batches, unit (task.h)
  double last_val_accuracy = std::numeric_limits<double>::quiet_NaN();  // of the last evaluate()
  std::vector<at::Tensor> params;

  std::unique_ptr<CompositeOptimizer> optimizer;
  PSchedule p_schedule;
  int64_t step = 0;
  RunTotals totals;

  void sync() const {
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  }

  void all_reduce(at::Tensor& values) const {
    if (hooks.world_size > 1) {
      TORCH_CHECK(hooks.all_reduce_sum, "TrainHooks: world_size > 1 needs all_reduce_sum");
      hooks.all_reduce_sum(values);
    }
  }

  // The parts of Trainer::step() (trainer.cpp), in their order.
  // The scheduled lr and p of this step, set on the optimizer.
  void set_schedules(StepStats& s);
  // Forward and backward over this rank's rows; s.loss is the mean over all ranks.
  void forward_backward(StepStats& s);
  // The parameters with a gradient, after TrainHooks::after_backward and
  // clipping; s.grad_norm is the norm before clipping.
  std::vector<at::Tensor> reduce_and_clip(StepStats& s);
  // The optimizer step, timed; a divergence reason, or "" when it stepped.
  std::string optimizer_step(const std::vector<at::Tensor>& with_grad, StepStats& s);
  // Adds a counted step to the totals; the loss-factor divergence rule.
  void count_step(StepStats& s);

  // Validation batches of batch_size / grad_accum examples (before
  // train.eval_batches); an error naming the data if there is not one.
  int64_t validation_batches() const {
    const int64_t micro = config.train.batch_size / config.train.grad_accum;
    const int64_t n = data.num_val_batches(micro);
    TORCH_CHECK(n > 0, "the validation set ", data.val_name, " is too small for one batch of ", micro,
                " examples", data.example_note, " (data.val_limit = ", config.data.val_limit, ")");
    return n;
  }
};

}  // namespace specopt
