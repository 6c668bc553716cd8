// Internal interface between the parts of the spectral transform.
#pragma once

#include "specopt/core/spectral.h"

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>

namespace specopt {
namespace detail {

// 2·m·k·n (times the batch) for a (.., m, k) × (.., k, n) product.
double matmul_flops(const at::Tensor& a, const at::Tensor& b);
// at::matmul that adds its FLOPs to info->matmul_flops (info may be null).
at::Tensor counted_matmul(const at::Tensor& a, const at::Tensor& b, SpectralInfo* info);
// The input's rounding floor, the one threshold for tiny singular values
// (spectral.h, "Tiny singular values"): rank_tol if set, else
// √min(m, n)·ε(input dtype); σ ≤ floor·σ_max count as zero.
double rank_tolerance(const SpectralOptions& o, int64_t m, int64_t n, c10::ScalarType input_dtype);
// Unit roundoff ε of a floating dtype (bfloat16 2^-7, half 2^-10).
double unit_roundoff(c10::ScalarType dt);

// Kernels. Each receives a finite, tall (m ≥ n), non-empty batch `X` in the
// compute dtype whose largest |entry| is 1 or 0 (all-zero matrices), and returns Ψ_p(X).
// input_dtype: the dtype of O as given (sets the rank threshold).
at::Tensor svd_power(const at::Tensor& X, double p, const SpectralOptions& o,
                     c10::ScalarType input_dtype);
at::Tensor eigh_power(const at::Tensor& X, double p, const SpectralOptions& o, SpectralInfo* info,
                      c10::ScalarType input_dtype);
at::Tensor newton_power(const at::Tensor& X, double p, const SpectralOptions& o, SpectralInfo* info);
// newton for p < 0 (ε-regularised coupled inverse root, spectral_iterative.cpp);
// newton_power (spectral_newton.cpp) calls it for p < 0.
at::Tensor newton_negative_power(const at::Tensor& X, double p, const SpectralOptions& o,
                                 SpectralInfo* info);
at::Tensor newton_schulz_power(const at::Tensor& X, double p, const SpectralOptions& o,
                               SpectralInfo* info);
// paper at p ∈ {½, ¼} (other p: an error); X as for the kernels above, except
// that a wide X is not transposed (the scheme's own rule: W·X with the Gram XXᵀ).
at::Tensor paper_power(const at::Tensor& X, double p, SpectralInfo* info);
// paper at p = 0 follows its own rules: it receives O as given (finite, any
// orientation, its own dtype and scale; the dispatch has only rescaled a matrix
// whose largest |entry| lies outside [2^-40, 2^40]), computes in `compute` on
// the wide orientation and returns max(1, rows/cols)^½ Ψ_0(O) in O's dtype.
at::Tensor paper_polar(const at::Tensor& O, at::ScalarType compute, SpectralInfo* info);
// `paper` is not scale-invariant: the per-matrix scale s (largest |entry|,
// non-zero) becomes 1 unless it lies outside [2^-40, 2^40].
at::Tensor paper_rescale(const at::Tensor& s);

// (a, b, c) of step `step` (0-based) of the quintic X ← aX + bX(XᵀX) + cX(XᵀX)²
// for a coefficient set (Polar Express: cushioned, the last set repeats).
std::array<double, 3> ns_step_coefficients(NsCoefficients set, int64_t step);

// Shared pre/post-processing: method resolution, dtype, orientation,
// scaling; then calls the kernel.
at::Tensor dispatch(const at::Tensor& O, double p, const SpectralOptions& o, SpectralInfo* info);

}  // namespace detail
}  // namespace specopt
