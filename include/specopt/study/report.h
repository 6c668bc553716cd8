// The report of a study: report.md (verdicts first, then the evidence), CSV/JSON tables and
// plots (scripts/plot_study.py).
#pragma once

#include "specopt/study/analysis.h"
#include "specopt/study/study.h"

#include <string>
#include <vector>

namespace specopt {

// ---------------------------------------------------------------- report ---

struct ReportOptions {
  std::string python = "/usr/bin/python3";   // env SPECOPT_PYTHON overrides
  std::string plot_script;                   // "" = search (env SPECOPT_PLOT_SCRIPT, next to the
                                             // executable's ../scripts, ./scripts)
  bool plots = true;
};

// Writes STUDY_DIR/{results.csv, runs.csv, curves.csv, analysis.json, report.md} and, through
// scripts/plot_study.py, lr_sweep.png, curves.png (and lr_sweep_reference.png with a reference).
// Returns the path of report.md.
std::string write_study_report(const StudyConfig& config, const StudyAnalysis& analysis,
                               const std::vector<RunResult>& results,
                               const ReportOptions& options = {});

}  // namespace specopt
