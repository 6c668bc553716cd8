// The trainer's progress display (TrainOptions::progress): a live bar on a
// terminal, or log lines; both on stderr. Private to the train layer.
#pragma once

#include "specopt/train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>

namespace specopt {
namespace detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// "1h02m", "3m05s", "42s"; "?" for a negative or non-finite time.
std::string format_duration(double s);
// "1.25M", "12.3k", "950".
std::string format_rate(double r);

// A one-line live bar on a terminal, or plain log lines; both on stderr.
class Progress {
 public:
  Progress(ProgressMode mode, int64_t total_steps, int64_t log_every, std::string unit)
      : total_(total_steps), log_every_(log_every), unit_(std::move(unit)) {
    if (mode == ProgressMode::kAuto) mode = ::isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kLines;
    mode_ = mode;
  }

  void start(int64_t first_step) {
    start_ = Clock::now();
    first_step_ = first_step;
  }

  void update(const StepStats& s);

  void message(const std::string& text) {
    if (mode_ == ProgressMode::kQuiet) return;
    if (drawn_) std::cerr << "\r\x1b[K";
    std::cerr << text << "\n";
    drawn_ = false;
  }

  void finish() {
    if (drawn_) std::cerr << "\n";
    drawn_ = false;
  }

 private:
  ProgressMode mode_;
  int64_t total_, log_every_;
  std::string unit_;
  Clock::time_point start_ = Clock::now(), last_draw_{};
  int64_t first_step_ = 0;
  double rate_ = 0.0;
  bool drawn_ = false;
};

}  // namespace detail
}  // namespace specopt
