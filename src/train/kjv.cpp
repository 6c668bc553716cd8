// The KJV corpus (data.h): download-free cache, checked by size and CRC.
#include "specopt/train/data.h"

#include "train/data_files.h"

#include <zlib.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

namespace specopt {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- KJV

std::string default_cache_dir() {
  if (const char* dir = std::getenv("SPECOPT_CACHE_DIR"); dir && *dir) return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    return (fs::path(xdg) / "specopt").string();
  }
  if (const char* home = std::getenv("HOME"); home && *home) {
    return (fs::path(home) / ".cache" / "specopt").string();
  }
  return ".specopt_cache";
}

namespace {
// "<size> <crc32>" of a byte string: the KJV cache's check file.
std::string size_and_crc(const std::string& bytes) {
  const uLong crc = crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(bytes.data()), bytes.size());
  return fmt::format("{} {:08x}\n", bytes.size(), static_cast<uint32_t>(crc));
}
std::string read_whole(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

std::string kjv_text_file(const std::string& cache_dir) {
  const fs::path path = fs::path(cache_dir) / "kjv.txt";
  const fs::path check = fs::path(cache_dir) / "kjv.txt.check";
  std::error_code ec;
  // A cache is used only when it is what was written (size and CRC-32 of the
  // check file); anything else (a truncated copy, no check file) is rebuilt.
  if (fs::is_regular_file(path, ec) && fs::is_regular_file(check, ec)) {
    const std::string expected = read_whole(check);
    if (!expected.empty() && size_and_crc(read_whole(path)) == expected) return path.string();
  }
  fs::create_directories(cache_dir, ec);
  TORCH_CHECK(!ec, "cannot create cache directory '", cache_dir, "': ", ec.message());

  const char* command = "bible -f \"Gen1:1-Rev22:21\"";
  // Exit status 127 (without the shell's own "not found" noise) when `bible` is absent.
  const std::string script =
      fmt::format("command -v bible >/dev/null 2>&1 || exit 127; exec {}", command);
  FILE* pipe = popen(script.c_str(), "r");
  TORCH_CHECK(pipe != nullptr, "cannot run `", command, "`: ", std::strerror(errno));
  std::string text;
  char buffer[1 << 16];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) text.append(buffer, n);
  const int status = pclose(pipe);
  TORCH_CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 127),
              "the KJV corpus needs the program `bible` (Debian package bible-kjv), which was "
              "not found on PATH; install it or give a text file instead");
  TORCH_CHECK(status == 0, "`", command, "` failed (wait status ", status, ")");
  // The whole Bible is ~4.4 MB and starts with Genesis 1:1.
  TORCH_CHECK(text.size() > 1000000 && text.rfind("Ge1:1 In the beginning", 0) == 0,
              "`", command, "` printed unexpected output (", text.size(),
              " bytes) — is the bible-kjv text installed?");

  // Write to a private temporary name, then rename: concurrent processes never
  // see a partial cache file.
  const fs::path tmp = fs::path(cache_dir) / fmt::format("kjv.txt.tmp.{}", ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out, "cannot write '", tmp.string(), "': ", std::strerror(errno));
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    TORCH_CHECK(out, "error writing '", tmp.string(), "'");
  }
  fs::rename(tmp, path, ec);
  TORCH_CHECK(!ec, "cannot rename '", tmp.string(), "' to '", path.string(), "': ", ec.message());
  // The check file last: a crash in between leaves a cache that is rebuilt.
  const fs::path check_tmp = fs::path(cache_dir) / fmt::format("kjv.txt.check.tmp.{}", ::getpid());
  {
    std::ofstream out(check_tmp, std::ios::binary | std::ios::trunc);
    out << size_and_crc(text);
    out.close();
    TORCH_CHECK(out, "error writing '", check_tmp.string(), "'");
  }
  fs::rename(check_tmp, check, ec);
  TORCH_CHECK(!ec, "cannot rename '", check_tmp.string(), "' to '", check.string(), "': ", ec.message());
  return path.string();
}

std::pair<TokenDataset, TokenDataset> kjv_train_val(const std::string& cache_dir) {
  return split_train_val(TokenDataset::from_text_file(kjv_text_file(cache_dir)), 0.1, '\n');
}

}  // namespace specopt
