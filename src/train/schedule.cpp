// The lr and p schedules of schedule.h (pure functions of the step).
#include "specopt/train/schedule.h"

#include "specopt/core/spectral.h"  // p_in_range

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace specopt {

double lr_factor(int64_t step, const TrainLoopConfig& train) {
  const int64_t W = train.warmup_steps, N = train.steps;
  if (step < W) return static_cast<double>(step + 1) / static_cast<double>(W);
  if (train.lr_schedule == "constant") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, N - 1 - W));
  const double t = std::min(1.0, static_cast<double>(step - W) / span);
  const double r = train.min_lr_ratio;
  if (train.lr_schedule == "linear") return r + (1.0 - r) * (1.0 - t);
  TORCH_CHECK(train.lr_schedule == "cosine", "unknown lr_schedule '", train.lr_schedule, "'");
  return r + (1.0 - r) * 0.5 * (1.0 + std::cos(M_PI * t));
}

double scheduled_lr(int64_t step, double peak, const TrainLoopConfig& train) {
  if (train.min_lr <= 0) return peak * lr_factor(step, train);
  TrainLoopConfig shape = train;
  shape.min_lr_ratio = 0.0;  // f ∈ [0, 1]: 1 at the peak, 0 at the last step
  const double f = lr_factor(step, shape);
  if (step < train.warmup_steps) return peak * f;
  return train.min_lr + (peak - train.min_lr) * f;
}

PSchedule PSchedule::parse(const std::string& text) {
  PSchedule s;
  if (text.empty()) return s;
  auto bad = [&](const std::string& why) {
    TORCH_CHECK(false, "bad p schedule '", text, "': ", why,
                " (valid: \"\", \"constant:P\", \"linear:A->B\", \"cosine:A->B\", values in [-0.5, 1])");
  };
  auto number = [&](const std::string& t) {
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (t.empty() || end != t.c_str() + t.size() || !std::isfinite(v)) bad("'" + t + "' is not a number");
    if (!p_in_range(v)) bad("p = " + t + " lies outside [-0.5, 1]");
    return v;
  };
  const auto colon = text.find(':');
  if (colon == std::string::npos) bad("missing 'kind:'");
  const std::string kind = text.substr(0, colon), rest = text.substr(colon + 1);
  if (kind == "constant") {
    s.kind = Kind::kConstant;
    s.from = s.to = number(rest);
    return s;
  }
  if (kind != "linear" && kind != "cosine") bad("unknown kind '" + kind + "'");
  s.kind = kind == "linear" ? Kind::kLinear : Kind::kCosine;
  const auto arrow = rest.find("->");
  if (arrow == std::string::npos) bad("missing '->'");
  s.from = number(rest.substr(0, arrow));
  s.to = number(rest.substr(arrow + 2));
  return s;
}

double PSchedule::at(int64_t step, int64_t steps) const {
  const double t =
      steps > 1 ? std::clamp(static_cast<double>(step) / static_cast<double>(steps - 1), 0.0, 1.0) : 1.0;
  switch (kind) {
    case Kind::kLinear:
      return from + (to - from) * t;
    case Kind::kCosine:
      return to + (from - to) * 0.5 * (1.0 + std::cos(M_PI * t));
    case Kind::kConstant:
    case Kind::kVariant:
      break;
  }
  return from;
}

}  // namespace specopt
