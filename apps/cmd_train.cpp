// `specopt train CONFIG [--set k=v]... [--run-dir DIR] [--resume] [--quiet]
//                       [--device D] [--threads N] [--progress MODE] [--print-config]`
//
// Exit status 0 when the run finished or diverged (summary.json says which),
// 1 on an error (bad config, missing data, unreadable checkpoint, ...).
#include "commands.h"

#include "specopt/config.h"
#include "specopt/trainer.h"

#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <memory>

namespace {

struct TrainArgs {
  std::string config_path;
  std::vector<std::string> overrides;
  std::string run_dir;
  bool resume = false;
  bool quiet = false;
  std::string device;
  int64_t threads = -1;
  std::string progress = "auto";
  bool print_config = false;
};

void run_train(const TrainArgs& a) {
  std::vector<std::string> overrides = a.overrides;
  // --device / --threads are shorthands for the run.* keys (and win over --set).
  if (!a.device.empty()) overrides.push_back("run.device=" + a.device);
  if (a.threads >= 0) overrides.push_back("run.threads=" + std::to_string(a.threads));
  const specopt::TrainConfig config = specopt::load_config(a.config_path, overrides);
  if (a.print_config) {
    std::cout << specopt::config_to_toml(config);
    return;
  }

  specopt::TrainOptions options;
  options.resume = a.resume;
  if (a.quiet) {
    options.progress = specopt::ProgressMode::kQuiet;
  } else if (a.progress == "bar") {
    options.progress = specopt::ProgressMode::kBar;
  } else if (a.progress == "lines") {
    options.progress = specopt::ProgressMode::kLines;
  }
  const std::string run_dir = a.run_dir.empty() ? config.run.run_dir : a.run_dir;
  const specopt::TrainResult r = specopt::train(config, run_dir, options);
  if (!a.quiet) {
    std::cout << fmt::format("{}: {} after {} steps, final val loss {:.4f} (best {:.4f}), {:.0f} {}/s\n",
                             run_dir, r.status, r.steps_done, r.final_val_loss, r.best_val_loss,
                             r.throughput, r.throughput_unit);
  }
}

specopt::cli::Registrar reg("train", [](CLI::App& app) {
  auto args = std::make_shared<TrainArgs>();
  auto* cmd = app.add_subcommand("train", "Train one model with one optimizer (see docs/training.md)");
  cmd->add_option("config", args->config_path, "TOML config file (omit for the defaults)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--set", args->overrides, "Override a config key: table.key=value (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--run-dir", args->run_dir, "Run directory (default: run.run_dir of the config)");
  cmd->add_flag("--resume", args->resume,
                "Continue from RUN_DIR/checkpoint.pt; a run with summary.json is not retrained");
  cmd->add_flag("--quiet,-q", args->quiet, "No progress output");
  cmd->add_option("--device", args->device, "Shorthand for --set run.device=D (cpu, cuda, cuda:N)");
  cmd->add_option("--threads", args->threads, "Shorthand for --set run.threads=N (0 = all cores)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--progress", args->progress,
                  "auto (bar on a terminal, else log lines), bar, lines")
      ->check(CLI::IsMember({"auto", "bar", "lines"}));
  cmd->add_flag("--print-config", args->print_config, "Print the resolved config and exit");
  cmd->callback([args] { run_train(*args); });
});

}  // namespace
