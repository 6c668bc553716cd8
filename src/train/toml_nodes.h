// TOML node → typed value readers and the value printer, shared by the train config
// (config.cpp) and the study config (study/study_config.cpp): one spelling of "config key 'k':
// expected ..., got ..." and of shortest-form floats.
#pragma once

#include "specopt/train/config.h"  // toml_float

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <toml++/toml.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace specopt {
namespace detail {

// A node as TOML text: floats in their shortest round-trip form (toml_float), element by
// element inside arrays; strings quoted.
inline std::string describe(const toml::node& node) {
  if (const auto* f = node.as_floating_point()) return toml_float(f->get());
  if (const auto* arr = node.as_array()) {  // element by element, for the floats in it
    std::string out = "[";
    for (size_t i = 0; i < arr->size(); ++i) out += (i ? ", " : "") + describe(*arr->get(i));
    return out + "]";
  }
  std::ostringstream os;
  node.visit([&](const auto& x) { os << x; });
  return os.str();
}

inline void read_node(const toml::node& n, int64_t& out, const std::string& key) {
  auto v = n.value_exact<int64_t>();
  TORCH_CHECK(v.has_value(), "config key '", key, "': expected an integer, got ", describe(n));
  out = *v;
}
inline void read_node(const toml::node& n, double& out, const std::string& key) {
  TORCH_CHECK(n.is_number(), "config key '", key, "': expected a number, got ", describe(n));
  if (const auto* f = n.as_floating_point()) {
    out = f->get();
    return;
  }
  // An integer is taken only when a double holds it exactly (|i| ≤ 2^53, or a
  // larger multiple of a power of two): 9007199254740993 is an error, not
  // 9007199254740992. 2^63 itself is out of int64 range, so the round trip is
  // checked below it.
  const int64_t i = n.as_integer()->get();
  const double d = static_cast<double>(i);
  TORCH_CHECK(d < 9223372036854775808.0 && static_cast<int64_t>(d) == i, "config key '", key,
              "': the integer ", i, " has no exact double value (the nearest is ", fmt::format("{:.17g}", d),
              "); write the value meant as a float");
  out = d;
}
inline void read_node(const toml::node& n, bool& out, const std::string& key) {
  auto v = n.value_exact<bool>();
  TORCH_CHECK(v.has_value(), "config key '", key, "': expected true or false, got ", describe(n));
  out = *v;
}
inline void read_node(const toml::node& n, std::string& out, const std::string& key) {
  auto v = n.value_exact<std::string>();
  TORCH_CHECK(v.has_value(), "config key '", key, "': expected a string, got ", describe(n));
  out = *v;
}
template <class T>
void read_node(const toml::node& n, std::vector<T>& out, const std::string& key) {
  const toml::array* arr = n.as_array();
  TORCH_CHECK(arr != nullptr, "config key '", key, "': expected an array, got ", describe(n));
  std::vector<T> values(arr->size());
  for (size_t i = 0; i < arr->size(); ++i)
    read_node(*arr->get(i), values[i], key + "[" + std::to_string(i) + "]");
  out = std::move(values);
}

// The text of a --set value as the TOML document "v = <text>", or nullopt when it is not a
// TOML value (a bare word: the caller takes it as a string).
inline std::optional<toml::table> parse_value(const std::string& text) {
  try {
    return toml::parse(std::string_view("v = " + text), std::string_view("--set"));
  } catch (const toml::parse_error&) {
    return std::nullopt;
  }
}

}  // namespace detail
}  // namespace specopt
