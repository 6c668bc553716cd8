// Distributed training on c10d (Gloo, loopback): ranks are fork()ed children
// of the test (OMP_NUM_THREADS=1, so the parent has no thread pool to
// inherit). Children report through files in a temporary directory; the
// parent compares them with a single-process reference it computes itself.
#include "specopt/dist/distributed.h"
#include "specopt/core/make_optimizer.h"

#include <gtest/gtest.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

namespace fs = std::filesystem;
using specopt::dist::Communicator;
using specopt::dist::DistOptions;
using specopt::dist::GradientSynchronizer;
using specopt::dist::ShardedStep;
using Named = std::vector<std::pair<std::string, at::Tensor>>;

namespace {

fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("specopt_dist_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct RankOutcome {
  int exit_code = -1;      // 128 + signal if killed
  std::string error;       // what the rank's exception said
  double seconds = 0.0;    // from fork to exit
};

// Forks `n` ranks running body(rank); a rank that throws writes the message
// to DIR/rank<r>.err and exits 1. Ranks still running after `limit_s` are
// killed (the test then fails on their exit code: a hang).
std::vector<RankOutcome> run_ranks(int n, const fs::path& dir, const std::function<void(int)>& body,
                                   double limit_s = 60.0) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  std::vector<pid_t> pids;
  for (int r = 0; r < n; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      int code = 0;
      try {
        body(r);
      } catch (const std::exception& e) {
        std::ofstream(dir / ("rank" + std::to_string(r) + ".err")) << e.what();
        code = 1;
      }
      std::fflush(nullptr);
      std::_Exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<RankOutcome> out(n);
  int left = n;
  while (left > 0) {
    for (int r = 0; r < n; ++r) {
      if (pids[r] <= 0) continue;
      int status = 0;
      if (::waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        out[r].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        out[r].seconds = std::chrono::duration<double>(Clock::now() - start).count();
        out[r].error = read_text(dir / ("rank" + std::to_string(r) + ".err"));
        pids[r] = -1;
        --left;
      }
    }
    if (left > 0 && std::chrono::duration<double>(Clock::now() - start).count() > limit_s) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return out;
}

void expect_all_ok(const std::vector<RankOutcome>& outcomes) {
  for (size_t r = 0; r < outcomes.size(); ++r)
    ASSERT_EQ(outcomes[r].exit_code, 0) << "rank " << r << ": " << outcomes[r].error;
}

DistOptions rank_options(int rank, int world, int64_t port, double timeout_s = 20.0) {
  return DistOptions().rank(rank).world_size(world).master_port(port).timeout_s(timeout_s);
}

// ---- a small problem: a two-layer network with a packed "qkv" matrix that
// the optimizer splits into 3 row blocks, a non-square matrix, and vectors.
constexpr int64_t kBatch = 16;

Named make_parameters() {
  auto gen = at::detail::createCPUGenerator(1234);
  auto randn = [&](at::IntArrayRef s, double scale) {
    return (at::randn(s, gen, at::kDouble) * scale).set_requires_grad(true);
  };
  return {{"qkv.weight", randn({24, 8}, 0.3)},
          {"qkv.bias", randn({24}, 0.1)},
          {"proj.weight", randn({6, 24}, 0.2)},
          {"proj.bias", randn({6}, 0.1)},
          {"head.weight", randn({3, 6}, 0.4)}};
}

std::pair<at::Tensor, at::Tensor> global_batch(int step) {
  auto gen = at::detail::createCPUGenerator(1000 + step);
  at::Tensor x = at::randn({kBatch, 8}, gen, at::kDouble);
  at::Tensor y = at::randn({kBatch, 3}, gen, at::kDouble);
  return {x, y};
}

at::Tensor loss_of(const Named& p, const at::Tensor& x, const at::Tensor& y) {
  at::Tensor h = at::tanh(at::linear(x, p[0].second, p[1].second));
  at::Tensor o = at::tanh(at::linear(h, p[2].second, p[3].second));
  return at::mse_loss(at::linear(o, p[4].second), y);
}

specopt::OptimizerSpec spec_for(const std::string& variant) {
  specopt::OptimizerSpec s;
  s.variant = variant;
  s.lr_matrix = 0.02;
  s.lr_vector = 0.01;
  s.weight_decay_matrix = 0.1;
  // At step 1 Adam's u = g/(|g| + ε) is ≈ sign(g) when ε ≪ |g|, and small ±1
  // matrices are often exactly rank-deficient: Ψ_p with p < 1 of a singular
  // matrix depends discontinuously on the rounding noise, so no two
  // summation orders would agree. ε comparable to |g| keeps u well-conditioned.
  s.eps = 0.05;
  s.split_rows_patterns = {"qkv"};
  return s;
}

// One training step on this rank's shard of the global batch (the whole batch
// when comm is null).
void train_steps(const Named& params, specopt::CompositeOptimizer& opt, int from, int to,
                 const std::shared_ptr<Communicator>& comm, ShardedStep* sharded) {
  std::unique_ptr<GradientSynchronizer> sync;
  if (comm) sync = std::make_unique<GradientSynchronizer>(comm, /*bucket_mb=*/0.0005);  // several buckets
  for (int k = from; k < to; ++k) {
    auto [x, y] = global_batch(k);
    if (comm) {
      const int64_t per = kBatch / comm->world_size();
      x = x.narrow(0, comm->rank() * per, per);
      y = y.narrow(0, comm->rank() * per, per);
    }
    opt.zero_grad();
    loss_of(params, x, y).backward();
    std::vector<at::Tensor> ps;
    for (const auto& np : params) ps.push_back(np.second);
    if (sync) sync->synchronize(ps);
    if (sharded) {
      sharded->step([&] { opt.step(); });
    } else {
      opt.step();
    }
  }
}

std::vector<at::Tensor> values(const Named& params) {
  std::vector<at::Tensor> out;
  for (const auto& np : params) out.push_back(np.second.detach().clone());
  return out;
}

size_t state_entries(specopt::CompositeOptimizer& opt) {
  size_t n = 0;
  for (auto* o : opt.optimizers()) n += o->state().size();
  return n;
}

void save_checkpoint(const fs::path& path, const Named& params, specopt::CompositeOptimizer& opt) {
  torch::serialize::OutputArchive archive;
  for (const auto& np : params) archive.write("param." + np.first, np.second.detach());
  torch::serialize::OutputArchive optim;
  opt.save(optim);
  archive.write("optimizer", optim);
  archive.save_to(path.string());
}

void load_checkpoint(const fs::path& path, const Named& params, specopt::CompositeOptimizer& opt) {
  torch::serialize::InputArchive archive;
  archive.load_from(path.string());
  at::NoGradGuard no_grad;
  for (const auto& np : params) {
    at::Tensor t;
    archive.read("param." + np.first, t);
    np.second.copy_(t);
  }
  torch::serialize::InputArchive optim;
  archive.read("optimizer", optim);
  opt.load(optim);
}

// Tolerance for "same parameters as one rank" (float64 problem): the
// all-reduce averages the shard means instead of taking one mean over the
// global batch, so gradients differ by rounding (~1e-16 relative); Adam's
// division by √v̂ + ε and Ψ_p amplify that, but K steps stay far below 1e-9.
constexpr double kRtol = 1e-9, kAtol = 1e-10;

void expect_close(const std::vector<at::Tensor>& got, const std::vector<at::Tensor>& want,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    double diff = (got[i] - want[i]).abs().max().item<double>();
    EXPECT_TRUE(at::allclose(got[i], want[i], kRtol, kAtol))
        << what << ": parameter " << i << " differs by " << diff;
  }
}

}  // namespace

// ---------------------------------------------------------------- plan

TEST(ShardPlan, CostIsSmallSideSquaredTimesLargeSide) {
  EXPECT_DOUBLE_EQ(specopt::dist::spectral_cost({24, 8}), 8.0 * 8.0 * 24.0);
  EXPECT_DOUBLE_EQ(specopt::dist::spectral_cost({6, 24}), 6.0 * 6.0 * 24.0);
  // A conv weight is the (out, in·kh·kw) matrix: (16, 27).
  EXPECT_DOUBLE_EQ(specopt::dist::spectral_cost({16, 3, 3, 3}), 16.0 * 16.0 * 27.0);
  EXPECT_DOUBLE_EQ(specopt::dist::spectral_cost({5}), 5.0);
}

TEST(ShardPlan, GreedyLargestFirstOntoLeastLoaded) {
  // Costs: a 64, b 27, c 32, d 32, e 3  → order a, c, d, b, e:
  // a→0 (64|0), c→1 (64|32), d→1 (64|64), b→0 (91|64), e→1 (91|67).
  std::vector<std::vector<int64_t>> shapes = {{4, 4}, {3, 3}, {8, 2}, {2, 8}, {3}};
  auto plan = specopt::dist::plan_shards(shapes, 2);
  EXPECT_EQ(plan.owner, (std::vector<int64_t>{0, 0, 1, 1, 1}));
  EXPECT_EQ(plan.load, (std::vector<double>{91.0, 67.0}));
  EXPECT_EQ(plan.owned_by(1), (std::vector<size_t>{2, 3, 4}));
}

TEST(ShardPlan, EveryParameterHasExactlyOneOwnerAndLoadsAreBalanced) {
  // The study GPT's matrices (n_embd 768, 12 layers) plus vectors, on 1..8 ranks.
  std::vector<std::vector<int64_t>> shapes = {{50304, 768}, {1024, 768}};
  for (int l = 0; l < 12; ++l) {
    for (auto s : std::vector<std::vector<int64_t>>{
             {2304, 768}, {768, 768}, {3072, 768}, {768, 3072}, {768}, {768}, {2304}, {3072}})
      shapes.push_back(s);
  }
  for (int64_t n = 1; n <= 8; ++n) {
    auto plan = specopt::dist::plan_shards(shapes, n);
    ASSERT_EQ(plan.owner.size(), shapes.size());
    std::vector<double> load(n, 0.0);
    double total = 0, largest = 0;
    size_t owned = 0;
    for (int64_t r = 0; r < n; ++r) owned += plan.owned_by(r).size();
    EXPECT_EQ(owned, shapes.size()) << "each parameter owned exactly once";
    for (size_t i = 0; i < shapes.size(); ++i) {
      ASSERT_GE(plan.owner[i], 0);
      ASSERT_LT(plan.owner[i], n);
      double c = specopt::dist::spectral_cost(shapes[i]);
      load[plan.owner[i]] += c;
      total += c;
      largest = std::max(largest, c);
    }
    for (int64_t r = 0; r < n; ++r) EXPECT_DOUBLE_EQ(load[r], plan.load[r]);
    // Greedy list scheduling bound: max load ≤ total/n + largest cost.
    EXPECT_LE(*std::max_element(load.begin(), load.end()), total / n + largest);
    // Deterministic.
    EXPECT_EQ(specopt::dist::plan_shards(shapes, n).owner, plan.owner);
  }
}

// ---------------------------------------------------------------- training

class TwoRanksMatchOneRank : public ::testing::TestWithParam<std::string> {};

TEST_P(TwoRanksMatchOneRank, SameParametersAfterKSteps) {
  const std::string variant = GetParam();
  const int kSteps = 5;
  auto dir = temp_dir("match_" + variant);
  const int64_t port = specopt::dist::free_loopback_port();
  auto outcomes = run_ranks(2, dir, [&](int rank) {
    auto comm = std::make_shared<Communicator>(rank_options(rank, 2, port));
    Named params = make_parameters();
    auto opt = specopt::make_optimizer(params, spec_for(variant));
    ShardedStep sharded(comm, params);
    train_steps(params, *opt, 0, kSteps, comm, &sharded);
    torch::save(values(params), (dir / ("params" + std::to_string(rank) + ".pt")).string());
    // ZeRO-1: state exists exactly for the owned parameters.
    size_t owned = sharded.plan().owned_by(rank).size();
    std::ofstream(dir / ("state" + std::to_string(rank) + ".txt"))
        << state_entries(*opt) << " " << owned;
  });
  expect_all_ok(outcomes);

  Named params = make_parameters();
  auto opt = specopt::make_optimizer(params, spec_for(variant));
  train_steps(params, *opt, 0, kSteps, nullptr, nullptr);
  std::vector<at::Tensor> reference = values(params), initial = values(make_parameters());

  std::vector<at::Tensor> rank0, rank1;
  torch::load(rank0, (dir / "params0.pt").string());
  torch::load(rank1, (dir / "params1.pt").string());
  for (size_t i = 0; i < rank0.size(); ++i) {
    EXPECT_TRUE(at::equal(rank0[i], rank1[i])) << "ranks disagree on parameter " << i;
    EXPECT_FALSE(at::allclose(rank0[i], initial[i])) << "parameter " << i << " did not move";
  }
  expect_close(rank0, reference, variant);

  size_t total_state = 0;
  for (int r = 0; r < 2; ++r) {
    std::istringstream in(read_text(dir / ("state" + std::to_string(r) + ".txt")));
    size_t entries = 0, owned = 0;
    in >> entries >> owned;
    EXPECT_EQ(entries, owned) << "rank " << r << " holds state for parameters it does not own";
    EXPECT_GT(owned, 0u);
    total_state += entries;
  }
  EXPECT_EQ(total_state, params.size());
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Variants, TwoRanksMatchOneRank, ::testing::Values("AdamZ", "mSGDS"));

// Every forked part comes before this process's own training: LibTorch 2.x
// refuses autograd in a child forked after its parent ran a backward pass
// ("Unable to handle autograd's threading in combination with fork-based
// multiprocessing"; 1.13 refused it only once device threads existed).
TEST(DistributedCheckpoint, TwoRanksResumeOnOneAndOneOnTwo) {
  const std::string variant = "AdamQ";
  const int kFirst = 3, kTotal = 6;
  auto dir = temp_dir("ckpt");

  // 2 ranks for kFirst steps; rank 0 gathers the whole state and saves it.
  int64_t port = specopt::dist::free_loopback_port();
  expect_all_ok(run_ranks(2, dir, [&](int rank) {
    auto comm = std::make_shared<Communicator>(rank_options(rank, 2, port));
    Named params = make_parameters();
    auto opt = specopt::make_optimizer(params, spec_for(variant));
    ShardedStep sharded(comm, params);
    train_steps(params, *opt, 0, kFirst, comm, &sharded);
    sharded.gather_full_state(opt->optimizers());
    if (rank == 0) {
      if (state_entries(*opt) != params.size()) throw std::runtime_error("gathered state incomplete");
      save_checkpoint(dir / "from2.pt", params, *opt);
      sharded.drop_unowned_state(opt->optimizers());
    }
  }));

  // 1 rank (a forked child too) for kFirst steps, resume on 2 ranks.
  expect_all_ok(run_ranks(1, dir, [&](int) {
    Named params = make_parameters();
    auto opt = specopt::make_optimizer(params, spec_for(variant));
    train_steps(params, *opt, 0, kFirst, nullptr, nullptr);
    save_checkpoint(dir / "from1.pt", params, *opt);
  }));
  port = specopt::dist::free_loopback_port();
  expect_all_ok(run_ranks(2, dir, [&](int rank) {
    auto comm = std::make_shared<Communicator>(rank_options(rank, 2, port));
    Named params = make_parameters();
    auto opt = specopt::make_optimizer(params, spec_for(variant));
    load_checkpoint(dir / "from1.pt", params, *opt);
    ShardedStep sharded(comm, params);
    sharded.drop_unowned_state(opt->optimizers());
    if (state_entries(*opt) != sharded.plan().owned_by(rank).size())
      throw std::runtime_error("state of unowned parameters kept");
    train_steps(params, *opt, kFirst, kTotal, comm, &sharded);
    if (rank == 1) torch::save(values(params), (dir / "resumed.pt").string());
  }));

  // Reference: kTotal unsharded steps.
  Named ref_params = make_parameters();
  auto ref_opt = specopt::make_optimizer(ref_params, spec_for(variant));
  train_steps(ref_params, *ref_opt, 0, kTotal, nullptr, nullptr);
  const auto reference = values(ref_params);

  // Resume the 2-rank checkpoint on 1 rank.
  {
    Named params = make_parameters();
    auto opt = specopt::make_optimizer(params, spec_for(variant));
    load_checkpoint(dir / "from2.pt", params, *opt);
    EXPECT_EQ(state_entries(*opt), params.size());
    train_steps(params, *opt, kFirst, kTotal, nullptr, nullptr);
    expect_close(values(params), reference, "2 ranks → 1 rank");
  }
  std::vector<at::Tensor> resumed;
  torch::load(resumed, (dir / "resumed.pt").string());
  expect_close(resumed, reference, "1 rank → 2 ranks");
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- failures

TEST(DistributedFailure, DeadPeerMakesTheOtherRankFailWithinTimeout) {
  auto dir = temp_dir("dead");
  const int64_t port = specopt::dist::free_loopback_port();
  const double timeout = 5.0;
  auto outcomes = run_ranks(2, dir, [&](int rank) {
    auto comm = std::make_shared<Communicator>(rank_options(rank, 2, port, timeout));
    std::vector<at::Tensor> t{at::ones({1000})};
    comm->all_reduce_mean(t, 1 << 20);
    if (rank == 1) std::_Exit(3);  // dies without a word
    for (int i = 0; i < 100; ++i) comm->all_reduce_mean(t, 1 << 20);
  });
  EXPECT_EQ(outcomes[1].exit_code, 3);
  EXPECT_EQ(outcomes[0].exit_code, 1) << "the surviving rank must fail, not finish or hang";
  EXPECT_NE(outcomes[0].error.find("distributed gradient all-reduce failed"), std::string::npos)
      << outcomes[0].error;
  EXPECT_LT(outcomes[0].seconds, timeout + 10.0);
  fs::remove_all(dir);
}

TEST(DistributedFailure, HungPeerTimesOut) {
  auto dir = temp_dir("hung");
  const int64_t port = specopt::dist::free_loopback_port();
  const double timeout = 2.0;
  auto outcomes = run_ranks(2, dir, [&](int rank) {
    auto comm = std::make_shared<Communicator>(rank_options(rank, 2, port, timeout));
    if (rank == 1) {  // alive but never joins the collective (until rank 0 gave up)
      for (int i = 0; i < 150 && !fs::exists(dir / "rank0.err"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      std::_Exit(0);
    }
    std::vector<at::Tensor> t{at::ones({10})};
    comm->broadcast(t, 1);
  }, /*limit_s=*/30.0);
  EXPECT_EQ(outcomes[0].exit_code, 1);
  EXPECT_NE(outcomes[0].error.find("parameter broadcast failed"), std::string::npos) << outcomes[0].error;
  EXPECT_LT(outcomes[0].seconds, timeout + 8.0) << "rank 0 waited far past the timeout";
  fs::remove_all(dir);
}

TEST(DistributedFailure, PeerThatNeverArrivesFailsRendezvous) {
  auto dir = temp_dir("absent");
  const int64_t port = specopt::dist::free_loopback_port();
  auto outcomes = run_ranks(1, dir, [&](int) {
    Communicator comm(rank_options(0, 2, port, /*timeout_s=*/2.0));  // rank 1 never comes
  });
  EXPECT_EQ(outcomes[0].exit_code, 1);
  EXPECT_NE(outcomes[0].error.find("rendezvous"), std::string::npos) << outcomes[0].error;
  EXPECT_LT(outcomes[0].seconds, 10.0);
  fs::remove_all(dir);
}

TEST(DistributedOptions, BadValuesAreRejectedWithTheirName) {
  EXPECT_THROW(Communicator(DistOptions().rank(2).world_size(2)), c10::Error);
  try {
    Communicator comm(DistOptions().world_size(1).master_port(70000));
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("70000"), std::string::npos);
  }
  ::setenv("WORLD_SIZE", "two", 1);
  EXPECT_THROW(specopt::dist::options_from_env(), c10::Error);
  ::setenv("WORLD_SIZE", "3", 1);
  ::setenv("RANK", "1", 1);
  auto o = specopt::dist::options_from_env();
  EXPECT_EQ(o.world_size(), 3);
  EXPECT_EQ(o.rank(), 1);
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
}

// ---------------------------------------------------------------- the CLI

namespace {

// A tiny byte-level GPT on the KJV text (a few ms per step), checkpointing.
std::vector<std::string> gpt_args(int64_t steps) {
  std::vector<std::string> args = {"train", "--quiet"};
  for (std::string kv :
       {"model.kind=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "data.kind=kjv", "data.val_limit=65536", "train.batch_size=16", "train.warmup_steps=3",
        "train.eval_every=10", "train.eval_batches=4", "train.log_every=1", "train.checkpoint_every=5",
        "optim.variant=AdamZ", "optim.lr_matrix=1e-2", "optim.lr_vector=3e-3", "run.threads=1"}) {
    args.push_back("--set");
    args.push_back(kv);
  }
  args.push_back("--set");
  args.push_back("train.steps=" + std::to_string(steps));
  return args;
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

pid_t spawn_cli(const std::vector<std::string>& args, const fs::path& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    if (f) ::dup2(::fileno(stdout), STDERR_FILENO);
    std::vector<std::string> copy = args;
    std::vector<char*> argv{const_cast<char*>(SPECOPT_CLI_PATH)};
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(SPECOPT_CLI_PATH, argv.data());
    std::_Exit(127);
  }
  return pid;
}

// Exit code (128 + signal if killed); kills the process after limit_s.
int wait_cli(pid_t pid, double limit_s = 60.0) {
  const auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit_s) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::vector<double> train_losses(const fs::path& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  std::string line;
  while (std::getline(in, line)) {
    const auto key = line.find("\"train_loss\":");
    if (key != std::string::npos) out.push_back(std::stod(line.substr(key + 13)));
  }
  return out;
}

// pid of the child of `parent` whose environment has RANK=<rank>, or -1.
pid_t rank_child(pid_t parent, int rank) {
  std::istringstream children(
      read_text("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children"));
  pid_t pid;
  while (children >> pid) {
    // environ is NUL-separated: look for "\0RANK=<rank>\0".
    const std::string env = std::string(1, '\0') + read_text("/proc/" + std::to_string(pid) + "/environ");
    const std::string entry = std::string(1, '\0') + "RANK=" + std::to_string(rank) + std::string(1, '\0');
    if (env.find(entry) != std::string::npos)
      return pid;
  }
  return -1;
}

bool process_gone(pid_t pid) {
  std::string stat = read_text("/proc/" + std::to_string(pid) + "/stat");
  return stat.empty() || stat.find(") Z") != std::string::npos;
}

// Float32 GPT: the 2-rank gradient differs from the 1-rank one by rounding
// (~1e-7 relative); over a few dozen AdamZ steps the losses stay within 1e-3.
constexpr double kLossTol = 1e-3;

}  // namespace

TEST(DistributedCli, TrainNproc2MatchesOneRankSurvivesAKilledRankAndResumesOnOneRank) {
  auto dir = temp_dir("cli");
  const int64_t steps = 60;
  ASSERT_EQ(wait_cli(spawn_cli(plus(gpt_args(steps), {"--run-dir", (dir / "ref").string()}),
                               dir / "ref.log")),
            0)
      << read_text(dir / "ref.log");
  const auto reference = train_losses(dir / "ref" / "metrics.jsonl");
  ASSERT_EQ(reference.size(), static_cast<size_t>(steps));

  // Two ranks through `train --nproc 2`; rank 1 is SIGKILLed once a
  // checkpoint exists; the launcher must stop rank 0 and report rank 1's status.
  const fs::path run = dir / "run";
  pid_t launcher = spawn_cli(
      plus(gpt_args(steps), {"--run-dir", run.string(), "--nproc", "2", "--dist-timeout", "10"}), dir / "run.log");
  const auto start = std::chrono::steady_clock::now();
  while (train_losses(run / "metrics.jsonl").size() < 12 &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const pid_t rank0 = rank_child(launcher, 0), rank1 = rank_child(launcher, 1);
  ASSERT_GT(rank0, 0) << read_text(dir / "run.log");
  ASSERT_GT(rank1, 0) << read_text(dir / "run.log");
  const auto killed_at = std::chrono::steady_clock::now();
  ::kill(rank1, SIGKILL);
  const int code = wait_cli(launcher, 30.0);
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  EXPECT_EQ(code, 128 + SIGKILL) << read_text(dir / "run.log");
  EXPECT_LT(stop_s, 10.0);
  EXPECT_NE(read_text(dir / "run.log").find("rank 1 exited with status 137"), std::string::npos)
      << read_text(dir / "run.log");
  EXPECT_TRUE(process_gone(rank0)) << "rank 0 outlived the launcher";
  ASSERT_TRUE(fs::exists(run / "checkpoint.pt"));
  ASSERT_FALSE(fs::exists(run / "summary.json"));

  // The 2-rank checkpoint resumes on 1 rank; the whole loss curve matches 1 rank.
  ASSERT_EQ(wait_cli(spawn_cli(plus(gpt_args(steps), {"--run-dir", run.string(), "--resume"}),
                               dir / "resume.log")),
            0)
      << read_text(dir / "resume.log");
  const auto losses = train_losses(run / "metrics.jsonl");
  ASSERT_EQ(losses.size(), reference.size());
  for (size_t i = 0; i < losses.size(); ++i)
    EXPECT_NEAR(losses[i], reference[i], kLossTol) << "step " << i + 1;
  fs::remove_all(dir);
}

TEST(DistributedCli, RankFailsWithAMessageWhenItsPeerIsKilled) {
  auto dir = temp_dir("cli_peer");
  const std::string port = std::to_string(specopt::dist::free_loopback_port());
  auto rank_args = [&](int r) {
    return plus(gpt_args(400), {"--run-dir", (dir / "run").string(), "--rank", std::to_string(r),
                                "--world-size", "2", "--master-port", port, "--dist-timeout", "5"});
  };
  pid_t r0 = spawn_cli(rank_args(0), dir / "rank0.log");
  pid_t r1 = spawn_cli(rank_args(1), dir / "rank1.log");
  const auto start = std::chrono::steady_clock::now();
  while (train_losses(dir / "run" / "metrics.jsonl").size() < 3 &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto killed_at = std::chrono::steady_clock::now();
  ::kill(r1, SIGKILL);
  wait_cli(r1);
  const int code = wait_cli(r0, 30.0);
  const double stop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  const std::string log = read_text(dir / "rank0.log");
  EXPECT_EQ(code, 1) << log;
  EXPECT_LT(stop_s, 5.0 + 5.0) << "rank 0 took longer than the timeout (+ slack) to give up";
  EXPECT_NE(log.find("specopt: error: distributed"), std::string::npos) << log;
  fs::remove_all(dir);
}

TEST(DistributedCli, SigtermToTheLauncherCheckpointsEveryRankAndExits75) {
  // The launcher forwards the signal to both ranks once (they are in their own
  // process group); the ranks agree on the step, checkpoint and exit 75, and
  // the launcher returns 75 instead of treating a rank's 75 as a failure.
  auto dir = temp_dir("cli_sigterm");
  const int64_t steps = 400;
  const fs::path run = dir / "run";
  const pid_t launcher = spawn_cli(
      plus(gpt_args(steps), {"--run-dir", run.string(), "--nproc", "2", "--dist-timeout", "20"}), dir / "run.log");
  const auto start = std::chrono::steady_clock::now();
  while (train_losses(run / "metrics.jsonl").size() < 8 &&
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 60)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const pid_t rank0 = rank_child(launcher, 0), rank1 = rank_child(launcher, 1);
  ASSERT_GT(rank0, 0) << read_text(dir / "run.log");
  ASSERT_GT(rank1, 0) << read_text(dir / "run.log");
  ::kill(launcher, SIGTERM);
  EXPECT_EQ(wait_cli(launcher, 60.0), specopt::kExitInterrupted) << read_text(dir / "run.log");
  EXPECT_TRUE(process_gone(rank0));
  EXPECT_TRUE(process_gone(rank1));
  EXPECT_EQ(read_text(dir / "run.log").find("exited with status"), std::string::npos) << read_text(dir / "run.log");
  ASSERT_TRUE(fs::exists(run / "checkpoint.pt"));
  ASSERT_FALSE(fs::exists(run / "summary.json"));
  const size_t done = train_losses(run / "metrics.jsonl").size();
  EXPECT_LT(done, static_cast<size_t>(steps));

  // --resume on 2 ranks continues from the checkpoint to the end, one row per step.
  ASSERT_EQ(wait_cli(spawn_cli(plus(gpt_args(steps), {"--run-dir", run.string(), "--resume", "--nproc", "2"}),
                               dir / "resume.log"),
                     120.0),
            0)
      << read_text(dir / "resume.log");
  EXPECT_EQ(train_losses(run / "metrics.jsonl").size(), static_cast<size_t>(steps));
  fs::remove_all(dir);
}
