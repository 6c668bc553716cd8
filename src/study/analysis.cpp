// Study analysis: aggregation per variant and lr, stable ranges, the claim verdicts at each
// report tolerance (specopt/study/verdict.h), and the paper's reference table as run results.
#include "specopt/study/analysis.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>


#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>


namespace specopt {

namespace fs = std::filesystem;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
const double kNaN = std::numeric_limits<double>::quiet_NaN();

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Mean and sample standard deviation of a cell; +inf/NaN when a seed diverged.
void summarise_cell(LrCell& cell) {
  if (cell.losses.empty()) {
    cell.mean = kNaN;
    cell.std = kNaN;
    return;
  }
  if (cell.n_diverged > 0) {
    cell.mean = kInf;
    cell.std = kNaN;
    return;
  }
  const double n = static_cast<double>(cell.losses.size());
  double sum = 0.0;
  for (const auto& [seed, loss] : cell.losses) sum += loss;
  cell.mean = sum / n;
  double ss = 0.0;
  for (const auto& [seed, loss] : cell.losses) ss += (loss - cell.mean) * (loss - cell.mean);
  cell.std = n > 1 ? std::sqrt(ss / (n - 1)) : 0.0;
}

}  // namespace

double best_mean(const VariantResult& v) { return v.best >= 0 ? v.cells[v.best].mean : kInf; }
double best_lr(const VariantResult& v) { return v.best >= 0 ? v.cells[v.best].lr : kNaN; }

SeedTable seed_table(const StudyAnalysis& a) {
  SeedTable t;
  std::set<int64_t> seeds;
  for (const auto& v : a.variants)
    for (const auto& c : v.cells)
      for (const auto& [seed, loss] : c.losses) seeds.insert(seed);
  t.seeds.assign(seeds.begin(), seeds.end());
  for (const auto& v : a.variants) {
    VariantGrid g;
    g.variant = v.variant;
    g.family = v.family;
    g.p = v.p;
    for (const auto& c : v.cells) {
      g.lrs.push_back(c.lr);
      std::vector<double> row;
      for (int64_t seed : t.seeds) {
        const auto it = c.losses.find(seed);
        row.push_back(it == c.losses.end() ? kNaN : it->second);
      }
      g.loss.push_back(std::move(row));
    }
    t.variants.push_back(std::move(g));
  }
  return t;
}

namespace {

// The run results of one variant beside its cells: throughputs and spectral shares of the
// finished runs (for the medians).
struct VariantRuns {
  std::vector<double> throughput, share;
};

// The cell of `v` at lr (a new one when the grid point has no result yet).
LrCell& cell_at(VariantResult& v, double lr) {
  auto it = std::find_if(v.cells.begin(), v.cells.end(), [&](const LrCell& c) { return c.lr == lr; });
  if (it != v.cells.end()) return *it;
  LrCell cell;
  cell.lr = lr;
  v.cells.push_back(cell);
  return v.cells.back();
}

// Counts run `r` into its variant's cell and the study's totals.
void add_result(StudyAnalysis& a, VariantResult& v, VariantRuns& runs, const RunResult& r) {
  LrCell& cell = cell_at(v, r.run.lr);
  ++a.runs_total;
  if (r.status == RunStatus::kMissing) {
    ++cell.n_missing;
    ++a.runs_missing;
    return;
  }
  TORCH_CHECK(!cell.losses.count(r.run.seed), "two results for ", r.run.name);
  if (r.status == RunStatus::kDiverged) {
    cell.losses[r.run.seed] = kInf;
    ++cell.n_diverged;
    ++v.diverged_runs;
    ++a.runs_diverged;
    return;
  }
  cell.losses[r.run.seed] = r.final_val_loss;
  ++a.runs_finished;
  if (r.throughput > 0) {
    runs.throughput.push_back(r.throughput);
    v.throughput_unit = r.throughput_unit;
  }
  runs.share.push_back(r.spectral_share);
}

// Cells in lr order with their statistics, the best lr and the medians over finished runs.
void summarise_variant(VariantResult& v, const VariantRuns& runs) {
  std::sort(v.cells.begin(), v.cells.end(), [](const LrCell& x, const LrCell& y) { return x.lr < y.lr; });
  for (auto& cell : v.cells) summarise_cell(cell);
  for (size_t k = 0; k < v.cells.size(); ++k) {
    const double m = v.cells[k].mean;
    if (std::isfinite(m) && (v.best < 0 || m < v.cells[v.best].mean)) v.best = static_cast<int64_t>(k);
  }
  v.best_at_edge = v.best >= 0 && v.cells.size() >= 2 &&
                   (v.best == 0 || v.best + 1 == static_cast<int64_t>(v.cells.size()));
  v.throughput = median(runs.throughput);
  v.spectral_share = median(runs.share);
}

// Stable cells (mean ≤ threshold, no seed diverged) and the contiguous stable run around the
// best lr.
void mark_stable_range(VariantResult& v, double threshold) {
  for (auto& cell : v.cells)
    cell.stable = std::isfinite(cell.mean) && cell.n_diverged == 0 && cell.mean <= threshold;
  if (v.best < 0 || !v.cells[v.best].stable) return;
  int64_t lo = v.best, hi = v.best;
  while (lo > 0 && v.cells[lo - 1].stable) --lo;
  while (hi + 1 < static_cast<int64_t>(v.cells.size()) && v.cells[hi + 1].stable) ++hi;
  v.stable_points = hi - lo + 1;
  v.stable_lo = v.cells[lo].lr;
  v.stable_hi = v.cells[hi].lr;
  v.stable_decades = std::log10(v.stable_hi / v.stable_lo);
}

}  // namespace

StudyAnalysis analyze_study(const std::vector<RunResult>& results,
                            const std::vector<std::string>& variant_order, double tolerance,
                            const VerdictOptions& options) {
  TORCH_CHECK(std::isfinite(tolerance) && tolerance >= 0, "stable tolerance must be >= 0, got ",
              tolerance);
  StudyAnalysis a;
  a.tolerance = tolerance;
  for (const auto& name : variant_order) {
    const Variant var = parse_variant(name);
    VariantResult v;
    v.variant = var.name;
    v.family = var.family;
    v.p = var.p;
    a.variants.push_back(std::move(v));
  }
  auto index_of = [&](const std::string& name) {
    const std::string canon = parse_variant(name).name;
    for (size_t i = 0; i < a.variants.size(); ++i)
      if (a.variants[i].variant == canon) return i;
    TORCH_CHECK(false, "run result for variant '", name, "' which is not in the study's variants");
  };
  std::vector<VariantRuns> runs(a.variants.size());
  for (const auto& r : results) {
    const size_t i = index_of(r.run.variant);
    add_result(a, a.variants[i], runs[i], r);
  }

  a.reference_level = kInf;
  for (size_t i = 0; i < a.variants.size(); ++i) {
    summarise_variant(a.variants[i], runs[i]);
    a.reference_level = std::min(a.reference_level, best_mean(a.variants[i]));
  }
  if (!std::isfinite(a.reference_level)) a.reference_level = kNaN;
  for (auto& v : a.variants) mark_stable_range(v, (1.0 + tolerance) * a.reference_level);

  const SeedTable table = seed_table(a);
  for (double t : report_tolerances(tolerance)) a.verdicts.push_back(judge_claims(table, t, options));
  a.claims = a.verdicts.front().claims;
  return a;
}

// ------------------------------------------------------------- reference ---

namespace {

nlohmann::json read_reference(const std::string& path) {
  TORCH_CHECK(fs::exists(path), "reference file '", path, "' does not exist");
  nlohmann::json j;
  try {
    std::ifstream in(path);
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "malformed reference file '", path, "': ", e.what());
  }
  TORCH_CHECK(j.is_object() && j.contains("val_loss") && j["val_loss"].is_object(),
              "reference file '", path, "' has no \"val_loss\" object");
  return j;
}

}  // namespace

std::vector<std::string> reference_variants(const std::string& path) {
  const auto j = read_reference(path);
  std::vector<std::string> names;
  // Table order (Adam, AdamS, ..., mSGDZ) rather than the JSON's key order.
  for (const auto& v : named_variants())
    if (j["val_loss"].contains(v.name)) names.push_back(v.name);
  // Then any other spelling parse_variant() accepts ("adam:p=0.3").
  for (const auto& [k, _] : j["val_loss"].items()) {
    const std::string name = parse_variant(k).name;
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  return names;
}

std::vector<RunResult> reference_results(const std::string& path) {
  const auto j = read_reference(path);
  std::vector<RunResult> out;
  for (const auto& [variant, grid] : j["val_loss"].items()) {
    TORCH_CHECK(grid.is_object(), "reference file '", path, "': val_loss.", variant,
                " must map learning rates to losses");
    for (const auto& [lr_text, loss] : grid.items()) {
      RunResult r;
      char* end = nullptr;
      r.run.lr = std::strtod(lr_text.c_str(), &end);
      TORCH_CHECK(end && *end == '\0' && r.run.lr > 0, "reference file '", path, "': val_loss.",
                  variant, " has a bad learning rate key '", lr_text, "'");
      r.run.variant = parse_variant(variant).name;
      r.run.seed = 0;
      r.run.name = run_name(r.run.variant, r.run.lr, 0);
      if (loss.is_null()) {
        r.status = RunStatus::kDiverged;
        r.final_val_loss = kInf;
      } else {
        TORCH_CHECK(loss.is_number(), "reference file '", path, "': val_loss.", variant, ".",
                    lr_text, " must be a number or null");
        r.status = RunStatus::kFinished;
        r.final_val_loss = loss.get<double>();
      }
      r.best_val_loss = r.final_val_loss;
      out.push_back(r);
    }
  }
  return out;
}

}  // namespace specopt
