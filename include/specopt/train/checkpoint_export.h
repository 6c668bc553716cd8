// A trainer checkpoint (checkpoint.h) as what PyTorch users load: the model's
// tensors by parameter name, and `specopt export CKPT OUT.pt`, a file that
// Python's torch.load reads as a plain state_dict (docs/training.md "Export").
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/ordered_dict.h>

#include <string>

namespace specopt {

// The model tensors stored in checkpoint `path` (read_checkpoint's checks
// first), keyed by their dotted nn::Module names ("transformer.h.0.attn.c_attn.weight"),
// in nn::Module::save's order: per module its parameters, then its buffers,
// then its children. Throws c10::Error naming the file if it holds no model.
torch::OrderedDict<std::string, at::Tensor> checkpoint_model_state(const std::string& path);

// The model state of checkpoint `checkpoint` written to `out` (atomically) in
// torch.save's zip format: a dict {name: tensor} that Python's torch.load reads,
// with weights_only=True too (the default from torch 2.6). For a GPT (model.kind = "gpt") the tied
// LM head is stored a second time as "lm_head.weight" (sharing the storage of
// "transformer.wte.weight"), so the keys are nanoGPT's (bias=False). Returns the
// number of entries written.
int64_t export_checkpoint(const std::string& checkpoint, const std::string& out);

}  // namespace specopt
