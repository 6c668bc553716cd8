// The claim verdicts of a study: per-seed stable widths, bootstrap intervals over seeds, and
// supported / contradicted / inconclusive (definitions in specopt/study/verdict.h).
#include "specopt/study/verdict.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

namespace specopt {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

double mean_of(const std::vector<double>& v) {
  double s = 0.0;
  int64_t n = 0;
  for (double x : v)
    if (!std::isnan(x)) s += x, ++n;
  return n ? s / static_cast<double>(n) : kNaN;
}

// Mean over seeds of a cell (+inf if a seed diverged, NaN if none has a result) and its sample
// standard deviation.
void cell_stats(const std::vector<double>& losses, double* mean, double* sd) {
  std::vector<double> have;
  for (double x : losses)
    if (!std::isnan(x)) have.push_back(x);
  if (have.empty()) {
    *mean = kNaN, *sd = kNaN;
    return;
  }
  for (double x : have)
    if (std::isinf(x)) {
      *mean = kInf, *sd = kNaN;
      return;
    }
  *mean = mean_of(have);
  double ss = 0.0;
  for (double x : have) ss += (x - *mean) * (x - *mean);
  *sd = have.size() > 1 ? std::sqrt(ss / static_cast<double>(have.size() - 1)) : 0.0;
}

std::string fmt_interval(const Interval& i, const char* unit = "") {
  return fmt::format("{:+.2f}{} [{:+.2f}, {:+.2f}]", i.estimate, unit, i.lo, i.hi);
}

std::string fmt_loss_interval(const Interval& i) {
  return fmt::format("{:+.4f} [{:+.4f}, {:+.4f}]", i.estimate, i.lo, i.hi);
}

// Supported if the interval lies above `above`, contradicted if below `below`.
Verdict direction(const Interval& i, double above, double below) {
  if (i.lo > above) return Verdict::kSupported;
  if (i.hi < below) return Verdict::kContradicted;
  return Verdict::kInconclusive;
}

// The bracketing and one-seed rules on top of the interval's verdict.
void finish(ClaimEvidence& c, const std::vector<const WidthEstimate*>& involved, int64_t n_seeds) {
  for (const auto* w : involved)
    if (!w->bracketed) c.widen.push_back(w->variant);
  c.verdict = c.point_verdict;
  if (n_seeds < 2) {
    c.verdict = Verdict::kInconclusive;
    c.evidence += fmt::format(" One seed: no interval and no noise estimate, so no verdict beyond "
                              "'inconclusive'; the point estimate alone says '{}'.",
                              verdict_name(c.point_verdict));
  }
  if (!c.widen.empty()) {
    c.verdict = Verdict::kInconclusive;
    std::string names;
    for (const auto& v : c.widen) names += (names.empty() ? "" : ", ") + v;
    c.evidence += fmt::format(" Not bracketed: widen the grid of {} (the interval alone says '{}').",
                              names, verdict_name(c.point_verdict));
  }
}

std::vector<double> family_mean_per_seed(const std::vector<const WidthEstimate*>& members,
                                         size_t n_seeds) {
  std::vector<double> out(n_seeds, 0.0);
  for (size_t s = 0; s < n_seeds; ++s) {
    for (const auto* w : members) out[s] += w->per_seed[s];
    out[s] /= static_cast<double>(members.size());
  }
  return out;
}

std::string width_list(const std::vector<const WidthEstimate*>& ws) {
  std::string out;
  for (const auto* w : ws)
    out += fmt::format("{}{} {:.2f} [{:.2f}, {:.2f}]", out.empty() ? "" : ", ", w->variant,
                       w->width.estimate, w->width.lo, w->width.hi);
  return out;
}

}  // namespace

std::string verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kSupported: return "supported";
    case Verdict::kContradicted: return "contradicted";
    case Verdict::kInconclusive: return "inconclusive";
    case Verdict::kNotTested: return "not tested";
  }
  return "?";
}

Interval bootstrap_mean(const std::vector<double>& per_seed, const VerdictOptions& options) {
  TORCH_CHECK(options.resamples >= 1, "bootstrap resamples must be >= 1, got ", options.resamples);
  TORCH_CHECK(options.confidence > 0 && options.confidence < 1,
              "bootstrap confidence must be in (0, 1), got ", options.confidence);
  std::vector<double> x;
  for (double v : per_seed)
    if (!std::isnan(v)) x.push_back(v);
  Interval out;
  if (x.empty()) {
    out.estimate = out.lo = out.hi = kNaN;
    return out;
  }
  out.estimate = mean_of(x);
  std::mt19937_64 rng(options.rng_seed);
  const uint64_t n = x.size();
  std::vector<double> means(static_cast<size_t>(options.resamples));
  for (auto& m : means) {
    double s = 0.0;
    for (uint64_t k = 0; k < n; ++k) s += x[rng() % n];
    m = s / static_cast<double>(n);
  }
  std::sort(means.begin(), means.end());
  // Percentile interval: the order statistics at (1 ∓ confidence) / 2.
  const double a = (1.0 - options.confidence) / 2.0;
  const auto at = [&](double q) {
    const auto i = static_cast<size_t>(std::floor(q * static_cast<double>(means.size() - 1) + 0.5));
    return means[std::min(i, means.size() - 1)];
  };
  out.lo = at(a);
  out.hi = at(1.0 - a);
  return out;
}

double stable_width(const std::vector<double>& lrs, const std::vector<double>& losses,
                    double threshold, bool* touches_edge) {
  TORCH_CHECK(lrs.size() == losses.size(), "stable_width: ", lrs.size(), " lrs but ",
              losses.size(), " losses");
  if (touches_edge) *touches_edge = false;
  int64_t best = -1;
  for (size_t k = 0; k < losses.size(); ++k)
    if (std::isfinite(losses[k]) && (best < 0 || losses[k] < losses[best])) best = static_cast<int64_t>(k);
  const auto stable = [&](int64_t k) { return std::isfinite(losses[k]) && losses[k] <= threshold; };
  if (best < 0 || !stable(best)) return 0.0;
  const auto n = static_cast<int64_t>(lrs.size());
  int64_t lo = best, hi = best;
  while (lo > 0 && stable(lo - 1)) --lo;
  while (hi + 1 < n && stable(hi + 1)) ++hi;
  if (touches_edge) *touches_edge = n > 1 && (lo == 0 || hi == n - 1);
  if (n == 1) return 0.0;
  // Each point covers the log-lr interval halfway to its neighbours; mirrored at the ends.
  const auto l = [&](int64_t k) { return std::log10(lrs[k]); };
  const double lo_edge = lo > 0 ? 0.5 * (l(lo - 1) + l(lo)) : l(0) - 0.5 * (l(1) - l(0));
  const double hi_edge = hi < n - 1 ? 0.5 * (l(hi) + l(hi + 1)) : l(n - 1) + 0.5 * (l(n - 1) - l(n - 2));
  return hi_edge - lo_edge;
}

std::vector<double> report_tolerances(double primary) {
  std::vector<double> out = {primary};
  for (double t : {primary / 2, primary * 2})
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  return out;
}

namespace {

// L*_s: the best loss of seed s anywhere in the study (+inf where seed s has none).
std::vector<double> seed_levels(const SeedTable& table) {
  const size_t n_seeds = table.seeds.size();
  std::vector<double> level(n_seeds, kInf);
  for (const auto& v : table.variants) {
    TORCH_CHECK(v.loss.size() == v.lrs.size(), "variant ", v.variant, ": ", v.lrs.size(),
                " lrs but ", v.loss.size(), " loss rows");
    for (const auto& row : v.loss) {
      TORCH_CHECK(row.size() == n_seeds, "variant ", v.variant, ": a loss row has ", row.size(),
                  " seeds, the table ", n_seeds);
      for (size_t s = 0; s < n_seeds; ++s)
        if (std::isfinite(row[s])) level[s] = std::min(level[s], row[s]);
    }
  }
  return level;
}

// Why the grid of `v` does not bracket its best lr w.best ("" when it does): see verdict.h.
std::string bracket_note(const VariantGrid& v, const WidthEstimate& w, const std::vector<double>& means,
                         double tolerance, bool edge_in_a_seed) {
  const size_t n_lr = v.lrs.size();
  const auto risen = [&](size_t k) {
    return std::isinf(means[k]) || means[k] > (1.0 + tolerance) * w.best_mean;
  };
  if (w.best == 0 || w.best + 1 == static_cast<int64_t>(n_lr))
    return fmt::format("best lr {:g} is on the grid edge", v.lrs[w.best]);
  if (!risen(0)) return fmt::format("no clear rise at the smallest lr {:g}", v.lrs.front());
  if (!risen(n_lr - 1)) return fmt::format("no clear rise at the largest lr {:g}", v.lrs.back());
  if (edge_in_a_seed) return "a seed's stable range reaches the grid end";
  return "";
}

// One variant's per-seed stable widths (threshold (1 + tolerance) · L*_s), their interval, its
// best lr by seed means and the bracketing.
WidthEstimate estimate_width(const VariantGrid& v, const std::vector<double>& level, double tolerance,
                             const VerdictOptions& options) {
  WidthEstimate w;
  w.variant = v.variant;
  w.family = v.family;
  w.p = v.p;
  const size_t n_lr = v.lrs.size();
  bool edge_in_a_seed = false;
  for (size_t s = 0; s < level.size(); ++s) {
    std::vector<double> col(n_lr);
    for (size_t k = 0; k < n_lr; ++k) col[k] = v.loss[k][s];
    bool edge = false;
    w.per_seed.push_back(std::isfinite(level[s])
                             ? stable_width(v.lrs, col, (1.0 + tolerance) * level[s], &edge)
                             : 0.0);
    edge_in_a_seed |= edge;
  }
  w.width = bootstrap_mean(w.per_seed, options);
  std::vector<double> means(n_lr), sds(n_lr);
  for (size_t k = 0; k < n_lr; ++k) {
    cell_stats(v.loss[k], &means[k], &sds[k]);
    if (std::isfinite(means[k]) && (w.best < 0 || means[k] < means[w.best])) w.best = static_cast<int64_t>(k);
  }
  if (w.best < 0) {
    w.bracket_note = "no lr without a diverged or missing seed";
    return w;
  }
  w.best_mean = means[w.best];
  w.best_std = sds[w.best];
  w.best_loss = bootstrap_mean(v.loss[w.best], options);
  w.bracket_note = bracket_note(v, w, means, tolerance, edge_in_a_seed);
  w.bracketed = w.bracket_note.empty();
  return w;
}

// The widths the claims compare, by family and p.
struct WidthGroups {
  std::vector<const WidthEstimate*> adam, sgd, sgd_compressed, zeros;
  const WidthEstimate* sgd_base = nullptr;
  const WidthEstimate* adam_base = nullptr;
};

WidthGroups group_widths(const std::vector<WidthEstimate>& widths) {
  WidthGroups g;
  for (const auto& w : widths) {
    (w.family == Family::kAdam ? g.adam : g.sgd).push_back(&w);
    if (w.family == Family::kSGD && w.p < 1.0) g.sgd_compressed.push_back(&w);
    if (w.family == Family::kSGD && w.p == 1.0) g.sgd_base = &w;
    if (w.family == Family::kAdam && w.p == 1.0) g.adam_base = &w;
    if (w.p == 0.0) g.zeros.push_back(&w);
  }
  return g;
}

// Claim 1: per seed, mean width of the Adam variants − mean width of the mSGD variants.
ClaimEvidence claim_rms_stability(const ToleranceVerdicts& out, const WidthGroups& g,
                                  const VerdictOptions& options) {
  ClaimEvidence c;
  c.number = 1;
  c.claim = "RMS-normalised updates (Adam family) are more stable across learning rates than "
            "first-moment updates (mSGD family).";
  c.statistic = "mean stable width, Adam family − mSGD family (decades)";
  const auto n_seeds = static_cast<size_t>(out.n_seeds);
  if (g.adam.empty() || g.sgd.empty() || n_seeds == 0) {
    c.evidence = "needs at least one variant of each family.";
    return c;
  }
  const auto a = family_mean_per_seed(g.adam, n_seeds), b = family_mean_per_seed(g.sgd, n_seeds);
  std::vector<double> d(n_seeds);
  for (size_t s = 0; s < n_seeds; ++s) d[s] = a[s] - b[s];
  c.difference = bootstrap_mean(d, options);
  c.point_verdict = direction(c.difference, 0.0, 0.0);
  c.evidence = fmt::format(
      "Stable width (decades, mean over seeds [95 % interval]): Adam family {:.2f} [{:.2f}, "
      "{:.2f}], mSGD family {:.2f} [{:.2f}, {:.2f}]; difference {}. Per variant: {}; {}.",
      out.adam_family_width.estimate, out.adam_family_width.lo, out.adam_family_width.hi,
      out.sgd_family_width.estimate, out.sgd_family_width.lo, out.sgd_family_width.hi,
      fmt_interval(c.difference), width_list(g.adam), width_list(g.sgd));
  std::vector<const WidthEstimate*> involved = g.adam;
  involved.insert(involved.end(), g.sgd.begin(), g.sgd.end());
  finish(c, involved, out.n_seeds);
  return c;
}

// Claim 2: per seed, mean width of the mSGD variants with p < 1 − width of mSGD.
ClaimEvidence claim_compression_stabilises_sgd(const WidthGroups& g, size_t n_seeds,
                                               const VerdictOptions& options) {
  ClaimEvidence c;
  c.number = 2;
  c.claim = "Spectral compression (p < 1) strongly stabilises first-moment updates (mSGD).";
  c.statistic = "mean stable width of the mSGD variants with p < 1 − that of mSGD (decades)";
  if (!g.sgd_base || g.sgd_compressed.empty() || n_seeds == 0) {
    c.evidence = "needs mSGD and at least one mSGD variant with p < 1.";
    return c;
  }
  const auto minus_base = [&](const std::vector<double>& per_seed) {
    std::vector<double> d(n_seeds);
    for (size_t s = 0; s < n_seeds; ++s) d[s] = per_seed[s] - g.sgd_base->per_seed[s];
    return bootstrap_mean(d, options);
  };
  c.difference = minus_base(family_mean_per_seed(g.sgd_compressed, n_seeds));
  c.point_verdict = direction(c.difference, 0.0, 0.0);
  std::string each;
  for (const auto* w : g.sgd_compressed)
    each += fmt::format("{}{} − mSGD {}", each.empty() ? "" : ", ", w->variant,
                        fmt_interval(minus_base(w->per_seed)));
  const Interval& base = g.sgd_base->width;
  c.evidence = fmt::format("Stable width (decades): mSGD {:.2f} [{:.2f}, {:.2f}]; {}. "
                           "Difference (p < 1 mean − mSGD) {}; per variant: {}.",
                           base.estimate, base.lo, base.hi, width_list(g.sgd_compressed),
                           fmt_interval(c.difference), each);
  std::vector<const WidthEstimate*> involved = g.sgd_compressed;
  involved.push_back(g.sgd_base);
  finish(c, involved, static_cast<int64_t>(n_seeds));
  return c;
}

// Claim 3, one p = 0 variant z against Adam at their best lrs: d_s = loss(Adam) − loss(z), its
// interval against the noise margin m (verdict.h).
struct ZeroVsAdam {
  Interval difference;
  double margin = 0.0;
  Verdict better = Verdict::kInconclusive;  // supported = z outperforms Adam
  std::string text;
};

ZeroVsAdam compare_zero_with_adam(const VariantGrid& adam_grid, const WidthEstimate& adam,
                                  const VariantGrid& zero_grid, const WidthEstimate& z,
                                  const VerdictOptions& options) {
  ZeroVsAdam out;
  const size_t n_seeds = adam.per_seed.size();
  std::vector<double> d(n_seeds);
  for (size_t s = 0; s < n_seeds; ++s) d[s] = adam_grid.loss[adam.best][s] - zero_grid.loss[z.best][s];
  out.difference = bootstrap_mean(d, options);
  out.margin = std::sqrt(0.5 * (adam.best_std * adam.best_std + z.best_std * z.best_std));
  out.better = direction(out.difference, out.margin, out.margin);
  out.text = fmt::format(
      "{} at lr {:g}: {:.4f} ± {:.4f} vs Adam at lr {:g}: {:.4f} ± {:.4f}; Adam − {} = {} "
      "against a noise margin of {:.4f} → {}",
      z.variant, zero_grid.lrs[z.best], z.best_mean, z.best_std, adam_grid.lrs[adam.best],
      adam.best_mean, adam.best_std, z.variant, fmt_loss_interval(out.difference), out.margin,
      out.better == Verdict::kSupported      ? "outperforms Adam"
      : out.better == Verdict::kContradicted ? "does not outperform Adam"
                                             : "undecided");
  return out;
}

// Claim 3: p = 0 does not consistently outperform Adam.
ClaimEvidence claim_zero_not_better(const SeedTable& table, const ToleranceVerdicts& out,
                                    const WidthGroups& g, const VerdictOptions& options) {
  ClaimEvidence c;
  c.number = 3;
  c.claim = "p = 0 (Muon) does not consistently outperform Adam.";
  c.statistic = "per p = 0 variant: mean over seeds of loss(Adam) − loss(p = 0) at the best lrs "
                "(> 0: p = 0 better), against the noise margin";
  if (!g.adam_base || g.zeros.empty() || g.adam_base->best < 0 || out.n_seeds == 0) {
    c.evidence = "needs Adam (with a finite result) and a p = 0 variant.";
    return c;
  }
  const auto grid_of = [&](const WidthEstimate* w) -> const VariantGrid& {
    return table.variants[w - out.widths.data()];
  };
  bool any_better = false, all_not_better = true;
  std::vector<const WidthEstimate*> involved = {g.adam_base};
  double closest = -kInf;  // the p = 0 variant nearest to outperforming Adam is the headline
  std::string parts;
  for (const auto* z : g.zeros) {
    involved.push_back(z);
    const std::string sep = parts.empty() ? "" : "; ";
    if (z->best < 0) {
      all_not_better = false;
      parts += sep + z->variant + " has no finite result";
      continue;
    }
    const ZeroVsAdam r = compare_zero_with_adam(grid_of(g.adam_base), *g.adam_base, grid_of(z), *z, options);
    any_better |= r.better == Verdict::kSupported;
    all_not_better &= r.better == Verdict::kContradicted;
    if (r.difference.estimate - r.margin > closest) {
      closest = r.difference.estimate - r.margin;
      c.difference = r.difference;
      c.margin = r.margin;
    }
    parts += sep + r.text;
  }
  c.point_verdict = any_better ? Verdict::kContradicted
                               : (all_not_better ? Verdict::kSupported : Verdict::kInconclusive);
  c.evidence = parts + ".";
  finish(c, involved, out.n_seeds);
  return c;
}

}  // namespace

ToleranceVerdicts judge_claims(const SeedTable& table, double tolerance,
                               const VerdictOptions& options) {
  TORCH_CHECK(std::isfinite(tolerance) && tolerance >= 0, "stable tolerance must be >= 0, got ",
              tolerance);
  const size_t n_seeds = table.seeds.size();
  ToleranceVerdicts out;
  out.tolerance = tolerance;
  out.n_seeds = static_cast<int64_t>(n_seeds);
  const std::vector<double> level = seed_levels(table);
  for (const auto& v : table.variants) out.widths.push_back(estimate_width(v, level, tolerance, options));

  const WidthGroups g = group_widths(out.widths);
  if (!g.adam.empty()) out.adam_family_width = bootstrap_mean(family_mean_per_seed(g.adam, n_seeds), options);
  if (!g.sgd.empty()) out.sgd_family_width = bootstrap_mean(family_mean_per_seed(g.sgd, n_seeds), options);
  out.claims.push_back(claim_rms_stability(out, g, options));
  out.claims.push_back(claim_compression_stabilises_sgd(g, n_seeds, options));
  out.claims.push_back(claim_zero_not_better(table, out, g, options));
  return out;
}

}  // namespace specopt
