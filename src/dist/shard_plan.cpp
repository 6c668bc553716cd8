// Shard planning (shard_plan.h).
#include "specopt/dist/shard_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>

namespace specopt {
namespace dist {

// ---------------------------------------------------------------- planning

double spectral_cost(at::IntArrayRef shape) {
  if (shape.size() < 2) {
    double n = 1.0;
    for (auto d : shape) n *= static_cast<double>(d);
    return n;
  }
  double rows = static_cast<double>(shape[0]);
  double cols = 1.0;
  for (size_t i = 1; i < shape.size(); ++i) cols *= static_cast<double>(shape[i]);
  double s = std::min(rows, cols), L = std::max(rows, cols);
  return s * s * L;
}

std::vector<size_t> ShardPlan::owned_by(int64_t rank) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < owner.size(); ++i)
    if (owner[i] == rank) out.push_back(i);
  return out;
}

ShardPlan plan_shards(const std::vector<std::vector<int64_t>>& shapes, int64_t world_size) {
  TORCH_CHECK(world_size >= 1, "plan_shards: world_size must be >= 1, got ", world_size);
  ShardPlan plan;
  plan.world_size = world_size;
  plan.owner.assign(shapes.size(), 0);
  plan.load.assign(static_cast<size_t>(world_size), 0.0);
  std::vector<double> cost(shapes.size());
  for (size_t i = 0; i < shapes.size(); ++i) cost[i] = spectral_cost(shapes[i]);
  std::vector<size_t> order(shapes.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return cost[a] > cost[b]; });
  for (size_t i : order) {
    // min_element returns the first minimum: ties go to the lower rank.
    auto r = std::min_element(plan.load.begin(), plan.load.end()) - plan.load.begin();
    plan.owner[i] = r;
    plan.load[static_cast<size_t>(r)] += cost[i];
  }
  return plan;
}

}  // namespace dist
}  // namespace specopt
