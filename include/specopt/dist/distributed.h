// Multi-process data-parallel training on torch c10d, with the spectral step
// sharded across ranks (ZeRO-1 style, as the distributed Muon implementations
// do).
//
//  * Communicator: rendezvous through a c10d TCPStore (rank 0 hosts it) and a
//    Gloo process group on CPU (NCCL on CUDA when LibTorch was built with it).
//    Every collective has a timeout: a peer that dies or never arrives makes
//    the others throw a c10::Error naming the problem instead of hanging.
//  * GradientSynchronizer: averages gradients with bucketed all-reduce
//    (flatten into ~bucket_mb buckets, all-reduce, unflatten).
//  * plan_shards: assigns each parameter to one owner rank by the cost of
//    its spectral transform, s²·L (s = smaller, L = larger side of the
//    (dim0, rest) matrix; a vector counts as 1 × numel), greedy largest-first
//    onto the least-loaded rank; deterministic, so every rank computes the
//    same plan without communicating.
//  * ShardedStep: runs the optimizer step on this rank's share only and then
//    broadcasts every parameter from its owner, so all ranks hold the same
//    parameters. Optimizer state of a parameter lives only on its owner.
//    Checkpoints still hold the whole state: gather_full_state() collects it
//    on rank 0 before saving, and drop_unowned_state() trims a full state
//    loaded on any number of ranks.
//  * launch_local: the `specopt launch` / `train --nproc` launcher.
//
// Environment (the usual torch.distributed names): RANK, WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT, plus SPECOPT_DIST_TIMEOUT (seconds) and
// GLOO_SOCKET_IFNAME (network interface Gloo binds to on multi-machine runs).
//
// This header gathers the four parts: communicator.h, shard_plan.h,
// sharded_step.h, launcher.h.
#pragma once

#include "specopt/dist/communicator.h"
#include "specopt/dist/launcher.h"
#include "specopt/dist/shard_plan.h"
#include "specopt/dist/sharded_step.h"
