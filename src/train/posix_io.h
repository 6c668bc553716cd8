// Small POSIX file helpers shared by the train layer (checkpoint.cpp, run_dir.cpp).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace specopt {
namespace detail {

// write(2) until all of `bytes` is written; false (errno set) on an error.
inline bool write_all(int fd, const char* bytes, size_t size) {
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace detail
}  // namespace specopt
