// Multi-process data-parallel training on torch c10d, with the spectral step
// sharded across ranks (ZeRO-1 style, as the distributed Muon implementations
// do).
//
//  * Communicator: rendezvous through a c10d TCPStore (rank 0 hosts it) and a
//    Gloo process group on CPU (NCCL on CUDA when LibTorch was built with it).
//    Every collective has a timeout: a peer that dies or never arrives makes
//    the others throw a c10::Error naming the problem instead of hanging.
//  * GradientSynchronizer: averages gradients with bucketed all-reduce
//    (flatten into ~bucket_mb buckets, all-reduce, unflatten).
//  * plan_shards: assigns each parameter to one owner rank by the cost of
//    its spectral transform, s²·L (s = smaller, L = larger side of the
//    (dim0, rest) matrix; a vector counts as 1 × numel), greedy largest-first
//    onto the least-loaded rank; deterministic, so every rank computes the
//    same plan without communicating.
//  * ShardedStep: runs the optimizer step on this rank's share only and then
//    broadcasts every parameter from its owner, so all ranks hold the same
//    parameters. Optimizer state of a parameter lives only on its owner.
//    Checkpoints still hold the whole state: gather_full_state() collects it
//    on rank 0 before saving, and drop_unowned_state() trims a full state
//    loaded on any number of ranks.
//  * launch_local: the `specopt launch` / `train --nproc` launcher.
//
// Environment (the usual torch.distributed names): RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, plus SPECOPT_DIST_TIMEOUT (seconds) and
// GLOO_SOCKET_IFNAME (network interface Gloo binds to on multi-machine runs).
#pragma once

#include "specopt/train/trainer.h"

#include <torch/arg.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace specopt {
namespace dist {

struct DistOptions {
  TORCH_ARG(int64_t, rank) = 0;
  TORCH_ARG(int64_t, world_size) = 1;
  // Host of rank 0's TCPStore; loopback keeps everything on this machine.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int64_t, master_port) = 29500;
  // Rendezvous and per-collective timeout in seconds.
  TORCH_ARG(double, timeout_s) = 60.0;
  // "gloo" (CPU tensors), "nccl" (CUDA tensors; needs LibTorch with NCCL), or
  // "auto" = nccl when `device` is CUDA, gloo otherwise.
  TORCH_ARG(std::string, backend) = "auto";
  TORCH_ARG(std::string, device) = "cpu";
};

// `base` overridden by RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
// SPECOPT_DIST_TIMEOUT where set. Malformed values → c10::Error naming them.
DistOptions options_from_env(DistOptions base = {});
// True when WORLD_SIZE is set to more than 1 (we were started as a rank).
bool launched_as_rank();

class Communicator {
 public:
  // Rendezvous of world_size ranks. Throws c10::Error (naming address, port
  // and how many ranks arrived) if they are not all there within timeout_s.
  explicit Communicator(const DistOptions& options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int64_t rank() const { return options_.rank(); }
  int64_t world_size() const { return options_.world_size(); }
  bool is_main() const { return options_.rank() == 0; }
  const DistOptions& options() const { return options_; }
  std::string backend_name() const;

  // In place: tensors ← mean over ranks. Tensors are flattened into buckets
  // of at most bucket_bytes (a larger tensor goes alone); all buckets are
  // in flight together.
  void all_reduce_mean(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes);
  // In place: tensor ← sum over ranks (small tensors: metrics, counts).
  void all_reduce_sum(const at::Tensor& tensor);
  // In place: tensors ← root's tensors (flattened into one buffer per dtype).
  void broadcast(const std::vector<at::Tensor>& tensors, int64_t root);
  void barrier();
  // Every rank passes its bytes; rank `root` gets all ranks' bytes in rank
  // order, the others an empty vector.
  std::vector<std::string> gather_bytes(const std::string& mine, int64_t root = 0);

 private:
  struct Impl;
  DistOptions options_;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------- planning

// s²·L of the (dim0, numel/dim0) matrix — the order of the flops of an SVD or
// of a Newton–Schulz iteration on it. Vectors and scalars: numel.
double spectral_cost(at::IntArrayRef shape);

struct ShardPlan {
  int64_t world_size = 1;
  std::vector<int64_t> owner;  // per parameter
  std::vector<double> load;    // per rank: sum of spectral_cost of its share
  std::vector<size_t> owned_by(int64_t rank) const;
};

// Greedy: parameters by decreasing cost (ties: lower index first) each onto
// the rank with the least load so far (ties: lower rank). Deterministic.
ShardPlan plan_shards(const std::vector<std::vector<int64_t>>& shapes, int64_t world_size);

// ---------------------------------------------------------------- training

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
std::vector<std::pair<std::string, at::Tensor>> named_parameters_of(SpectralOptimizer& optimizer);

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

// ---------------------------------------------------------------- launcher

struct LaunchOptions {
  TORCH_ARG(int64_t, nproc) = 2;            // ranks on this machine
  TORCH_ARG(int64_t, nnodes) = 1;           // machines
  TORCH_ARG(int64_t, node_rank) = 0;        // this machine's index
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int64_t, master_port) = 0;      // 0: a free port (single machine only)
  TORCH_ARG(double, timeout_s) = 60.0;      // SPECOPT_DIST_TIMEOUT of the ranks
  TORCH_ARG(int64_t, threads_per_rank) = 0; // 0: cores / nproc (at least 1)
  // Seconds the remaining ranks get after SIGTERM before SIGKILL.
  TORCH_ARG(double, kill_grace_s) = 5.0;
  // Forward SIGINT / SIGTERM to the ranks while waiting (the ranks then run in
  // their own process group): the first lets every rank checkpoint and exit
  // kExitInterrupted, which launch_local returns; a second ends them and the
  // launcher at once. Set by the CLI; off in the library (the caller's handlers stay).
  TORCH_ARG(bool, handle_signals) = false;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
// released): for single-machine rendezvous.
int64_t free_loopback_port();

// Starts nproc copies of this executable (/proc/self/exe) with `args` and
// the rank environment, waits for them, and returns 0 if all succeed. When
// one fails the others are terminated and its exit status is returned
// (128 + signal for a killed rank).
int launch_local(const std::vector<std::string>& args, const LaunchOptions& options);

// This process's arguments (from /proc/self/cmdline, without argv[0]) minus
// `option` and its value ("--opt V" or "--opt=V"): how `train --nproc N`
// restarts itself as N ranks.
std::vector<std::string> own_arguments_without(const std::string& option);

}  // namespace dist
}  // namespace specopt
