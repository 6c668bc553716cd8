// Ψ_p by iterations of matrix products: newton, newton_schulz, paper;
// plus the shared dispatch (orientation, scaling, dtype).
#include "spectral_internal.h"

#include <ATen/ATen.h>

#include <cmath>

namespace specopt {
namespace detail {

namespace {

Method resolve_auto(const at::Tensor& O, double p, const SpectralOptions& o) {
  // TODO(issue 2): measured choice. CPU: eigh; GPU: newton.
  return O.is_cuda() ? Method::kNewton : Method::kEigh;
}

}  // namespace

at::Tensor newton_power(const at::Tensor&, double, const SpectralOptions&, SpectralInfo*) {
  TORCH_CHECK(false, "spectral_power: method 'newton' is not implemented yet");
}
at::Tensor newton_schulz_power(const at::Tensor&, double, const SpectralOptions&, SpectralInfo*) {
  TORCH_CHECK(false, "spectral_power: method 'newton_schulz' is not implemented yet");
}
at::Tensor paper_power(const at::Tensor&, double, const SpectralOptions&, SpectralInfo*) {
  TORCH_CHECK(false, "spectral_power: method 'paper' is not implemented yet");
}

at::Tensor dispatch(const at::Tensor& O, double p, const SpectralOptions& o, SpectralInfo* info) {
  Method method = o.method() == Method::kAuto ? resolve_auto(O, p, o) : o.method();
  info->method = method;
  const auto in_dtype = O.scalar_type();
  const auto compute = o.compute_dtype().has_value()
                           ? *o.compute_dtype()
                           : (in_dtype == at::kDouble ? at::kDouble : at::kFloat);
  // Work on the tall orientation so the Gram matrix is the smaller one.
  const bool wide = O.size(-2) < O.size(-1);
  at::Tensor X = (wide ? O.transpose(-2, -1) : O).to(compute);
  // Scale each matrix so its largest |entry| is 1: keeps the Gram matrix
  // finite for float32 inputs of magnitude 1e30 and normal for 1e-30.
  // Ψ_p(sX) = s^p Ψ_p(X) undoes it.
  at::Tensor s = X.abs().amax({-2, -1}, /*keepdim=*/true);
  const at::Tensor zero = s == 0;
  X = X / at::where(zero, at::ones_like(s), s);
  at::Tensor Y;
  switch (method) {
    case Method::kSvd: Y = svd_power(X, p, o); break;
    case Method::kEigh: Y = eigh_power(X, p, o, info); break;
    case Method::kNewton: Y = newton_power(X, p, o, info); break;
    case Method::kNewtonSchulz: Y = newton_schulz_power(X, p, o, info); break;
    case Method::kPaper: Y = paper_power(X, p, o, info); break;
    case Method::kAuto: TORCH_CHECK(false, "spectral_power: unresolved method auto");
  }
  // Exact zeros for all-zero matrices; rescale the rest.
  Y = at::where(zero, at::zeros_like(Y), Y * at::where(zero, at::ones_like(s), s).pow(p));
  TORCH_CHECK(at::isfinite(Y).all().item<bool>(),
              "spectral_power: method '", method_name(method),
              "' produced a non-finite result (p = ", p, ", shape ", O.sizes(), ")");
  if (wide) Y = Y.transpose(-2, -1);
  return Y.to(in_dtype).contiguous();
}

}  // namespace detail
}  // namespace specopt
