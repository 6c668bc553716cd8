// newton: Ψ_p(O) for p ≥ 0 by matrix products only, robust on rank-deficient
// and ill-conditioned inputs by construction.
//
// Factorisation (polar decomposition X = Q H, Q the polar factor, H ⪰ 0):
//     Ψ_p(X) = U Σ^p Vᵀ = Q · H^p,      H = QᵀX = V Σ Vᵀ.            (N1)
//  1. Q by the odd quintic iteration X ← aX + X(bA + cA²), A = XᵀX, with the
//     per-step minimax coefficient sets of Polar Express (Amsel, Persson,
//     Musco, Gower 2025, arXiv:2505.16932, Alg. 1, cushioned for rounding),
//     applied to X itself. Each singular value follows the scalar map
//     σ ↦ g(σ) = σ(a + bσ² + cσ⁴): 0 ↦ 0 (zero rows, columns and null
//     directions stay exactly zero), g ≥ 0 on the normalised range, and the
//     composition is ≤ 1 + O(tol) everywhere, so nothing is amplified; values
//     below the assumed lower bound simply stay below 1 (unconverged, never
//     blown up). This is the property the coupled inverse-root iteration
//     (X A^{-r}) lacks: it multiplies the rounding noise of A's null space by
//     λ^{-r}.
//  2. H = sym(QᵀX) ⪰ 0 (n×n). Its eigenvalues are g(σ)σ ≥ 0.
//  3. H^{1/2} by the coupled iteration for the square root, which is the sign
//     iteration on B = [[0, H], [I, 0]] (sign(B) = [[0, H^{1/2}], [H^{-1/2}, 0]],
//     Higham, Functions of Matrices, §5.3 and §6.3: stable, unlike the
//     uncoupled Newton square root): with the same odd quintics g,
//         M = ZY,  T = aI + bM + cM²,  Y ← YT,  Z ← TZ,    Y₀ = H, Z₀ = I,
//     Y → H^{1/2}, Z → H^{-1/2}. An eigenvalue λ of H enters as σ_B = √λ, so Y's
//     eigenvalue is √λ · g(√λ) ≤ (1 + O(tol))√λ: bounded at 0 (no inverse is
//     ever applied to Q), and the interval [√ℓ, 1] is far better conditioned
//     than [ℓ, 1], so the same table converges in fewer steps (the stage starts
//     at the table step designed for its interval). A ridge of max(16, 4√m)·ε
//     (compute dtype) keeps rounding-negative eigenvalues of H (measured
//     |λ| ≤ 3e-8 in float32 when H = QᵀX is formed from Q) positive: for λ < 0 the
//     odd polynomials act on an imaginary σ_B and grow without bound.
//  4. H^p for p = k/2^d (d ≤ kDyadicDepth) as the product of the chained square
//     roots H^{2^-j} for the bits of k. Other p are rounded to the nearest k/2^d
//     (SpectralInfo::p_effective, error ≤ 2^-(d+1)). p = ½ and ¼ are exact.
// p < 0 goes to the ε-regularised coupled inverse root (spectral_iterative.cpp).
//
// Stopping: every stage tracks the image [lo, hi] of its singular-value
// interval through the chosen polynomials in double on the host (scalar
// recursion; the only host synchronisation of the method is the one reading
// the batch's σ_max/c bound); tol stops a stage when
// max(1 - lo, hi - 1) < tol. iterations = N > 0 stops every stage at table
// step N (stages that start later in the table run fewer steps, at least one).
#include "core/spectral_internal.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

namespace specopt {
namespace detail {

namespace {

constexpr NsCoefficients kSet = NsCoefficients::kPolarExpress;
constexpr int64_t kMaxSteps = 40;    // safety cap of the tol path (not reached in the tests)
constexpr int64_t kDyadicDepth = 6;  // p rounded to a multiple of 1/64
// The table's first step is designed for σ/σ_max ≥ 1e-3 (Polar Express, ℓ = 1e-3).
constexpr double kTableLower = 1e-3;

double quintic(const std::array<double, 3>& abc, double x) {
  const double x2 = x * x;
  return x * (abc[0] + x2 * (abc[1] + x2 * abc[2]));
}

// Image [min, max] of [lo, hi] ⊂ (0, ∞) under the quintic: endpoints and the
// interior critical points (roots of a + 3b y + 5c y² with y = x²).
std::pair<double, double> quintic_image(const std::array<double, 3>& abc, double lo, double hi) {
  std::vector<double> x = {lo, hi};
  const double a = abc[0], b = abc[1], c = abc[2];
  const double disc = 9 * b * b - 20 * a * c;
  if (disc >= 0 && c != 0) {
    for (double sgn : {1.0, -1.0}) {
      const double y = (-3 * b + sgn * std::sqrt(disc)) / (10 * c);
      if (y > 0 && std::sqrt(y) > lo && std::sqrt(y) < hi) x.push_back(std::sqrt(y));
    }
  }
  double mn = std::numeric_limits<double>::infinity(), mx = -mn;
  for (double v : x) {
    const double g = quintic(abc, v);
    mn = std::min(mn, g);
    mx = std::max(mx, g);
  }
  return {mn, mx};
}

// The table steps one stage runs for singular values in [lower, 1], with the
// predicted lower end of the interval after each step.
// It starts at the last table step whose design interval (the image of
// [kTableLower, 1] after the earlier steps) still contains `lower`.
// Adds the stage's predicted relative error max(1 - lo, hi - 1) to
// info->residual (max over stages).
struct Schedule {
  std::vector<int64_t> steps;
  std::vector<double> lo_after;
};

Schedule stage_schedule(double lower, const SpectralOptions& o, SpectralInfo* info) {
  int64_t k = 0;
  for (double t = kTableLower; k < 7; ++k) {  // 7: the last table set, which repeats
    const double next = quintic(ns_step_coefficients(kSet, k), t);
    if (next > lower) break;
    t = next;
  }
  Schedule sc;
  double lo = lower, hi = 1.0;
  while (true) {
    std::tie(lo, hi) = quintic_image(ns_step_coefficients(kSet, k), lo, hi);
    sc.steps.push_back(k++);
    sc.lo_after.push_back(lo);
    if (o.iterations() > 0) {
      if (k >= o.iterations()) break;
    } else if (std::max(1.0 - lo, hi - 1.0) < o.tol() ||
               static_cast<int64_t>(sc.steps.size()) >= kMaxSteps) {
      break;
    }
  }
  info->residual = std::max(info->residual, std::max(1.0 - lo, hi - 1.0));
  return sc;
}

at::Tensor eye_like(const at::Tensor& A) { return at::eye(A.size(-1), A.options()); }

at::Tensor sym(const at::Tensor& A) { return (A + A.transpose(-2, -1)) * 0.5; }

// Per-matrix upper bound c ≥ σ_max(X) and the batch's smallest lower-bound
// ratio σ_max/c, from A = XᵀX and A² (needed by the first polar step anyway):
// c = ‖A²‖_F^{1/4} = (Σσ⁸)^{1/8} ∈ [σ_max, n^{1/8} σ_max]; the Rayleigh
// quotient of A² after a few power steps (matrix-vector products) is ≤ σ_max⁴.
std::pair<at::Tensor, double> spectral_scale(const at::Tensor& A, const at::Tensor& A2) {
  at::Tensor c = at::linalg_norm(A2, "fro", {-2, -1}, /*keepdim=*/true).pow(0.25);
  const at::Tensor zero = c == 0;
  c = at::where(zero, at::ones_like(c), c);
  const int64_t n = A.size(-1);
  at::Tensor v = at::sin(at::arange(1, n + 1, A.options()) * 12.9898).unsqueeze(-1);
  auto vs = A.sizes().vec();
  vs.back() = 1;
  v = v.expand(vs).contiguous();
  for (int i = 0; i < 4; ++i) {
    v = at::matmul(A2, v);
    v = v / v.norm(2, {-2}, /*keepdim=*/true).clamp_min(std::numeric_limits<float>::min());
  }
  const at::Tensor rq = (v * at::matmul(A2, v)).sum({-2, -1}, /*keepdim=*/true).clamp_min(0);
  const at::Tensor ratio = at::where(zero, at::ones_like(c), rq.pow(0.25) / c);
  // Never below the trivial bound σ_max ≥ c n^{-1/8}.
  const double floor = std::pow(static_cast<double>(n), -0.125);
  return {c, std::max(floor, std::min(1.0, ratio.min().item<double>()))};
}

// The polar factor of X/c (σ ≤ 1), singular values ≥ lower converged to
// tol, as Q = X_k P (P undefined: Q = X_k).
//
// Tall X (m ≥ 2n) switches to the n×n side once the tracked interval is well
// conditioned: with G = X_kᵀX_k, every later iterate is X_k P with P a
// polynomial in G, so the steps
//     T = aI + bM + cM²,  P ← PT,  M ← TMT      (M = PᵀGP → I, P → G^{-1/2})
// cost 4 n³-products instead of 4 m n² + 2 n³. Before the switch the steps
// run on X itself: the Gram matrix of an ill-conditioned X loses its small
// eigenvalues to rounding (~ε λ_max), that of X_k does not once its smallest
// tracked singular value lo satisfies lo² ≥ 3·10³ ε (float32: lo ≥ 0.019).
// G gets the ridge max(16, 4√m)·ε (≤ 4·10⁻² relative to lo² for m ≤ 800;
// measured dominant-subspace error on the real-update suite ≤ 1e-3):
// without it a rounding-negative eigenvalue of G (X_k's null space) grows as
// μ ← μT² without bound when many steps are run (iterations = 20 on a
// 48×200 cond-1e8 input: non-finite). With it, those directions converge
// like any other, and X_k is ~ε there, so nothing is amplified.
// Ridge for an n×n product of m-row factors of norm ≤ 1 (Gram matrices, QᵀX):
// covers the rounding of the m-term dot products, ≲ √m ε.
double rounding_ridge(const at::Tensor& X) {
  const double eps = unit_roundoff(X.scalar_type());
  return eps * std::max(16.0, 4.0 * std::sqrt(static_cast<double>(X.size(-2))));
}

struct PolarFactor {
  at::Tensor Xk, P;
  at::Tensor q(SpectralInfo* info) const { return P.defined() ? counted_matmul(Xk, P, info) : Xk; }
};

PolarFactor polar_factor(at::Tensor X, at::Tensor A, at::Tensor A2, double lower,
                         const SpectralOptions& o, SpectralInfo* info) {
  const Schedule sc = stage_schedule(lower, o, info);
  const size_t steps = sc.steps.size();
  const bool tall = X.size(-2) >= 2 * X.size(-1);
  const double eps = unit_roundoff(X.scalar_type());
  const double gram_switch = std::sqrt(3e3 * eps);
  size_t i = 0;
  for (; i < steps; ++i) {
    const auto abc = ns_step_coefficients(kSet, sc.steps[i]);
    if (i > 0) {
      A = counted_matmul(X.transpose(-2, -1), X, info);
      // Switch when the remaining steps are worth it (≥ 2 left).
      if (tall && sc.lo_after[i - 1] >= gram_switch && steps - i >= 2) break;
      A2 = counted_matmul(A, A, info);
    }
    X = X * abc[0] + counted_matmul(X, A * abc[1] + A2 * abc[2], info);
  }
  PolarFactor out{X, at::Tensor()};
  if (i < steps) {
    at::Tensor M = at::add(A, eye_like(A), rounding_ridge(X));
    for (size_t j = i; j < steps; ++j) {
      const auto abc = ns_step_coefficients(kSet, sc.steps[j]);
      const at::Tensor T = at::add(M * abc[1] + counted_matmul(M, M, info) * abc[2],
                                   eye_like(M), abc[0]);
      out.P = out.P.defined() ? counted_matmul(out.P, T, info) : T;
      if (j + 1 < steps) M = sym(counted_matmul(T, counted_matmul(M, T, info), info));
    }
  }
  info->iterations += static_cast<int64_t>(steps);
  return out;
}

// H^{1/2} for symmetric H ⪰ 0 with eigenvalues ≤ 1, accurate for
// eigenvalues ≥ lower (see step 3 above).
at::Tensor psd_sqrt(const at::Tensor& H, double lower, const SpectralOptions& o,
                    SpectralInfo* info) {
  const std::vector<int64_t> steps = stage_schedule(std::sqrt(lower), o, info).steps;
  const at::Tensor I = eye_like(H);
  at::Tensor Y = H, Z;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto abc = ns_step_coefficients(kSet, steps[i]);
    const at::Tensor M = Z.defined() ? counted_matmul(Z, Y, info) : H;
    const at::Tensor T = at::add(M * abc[1] + counted_matmul(M, M, info) * abc[2], I, abc[0]);
    Y = counted_matmul(Y, T, info);
    if (i + 1 < steps.size()) Z = Z.defined() ? counted_matmul(T, Z, info) : T;
    // Y and Z are polynomials in H (symmetric, commuting) in exact arithmetic;
    // re-symmetrising every few steps removes the drift rounding introduces.
    if (i % 4 == 3) {
      Y = sym(Y);
      if (Z.defined()) Z = sym(Z);
    }
  }
  info->iterations += static_cast<int64_t>(steps.size());
  return sym(Y);
}

}  // namespace

at::Tensor newton_power(const at::Tensor& X, double p, const SpectralOptions& o,
                        SpectralInfo* info) {
  TORCH_CHECK_VALUE(o.newton_lower() > 0 && o.newton_lower() <= 1,
                    "spectral_power: newton_lower must lie in (0, 1], got ", o.newton_lower());
  TORCH_CHECK_VALUE(o.iterations() >= 0, "spectral_power: iterations must be >= 0, got ",
                    o.iterations());
  TORCH_CHECK_VALUE(o.tol() > 0, "spectral_power: tol must be > 0, got ", o.tol());
  if (p < 0) return newton_negative_power(X, p, o, info);
  // p ≈ k / 2^d (d minimal); k = 2^d means p rounds to 1 (identity).
  int64_t k = std::llround(p * static_cast<double>(int64_t{1} << kDyadicDepth));
  int64_t d = kDyadicDepth;
  while (d > 0 && k % 2 == 0) {
    k /= 2;
    --d;
  }
  info->p_effective = static_cast<double>(k) / static_cast<double>(int64_t{1} << d);
  if (info->p_effective == 1.0) return X;

  const at::Tensor A = counted_matmul(X.transpose(-2, -1), X, info);
  const at::Tensor A2 = counted_matmul(A, A, info);
  const auto [c, ratio] = spectral_scale(A, A2);
  // Accuracy interval of the normalised singular values: [newton_lower·σ_max/c, 1].
  const double lower = o.newton_lower() * ratio;
  const at::Tensor Xs = X / c;
  const at::Tensor c2 = c * c;
  const PolarFactor Q = polar_factor(Xs, A / c2, A2 / (c2 * c2), lower, o, info);
  if (k == 0) return Q.q(info);  // p = 0: Ψ_0 = Q (c^0 = 1)

  // H/β + ridge·I with β = 1 + 2·10⁻² ≥ ‖H‖₂ (H's eigenvalues are g(σ)σ ≤ 1 + O(tol)).
  // H is formed from Q itself (‖Q‖₂ ≤ 1 + O(tol)), not as Pᵀ(X_kᵀX): P's gain
  // on X_k's null space (up to ~200) would multiply the rounding of X_kᵀX and
  // push null eigenvalues of H below −ridge, where the square-root
  // polynomials grow (measured: −2.8e-6 on a rank-9 10×128 momentum buffer).
  // The ridge covers the rounding of the m-term dot products, ≲ √m ε.
  constexpr double kBound = 1.02;
  const double ridge = rounding_ridge(X);
  const at::Tensor Qm = Q.q(info);
  const at::Tensor H =
      at::add(sym(counted_matmul(Qm.transpose(-2, -1), Xs, info)) / kBound, eye_like(A), ridge);
  at::Tensor S = H, P;
  double l = lower / kBound;
  for (int64_t j = 1; j <= d; ++j) {
    S = psd_sqrt(S, l, o, info);
    l = std::sqrt(l);
    if ((k >> (d - j)) & 1) P = P.defined() ? counted_matmul(P, S, info) : S;
  }
  // Ψ_p(X) = Q (βH')^p c^p with H' the scaled H.
  return counted_matmul(Qm, P, info) * (c * kBound).pow(info->p_effective);
}

}  // namespace detail
}  // namespace specopt
