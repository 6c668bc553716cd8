// Muon (see muon.h): torch.optim.Muon's arithmetic, lazy state and save/load.
#include "specopt/core/muon.h"

#include "core/optimizer_archive.h"
#include "specopt/core/update_rules.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/archive.h>

#include <algorithm>
#include <cmath>

namespace specopt {

using torch::optim::OptimizerOptions;
using torch::optim::OptimizerParamState;
using torch::serialize::InputArchive;
using torch::serialize::OutputArchive;
using namespace detail;

namespace {

const std::vector<std::pair<AdjustLr, const char*>>& adjust_lr_names() {
  static const std::vector<std::pair<AdjustLr, const char*>> names = {
      {AdjustLr::kOriginal, "original"},
      {AdjustLr::kMatchRmsAdamW, "match_rms_adamw"},
      {AdjustLr::kSpectralUnclamped, "spectral_unclamped"},
  };
  return names;
}

// The Ψ_p part of the options, in the archive layout of the other optimizers.
MatrixTransformOptions muon_transform(const MuonOptions& o) {
  return MatrixTransformOptions().p(o.p()).method(o.method()).scale(ScaleMode::kNone).spectral(o.spectral());
}

}  // namespace

std::string adjust_lr_name(AdjustLr fn) {
  for (const auto& [f, name] : adjust_lr_names())
    if (f == fn) return name;
  TORCH_CHECK(false, "adjust_lr_name: unknown AdjustLr value ", static_cast<int>(fn));
}

AdjustLr parse_adjust_lr(const std::string& name) {
  for (const auto& [f, n] : adjust_lr_names())
    if (name == n) return f;
  TORCH_CHECK(false, "Muon: unknown adjust_lr_fn '", name, "' (valid: original, match_rms_adamw, spectral_unclamped)");
}

double adjust_lr_ratio(AdjustLr fn, int64_t rows, int64_t cols) {
  const double m = static_cast<double>(rows), n = static_cast<double>(cols);
  switch (fn) {
    case AdjustLr::kOriginal: return std::sqrt(std::max(1.0, m / n));
    case AdjustLr::kMatchRmsAdamW: return 0.2 * std::sqrt(std::max(m, n));
    case AdjustLr::kSpectralUnclamped: return std::sqrt(m / n);
  }
  TORCH_CHECK(false, "adjust_lr_ratio: unknown AdjustLr value ", static_cast<int>(fn));
}

at::Tensor muon_newton_schulz(const at::Tensor& G, std::tuple<double, double, double> abc, int64_t steps,
                              double eps) {
  TORCH_CHECK(G.dim() == 2, "muon_newton_schulz: expected a 2-D matrix, got shape ", G.sizes());
  const auto [a, b, c] = abc;
  // torch: ortho_grad = grad.bfloat16() (a copy here for every input dtype).
  at::Tensor X = G.to(at::kBFloat16, /*non_blocking=*/false, /*copy=*/true);
  const bool tall = G.size(0) > G.size(1);
  if (tall) X = X.t();
  // torch: ortho_grad.div_(ortho_grad.norm().clamp(min=eps)); Tensor.norm() is
  // linalg.vector_norm(X, 2) there, in bfloat16.
  X.div_(at::linalg_vector_norm(X, 2).clamp(eps));
  for (int64_t i = 0; i < steps; ++i) {
    const at::Tensor A = at::matmul(X, X.t());
    const at::Tensor B = at::addmm(A, A, A, /*beta=*/b, /*alpha=*/c);
    X = at::addmm(X, B, X, /*beta=*/a);
  }
  return tall ? X.t() : X;
}

// ---- MuonOptions ------------------------------------------------------------

MuonOptions::MuonOptions(double lr) : lr_(lr) {}

bool MuonOptions::uses_muon_newton_schulz() const { return p() == 0.0 && method() == Method::kAuto; }

void MuonOptions::check() const {
  TORCH_CHECK(std::isfinite(lr()) && lr() >= 0, "Muon: invalid learning rate: ", lr());
  TORCH_CHECK(std::isfinite(weight_decay()) && weight_decay() >= 0, "Muon: invalid weight_decay value: ",
              weight_decay());
  TORCH_CHECK(momentum() >= 0 && momentum() <= 1.0, "Muon: invalid momentum (must lie in [0, 1]): ", momentum());
  const auto [a, b, c] = ns_coefficients();
  TORCH_CHECK(std::isfinite(a) && std::isfinite(b) && std::isfinite(c), "Muon: ns_coefficients must be finite, got (",
              a, ", ", b, ", ", c, ")");
  TORCH_CHECK(std::isfinite(eps()) && eps() > 0, "Muon: invalid eps (must be > 0): ", eps());
  // torch: "Number of steps must be less than 100".
  TORCH_CHECK(ns_steps() >= 1 && ns_steps() < 100, "Muon: ns_steps must lie in [1, 99], got ", ns_steps());
  check_transform_options(muon_transform(*this));
  TORCH_CHECK(!(p() == 0.0 && method() == Method::kPaper),
              "Muon: method 'paper' includes the study's own shape scale at p = 0; use auto (torch's "
              "Newton-Schulz) or newton_schulz");
}

void MuonOptions::serialize(OutputArchive& a) const {
  put(a, "lr", lr());
  put(a, "weight_decay", weight_decay());
  put(a, "momentum", momentum());
  put(a, "nesterov", nesterov());
  put(a, "ns_a", std::get<0>(ns_coefficients()));
  put(a, "ns_b", std::get<1>(ns_coefficients()));
  put(a, "ns_c", std::get<2>(ns_coefficients()));
  put(a, "eps", eps());
  put(a, "ns_steps", ns_steps());
  put(a, "adjust_lr_fn", adjust_lr_name(adjust_lr_fn()));
  write_transform(a, muon_transform(*this));
}

void MuonOptions::serialize(InputArchive& a) {
  lr(get(a, "lr").toDouble());
  weight_decay(get(a, "weight_decay").toDouble());
  momentum(get(a, "momentum").toDouble());
  nesterov(get(a, "nesterov").toBool());
  ns_coefficients(std::make_tuple(get(a, "ns_a").toDouble(), get(a, "ns_b").toDouble(), get(a, "ns_c").toDouble()));
  eps(get(a, "eps").toDouble());
  ns_steps(get(a, "ns_steps").toInt());
  adjust_lr_fn(parse_adjust_lr(get(a, "adjust_lr_fn").toStringRef()));
  const MatrixTransformOptions t = read_transform(a);
  p(t.p()).method(t.method()).spectral(t.spectral());
}

double MuonOptions::get_lr() const { return lr(); }
void MuonOptions::set_lr(const double lr) { this->lr(lr); }

void MuonParamState::serialize(OutputArchive& a) const { a.write("momentum_buffer", momentum_buffer()); }

void MuonParamState::serialize(InputArchive& a) {
  at::Tensor b;
  a.read("momentum_buffer", b);
  momentum_buffer(b);
}

// ---- the step ---------------------------------------------------------------

void muon_step(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
               std::vector<at::Tensor>& momentum_buffers, const MuonOptions& o) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == momentum_buffers.size(),
              "muon_step: all lists must have the same length (", params.size(), " params, ", grads.size(),
              " grads, ", momentum_buffers.size(), " buffers)");
  o.check();
  for (size_t i = 0; i < params.size(); ++i) {
    TORCH_CHECK(params[i].dim() == 2, "Muon only supports 2-D parameters, got shape ", params[i].sizes(),
                " (put embeddings, the head and vectors in an AdamW group: docs/muon.md)");
    TORCH_CHECK(grads[i].sizes() == params[i].sizes(), "muon_step: gradient of shape ", grads[i].sizes(),
                " for a parameter of shape ", params[i].sizes());
    TORCH_CHECK(!grads[i].is_sparse(), "Muon does not support sparse gradients");
  }
  at::NoGradGuard no_grad;
  // The momentum step and d for every parameter first (as torch, per tensor).
  std::vector<at::Tensor> updates(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor& buf = momentum_buffers[i];
    if (!buf.defined()) buf = at::zeros_like(grads[i], at::MemoryFormat::Preserve);
    buf.lerp_(grads[i], 1.0 - o.momentum());  // B ← μB + (1−μ)g
    updates[i] = o.nesterov() ? grads[i].lerp(buf, o.momentum()) : buf;
  }
  // O: torch's NS per matrix, or one batched Ψ_p per shape (transform_matrix_updates).
  std::vector<at::Tensor> O(params.size());
  if (o.uses_muon_newton_schulz()) {
    for (size_t i = 0; i < params.size(); ++i)
      O[i] = muon_newton_schulz(updates[i], o.ns_coefficients(), o.ns_steps(), o.eps());
  } else {
    O = transform_matrix_updates(updates, muon_transform(o));
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const double adjusted_lr = o.lr() * adjust_lr_ratio(o.adjust_lr_fn(), params[i].size(0), params[i].size(1));
    params[i].mul_(1.0 - o.lr() * o.weight_decay());  // decoupled, with the unadjusted lr (as torch)
    params[i].add_(O[i], -adjusted_lr);
  }
}

// ---- Muon -------------------------------------------------------------------

Muon::Muon(std::vector<torch::optim::OptimizerParamGroup> param_groups, MuonOptions defaults)
    : SpectralOptimizerBase(std::move(param_groups), std::make_unique<MuonOptions>(defaults)) {
  defaults.check();
  for (size_t g = 0; g < param_groups_.size(); ++g) check_param_group(g);
}

Muon::Muon(std::vector<at::Tensor> params, MuonOptions defaults)
    : Muon(std::vector<torch::optim::OptimizerParamGroup>{torch::optim::OptimizerParamGroup(std::move(params))},
           std::move(defaults)) {}

void Muon::check_param_group(size_t group) const {
  static_cast<const MuonOptions&>(param_groups_[group].options()).check();
  const auto& params = param_groups_[group].params();
  for (size_t i = 0; i < params.size(); ++i)
    TORCH_CHECK(params[i].dim() == 2, "Muon only supports 2-D parameters: ", parameter_name(group, i),
                " (put embeddings, the head and vectors in an AdamW group: docs/muon.md)");
}

std::unique_ptr<OptimizerOptions> Muon::make_options() const { return std::make_unique<MuonOptions>(); }
std::unique_ptr<OptimizerParamState> Muon::make_state() const { return std::make_unique<MuonParamState>(); }

void Muon::check_loaded_state(const OptimizerParamState& state, const at::Tensor& param,
                              const std::string& name) const {
  check_state_tensor(static_cast<const MuonParamState&>(state).momentum_buffer(), param, "momentum_buffer", name);
}

at::Tensor Muon::step(LossClosure closure) {
  at::Tensor loss;
  if (!begin_step(closure, loss)) return loss;  // on_nonfinite = skip_step

  for (auto& group : param_groups_) {
    const auto& o = static_cast<const MuonOptions&>(group.options());
    std::vector<at::Tensor> params, grads, buffers;
    std::vector<MuonParamState*> states;  // nullptr: first step of that parameter
    for (auto& w : group.params()) {
      if (!w.grad().defined()) continue;
      auto* found = static_cast<MuonParamState*>(find_state(w));
      params.push_back(w);
      grads.push_back(w.grad());
      buffers.push_back(found ? found->momentum_buffer() : at::Tensor());
      states.push_back(found);
    }
    if (params.empty()) continue;
    muon_step(params, grads, buffers, o);
    for (size_t i = 0; i < states.size(); ++i) {
      if (states[i]) continue;  // updated in place
      auto state = std::make_unique<MuonParamState>();
      state->momentum_buffer(buffers[i]);
      set_state(params[i], std::move(state));
    }
  }
  return loss;
}

}  // namespace specopt
