// specopt._C, Muon part: torch.optim.Muon's param-group dict <-> the C++
// MuonOptions (muon.h), the functional muon_step over a Python optimizer's
// state, and the on_nonfinite gradient check shared by every Python optimizer.
//
// A Muon group dict has torch.optim.Muon's keys (lr, weight_decay, momentum,
// nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn: None = "original")
// plus specopt's p, method and spectral. Validation is MuonOptions::check()
// (its c10::Error re-raised as ValueError through as_value_error).
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "specopt/core/muon.h"
#include "specopt/core/update_rules.h"

namespace specopt {
namespace python {

namespace {

// group[key] as T; TypeError naming the key and the expected type (bool is not a number).
template <typename T>
T muon_field(const py::dict& group, const char* key, const char* type) {
  if (!group.contains(key)) throw py::value_error(std::string("Muon param group has no '") + key + "'");
  const py::handle value = group[key];
  const auto wrong = [&] {
    return py::type_error(std::string("Muon param group option '") + key + "' must be " + type + ", got " +
                          std::string(py::str(py::type::of(value).attr("__name__"))));
  };
  if (PyBool_Check(value.ptr()) != std::is_same<T, bool>::value) throw wrong();
  try {
    return value.cast<T>();
  } catch (const py::cast_error&) {
    throw wrong();
  }
}

MuonOptions muon_options(const py::dict& g) {
  MuonOptions o(muon_field<double>(g, "lr", "a float"));
  o.weight_decay(muon_field<double>(g, "weight_decay", "a float"));
  o.momentum(muon_field<double>(g, "momentum", "a float"));
  o.nesterov(muon_field<bool>(g, "nesterov", "a bool"));
  o.ns_coefficients(muon_field<std::tuple<double, double, double>>(g, "ns_coefficients", "a tuple of 3 floats"));
  o.eps(muon_field<double>(g, "eps", "a float"));
  o.ns_steps(muon_field<int64_t>(g, "ns_steps", "an int"));
  const py::handle fn = g.contains("adjust_lr_fn") ? g["adjust_lr_fn"] : py::handle(py::none());
  if (!fn.is_none()) {  // None: "original", as torch
    const auto name = muon_field<std::string>(g, "adjust_lr_fn", "None or a name");
    o.adjust_lr_fn(as_value_error([&] { return parse_adjust_lr(name); }));
  }
  o.p(muon_field<double>(g, "p", "a float"));
  const auto method = muon_field<std::string>(g, "method", "a method name");
  o.method(as_value_error([&] { return parse_method(method); }));
  const py::handle spectral = g.contains("spectral") ? g["spectral"] : py::handle(py::none());
  if (!spectral.is_none()) {
    if (!py::isinstance<py::dict>(spectral))
      throw py::type_error("Muon param group option 'spectral' must be a dict of spectral options");
    const auto options = spectral.cast<py::dict>();
    if (options.contains("method"))
      throw py::value_error("Muon param group 'spectral' options must not set 'method': set the group's 'method'");
    o.spectral(spectral_options_from(options));
  }
  as_value_error([&] { o.check(); });
  return o;
}

py::dict muon_defaults() {
  const MuonOptions o;
  py::dict d;
  d["lr"] = o.lr();
  d["weight_decay"] = o.weight_decay();
  d["momentum"] = o.momentum();
  d["nesterov"] = o.nesterov();
  d["ns_coefficients"] =
      py::make_tuple(std::get<0>(o.ns_coefficients()), std::get<1>(o.ns_coefficients()), std::get<2>(o.ns_coefficients()));
  d["eps"] = o.eps();
  d["ns_steps"] = o.ns_steps();
  d["adjust_lr_fn"] = py::none();  // torch's default spelling of "original"
  d["p"] = o.p();
  d["method"] = method_name(o.method());
  return d;
}

}  // namespace

void bind_muon(py::module_& m) {
  m.def("muon_defaults", &muon_defaults, "Group defaults of specopt.Muon, from the C++ MuonOptions.");
  m.def(
      "check_muon_group", [](const py::dict& group) { muon_options(group); }, py::arg("group"),
      "Validate a Muon param group (ValueError/TypeError naming the bad option).");
  m.def(
      "muon_step",
      [](std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
         const std::vector<c10::optional<at::Tensor>>& momentum_buffers, const py::dict& group) {
        const auto o = muon_options(group);
        std::vector<at::Tensor> buffers;
        for (const auto& b : momentum_buffers) buffers.push_back(b ? *b : at::Tensor());
        {
          py::gil_scoped_release no_gil;
          muon_step(std::move(params), std::move(grads), buffers, o);
        }
        return buffers;
      },
      py::arg("params"), py::arg("grads"), py::arg("momentum_buffers"), py::arg("group"),
      "muon_step (muon.h) in place, with the options of `group`. momentum_buffers: None where\n"
      "not yet created (B_0 = 0); returns the buffers after the step.");
  m.def(
      "grads_finite",
      [](const std::vector<at::Tensor>& grads, const std::vector<std::string>& names, const std::string& policy) {
        const auto p = as_value_error([&] { return parse_on_nonfinite(policy); });
        py::gil_scoped_release no_gil;
        return grads_finite(grads, names, p);
      },
      py::arg("grads"), py::arg("names"), py::arg("on_nonfinite"),
      "True when every gradient is finite; otherwise 'raise' raises RuntimeError naming the first\n"
      "non-finite one and 'skip_step' returns False. One reduction per gradient, one host sync.");
  m.def(
      "_cpp_muon_run",
      [](const std::vector<at::Tensor>& params, const py::dict& group,
         const std::vector<std::vector<at::Tensor>>& grads) {
        std::vector<at::Tensor> copies;
        for (const auto& p : params) copies.push_back(p.detach().clone().set_requires_grad(true));
        Muon opt(copies, muon_options(group));
        py::gil_scoped_release no_gil;
        for (const auto& step_grads : grads) {
          TORCH_CHECK_VALUE(step_grads.size() == copies.size(), "need one gradient per parameter");
          for (size_t i = 0; i < copies.size(); ++i) copies[i].mutable_grad() = step_grads[i].clone();
          opt.step();
        }
        return copies;
      },
      py::arg("params"), py::arg("group"), py::arg("grads"),
      "Test reference: copies of `params` after len(grads) steps of the C++ specopt::Muon.");
}

}  // namespace python
}  // namespace specopt
