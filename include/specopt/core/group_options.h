// The options every spectral optimizer's param group has, defined once and
// held by SpectralAdamWOptions and SpectralSGDOptions: the learning rate,
// decoupled weight decay, decay_vectors and the Ψ_p transform (one
// MatrixTransformOptions), with torch's lr interface (get_lr / set_lr).
//
// A CRTP base (over torch's OptimizerCloneableOptions), so the setters return
// the derived options and chain with its own ones: SpectralAdamWOptions(3e-3).p(0.5).method(Method::kNewton).betas({0.9, 0.95}).
// The setters p, method, scale, row_blocks and spectral forward to transform().
// The transform's `method` is the one that counts: the `method` field of
// `spectral` is ignored (and not saved); set method() instead.
#pragma once

#include "specopt/core/spectral.h"
#include "specopt/core/update_rules.h"

#include <c10/util/Exception.h>
#include <torch/optim/optimizer.h>

#include <cmath>
#include <cstdint>

namespace specopt {

// A getter, a mutable reference (for the field tables of option_fields.h) and
// a chaining setter for `name`, stored in `storage` (an lvalue).
#define SPECOPT_GROUP_OPTION(T, name, storage)            \
  Derived& name(const T& value) {                        \
    storage = value;                                     \
    return static_cast<Derived&>(*this);                 \
  }                                                      \
  const T& name() const noexcept { return storage; }     \
  T& name() noexcept { return storage; }

template <class Derived>
class SpectralGroupOptions : public torch::optim::OptimizerCloneableOptions<Derived> {
 public:
  SpectralGroupOptions(double lr, double weight_decay) : lr_(lr), weight_decay_(weight_decay) {}

  SPECOPT_GROUP_OPTION(double, lr, lr_)
  // Decoupled weight decay wd ≥ 0: W ← W(1 − lr·wd) before the update.
  SPECOPT_GROUP_OPTION(double, weight_decay, weight_decay_)
  // Decoupled weight decay on vectors (dim < 2) too; off as in the study.
  SPECOPT_GROUP_OPTION(bool, decay_vectors, decay_vectors_)
  // Ψ_p of the matrix updates (update_rules.h), whole or field by field.
  SPECOPT_GROUP_OPTION(MatrixTransformOptions, transform, transform_)
  SPECOPT_GROUP_OPTION(double, p, transform_.p())
  SPECOPT_GROUP_OPTION(Method, method, transform_.method())
  SPECOPT_GROUP_OPTION(ScaleMode, scale, transform_.scale())
  SPECOPT_GROUP_OPTION(int64_t, row_blocks, transform_.row_blocks())
  SPECOPT_GROUP_OPTION(SpectralOptions, spectral, transform_.spectral())

  double get_lr() const override { return lr_; }
  void set_lr(const double lr) override { lr_ = lr; }

 protected:
  // The checks of the learning rate and of the weight decay, then of the
  // transform, `who` (the optimizer's name) leading the message; c10::Error
  // naming the bad value. The derived check() runs its own fields' checks
  // between the two (the order of the messages of earlier versions).
  void check_lr(const char* who) const {
    TORCH_CHECK(std::isfinite(lr_) && lr_ >= 0, who, ": invalid learning rate: ", lr_);
  }
  void check_group(const char* who) const {
    TORCH_CHECK(std::isfinite(weight_decay_) && weight_decay_ >= 0, who, ": invalid weight_decay value: ",
                weight_decay_);
    check_transform_options(transform_);
  }

 private:
  double lr_;
  double weight_decay_;
  bool decay_vectors_ = false;
  MatrixTransformOptions transform_;
};

#undef SPECOPT_GROUP_OPTION

}  // namespace specopt
