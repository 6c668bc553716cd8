// The schedules of a run, pure functions of the optimizer step: the learning
// rate (warm-up + decay) and p of the matrix group (TrainLoopConfig,
// OptimConfig::p_schedule).
#pragma once

#include "specopt/train/config.h"

#include <cstdint>
#include <string>

namespace specopt {

// Multiplier of the peak learning rates for optimizer step `step` (0-based),
// nanoGPT style, with W = warmup_steps, N = steps, r = min_lr_ratio:
//   step < W:  (step + 1) / W                                  linear warm-up
//   else, with t = (step - W) / max(1, N - 1 - W) ∈ [0, 1]:
//     cosine:   r + (1 - r)·½(1 + cos(π t))
//     linear:   r + (1 - r)·(1 - t)
//     constant: 1
// so the last step (N - 1) runs at lr·r and the first step after warm-up at lr.
double lr_factor(int64_t step, const TrainLoopConfig& train);

// The learning rate of a group with peak rate `peak` at step `step`:
// peak·lr_factor(step) when train.min_lr = 0; otherwise the same warm-up and
// shape decaying to the absolute floor min_lr (as the study: 3e-6 for the
// Adam family, 1e-6 for mSGD): min_lr + (peak − min_lr)·lr_factor|_{r=0}.
double scheduled_lr(int64_t step, double peak, const TrainLoopConfig& train);

// p of the matrix group as a function of the step. Text forms:
//   ""              the variant's own constant p (no set_p calls)
//   "constant:P"    P at every step
//   "linear:A->B"   A at step 0 → B at step N-1, linearly
//   "cosine:A->B"   A → B along ½(1 + cos(π t)), t = step/(N-1)
// Values must lie in [-0.5, 1] (the range of Ψ_p).
struct PSchedule {
  enum class Kind { kVariant, kConstant, kLinear, kCosine };
  Kind kind = Kind::kVariant;
  double from = 1.0, to = 1.0;
  // Throws c10::Error naming the bad text and the valid forms.
  static PSchedule parse(const std::string& text);
  bool active() const { return kind != Kind::kVariant; }
  double at(int64_t step, int64_t steps) const;
};

}  // namespace specopt
