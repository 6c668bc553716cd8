#include "commands.h"

#include <torch/version.h>

#include <iostream>

namespace {
specopt::cli::Registrar reg("version", [](CLI::App& app) {
  auto* cmd = app.add_subcommand("version", "Print specopt and LibTorch versions");
  cmd->callback([] {
    std::cout << "specopt 0.1.0 (LibTorch " << TORCH_VERSION << ")\n";
  });
});
}  // namespace
