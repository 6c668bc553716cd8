// Which rank owns which parameter in the sharded optimizer step: each
// parameter goes to one owner by the cost of its spectral transform, s²·L
// (s = smaller, L = larger side of the (dim0, rest) matrix; a vector counts as
// 1 × numel), greedy largest-first onto the least-loaded rank; deterministic,
// so every rank computes the same plan without communicating.
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace specopt {
namespace dist {

// s²·L of the (dim0, numel/dim0) matrix — the order of the flops of an SVD or
// of a Newton–Schulz iteration on it. Vectors and scalars: numel.
double spectral_cost(at::IntArrayRef shape);

struct ShardPlan {
  int64_t world_size = 1;
  std::vector<int64_t> owner;  // per parameter
  std::vector<double> load;    // per rank: sum of spectral_cost of its share
  std::vector<size_t> owned_by(int64_t rank) const;
};

// Greedy: parameters by decreasing cost (ties: lower index first) each onto
// the rank with the least load so far (ties: lower rank). Deterministic.
ShardPlan plan_shards(const std::vector<std::vector<int64_t>>& shapes, int64_t world_size);

}  // namespace dist
}  // namespace specopt
