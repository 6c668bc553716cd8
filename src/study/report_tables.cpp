// The report's tables: results.csv, runs.csv, curves.csv, widths.csv, verdicts.csv and the
// content of analysis.json (report.md is report.cpp).
#include "study/report_tables.h"

#include "specopt/train/run_dir.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>

#include <cmath>
#include <fstream>

namespace specopt {
namespace detail {

namespace fs = std::filesystem;

namespace {

std::string csv_number(double x) {
  if (std::isnan(x)) return "";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return fmt::format("{:.6g}", x);
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
      // read_metrics skips the torn last line of a killed run.
      for (const auto& j : read_metrics(RunPaths(r.run.dir).metrics)) {
        auto num = [&](const char* k) {
          return j.contains(k) && j[k].is_number() ? csv_number(j[k].get<double>()) : std::string();
        };
        f << fmt::format("{},{},{},{},{},{}\n", v.variant, lr_label(lr), r.run.seed,
                         j.value("step", int64_t{0}), num("train_loss"), num("val_loss"));
      }
    }
  }
}

void write_verdict_csvs(const StudyAnalysis& a, const fs::path& dir) {
  std::ofstream w(dir / "widths.csv");
  TORCH_CHECK(w.good(), "cannot write ", (dir / "widths.csv").string());
  w << "variant,family,p,tolerance,n_seeds,width,width_lo,width_hi,best_lr,best_loss,best_loss_lo,"
       "best_loss_hi,best_std,bracketed,note\n";
  for (const auto& tv : a.verdicts)
    for (size_t k = 0; k < tv.widths.size(); ++k) {
      const auto& x = tv.widths[k];
      const auto& v = a.variants[k];
      w << fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"\n", x.variant,
                       family_name(x.family), x.p, tv.tolerance, tv.n_seeds, csv_number(x.width.estimate),
                       csv_number(x.width.lo), csv_number(x.width.hi),
                       v.best >= 0 ? lr_label(v.cells[v.best].lr) : "",
                       x.best < 0 ? "" : csv_number(x.best_loss.estimate),
                       x.best < 0 ? "" : csv_number(x.best_loss.lo),
                       x.best < 0 ? "" : csv_number(x.best_loss.hi),
                       x.best < 0 ? "" : csv_number(x.best_std), x.bracketed ? 1 : 0, x.bracket_note);
    }
  std::ofstream c(dir / "verdicts.csv");
  TORCH_CHECK(c.good(), "cannot write ", (dir / "verdicts.csv").string());
  c << "tolerance,claim,verdict,point_verdict,estimate,lo,hi,margin,widen\n";
  for (const auto& tv : a.verdicts)
    for (const auto& x : tv.claims) {
      std::string widen;
      for (const auto& v : x.widen) widen += (widen.empty() ? "" : " ") + v;
      c << fmt::format("{},{},{},{},{},{},{},{},{}\n", tv.tolerance, x.number, verdict_name(x.verdict),
                       verdict_name(x.point_verdict), csv_number(x.difference.estimate),
                       csv_number(x.difference.lo), csv_number(x.difference.hi),
                       csv_number(x.margin), widen);
    }
}

}  // namespace

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
  auto interval = [&](const Interval& i) {
    return nlohmann::json{{"estimate", num(i.estimate)}, {"lo", num(i.lo)}, {"hi", num(i.hi)}};
  };
  j["verdicts"] = nlohmann::json::array();
  for (const auto& tv : a.verdicts) {
    nlohmann::json jt = {{"tolerance", tv.tolerance}, {"n_seeds", tv.n_seeds},
                         {"adam_family_width", interval(tv.adam_family_width)},
                         {"sgd_family_width", interval(tv.sgd_family_width)}};
    jt["widths"] = nlohmann::json::array();
    for (const auto& w : tv.widths)
      jt["widths"].push_back({{"variant", w.variant}, {"width", interval(w.width)},
                              {"per_seed", w.per_seed}, {"bracketed", w.bracketed},
                              {"bracket_note", w.bracket_note},
                              {"best_loss", interval(w.best_loss)}});
    jt["claims"] = nlohmann::json::array();
    for (const auto& c : tv.claims)
      jt["claims"].push_back({{"number", c.number}, {"claim", c.claim},
                              {"verdict", verdict_name(c.verdict)},
                              {"point_verdict", verdict_name(c.point_verdict)},
                              {"statistic", c.statistic}, {"difference", interval(c.difference)},
                              {"margin", c.margin}, {"widen", c.widen}, {"evidence", c.evidence}});
    j["verdicts"].push_back(jt);
  }
  return j;
}

void write_study_tables(const StudyAnalysis& a, const std::vector<RunResult>& results,
                        const fs::path& dir) {
  write_results_csv(a, dir / "results.csv");
  write_runs_csv(results, dir / "runs.csv");
  write_curves_csv(a, results, dir / "curves.csv");
  write_verdict_csvs(a, dir);
}

}  // namespace detail
}  // namespace specopt
