// Internal interface between the parts of the spectral transform.
#pragma once

#include "specopt/spectral.h"

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
// rows/cols: O's shape as given (before transposition), for the study's
// p = 0 shape scale.
at::Tensor paper_power(const at::Tensor& X, double p, const SpectralOptions& o, SpectralInfo* info,
                       int64_t rows, int64_t cols);

// (a, b, c) of step `step` (0-based) of the quintic X ← aX + bX(XᵀX) + cX(XᵀX)²
// for a coefficient set (Polar Express: cushioned, the last set repeats).
std::array<double, 3> ns_step_coefficients(NsCoefficients set, int64_t step);

// Shared pre/post-processing: method resolution, dtype, orientation,
// scaling; then calls the kernel.
at::Tensor dispatch(const at::Tensor& O, double p, const SpectralOptions& o, SpectralInfo* info);

}  // namespace detail
}  // namespace specopt
