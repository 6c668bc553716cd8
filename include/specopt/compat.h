// The few places where LibTorch 1.x and 2.x differ, isolated here.
//
//  * torch::optim::Optimizer::state_ is keyed by std::string (the TensorImpl
//    address printed) in 1.x and by void* (the TensorImpl address) in 2.x.
//  * Optimizer::zero_grad() zeroes gradients in 1.x; 2.x takes set_to_none
//    (default true).
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/version.h>

#include <string>

namespace specopt {
namespace compat {

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

}  // namespace compat
}  // namespace specopt
