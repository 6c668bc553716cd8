// The report of a study: report.md (verdicts first, then the evidence), analysis.json and the
// plots drawn by scripts/plot_study.py; the CSV tables are report_tables.cpp.
#include "specopt/study/report.h"

#include "specopt/train/child_process.h"  // self_executable

#include "study/report_tables.h"

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

std::string fmt_loss(double x) {
  if (std::isnan(x)) return "n/a";
  if (std::isinf(x)) return "inf";
  return fmt::format("{:.4f}", x);
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

std::string fmt_tol(double t) { return fmt::format("{:g} %", 100.0 * t); }

// "supported: +1.50 [+0.50, +2.00]" — the verdict and the interval it rests on.
std::string verdict_cell(const ClaimEvidence& c) {
  if (c.verdict == Verdict::kNotTested) return "not tested";
  const Interval& d = c.difference;
  std::string out = fmt::format("**{}**", verdict_name(c.verdict));
  if (c.number == 3)
    out += fmt::format(" ({:+.4f} [{:+.4f}, {:+.4f}] vs margin {:.4f})", d.estimate, d.lo, d.hi,
                       c.margin);
  else
    out += fmt::format(" ({:+.2f} [{:+.2f}, {:+.2f}])", d.estimate, d.lo, d.hi);
  if (c.verdict != c.point_verdict) out += fmt::format("; interval alone: {}", verdict_name(c.point_verdict));
  return out;
}

// The verdict table: one row per claim, one column per tolerance (+ the paper's).
void markdown_verdict_table(std::ostream& md, const StudyAnalysis& a, const StudyAnalysis* ref) {
  md << "| claim |";
  for (const auto& tv : a.verdicts) md << " tolerance " << fmt_tol(tv.tolerance) << " |";
  if (ref) md << " the paper (1 seed, tolerance " << fmt_tol(ref->tolerance) << ") |";
  md << "\n|---|";
  for (size_t i = 0; i < a.verdicts.size() + (ref ? 1 : 0); ++i) md << "---|";
  md << "\n";
  for (size_t k = 0; k < a.claims.size(); ++k) {
    md << fmt::format("| {}. {} |", a.claims[k].number, a.claims[k].claim);
    for (const auto& tv : a.verdicts) md << " " << verdict_cell(tv.claims[k]) << " |";
    if (ref) md << " " << verdict_cell(ref->claims[k]) << " |";
    md << "\n";
  }
}

void markdown_widen(std::ostream& md, const StudyAnalysis& a) {
  std::vector<std::string> notes;
  for (const auto& w : a.verdicts.front().widths)
    if (!w.bracketed) notes.push_back(fmt::format("**{}**: {}", w.variant, w.bracket_note));
  if (notes.empty()) {
    md << "Every variant's grid is bracketed at tolerance " << fmt_tol(a.tolerance)
       << " (best lr inside the grid, divergence or a clear rise at both ends).\n";
    return;
  }
  md << "Widen the grid (at tolerance " << fmt_tol(a.tolerance) << "): ";
  for (size_t i = 0; i < notes.size(); ++i) md << (i ? "; " : "") << notes[i];
  md << ". A claim involving such a variant is inconclusive whatever its interval says.\n";
}

void markdown_claims(std::ostream& md, const StudyAnalysis& a) {
  for (const auto& c : a.claims)
    md << fmt::format("{}. *{}* — **{}**. Statistic: {}. {}\n", c.number, c.claim,
                      verdict_name(c.verdict), c.statistic, c.evidence);
}

// Per variant: best lr and loss with its interval, the widths at each tolerance, bracketing,
// and the paper's best lr / loss / width beside them (when the reference has the variant).
void markdown_width_table(std::ostream& md, const StudyAnalysis& a, const StudyAnalysis* ref) {
  md << "| variant | best lr | final val loss at the best lr (mean [95 % interval]) |";
  for (const auto& tv : a.verdicts) md << " width at " << fmt_tol(tv.tolerance) << " |";
  md << " bracketed |" << (ref ? " the paper: best lr, loss, width |" : "") << "\n|---|---|---|";
  for (size_t i = 0; i < a.verdicts.size(); ++i) md << "---|";
  md << "---|" << (ref ? "---|" : "") << "\n";
  for (size_t k = 0; k < a.variants.size(); ++k) {
    const auto& w0 = a.verdicts.front().widths[k];
    const auto& v = a.variants[k];
    md << fmt::format("| {} | {} | {} |", v.variant, v.best >= 0 ? lr_label(v.cells[v.best].lr) : "–",
                      w0.best < 0 ? "–"
                                  : fmt::format("{:.4f} [{:.4f}, {:.4f}]", w0.best_loss.estimate,
                                                w0.best_loss.lo, w0.best_loss.hi));
    for (const auto& tv : a.verdicts) {
      const auto& w = tv.widths[k];
      md << fmt::format(" {:.2f} [{:.2f}, {:.2f}] |", w.width.estimate, w.width.lo, w.width.hi);
    }
    md << " " << (w0.bracketed ? "yes" : "no: " + w0.bracket_note) << " |";
    if (ref) {
      std::string paper = "–";
      for (size_t r = 0; r < ref->variants.size(); ++r) {
        const auto& rv = ref->variants[r];
        if (rv.variant != v.variant || rv.best < 0) continue;
        paper = fmt::format("{}, {}, {:.2f}", lr_label(rv.cells[rv.best].lr),
                            fmt_loss(rv.cells[rv.best].mean),
                            ref->verdicts.front().widths[r].width.estimate);
      }
      md << " " << paper << " |";
    }
    md << "\n";
  }
}

std::string find_plot_script(const ReportOptions& options) {
  if (!options.plot_script.empty()) return options.plot_script;
  if (const char* env = std::getenv("SPECOPT_PLOT_SCRIPT")) return env;
  std::vector<fs::path> candidates;
  try {
    const fs::path exe = self_executable();
    candidates.push_back(exe.parent_path() / ".." / "scripts" / "plot_study.py");
    candidates.push_back(exe.parent_path() / ".." / ".." / "scripts" / "plot_study.py");
  } catch (const c10::Error&) {
    // No /proc: only the working directory's scripts/.
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

// The paper's numbers through the same analysis (when the study has a reference file), or a
// note on why there are none.
struct Reference {
  bool have = false;
  StudyAnalysis analysis;
  std::string note;
  const StudyAnalysis* get() const { return have ? &analysis : nullptr; }
};

Reference analyze_reference(const StudyConfig& config) {
  Reference ref;
  if (!config.reference_configured) {
    ref.note = "This study has no `reference` file configured.";
  } else if (!fs::exists(config.reference)) {
    ref.note = fmt::format("Reference file `{}` not found: section skipped.", config.reference);
  } else {
    ref.analysis = analyze_study(reference_results(config.reference), reference_variants(config.reference),
                                 config.reference_tolerance);
    ref.have = true;
  }
  return ref;
}

void write_analysis_json(const StudyConfig& config, const StudyAnalysis& a, const Reference& ref,
                         const fs::path& dir) {
  nlohmann::json j = detail::analysis_json(a);
  j["study"] = config.name;
  j["config"] = config.config_path;
  j["set"] = config.set_overrides;
  if (ref.have) {
    j["reference"] = detail::analysis_json(ref.analysis);
    j["reference"]["path"] = config.reference;
  }
  std::ofstream f(dir / "analysis.json");
  TORCH_CHECK(f.good(), "cannot write ", (dir / "analysis.json").string());
  f << j.dump(2) << "\n";
}

// The first line (the command that made the report) and the verdict table.
void markdown_verdicts(std::ostream& md, const StudyConfig& config, const StudyAnalysis& a,
                       const std::vector<RunResult>& results, const Reference& ref) {
  double wall = 0.0;
  for (const auto& r : results) wall += r.wall_s;
  md << "# Study `" << config.name << "`\n\n";
  std::string command = "specopt study " + config.config_path;
  for (const auto& s : config.set_overrides) command += " --set " + s;
  md << fmt::format("Config `{}`; command `{}`. {} runs ({} seeds): {} finished, {} "
                    "diverged, {} missing. Summed run time {:.0f} s.\n\n",
                    config.config_path, command, a.runs_total,
                    a.verdicts.front().n_seeds, a.runs_finished, a.runs_diverged, a.runs_missing,
                    wall);
  md << "## Verdicts\n\n";
  md << "Each claim is judged from per-seed statistics with a bootstrap over seeds (10,000 "
        "resamples, fixed RNG seed; 95 % percentile intervals in brackets): *supported* when the "
        "interval of the compared difference excludes 0 in the claimed direction, *contradicted* "
        "when it excludes 0 in the other, *inconclusive* otherwise, or when a variant the claim "
        "involves is not bracketed by its grid. Claims 1 and 2 compare stable widths (decades); "
        "claim 3 compares Adam's best final loss with each p = 0 variant's against a noise margin "
        "from the seeds (the row shows the p = 0 variant nearest to outperforming Adam). The "
        "definitions are in docs/study.md (Verdicts).\n\n";
  markdown_verdict_table(md, a, ref.get());
  md << "\n";
  markdown_widen(md, a);
}

void markdown_evidence(std::ostream& md, const StudyAnalysis& a, const Reference& ref) {
  md << "\n## Evidence (tolerance " << fmt_tol(a.tolerance) << ")\n\n";
  markdown_claims(md, a);
  md << "\n### Stable width per variant (decades, mean over seeds [95 % interval])\n\n";
  md << fmt::format("Per seed s, a run is stable when its final validation loss is at most (1 + "
                    "tolerance) · L*_s, L*_s the best loss of seed s in the whole study; the "
                    "width is the contiguous run of stable grid points around that seed's best lr "
                    "of the variant, each point counting for the log-lr interval halfway to its "
                    "neighbours.\n\n");
  markdown_width_table(md, a, ref.get());
}

// `plot_note`: "" when the plots were drawn, else why not.
void markdown_plots(std::ostream& md, const fs::path& dir, const std::string& plot_note) {
  md << "\n## Plots\n\n";
  if (!plot_note.empty()) {
    md << "No plots: " << plot_note << ".\n\n";
    return;
  }
  md << "Final validation loss against the matrix learning rate (mean over seeds, error bars: "
        "min–max over seeds; × on the top edge: a diverged seed; ★: the best lr), one colour per "
        "variant in every figure:\n\n![final val loss vs lr](lr_sweep.png)\n\n";
  if (fs::exists(dir / "widths.png"))
    md << "Stable width per variant with its 95 % interval, at each tolerance:\n\n"
          "![stable widths](widths.png)\n\n";
  if (fs::exists(dir / "p_sweep.png"))
    md << "Best final loss and stable width against p, per family (95 % intervals):\n\n"
          "![p sweep](p_sweep.png)\n\n";
  md << "Loss curves of every seed at each variant's best lr:\n\n"
        "![loss curves at the best lr](curves.png)\n\n";
}

void markdown_tables(std::ostream& md, const StudyAnalysis& a, const std::vector<RunResult>& results) {
  md << "## Summary per variant (seed means)\n\n";
  md << "Stable here = no diverged seed and mean ≤ "
     << fmt::format("(1 + {}) · L*, L* = {} (the best mean of any variant).\n\n", a.tolerance,
                    fmt_loss(a.reference_level));
  markdown_summary_table(md, a, true, &results);
  md << "\n## Final validation loss per learning rate\n\n";
  markdown_grid_table(md, a);
}

void markdown_reference(std::ostream& md, const StudyConfig& config, const Reference& ref,
                        bool plots_drawn) {
  md << "\n## The paper (GPT-2 124M, OpenWebText)\n\n";
  if (!ref.have) {
    md << ref.note << "\n";
    return;
  }
  md << fmt::format("Published final validation losses from `{}` (one seed, 200k steps), put "
                    "through the same definitions (tolerance {}, L* = {}). With one seed there "
                    "is no interval and no noise estimate: the verdicts can only be "
                    "'inconclusive', and the point estimate says which way the paper's numbers "
                    "lean.\n\n",
                    config.reference, fmt_tol(ref.analysis.tolerance),
                    fmt_loss(ref.analysis.reference_level));
  markdown_summary_table(md, ref.analysis, false);
  md << "\nThe claims on the paper's numbers:\n\n";
  markdown_claims(md, ref.analysis);
  if (plots_drawn) md << "\n![the paper: final val loss vs lr](lr_sweep_reference.png)\n";
}

}  // namespace

std::string write_study_report(const StudyConfig& config, const StudyAnalysis& a,
                               const std::vector<RunResult>& results, const ReportOptions& options) {
  const fs::path dir = config.study_dir;
  fs::create_directories(dir);
  detail::write_study_tables(a, results, dir);
  const Reference ref = analyze_reference(config);
  if (ref.have) detail::write_results_csv(ref.analysis, dir / "reference_results.csv");
  // Files a previous report drew that this one may not.
  for (const char* f : {"widths.png", "p_sweep.png"}) fs::remove(dir / f);
  if (!ref.have) fs::remove(dir / "reference_results.csv");
  write_analysis_json(config, a, ref, dir);
  const std::string plot_note = options.plots ? draw_plots(dir.string(), options) : "plots disabled";

  std::ostringstream md;
  markdown_verdicts(md, config, a, results, ref);
  markdown_evidence(md, a, ref);
  markdown_plots(md, dir, plot_note);
  markdown_tables(md, a, results);
  markdown_reference(md, config, ref, plot_note.empty());
  md << "\n## Files\n\n`verdicts.csv` (claim verdicts and intervals per tolerance), `widths.csv` "
        "(stable widths and best losses with intervals), `results.csv` (per variant and lr), "
        "`runs.csv` (per run), `curves.csv` (loss curves at each variant's best lr), "
        "`analysis.json` (all of it), `runs/<variant>_lr<lr>_s<seed>/` (run directories).\n";

  const fs::path report = dir / "report.md";
  std::ofstream f(report);
  TORCH_CHECK(f.good(), "cannot write ", report.string());
  f << md.str();
  return report.string();
}

}  // namespace specopt
