// Trainer's state (Trainer::Impl), shared by trainer.cpp (building and
// stepping) and trainer_checkpoint.cpp (save/load). Private to the train layer.
#pragma once

#include "specopt/train/data.h"
#include "specopt/train/schedule.h"
#include "specopt/train/trainer.h"

#include <c10/util/Exception.h>
#include <torch/cuda.h>

#include <functional>
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

// (inputs, targets) → the mean loss of the batch.
using LossFn = std::function<at::Tensor(const at::Tensor&, const at::Tensor&)>;
}  // namespace detail

struct Trainer::Impl {
  TrainConfig config;
  TrainHooks hooks;
  torch::Device device{torch::kCPU};

  std::shared_ptr<torch::nn::Module> module;
  detail::LossFn loss_fn;
  std::vector<at::Tensor> params;

  // Exactly one of the two data kinds is set.
  std::unique_ptr<TokenBatchSampler> token_sampler;
  TokenDataset token_val;
  std::unique_ptr<ImageBatchSampler> image_sampler;
  ImageDataset image_val;
  int64_t items_per_example = 1;  // tokens per sequence, or 1 per image
  std::string unit;

  std::unique_ptr<SpectralOptimizer> optimizer;
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

  std::pair<at::Tensor, at::Tensor> next_train_batch() {
    return token_sampler ? token_sampler->next() : image_sampler->next();
  }

  // Validation batches of batch_size / grad_accum examples (before
  // train.eval_batches); an error naming the data if there is not one.
  int64_t validation_batches() const {
    const auto& c = config;
    const int64_t micro = c.train.batch_size / c.train.grad_accum;
    const int64_t n = token_sampler ? token_val.num_sequential_batches(micro, c.model.block_size)
                                    : image_val.num_batches(micro);
    TORCH_CHECK(n > 0, "the validation set ",
                token_sampler ? "'" + token_val.name() + "' (" + std::to_string(token_val.size()) + " tokens)"
                              : "of '" + (c.data.path.empty() ? std::string("fashion_mnist()") : c.data.path) + "'",
                " is too small for one batch of ", micro, " examples",
                token_sampler ? " of block_size " + std::to_string(c.model.block_size) + " tokens" : "",
                " (data.val_limit = ", c.data.val_limit, ")");
    return n;
  }
};

}  // namespace specopt
