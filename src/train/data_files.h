// File access shared by the data readers (data.cpp: token streams, kjv.cpp,
// images.cpp): read-only mappings, whole-file reads (gzip or not), and the
// samplers' seeded generators and named states. Private to the train layer.
#pragma once

#include "specopt/train/data.h"  // SamplerState

#include <ATen/core/Generator.h>
#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace specopt {
namespace detail {

// A whole file mapped read-only (PROT_READ, MAP_SHARED): its pages are the
// page cache's, loaded on first touch and dropped by the kernel under memory
// pressure, so a mapped dataset never holds a private copy of the file.
struct MappedFile {
  std::string path;
  const uint8_t* data = nullptr;
  size_t bytes = 0;

  explicit MappedFile(std::string file_path) : path(std::move(file_path)) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    TORCH_CHECK(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      TORCH_CHECK(false, "cannot stat '", path, "': ", std::strerror(err));
    }
    bytes = static_cast<size_t>(st.st_size);
    if (bytes == 0) {  // mmap of 0 bytes fails; report the real problem
      ::close(fd);
      TORCH_CHECK(false, "'", path, "' is empty");
    }
    void* addr = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file referenced
    TORCH_CHECK(addr != MAP_FAILED, "cannot memory-map '", path, "' (", bytes,
                " bytes): ", std::strerror(err));
    data = static_cast<const uint8_t*>(addr);
  }
  ~MappedFile() { ::munmap(const_cast<uint8_t*>(data), bytes); }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Access-pattern hint for the kernel's read-ahead; advisory, errors ignored.
  void advise(int advice) const { ::madvise(const_cast<uint8_t*>(data), bytes, advice); }

  int64_t num_tokens() const { return static_cast<int64_t>(bytes / 2); }
  // Token i, uint16 little-endian whatever the host (compilers emit one load).
  int64_t token(int64_t i) const {
    const uint8_t* p = data + 2 * i;
    return static_cast<int64_t>(p[0]) | (static_cast<int64_t>(p[1]) << 8);
  }
};

// The seeded CPU generator of sampler draw number k.
at::Generator sampler_generator(uint64_t seed, uint64_t k);
// The values of a named sampler state (BatchSampler::set_named_state), whose
// names must be `names` in this order, else an error naming `sampler`.
std::vector<int64_t> named_state_values(const SamplerState& state, const std::vector<std::string>& names,
                                        const char* sampler);
// An error naming `path` when it does not exist or is a directory.
void check_exists(const std::string& path);
// Whole file, uncompressed.
std::vector<uint8_t> read_plain(const std::string& path);
// Whole file; a gzip file (magic 1f 8b) is inflated, any other is returned as it is.
std::vector<uint8_t> read_maybe_gzip(const std::string& path);

}  // namespace detail
}  // namespace specopt
