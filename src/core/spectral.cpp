// Ψ_p(O) = U Σ^p Vᵀ: method table, input handling and the exact methods.
// The iterative methods (newton, newton_schulz, paper) live in
// spectral_iterative.cpp.
#include "specopt/core/spectral.h"

#include "core/spectral_internal.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cctype>
#include <cmath>

namespace specopt {

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

struct MethodName {
  Method method;
  const char* name;
};
constexpr MethodName kMethodNames[] = {
    {Method::kAuto, "auto"},   {Method::kNewton, "newton"},
    {Method::kNewtonSchulz, "newton_schulz"}, {Method::kPaper, "paper"},
    {Method::kEigh, "eigh"},   {Method::kSvd, "svd"},
};

}  // namespace

const std::vector<Method>& all_methods() {
  static const std::vector<Method> methods = [] {
    std::vector<Method> v;
    for (const auto& m : kMethodNames) v.push_back(m.method);
    return v;
  }();
  return methods;
}

std::string method_name(Method m) {
  for (const auto& e : kMethodNames)
    if (e.method == m) return e.name;
  TORCH_CHECK(false, "unknown spectral method enum value ", static_cast<int>(m));
}

Method parse_method(const std::string& name) {
  const std::string key = lower(name);
  std::string valid;
  for (const auto& e : kMethodNames) {
    if (key == e.name) return e.method;
    valid += valid.empty() ? e.name : std::string(", ") + e.name;
  }
  TORCH_CHECK(false, "unknown spectral method '", name, "' (valid: ", valid, ")");
}

std::string ns_coefficients_name(NsCoefficients c) {
  switch (c) {
    case NsCoefficients::kMuon: return "muon";
    case NsCoefficients::kPolarExpress: return "polar_express";
  }
  TORCH_CHECK(false, "unknown Newton-Schulz coefficient set ", static_cast<int>(c));
}

NsCoefficients parse_ns_coefficients(const std::string& name) {
  const std::string key = lower(name);
  if (key == "muon") return NsCoefficients::kMuon;
  if (key == "polar_express") return NsCoefficients::kPolarExpress;
  TORCH_CHECK(false, "unknown Newton-Schulz coefficient set '", name,
              "' (valid: muon, polar_express)");
}

namespace detail {

double matmul_flops(const at::Tensor& a, const at::Tensor& b) {
  // a: (..., m, k), b: (..., k, n) -> 2·m·k·n per batch element.
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const int64_t batch = a.numel() / std::max<int64_t>(1, m * k);
  return 2.0 * static_cast<double>(batch) * m * k * n;
}

at::Tensor counted_matmul(const at::Tensor& a, const at::Tensor& b, SpectralInfo* info) {
  if (info) info->matmul_flops += matmul_flops(a, b);
  return at::matmul(a, b);
}

double unit_roundoff(c10::ScalarType dt) {
  switch (dt) {
    case at::kDouble: return 2.220446049250313e-16;
    case at::kFloat: return 1.1920928955078125e-07;
    case at::kHalf: return 9.765625e-04;
    default: return 7.8125e-03;  // bfloat16
  }
}

double rank_tolerance(const SpectralOptions& o, int64_t m, int64_t n, c10::ScalarType input_dtype) {
  if (o.rank_tol() > 0) return o.rank_tol();
  // ‖E‖₂ ≤ ‖E‖_F ≤ ε‖O‖_F ≤ ε √min(m, n) σ_max for the rounding error E (spectral.h).
  return std::sqrt(static_cast<double>(std::min(m, n))) * unit_roundoff(input_dtype);
}

// Ψ_p via the SVD: U diag(σ^p) Vᵀ with σ ≤ tol·σ_max → 0.
at::Tensor svd_power(const at::Tensor& O, double p, const SpectralOptions& o,
                     c10::ScalarType input_dtype) {
  auto [U, S, Vh] = at::linalg_svd(O, /*full_matrices=*/false);
  const double tol = rank_tolerance(o, O.size(-2), O.size(-1), input_dtype);
  auto smax = std::get<0>(S.max(-1, /*keepdim=*/true));
  auto keep = S > smax * tol;
  at::Tensor f;
  if (p < 0) {
    // σ (σ² + ε σ_max²)^{-(1-p)/2}: the regularised form of σ^p.
    const double r = (1.0 - p) / 2.0;
    f = S * (S * S + o.neg_eps() * smax * smax).pow(-r);
  } else {
    f = S.pow(p);
  }
  f = at::where(keep, f, at::zeros_like(f));
  return at::matmul(U * f.unsqueeze(-2), Vh);
}

// Ψ_p via eigh of the smaller Gram matrix: O V diag(λ^{-(1-p)/2}) Vᵀ, eq. (1).
// `O` must be tall (m ≥ n) here.
at::Tensor eigh_power(const at::Tensor& O, double p, const SpectralOptions& o,
                      SpectralInfo* info, c10::ScalarType input_dtype) {
  const auto A = counted_matmul(O.transpose(-2, -1), O, info);
  auto [lam, V] = at::linalg_eigh(A);
  lam = lam.clamp_min(0);
  const double tol = rank_tolerance(o, O.size(-2), O.size(-1), input_dtype);
  auto lmax = std::get<0>(lam.max(-1, /*keepdim=*/true));
  // λ = σ², so σ ≤ tol σ_max  <=>  λ ≤ tol² λ_max. Rounding in forming A in
  // the compute dtype limits what eigh can resolve to ~ε λ_max, so use the
  // larger threshold.
  const double lam_tol = std::max(tol * tol, unit_roundoff(O.scalar_type()));
  auto keep = lam > lmax * lam_tol;
  const double r = (1.0 - p) / 2.0;
  at::Tensor f = p < 0 ? (lam + o.neg_eps() * lmax).pow(-r) : lam.pow(-r);
  f = at::where(keep, f, at::zeros_like(f));
  // O (V diag(f) Vᵀ): n³ + m·n² multiply-adds instead of 2·m·n² for (O V) diag(f) Vᵀ.
  const auto M = counted_matmul(V * f.unsqueeze(-2), V.transpose(-2, -1), info);
  return counted_matmul(O, M, info);
}

}  // namespace detail

at::Tensor spectral_power(const at::Tensor& O, double p, const SpectralOptions& options,
                          SpectralInfo* info) {
  TORCH_CHECK(O.defined(), "spectral_power: undefined tensor");
  TORCH_CHECK(O.dim() >= 2, "spectral_power: expected a matrix or a batch of matrices (..., m, n), got ",
              O.dim(), " dimension(s) with shape ", O.sizes());
  TORCH_CHECK_VALUE(std::isfinite(p) && p >= -0.5 && p <= 1.0,
              "spectral_power: p must lie in [-0.5, 1], got ", p);
  TORCH_CHECK(at::isFloatingType(O.scalar_type()),
              "spectral_power: expected a floating-point tensor, got ", O.scalar_type());
  SpectralInfo local;
  SpectralInfo* out = info ? info : &local;
  *out = SpectralInfo{};
  out->method = options.method();
  out->p_effective = p;
  if (p == 1.0) return O;
  if (O.numel() == 0) return O.clone();
  // The NaN/Inf check (options.check_finite) runs inside dispatch, on the
  // per-matrix maxima it computes anyway.
  return detail::dispatch(O, p, options, out);
}

}  // namespace specopt
