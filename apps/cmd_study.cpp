// `specopt study CONFIG`: the controlled study (variants × lr grid × seeds) and its report.
#include "commands.h"

#include "specopt/study/report.h"
#include "specopt/study/study.h"
#include "specopt/train/trainer.h"  // kExitInterrupted

#include <fmt/format.h>
#include <unistd.h>

#include <iostream>

namespace {

struct StudyArgs {
  std::string config;
  int64_t workers = 0;
  std::string study_dir;
  std::vector<std::string> sets;
  bool report_only = false;
  bool no_plots = false;
  bool print_config = false;
};

specopt::cli::Registrar reg("study", [](CLI::App& app) {
  auto args = std::make_shared<StudyArgs>();
  auto* cmd = app.add_subcommand(
      "study",
      "Run a controlled study (variants x lr grid x seeds) as `specopt train` subprocesses, "
      "resumably, and write its report (report.md, results.csv, plots)");
  cmd->add_option("config", args->config, "study config (TOML with a [study] table)")->required();
  cmd->add_option("--workers", args->workers, "parallel runs (overrides study.workers); the "
                                              "threads are split between them")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--study-dir", args->study_dir, "study directory (overrides study.study_dir)");
  cmd->add_option("--set", args->sets,
                  "override a config value, key=value with dotted keys (study.seeds=[0], "
                  "train.steps=100); repeatable");
  cmd->add_flag("--report-only", args->report_only, "only (re)write the report from the runs "
                                                     "present");
  cmd->add_flag("--no-plots", args->no_plots, "skip the matplotlib plots");
  cmd->add_flag("--print-config", args->print_config, "print the resolved study config and exit");
  cmd->callback([args] {
    specopt::StudyConfig config = specopt::load_study_config(args->config, args->sets);
    if (!args->study_dir.empty()) config.study_dir = args->study_dir;
    if (args->print_config) {
      std::cout << specopt::study_config_to_toml(config);
      return;
    }
    const bool tty = isatty(STDOUT_FILENO) != 0;

    int exit_code = 0;
    if (!args->report_only) {
      specopt::StudyRunOptions options;
      options.workers = args->workers;
      options.progress = tty ? &std::cout : nullptr;
      options.handle_signals = true;
      const auto outcome = specopt::run_study(config, options);
      if (outcome.stop_signal != 0) {
        std::cerr << fmt::format("specopt study: stopped by signal {}; {} run(s) interrupted after a "
                                 "checkpoint, no new run launched; rerun the same command to resume\n",
                                 outcome.stop_signal, outcome.interrupted.size());
        std::exit(specopt::kExitInterrupted);
      }
      if (!outcome.failed.empty()) {
        std::cerr << fmt::format("specopt study: {} run(s) failed without a summary (rerun the "
                                 "same command to retry them):",
                                 outcome.failed.size());
        for (const auto& name : outcome.failed) std::cerr << " " << name;
        std::cerr << "\n";
        exit_code = 2;
      }
    }
    const auto results = specopt::collect_results(config);
    const auto analysis =
        specopt::analyze_study(results, config.variants, config.stable_tolerance);
    specopt::ReportOptions report_options;
    report_options.plots = !args->no_plots;
    const std::string report = specopt::write_study_report(config, analysis, results, report_options);
    std::cout << "report: " << report << "\n";
    for (const auto& c : analysis.claims)
      std::cout << fmt::format("claim {}: {}\n", c.number, specopt::verdict_name(c.verdict));
    if (exit_code != 0) std::exit(exit_code);
  });
});

}  // namespace
