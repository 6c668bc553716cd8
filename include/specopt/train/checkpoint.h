// Checkpoint files: a small versioned header around a LibTorch archive.
//
//   offset  size  field
//   0       8     magic "SPECCKPT" (kCheckpointMagic)
//   8       4     format version, uint32 little-endian (kCheckpointFormatVersion)
//   12      8     payload length in bytes, uint64 little-endian
//   20      4     CRC-32 (zlib) of the payload, uint32 little-endian
//   24      …     payload: torch::serialize::OutputArchive (zip)
//
// so a truncated file (length), a corrupted one (CRC), a foreign one (magic)
// and one from another format version are each reported by name before
// LibTorch parses anything. Files are written atomically: to PATH.tmp, fsync,
// rename over PATH, fsync of the directory; a crash leaves the old file or
// the new one, never a mix.
//
// What a trainer checkpoint holds is listed in docs/training.md.
#pragma once

#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cstdint>
#include <string>

namespace specopt {

constexpr char kCheckpointMagic[8] = {'S', 'P', 'E', 'C', 'C', 'K', 'P', 'T'};
// Bump when the payload layout changes incompatibly.
constexpr uint32_t kCheckpointFormatVersion = 1;
constexpr size_t kCheckpointHeaderSize = 24;

// Writes `bytes` to `path` atomically (temp file, fsync, rename, directory fsync).
// Throws c10::Error naming the file and the system error.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Header + archive → `path`, atomically.
void write_checkpoint(const std::string& path, torch::serialize::OutputArchive& archive);

// Reads and checks `path` and loads its payload into `archive`. Throws
// c10::Error naming the file and the problem: missing, not a checkpoint,
// format version ≠ kCheckpointFormatVersion, truncated, CRC mismatch,
// unreadable archive.
// Tensors are mapped to `device` when given.
void read_checkpoint(const std::string& path, torch::serialize::InputArchive& archive,
                     c10::optional<c10::Device> device = c10::nullopt);

}  // namespace specopt
