// TrainConfig ↔ TOML. One field list (visit_fields) drives reading, writing,
// overrides, key listing and comparison, so a new key is one line there.
// TrainConfig::validate: config_validate.cpp.
#include "specopt/train/config.h"

#include "specopt/core/option_fields.h"

#include "train/toml_nodes.h"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <toml++/toml.h>

#include <fstream>
#include <sstream>
#include <type_traits>

namespace specopt {

namespace {

using detail::describe;
using detail::parse_value;
using detail::read_node;

// The [optim] keys: OptimizerSpec's field table (visit_spec_fields) as
// "optim.<field>", except split_rows_patterns, written optim.split_rows, and
// spectral, of which three settings are keys (optim.spectral_tol,
// optim.newton_lower, optim.ns_steps); exclude_from_spectral and on_nonfinite
// are not config keys (they keep the spec's defaults). Then the config-only p_schedule. The key order is
// that of config.toml files written so far.
template <class Optim, class Visitor>
void visit_optim_fields(Optim& o, Visitor& v) {
  visit_spec_fields(o, [&](const std::string& name, auto& field) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same<T, SpectralOptions>::value) {
      v("optim.spectral_tol", field.tol());
      v("optim.newton_lower", field.newton_lower());
      v("optim.ns_steps", field.ns_steps());
    } else if constexpr (!std::is_same<T, OnNonFinite>::value) {
      if (name == "exclude_from_spectral") return;
      v(name == "split_rows_patterns" ? std::string("optim.split_rows") : "optim." + name, field);
    }
  });
  v("optim.p_schedule", o.p_schedule);
}

// Calls v("table.key", member) for every field, in the order of config.h.
// Templated on the config's constness so readers and writers share it.
template <class Config, class Visitor>
void visit_fields(Config& c, Visitor&& v) {
  v("run.seed", c.run.seed);
  v("run.device", c.run.device);
  v("run.threads", c.run.threads);
  v("run.run_dir", c.run.run_dir);

  v("model.kind", c.model.kind);
  v("model.n_layer", c.model.n_layer);
  v("model.n_head", c.model.n_head);
  v("model.n_embd", c.model.n_embd);
  v("model.block_size", c.model.block_size);
  v("model.qk_norm", c.model.qk_norm);
  v("model.dropout", c.model.dropout);
  v("model.hidden", c.model.hidden);
  v("model.channels", c.model.channels);
  v("model.fc_hidden", c.model.fc_hidden);

  v("data.kind", c.data.kind);
  v("data.path", c.data.path);
  v("data.cache_dir", c.data.cache_dir);
  v("data.vocab_size", c.data.vocab_size);
  v("data.val_fraction", c.data.val_fraction);
  v("data.train_limit", c.data.train_limit);
  v("data.val_limit", c.data.val_limit);

  visit_optim_fields(c.optim, v);

  v("train.steps", c.train.steps);
  v("train.batch_size", c.train.batch_size);
  v("train.grad_accum", c.train.grad_accum);
  v("train.warmup_steps", c.train.warmup_steps);
  v("train.lr_schedule", c.train.lr_schedule);
  v("train.min_lr_ratio", c.train.min_lr_ratio);
  v("train.min_lr", c.train.min_lr);
  v("train.grad_clip", c.train.grad_clip);
  v("train.eval_every", c.train.eval_every);
  v("train.eval_batches", c.train.eval_batches);
  v("train.log_every", c.train.log_every);
  v("train.checkpoint_every", c.train.checkpoint_every);
}

// A named enum (optim.method, optim.scale) by its name; the parser's error
// with the key in front.
template <class E>
std::enable_if_t<is_named_enum<E>::value> read_name(const std::string& name, E& out, const std::string& key) {
  try {
    out = EnumNames<E>::parse(name);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "config key '", key, "': ", e.what_without_backtrace());
  }
}
template <class E>
std::enable_if_t<is_named_enum<E>::value> read_node(const toml::node& n, E& out, const std::string& key) {
  std::string name;
  read_node(n, name, key);
  read_name(name, out, key);
}

// ---- typed field → TOML node -------------------------------------------------

template <class T>
void insert_value(toml::table& table, const std::string& name, const T& value) {
  if constexpr (is_named_enum<T>::value) {
    table.insert_or_assign(name, EnumNames<T>::name(value));
  } else {
    table.insert_or_assign(name, value);
  }
}
template <class T>
void insert_value(toml::table& table, const std::string& name, const std::vector<T>& values) {
  toml::array arr;
  for (const auto& v : values) arr.push_back(v);
  table.insert_or_assign(name, std::move(arr));
}

// ---- override parsing --------------------------------------------------------

void read_text(const std::string& text, std::string& out, const std::string& key);

template <class T>
void read_text(const std::string& text, T& out, const std::string& key) {
  if constexpr (is_named_enum<T>::value) {  // a name, quoted or not, as a string key
    std::string name;
    read_text(text, name, key);
    read_name(name, out, key);
  } else {
    auto doc = parse_value(text);
    TORCH_CHECK(doc.has_value(), "bad value for config key '", key, "': '", text,
                "' is not a valid value");
    read_node(*doc->get("v"), out, key);
  }
}
void read_text(const std::string& text, std::string& out, const std::string& /*key*/) {
  // A quoted TOML string, or else the raw text (so --set run.device=cuda works).
  auto doc = parse_value(text);
  if (doc && doc->get("v")->is_string()) {
    out = *doc->get("v")->value<std::string>();
  } else {
    out = text;
  }
}
void read_text(const std::string& text, std::vector<std::string>& out, const std::string& key) {
  auto doc = parse_value(text);
  if (doc && doc->get("v")->is_array()) {
    read_node(*doc->get("v"), out, key);
    return;
  }
  // "a,b,c" → ["a", "b", "c"]; "" → [].
  out.clear();
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
}

bool has_key(const std::string& key) {
  bool found = false;
  TrainConfig probe;
  visit_fields(probe, [&](const std::string& k, auto&) { found = found || k == key; });
  return found;
}

std::string keys_of_table(const std::string& table) {
  std::string out;
  for (const auto& k : config_keys())
    if (k.compare(0, table.size() + 1, table + ".") == 0) out += (out.empty() ? "" : ", ") + k;
  return out;
}

std::string section_of(const std::string& key) { return key.substr(0, key.find('.')); }

toml::table to_table(const TrainConfig& config) {
  toml::table root;
  visit_fields(config, [&](const std::string& key, const auto& value) {
    const std::string section = section_of(key);
    if (!root.contains(section)) root.insert(section, toml::table{});
    insert_value(*root.get_as<toml::table>(section), key.substr(section.size() + 1), value);
  });
  return root;
}

}  // namespace

OptimConfig::OptimConfig() {
  variant = "Adam";
  split_rows_patterns = {"c_attn"};
}

std::vector<std::string> config_keys() {
  std::vector<std::string> keys;
  TrainConfig probe;
  visit_fields(probe, [&](const std::string& k, auto&) { keys.push_back(k); });
  return keys;
}

void apply_toml(TrainConfig& config, const std::string& text, const std::string& origin) {
  toml::table root;
  try {
    root = toml::parse(std::string_view(text), std::string_view(origin));
  } catch (const toml::parse_error& e) {
    TORCH_CHECK(false, "cannot parse config ", origin, " (line ", e.source().begin.line,
                ", column ", e.source().begin.column, "): ", e.description());
  }
  for (const auto& [section_name, section_node] : root) {
    const std::string section(section_name.str());
    TORCH_CHECK(section_node.is_table(), "config ", origin, ": '", section,
                "' must be a table ([run], [model], [data], [optim], [train]), got ",
                describe(section_node));
    TORCH_CHECK(!keys_of_table(section).empty(), "config ", origin, ": unknown table [", section,
                "] (valid: [run], [model], [data], [optim], [train])");
    for (const auto& [name, node] : *section_node.as_table()) {
      const std::string key = section + "." + std::string(name.str());
      TORCH_CHECK(has_key(key), "config ", origin, ": unknown key '", key, "' (valid keys: ",
                  keys_of_table(section), ")");
      visit_fields(config, [&, &node = node](const std::string& k, auto& field) {
        if (k == key) read_node(node, field, key);
      });
    }
  }
}

void apply_override(TrainConfig& config, const std::string& assignment) {
  const auto eq = assignment.find('=');
  TORCH_CHECK(eq != std::string::npos, "override '", assignment, "' must have the form table.key=value");
  std::string key = assignment.substr(0, eq);
  while (!key.empty() && key.back() == ' ') key.pop_back();
  while (!key.empty() && key.front() == ' ') key.erase(key.begin());
  std::string value = assignment.substr(eq + 1);
  TORCH_CHECK(has_key(key), "unknown config key '", key, "' in override '", assignment,
              "'", keys_of_table(section_of(key)).empty()
                       ? std::string(" (tables: run, model, data, optim, train)")
                       : " (valid keys: " + keys_of_table(section_of(key)) + ")");
  visit_fields(config, [&](const std::string& k, auto& field) {
    if (k == key) read_text(value, field, key);
  });
}

TrainConfig config_from_toml_string(const std::string& text, const std::string& origin) {
  TrainConfig config;
  apply_toml(config, text, origin);
  config.validate();
  return config;
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  TrainConfig config;
  if (!path.empty()) {
    std::ifstream in(path, std::ios::binary);
    TORCH_CHECK(in.good(), "cannot open config file '", path, "'");
    std::stringstream ss;
    ss << in.rdbuf();
    apply_toml(config, ss.str(), path);
  }
  for (const auto& o : overrides) apply_override(config, o);
  config.validate();
  return config;
}

std::string toml_float(double value) {
  // fmt's "{}" is the shortest round-trip form (Ryu-like); TOML needs a '.' or an
  // exponent to read it as a float, and spells the non-finite values inf / nan.
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".en") == std::string::npos) text += ".0";
  return text;
}

std::string config_to_toml(const TrainConfig& config) {
  std::ostringstream os;
  os << "# specopt train config (resolved: defaults + file + overrides)\n";
  const toml::table root = to_table(config);
  // Sections in declaration order (toml::table iterates alphabetically).
  for (const char* section : {"run", "model", "data", "optim", "train"}) {
    os << "\n[" << section << "]\n";
    for (const auto& key : config_keys()) {
      if (section_of(key) != section) continue;
      const std::string name = key.substr(key.find('.') + 1);
      os << name << " = " << describe(*root.get_as<toml::table>(section)->get(name)) << "\n";
    }
  }
  return os.str();
}

std::vector<std::string> config_differences(const TrainConfig& a, const TrainConfig& b) {
  const toml::table ta = to_table(a), tb = to_table(b);
  std::vector<std::string> diff;
  for (const auto& key : config_keys()) {
    const std::string section = section_of(key), name = key.substr(section.size() + 1);
    if (describe(*ta.get_as<toml::table>(section)->get(name)) !=
        describe(*tb.get_as<toml::table>(section)->get(name)))
      diff.push_back(key);
  }
  return diff;
}

}  // namespace specopt
