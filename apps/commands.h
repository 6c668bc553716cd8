// Subcommands of the `specopt` CLI register themselves here, one file per
// subcommand (apps/cmd_*.cpp), so adding one needs no edit elsewhere:
//
//   static specopt::cli::Registrar reg("train", [](CLI::App& app) { ... });
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace specopt {
namespace cli {

struct Command {
  std::string name;
  std::function<void(CLI::App&)> add;  // adds the subcommand and its callback
};

std::vector<Command>& registry();

struct Registrar {
  Registrar(std::string name, std::function<void(CLI::App&)> add) {
    registry().push_back({std::move(name), std::move(add)});
  }
};

}  // namespace cli
}  // namespace specopt
