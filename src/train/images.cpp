// IDX image files, Fashion-MNIST, ImageDataset and ImageBatchSampler (data.h).
#include "specopt/train/data.h"

#include "train/data_files.h"

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
using detail::read_maybe_gzip;
using detail::sampler_generator;

// ---------------------------------------------------------------- IDX images

at::Tensor read_idx(const std::string& path) {
  const auto bytes = read_maybe_gzip(path);
  const size_t n = bytes.size();
  TORCH_CHECK(n >= 4, "'", path, "': truncated IDX header (", n, " bytes)");
  // Magic: two zero bytes, the element type, the number of dimensions.
  TORCH_CHECK(bytes[0] == 0 && bytes[1] == 0, "'", path,
              fmt::format("': bad magic 0x{:02x}{:02x}{:02x}{:02x} (not an IDX file; expected "
                          "0x0000 then type and rank, e.g. 0x00000803)",
                          bytes[0], bytes[1], bytes[2], bytes[3]));
  TORCH_CHECK(bytes[2] == 0x08, "'", path,
              fmt::format("': unsupported IDX element type 0x{:02x} (only unsigned byte 0x08)",
                          bytes[2]));
  const int64_t rank = bytes[3];
  TORCH_CHECK(rank >= 1, "'", path, "': IDX rank 0");
  const size_t header = 4 + 4 * static_cast<size_t>(rank);
  TORCH_CHECK(n >= header, "'", path, "': truncated IDX header (", n, " bytes, rank ", rank,
              " needs ", header, ")");
  std::vector<int64_t> dims(rank);
  for (int64_t i = 0; i < rank; ++i) {
    const uint8_t* b = bytes.data() + 4 + 4 * i;  // big-endian uint32
    dims[i] = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3];
  }
  uint64_t count = 1;
  for (int64_t i = 0; i < rank; ++i) {
    TORCH_CHECK(dims[i] > 0, "'", path, "': dimension ", i, " of ", at::IntArrayRef(dims), " is 0");
    const bool overflow = __builtin_mul_overflow(count, static_cast<uint64_t>(dims[i]), &count);
    TORCH_CHECK(!overflow && count <= n, "'", path, "': dimensions ", at::IntArrayRef(dims),
                " need more bytes than the file has (", n, "): truncated");
  }
  const size_t payload = n - header;
  TORCH_CHECK(payload >= count, "'", path, "': truncated: dimensions ", at::IntArrayRef(dims),
              " need ", count, " data bytes, found ", payload);
  TORCH_CHECK(payload == count, "'", path, "': ", payload - count,
              " trailing bytes after the data of dimensions ", at::IntArrayRef(dims));
  auto out = at::empty(dims, at::kByte);
  std::memcpy(out.data_ptr<uint8_t>(), bytes.data() + header, count);
  return out;
}

ImageDataset load_idx(const std::string& images_path, const std::string& labels_path,
                      const ImageNormalization& normalization) {
  TORCH_CHECK(normalization.std > 0.0 && std::isfinite(normalization.std) &&
                  std::isfinite(normalization.mean),
              "ImageNormalization: std must be finite and > 0, mean finite; got mean ",
              normalization.mean, ", std ", normalization.std);
  auto images = read_idx(images_path);
  TORCH_CHECK(images.dim() == 3, "'", images_path,
              "': an image file must have 3 dimensions (N, rows, cols), found ", images.sizes());
  auto labels = read_idx(labels_path);
  TORCH_CHECK(labels.dim() == 1, "'", labels_path,
              "': a label file must have 1 dimension (N), found ", labels.sizes());
  TORCH_CHECK(images.size(0) == labels.size(0), "'", images_path, "' has ", images.size(0),
              " images but '", labels_path, "' has ", labels.size(0), " labels");
  ImageDataset d;
  d.images = images.to(at::kFloat)
                 .div_(255.0)
                 .sub_(normalization.mean)
                 .div_(normalization.std)
                 .unsqueeze(1);
  d.labels = labels.to(at::kLong);
  // A bad label would otherwise surface only when a batch hits it, with
  // neither the file nor the position ("Target 200 is out of bounds.").
  const at::Tensor bad = (d.labels >= kImageClasses).nonzero();
  TORCH_CHECK(bad.numel() == 0, "'", labels_path, "': label ",
              bad.numel() ? d.labels[bad[0][0].item<int64_t>()].item<int64_t>() : 0, " at index ",
              bad.numel() ? bad[0][0].item<int64_t>() : 0, " lies outside [0, ", kImageClasses - 1, "] (",
              bad.size(0), " bad label(s))");
  return d;
}

std::pair<ImageDataset, ImageDataset> fashion_mnist(const std::string& dir,
                                                    const ImageNormalization& normalization) {
  auto find = [&](const std::string& stem) {
    const fs::path gz = fs::path(dir) / (stem + ".gz"), plain = fs::path(dir) / stem;
    std::error_code ec;
    if (fs::exists(gz, ec)) return gz.string();
    if (fs::exists(plain, ec)) return plain.string();
    TORCH_CHECK(false, "Fashion-MNIST file not found: neither '", gz.string(), "' nor '",
                plain.string(), "' exists (Debian package dataset-fashion-mnist)");
    return std::string();
  };
  // Looked up in a fixed order so the first missing file is the one reported.
  const std::string train_images = find("train-images-idx3-ubyte");
  const std::string train_labels = find("train-labels-idx1-ubyte");
  const std::string test_images = find("t10k-images-idx3-ubyte");
  const std::string test_labels = find("t10k-labels-idx1-ubyte");
  return {load_idx(train_images, train_labels, normalization),
          load_idx(test_images, test_labels, normalization)};
}

ImageDataset ImageDataset::slice(int64_t begin, int64_t end) const {
  TORCH_CHECK(0 <= begin && begin < end && end <= size(), "ImageDataset slice [", begin, ", ",
              end, ") is empty or outside [0, ", size(), ")");
  return {images.slice(0, begin, end), labels.slice(0, begin, end)};
}

int64_t ImageDataset::num_batches(int64_t batch_size) const {
  TORCH_CHECK(batch_size > 0, "batch_size must be > 0, got ", batch_size);
  return (size() + batch_size - 1) / batch_size;
}

std::pair<at::Tensor, at::Tensor> ImageDataset::batch(int64_t index, int64_t batch_size) const {
  const int64_t n = num_batches(batch_size);
  TORCH_CHECK(index >= 0 && index < n, "image batch ", index, " is outside [0, ", n,
              ") for batch_size ", batch_size);
  const int64_t begin = index * batch_size, end = std::min(size(), begin + batch_size);
  return {images.slice(0, begin, end), labels.slice(0, begin, end)};
}

// ---------------------------------------------------------------- ImageBatchSampler

ImageBatchSampler::ImageBatchSampler(ImageDataset data, int64_t batch_size, uint64_t seed,
                                     bool drop_last)
    : data_(std::move(data)), batch_size_(batch_size), drop_last_(drop_last) {
  TORCH_CHECK(data_.size() > 0, "ImageBatchSampler: empty dataset");
  TORCH_CHECK(batch_size > 0, "batch_size must be > 0, got ", batch_size);
  TORCH_CHECK(!drop_last || batch_size <= data_.size(), "batch_size ", batch_size,
              " exceeds the dataset size ", data_.size(), " (drop_last would leave no batch)");
  state_.seed = seed;
}

int64_t ImageBatchSampler::batches_per_epoch() const {
  return drop_last_ ? data_.size() / batch_size_ : data_.num_batches(batch_size_);
}

void ImageBatchSampler::ensure_permutation() {
  if (permutation_epoch_ == state_.epoch) return;
  auto gen = sampler_generator(state_.seed, static_cast<uint64_t>(state_.epoch));
  permutation_ = at::randperm(data_.size(), gen, at::kLong);
  permutation_epoch_ = state_.epoch;
}

std::pair<at::Tensor, at::Tensor> ImageBatchSampler::next() {
  ensure_permutation();
  const int64_t n = data_.size();
  const int64_t end = std::min(n, state_.cursor + batch_size_);
  auto index = permutation_.slice(0, state_.cursor, end);
  std::pair<at::Tensor, at::Tensor> result{data_.images.index_select(0, index),
                                           data_.labels.index_select(0, index)};
  state_.cursor = end;
  // Roll over as soon as the epoch has no batch left, so that the state after
  // the last batch of epoch e reads (e + 1, 0).
  if (n - state_.cursor < (drop_last_ ? batch_size_ : 1)) {
    ++state_.epoch;
    state_.cursor = 0;
  }
  return result;
}

void ImageBatchSampler::set_state(const EpochSamplerState& state) {
  TORCH_CHECK(state.epoch >= 0, "EpochSamplerState.epoch must be >= 0, got ", state.epoch);
  const int64_t last_start = drop_last_ ? data_.size() - batch_size_ : data_.size() - 1;
  TORCH_CHECK(state.cursor >= 0 && state.cursor <= last_start,
              "EpochSamplerState.cursor must be in [0, ", last_start, "], got ", state.cursor);
  state_ = state;
  permutation_epoch_ = -1;  // the seed may have changed
}

SamplerState ImageBatchSampler::named_state() const {
  return {{"seed", static_cast<int64_t>(state_.seed)}, {"epoch", state_.epoch}, {"cursor", state_.cursor}};
}

void ImageBatchSampler::set_named_state(const SamplerState& state) {
  const auto v = detail::named_state_values(state, {"seed", "epoch", "cursor"}, "ImageBatchSampler");
  set_state({static_cast<uint64_t>(v[0]), v[1], v[2]});
}

}  // namespace specopt
