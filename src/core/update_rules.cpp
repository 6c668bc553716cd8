// Layer 2: the update rules of the Adam and mSGD families (see update_rules.h).
#include "specopt/core/update_rules.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <map>
#include <sstream>
#include <tuple>

namespace specopt {

namespace {

const std::vector<std::pair<ScaleMode, const char*>>& scale_mode_names() {
  static const std::vector<std::pair<ScaleMode, const char*>> names = {
      {ScaleMode::kAuto, "auto"},
      {ScaleMode::kNone, "none"},
      {ScaleMode::kShape, "shape"},
      {ScaleMode::kRmsMatch, "rms"},
  };
  return names;
}

// The matrix Ψ_p sees for an update: (dim0, rest), split into `blocks` row
// blocks of shape (dim0/blocks, rest).
struct BlockShape {
  int64_t blocks, rows, cols;
};

BlockShape block_shape(const at::Tensor& u, int64_t row_blocks) {
  TORCH_CHECK(u.dim() >= 2, "transform_matrix_updates: expected a tensor with at least 2 dimensions, got shape ",
              u.sizes());
  const int64_t dim0 = u.size(0);
  TORCH_CHECK(dim0 % row_blocks == 0, "transform_matrix_updates: row_blocks = ", row_blocks,
              " does not divide the ", dim0, " rows of a tensor of shape ", u.sizes());
  const int64_t cols = dim0 == 0 ? 0 : u.numel() / dim0;
  return {row_blocks, dim0 / row_blocks, cols};
}

// Ψ_p's equal-shape batches: one per (rows, cols, dtype, device).
using BatchKey = std::tuple<int64_t, int64_t, int, std::string>;

}  // namespace

std::string scale_mode_name(ScaleMode mode) {
  for (const auto& [m, name] : scale_mode_names())
    if (m == mode) return name;
  TORCH_CHECK(false, "scale_mode_name: unknown ScaleMode value ", static_cast<int>(mode));
}

ScaleMode parse_scale_mode(const std::string& name) {
  const std::string key = ascii_lower(name);
  for (const auto& [m, n] : scale_mode_names())
    if (key == n) return m;
  TORCH_CHECK(false, "unknown scale mode '", name, "' (valid: auto, none, shape, rms)");
}

double scale_factor(ScaleMode mode, double p, int64_t rows, int64_t cols, Method method_used) {
  const double shape = cols > 0 ? std::sqrt(std::max(1.0, static_cast<double>(rows) / cols)) : 1.0;
  if (mode == ScaleMode::kAuto) mode = p == 0.0 ? ScaleMode::kShape : ScaleMode::kNone;
  double target = 1.0;
  switch (mode) {
    case ScaleMode::kNone: target = 1.0; break;
    case ScaleMode::kShape: target = shape; break;
    case ScaleMode::kRmsMatch: target = 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols))); break;
    case ScaleMode::kAuto: break;  // resolved above
  }
  // The study's `paper` scheme returns max(1, rows/cols)^½ Ψ_0 already.
  const double built_in = (method_used == Method::kPaper && p == 0.0) ? shape : 1.0;
  return target / built_in;
}

void check_transform_options(const MatrixTransformOptions& o) {
  TORCH_CHECK(p_in_range(o.p()),
              "spectral optimizer: p must lie in [-0.5, 1], got ", o.p());
  TORCH_CHECK(o.row_blocks() >= 1, "spectral optimizer: row_blocks must be >= 1, got ", o.row_blocks());
}

namespace {
thread_local double t_transform_seconds = 0.0;
}  // namespace

double transform_seconds() { return t_transform_seconds; }

std::vector<at::Tensor> transform_matrix_updates(const std::vector<at::Tensor>& updates,
                                                 const MatrixTransformOptions& options) {
  check_transform_options(options);
  const double p = options.p();
  std::vector<BlockShape> shapes;
  shapes.reserve(updates.size());
  for (const auto& u : updates) {
    TORCH_CHECK(u.defined(), "transform_matrix_updates: undefined tensor");
    shapes.push_back(block_shape(u, options.row_blocks()));
  }
  std::vector<at::Tensor> out(updates.size());

  if (p == 1.0) {  // Ψ_1 = identity: only the scale, no copies when it is 1
    for (size_t i = 0; i < updates.size(); ++i) {
      const double s = scale_factor(options.scale(), p, shapes[i].rows, shapes[i].cols, options.method());
      out[i] = s == 1.0 ? updates[i] : updates[i] * s;
    }
    return out;
  }

  // Group the updates whose blocks share a shape, then one spectral_power per group.
  std::map<BatchKey, std::vector<size_t>> batches;
  for (size_t i = 0; i < updates.size(); ++i) {
    if (updates[i].numel() == 0) {
      out[i] = updates[i].clone();
      continue;
    }
    batches[BatchKey{shapes[i].rows, shapes[i].cols, static_cast<int>(updates[i].scalar_type()),
                     updates[i].device().str()}]
        .push_back(i);
  }
  SpectralOptions spectral = options.spectral();
  spectral.method(options.method());
  for (const auto& [key, members] : batches) {
    const int64_t rows = std::get<0>(key), cols = std::get<1>(key);
    std::vector<at::Tensor> blocks;
    blocks.reserve(members.size());
    for (size_t i : members) blocks.push_back(updates[i].reshape({shapes[i].blocks, rows, cols}));
    const at::Tensor X = blocks.size() == 1 ? blocks[0] : at::cat(blocks, 0);
    SpectralInfo info;
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor Y = spectral_power(X, p, spectral, &info);
    t_transform_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double s = scale_factor(options.scale(), p, rows, cols, info.method);
    if (s != 1.0) Y = Y * s;
    int64_t offset = 0;
    for (size_t i : members) {
      out[i] = Y.narrow(0, offset, shapes[i].blocks).reshape(updates[i].sizes());
      offset += shapes[i].blocks;
    }
  }
  return out;
}

void check_finite_grads(const std::vector<at::Tensor>& grads, const std::vector<std::string>& names) {
  TORCH_CHECK(names.empty() || names.size() == grads.size(), "check_finite_grads: ", grads.size(),
              " gradients but ", names.size(), " names");
  const auto name_of = [&](size_t i) { return names.empty() ? "gradient " + std::to_string(i) : names[i]; };
  // A finite sum implies finite entries (NaN and ±Inf propagate through a sum),
  // so one reduction per gradient and one host sync cover the common case; a
  // non-finite sum (a NaN/Inf, or a float overflow of huge finite values) is
  // then checked entry by entry.
  std::vector<at::Tensor> sums;
  std::vector<size_t> index;
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!grads[i].defined() || grads[i].numel() == 0) continue;
    TORCH_CHECK(!grads[i].is_sparse(), "spectral optimizers do not support sparse gradients (", name_of(i), ")");
    sums.push_back(grads[i].sum());
    index.push_back(i);
  }
  if (sums.empty()) return;
  const at::Tensor finite = at::isfinite(at::stack(sums)).to(at::kCPU);
  const bool* finite_data = finite.data_ptr<bool>();
  for (size_t k = 0; k < index.size(); ++k) {
    if (finite_data[k]) continue;
    const auto& g = grads[index[k]];
    const int64_t nans = at::isnan(g).sum().item<int64_t>();
    const int64_t infs = at::isinf(g).sum().item<int64_t>();
    if (nans == 0 && infs == 0) continue;  // finite entries whose sum overflowed
    TORCH_CHECK(false, "non-finite gradient for ", name_of(index[k]), " (shape ", g.sizes(), "): ", nans,
                " NaN and ", infs, " Inf of ", g.numel(), " entries; no parameter or optimizer state was changed");
  }
}

namespace {

void check_lists(const char* what, size_t n, std::initializer_list<size_t> sizes) {
  for (size_t s : sizes)
    TORCH_CHECK(s == n, what, ": all lists must have the same length (", n, " params, got a list of ", s, ")");
}

// Validate what the transform would reject, before any state changes.
void check_matrix_shapes(const char* what, const std::vector<at::Tensor>& params,
                         const MatrixTransformOptions& transform) {
  check_transform_options(transform);
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& w = params[i];
    if (w.dim() < 2) continue;
    TORCH_CHECK(w.size(0) % transform.row_blocks() == 0, what, ": row_blocks = ", transform.row_blocks(),
                " does not divide the ", w.size(0), " rows of parameter ", i, " (shape ", w.sizes(), ")");
  }
}

// W ← W(1 − lr·wd) − lr·Ψ(update) for the matrices gathered during a step.
void apply_matrix_updates(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& updates,
                          double lr, double weight_decay, const MatrixTransformOptions& transform) {
  const auto transformed = transform_matrix_updates(updates, transform);
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor w = params[i];
    if (weight_decay != 0.0) w.mul_(1.0 - lr * weight_decay);
    w.add_(transformed[i], -lr);
  }
}

bool transform_is_identity(const MatrixTransformOptions& t) {
  // Ψ_1 with a unit scale for every shape: scale none, or auto (unit at p = 1).
  return t.p() == 1.0 && (t.scale() == ScaleMode::kNone || t.scale() == ScaleMode::kAuto);
}

}  // namespace

void spectral_adamw_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                         std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
                         const std::vector<int64_t>& steps, double lr, double beta1, double beta2,
                         double eps, double weight_decay, const MatrixTransformOptions& transform,
                         bool decay_vectors) {
  const char* what = "spectral_adamw_step";
  check_lists(what, params.size(), {grads.size(), exp_avgs.size(), exp_avg_sqs.size(), steps.size()});
  check_matrix_shapes(what, params, transform);
  at::NoGradGuard no_grad;
  const bool identity = transform_is_identity(transform);
  std::vector<at::Tensor> matrices, updates;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor w = params[i], m = exp_avgs[i], v = exp_avg_sqs[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(steps[i] >= 1, what, ": step counts start at 1 (after the increment), got ", steps[i],
                " for parameter ", i);
    m.mul_(beta1).add_(g, 1.0 - beta1);
    v.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
    const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(steps[i]));
    const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(steps[i]));
    // √v̂ + ε, with ε after the square root (torch AdamW's arithmetic).
    const at::Tensor denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(eps);
    if (w.dim() < 2 || identity) {
      // Plain AdamW: W ← W(1 − lr·wd) − (lr/(1−β₁ᵗ))·m/denom.
      const double wd = (w.dim() >= 2 || decay_vectors) ? weight_decay : 0.0;
      if (wd != 0.0) w.mul_(1.0 - lr * wd);
      w.addcdiv_(m, denom, -lr / bias_correction1);
    } else {
      matrices.push_back(w);
      updates.push_back((m / bias_correction1).div_(denom));  // u = m̂/(√v̂ + ε)
    }
  }
  if (!matrices.empty()) apply_matrix_updates(matrices, updates, lr, weight_decay, transform);
}

void spectral_sgd_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                       std::vector<at::Tensor>& momentum_buffers, double lr, double momentum,
                       bool nesterov, double weight_decay, const MatrixTransformOptions& transform,
                       bool decay_vectors) {
  const char* what = "spectral_sgd_step";
  check_lists(what, params.size(), {grads.size(), momentum_buffers.size()});
  check_matrix_shapes(what, params, transform);
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> matrices, updates;
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor w = params[i];
    const at::Tensor& g = grads[i];
    at::Tensor& b = momentum_buffers[i];
    if (!b.defined()) {
      b = g.detach().clone(at::MemoryFormat::Preserve);  // b₁ = g
    } else {
      b.mul_(momentum).add_(g);  // b ← μb + g
    }
    const at::Tensor d = nesterov ? g.add(b, momentum) : b;
    if (w.dim() < 2) {
      if (decay_vectors && weight_decay != 0.0) w.mul_(1.0 - lr * weight_decay);
      w.add_(d, -lr);
    } else {
      matrices.push_back(w);
      updates.push_back(d);
    }
  }
  if (!matrices.empty()) apply_matrix_updates(matrices, updates, lr, weight_decay, transform);
}

}  // namespace specopt
