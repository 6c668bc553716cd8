// The CLI's small promises (issue 15 item 8): the help's examples exist, every error
// exits 1, config files print floats in their shortest round-trip form.
#include "specopt/train/config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <regex>
#include <string>

#include "test_support.h"

namespace fs = std::filesystem;
using specopt::testing::slurp;
using specopt::testing::spawn_cli;
using specopt::testing::wait_exit_code;

namespace {

fs::path scratch(const std::string& name) { return specopt::testing::scratch_dir("test_cli", name); }

// Runs the CLI; returns {exit status, stdout+stderr}.
std::pair<int, std::string> cli(const std::vector<std::string>& args, const std::string& name) {
  const std::string log = (scratch(name) / "out.log").string();
  const int code = wait_exit_code(spawn_cli(args, log));
  return {code, slurp(log)};
}

}  // namespace

TEST(Cli, LaunchHelpExampleConfigExists) {
  const auto [code, out] = cli({"launch", "--help"}, "launch_help");
  EXPECT_EQ(code, 0) << out;
  const std::regex example("train (configs/\\S+\\.toml)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, example)) << out;
  EXPECT_TRUE(fs::exists(fs::path(SPECOPT_SOURCE_DIR) / m[1].str())) << m[1];
}

TEST(Cli, MissingConfigExitsOne) {
  const auto [code, out] = cli({"train", "/nonexistent/specopt.toml", "--quiet"}, "missing");
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("cannot open config file '/nonexistent/specopt.toml'"), std::string::npos) << out;
  const auto [study_code, study_out] = cli({"study", "/nonexistent/study.toml"}, "missing_study");
  EXPECT_EQ(study_code, 1) << study_out;
  EXPECT_NE(study_out.find("does not exist"), std::string::npos) << study_out;
}

TEST(Cli, CommandLineErrorsExitOne) {
  const auto [code, out] = cli({"train", "--nproc", "0"}, "bad_option");  // a failed check (CLI11: 105)
  EXPECT_EQ(code, 1) << out;
  const auto [unknown, unknown_out] = cli({"train", "--no-such-flag"}, "unknown_option");
  EXPECT_EQ(unknown, 1) << unknown_out;
}

TEST(ConfigToml, FloatsAreShortestRoundTrip) {
  EXPECT_EQ(specopt::toml_float(0.003), "0.003");
  EXPECT_EQ(specopt::toml_float(3e-4), "0.0003");
  EXPECT_EQ(specopt::toml_float(1e-8), "1e-08");
  EXPECT_EQ(specopt::toml_float(2.0), "2.0");  // a float to TOML, not the integer 2
  EXPECT_EQ(specopt::toml_float(-0.0), "-0.0");
  EXPECT_EQ(specopt::toml_float(0.1 + 0.2), "0.30000000000000004");
  EXPECT_EQ(specopt::toml_float(std::numeric_limits<double>::infinity()), "inf");

  specopt::TrainConfig c;
  c.optim.lr_matrix = 0.003;
  c.optim.lr_vector = 0.1 + 0.2;  // needs all 17 digits
  const std::string text = specopt::config_to_toml(c);
  EXPECT_NE(text.find("\nlr_matrix = 0.003\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("0.0030000000000000001"), std::string::npos) << text;
  // Every key reads back bit for bit.
  const specopt::TrainConfig back = specopt::config_from_toml_string(text);
  EXPECT_TRUE(specopt::config_differences(c, back).empty());
  EXPECT_EQ(back.optim.lr_matrix, 0.003);
  EXPECT_EQ(back.optim.lr_vector, 0.1 + 0.2);
}
