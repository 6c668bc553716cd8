// The spectral transform Ψ_p(O) = U Σ^p Vᵀ for O = U Σ Vᵀ.
//
// Layer 1 of specopt (pure function, no state). Every method works on the
// smaller Gram matrix A = OᵀO (or OOᵀ) where it can, using
//     Ψ_p(O) = O (OᵀO)^{-(1-p)/2}                                   (1)
// so the cost is one m·n² product for the Gram matrix, a few n³ products on
// the n×n Gram side (n = min(rows, cols)) and one m·n² product back.
//
// Conventions (all methods):
//  * Leading dimensions are a batch: O has shape (..., m, n).
//  * Zero singular values map to zero for every p, p = 0 included (so an
//    all-zero matrix maps to zeros, and Ψ_0 of a rank-deficient matrix is
//    the partial isometry on its range). Singular values below
//    `rank_tol · σ_max` count as zero for the exact methods.
//  * p = 1 returns the input tensor itself (no copy).
//  * p < 0 (down to -1/2) is ε-regularised: Ψ_p(O) = O (OᵀO + ε σ_max² I)^{-(1-p)/2},
//    with ε = `neg_eps`; it bounds the gain of tiny singular values by
//    ~(ε σ_max²)^{p/2}.
//  * Non-finite input raises c10::Error naming the problem; results are
//    never silently NaN. Inputs are rescaled internally so float32 values
//    of magnitude 1e-30 .. 1e30 give finite results (Ψ_p(cO) = c^p Ψ_p(O)).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

// How Ψ_p is computed. Names (lower case) are shared by configs, logs and
// bindings through method_name / parse_method.
enum class Method {
  kAuto,          // "auto": fastest method meeting `tol` on the tensor's device
  kNewton,        // "newton": coupled Newton iteration for inverse roots, matmuls only
  kNewtonSchulz,  // "newton_schulz": Muon's quintic Newton–Schulz, p = 0 only
  kPaper,         // "paper": bit-for-bit the published study's scheme (p ∈ {0, ¼, ½, 1})
  kEigh,          // "eigh": exact, symmetric eigendecomposition of the Gram matrix
  kSvd,           // "svd": exact reference
};

const std::vector<Method>& all_methods();
std::string method_name(Method m);
// Case-insensitive; throws c10::Error listing the valid names.
Method parse_method(const std::string& name);

// Coefficient sets of the quintic Newton–Schulz iteration X ← aX + b(XXᵀ)X + c(XXᵀ)²X.
enum class NsCoefficients {
  kMuon,          // "muon": (3.4445, -4.7750, 2.0315) every step (Keller Jordan's Muon)
  kPolarExpress,  // "polar_express": the per-step minimax sets of Polar Express
};
std::string ns_coefficients_name(NsCoefficients c);
NsCoefficients parse_ns_coefficients(const std::string& name);

struct SpectralOptions {
  TORCH_ARG(Method, method) = Method::kAuto;
  // Accuracy setting: target relative error in each singular value of the
  // result. newton: stops when its predicted error (scalar recursion over the
  // assumed spectrum interval) is below tol; eigh (and auto on CPU): tol < 1e-3
  // runs in float64 unless compute_dtype is set.
  TORCH_ARG(double, tol) = 1e-4;
  // newton: fixed iteration count when > 0 (tol is then ignored for stopping);
  // 0 = stop on tol (with an internal safety cap).
  TORCH_ARG(int64_t, iterations) = 0;
  // newton: the assumed lower bound of σ_min/σ_max used to choose the
  // per-step polynomial coefficients and the stopping point. Smaller singular
  // values converge more slowly and may be unconverged at the stop (see
  // SpectralInfo::residual and docs/transform.md).
  TORCH_ARG(double, newton_lower) = 1e-4;
  // newton_schulz: step count and coefficient set.
  TORCH_ARG(int64_t, ns_steps) = 5;
  TORCH_ARG(NsCoefficients, ns_coefficients) = NsCoefficients::kMuon;
  // Precision of the internal arithmetic. nullopt: the input's dtype, with
  // bfloat16/half promoted to float32, except newton_schulz and paper p = 0
  // (bfloat16, as Muon) and eigh with tol < 1e-3 (float64).
  TORCH_ARG(c10::optional<c10::ScalarType>, compute_dtype) = c10::nullopt;
  // p < 0 regularisation (see above).
  TORCH_ARG(double, neg_eps) = 1e-3;
  // Exact methods: singular values ≤ rank_tol·σ_max count as zero.
  // 0 = max(m, n)·machine-ε of the compute dtype.
  TORCH_ARG(double, rank_tol) = 0.0;
  // Check the input for NaN/Inf (one reduction). Turn off only when the
  // caller has already checked (the optimizers do).
  TORCH_ARG(bool, check_finite) = true;
};

// What a call did (optional out-parameter).
struct SpectralInfo {
  Method method = Method::kAuto;  // the method actually used (auto resolved)
  int64_t iterations = 0;         // iterations of the iterative method(s), summed over
                                  // stages (newton 0<p<½: two runs; paper: 15 per
                                  // coupled iteration)
  double residual = 0.0;          // newton: max over batch of ‖M - I‖_F/√n before the
                                  // final step (which needs no M update)
  double p_effective = 0.0;       // the p actually computed (newton approximates
                                  // irrational p by a rational k/q, q ≤ 64)
  double matmul_flops = 0.0;      // 2·m·n·k summed over every matrix product (whole batch)
};

// Ψ_p(O). O: (..., m, n), float32 / float64 / bfloat16 / float16, any device.
// The result has O's shape and dtype.
at::Tensor spectral_power(const at::Tensor& O, double p,
                          const SpectralOptions& options = {},
                          SpectralInfo* info = nullptr);

}  // namespace specopt
