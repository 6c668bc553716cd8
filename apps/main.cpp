// `specopt` — command-line front end. Each subcommand lives in apps/cmd_*.cpp.
#include "commands.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <iostream>

namespace specopt {
namespace cli {
std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace cli
}  // namespace specopt

int main(int argc, char** argv) {
  CLI::App app{"specopt: spectral optimizers Psi_p(O) = U S^p V^T for LibTorch"};
  app.require_subcommand(1);
  auto& commands = specopt::cli::registry();
  std::sort(commands.begin(), commands.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (auto& c : commands) c.add(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help / --version exit 0; every command-line error exits 1 like any other error
    // (docs/training.md), not with CLI11's own codes (105 for a failed check, 109, ...).
    return app.exit(e) == 0 ? 0 : 1;
  } catch (const c10::Error& e) {
    std::cerr << "specopt: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "specopt: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
