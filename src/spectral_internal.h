// Internal interface between the parts of the spectral transform.
#pragma once

#include "specopt/spectral.h"

#include <ATen/core/Tensor.h>

namespace specopt {
namespace detail {

// 2·m·k·n (times the batch) for a (.., m, k) × (.., k, n) product.
double matmul_flops(const at::Tensor& a, const at::Tensor& b);
// at::matmul that adds its FLOPs to info->matmul_flops (info may be null).
at::Tensor counted_matmul(const at::Tensor& a, const at::Tensor& b, SpectralInfo* info);
// Relative threshold below which a singular value counts as zero.
double rank_tolerance(const SpectralOptions& o, int64_t m, int64_t n, c10::ScalarType dt);

// Kernels. Each receives a finite, tall (m ≥ n), non-empty batch `X` in the
// compute dtype whose largest |entry| is 1 or 0 (all-zero matrices), and returns Ψ_p(X).
at::Tensor svd_power(const at::Tensor& X, double p, const SpectralOptions& o);
at::Tensor eigh_power(const at::Tensor& X, double p, const SpectralOptions& o, SpectralInfo* info);
at::Tensor newton_power(const at::Tensor& X, double p, const SpectralOptions& o, SpectralInfo* info);
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

// Shared pre/post-processing: method resolution, dtype, orientation,
// scaling; then calls the kernel.
at::Tensor dispatch(const at::Tensor& O, double p, const SpectralOptions& o, SpectralInfo* info);

}  // namespace detail
}  // namespace specopt
