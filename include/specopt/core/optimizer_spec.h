// OptimizerSpec: everything make_optimizer (make_optimizer.h) needs besides
// the parameters. A header of its own so the train layer's config
// (train/config.h, whose [optim] table holds one) need not include the
// optimizer classes. Its field table is visit_spec_fields (option_fields.h).
#pragma once

#include "specopt/core/spectral.h"
#include "specopt/core/update_rules.h"

#include <cstdint>
#include <string>
#include <vector>

namespace specopt {

struct OptimizerSpec {
  std::string variant = "AdamW";  // any parse_variant() string ("Adam", "mSGDZ", "adam:p=0.3"); "AdamW" = "Adam"
  double lr_matrix = 1e-3, lr_vector = 3e-4;
  double weight_decay_matrix = 0.0, weight_decay_vector = 0.0;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;  // Adam family, and the vector AdamW of mSGD
  double momentum = 0.9;                         // mSGD family
  bool nesterov = false;
  Method method = Method::kAuto;
  ScaleMode scale = ScaleMode::kAuto;
  // Matrices split into split_rows_blocks row blocks, each transformed on its
  // own (the packed Q, K, V), by either rule:
  //  * by name: the name contains one of split_rows_patterns (e.g. "c_attn");
  //  * by shape (split_rows_by_shape; the published study's rule): the row
  //    count (dim 0) is exactly split_rows_blocks × the column count (the
  //    other dims together): QKV 3d × d, and the embedding when vocab = 3d.
  std::vector<std::string> split_rows_patterns;
  bool split_rows_by_shape = false;
  int64_t split_rows_blocks = 3;
  // Matrices trained like the vectors (the vector group's AdamW, p = 1, lr_vector,
  // weight_decay_vector) instead of by Ψ_p, by exact parameter name: e.g. the
  // embeddings and the output head (Python: exclude_embeddings_and_head, docs/muon.md).
  // A name that matches no parameter is an error.
  std::vector<std::string> exclude_from_spectral;
  // A non-finite gradient raises (nothing changes), or skips the step (update_rules.h).
  OnNonFinite on_nonfinite = OnNonFinite::kRaise;
  // Ψ_p settings of the matrix groups; their `method` is ignored: `method` above wins.
  SpectralOptions spectral;
};

}  // namespace specopt
