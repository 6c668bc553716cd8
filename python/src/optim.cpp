// specopt._C, optimizer part: the functional update rules of update_rules.h
// over a Python optimizer's state, and the C++ optimizer classes as a
// reference for tests.
//
// A Python param group is a dict ({"lr": .., "p": .., "spectral": {..}, ...});
// it becomes the C++ SpectralAdamWOptions / SpectralSGDOptions by their field
// tables (option_fields.h: GroupReader / DictWriter), and check() validates it. The validators
// (check(), parse_method, parse_scale_mode, parse_variant) judge options
// only, so every c10::Error they raise is re-raised as ValueError: that list
// is the binding's explicit "option error" table.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bindings.h"
#include "specopt/core/make_optimizer.h"
#include "specopt/core/option_fields.h"
#include "specopt/core/spectral_adamw.h"
#include "specopt/core/spectral_sgd.h"
#include "specopt/core/update_rules.h"
#include "specopt/core/variants.h"

namespace specopt {
namespace python {

namespace {

template <typename T>
T group_value(const py::dict& group, const char* key, const char* type) {
  if (!group.contains(key)) throw py::value_error(std::string("param group has no '") + key + "'");
  const py::handle value = group[key];
  const bool want_bool = std::is_same<T, bool>::value;
  if (PyBool_Check(value.ptr()) != want_bool) {
    throw py::type_error(std::string("param group option '") + key + "' must be " + type + ", got " +
                         std::string(py::str(py::type::of(value).attr("__name__"))));
  }
  try {
    return value.cast<T>();
  } catch (const py::cast_error&) {
    throw py::type_error(std::string("param group option '") + key + "' must be " + type + ", got " +
                         std::string(py::str(py::type::of(value).attr("__name__"))));
  }
}

// A group's "spectral": None or absent = the defaults; a dict of spectral
// options without "method" (the group's own "method" is the one used).
void read_group_spectral(const py::dict& g, SpectralOptions& out) {
  const py::handle spectral = g.contains("spectral") ? g["spectral"] : py::handle(py::none());
  if (spectral.is_none()) return;
  if (!py::isinstance<py::dict>(spectral)) {
    throw py::type_error("param group option 'spectral' must be a dict of spectral options");
  }
  const auto options = spectral.cast<py::dict>();
  if (options.contains("method")) {
    throw py::value_error("param group 'spectral' options must not set 'method': set the group's "
                          "'method' instead");
  }
  out = spectral_options_from(options);
}

// Sets each field of an option table (option_fields.h) from the group dict's
// entry of that name: TypeError naming a wrongly typed one, ValueError a bad name.
struct GroupReader {
  const py::dict& g;
  template <class T>
  void operator()(const std::string& name, T& field) const {
    if constexpr (std::is_same<T, SpectralOptions>::value) {
      read_group_spectral(g, field);
    } else if constexpr (is_named_enum<T>::value) {
      const auto text = group_value<std::string>(g, name.c_str(), python_type_name<T>());
      field = as_value_error([&] { return EnumNames<T>::parse(text); });
    } else {
      field = group_value<T>(g, name.c_str(), python_type_name<T>());
    }
  }
};

// Writes each field as a dict entry of that name: enums by name, the betas as a
// tuple, spectral options as {name: value} of those that differ from the defaults.
struct DictWriter {
  py::dict& d;
  template <class T>
  void operator()(const std::string& name, const T& field) const {
    if constexpr (std::is_same<T, SpectralOptions>::value) {
      d[py::str(name)] = spectral_options_dict(field);
    } else if constexpr (is_named_enum<T>::value) {
      d[py::str(name)] = EnumNames<T>::name(field);
    } else if constexpr (std::is_same<T, std::tuple<double, double>>::value) {
      d[py::str(name)] = py::make_tuple(std::get<0>(field), std::get<1>(field));
    } else {
      d[py::str(name)] = field;
    }
  }
};

py::dict adamw_group(const SpectralAdamWOptions& o) {
  py::dict d;
  visit_adamw_fields(o, DictWriter{d});
  d["update"] = "adamw";
  return d;
}

py::dict sgd_group(const SpectralSGDOptions& o) {
  py::dict d;
  visit_sgd_fields(o, DictWriter{d});
  d["update"] = "sgd";
  return d;
}

SpectralAdamWOptions adamw_options(const py::dict& g) {
  SpectralAdamWOptions o;
  visit_adamw_fields(o, GroupReader{g});
  as_value_error([&] { o.check(); });
  return o;
}

SpectralSGDOptions sgd_options(const py::dict& g) {
  SpectralSGDOptions o(0.0);
  visit_sgd_fields(o, GroupReader{g});
  as_value_error([&] { o.check(); });
  return o;
}

py::dict adamw_defaults() { return adamw_group(SpectralAdamWOptions()); }

py::dict sgd_defaults() {
  py::dict d = sgd_group(SpectralSGDOptions(0.0));
  d.attr("pop")("lr");  // no default (required, as in torch.optim.SGD)
  return d;
}

// Undefined tensors travel as None.
std::vector<at::Tensor> tensors_from(const std::vector<c10::optional<at::Tensor>>& list) {
  std::vector<at::Tensor> out;
  out.reserve(list.size());
  for (const auto& t : list) out.push_back(t ? *t : at::Tensor());
  return out;
}
std::vector<c10::optional<at::Tensor>> optionals_from(const std::vector<at::Tensor>& list) {
  std::vector<c10::optional<at::Tensor>> out;
  out.reserve(list.size());
  for (const auto& t : list) out.push_back(t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt);
  return out;
}

// One make_optimizer keyword argument as the spec field's type.
template <class T>
void read_spec_value(const std::string& key, py::handle v, T& out) {
  if constexpr (std::is_same<T, double>::value) {
    const auto wrong = [&](const std::string& got) {
      return py::type_error("'" + key + "' must be " + python_type_name<T>() + got);
    };
    if (PyBool_Check(v.ptr())) throw wrong(", got bool");
    try {
      out = v.cast<double>();
    } catch (const py::cast_error&) {
      throw wrong("");
    }
  } else if constexpr (is_named_enum<T>::value) {
    const auto name = v.cast<std::string>();
    out = as_value_error([&] { return EnumNames<T>::parse(name); });
  } else if constexpr (std::is_same<T, SpectralOptions>::value) {
    out = spectral_options_from(v.cast<py::dict>());
  } else {
    out = v.cast<T>();
  }
}

// The make_optimizer spec from keyword arguments; keys and defaults are the
// C++ OptimizerSpec's field table (visit_spec_fields).
OptimizerSpec spec_from(const py::dict& kw) {
  OptimizerSpec s;
  read_fields(
      s, kw, [](auto& o, auto&& v) { visit_spec_fields(o, v); },
      [](const std::string& key, py::handle value, auto& field) { read_spec_value(key, value, field); },
      [](const std::string& key) { return py::value_error("make_optimizer: unknown option '" + key + "'"); });
  return s;
}

// Runs a C++ optimizer over the given gradient sequence: before step t every
// param's grad is set to grads[t][i]. Returns the final parameters.
template <typename Step>
std::vector<at::Tensor> run_steps(std::vector<at::Tensor> params,
                                  const std::vector<std::vector<at::Tensor>>& grads, Step step) {
  for (const auto& step_grads : grads) {
    TORCH_CHECK_VALUE(step_grads.size() == params.size(), "need one gradient per parameter, got ",
                      step_grads.size(), " for ", params.size());
    for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = step_grads[i].clone();
    step();
  }
  return params;
}

std::vector<at::Tensor> detached_copies(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone().set_requires_grad(true));
  return out;
}

}  // namespace

void bind_optim(py::module_& m) {
  m.def("adamw_defaults", &adamw_defaults,
        "Group defaults of SpectralAdamW, from the C++ SpectralAdamWOptions.");
  m.def("sgd_defaults", &sgd_defaults,
        "Group defaults of SpectralSGD (lr excluded: required), from the C++ SpectralSGDOptions.");
  m.def(
      "optimizer_spec_defaults",
      [] {
        const OptimizerSpec s;
        py::dict d;
        visit_spec_fields(s, DictWriter{d});  // spectral: {} (all at their defaults)
        return d;
      },
      "make_optimizer's options and defaults, from the C++ OptimizerSpec.");
  m.def(
      "make_optimizer_groups",
      [](const std::vector<std::pair<std::string, at::Tensor>>& named_parameters, const py::dict& spec) {
        const auto s = spec_from(spec);
        auto opt = as_value_error([&] { return make_optimizer(named_parameters, s); });
        py::list groups;
        for (const auto& g : opt->groups()) {
          auto& group = opt->optimizers()[g.optimizer]->param_groups()[g.group];
          py::dict d;
          if (auto* a = dynamic_cast<SpectralAdamWOptions*>(&group.options())) {
            d = adamw_group(*a);
          } else {
            d = sgd_group(dynamic_cast<SpectralSGDOptions&>(group.options()));
          }
          // The names of this group's tensors, looked up by identity.
          std::vector<std::string> names;
          for (const auto& t : group.params()) {
            for (const auto& [name, w] : named_parameters)
              if (w.is_same(t)) names.push_back(name);
          }
          d["params"] = group.params();
          d["param_names"] = names;
          d["role"] = g.matrix ? "matrix" : "vector";
          groups.append(d);
        }
        return py::make_tuple(opt->variant(), groups);
      },
      py::arg("named_parameters"), py::arg("spec"),
      "(variant, param groups) of the C++ make_optimizer(named_parameters, spec): the study's\n"
      "matrix/vector split as Python param-group dicts (one 'update' kind per group).");
  m.def(
      "_group_round_trip",
      [](const std::string& kind, const py::dict& group) {
        if (kind == "adamw") return adamw_group(adamw_options(group));
        TORCH_CHECK_VALUE(kind == "sgd", "kind must be 'adamw' or 'sgd', got '", kind, "'");
        return sgd_group(sgd_options(group));
      },
      py::arg("kind"), py::arg("group"),
      "Test of the field tables: the group dict read into the C++ options and written back.");
  m.def(
      "_spec_round_trip",
      [](const py::dict& spec) {
        const OptimizerSpec s = spec_from(spec);
        py::dict d;
        visit_spec_fields(s, DictWriter{d});
        return d;
      },
      py::arg("spec"), "Test of the field tables: make_optimizer's options read into an OptimizerSpec and written back.");
  m.def(
      "check_adamw_group", [](const py::dict& group) { adamw_options(group); }, py::arg("group"),
      "Validate a SpectralAdamW param group (ValueError/TypeError naming the bad option).");
  m.def(
      "check_sgd_group", [](const py::dict& group) { sgd_options(group); }, py::arg("group"),
      "Validate a SpectralSGD param group (ValueError/TypeError naming the bad option).");

  m.def(
      "check_finite_grads",
      [](const std::vector<at::Tensor>& grads, const std::vector<std::string>& names) {
        py::gil_scoped_release no_gil;
        check_finite_grads(grads, names);
      },
      py::arg("grads"), py::arg("names"),
      "RuntimeError naming the first gradient that holds NaN or Inf.");
  m.def(
      "adamw_step",
      [](std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
         std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
         const std::vector<int64_t>& steps, const py::dict& group) {
        const auto o = adamw_options(group);
        py::gil_scoped_release no_gil;
        spectral_adamw_step(std::move(params), std::move(grads), std::move(exp_avgs),
                            std::move(exp_avg_sqs), steps, o.lr(), std::get<0>(o.betas()),
                            std::get<1>(o.betas()), o.eps(), o.weight_decay(), o.transform(),
                            o.decay_vectors());
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
      py::arg("steps"), py::arg("group"),
      "spectral_adamw_step (update_rules.h) in place, with the options of `group`.\n"
      "steps[i] = param i's step count after this step.");
  m.def(
      "sgd_step",
      [](std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
         const std::vector<c10::optional<at::Tensor>>& momentum_buffers, const py::dict& group) {
        const auto o = sgd_options(group);
        auto buffers = tensors_from(momentum_buffers);
        {
          py::gil_scoped_release no_gil;
          spectral_sgd_step(std::move(params), std::move(grads), buffers, o.lr(), o.momentum(),
                            o.nesterov(), o.weight_decay(), o.transform(), o.decay_vectors());
        }
        return optionals_from(buffers);
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("group"),
      "spectral_sgd_step (update_rules.h) in place, with the options of `group`.\n"
      "momentum_buffers: None where not yet created; returns the buffers after the step.");

  // ---- C++ reference optimizers (tests) ----------------------------------------
  m.def(
      "_cpp_optimizer_run",
      [](const std::string& kind, const std::vector<at::Tensor>& params, const py::dict& group,
         const std::vector<std::vector<at::Tensor>>& grads) {
        auto copies = detached_copies(params);
        if (kind == "adamw") {
          SpectralAdamW opt(copies, adamw_options(group));
          py::gil_scoped_release no_gil;
          return run_steps(copies, grads, [&] { opt.step(); });
        }
        TORCH_CHECK_VALUE(kind == "sgd", "kind must be 'adamw' or 'sgd', got '", kind, "'");
        SpectralSGD opt(copies, sgd_options(group));
        py::gil_scoped_release no_gil;
        return run_steps(copies, grads, [&] { opt.step(); });
      },
      py::arg("kind"), py::arg("params"), py::arg("group"), py::arg("grads"),
      "Test reference: copies of `params` after len(grads) steps of the C++ SpectralAdamW\n"
      "('adamw') or SpectralSGD ('sgd') with one group of options `group`.");
  m.def(
      "_cpp_make_optimizer_run",
      [](const std::vector<std::string>& names, const std::vector<at::Tensor>& params,
         const py::dict& spec, const std::vector<std::vector<at::Tensor>>& grads) {
        TORCH_CHECK_VALUE(names.size() == params.size(), "one name per parameter");
        auto copies = detached_copies(params);
        std::vector<std::pair<std::string, at::Tensor>> named;
        for (size_t i = 0; i < names.size(); ++i) named.emplace_back(names[i], copies[i]);
        const auto s = spec_from(spec);
        auto opt = as_value_error([&] { return make_optimizer(named, s); });
        py::gil_scoped_release no_gil;
        return run_steps(copies, grads, [&] { opt->step(); });
      },
      py::arg("names"), py::arg("params"), py::arg("spec"), py::arg("grads"),
      "Test reference: copies of `params` after len(grads) steps of the C++ make_optimizer(spec).");
}

}  // namespace python
}  // namespace specopt
