// Data of the controlled study: token streams for language models and
// 28×28 grayscale image sets (Fashion-MNIST) for the classifiers.
// Formats, the KJV split, the normalisation and every error are documented in
// docs/data.md.
//
// Determinism: nothing here uses the global torch generator. Random batches
// come either from a caller-owned at::Generator (TokenDataset::batch; its
// state, Generator::get_state(), is a uint8 tensor that can be saved and
// restored with set_state) or from the samplers below, whose whole state is a
// few integers (seed, position) so a trainer can checkpoint and resume
// bit-for-bit.
//
// Every reader raises c10::Error whose message names the file and the problem
// (missing, empty, bad magic, wrong dimensions, truncated/trailing bytes,
// corrupt gzip, odd byte count, token ≥ vocab — for a mapped .bin with a given
// vocab_size, raised by the batch that reads the token).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace specopt {

namespace detail {
struct MappedFile;  // a read-only POSIX mapping of a whole file (src/train/data_files.h)
}  // namespace detail

// A 1-D stream of token ids (bytes of a text, or nanoGPT uint16 tokens).
// Two storages behind one interface:
//  * in memory: int32 on the CPU (text, from_tokens);
//  * memory-mapped: a nanoGPT .bin file (from_bin), read-only and shared with
//    the page cache, never copied; the mapping lives as long as any dataset
//    (copy or slice) that uses it. OpenWebText's ~9 GB train.bin costs no
//    resident memory beyond the pages that batches touch.
// Batches are int64 and gather only the B×(T+1) tokens they need.
class TokenDataset {
 public:
  TokenDataset() = default;

  // Every byte of the file is a token (vocab_size 256).
  static TokenDataset from_text_file(const std::string& path);
  // Every byte of `text` is a token (vocab_size 256); `name` appears in errors.
  static TokenDataset from_text(const std::string& text, const std::string& name = "<text>");
  // nanoGPT train.bin / val.bin: raw little-endian uint16 tokens, no header,
  // memory-mapped. vocab_size 0 → max token + 1 (one full scan of the file at
  // open); vocab_size > 0 → no scan at open: every token read later (batches,
  // tokens()) is checked against it and a token ≥ vocab_size raises an error
  // naming the file and the token's position. The file must not be truncated
  // while mapped (the kernel would raise SIGBUS).
  static TokenDataset from_bin(const std::string& path, int64_t vocab_size = 0);
  // Any 1-D integer tensor with values in [0, vocab_size) (0 → max + 1); in memory.
  static TokenDataset from_tokens(const at::Tensor& tokens, int64_t vocab_size = 0,
                                  const std::string& name = "<tokens>");

  int64_t size() const { return size_; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& name() const { return name_; }  // file or given name
  bool is_mapped() const { return file_ != nullptr; }

  // Tokens [begin, end) as (end - begin) int32: a view of an in-memory stream,
  // a checked copy for a mapped file (4 bytes a token: meant for small ranges;
  // use batches to read a large mapped file).
  at::Tensor tokens(int64_t begin, int64_t end) const;
  at::Tensor tokens() const { return tokens(0, size()); }  // (N) int32

  // Tokens [begin, end) as a dataset with the same vocab_size (shares storage
  // or the mapping).
  TokenDataset slice(int64_t begin, int64_t end) const;
  // The same stream with another vocab_size (e.g. one vocabulary for a train
  // and a validation file). In memory, a smaller one is checked at once; for a
  // mapped file, at every read, as with from_bin(path, vocab_size).
  TokenDataset with_vocab_size(int64_t vocab_size) const;

  // Training batch: B offsets drawn uniformly from [0, size - T) with `gen`
  // (as nanoGPT: torch.randint(len(data) - block_size, (B,))); x[b] = tokens
  // [o_b, o_b + T), y[b] = tokens [o_b + 1, o_b + T + 1). Both (B, T) int64.
  std::pair<at::Tensor, at::Tensor> batch(int64_t batch_size, int64_t block_size,
                                          at::Generator& gen) const;
  // The same for given offsets (1-D int64, each in [0, size - T)).
  std::pair<at::Tensor, at::Tensor> batch_at(const at::Tensor& offsets, int64_t block_size) const;

  // Fixed evaluation batches: the stream cut into contiguous non-overlapping
  // blocks (block k starts at k·T), grouped B at a time in order. Only full
  // batches are used: num_sequential_batches = ⌊⌊(size - 1)/T⌋ / B⌋.
  int64_t num_sequential_batches(int64_t batch_size, int64_t block_size) const;
  std::pair<at::Tensor, at::Tensor> sequential_batch(int64_t index, int64_t batch_size,
                                                     int64_t block_size) const;

 private:
  // Tokens [begin, begin + count) of this stream into `out`, widened to T
  // (int32 or int64); tokens of a mapped file are checked against vocab_size.
  template <typename T>
  void read(int64_t begin, int64_t count, T* out) const;

  at::Tensor tokens_;                               // in memory: (size) int32
  std::shared_ptr<const detail::MappedFile> file_;  // mapped: the whole .bin file
  int64_t file_begin_ = 0;                          // mapped: first token within file_
  int64_t size_ = 0;
  int64_t vocab_size_ = 0;
  std::string name_;
};

// A token file by its extension: "*.bin" → TokenDataset::from_bin(path,
// vocab_size); anything else is text → from_text_file (vocab 256), or, when
// vocab_size > 0, its bytes with that vocab_size (every byte must be below it).
TokenDataset load_tokens(const std::string& path, int64_t vocab_size = 0);
// nanoGPT's prepared data directory: <dir>/train.bin and <dir>/val.bin; with
// vocab_size 0 both get max(token) + 1 over the two files.
std::pair<TokenDataset, TokenDataset> bin_train_val(const std::string& dir, int64_t vocab_size = 0);

// Writes the nanoGPT .bin format (uint16 little-endian). Requires vocab ≤ 65536.
void write_bin(const TokenDataset& data, const std::string& path);

// Splits off the last `val_fraction` of the stream as validation. The cut is
// at c = ⌊(1 - val_fraction)·N⌋, moved forward to just after the next
// `align_token` when align_token ≥ 0 (e.g. '\n' so validation starts at a line).
std::pair<TokenDataset, TokenDataset> split_train_val(const TokenDataset& data,
                                                      double val_fraction = 0.1,
                                                      int64_t align_token = -1);

// Cache directory: $SPECOPT_CACHE_DIR, else $XDG_CACHE_HOME/specopt, else
// $HOME/.cache/specopt, else ./.specopt_cache.
std::string default_cache_dir();

// The King James Bible text as printed by Debian's `bible` (package
// bible-kjv): `bible -f "Gen1:1-Rev22:21"`, one verse a line ("Ge1:1 In the
// beginning ..."), ~4.4 MB. Run once and cached as <cache_dir>/kjv.txt,
// with <cache_dir>/kjv.txt.check ("<size> <crc32>") beside it; a cache whose
// size or CRC-32 does not match (truncated, edited) or that has no check file
// is regenerated. Returns that path. Clear error if `bible` is missing or fails.
std::string kjv_text_file(const std::string& cache_dir = default_cache_dir());
// The default corpus: bytes of kjv_text_file, split with
// split_train_val(data, 0.1, '\n'): validation = the last 10 % of bytes,
// starting at a line start (inside Acts 22).
std::pair<TokenDataset, TokenDataset> kjv_train_val(const std::string& cache_dir = default_cache_dir());

// ---- samplers of training batches ---------------------------------------------

// A sampler's whole state as named integers, seed first, then the position
// (the seed, a uint64, as its int64 bit pattern). A trainer checkpoint stores
// entry NAME as "data_NAME" (docs/training.md), whatever the data kind.
using SamplerState = std::vector<std::pair<std::string, int64_t>>;

// The training-batch samplers below behind one interface: the trainer draws,
// saves and restores batches without knowing the data kind.
class BatchSampler {
 public:
  virtual ~BatchSampler() = default;
  // The next (inputs, targets) batch.
  virtual std::pair<at::Tensor, at::Tensor> next() = 0;
  virtual SamplerState named_state() const = 0;
  // Restores a named_state() of a sampler of the same kind (same names in the
  // same order, else c10::Error), checked as the typed set_state.
  virtual void set_named_state(const SamplerState& state) = 0;
};

// Random-offset training batches whose state is two integers: batch number k
// is TokenDataset::batch with a CPU generator seeded with
// splitmix64(seed ⊕ splitmix64(k)), so resuming at step k needs only (seed, k).
struct TokenSamplerState {
  uint64_t seed = 0;
  int64_t step = 0;  // number of batches drawn so far
};
class TokenBatchSampler : public BatchSampler {
 public:
  TokenBatchSampler(TokenDataset data, int64_t batch_size, int64_t block_size, uint64_t seed);
  std::pair<at::Tensor, at::Tensor> next() override;
  // Batch number k, without changing the state.
  std::pair<at::Tensor, at::Tensor> batch(int64_t k) const;
  const TokenSamplerState& state() const { return state_; }
  void set_state(const TokenSamplerState& state);
  SamplerState named_state() const override;  // seed, step
  void set_named_state(const SamplerState& state) override;
  const TokenDataset& data() const { return data_; }

 private:
  TokenDataset data_;
  int64_t batch_size_, block_size_;
  TokenSamplerState state_;
};

// Images (N, 1, H, W) float32, normalised: (pixel/255 - mean)/std; labels (N) int64.
struct ImageDataset {
  at::Tensor images;
  at::Tensor labels;
  int64_t size() const { return labels.defined() ? labels.numel() : 0; }
  ImageDataset slice(int64_t begin, int64_t end) const;
  // Fixed evaluation batches in order; the last one may be smaller.
  int64_t num_batches(int64_t batch_size) const;  // ⌈N / B⌉
  std::pair<at::Tensor, at::Tensor> batch(int64_t index, int64_t batch_size) const;
};

// mean/std of the Fashion-MNIST training pixels (scaled to [0, 1]), see docs/data.md.
struct ImageNormalization {
  double mean = 0.2860;
  double std = 0.3530;
};

// The classes of the image data (the width of the models' output layer).
constexpr int64_t kImageClasses = 10;

// One IDX file (LeCun's MNIST format) of unsigned bytes (type code 0x08):
// returns a uint8 tensor of the stored dimensions. gzip-compressed or plain
// (zlib reads both).
at::Tensor read_idx(const std::string& path);
// An image file (3-D: N, H, W) and a label file (1-D: N) → ImageDataset.
// Labels must lie in [0, kImageClasses) (checked at load: the error names the
// file and the first bad label's index).
ImageDataset load_idx(const std::string& images_path, const std::string& labels_path,
                      const ImageNormalization& normalization = {});
// (train, test) from <dir>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
// (Debian package dataset-fashion-mnist); .gz preferred when both exist.
std::pair<ImageDataset, ImageDataset> fashion_mnist(
    const std::string& dir = "/usr/share/datasets/fashion-mnist",
    const ImageNormalization& normalization = {});

// Epoch-based shuffled batches: epoch e visits a permutation drawn with a CPU
// generator seeded with splitmix64(seed ⊕ splitmix64(e)); the state is
// (seed, epoch, cursor). With drop_last, the ⌊N/B⌋ full batches of each epoch
// are used; otherwise the last batch of an epoch may be smaller.
struct EpochSamplerState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t cursor = 0;  // index of the next sample within the epoch's permutation
};
class ImageBatchSampler : public BatchSampler {
 public:
  ImageBatchSampler(ImageDataset data, int64_t batch_size, uint64_t seed, bool drop_last = true);
  std::pair<at::Tensor, at::Tensor> next() override;  // moves to the next epoch when one is done
  int64_t batches_per_epoch() const;
  const EpochSamplerState& state() const { return state_; }
  void set_state(const EpochSamplerState& state);
  SamplerState named_state() const override;  // seed, epoch, cursor
  void set_named_state(const SamplerState& state) override;
  const ImageDataset& data() const { return data_; }

 private:
  void ensure_permutation();
  ImageDataset data_;
  int64_t batch_size_;
  bool drop_last_;
  EpochSamplerState state_;
  at::Tensor permutation_;
  int64_t permutation_epoch_ = -1;
};

// splitmix64 (Steele, Lea, Flood 2014): the seed mixer of the samplers.
uint64_t splitmix64(uint64_t x);

}  // namespace specopt
