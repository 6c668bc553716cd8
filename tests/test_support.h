// Small helpers shared by the GoogleTest suites.
#pragma once

#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

namespace specopt {
namespace testing {

// The lines of the section of docs/<file> whose heading contains `heading`,
// up to the next heading: only its table rows, or (tables_only = false) all.
inline std::vector<std::string> doc_section(const std::string& file, const std::string& heading, bool tables_only) {
  std::ifstream in(std::string(SPECOPT_SOURCE_DIR) + "/docs/" + file);
  EXPECT_TRUE(in.good()) << file;
  std::vector<std::string> lines;
  bool in_section = false, in_code = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("```", 0) == 0) in_code = !in_code;
    if (!in_code && line.rfind("#", 0) == 0) {
      if (in_section) break;
      in_section = line.find(heading) != std::string::npos;
    } else if (in_section && (!tables_only || line.rfind("|", 0) == 0)) {
      lines.push_back(line);
    }
  }
  EXPECT_FALSE(lines.empty()) << file << ": nothing under '" << heading << "'";
  return lines;
}

// The message (without backtrace) of the c10::Error thrown by f; fails the
// test when f throws none.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "expected a c10::Error";
  return "";
}

// Starts the CLI (SPECOPT_CLI_PATH) with `args`; stdout+stderr go to
// `log_path`. `in_child` runs in the child before exec (resource limits,
// signal dispositions).
inline pid_t spawn_cli(const std::vector<std::string>& args, const std::string& log_path,
                       const std::function<void()>& in_child = {}) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    if (in_child) in_child();
    std::vector<char*> argv;
    std::string cli = SPECOPT_CLI_PATH;
    argv.push_back(cli.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(cli.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}
// The exit status of `pid`, or -N when signal N ended it.
inline int wait_exit_code(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}
inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// An empty scratch directory TMP/specopt_<suite>_<pid>/<name> (made afresh on each call).
inline std::filesystem::path scratch_dir(const std::string& suite, const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("specopt_" + suite + "_" + std::to_string(::getpid())) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace testing
}  // namespace specopt
