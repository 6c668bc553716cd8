// The communicator of data-parallel training: rendezvous through a c10d
// TCPStore (rank 0 hosts it) and a Gloo process group on CPU (NCCL on CUDA
// when LibTorch was built with it). Every collective has a timeout: a peer that
// dies or never arrives makes the others throw a c10::Error naming the problem
// instead of hanging. Environment (the usual torch.distributed names): RANK,
// WORLD_SIZE, MASTER_ADDR, MASTER_PORT, plus SPECOPT_DIST_TIMEOUT (seconds)
// and GLOO_SOCKET_IFNAME (network interface Gloo binds to on multi-machine runs).
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <string>
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

}  // namespace dist
}  // namespace specopt
