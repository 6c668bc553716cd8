// Distributed throughput on this machine (CPU, Gloo over loopback):
//  * training steps/s of the study's GPT on KJV (configs/study/kjv-gpt.toml:
//    4 layers, n_embd 128, block 128, batch 16, QKV split) with 1 rank vs 2
//    ranks (sharded optimizer, and replicated optimizer for comparison);
//  * the optimizer step alone: unsharded on 1 rank vs sharded on 2 ranks
//    (local share + parameter broadcast, timed separately).
// Every measurement runs in freshly forked processes (the parent never
// touches LibTorch), so thread pools and allocators start clean.
//
//   bench_distributed [--steps 30] [--warmup 5] [--variant AdamZ] [--out FILE]
//                     [--set key=value]...
// Prints one JSON document (also written to --out).
#include "specopt/train/config.h"
#include "specopt/dist/distributed.h"
#include "specopt/train/trainer.h"

#include <CLI/CLI.hpp>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Runs body(rank) in `world` forked processes; each may write a JSON result
// to dir/result<rank>.json. Returns rank 0's result.
json run_forked(int world, const fs::path& dir, const std::function<json(int)>& body) {
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        json out = body(r);
        std::ofstream(dir / ("result" + std::to_string(r) + ".json")) << out.dump();
      } catch (const std::exception& e) {
        std::cerr << "rank " << r << ": " << e.what() << "\n";
        code = 1;
      }
      std::fflush(nullptr);
      std::_Exit(code);
    }
    pids.push_back(pid);
  }
  bool ok = true;
  for (pid_t p : pids) {
    int status = 0;
    ::waitpid(p, &status, 0);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  if (!ok) throw std::runtime_error("a benchmark rank failed");
  std::ifstream in(dir / "result0.json");
  return json::parse(in);
}

std::shared_ptr<specopt::dist::Communicator> communicator(int rank, int world, int64_t port) {
  if (world == 1) return nullptr;
  return std::make_shared<specopt::dist::Communicator>(
      specopt::dist::DistOptions().rank(rank).world_size(world).master_port(port).timeout_s(120));
}

json train_rank(const specopt::TrainConfig& base, int rank, int world, int64_t port, int threads,
                bool sharded, int warmup, int steps) {
  at::set_num_threads(threads);
  specopt::TrainConfig c = base;
  c.run.threads = threads;
  auto comm = communicator(rank, world, port);
  specopt::TrainHooks hooks;
  if (comm)
    hooks = specopt::dist::make_train_hooks(comm, specopt::dist::TrainHookOptions().shard_optimizer(sharded));
  specopt::Trainer trainer(c, hooks);
  for (int i = 0; i < warmup; ++i) trainer.step();
  if (comm) comm->barrier();
  double optimizer_s = 0;
  const auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) optimizer_s += trainer.step().optimizer_s;
  const double s = since(t0);
  return {{"ranks", world},
          {"threads_per_rank", threads},
          {"sharded_optimizer", sharded},
          {"steps_per_s", steps / s},
          {"tokens_per_s", steps * c.train.batch_size * c.model.block_size / s},
          {"optimizer_ms_per_step", 1e3 * optimizer_s / steps}};
}

json step_rank(const specopt::TrainConfig& base, int rank, int world, int64_t port, int threads, int reps) {
  at::set_num_threads(threads);
  specopt::TrainConfig c = base;
  c.run.threads = threads;
  auto comm = communicator(rank, world, port);
  specopt::Trainer trainer(c);  // builds the model and its optimizer
  auto& opt = trainer.optimizer();
  auto named = specopt::dist::named_parameters_of(opt);
  auto gen = at::detail::createCPUGenerator(7);
  std::vector<at::Tensor> grads;
  for (auto& np : named) grads.push_back(at::randn(np.second.sizes(), gen) * 1e-3);
  auto set_grads = [&] {
    for (size_t i = 0; i < named.size(); ++i) named[i].second.mutable_grad() = grads[i].clone();
  };
  json out = {{"ranks", world}, {"threads_per_rank", threads}, {"variant", c.optim.variant}};
  set_grads();
  if (!comm) {
    opt.step();  // warm-up: state creation
    const auto t0 = Clock::now();
    for (int i = 0; i < reps; ++i) opt.step();
    out["step_ms"] = 1e3 * since(t0) / reps;
    return out;
  }
  specopt::dist::ShardedStep sharded(comm, named);
  sharded.step([&] { opt.step(); });
  double local = 0, bcast = 0;
  for (int i = 0; i < reps; ++i) {
    set_grads();
    comm->barrier();
    sharded.step([&] { opt.step(); });
    local += sharded.last_local_step_s();
    bcast += sharded.last_broadcast_s();
  }
  double total_cost = 0;
  for (double l : sharded.plan().load) total_cost += l;
  out["local_step_ms"] = 1e3 * local / reps;
  out["broadcast_ms"] = 1e3 * bcast / reps;
  out["step_ms"] = 1e3 * (local + bcast) / reps;
  out["rank0_cost_share"] = sharded.plan().load[0] / total_cost;
  out["parameters_owned_by_rank0"] = sharded.plan().owned_by(0).size();
  out["parameters"] = named.size();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Distributed training throughput: 1 vs 2 ranks, sharded vs unsharded optimizer step"};
  int steps = 30, warmup = 5, reps = 20;
  std::string variant = "AdamZ", out_path;
  std::vector<std::string> overrides;
  app.add_option("--steps", steps, "Timed training steps per configuration");
  app.add_option("--warmup", warmup, "Untimed training steps first");
  app.add_option("--reps", reps, "Timed optimizer steps");
  app.add_option("--variant", variant, "Optimizer variant");
  app.add_option("--set", overrides, "Config override table.key=value (repeatable)");
  app.add_option("--out", out_path, "Also write the JSON here");
  CLI11_PARSE(app, argc, argv);

  specopt::TrainConfig config;  // the study's GPT on KJV (configs/study/kjv-gpt.toml)
  for (const char* o : {"model.kind=gpt", "model.n_layer=4", "model.n_head=4", "model.n_embd=128",
                        "model.block_size=128", "data.kind=kjv", "train.batch_size=16", "optim.split_rows=c_attn"})
    specopt::apply_override(config, o);
  specopt::apply_override(config, "optim.variant=" + variant);
  specopt::apply_override(config, "train.steps=" + std::to_string(steps + warmup + 1));
  specopt::apply_override(config, "train.warmup_steps=1");
  for (const auto& o : overrides) specopt::apply_override(config, o);
  config.validate();

  const fs::path dir = fs::temp_directory_path() / ("specopt_bench_dist_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  json result = {{"command", "bench_distributed --steps " + std::to_string(steps) + " --warmup " +
                                 std::to_string(warmup) + " --reps " + std::to_string(reps) +
                                 " --variant " + variant},
                 {"cores", cores},
                 {"model", {{"n_layer", config.model.n_layer},
                            {"n_embd", config.model.n_embd},
                            {"block_size", config.model.block_size},
                            {"batch_size", config.train.batch_size}}},
                 {"train", json::array()},
                 {"optimizer_step", json::array()}};
  struct TrainCase { int world, threads; bool sharded; };
  const int split = std::max(1, cores / 2);
  for (TrainCase tc : {TrainCase{1, cores, true}, TrainCase{1, split, true}, TrainCase{2, split, true},
                       TrainCase{2, split, false}}) {
    const int64_t port = specopt::dist::free_loopback_port();
    result["train"].push_back(run_forked(tc.world, dir, [&](int r) {
      return train_rank(config, r, tc.world, port, tc.threads, tc.sharded, warmup, steps);
    }));
    std::cerr << result["train"].back().dump() << "\n";
  }
  for (auto [world, threads] : {std::pair<int, int>{1, cores}, {1, split}, {2, split}}) {
    const int64_t port = specopt::dist::free_loopback_port();
    result["optimizer_step"].push_back(
        run_forked(world, dir, [&](int r) { return step_rank(config, r, world, port, threads, reps); }));
    std::cerr << result["optimizer_step"].back().dump() << "\n";
  }
  fs::remove_all(dir);
  std::cout << result.dump(2) << "\n";
  if (!out_path.empty()) std::ofstream(out_path) << result.dump(2) << "\n";
  return 0;
}
