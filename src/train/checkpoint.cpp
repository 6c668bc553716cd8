// Checkpoint files (checkpoint.h): header, CRC, atomic writes.
#include "specopt/train/checkpoint.h"

#include "train/posix_io.h"

#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace specopt {

namespace fs = std::filesystem;

namespace {
void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}
uint32_t crc32_of(const char* data, size_t size) {
  return static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data), size));
}
}  // namespace


void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TORCH_CHECK(fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
  // Any failure removes the temporary file: a partial PATH.tmp of a full disk
  // would otherwise keep the disk full. PATH itself is untouched.
  auto fail = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, "cannot ", what, " '", tmp, "' (for '", path, "'): ", std::strerror(err));
  };
  if (!detail::write_all(fd, bytes.data(), bytes.size())) {
    const int err = errno;
    ::close(fd);
    fail("write", err);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    fail("fsync", err);
  }
  if (::close(fd) != 0) fail("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) fail("rename", errno);
  // Make the rename itself durable.
  std::string dir = fs::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_checkpoint(const std::string& path, torch::serialize::OutputArchive& archive) {
  std::ostringstream payload_stream;
  archive.save_to(payload_stream);
  const std::string payload = payload_stream.str();
  std::string bytes(kCheckpointMagic, sizeof(kCheckpointMagic));
  put_le(bytes, kCheckpointFormatVersion, 4);
  put_le(bytes, payload.size(), 8);
  put_le(bytes, crc32_of(payload.data(), payload.size()), 4);
  bytes += payload;
  write_file_atomic(path, bytes);
}

void read_checkpoint(const std::string& path, torch::serialize::InputArchive& archive,
                     c10::optional<c10::Device> device) {
  // Only a regular file is read, and never more than it holds: a symlink to
  // /dev/zero, a FIFO or a directory is refused by name (O_NONBLOCK: opening
  // a FIFO does not wait for a writer).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  TORCH_CHECK(fd >= 0, "cannot open checkpoint '", path, "': ", std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  TORCH_CHECK(::fstat(fd, &st) == 0, "cannot stat checkpoint '", path, "': ", std::strerror(errno));
  TORCH_CHECK(S_ISREG(st.st_mode), "checkpoint '", path, "' is not a regular file (",
              S_ISDIR(st.st_mode) ? "a directory" : S_ISCHR(st.st_mode) ? "a character device"
              : S_ISFIFO(st.st_mode) ? "a FIFO" : "a special file", ")");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  auto read_exact = [&](char* out, size_t size) {
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::read(fd, out + done, size - done);
      if (n < 0 && errno == EINTR) continue;
      TORCH_CHECK(n >= 0, "cannot read checkpoint '", path, "': ", std::strerror(errno));
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  };
  std::string bytes(std::min<uint64_t>(file_size, kCheckpointHeaderSize), '\0');
  bytes.resize(read_exact(bytes.data(), bytes.size()));
  TORCH_CHECK(bytes.size() >= kCheckpointHeaderSize, "checkpoint '", path, "' is truncated: ",
              bytes.size(), " bytes, shorter than the ", kCheckpointHeaderSize, "-byte header");
  TORCH_CHECK(std::memcmp(bytes.data(), kCheckpointMagic, sizeof(kCheckpointMagic)) == 0,
              "'", path, "' is not a specopt checkpoint (bad magic bytes)");
  const uint64_t version = get_le(bytes.data() + 8, 4);
  TORCH_CHECK(version == kCheckpointFormatVersion, "checkpoint '", path, "' has format version ",
              version, "; this build of specopt reads version ", kCheckpointFormatVersion);
  const uint64_t length = get_le(bytes.data() + 12, 8);
  // The payload read is bounded by the file's real size (never by the header alone).
  const uint64_t have = file_size - kCheckpointHeaderSize;
  TORCH_CHECK(have == length, "checkpoint '", path, "' is ",
              have < length ? "truncated" : "followed by extra bytes", ": the header announces ",
              length, " payload bytes, the file holds ", have);
  bytes.resize(kCheckpointHeaderSize + length);
  const size_t got = read_exact(bytes.data() + kCheckpointHeaderSize, length);
  TORCH_CHECK(got == length, "checkpoint '", path, "' is truncated: it shrank to ", got,
              " payload bytes while being read (", length, " announced)");
  const char* payload = bytes.data() + kCheckpointHeaderSize;
  const uint64_t crc = get_le(bytes.data() + 20, 4);
  TORCH_CHECK(crc32_of(payload, length) == crc, "checkpoint '", path,
              "' is corrupt: CRC-32 of the payload does not match the header");
  try {
    archive.load_from(payload, length, device);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "checkpoint '", path, "': unreadable archive: ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "checkpoint '", path, "': unreadable archive: ", e.what());
  }
}

}  // namespace specopt
