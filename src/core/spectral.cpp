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

std::string ascii_lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

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
  const std::string key = ascii_lower(name);
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
  const std::string key = ascii_lower(name);
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

namespace {

// s: per-matrix largest |entry| (NaN/Inf propagate into it).
void check_finite_input(const at::Tensor& s, const at::Tensor& O, const SpectralOptions& o) {
  if (o.check_finite()) {
    TORCH_CHECK(at::isfinite(s).all().item<bool>(), "spectral_power: input contains NaN or Inf (shape ",
                O.sizes(), ")");
  }
}

void check_finite_result(const at::Tensor& Y, Method method, double p, const at::Tensor& O) {
  TORCH_CHECK(at::isfinite(Y.abs().amax()).item<bool>(), "spectral_power: method '", method_name(method),
              "' produced a non-finite result (p = ", p, ", shape ", O.sizes(), ")");
}

Method resolve_auto(const at::Tensor& O) {
  // Measured (bench/bench_transform, docs/transform.md): on CPU the LAPACK
  // eigendecomposition of the Gram matrix beats every matmul iteration at
  // all benchmark shapes. On accelerators matmul iterations win (newton).
  return O.device().is_cpu() ? Method::kEigh : Method::kNewton;
}

// The arithmetic's dtype: as requested; else the input's (bf16/half → float32), except
//  * newton_schulz and paper p = 0 run in bfloat16 as Muon does;
//  * eigh runs in float64 when tol < 1e-3: the float32 Gram matrix cannot
//    resolve eigenvalues below ~1e-7 λ_max (measured float32 errors on
//    cond-1e3 inputs: 7e-4 at p = ½, 2e-2 at p = 0).
at::ScalarType compute_dtype_for(Method method, double p, at::ScalarType in_dtype,
                                 const SpectralOptions& o) {
  at::ScalarType compute = in_dtype == at::kDouble ? at::kDouble : at::kFloat;
  if (o.compute_dtype().has_value()) {
    compute = *o.compute_dtype();
  } else if (method == Method::kNewtonSchulz || (method == Method::kPaper && p == 0.0)) {
    compute = at::kBFloat16;
  } else if (method == Method::kEigh && o.tol() < 1e-3) {
    compute = at::kDouble;
  }
  TORCH_CHECK_VALUE(at::isFloatingType(compute),
              "spectral_power: compute_dtype must be a floating-point type, got ", compute);
  return compute;
}

// The published scheme's Ψ_0 has its own orientation (wide), normalisation (in
// O's dtype) and final shape scale, so it bypasses dispatch's tall path.
at::Tensor paper_polar_of(const at::Tensor& O, at::ScalarType compute, const SpectralOptions& o,
                          SpectralInfo* info) {
  at::Tensor s = O.abs().amax({-2, -1}, /*keepdim=*/true);
  check_finite_input(s, O, o);
  s = paper_rescale(at::where(s == 0, at::ones_like(s), s));  // Ψ_0(O/s) = Ψ_0(O) up to the 1e-7
  const bool rescale = (s != 1).any().item<bool>();
  const at::Tensor Y = paper_polar(rescale ? O / s : O, compute, info);
  check_finite_result(Y, Method::kPaper, 0.0, O);
  return Y;
}

at::Tensor run_kernel(Method method, const at::Tensor& X, double p, const SpectralOptions& o,
                      SpectralInfo* info, at::ScalarType in_dtype) {
  switch (method) {
    case Method::kSvd: return svd_power(X, p, o, in_dtype);
    case Method::kEigh: return eigh_power(X, p, o, info, in_dtype);
    case Method::kNewton: return newton_power(X, p, o, info);
    case Method::kNewtonSchulz: return newton_schulz_power(X, p, o, info);
    case Method::kPaper: return paper_power(X, p, info);
    case Method::kAuto: break;
  }
  TORCH_CHECK(false, "spectral_power: unresolved method auto");
}

// Zero rows / columns of O are zero rows / columns of Ψ_p(O) (they lie in the
// null spaces). newton keeps them exactly zero by construction; the exact
// methods' U f(Σ) Vᵀ products leave rounding there, so mask it (spectral.h,
// "Tiny singular values"). Two reductions of X, already read. `paper` is left
// as the published scheme computes it.
at::Tensor mask_null_rows_and_columns(at::Tensor Y, const at::Tensor& X, Method method) {
  if (method == Method::kNewton || method == Method::kPaper) return Y;
  const at::Tensor zero_rows = X.abs().amax(-1, /*keepdim=*/true) == 0;
  const at::Tensor zero_cols = X.abs().amax(-2, /*keepdim=*/true) == 0;
  if ((zero_rows.any() | zero_cols.any()).item<bool>()) Y = Y.masked_fill(zero_rows | zero_cols, 0);
  return Y;
}

}  // namespace

at::Tensor dispatch(const at::Tensor& O, double p, const SpectralOptions& o, SpectralInfo* info) {
  const Method method = o.method() == Method::kAuto ? resolve_auto(O) : o.method();
  info->method = method;
  const auto in_dtype = O.scalar_type();
  const at::ScalarType compute = compute_dtype_for(method, p, in_dtype, o);
  if (method == Method::kPaper && p == 0.0) return paper_polar_of(O, compute, o, info);
  // Work on the tall orientation so the Gram matrix is the smaller one
  // (paper_power follows the scheme's own rule for wide inputs).
  const bool wide = O.size(-2) < O.size(-1) && method != Method::kPaper;
  // Contiguous in the tall orientation: elementwise passes over a transposed
  // view are several times slower on CPU.
  at::Tensor X = (wide ? O.transpose(-2, -1) : O)
                     .to(compute, /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous);
  const bool fresh = !X.is_alias_of(O);  // X is a private copy (may be scaled in place)
  // Per-matrix largest |entry| (one cheap reduction, ~15x cheaper than
  // isfinite().all() on CPU). NaN propagates through amax and Inf is Inf, so
  // it doubles as the input check.
  at::Tensor s = X.abs().amax({-2, -1}, /*keepdim=*/true);
  check_finite_input(s, O, o);
  // Scale each matrix so its largest |entry| is 1: keeps the Gram matrix
  // finite for float32 inputs of magnitude 1e30 and normal for 1e-30.
  // Ψ_p(sX) = s^p Ψ_p(X) undoes it. `paper` keeps the input's own scale
  // (paper_rescale).
  const at::Tensor zero = s == 0;
  const bool any_zero = zero.any().item<bool>();
  s = at::where(zero, at::ones_like(s), s);
  if (method == Method::kPaper) s = paper_rescale(s);
  X = fresh ? X.div_(s) : X / s;
  at::Tensor Y = run_kernel(method, X, p, o, info, in_dtype);
  // Undo the scaling (with the p actually computed: newton may approximate
  // p); all-zero matrices give exact zeros whatever the kernel returned.
  Y = Y * s.to(Y.scalar_type()).pow(info->p_effective);
  if (any_zero) Y.masked_fill_(zero, 0);
  Y = mask_null_rows_and_columns(std::move(Y), X, method);
  check_finite_result(Y, method, p, O);
  if (wide) Y = Y.transpose(-2, -1);
  // One pass for dtype and layout together.
  return Y.to(in_dtype, /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous);
}

}  // namespace detail

at::Tensor spectral_power(const at::Tensor& O, double p, const SpectralOptions& options,
                          SpectralInfo* info) {
  TORCH_CHECK(O.defined(), "spectral_power: undefined tensor");
  TORCH_CHECK(O.dim() >= 2, "spectral_power: expected a matrix or a batch of matrices (..., m, n), got ",
              O.dim(), " dimension(s) with shape ", O.sizes());
  TORCH_CHECK_VALUE(p_in_range(p),
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
