// The spectral transform Ψ_p(O) = U Σ^p Vᵀ for O = U Σ Vᵀ.
//
// Layer 1 of specopt (pure function, no state). Every method works on the
// smaller Gram matrix A = OᵀO (or OOᵀ) where it can, using
//     Ψ_p(O) = O (OᵀO)^{-(1-p)/2}                                   (1)
// so the cost is one m·n² product for the Gram matrix, a few n³ products on
// the n×n Gram side (n = min(rows, cols)) and one m·n² product back.
//
// `newton` (p ≥ 0) instead factors O = Q H (polar decomposition) and uses
//     Ψ_p(O) = Q H^p,   H = QᵀO ⪰ 0,                                (2)
// with Q and H^p computed by odd / bounded polynomial iterations (details in
// src/core/spectral_newton.cpp and docs/transform.md).
//
// Conventions (all methods):
//  * Leading dimensions are a batch: O has shape (..., m, n).
//  * Tiny singular values (one convention for every method). Let
//    τ = rank_tol, or by default τ = √min(m, n)·ε_in with ε_in the machine
//    epsilon of O's dtype as given (2^-23 float32, 2^-7 bfloat16, 2^-10 half,
//    2^-52 float64): rounding O to its dtype moves its singular values by at most
//    ‖E‖₂ ≤ ‖E‖_F ≤ ε_in‖O‖_F ≤ τ σ_max, so singular values ≤ τ σ_max carry no
//    information. Every method returns U f(Σ) Vᵀ with
//      - f(σ) = σ^p (to the method's accuracy) on the dominant part
//        σ ≥ max(τ, newton_lower)·σ_max;
//      - 0 ≤ f(σ) ≤ (1 + small)·σ^p everywhere (nothing is amplified, for
//        p = 0 too: f ≤ 1 + small);
//      - f(0) = 0 for every p, p = 0 included: a zero matrix, zero rows or
//        columns and exactly rank-deficient directions map to zero.
//    svd and eigh set f(σ) = 0 for σ ≤ τ σ_max; newton computes f(σ) =
//    g(σ)^{1+p}σ^p-like values with a polynomial g ≈ 1 above newton_lower,
//    falling to 0 at σ = 0 (so values below newton_lower are attenuated, never
//    amplified).
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

// The range of p this library computes Ψ_p for, [-½, 1] (the study's
// variants lie in [0, 1]; p < 0 inverts small singular values, bounded by
// neg_eps). Every check of p uses p_in_range.
constexpr double kMinP = -0.5;
constexpr double kMaxP = 1.0;
// p is finite and in [kMinP, kMaxP].
inline bool p_in_range(double p) { return p >= kMinP && p <= kMaxP; }

// ASCII lower case: the one normalisation of the case-insensitive names
// (methods, scale modes, variants).
std::string ascii_lower(std::string s);

// How Ψ_p is computed. Names (lower case) are shared by configs, logs and
// bindings through method_name / parse_method.
enum class Method {
  kAuto,          // "auto": fastest method meeting `tol` on the tensor's device
  kNewton,        // "newton": matmuls only; p ≥ 0: polar factor by Polar Express
                  // quintics, then H^p by coupled square-root iterations, eq. (2);
                  // p < 0: ε-regularised coupled inverse root
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
  // result. newton: every stage stops when its predicted error (scalar
  // recursion of its polynomials over [newton_lower, 1]) is below tol; eigh
  // (and auto on CPU): tol < 1e-3 runs in float64 unless compute_dtype is set.
  TORCH_ARG(double, tol) = 1e-4;
  // newton: when N > 0, every stage stops at step N of the Polar Express
  // schedule (tol is then ignored; the square-root stages enter that schedule
  // later, so they run fewer steps, at least one; N = 8 meets 1e-3 on
  // [1e-3, 1]). 0 = stop on tol (with a safety cap of 40 steps per stage).
  TORCH_ARG(int64_t, iterations) = 0;
  // newton: the lower end ℓ of the accuracy interval: singular values
  // σ ≥ ℓ σ_max meet tol; smaller ones are attenuated (never amplified).
  // Sets where each stage enters the Polar Express schedule and when it stops.
  TORCH_ARG(double, newton_lower) = 1e-3;
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
  // 0 = √min(m, n)·ε of the INPUT dtype (the rounding floor τ above).
  TORCH_ARG(double, rank_tol) = 0.0;
  // Check the input for NaN/Inf (one reduction). Turn off only when the
  // caller has already checked (the optimizers do).
  TORCH_ARG(bool, check_finite) = true;
};

// What a call did (optional out-parameter).
struct SpectralInfo {
  Method method = Method::kAuto;  // the method actually used (auto resolved)
  int64_t iterations = 0;         // iterations of the iterative method(s), summed over
                                  // stages (newton p ≥ 0: polar steps + the steps of
                                  // each square-root stage; paper: 15 per coupled
                                  // iteration)
  double residual = 0.0;          // newton, p ≥ 0: predicted relative error of the
                                  // singular values in [newton_lower·σ_max, σ_max]
                                  // (scalar recursion of the polynomials, max over
                                  // stages); p < 0: max over batch of ‖M - I‖_F/√n
                                  // before the final step
  double p_effective = 0.0;       // the p actually computed (newton rounds p ≥ 0 to
                                  // the nearest multiple of 1/64, p < 0 to the
                                  // nearest k/q, q ≤ 64)
  double matmul_flops = 0.0;      // 2·m·n·k summed over every matrix product (whole batch)
};

// Ψ_p(O). O: (..., m, n), float32 / float64 / bfloat16 / float16, any device.
// The result has O's shape and dtype.
at::Tensor spectral_power(const at::Tensor& O, double p,
                          const SpectralOptions& options = {},
                          SpectralInfo* info = nullptr);

}  // namespace specopt
