// `specopt export CKPT OUT.pt`: a checkpoint's model as a plain torch.save state_dict
// (checkpoint_export.h; docs/training.md "Export").
#include "commands.h"

#include "specopt/train/checkpoint_export.h"

#include <iostream>
#include <memory>
#include <string>

namespace {

struct ExportArgs {
  std::string checkpoint, out;
};

specopt::cli::Registrar reg("export", [](CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  auto* cmd = app.add_subcommand(
      "export",
      "Write a checkpoint's model as a state_dict that Python's torch.load reads "
      "(for a GPT with nanoGPT's keys, lm_head.weight included), e.g.\n"
      "  specopt export runs/kjv-gpt-tiny/checkpoint.pt kjv-gpt-tiny.pt");
  cmd->add_option("checkpoint", args->checkpoint, "checkpoint.pt of a run directory")->required();
  cmd->add_option("out", args->out, "output file (torch.load-able)")->required();
  cmd->callback([args] {
    const int64_t n = specopt::export_checkpoint(args->checkpoint, args->out);
    std::cout << args->out << ": " << n << " tensors\n";
  });
});

}  // namespace
