// The progress display of progress.h.
#include "train/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iostream>

namespace specopt {
namespace detail {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string format_rate(double r) {
  if (r >= 1e6) return fmt::format("{:.2f}M", r / 1e6);
  if (r >= 1e3) return fmt::format("{:.1f}k", r / 1e3);
  return fmt::format("{:.0f}", r);
}

void Progress::update(const StepStats& s) {
  if (mode_ == ProgressMode::kQuiet) return;
  // Throughput shown: an exponential moving average of the per-step rate.
  const double step_rate = static_cast<double>(s.items) / std::max(s.step_s, 1e-12);
  rate_ = rate_ > 0 ? 0.9 * rate_ + 0.1 * step_rate : step_rate;
  const double rate = rate_;
  const double per_step = seconds_since(start_) / static_cast<double>(s.step - first_step_);
  const double eta = per_step * static_cast<double>(total_ - s.step);
  const std::string unit_short = unit_ == "tokens" ? "tok" : "samples";
  if (mode_ == ProgressMode::kLines) {
    if (s.step % log_every_ != 0 && s.step != total_) return;
    std::cerr << fmt::format("step {}/{} | loss {:.4f} | lr {:.3g}/{:.3g} | p {:.3g} | {} {}/s | eta {}\n",
                             s.step, total_, s.loss, s.lr_matrix, s.lr_vector, s.p, format_rate(rate),
                             unit_short, format_duration(eta));
    return;
  }
  // Redraw at most ~10 times a second, and on the last step.
  if (s.step != total_ && seconds_since(last_draw_) < 0.1) return;
  last_draw_ = Clock::now();
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * s.step / std::max<int64_t>(1, total_));
  std::cerr << fmt::format("\r{:>3.0f}% [{}{}] {}/{} loss {:.4f} lr {:.3g} {} {}/s ETA {}\x1b[K",
                           100.0 * s.step / total_, std::string(filled, '#'),
                           std::string(kWidth - filled, '.'), s.step, total_, s.loss, s.lr_matrix,
                           format_rate(rate), unit_short, format_duration(eta))
            << std::flush;
  drawn_ = true;
}

}  // namespace detail
}  // namespace specopt
