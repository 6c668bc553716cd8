// Study analysis (aggregation, stable ranges, the three claims) and the report:
// report.md, CSV/JSON tables, and the plots drawn by scripts/plot_study.py.
#include "specopt/study/study.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>


#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
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

std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "; " : "") + items[i];
  return out;
}

bool has_finite_best(const VariantResult& v) { return v.best >= 0; }
double best_mean(const VariantResult& v) { return has_finite_best(v) ? v.cells[v.best].mean : kInf; }
double best_lr(const VariantResult& v) { return has_finite_best(v) ? v.cells[v.best].lr : kNaN; }

std::string fmt_loss(double x) {
  if (std::isnan(x)) return "n/a";
  if (std::isinf(x)) return "inf";
  return fmt::format("{:.4f}", x);
}

std::string describe_width(const VariantResult& v) {
  if (v.stable_points == 0) return fmt::format("{}: no stable lr", v.variant);
  return fmt::format("{}: {:.2f} decades ({} pts, lr {}..{})", v.variant, v.stable_decades,
                     v.stable_points, lr_label(v.stable_lo), lr_label(v.stable_hi));
}

// Wider stable range: decades first, grid points second. Returns +1 / 0 / -1.
int compare_width(double decades_a, double points_a, double decades_b, double points_b) {
  const double eps = 1e-9;
  if (decades_a > decades_b + eps) return 1;
  if (decades_a < decades_b - eps) return -1;
  if (points_a > points_b + eps) return 1;
  if (points_a < points_b - eps) return -1;
  return 0;
}

const VariantResult* find_variant(const StudyAnalysis& a, Family family, double p) {
  for (const auto& v : a.variants)
    if (v.family == family && v.p == p) return &v;
  return nullptr;
}

ClaimVerdict claim_rms_vs_first_moment(const StudyAnalysis& a) {
  ClaimVerdict c;
  c.number = 1;
  c.claim = "RMS-normalised updates (Adam family) are more stable across learning rates than "
            "first-moment updates (mSGD family).";
  struct Fam {
    double decades = 0, points = 0;
    int64_t diverged = 0, runs = 0, n = 0;
    std::vector<std::string> widths;
  } fam[2];
  for (const auto& v : a.variants) {
    Fam& f = fam[v.family == Family::kAdam ? 0 : 1];
    f.decades += v.stable_decades;
    f.points += static_cast<double>(v.stable_points);
    f.diverged += v.diverged_runs;
    for (const auto& cell : v.cells) f.runs += static_cast<int64_t>(cell.losses.size());
    f.n += 1;
    f.widths.push_back(describe_width(v));
  }
  if (fam[0].n == 0 || fam[1].n == 0) {
    c.verdict = Verdict::kNotTested;
    c.evidence = "needs at least one variant of each family.";
    return c;
  }
  for (auto& f : fam) {
    f.decades /= static_cast<double>(f.n);
    f.points /= static_cast<double>(f.n);
  }
  const int width = compare_width(fam[0].decades, fam[0].points, fam[1].decades, fam[1].points);
  const int div = fam[0].diverged < fam[1].diverged ? 1 : (fam[0].diverged > fam[1].diverged ? -1 : 0);
  const int pro = (width > 0) + (div > 0), con = (width < 0) + (div < 0);
  // No criterion favouring the Adam family is no evidence for the claim.
  c.verdict = pro == 0 ? Verdict::kFails : (con == 0 ? Verdict::kHolds : Verdict::kPartly);
  c.evidence = fmt::format(
      "Mean stable width: Adam family {:.2f} decades ({:.1f} grid points), mSGD family {:.2f} "
      "decades ({:.1f} points); diverged runs: Adam family {}/{}, mSGD family {}/{}. Per variant: "
      "{}; {}.",
      fam[0].decades, fam[0].points, fam[1].decades, fam[1].points, fam[0].diverged, fam[0].runs,
      fam[1].diverged, fam[1].runs, join_list(fam[0].widths), join_list(fam[1].widths));
  return c;
}

ClaimVerdict claim_compression_stabilises_sgd(const StudyAnalysis& a) {
  ClaimVerdict c;
  c.number = 2;
  c.claim = "Spectral compression (p < 1) strongly stabilises first-moment updates (mSGD).";
  const VariantResult* base = find_variant(a, Family::kSGD, 1.0);
  std::vector<const VariantResult*> others;
  for (const auto& v : a.variants)
    if (v.family == Family::kSGD && v.p < 1.0) others.push_back(&v);
  if (!base || others.empty()) {
    c.verdict = Verdict::kNotTested;
    c.evidence = "needs mSGD and at least one mSGD variant with p < 1.";
    return c;
  }
  int64_t stabilised = 0;
  std::vector<std::string> parts;
  for (const auto* v : others) {
    const int w = compare_width(v->stable_decades, static_cast<double>(v->stable_points),
                                base->stable_decades, static_cast<double>(base->stable_points));
    const bool better = w > 0 || (w == 0 && v->diverged_runs < base->diverged_runs);
    stabilised += better;
    parts.push_back(fmt::format("{} (best {} at lr {}, {} diverged runs) — {}", describe_width(*v),
                                fmt_loss(best_mean(*v)), lr_label(best_lr(*v)), v->diverged_runs,
                                better ? "more stable than mSGD" : "not more stable than mSGD"));
  }
  const auto n = static_cast<int64_t>(others.size());
  c.verdict = stabilised == n ? Verdict::kHolds : stabilised > 0 ? Verdict::kPartly : Verdict::kFails;
  c.evidence = fmt::format("{} (best {} at lr {}, {} diverged runs) against {} of {} p < 1 variants "
                           "more stable: {}.",
                           describe_width(*base), fmt_loss(best_mean(*base)),
                           lr_label(best_lr(*base)), base->diverged_runs, stabilised, n,
                           join_list(parts));
  return c;
}

ClaimVerdict claim_p0_not_better_than_adam(const StudyAnalysis& a) {
  ClaimVerdict c;
  c.number = 3;
  c.claim = "p = 0 (Muon) does not consistently outperform Adam.";
  const VariantResult* adam = find_variant(a, Family::kAdam, 1.0);
  std::vector<const VariantResult*> zeros;
  for (const auto& v : a.variants)
    if (v.p == 0.0) zeros.push_back(&v);
  if (!adam || zeros.empty() || !has_finite_best(*adam)) {
    c.verdict = Verdict::kNotTested;
    c.evidence = "needs Adam (with a finite result) and a p = 0 variant.";
    return c;
  }
  const auto& adam_cell = adam->cells[adam->best];
  bool any_consistently_better = false;
  std::vector<std::string> parts;
  for (const auto* z : zeros) {
    if (!has_finite_best(*z)) {
      parts.push_back(fmt::format("{} has no finite result", z->variant));
      continue;
    }
    const auto& zc = z->cells[z->best];
    int64_t common = 0, wins = 0;
    for (const auto& [seed, loss] : zc.losses) {
      auto it = adam_cell.losses.find(seed);
      if (it == adam_cell.losses.end()) continue;
      ++common;
      wins += loss < it->second;
    }
    const bool consistently = common > 0 && wins == common;
    any_consistently_better |= consistently;
    parts.push_back(fmt::format("{} best {} ± {} at lr {} vs Adam {} ± {} at lr {}: lower in {} of "
                                "{} seeds{}",
                                z->variant, fmt_loss(zc.mean), fmt_loss(zc.std), lr_label(zc.lr),
                                fmt_loss(adam_cell.mean), fmt_loss(adam_cell.std),
                                lr_label(adam_cell.lr), wins, common,
                                consistently ? " (consistently better)" : ""));
  }
  c.verdict = any_consistently_better ? Verdict::kFails : Verdict::kHolds;
  c.evidence = join_list(parts) + ".";
  return c;
}

}  // namespace

std::string verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kHolds: return "holds";
    case Verdict::kPartly: return "partly holds";
    case Verdict::kFails: return "does not hold";
    case Verdict::kNotTested: return "not tested";
  }
  return "?";
}

StudyAnalysis analyze_study(const std::vector<RunResult>& results,
                            const std::vector<std::string>& variant_order, double tolerance) {
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
      if (a.variants[i].variant == canon) return static_cast<int64_t>(i);
    TORCH_CHECK(false, "run result for variant '", name, "' which is not in the study's variants");
  };

  std::vector<std::vector<double>> throughput(a.variants.size()), share(a.variants.size());
  for (const auto& r : results) {
    auto& v = a.variants[index_of(r.run.variant)];
    auto it = std::find_if(v.cells.begin(), v.cells.end(),
                           [&](const LrCell& c) { return c.lr == r.run.lr; });
    if (it == v.cells.end()) {
      LrCell cell;
      cell.lr = r.run.lr;
      v.cells.push_back(cell);
      it = std::prev(v.cells.end());
    }
    ++a.runs_total;
    switch (r.status) {
      case RunStatus::kMissing:
        ++it->n_missing;
        ++a.runs_missing;
        break;
      case RunStatus::kDiverged:
        TORCH_CHECK(!it->losses.count(r.run.seed), "two results for ", r.run.name);
        it->losses[r.run.seed] = kInf;
        ++it->n_diverged;
        ++v.diverged_runs;
        ++a.runs_diverged;
        break;
      case RunStatus::kFinished:
        TORCH_CHECK(!it->losses.count(r.run.seed), "two results for ", r.run.name);
        it->losses[r.run.seed] = r.final_val_loss;
        ++a.runs_finished;
        if (r.throughput > 0) {
          throughput[&v - a.variants.data()].push_back(r.throughput);
          v.throughput_unit = r.throughput_unit;
        }
        share[&v - a.variants.data()].push_back(r.spectral_share);
        break;
    }
  }

  a.reference_level = kInf;
  for (size_t i = 0; i < a.variants.size(); ++i) {
    auto& v = a.variants[i];
    std::sort(v.cells.begin(), v.cells.end(), [](const LrCell& x, const LrCell& y) { return x.lr < y.lr; });
    for (auto& cell : v.cells) summarise_cell(cell);
    for (size_t k = 0; k < v.cells.size(); ++k) {
      const double m = v.cells[k].mean;
      if (std::isfinite(m) && (v.best < 0 || m < v.cells[v.best].mean)) v.best = static_cast<int64_t>(k);
    }
    v.best_at_edge = v.best >= 0 && v.cells.size() >= 2 &&
                     (v.best == 0 || v.best + 1 == static_cast<int64_t>(v.cells.size()));
    a.reference_level = std::min(a.reference_level, best_mean(v));
    v.throughput = median(throughput[i]);
    v.spectral_share = median(share[i]);
  }
  if (!std::isfinite(a.reference_level)) a.reference_level = kNaN;

  // Stable cells and the contiguous stable run around each variant's best lr.
  const double threshold = (1.0 + tolerance) * a.reference_level;
  for (auto& v : a.variants) {
    for (auto& cell : v.cells)
      cell.stable = std::isfinite(cell.mean) && cell.n_diverged == 0 && cell.mean <= threshold;
    if (v.best < 0 || !v.cells[v.best].stable) continue;
    int64_t lo = v.best, hi = v.best;
    while (lo > 0 && v.cells[lo - 1].stable) --lo;
    while (hi + 1 < static_cast<int64_t>(v.cells.size()) && v.cells[hi + 1].stable) ++hi;
    v.stable_points = hi - lo + 1;
    v.stable_lo = v.cells[lo].lr;
    v.stable_hi = v.cells[hi].lr;
    v.stable_decades = std::log10(v.stable_hi / v.stable_lo);
  }

  a.claims = {claim_rms_vs_first_moment(a), claim_compression_stabilises_sgd(a),
              claim_p0_not_better_than_adam(a)};
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

// ---------------------------------------------------------------- report ---

namespace {

std::string csv_number(double x) {
  if (std::isnan(x)) return "";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return fmt::format("{:.6g}", x);
}

void write_results_csv(const StudyAnalysis& a, const fs::path& file) {
  std::ofstream f(file);
  TORCH_CHECK(f.good(), "cannot write ", file.string());
  f << "variant,family,p,lr,n_seeds,n_diverged,n_missing,mean_val_loss,std_val_loss,stable,best\n";
  for (const auto& v : a.variants)
    for (size_t k = 0; k < v.cells.size(); ++k) {
      const auto& c = v.cells[k];
      f << fmt::format("{},{},{},{},{},{},{},{},{},{},{}\n", v.variant, family_name(v.family), v.p,
                       lr_label(c.lr), c.losses.size(), c.n_diverged, c.n_missing,
                       csv_number(c.mean), csv_number(c.std), c.stable ? 1 : 0,
                       static_cast<int64_t>(k) == v.best ? 1 : 0);
    }
}

void write_runs_csv(const std::vector<RunResult>& results, const fs::path& file) {
  std::ofstream f(file);
  TORCH_CHECK(f.good(), "cannot write ", file.string());
  f << "run,variant,lr,seed,status,final_val_loss,best_val_loss,steps_done,throughput,"
       "throughput_unit,spectral_share,wall_s,final_val_accuracy\n";
  for (const auto& r : results) {
    const char* status = r.status == RunStatus::kMissing
                             ? "missing"
                             : (r.status == RunStatus::kDiverged ? "diverged" : "finished");
    const bool have = r.status != RunStatus::kMissing;
    f << fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{}\n", r.run.name, r.run.variant,
                     lr_label(r.run.lr), r.run.seed, status,
                     have ? csv_number(r.final_val_loss) : "", have ? csv_number(r.best_val_loss) : "",
                     r.steps_done, have ? csv_number(r.throughput) : "", r.throughput_unit,
                     have ? csv_number(r.spectral_share) : "", have ? csv_number(r.wall_s) : "",
                     std::isfinite(r.final_val_accuracy) ? csv_number(r.final_val_accuracy) : "");
  }
}

// Loss curves (metrics.jsonl) of every seed at each variant's best lr.
void write_curves_csv(const StudyAnalysis& a, const std::vector<RunResult>& results,
                      const fs::path& file) {
  std::ofstream f(file);
  TORCH_CHECK(f.good(), "cannot write ", file.string());
  f << "variant,lr,seed,step,train_loss,val_loss\n";
  for (const auto& v : a.variants) {
    if (v.best < 0) continue;
    const double lr = v.cells[v.best].lr;
    for (const auto& r : results) {
      if (r.run.variant != v.variant || r.run.lr != lr || r.status == RunStatus::kMissing) continue;
      std::ifstream in(fs::path(r.run.dir) / "metrics.jsonl");
      std::string line;
      int64_t lineno = 0;
      while (std::getline(in, line)) {
        ++lineno;
        if (line.empty()) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const std::exception& e) {
          TORCH_CHECK(false, "malformed line ", lineno, " of ", (fs::path(r.run.dir) / "metrics.jsonl").string(),
                      ": ", e.what());
        }
        auto num = [&](const char* k) {
          return j.contains(k) && j[k].is_number() ? csv_number(j[k].get<double>()) : std::string();
        };
        f << fmt::format("{},{},{},{},{},{}\n", v.variant, lr_label(lr), r.run.seed,
                         j.value("step", int64_t{0}), num("train_loss"), num("val_loss"));
      }
    }
  }
}

nlohmann::json analysis_json(const StudyAnalysis& a) {
  auto num = [](double x) -> nlohmann::json {
    if (std::isnan(x)) return nullptr;
    if (std::isinf(x)) return "inf";
    return x;
  };
  nlohmann::json j;
  j["tolerance"] = a.tolerance;
  j["reference_level"] = num(a.reference_level);
  j["runs"] = {{"total", a.runs_total}, {"finished", a.runs_finished},
               {"diverged", a.runs_diverged}, {"missing", a.runs_missing}};
  j["variants"] = nlohmann::json::array();
  for (const auto& v : a.variants) {
    nlohmann::json jv = {{"variant", v.variant}, {"family", family_name(v.family)}, {"p", v.p},
                         {"best_lr", num(best_lr(v))}, {"best_mean", num(best_mean(v))},
                         {"best_std", v.best >= 0 ? num(v.cells[v.best].std) : nullptr},
                         {"best_at_edge", v.best_at_edge},
                         {"stable_points", v.stable_points},
                         {"stable_decades", v.stable_decades},
                         {"stable_lo", v.stable_points ? num(v.stable_lo) : nullptr},
                         {"stable_hi", v.stable_points ? num(v.stable_hi) : nullptr},
                         {"diverged_runs", v.diverged_runs}, {"throughput", v.throughput},
                         {"throughput_unit", v.throughput_unit},
                         {"spectral_share", v.spectral_share}};
    j["variants"].push_back(jv);
  }
  j["claims"] = nlohmann::json::array();
  for (const auto& c : a.claims)
    j["claims"].push_back({{"number", c.number}, {"claim", c.claim},
                           {"verdict", verdict_name(c.verdict)}, {"evidence", c.evidence}});
  return j;
}

std::string cell_text(const LrCell& c) {
  if (c.losses.empty()) return "missing";
  if (c.n_diverged > 0)
    return fmt::format("inf ({}/{} diverged)", c.n_diverged, c.losses.size());
  if (c.losses.size() == 1) return fmt_loss(c.mean);
  return fmt::format("{} ± {}", fmt_loss(c.mean), fmt_loss(c.std));
}

// Mean final validation accuracy (image tasks) over the finished seeds of `v` at its best lr;
// NaN when there is none.
double best_lr_accuracy(const VariantResult& v, const std::vector<RunResult>& results) {
  if (v.best < 0) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0.0;
  int n = 0;
  for (const auto& r : results)
    if (r.run.variant == v.variant && r.run.lr == v.cells[v.best].lr && r.status == RunStatus::kFinished &&
        std::isfinite(r.final_val_accuracy)) {
      sum += r.final_val_accuracy;
      ++n;
    }
  return n ? sum / n : std::numeric_limits<double>::quiet_NaN();
}

// `results` (the study's runs; null for the paper's table): a column of the validation
// accuracy at the best lr when the runs report one (image tasks).
void markdown_summary_table(std::ostream& md, const StudyAnalysis& a, bool with_throughput,
                            const std::vector<RunResult>* results = nullptr) {
  bool with_accuracy = false;
  for (const auto& v : a.variants)
    with_accuracy = with_accuracy || (results && std::isfinite(best_lr_accuracy(v, *results)));
  md << "| variant | family | p | best lr | best final val loss |"
     << (with_accuracy ? " val accuracy at best lr (mean) |" : "")
     << " stable lr range | stable points | width (decades) | diverged runs |"
     << (with_throughput ? " throughput (median) | spectral share (median) |" : "") << "\n";
  md << "|---|---|---|---|---|---|---|---|---|" << (with_accuracy ? "---|" : "")
     << (with_throughput ? "---|---|" : "") << "\n";
  for (const auto& v : a.variants) {
    std::string accuracy;
    if (with_accuracy) {
      const double acc = best_lr_accuracy(v, *results);
      accuracy = std::isfinite(acc) ? fmt::format(" {:.4f} |", acc) : " – |";
    }
    const std::string range = v.stable_points
                                  ? fmt::format("{} – {}", lr_label(v.stable_lo), lr_label(v.stable_hi))
                                  : "none";
    md << fmt::format("| {} | {} | {} | {} | {} |{} {} | {} | {:.2f} | {} |", v.variant,
                      family_name(v.family), v.p,
                      v.best >= 0 ? lr_label(best_lr(v)) + (v.best_at_edge ? " (grid edge)" : "") : "–",
                      v.best >= 0 ? cell_text(v.cells[v.best]) : "–", accuracy, range, v.stable_points,
                      v.stable_decades, v.diverged_runs);
    if (with_throughput)
      md << fmt::format(" {} | {} |",
                        v.throughput > 0 ? fmt::format("{:.0f} {}", v.throughput, v.throughput_unit)
                                         : "–",
                        fmt::format("{:.1f} %", 100.0 * v.spectral_share));
    md << "\n";
  }
}

void markdown_grid_table(std::ostream& md, const StudyAnalysis& a) {
  md << "| variant | lr | final val loss (mean ± std) | seeds | stable |\n|---|---|---|---|---|\n";
  for (const auto& v : a.variants)
    for (size_t k = 0; k < v.cells.size(); ++k) {
      const auto& c = v.cells[k];
      const bool best = static_cast<int64_t>(k) == v.best;
      md << fmt::format("| {} | {} | {}{}{} | {}{} | {} |\n", v.variant, lr_label(c.lr),
                        best ? "**" : "", cell_text(c), best ? "**" : "", c.losses.size(),
                        c.n_missing ? fmt::format(" (+{} missing)", c.n_missing) : "",
                        c.stable ? "yes" : (c.n_diverged ? "diverged" : "no"));
    }
}

void markdown_claims(std::ostream& md, const StudyAnalysis& a) {
  for (const auto& c : a.claims)
    md << fmt::format("{}. *{}* — **{}**. {}\n", c.number, c.claim, verdict_name(c.verdict),
                      c.evidence);
}

std::string find_plot_script(const ReportOptions& options) {
  if (!options.plot_script.empty()) return options.plot_script;
  if (const char* env = std::getenv("SPECOPT_PLOT_SCRIPT")) return env;
  std::vector<fs::path> candidates;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / ".." / "scripts" / "plot_study.py");
    candidates.push_back(exe.parent_path() / ".." / ".." / "scripts" / "plot_study.py");
  }
  candidates.push_back(fs::path("scripts") / "plot_study.py");
  for (const auto& c : candidates)
    if (fs::exists(c)) return fs::weakly_canonical(c).string();
  return "";
}

// Runs the plot script; returns "" on success or a note on why there are no plots.
std::string draw_plots(const std::string& study_dir, const ReportOptions& options) {
  const std::string script = find_plot_script(options);
  if (script.empty()) return "scripts/plot_study.py not found (set SPECOPT_PLOT_SCRIPT)";
  std::string python = options.python;
  if (const char* env = std::getenv("SPECOPT_PYTHON")) python = env;
  const std::string log = (fs::path(study_dir) / "plot.log").string();
  fs::remove(log);
  LaunchRequest req;
  req.run.name = "plot_study.py";
  req.args = {script, study_dir};
  req.log_path = log;
  int rc = 0;
  try {
    rc = subprocess_launcher(python)(req);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  if (rc != 0)
    return fmt::format("{} {} failed (see {})", python, script, log);
  return "";
}

}  // namespace

std::string write_study_report(const StudyConfig& config, const StudyAnalysis& a,
                               const std::vector<RunResult>& results, const ReportOptions& options) {
  const fs::path dir = config.study_dir;
  fs::create_directories(dir);
  write_results_csv(a, dir / "results.csv");
  write_runs_csv(results, dir / "runs.csv");
  write_curves_csv(a, results, dir / "curves.csv");

  // The paper's numbers through the same analysis.
  std::string reference_note;
  StudyAnalysis ref;
  bool have_ref = false;
  if (!config.reference_configured) {
    reference_note = "This study has no `reference` file configured.";
  } else if (!fs::exists(config.reference)) {
    reference_note = fmt::format("Reference file `{}` not found: section skipped.", config.reference);
  } else {
    ref = analyze_study(reference_results(config.reference), reference_variants(config.reference),
                        config.reference_tolerance);
    have_ref = true;
    write_results_csv(ref, dir / "reference_results.csv");
  }
  if (!have_ref) fs::remove(dir / "reference_results.csv");

  nlohmann::json j = analysis_json(a);
  j["study"] = config.name;
  j["config"] = config.config_path;
  j["set"] = config.set_overrides;
  if (have_ref) {
    j["reference"] = analysis_json(ref);
    j["reference"]["path"] = config.reference;
  }
  {
    std::ofstream f(dir / "analysis.json");
    TORCH_CHECK(f.good(), "cannot write ", (dir / "analysis.json").string());
    f << j.dump(2) << "\n";
  }

  std::string plot_note;
  if (options.plots) plot_note = draw_plots(dir.string(), options);
  else plot_note = "plots disabled";

  double wall = 0.0;
  for (const auto& r : results) wall += r.wall_s;

  std::ostringstream md;
  md << "# Study `" << config.name << "`\n\n";
  std::string command = "specopt study " + config.config_path;
  for (const auto& s : config.set_overrides) command += " --set " + s;
  md << fmt::format("Config `{}`; command `{}`. {} runs: {} finished, {} diverged, "
                    "{} missing. Summed run time {:.0f} s.\n\n",
                    config.config_path, command, a.runs_total, a.runs_finished,
                    a.runs_diverged, a.runs_missing, wall);
  md << "Final validation loss per variant and matrix learning rate (`optim.lr_matrix`), mean ± "
        "sample std over seeds; diverged runs count as inf. Stable = no diverged seed and mean "
     << fmt::format("≤ (1 + {}) · L*, L* = {} (the best mean of any variant); the stable range is "
                    "the contiguous run of stable grid points around the variant's best lr.\n\n",
                    a.tolerance, fmt_loss(a.reference_level));
  md << "## Summary per variant\n\n";
  markdown_summary_table(md, a, true, &results);
  md << "\n## Findings\n\n";
  markdown_claims(md, a);
  md << "\n## Plots\n\n";
  if (plot_note.empty()) {
    md << "![final val loss vs lr](lr_sweep.png)\n\n![loss curves at the best lr](curves.png)\n\n";
  } else {
    md << "No plots: " << plot_note << ".\n\n";
  }
  md << "## Final validation loss per learning rate\n\n";
  markdown_grid_table(md, a);
  md << "\n## The paper (GPT-2 124M, OpenWebText)\n\n";
  if (have_ref) {
    md << fmt::format("Published final validation losses from `{}` (one seed, 200k steps), put "
                      "through the same definitions (tolerance {}, L* = {}).\n\n",
                      config.reference, ref.tolerance, fmt_loss(ref.reference_level));
    markdown_summary_table(md, ref, false);
    md << "\nThe claims on the paper's numbers:\n\n";
    markdown_claims(md, ref);
    md << "\n| claim | here | paper |\n|---|---|---|\n";
    for (size_t i = 0; i < a.claims.size(); ++i)
      md << fmt::format("| {} | {} | {} |\n", a.claims[i].number, verdict_name(a.claims[i].verdict),
                        verdict_name(ref.claims[i].verdict));
    if (plot_note.empty())
      md << "\n![the paper: final val loss vs lr](lr_sweep_reference.png)\n";
  } else {
    md << reference_note << "\n";
  }
  md << "\n## Files\n\n`results.csv` (per variant and lr), `runs.csv` (per run), `curves.csv` "
        "(loss curves at each variant's best lr), `analysis.json` (summary, claims), "
        "`runs/<variant>_lr<lr>_s<seed>/` (run directories).\n";

  const fs::path report = dir / "report.md";
  std::ofstream f(report);
  TORCH_CHECK(f.good(), "cannot write ", report.string());
  f << md.str();
  return report.string();
}

}  // namespace specopt
