// The study config: the [study] table of a study config file plus the base train config it
// shares (loaded and validated by load_study_config, before any run starts).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace specopt {

// ---------------------------------------------------------------- config ---

// The [study] table of a study config plus the train config it shares.
//
//   [study]
//   name = "fmnist-quick"
//   variants = ["Adam", "AdamS", ..., "mSGDZ"]
//   lrs = [1e-3, 3e-3, 1e-2]          # one grid (optim.lr_matrix) for every variant, or
//   [study.lrs]                        # per-variant grids; `default` for the variants not named
//   default = [1e-3, 3e-3, 1e-2]
//   mSGD = [0.03, 0.1, 0.3]
//   seeds = [0, 1, 2]
//   workers = 1                        # parallel runs; each gets threads / workers threads
//   threads = 0                        # total threads of the study (0 = all cores)
//   study_dir = "runs/study/fmnist-quick"   # relative to the working directory
//   reference = "../shared/reference/paper_gpt2_124m.json"  # relative to the config file
//   stable_tolerance = 0.02            # see analyze_study()
//   reference_tolerance = 0.02         # the same, for the paper's numbers (loss level ~2.9)
//   families = ["Adam", "mSGD"]         # or, instead of `variants`, the p axis: every (family, p)
//   ps = [0.0, 0.125, 0.5, 1.0]         # pair is a variant ("adam:p=0.125", AdamS at p = 1/2)
//   [study.lrs.family]                  # per-family grids (after per-variant ones, before default)
//   Adam = [1e-3, 1e-2]
//   [study.overrides]                  # extra per-variant train overrides (--set key=value)
//   AdamQ = ["optim.lr_vector=6e-4"]
//
// Every other table (run, model, data, optim, train) is the base train config (train/config.h).
struct StudyConfig {
  std::string name;
  std::vector<std::string> variants;                   // canonical names (parse_variant)
  std::map<std::string, std::vector<double>> lrs;      // variant → lr_matrix grid, ascending
  std::map<std::string, std::vector<std::string>> overrides;  // variant → extra "key=value"
  std::vector<int64_t> seeds = {0};
  int64_t workers = 1;
  int64_t threads = 0;
  std::string study_dir;                               // default runs/study/<name>
  std::string reference;      // resolved path of the paper's reference JSON ("" = none)
  bool reference_configured = false;                   // `reference` was given in the config
  double stable_tolerance = 0.02;
  double reference_tolerance = 0.02;
  std::string config_path;                             // the file it was loaded from
  std::vector<std::string> set_overrides;              // load_study_config's `overrides` (--set)
  std::string train_config_toml;                       // base train config, serialized TOML
};

// Loads and validates a study config. `overrides` are "dotted.key=value" strings applied to the
// file before validation (value parsed as a TOML value, else taken as a string), e.g.
// "study.workers=2" or "train.steps=50". Unknown [study] keys, an empty variant list, unknown
// variant names, empty/non-positive lr grids, a grid for a variant that is not studied, an empty
// seed list → c10::Error naming the offending key/value and the file.
StudyConfig load_study_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The [study] keys, in reading order (one field list in study_config.cpp drives reading,
// writing and this list; docs/study.md's table lists them all).
std::vector<std::string> study_config_keys();

// The config as a study config file that loads to the same StudyConfig (but for config_path and
// set_overrides, which are already applied): the p axis written as the variants it expands to,
// every variant's lr grid under [study.lrs], the reference as an absolute path, and the resolved
// base train config. `specopt study CONFIG --print-config` prints it.
std::string study_config_to_toml(const StudyConfig& config);

}  // namespace specopt
