// The places where LibTorch 1.x and 2.x differ, isolated here. Tested on
// Debian 12's LibTorch 1.13 and Debian sid's 2.14 (scripts/test.sh, both legs).
//
//  * torch::optim::Optimizer::state_ is keyed by std::string (the TensorImpl
//    address printed) in 1.x and by void* (the TensorImpl address) in 2.x.
//  * Optimizer::zero_grad() zeroes gradients in 1.x; 2.x takes set_to_none
//    (default true).
//  * Param-group options: 1.x keeps a group's own options; 2.14's
//    Optimizer::add_param_group keeps them only for LibTorch's own option types
//    (it merges the fields that differ from the constructor defaults) and
//    silently replaces any other type's by a copy of the optimizer defaults.
//    keep_group_options() restores the 1.x meaning.
//  * c10d's collectives are called on the ProcessGroup in 1.x, on its
//    per-device Backend (ProcessGroupGloo/NCCL derive from it) in 2.x, with
//    the same signatures: CollectiveBackend.
//  * c10d::TCPStoreOptions gained useLibUV in 2.x (default true); a LibTorch
//    built without libuv (Debian sid's 2.14) then throws at construction.
//  * Headers: torch/linalg.h is gone in 2.14; at::linalg_* (ATen/ATen.h) exist
//    on every version, so specopt uses only those. 2.14's headers need C++20:
//    CMakeLists.txt takes the standard from the found LibTorch.
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/version.h>

#include <string>
#include <type_traits>
#include <vector>

namespace c10d {
class Backend;
class ProcessGroup;
}  // namespace c10d

namespace specopt {
namespace compat {

#if TORCH_VERSION_MAJOR >= 2
using CollectiveBackend = c10d::Backend;
#else
using CollectiveBackend = c10d::ProcessGroup;
#endif

#if TORCH_VERSION_MAJOR >= 2
using StateKey = void*;
inline StateKey state_key(const at::Tensor& param) {
  return param.unsafeGetTensorImpl();
}
#else
using StateKey = std::string;
inline StateKey state_key(const at::Tensor& param) {
  return c10::guts::to_string(param.unsafeGetTensorImpl());
}
#endif

// Clear the gradients of every parameter of `opt`. With set_to_none the
// gradient tensors are released (PyTorch 2 semantics) on every version.
inline void zero_grad(torch::optim::Optimizer& opt, bool set_to_none = true) {
  for (auto& group : opt.param_groups()) {
    for (auto& p : group.params()) {
      if (!p.mutable_grad().defined()) continue;
      if (set_to_none) {
        p.mutable_grad().reset();
      } else {
        p.mutable_grad().detach_();
        p.mutable_grad().zero_();
      }
    }
  }
}

// After Optimizer's constructor ran add_param_group on `given`: every group of
// `added` that came with options of its own gets a copy of exactly those (a
// group without options keeps the defaults), as on LibTorch 1.x.
inline void keep_group_options(std::vector<torch::optim::OptimizerParamGroup>& added,
                               const std::vector<torch::optim::OptimizerParamGroup>& given) {
  TORCH_CHECK(added.size() == given.size(), "keep_group_options: ", added.size(), " groups added, ",
              given.size(), " given");
  for (size_t g = 0; g < given.size(); ++g)
    if (given[g].has_options()) added[g].set_options(given[g].options().clone());
}

template <typename T, typename = void>
struct has_use_libuv : std::false_type {};
template <typename T>
struct has_use_libuv<T, std::void_t<decltype(std::declval<T&>().useLibUV)>> : std::true_type {};

// The classic socket TCPStore server on every build: it exists in 1.x and 2.x
// and needs no libuv; specopt's stores serve a few ranks, where libuv's server
// (built for thousands of clients) brings nothing. A template so this header
// does not pull in TCPStore.hpp.
template <typename TCPStoreOptions>
void portable_store_backend(TCPStoreOptions& options) {
  if constexpr (has_use_libuv<TCPStoreOptions>::value) options.useLibUV = false;
}

}  // namespace compat
}  // namespace specopt
