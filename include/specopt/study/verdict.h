// Verdicts that follow the evidence: the study's three claims judged from per-seed statistics
// with a bootstrap over seeds (pure functions, no I/O; the report calls them).
//
//   SeedTable t = ...;                          // per variant: lr grid × seeds final losses
//   ToleranceVerdicts v = judge_claims(t, 0.02); // widths with intervals, three claim verdicts
//
// Definitions (also in docs/study.md, "Verdicts"):
//  * L*_s: the smallest final loss of seed s over every variant and lr of the study.
//  * stable (variant, lr, seed s): finite loss ≤ (1 + tolerance) · L*_s.
//  * per-seed stable width of a variant: the contiguous run of stable grid points around the
//    seed's best lr of that variant (none when that best point is not stable), measured in
//    decades with each grid point standing for the log-lr interval halfway to its neighbours
//    (mirrored at the grid ends): on a half-decade grid one point is 0.5 decades, none is 0.
//  * bootstrap: the seeds are resampled with replacement (all variants together: seed s of one
//    variant stays paired with seed s of the others), `resamples` times from a fixed RNG seed;
//    the interval of a statistic (a mean over seeds) is the percentile interval at `confidence`.
//    With 3 seeds a 95 % interval of a per-seed mean spans the smallest to the largest per-seed
//    value, so "supported" means "in every seed".
//  * a claim comparing two widths is supported when the interval of the difference excludes 0 in
//    the claimed direction, contradicted when it excludes 0 in the other, inconclusive otherwise.
//  * bracketed variant: its best lr (by seed means) is an interior grid point and both grid ends
//    diverged or rose clearly (end mean > (1 + tolerance) · the variant's best mean), and no seed's
//    stable run reaches a grid end. A claim that involves an unbracketed variant is inconclusive
//    ("widen the grid of ...") whatever its interval says.
//  * fewer than 2 seeds: no interval and no noise estimate, so every claim is inconclusive; the
//    verdict the point estimate alone would give is kept as `point_verdict`.
#pragma once

#include "specopt/core/variants.h"

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

// One variant's results: final validation loss per lr (ascending) and seed (+inf = diverged,
// NaN = missing), seeds in SeedTable::seeds order.
struct VariantGrid {
  std::string variant;
  Family family = Family::kAdam;
  double p = 1.0;
  std::vector<double> lrs;
  std::vector<std::vector<double>> loss;  // [lr index][seed index]
};

struct SeedTable {
  std::vector<int64_t> seeds;
  std::vector<VariantGrid> variants;
};

enum class Verdict { kSupported, kContradicted, kInconclusive, kNotTested };
std::string verdict_name(Verdict v);  // "supported", "contradicted", "inconclusive", "not tested"

struct Interval {
  double estimate = 0.0;  // the statistic on all seeds
  double lo = 0.0, hi = 0.0;
};

struct VerdictOptions {
  int64_t resamples = 10000;
  uint64_t rng_seed = 20260204;  // fixed: the report is reproducible
  double confidence = 0.95;
};

// Percentile bootstrap interval of the mean of `per_seed` (NaN entries dropped). Calls with the
// same options and the same number of values draw the same resamples (paired statistics).
Interval bootstrap_mean(const std::vector<double>& per_seed, const VerdictOptions& options = {});

// The per-seed stable width (decades, see above) of one grid, given that seed's losses and the
// stability threshold (1 + tolerance) · L*_s. Also reports whether the run touches a grid end.
double stable_width(const std::vector<double>& lrs, const std::vector<double>& losses,
                    double threshold, bool* touches_edge = nullptr);

struct WidthEstimate {
  std::string variant;
  Family family = Family::kAdam;
  double p = 1.0;
  std::vector<double> per_seed;  // decades
  Interval width;
  int64_t best = -1;             // index of the best lr by seed means (-1: none finite)
  double best_mean = 0.0;
  double best_std = 0.0;         // sample std over seeds at the best lr
  Interval best_loss;            // bootstrap interval of the mean loss at the best lr
  bool bracketed = false;
  std::string bracket_note;      // why not bracketed ("" when bracketed)
};

struct ClaimEvidence {
  int number = 0;
  std::string claim;
  Verdict verdict = Verdict::kNotTested;
  Verdict point_verdict = Verdict::kNotTested;  // from the interval alone, before the bracketing
                                                // and one-seed rules
  std::string statistic;          // what `difference` measures
  Interval difference;
  double margin = 0.0;            // claim 3: the noise margin
  std::vector<std::string> widen; // variants whose grid must be widened
  std::string evidence;           // the numbers, for a person
};

struct ToleranceVerdicts {
  double tolerance = 0.0;
  int64_t n_seeds = 0;
  std::vector<WidthEstimate> widths;  // SeedTable order
  Interval adam_family_width, sgd_family_width;  // mean width of the family's variants
  std::vector<ClaimEvidence> claims;  // claims 1, 2, 3
};

// The three claims at one stable tolerance:
//  (1) RMS-normalised updates (Adam family) are more stable across learning rates than
//      first-moment updates (mSGD family): per seed, mean width of the Adam variants − mean width
//      of the mSGD variants; claimed > 0.
//  (2) p < 1 stabilises mSGD: per seed, mean width of the mSGD variants with p < 1 − width of
//      mSGD (p = 1); claimed > 0.
//  (3) p = 0 does not consistently outperform Adam: for each p = 0 variant z, per seed,
//      d_s = loss(Adam at its best lr) − loss(z at its best lr) (best lrs by seed means; > 0: z
//      better). Noise margin m = sqrt((sd_Adam² + sd_z²) / 2), the pooled seed-to-seed standard
//      deviation of one run at those cells. z outperforms Adam if the interval of mean d lies
//      above m, does not if it lies below m. Supported if no z outperforms and every z
//      does not; contradicted if some z outperforms; inconclusive otherwise.
ToleranceVerdicts judge_claims(const SeedTable& table, double tolerance,
                               const VerdictOptions& options = {});

// The tolerances a study reports: the primary one, then ½× and 2× it (deduplicated).
std::vector<double> report_tolerances(double primary);

}  // namespace specopt
