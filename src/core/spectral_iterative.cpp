// Ψ_p by iterations of matrix products: newton for p < 0, newton_schulz,
// paper. The shared dispatch (method resolution, orientation, scaling, dtype,
// input checks) is spectral.cpp's.
//
// Notation: every kernel receives a tall X (m ≥ n) and works on the n×n
// Gram matrix A = XᵀX, using Ψ_p(X) = X A^{-r} with r = (1-p)/2 (eq. (1) of
// spectral.h). Every matrix product goes through detail::counted_matmul so
// SpectralInfo::matmul_flops is exact.
#include "core/spectral_internal.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <utility>

namespace specopt {
namespace detail {

namespace {

at::Tensor identity_like(const at::Tensor& A) {
  return at::eye(A.size(-1), A.options());
}

at::Tensor symmetrize(const at::Tensor& A) {
  return (A + A.transpose(-2, -1)) * 0.5;
}

// base^e (e ≥ 1) by binary powering: ⌊log2 e⌋ squarings + popcount(e)-1
// further products.
at::Tensor counted_power(at::Tensor base, int64_t e, SpectralInfo* info) {
  TORCH_CHECK(e >= 1, "counted_power: exponent must be >= 1, got ", e);
  at::Tensor acc;
  while (true) {
    if (e & 1) acc = acc.defined() ? counted_matmul(acc, base, info) : base;
    e >>= 1;
    if (!e) break;
    base = counted_matmul(base, base, info);
  }
  return acc;
}

// ---------------------------------------------------------------------------
// newton: coupled Newton iteration for the inverse q-th root (Guo & Higham,
// "A Schur–Newton method for the matrix p-th root and its inverse", SIMAX 2006)
// with per-step minimax-optimal linear polynomials.
//
// State: X_j (→ A^{-1/q}) and M_j = X_j^q A (→ I); X_0 = I, M_0 = A/c. One step
// with T = t(M) = a I - β M:   X ← X T,   M ← T^q M.
// Everything is a polynomial in A, so all factors commute and M = X^q A holds.
// In terms of ρ = (eigenvalue of M)^{1/q} a step maps ρ ↦ h(ρ) = ρ t(ρ^q);
// plain Newton is a = (q+1)/q, β = 1/q.
// ---------------------------------------------------------------------------

struct LinearStep {
  double a, beta;  // T = a I - β M
};

// h(ρ) = ρ (a - β ρ^q).
double step_image(const LinearStep& st, double rho, int64_t q) {
  return rho * (st.a - st.beta * std::pow(rho, static_cast<double>(q)));
}

// Minimax-optimal (a, β) for ρ ∈ [l, u]: h equioscillates about 1 at l, at
// its maximum ρ* and at u: h(l) = h(u) = 1-E, h(ρ*) = 1+E. Closed form:
//   s = (u^{q+1} - l^{q+1})/(u - l)           (h(l) = h(u)  ⇔  a = β s)
//   ρ*^q = s/(q+1),   h(ρ*) = ρ* β s q/(q+1)
//   h(ρ*) - 1 = 1 - h(l)  ⇒  β = 2 / (ρ* s q/(q+1) + s l - l^{q+1}).
// A collapsed interval gets plain Newton (quadratic convergence at ρ = 1).
LinearStep minimax_linear_step(double l, double u, int64_t q) {
  const double qd = static_cast<double>(q);
  const LinearStep newton{(qd + 1) / qd, 1.0 / qd};
  if (u - l < 1e-7 * u) return newton;
  const double s = (std::pow(u, qd + 1) - std::pow(l, qd + 1)) / (u - l);
  const double rho_star = std::pow(s / (qd + 1), 1.0 / qd);
  if (!(rho_star > l && rho_star < u)) return newton;
  const double beta = 2.0 / (rho_star * s * qd / (qd + 1) + s * l - std::pow(l, qd + 1));
  return {beta * s, beta};
}

// Image [min h, max h] of [l, u] (h is unimodal with its maximum at
// ρ*^q = a/(β(q+1))).
std::pair<double, double> image_interval(const LinearStep& st, double l, double u, int64_t q) {
  const double hl = step_image(st, l, q), hu = step_image(st, u, q);
  double hi = std::max(hl, hu);
  const double rho_star = std::pow(st.a / (st.beta * static_cast<double>(q + 1)), 1.0 / q);
  if (rho_star > l && rho_star < u) hi = std::max(hi, step_image(st, rho_star, q));
  return {std::min(hl, hu), hi};
}

// Fitting interval floor ("cushion", as in Polar Express §4.4): the
// coefficients are fitted on [max(l, κ u), u] instead of [l, u]. Fitting on a
// very wide interval maps the largest eigenvalues of M close to 0, where the
// rounding error of the following products (of size ε‖T^q‖‖M‖) swamps them
// and the iteration diverges in float32. Eigenvalues below κu still grow by
// ≈ a per step. κ was measured (float32, 768² Gaussian and cond-1e3 matrices):
// q ≤ 4: 0.1; q ≤ 8: 0.5; larger q: 0.7 (smaller values diverge).
double cushion(int64_t q) { return q <= 4 ? 0.1 : q <= 8 ? 0.5 : 0.7; }

// Closest k/q to r with 1 ≤ q ≤ 64 (smallest q among equals).
std::pair<int64_t, int64_t> rational_approximation(double r) {
  int64_t best_k = 0, best_q = 1;
  double best_err = std::numeric_limits<double>::infinity();
  for (int64_t q = 1; q <= 64; ++q) {
    const int64_t k = std::llround(r * static_cast<double>(q));
    const double err = std::abs(r - static_cast<double>(k) / static_cast<double>(q));
    if (err < best_err - 1e-15) {
      best_err = err;
      best_k = k;
      best_q = q;
    }
  }
  return {best_k, best_q};
}

constexpr int64_t kNewtonMaxIterations = 100;

// λ_max ≥ Rayleigh quotients: the largest diagonal entry and a few power
// iterations from a fixed generic vector (matrix-vector products only), per
// matrix of the batch A.
at::Tensor lambda_max_lower_bound(const at::Tensor& A, double p) {
  const int64_t n = A.size(-1);
  at::Tensor v = at::sin(at::arange(1, n + 1, A.options()) * 12.9898).unsqueeze(-1);
  auto vsizes = A.sizes().vec();
  vsizes.back() = 1;
  v = v.expand(vsizes).contiguous();
  // p < 0 regularises relative to λ_max, so estimate it more precisely there.
  const int power_steps = p < 0 ? 40 : 8;
  for (int i = 0; i < power_steps; ++i) {
    v = at::matmul(A, v);
    v = v / v.norm(2, {-2}, /*keepdim=*/true).clamp_min(std::numeric_limits<float>::min());
  }
  return at::maximum((v * at::matmul(A, v)).sum({-2, -1}), A.diagonal(0, -2, -1).amax(-1));
}

// The Gram matrix A = XᵀX scaled into the iteration's interval: A/c with
// c ≥ λ_max, its square, and the smallest λ_lo/c over the batch.
struct ScaledGram {
  at::Tensor A, A2, c;
  double ratio;
};

// c must be safe: an eigenvalue above the fitted interval would be mapped
// towards 0 or below. c = ‖A²‖_F^{1/2} = (Σλ⁴)^{1/4} is 2–3× tighter than
// ‖A‖_F = (Σλ²)^{1/2} on the benchmark matrices, and A² is reused for T² in
// the first step (q ≥ 2 always here), so the bound costs no extra product.
ScaledGram scale_gram(at::Tensor A, const at::Tensor& lam_lo, SpectralInfo* info) {
  at::Tensor A2 = counted_matmul(A, A, info);
  at::Tensor c = at::linalg_norm(A2, "fro", {-2, -1}, /*keepdim=*/true).sqrt();
  const at::Tensor zero = c == 0;
  c = at::where(zero, at::ones_like(c), c);
  // Smallest λ_lo/c over the batch (zero matrices excluded) sets the schedule.
  const double ratio =
      at::where(zero.squeeze(-1).squeeze(-1), at::ones_like(lam_lo), lam_lo / c.squeeze(-1).squeeze(-1))
          .min()
          .item<double>();
  return {A / c, A2 / (c * c), c, ratio};
}

// The coupled iteration on M = A (eigenvalues in [l, 1]): X_q ← X_q T,
// M ← T^q M with T = aI − βM the minimax linear step, so X_q → A^{-1/q}.
// Returns X_q; adds its steps to info.
at::Tensor inverse_root_iteration(ScaledGram g, int64_t k, int64_t q, double l,
                                  const SpectralOptions& o, SpectralInfo* info) {
  const int64_t n = g.A.size(-1);
  const at::Tensor I = identity_like(g.A);
  at::Tensor Xq, M = g.A;
  double u = 1.0;
  const double kappa = cushion(q);
  int64_t it = 0;
  while (true) {
    const LinearStep st = minimax_linear_step(std::max(l, kappa * u), u, q);
    const auto next = image_interval(st, l, u, q);
    ++it;
    // Stop: a fixed count, or when the predicted relative error of X^k after
    // this step, k·max|ρ - 1| over the tracked interval, is below tol
    // (scalar recursion: no synchronisation). Singular values below
    // newton_lower lag behind; the reported residual shows it.
    const bool last = o.iterations() > 0
                          ? it >= o.iterations()
                          : static_cast<double>(k) * std::max(1.0 - next.first, next.second - 1.0) <
                                    o.tol() ||
                                it >= kNewtonMaxIterations;
    const at::Tensor T = at::add(I * st.a, M, -st.beta);
    Xq = Xq.defined() ? counted_matmul(Xq, T, info) : T;
    if (last) {
      // The final step needs no M update (saves log2(q)+1 products); the
      // residual is that of M before it.
      info->residual = std::max(
          info->residual,
          (at::linalg_norm(M - I, "fro", {-2, -1}) / std::sqrt(static_cast<double>(n)))
              .max()
              .item<double>());
      break;
    }
    at::Tensor Tq;
    if (it == 1) {
      // T² = a²I - 2aβA + β²A² from the A² formed for the scale.
      const at::Tensor T2 =
          I * (st.a * st.a) - g.A * (2 * st.a * st.beta) + g.A2 * (st.beta * st.beta);
      Tq = counted_power(T2, q / 2, info);
      if (q % 2) Tq = counted_matmul(Tq, T, info);
      g.A2 = at::Tensor();
    } else {
      Tq = counted_power(T, q, info);
    }
    M = symmetrize(counted_matmul(Tq, M, info));
    std::tie(l, u) = next;
  }
  info->iterations += it;
  return Xq;
}

// X A^{-k/q} for tall X (max |entry| ≤ 1); `lower` bounds σ_min/σ_max from
// below (for the coefficient schedule only). Adds to info's counters.
at::Tensor newton_root(const at::Tensor& X, int64_t k, int64_t q, double p, double lower,
                       const SpectralOptions& o, SpectralInfo* info) {
  at::Tensor A = counted_matmul(X.transpose(-2, -1), X, info);
  at::Tensor lam_lo = lambda_max_lower_bound(A, p);
  if (p < 0) {
    // ε-regularisation relative to λ_max (estimated by lam_lo), as svd/eigh do.
    A = A + identity_like(A) * (o.neg_eps() * lam_lo).unsqueeze(-1).unsqueeze(-1);
    lam_lo = lam_lo * (1.0 + o.neg_eps());
  }
  ScaledGram g = scale_gram(std::move(A), lam_lo, info);
  const double lam_floor = p < 0 ? std::max(lower * lower, o.neg_eps()) : lower * lower;
  const double l = std::pow(std::max(lam_floor * g.ratio, 1e-300), 1.0 / static_cast<double>(q));
  const at::Tensor c = g.c;
  const at::Tensor Xq = inverse_root_iteration(std::move(g), k, q, l, o, info);
  // Ψ = X (A/c)^{-k/q} c^{-k/q}.
  const at::Tensor root = counted_power(Xq, k, info);
  return counted_matmul(X, root, info) *
         c.pow(-static_cast<double>(k) / static_cast<double>(q));
}

// ---------------------------------------------------------------------------
// newton_schulz: X ← a X + b (XXᵀ)X + c (XXᵀ)²X, here on the tall side
// (X ← aX + X(bA + cA²), A = XᵀX), after Frobenius normalisation.
// ---------------------------------------------------------------------------
constexpr std::array<double, 3> kMuonCoefficients = {3.4445, -4.7750, 2.0315};
// Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932,
// Algorithm 1): degree-5 per-step minimax sets; all but the last are divided
// by (1.01, 1.01³, 1.01⁵) for bfloat16 safety; the last repeats.
constexpr std::array<std::array<double, 3>, 8> kPolarExpressCoefficients = {{
    {8.28721201814563, -23.595886519098837, 17.300387312530933},
    {4.107059111542203, -2.9478499167379106, 0.5448431082926601},
    {3.9486908534822946, -2.908902115962949, 0.5518191394370137},
    {3.3184196573706015, -2.488488024314874, 0.51004894012372},
    {2.300652019954817, -1.6689039845747493, 0.4188073119525673},
    {1.891301407787398, -1.2679958271945868, 0.37680408948524835},
    {1.8750014808534479, -1.2500016453999487, 0.3750001645474248},
    {1.875, -1.25, 0.375},
}};

}  // namespace

std::array<double, 3> ns_step_coefficients(NsCoefficients set, int64_t step) {
  if (set == NsCoefficients::kMuon) return kMuonCoefficients;
  const int64_t last = static_cast<int64_t>(kPolarExpressCoefficients.size()) - 1;
  auto abc = kPolarExpressCoefficients[std::min(step, last)];
  if (step < last) {
    abc[0] /= 1.01;
    abc[1] /= std::pow(1.01, 3);
    abc[2] /= std::pow(1.01, 5);
  }
  return abc;
}

namespace {

at::Tensor quintic_newton_schulz(at::Tensor X, int64_t steps, NsCoefficients set,
                                 SpectralInfo* info) {
  // Muon: X / (‖X‖_F + 1e-7); Polar Express: X / (1.01 ‖X‖_F + 1e-7).
  const double safety = set == NsCoefficients::kPolarExpress ? 1.01 : 1.0;
  X = X / (at::linalg_norm(X, "fro", {-2, -1}, /*keepdim=*/true) * safety + 1e-7);
  for (int64_t i = 0; i < steps; ++i) {
    const auto abc = ns_step_coefficients(set, i);
    const at::Tensor A = counted_matmul(X.transpose(-2, -1), X, info);
    const at::Tensor B = A * abc[1] + counted_matmul(A, A, info) * abc[2];
    X = X * abc[0] + counted_matmul(X, B, info);
  }
  info->iterations += steps;
  return X;
}

// ---------------------------------------------------------------------------
// paper: the published study's scheme (arXiv 2602.04669), operation for
// operation; docs/transform.md ("paper") states it step by step. Products whose
// value is known exactly (I·M = M) or never used (the root a run does not
// return, in its last iteration) are skipped: the results are unchanged.
// ---------------------------------------------------------------------------
constexpr int64_t kPaperIterations = 15;  // coupled iteration, and Muon's quintic
// Symmetrise after the iterations with zero-based index i > 0, i mod k = 0
// (i = 5, 10), and after the last; k = max(1, min(15 / 3, 5)) = 5.
constexpr int64_t kPaperSymmetriseEvery = std::max<int64_t>(1, std::min<int64_t>(kPaperIterations / 3, 5));

enum class PaperRoot { kSqrt, kInvSqrt };

// The coupled Newton–Schulz iteration on a symmetric A (n×n):
//   A ← A + (1e-6 + 1e-4 tr(A)/n) I,   s = ‖A‖_F,   Y = A/s,   Z = I;
//   15 × { T = ½(3I − ZY),  Y ← YT,  Z ← TZ }   (Y → (A/s)^{1/2}, Z → (A/s)^{-1/2}),
//   symmetrised as above; returns √s·Y (kSqrt) or Z/√s (kInvSqrt).
at::Tensor paper_coupled(const at::Tensor& A0, PaperRoot want, SpectralInfo* info) {
  const auto n = static_cast<double>(A0.size(-1));
  const at::Tensor I = identity_like(A0);
  const at::Tensor ridge = (A0.diagonal(0, -2, -1).sum(-1) * 1e-4 / n + 1e-6).unsqueeze(-1).unsqueeze(-1);
  const at::Tensor A = A0 + I * ridge;
  const at::Tensor s = at::linalg_norm(A, "fro", {-2, -1}, /*keepdim=*/true);
  at::Tensor Y = A / s, Z;  // Z undefined = I
  for (int64_t i = 0; i < kPaperIterations; ++i) {
    const bool last = i == kPaperIterations - 1;
    // T = ½(3I − ZY) as 1.5I − 0.5ZY: the same value (scaling by ½ is exact).
    const at::Tensor T = at::add(I * 1.5, Z.defined() ? counted_matmul(Z, Y, info) : Y, -0.5);
    if (!(last && want == PaperRoot::kInvSqrt)) Y = counted_matmul(Y, T, info);
    if (!(last && want == PaperRoot::kSqrt)) Z = Z.defined() ? counted_matmul(T, Z, info) : T;
    if ((i > 0 && i % kPaperSymmetriseEvery == 0) || last) {
      Y = symmetrize(Y);
      if (Z.defined()) Z = symmetrize(Z);
    }
  }
  info->iterations += kPaperIterations;
  const at::Tensor root = s.sqrt();
  return want == PaperRoot::kSqrt ? Y * root : Z / root;
}

// Ψ_½(X) = X W with W = (XᵀX)^{-1/4} for tall X (rows ≥ cols), W X with
// W = (XXᵀ)^{-1/4} for wide X: Z₁ = G^{-1/2} by one coupled run, then
// W = Y₂ = Z₁^{1/2} by a second run on Z₁ (each run ridges its own input).
at::Tensor paper_half(const at::Tensor& X, SpectralInfo* info) {
  const bool tall = X.size(-2) >= X.size(-1);
  const at::Tensor Xt = X.transpose(-2, -1);
  const at::Tensor G = tall ? counted_matmul(Xt, X, info) : counted_matmul(X, Xt, info);
  const at::Tensor Z1 = paper_coupled(G, PaperRoot::kInvSqrt, info);
  const at::Tensor Y2 = paper_coupled(Z1, PaperRoot::kSqrt, info);
  return tall ? counted_matmul(X, Y2, info) : counted_matmul(Y2, X, info);
}


}  // namespace

// `paper` is not scale-invariant (absolute terms 1e-6 in its ridge and 1e-7 in
// its normalisation), so to reproduce it an input keeps its own scale: the
// per-matrix scale s (largest |entry|, non-zero) becomes 1 unless it lies
// outside [2^-40, 2^40], where the float32 Gram matrix would under/overflow.
at::Tensor paper_rescale(const at::Tensor& s) {
  const double lo = std::ldexp(1.0, -40), hi = std::ldexp(1.0, 40);
  return at::where((s >= lo) & (s <= hi), at::ones_like(s), s);
}

// p < 0: the ε-regularised coupled inverse root X (A + ε λ_max I)^{-k/q}
// (newton_root). ε bounds the condition number by 1/ε, where the coupled
// iteration is accurate; p ≥ 0 uses the polar route (spectral_newton.cpp).
at::Tensor newton_negative_power(const at::Tensor& X, double p, const SpectralOptions& o,
                                 SpectralInfo* info) {
  TORCH_CHECK(p < 0, "newton_negative_power: p must be < 0, got ", p);
  const auto [k, q] = rational_approximation((1.0 - p) / 2.0);
  info->p_effective = 1.0 - 2.0 * static_cast<double>(k) / static_cast<double>(q);
  return newton_root(X, k, q, p, o.newton_lower(), o, info);
}

at::Tensor newton_schulz_power(const at::Tensor& X, double p, const SpectralOptions& o,
                               SpectralInfo* info) {
  TORCH_CHECK_VALUE(p == 0.0,
              "spectral_power: method 'newton_schulz' computes only p = 0 (the polar factor), got p = ",
              p, "; use newton, eigh or svd");
  TORCH_CHECK_VALUE(o.ns_steps() >= 1, "spectral_power: ns_steps must be >= 1, got ", o.ns_steps());
  return quintic_newton_schulz(X, o.ns_steps(), o.ns_coefficients(), info);
}

at::Tensor paper_power(const at::Tensor& X, double p, SpectralInfo* info) {
  if (p == 0.5) return paper_half(X, info);
  if (p == 0.25) return paper_half(paper_half(X, info), info);  // Ψ_¼ = Ψ_½ ∘ Ψ_½
  TORCH_CHECK_VALUE(false, "spectral_power: method 'paper' supports only p in {0, 0.25, 0.5, 1}, got p = ",
              p, "; use newton, eigh or svd for other p");
}

at::Tensor paper_polar(const at::Tensor& O, at::ScalarType compute, SpectralInfo* info) {
  const int64_t rows = O.size(-2), cols = O.size(-1);
  // x = c(O) / (‖O‖_F + 1e-7): the norm in O's own dtype, the divisor then
  // rounded to the compute dtype c (as PyTorch divides a bfloat16 tensor by a
  // 0-dim float32 tensor; docs/transform.md).
  const at::Tensor norm = at::linalg_norm(O, "fro", {-2, -1}, /*keepdim=*/true) + 1e-7;
  at::Tensor x = O.to(compute) / norm.to(compute);
  // The wide orientation (rows > cols: transpose), so G = x xᵀ is the smaller Gram matrix.
  const bool tall = rows > cols;
  if (tall) x = x.transpose(-2, -1);
  x = x.contiguous();
  // Not quintic_newton_schulz: that one works on the tall side with c·(A·A),
  // which rounds differently in bfloat16.
  const auto [a, b, c] = kMuonCoefficients;
  for (int64_t i = 0; i < kPaperIterations; ++i) {
    // x ← a·x + ((b·G) + (c·G)·G)·x: the scheme's (b·G)·x + ((c·G)·G)·x with
    // the common factor x applied once (3 products per step, as Muon).
    const at::Tensor G = counted_matmul(x, x.transpose(-2, -1), info);
    const at::Tensor B = G * b + counted_matmul(G * c, G, info);
    x = x * a + counted_matmul(B, x, info);
  }
  info->iterations += kPaperIterations;
  if (tall) x = x.transpose(-2, -1);
  // Back to O's dtype, then the shape scale max(1, rows/cols)^½.
  return x.to(O.scalar_type(), /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::Contiguous) *
         std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
}

}  // namespace detail
}  // namespace specopt
