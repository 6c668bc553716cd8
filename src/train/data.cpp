// Token streams (TokenDataset, .bin files, train/val splits) and their
// sampler. The KJV corpus: kjv.cpp; IDX images: images.cpp. See
// include/specopt/train/data.h and docs/data.md.
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
using detail::check_exists;
using detail::read_plain;
using detail::sampler_generator;

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

namespace {

// Tokens handled at a time when a whole stream is scanned or written.
constexpr int64_t kTokenChunk = int64_t{1} << 20;

at::Tensor bytes_to_int32(const uint8_t* data, int64_t n) {
  auto bytes = at::from_blob(const_cast<uint8_t*>(data), {n}, at::kByte);
  return bytes.to(at::kInt);  // copies
}

void check_batch_shape(const TokenDataset& d, int64_t batch_size, int64_t block_size) {
  TORCH_CHECK(batch_size > 0, "batch_size must be > 0, got ", batch_size);
  TORCH_CHECK(block_size > 0, "block_size must be > 0, got ", block_size);
  TORCH_CHECK(d.size() >= block_size + 1, "dataset '", d.name(), "' has ", d.size(),
              " tokens, fewer than block_size + 1 = ", block_size + 1);
}

}  // namespace

// ---------------------------------------------------------------- TokenDataset

TokenDataset TokenDataset::from_text(const std::string& text, const std::string& name) {
  TORCH_CHECK(!text.empty(), "text '", name, "' is empty");
  TokenDataset d;
  d.tokens_ = bytes_to_int32(reinterpret_cast<const uint8_t*>(text.data()),
                             static_cast<int64_t>(text.size()));
  d.size_ = d.tokens_.numel();
  d.vocab_size_ = 256;
  d.name_ = name;
  return d;
}

TokenDataset TokenDataset::from_text_file(const std::string& path) {
  const auto bytes = read_plain(path);
  TokenDataset d;
  d.tokens_ = bytes_to_int32(bytes.data(), static_cast<int64_t>(bytes.size()));
  d.size_ = d.tokens_.numel();
  d.vocab_size_ = 256;
  d.name_ = path;
  return d;
}

TokenDataset TokenDataset::from_bin(const std::string& path, int64_t vocab_size) {
  TORCH_CHECK(vocab_size >= 0, "from_bin('", path, "'): vocab_size must be >= 0, got ", vocab_size);
  check_exists(path);
  auto file = std::make_shared<const detail::MappedFile>(path);
  TORCH_CHECK(file->bytes % 2 == 0, "'", path, "': odd byte count ", file->bytes,
              " (a .bin file holds uint16 tokens, 2 bytes each)");
  const int64_t n = file->num_tokens();
  if (vocab_size == 0) {
    // The vocabulary is the data's: one pass over the whole file (parallel
    // chunks; sequential read-ahead while it lasts).
    file->advise(MADV_SEQUENTIAL);
    const int64_t max_token = at::parallel_reduce(
        0, n, int64_t{1} << 20, int64_t{0},
        [&](int64_t begin, int64_t end, int64_t m) {
          for (int64_t i = begin; i < end; ++i) m = std::max(m, file->token(i));
          return m;
        },
        [](int64_t x, int64_t y) { return std::max(x, y); });
    file->advise(MADV_NORMAL);
    vocab_size = max_token + 1;
  }
  TokenDataset d;
  d.file_ = std::move(file);
  d.size_ = n;
  d.vocab_size_ = vocab_size;
  d.name_ = path;
  return d;
}

TokenDataset TokenDataset::from_tokens(const at::Tensor& tokens, int64_t vocab_size,
                                       const std::string& name) {
  TORCH_CHECK(tokens.defined() && tokens.dim() == 1, "tokens '", name,
              "' must be a 1-D tensor");
  TORCH_CHECK(!at::isFloatingType(tokens.scalar_type()) && !at::isComplexType(tokens.scalar_type()) &&
                  tokens.scalar_type() != at::kBool,
              "tokens '", name, "' must have an integer dtype, got ", tokens.scalar_type());
  TORCH_CHECK(tokens.numel() > 0, "tokens '", name, "' are empty");
  TORCH_CHECK(vocab_size >= 0, "tokens '", name, "': vocab_size must be >= 0, got ", vocab_size);
  auto t = tokens.to(at::kCPU, at::kLong).contiguous();
  const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
  TORCH_CHECK(lo >= 0, "tokens '", name, "': negative token ", lo);
  TORCH_CHECK(hi <= std::numeric_limits<int32_t>::max(), "tokens '", name, "': token ", hi,
              " does not fit in int32");
  TORCH_CHECK(vocab_size == 0 || hi < vocab_size, "tokens '", name, "': token ", hi,
              " is >= vocab_size ", vocab_size);
  TokenDataset d;
  d.tokens_ = t.to(at::kInt);
  d.size_ = d.tokens_.numel();
  d.vocab_size_ = vocab_size > 0 ? vocab_size : hi + 1;
  d.name_ = name;
  return d;
}

template <typename T>
void TokenDataset::read(int64_t begin, int64_t count, T* out) const {
  if (!file_) {
    const int32_t* in = tokens_.data_ptr<int32_t>() + begin;  // validated when built
    std::copy(in, in + count, out);
    return;
  }
  const detail::MappedFile& f = *file_;
  const int64_t first = file_begin_ + begin;
  int64_t max_token = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t v = f.token(first + i);
    out[i] = static_cast<T>(v);
    max_token = std::max(max_token, v);
  }
  if (max_token < vocab_size_) return;
  const int64_t bad = std::find_if(out, out + count, [&](T v) { return v >= vocab_size_; }) - out;
  TORCH_CHECK(false, "'", f.path, "': token ", out[bad], " at position ", first + bad,
              " (byte offset ", 2 * (first + bad), ") is >= vocab_size ", vocab_size_);
}

at::Tensor TokenDataset::tokens(int64_t begin, int64_t end) const {
  TORCH_CHECK(0 <= begin && begin <= end && end <= size(), "token range [", begin, ", ", end,
              ") of '", name_, "' is outside [0, ", size(), "]");
  if (!file_) return tokens_.defined() ? tokens_.slice(0, begin, end) : at::empty({0}, at::kInt);
  auto out = at::empty({end - begin}, at::kInt);
  read(begin, end - begin, out.data_ptr<int32_t>());
  return out;
}

TokenDataset TokenDataset::slice(int64_t begin, int64_t end) const {
  TORCH_CHECK(0 <= begin && begin < end && end <= size(), "slice [", begin, ", ", end,
              ") of '", name_, "' is empty or outside [0, ", size(), ")");
  TokenDataset d = *this;
  if (file_) {
    d.file_begin_ = file_begin_ + begin;
  } else {
    d.tokens_ = tokens_.slice(0, begin, end);
  }
  d.size_ = end - begin;
  d.name_ = fmt::format("{}[{}:{}]", name_, begin, end);
  return d;
}

TokenDataset TokenDataset::with_vocab_size(int64_t vocab_size) const {
  TORCH_CHECK(vocab_size > 0, "with_vocab_size: vocab_size must be > 0, got ", vocab_size);
  if (!file_ && vocab_size < vocab_size_ && size() > 0) {
    const int64_t hi = tokens_.max().item<int64_t>();
    TORCH_CHECK(hi < vocab_size, "tokens '", name_, "': token ", hi, " is >= vocab_size ",
                vocab_size);
  }
  TokenDataset d = *this;
  d.vocab_size_ = vocab_size;
  return d;
}

std::pair<at::Tensor, at::Tensor> TokenDataset::batch(int64_t batch_size, int64_t block_size,
                                                      at::Generator& gen) const {
  check_batch_shape(*this, batch_size, block_size);
  TORCH_CHECK(gen.device().is_cpu(), "TokenDataset::batch needs a CPU generator, got one on ",
              gen.device());
  auto offsets = at::randint(size() - block_size, {batch_size}, gen, at::kLong);
  return batch_at(offsets, block_size);
}

std::pair<at::Tensor, at::Tensor> TokenDataset::batch_at(const at::Tensor& offsets,
                                                         int64_t block_size) const {
  check_batch_shape(*this, 1, block_size);
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() > 0, "offsets must be a non-empty 1-D tensor");
  auto o = offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t lo = o.min().item<int64_t>(), hi = o.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < size() - block_size, "offsets must be in [0, ", size() - block_size,
              ") for '", name_, "' and block_size ", block_size, ", got range [", lo, ", ", hi, "]");
  // Rows of T + 1 consecutive tokens, read straight into int64; x = the
  // first T, y = the last T.
  const int64_t rows_n = o.size(0), row_len = block_size + 1;
  auto rows = at::empty({rows_n, row_len}, at::kLong);
  const int64_t* starts = o.data_ptr<int64_t>();
  int64_t* out = rows.data_ptr<int64_t>();
  for (int64_t b = 0; b < rows_n; ++b) read(starts[b], row_len, out + b * row_len);
  return {rows.slice(1, 0, block_size).contiguous(), rows.slice(1, 1).contiguous()};
}

int64_t TokenDataset::num_sequential_batches(int64_t batch_size, int64_t block_size) const {
  TORCH_CHECK(batch_size > 0 && block_size > 0, "batch_size and block_size must be > 0, got ",
              batch_size, " and ", block_size);
  if (size() < 1) return 0;
  return ((size() - 1) / block_size) / batch_size;
}

std::pair<at::Tensor, at::Tensor> TokenDataset::sequential_batch(int64_t index, int64_t batch_size,
                                                                 int64_t block_size) const {
  const int64_t n = num_sequential_batches(batch_size, block_size);
  TORCH_CHECK(index >= 0 && index < n, "sequential batch ", index, " of '", name_,
              "' is outside [0, ", n, ") for batch_size ", batch_size, ", block_size ",
              block_size);
  auto blocks = at::arange(index * batch_size, (index + 1) * batch_size, at::kLong);
  return batch_at(blocks * block_size, block_size);
}

TokenDataset load_tokens(const std::string& path, int64_t vocab_size) {
  if (fs::path(path).extension() == ".bin") return TokenDataset::from_bin(path, vocab_size);
  auto text = TokenDataset::from_text_file(path);
  return vocab_size > 0 ? TokenDataset::from_tokens(text.tokens(), vocab_size, path) : text;
}

std::pair<TokenDataset, TokenDataset> bin_train_val(const std::string& dir, int64_t vocab_size) {
  const std::string train_path = (fs::path(dir) / "train.bin").string();
  const std::string val_path = (fs::path(dir) / "val.bin").string();
  auto train = TokenDataset::from_bin(train_path, vocab_size);
  auto val = TokenDataset::from_bin(val_path, vocab_size);
  if (vocab_size > 0) return {train, val};
  const int64_t v = std::max(train.vocab_size(), val.vocab_size());
  return {train.with_vocab_size(v), val.with_vocab_size(v)};
}

void write_bin(const TokenDataset& data, const std::string& path) {
  TORCH_CHECK(data.size() > 0, "write_bin('", path, "'): dataset is empty");
  TORCH_CHECK(data.vocab_size() <= 65536, "write_bin('", path, "'): vocab_size ",
              data.vocab_size(), " does not fit in uint16");
  const int64_t n = data.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  TORCH_CHECK(out, "cannot write '", path, "': ", std::strerror(errno));
  // In chunks, so that a mapped stream is never materialised whole.
  std::vector<uint8_t> bytes;
  for (int64_t begin = 0; begin < n && out; begin += kTokenChunk) {
    const int64_t end = std::min(n, begin + kTokenChunk);
    const auto tokens = data.tokens(begin, end).contiguous();
    const int32_t* in = tokens.data_ptr<int32_t>();
    bytes.resize(2 * static_cast<size_t>(end - begin));
    for (int64_t i = 0; i < end - begin; ++i) {  // little-endian regardless of the host
      bytes[2 * i] = static_cast<uint8_t>(in[i] & 0xff);
      bytes[2 * i + 1] = static_cast<uint8_t>((in[i] >> 8) & 0xff);
    }
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  out.close();
  TORCH_CHECK(out, "error writing '", path, "'");
}

std::pair<TokenDataset, TokenDataset> split_train_val(const TokenDataset& data, double val_fraction,
                                                      int64_t align_token) {
  TORCH_CHECK(val_fraction > 0.0 && val_fraction < 1.0, "val_fraction must be in (0, 1), got ",
              val_fraction);
  const int64_t n = data.size();
  int64_t cut = static_cast<int64_t>(std::floor((1.0 - val_fraction) * static_cast<double>(n)));
  if (align_token >= 0 && cut > 0 && cut < n &&
      data.tokens(cut - 1, cut).item<int64_t>() != align_token) {
    // Move the cut to just after the next align_token (chunk by chunk: a
    // mapped stream is never materialised whole); none → the cut stays.
    for (int64_t begin = cut; begin < n; begin += kTokenChunk) {
      const auto chunk = data.tokens(begin, std::min(n, begin + kTokenChunk)).contiguous();
      const int32_t* t = chunk.data_ptr<int32_t>();
      const int32_t* hit = std::find(t, t + chunk.numel(), align_token);
      if (hit != t + chunk.numel()) {
        cut = begin + (hit - t) + 1;
        break;
      }
    }
  }
  TORCH_CHECK(cut > 0 && cut < n, "split of '", data.name(), "' (", n,
              " tokens) at val_fraction ", val_fraction, " leaves an empty part");
  return {data.slice(0, cut), data.slice(cut, n)};
}

// ---------------------------------------------------------------- TokenBatchSampler

TokenBatchSampler::TokenBatchSampler(TokenDataset data, int64_t batch_size, int64_t block_size,
                                     uint64_t seed)
    : data_(std::move(data)), batch_size_(batch_size), block_size_(block_size) {
  check_batch_shape(data_, batch_size, block_size);
  state_.seed = seed;
}

std::pair<at::Tensor, at::Tensor> TokenBatchSampler::batch(int64_t k) const {
  TORCH_CHECK(k >= 0, "batch number must be >= 0, got ", k);
  auto gen = sampler_generator(state_.seed, static_cast<uint64_t>(k));
  return data_.batch(batch_size_, block_size_, gen);
}

std::pair<at::Tensor, at::Tensor> TokenBatchSampler::next() {
  auto result = batch(state_.step);
  ++state_.step;
  return result;
}

void TokenBatchSampler::set_state(const TokenSamplerState& state) {
  TORCH_CHECK(state.step >= 0, "TokenSamplerState.step must be >= 0, got ", state.step);
  state_ = state;
}

SamplerState TokenBatchSampler::named_state() const {
  return {{"seed", static_cast<int64_t>(state_.seed)}, {"step", state_.step}};
}

void TokenBatchSampler::set_named_state(const SamplerState& state) {
  const auto v = detail::named_state_values(state, {"seed", "step"}, "TokenBatchSampler");
  set_state({static_cast<uint64_t>(v[0]), v[1]});
}

}  // namespace specopt
