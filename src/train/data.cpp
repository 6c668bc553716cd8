// Token streams, IDX image files, the KJV corpus and the deterministic
// samplers. See include/specopt/train/data.h and docs/data.md.
#include "specopt/train/data.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <zlib.h>

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

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// ---------------------------------------------------------------- mapped files

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

}  // namespace detail

namespace {

// The seeded CPU generator of sampler draw number k.
at::Generator sampler_generator(uint64_t seed, uint64_t k) {
  return at::detail::createCPUGenerator(splitmix64(seed ^ splitmix64(k)));
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

}  // namespace specopt
