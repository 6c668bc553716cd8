// Memory-mapped nanoGPT .bin datasets: the cost of opening a file (with and
// without the max-token scan) and of gathering training batches from the
// mapping. The file (SPECOPT_BENCH_BIN_MB megabytes of random uint16 tokens,
// default 256) is written once to the temp directory; timings are with the
// file in the page cache.
//   build/bench_data --benchmark_format=json
#include "specopt/train/data.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

namespace fs = std::filesystem;

int64_t file_tokens() {
  const char* mb = std::getenv("SPECOPT_BENCH_BIN_MB");
  return (mb ? std::atoll(mb) : 256) * (int64_t{1} << 20) / 2;
}

// Written on first use, removed when the process exits.
struct BenchFile {
  std::string path;
  BenchFile() {
    path = (fs::temp_directory_path() / ("specopt_bench_" + std::to_string(::getpid()) + ".bin"))
               .string();
    auto gen = at::detail::createCPUGenerator(1);
    auto tokens = at::randint(50257, {file_tokens()}, gen, at::kInt);
    specopt::write_bin(specopt::TokenDataset::from_tokens(tokens, 50304), path);
  }
  ~BenchFile() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

const std::string& bench_file() {
  static const BenchFile file;
  return file.path;
}

// from_bin with vocab_size 0: maps and scans every token for the maximum.
void BM_OpenWithScan(benchmark::State& state) {
  const auto& path = bench_file();
  specopt::TokenDataset::from_bin(path);  // warm the page cache
  for (auto _ : state) benchmark::DoNotOptimize(specopt::TokenDataset::from_bin(path).vocab_size());
  state.SetBytesProcessed(state.iterations() * file_tokens() * 2);
}
BENCHMARK(BM_OpenWithScan)->Unit(benchmark::kMillisecond);

// from_bin with a given vocab_size: maps only.
void BM_OpenGivenVocab(benchmark::State& state) {
  const auto& path = bench_file();
  for (auto _ : state) benchmark::DoNotOptimize(specopt::TokenDataset::from_bin(path, 50304).size());
}
BENCHMARK(BM_OpenGivenVocab)->Unit(benchmark::kMicrosecond);

// One random training batch (B, T) gathered from the mapping (checked, int64).
void BM_MappedBatch(benchmark::State& state) {
  const auto d = specopt::TokenDataset::from_bin(bench_file(), 50304);
  const int64_t B = state.range(0), T = state.range(1);
  auto gen = at::detail::createCPUGenerator(7);
  for (auto _ : state) benchmark::DoNotOptimize(d.batch(B, T, gen).first.data_ptr());
  state.SetItemsProcessed(state.iterations() * B * (T + 1));
}
BENCHMARK(BM_MappedBatch)->Args({12, 1024})->Args({64, 1024})->Unit(benchmark::kMicrosecond);

// The same batches from an in-memory int32 copy of the stream, for comparison.
void BM_InMemoryBatch(benchmark::State& state) {
  const auto d = specopt::TokenDataset::from_tokens(
      specopt::TokenDataset::from_bin(bench_file(), 50304).tokens(), 50304);
  const int64_t B = state.range(0), T = state.range(1);
  auto gen = at::detail::createCPUGenerator(7);
  for (auto _ : state) benchmark::DoNotOptimize(d.batch(B, T, gen).first.data_ptr());
  state.SetItemsProcessed(state.iterations() * B * (T + 1));
}
BENCHMARK(BM_InMemoryBatch)->Args({12, 1024})->Args({64, 1024})->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
