// `specopt launch --nproc N [options] -- SUBCOMMAND ARGS...`: runs N ranks of
// a specopt subcommand on this machine (see docs/distributed.md).
#include "commands.h"

#include "specopt/dist/distributed.h"

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace {
struct LaunchArgs {
  int64_t nproc = 2, nnodes = 1, node_rank = 0, port = 0, threads = 0;
  std::string addr = "127.0.0.1";
  double timeout = 60.0;
  std::vector<std::string> command;
};

specopt::cli::Registrar reg("launch", [](CLI::App& app) {
  auto args = std::make_shared<LaunchArgs>();
  auto* cmd = app.add_subcommand(
      "launch",
      "Run N ranks of a specopt subcommand on this machine, e.g.\n"
      "  specopt launch --nproc 2 -- train configs/gpt_kjv.toml\n"
      "Each rank gets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in its environment; when one rank\n"
      "fails the others are stopped and its exit status is returned.");
  cmd->add_option("--nproc", args->nproc, "Ranks on this machine")->check(CLI::PositiveNumber);
  cmd->add_option("--nnodes", args->nnodes, "Machines taking part (one launcher each)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--node-rank", args->node_rank, "Index of this machine in [0, nnodes)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--master-addr", args->addr, "Address of the machine running rank 0")
      ->envname("MASTER_ADDR");
  cmd->add_option("--master-port", args->port, "TCP port of rank 0's store (0: a free one; single machine)")
      ->envname("MASTER_PORT")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--timeout", args->timeout,
                  "Seconds to wait for peers at rendezvous and in each collective before failing")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads-per-rank", args->threads, "Intra-op threads per rank (0: cores / nproc)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("command", args->command, "The subcommand and its arguments (after --)")->required();
  cmd->callback([args] {
    int code = specopt::dist::launch_local(args->command, specopt::dist::LaunchOptions()
                                                              .handle_signals(true)
                                                              .nproc(args->nproc)
                                                              .nnodes(args->nnodes)
                                                              .node_rank(args->node_rank)
                                                              .master_addr(args->addr)
                                                              .master_port(args->port)
                                                              .timeout_s(args->timeout)
                                                              .threads_per_rank(args->threads));
    if (code != 0) std::exit(code);
  });
});
}  // namespace
