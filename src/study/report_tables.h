// The report's tables (report_tables.cpp): the CSV files of a study directory and the content
// of analysis.json; report.cpp writes report.md around them.
#pragma once

#include "specopt/study/analysis.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <vector>

namespace specopt {
namespace detail {

// results.csv (per variant and lr), runs.csv (per run), curves.csv (loss curves at each
// variant's best lr), widths.csv and verdicts.csv (per tolerance) under `dir`.
void write_study_tables(const StudyAnalysis& a, const std::vector<RunResult>& results,
                        const std::filesystem::path& dir);
// results.csv of one analysis (the study's, or the paper's as reference_results.csv).
void write_results_csv(const StudyAnalysis& a, const std::filesystem::path& file);
// Everything the analysis holds, non-finite numbers as null (NaN) or "inf".
nlohmann::json analysis_json(const StudyAnalysis& a);

}  // namespace detail
}  // namespace specopt
