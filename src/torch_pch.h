// Precompiled header for every specopt target: the heavy LibTorch headers.
// Only headers that nearly every translation unit includes belong here.
#pragma once
#include <ATen/ATen.h>
#include <torch/types.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize.h>
#include <torch/nn/module.h>
#include <fmt/format.h>
