// Layer 2 of specopt: the update rules of the two optimizer families as
// stateless functions over lists of tensors. The C++ optimizer classes
// (spectral_adamw.h, spectral_sgd.h) and the Python bindings both call these,
// so every front end runs the same arithmetic.
//
// Conventions (those of the study, arXiv 2602.04669):
//
//   Adam family  m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,
//                m̂ = m/(1−β₁ᵗ),  v̂ = v/(1−β₂ᵗ),  u = m̂/(√v̂ + ε)   (ε after the sqrt)
//   mSGD family  b₁ = g,  b ← μb + g  (no dampening, no bias correction);
//                d = b, or d = g + μb with Nesterov
//
//   matrices (dim ≥ 2):  W ← W(1 − lr·wd) − lr·s·Ψ_p(u or d)
//   vectors  (dim < 2):  W ← W(1 − lr·wd') − lr·(u or d)       wd' = wd if decay_vectors else 0
//
// where Ψ_p(O) = U Σ^p Vᵀ (spectral.h) and s is the scale factor of the
// ScaleMode. Tensors with more than two dimensions are viewed as
// (dim0, rest) matrices for Ψ_p.
#pragma once

#include "specopt/core/spectral.h"

#include <ATen/core/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

// The factor s applied to Ψ_p(O) of an m×n matrix (m, n of the row block, see
// MatrixTransformOptions::row_blocks). The mode describes the final update,
// whatever the method: method `paper` at p = 0 already contains the shape
// factor, which is divided out again where the mode asks for another one.
enum class ScaleMode {
  kAuto,      // "auto": the study's convention: kShape when p == 0, kNone otherwise
  kNone,      // "none": s = 1
  kShape,     // "shape": s = max(1, m/n)^½ (Muon / the study at p = 0)
  kRmsMatch,  // "rms": s = 0.2·√max(m, n) (Moonlight: matches AdamW's update RMS)
};
std::string scale_mode_name(ScaleMode mode);
// Case-insensitive; throws c10::Error naming the bad string and the valid names.
ScaleMode parse_scale_mode(const std::string& name);
// s for an m×n block (after any row-block split), with `p` and the method
// that actually ran (so `paper`'s built-in factor at p = 0 is accounted for).
double scale_factor(ScaleMode mode, double p, int64_t rows, int64_t cols, Method method_used);

// How Ψ_p is applied to one parameter group's matrix updates.
struct MatrixTransformOptions {
  TORCH_ARG(double, p) = 1.0;
  TORCH_ARG(Method, method) = Method::kAuto;
  TORCH_ARG(ScaleMode, scale) = ScaleMode::kAuto;
  // Split dim 0 into this many equal row blocks and transform each on its own
  // (packed QKV of shape 3d×d: 3). Must divide dim 0 of every matrix.
  TORCH_ARG(int64_t, row_blocks) = 1;
  // Everything else about Ψ_p (tolerances, iterations, ...). Its `method`
  // field is ignored: `method` above wins.
  TORCH_ARG(SpectralOptions, spectral) = {};
};

// Throws c10::Error naming the bad value (p outside [-0.5, 1], row_blocks < 1).
void check_transform_options(const MatrixTransformOptions& options);

// s·Ψ_p of each update (dim ≥ 2), with the row-block split and >2-D tensors
// viewed as (dim0, rest). Updates whose (block) matrices share shape, dtype and
// device go through ONE batched spectral_power call. Returns new tensors of the
// input shapes (for p = 1 and s = 1 the inputs themselves).
std::vector<at::Tensor> transform_matrix_updates(const std::vector<at::Tensor>& updates,
                                                 const MatrixTransformOptions& options);

// Wall time (seconds) this thread has spent inside spectral_power calls made
// by transform_matrix_updates, accumulated since the thread started. Callers
// take differences around a step (the trainer reports the transform's share
// of step time this way). On asynchronous devices (CUDA) this is host time
// unless the caller synchronises around the step.
double transform_seconds();

// Throws c10::Error naming `names[i]` (and its shape) if grads[i] holds NaN or
// Inf. Undefined gradients are skipped. One reduction per gradient and a single
// device→host sync. Call it before any state change.
void check_finite_grads(const std::vector<at::Tensor>& grads, const std::vector<std::string>& names);

// Adam family, in place on params, exp_avgs and exp_avg_sqs. `steps[i]` is the
// step count of param i AFTER its increment (1 on the first step). Matrices
// (dim ≥ 2) go through transform_matrix_updates; vectors take the plain AdamW
// step. With transform.p == 1 and scale none this is exactly torch AdamW's
// arithmetic. Does not check gradients (see check_finite_grads).
void spectral_adamw_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                         std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
                         const std::vector<int64_t>& steps, double lr, double beta1, double beta2,
                         double eps, double weight_decay, const MatrixTransformOptions& transform,
                         bool decay_vectors = false);

// mSGD family, in place on params and momentum_buffers. An undefined buffer
// is created as a copy of the gradient (b₁ = g) and written back into
// `momentum_buffers`. Matrices go through transform_matrix_updates; vectors
// take the plain momentum-SGD step. Does not check gradients.
void spectral_sgd_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                       std::vector<at::Tensor>& momentum_buffers, double lr, double momentum,
                       bool nesterov, double weight_decay, const MatrixTransformOptions& transform,
                       bool decay_vectors = false);

}  // namespace specopt
