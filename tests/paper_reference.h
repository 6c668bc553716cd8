// An independent implementation of the published study's Ψ_p scheme
// (arXiv 2602.04669), written for the tests from its description (issue 12,
// docs/transform.md "paper"), sharing no code with src/: one 2-D matrix at a
// time, every product of the description formed (none skipped), the
// orientation rules as stated (Ψ_½ on the tall side, Ψ_0 on the wide side).
// Each quantity is formed with the obvious ATen primitive (at::linalg_norm for
// ‖·‖_F): in float32 the 15 unconverged iterations amplify a one-ulp
// difference, e.g. s = ‖A‖_F as sqrt(ΣA²) instead, to ~1e-5 in Ψ_¼ (measured
// with SpectralPaper.MatchesIndependentImplementation).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

namespace paper_reference {

// The coupled iteration on a symmetric A (n×n), 15 iterations:
//   A ← A + (1e-6 + 1e-4·tr(A)/n)·I;  s = ‖A‖_F;  Y = A/s, Z = I;
//   T = ½(3I − ZY), Y ← YT, Z ← TZ; symmetrise both after the iterations with
//   zero-based index i > 0, i mod k = 0 (k = max(1, min(15 // 3, 5))) and after
//   the last. Returns {√s·Y ≈ A^{1/2}, Z/√s ≈ A^{-1/2}}.
inline std::pair<at::Tensor, at::Tensor> coupled(at::Tensor A) {
  constexpr int64_t kIters = 15;
  const int64_t k = std::max<int64_t>(1, std::min<int64_t>(kIters / 3, 5));
  const int64_t n = A.size(0);
  const at::Tensor I = at::eye(n, A.options());
  A = A + (1e-6 + 1e-4 * at::trace(A) / static_cast<double>(n)) * I;
  const at::Tensor s = at::linalg_norm(A, "fro");
  at::Tensor Y = A / s, Z = I.clone();
  for (int64_t i = 0; i < kIters; ++i) {
    const at::Tensor T = 0.5 * (3.0 * I - at::mm(Z, Y));
    Y = at::mm(Y, T);
    Z = at::mm(T, Z);
    if ((i > 0 && i % k == 0) || i == kIters - 1) {
      Y = 0.5 * (Y + Y.t());
      Z = 0.5 * (Z + Z.t());
    }
  }
  return {Y * at::sqrt(s), Z / at::sqrt(s)};
}

// Ψ_½: tall O: W = (OᵀO)^{-1/4} as Y₂ of a coupled run on Z₁ = (OᵀO)^{-1/2},
// Ψ_½ = O·W; wide O: the same on OOᵀ, Ψ_½ = W·O. Computes in O's dtype.
inline at::Tensor half(const at::Tensor& O) {
  const bool tall = O.size(0) >= O.size(1);
  const at::Tensor G = tall ? at::mm(O.t(), O) : at::mm(O, O.t());
  const at::Tensor Z1 = coupled(G).second;
  const at::Tensor W = coupled(Z1).first;
  return tall ? at::mm(O, W) : at::mm(W, O);
}

// Ψ_¼ = Ψ_½ applied to Ψ_½(O).
inline at::Tensor quarter(const at::Tensor& O) { return half(half(O)); }

// Ψ_0 with its shape scale: x = c(O)/(‖O‖_F + 1e-7) (the norm in O's dtype,
// then rounded to c), transposed if rows > cols; 15 × { G = xxᵀ;
// x ← a·x + (b·G + (c·G)·G)·x }; transposed back, cast to O's dtype, times
// max(1, rows/cols)^½. `compute` is bfloat16 in the scheme.
inline at::Tensor psi_zero(const at::Tensor& O, at::ScalarType compute = at::kBFloat16) {
  const double a = 3.4445, b = -4.7750, c = 2.0315;
  const int64_t rows = O.size(0), cols = O.size(1);
  const at::Tensor divisor = at::linalg_norm(O, "fro") + 1e-7;
  at::Tensor x = O.to(compute) / divisor.to(compute);
  if (rows > cols) x = x.t().contiguous();
  for (int i = 0; i < 15; ++i) {
    const at::Tensor G = at::mm(x, x.t());
    x = a * x + at::mm(b * G + at::mm(c * G, G), x);
  }
  if (rows > cols) x = x.t();
  return x.to(O.scalar_type()) * std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
}

// Ψ_p of the scheme for p ∈ {1, ½, ¼, 0}.
inline at::Tensor psi(const at::Tensor& O, double p) {
  if (p == 1.0) return O;
  if (p == 0.5) return half(O);
  if (p == 0.25) return quarter(O);
  return psi_zero(O);
}

// The scheme's update transform of a parameter-shaped tensor U (dim ≥ 2, seen
// as dim0 × rest): with splitting on, a matrix with rows = 3·cols is split into
// its three row blocks, each transformed on its own. float64 compute for p = 0
// when `f64_zero` (the lockstep test runs the whole scheme in float64).
inline at::Tensor transform(const at::Tensor& U, double p, bool split, bool f64_zero) {
  const at::Tensor M = U.reshape({U.size(0), -1});
  const auto one = [&](const at::Tensor& B) {
    return p == 0.0 && f64_zero ? psi_zero(B, at::kDouble) : psi(B, p);
  };
  if (!(split && M.size(0) == 3 * M.size(1))) return one(M).reshape(U.sizes());
  const int64_t d = M.size(1);
  return at::cat({one(M.slice(0, 0, d)), one(M.slice(0, d, 2 * d)), one(M.slice(0, 2 * d, 3 * d))}, 0)
      .reshape(U.sizes());
}

}  // namespace paper_reference
