// `specopt train CONFIG [--set k=v]... [--run-dir DIR] [--resume] [--quiet]
//                       [--device D] [--threads N] [--progress MODE] [--print-config]
//                       [--nproc N | --rank R --world-size W --master-addr A --master-port P]`
//
// Exit status 0 when the run finished or diverged (summary.json says which),
// 1 on an error (bad config, missing data, unreadable checkpoint, disk full,
// run directory locked by another process, ...), 75 (specopt::kExitInterrupted)
// when SIGINT/SIGTERM stopped it after a checkpoint (rerun with --resume); a
// second signal exits at once, by that signal (130 / 143 in a shell).
#include "commands.h"

#include "specopt/train/config.h"
#include "specopt/dist/distributed.h"
#include "specopt/train/trainer.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
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
  // Distributed (docs/distributed.md); unset values come from the environment.
  int64_t nproc = 1;
  int64_t rank = -1, world_size = 0, master_port = 0;
  std::string master_addr;
  double dist_timeout = 0.0;
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

  if (a.nproc > 1 && !specopt::dist::launched_as_rank() && a.world_size == 0) {
    // Restart this command line as nproc ranks on this machine.
    const int code = specopt::dist::launch_local(
        specopt::dist::own_arguments_without("--nproc"),
        specopt::dist::LaunchOptions()
            .nproc(a.nproc)
            .master_addr(a.master_addr.empty() ? "127.0.0.1" : a.master_addr)
            .master_port(a.master_port)
            .timeout_s(a.dist_timeout > 0 ? a.dist_timeout : 60.0)
            .handle_signals(true));
    if (code != 0) std::exit(code);
    return;
  }

  specopt::TrainOptions options;
  options.resume = a.resume;
  options.handle_signals = true;
  auto dist = specopt::dist::options_from_env(specopt::dist::DistOptions().device(config.run.device));
  if (a.rank >= 0) dist.rank(a.rank);
  if (a.world_size > 0) dist.world_size(a.world_size);
  if (!a.master_addr.empty()) dist.master_addr(a.master_addr);
  if (a.master_port > 0) dist.master_port(a.master_port);
  if (a.dist_timeout > 0) dist.timeout_s(a.dist_timeout);
  std::shared_ptr<specopt::dist::Communicator> comm;
  if (dist.world_size() > 1) {
    comm = std::make_shared<specopt::dist::Communicator>(dist);
    options.hooks = specopt::dist::make_train_hooks(comm);
  }
  if (a.quiet) {
    options.progress = specopt::ProgressMode::kQuiet;
  } else if (a.progress == "bar") {
    options.progress = specopt::ProgressMode::kBar;
  } else if (a.progress == "lines") {
    options.progress = specopt::ProgressMode::kLines;
  }
  const std::string run_dir = a.run_dir.empty() ? config.run.run_dir : a.run_dir;
  const specopt::TrainResult r = specopt::train(config, run_dir, options);
  if (r.status == "interrupted") {
    if (options.hooks.is_main_process())
      std::cerr << fmt::format("{}: interrupted by signal {} after {} steps; checkpoint written; rerun with "
                               "--resume to continue\n",
                               run_dir, r.stop_signal, r.steps_done);
    std::exit(specopt::kExitInterrupted);
  }
  if (!a.quiet && options.hooks.is_main_process()) {
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
  cmd->add_option("--nproc", args->nproc, "Train with N ranks on this machine (data parallel, sharded optimizer)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--rank", args->rank, "This process's rank (default: $RANK)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--world-size", args->world_size, "Number of ranks (default: $WORLD_SIZE, else 1)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--master-addr", args->master_addr, "Host of rank 0 (default: $MASTER_ADDR, else 127.0.0.1)");
  cmd->add_option("--master-port", args->master_port, "Port of rank 0's store (default: $MASTER_PORT, else 29500)")
      ->check(CLI::Range(1, 65535));
  cmd->add_option("--dist-timeout", args->dist_timeout,
                  "Seconds to wait for peers before failing (default: $SPECOPT_DIST_TIMEOUT, else 60)")
      ->check(CLI::PositiveNumber);
  cmd->callback([args] { run_train(*args); });
});

}  // namespace
