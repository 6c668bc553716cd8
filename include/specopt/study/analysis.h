// The analysis of a study's run results: per variant and lr cells (mean, std, stable), best lrs,
// stable ranges, and the claim verdicts (specopt/study/verdict.h) at each report tolerance.
//
//   StudyAnalysis a = analyze_study(collect_results(cfg), cfg.variants, cfg.stable_tolerance);
#pragma once

#include "specopt/study/study.h"
#include "specopt/core/variants.h"
#include "specopt/study/verdict.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace specopt {

// ------------------------------------------------------------- analysis ---
//
// Definitions (also in docs/study.md):
//  * cell (variant, lr): over its seeds with a summary, mean and sample standard deviation
//    (n - 1 denominator; 0 for one seed) of the final validation loss. If any seed diverged the
//    cell's mean is +inf (std NaN) and the cell is marked diverged.
//  * best lr of a variant: the lr of its smallest finite cell mean.
//  * reference level L*: the smallest best mean over all variants of the study.
//  * stable cell: no seed diverged and mean ≤ (1 + tolerance) · L*.
//  * stable range of a variant: the contiguous run of stable grid points around its best lr
//    (empty when the best cell itself is not stable). Its width is reported as the number of
//    grid points and as log10(lr_max / lr_min) in decades (0 for one point). Widths are lower
//    bounds: a range that touches the end of the grid may extend further.

struct LrCell {
  double lr = 0.0;
  std::map<int64_t, double> losses;   // seed → final val loss (+inf = diverged)
  int64_t n_missing = 0;
  int64_t n_diverged = 0;
  double mean = 0.0;                  // +inf if any seed diverged; NaN if no seed has a result
  double std = 0.0;
  bool stable = false;
};

struct VariantResult {
  std::string variant;
  Family family = Family::kAdam;
  double p = 1.0;
  std::vector<LrCell> cells;          // ascending lr
  int64_t best = -1;                  // index into cells (-1: no finite cell)
  bool best_at_edge = false;          // best lr is the smallest or largest of ≥ 2 grid points:
                                      // the optimum may lie outside the grid
  int64_t stable_points = 0;
  double stable_lo = 0.0, stable_hi = 0.0;   // lr range of the stable run (valid if points > 0)
  double stable_decades = 0.0;        // log10(stable_hi / stable_lo)
  int64_t diverged_runs = 0;
  double throughput = 0.0;            // median over finished runs (0 = unknown)
  std::string throughput_unit;
  double spectral_share = 0.0;        // median over finished runs
};

// The best cell's mean (+inf when no cell is finite) and lr (NaN then).
double best_mean(const VariantResult& v);
double best_lr(const VariantResult& v);

struct StudyAnalysis {
  std::vector<VariantResult> variants;   // in the given variant order
  double reference_level = 0.0;          // L* (NaN if no finite cell)
  double tolerance = 0.0;
  // The claim verdicts (specopt/study/verdict.h) at report_tolerances(tolerance): the primary
  // tolerance first. `claims` is verdicts.front().claims.
  std::vector<ToleranceVerdicts> verdicts;
  std::vector<ClaimEvidence> claims;
  int64_t runs_total = 0, runs_finished = 0, runs_diverged = 0, runs_missing = 0;
};

// Aggregates run results (any order) per variant and lr (the cell table above), then judges the
// three claims from the per-seed results with judge_claims() (specopt/study/verdict.h) at each of
// report_tolerances(tolerance).
StudyAnalysis analyze_study(const std::vector<RunResult>& results,
                            const std::vector<std::string>& variant_order, double tolerance,
                            const VerdictOptions& options = {});

// The per-seed table judge_claims() reads: seeds = every seed with a result, losses of missing
// runs NaN, of diverged runs +inf.
SeedTable seed_table(const StudyAnalysis& analysis);

// The paper's published final validation losses (reference JSON, one seed, null = diverged)
// as run results, so the same analysis applies. Unknown/malformed file → c10::Error naming it.
std::vector<RunResult> reference_results(const std::string& path);
std::vector<std::string> reference_variants(const std::string& path);

}  // namespace specopt
