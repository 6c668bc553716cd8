// The file helpers of data_files.h.
#include "train/data_files.h"

#include "specopt/train/data.h"  // splitmix64

#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>

#include <climits>
#include <filesystem>
#include <fstream>

namespace specopt {
namespace detail {

namespace fs = std::filesystem;

// The seeded CPU generator of sampler draw number k.
at::Generator sampler_generator(uint64_t seed, uint64_t k) {
  return at::detail::createCPUGenerator(splitmix64(seed ^ splitmix64(k)));
}

std::vector<int64_t> named_state_values(const SamplerState& state, const std::vector<std::string>& names,
                                        const char* sampler) {
  auto list = [](const std::vector<std::string>& n) {
    std::string out;
    for (const auto& name : n) out += (out.empty() ? "" : ", ") + name;
    return out;
  };
  std::vector<std::string> given;
  std::vector<int64_t> values;
  for (const auto& entry : state) {
    given.push_back(entry.first);
    values.push_back(entry.second);
  }
  TORCH_CHECK(given == names, sampler, ": a state of (", list(given), ") where (", list(names),
              ") is expected");
  return values;
}

void check_exists(const std::string& path) {
  std::error_code ec;
  TORCH_CHECK(fs::exists(path, ec), "cannot read '", path, "': no such file");
  TORCH_CHECK(!fs::is_directory(path, ec), "cannot read '", path, "': it is a directory");
}

// Whole file, uncompressed.
std::vector<uint8_t> read_plain(const std::string& path) {
  check_exists(path);
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "cannot open '", path, "': ", std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), "error reading '", path, "'");
  TORCH_CHECK(!bytes.empty(), "'", path, "' is empty");
  return bytes;
}

// Whole file; a gzip file (magic 1f 8b) is inflated, any other is returned as
// it is. zlib's inflate() rather than gzread(): from zlib 1.3.1.2 on, gzread
// returns no data and no error for a stream corrupted in its deflate data
// (Debian sid's 1.3.2 reads one as an empty file), while inflate() reports
// Z_DATA_ERROR on every version, and a stream cut short is one that runs out
// of input before Z_STREAM_END. Concatenated members are read one after the
// other and bytes after the last member are ignored, as gzread does.
std::vector<uint8_t> read_maybe_gzip(const std::string& path) {
  std::vector<uint8_t> in = read_plain(path);
  const auto is_gzip = [](const uint8_t* p, size_t n) { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; };
  if (!is_gzip(in.data(), in.size())) return in;
  TORCH_CHECK(in.size() <= UINT_MAX, "'", path, "': gzip files over 4 GiB are not supported");
  z_stream z{};
  TORCH_CHECK(inflateInit2(&z, 16 + MAX_WBITS) == Z_OK, "'", path, "': zlib's inflateInit2 failed");
  z.next_in = in.data();
  z.avail_in = static_cast<uInt>(in.size());
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> chunk(1 << 20);
  std::string error;
  while (true) {
    z.next_out = chunk.data();
    z.avail_out = static_cast<uInt>(chunk.size());
    const int rc = inflate(&z, Z_NO_FLUSH);
    bytes.insert(bytes.end(), chunk.begin(), chunk.end() - z.avail_out);
    if (rc == Z_OK) continue;
    if (rc == Z_STREAM_END) {
      if (!is_gzip(z.next_in, z.avail_in)) break;
      inflateReset(&z);
      continue;
    }
    error = rc == Z_BUF_ERROR && z.avail_in == 0 ? "unexpected end of file" : (z.msg ? z.msg : zError(rc));
    break;
  }
  inflateEnd(&z);
  TORCH_CHECK(error.empty(), "'", path, "': corrupt gzip data (zlib: ", error, ")");
  TORCH_CHECK(!bytes.empty(), "'", path, "' is empty");
  return bytes;
}

}  // namespace detail
}  // namespace specopt
