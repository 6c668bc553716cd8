// The study config: the [study] table (variants or the p axis, lr grids, seeds, workers, ...)
// and the base train config it shares, loaded and validated before any run starts. One field
// list (study_fields) drives reading, writing (study_config_to_toml) and the key listing.
#include "specopt/study/study_config.h"

#include "specopt/core/variants.h"
#include "specopt/train/config.h"

#include "train/toml_nodes.h"

#include <c10/util/Exception.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

namespace specopt {

namespace fs = std::filesystem;

namespace {

using detail::describe;
using detail::read_node;

// ---------------------------------------------------------------- values ---

template <class T>
T read_as(const toml::node& node, const std::string& key) {
  T value;
  read_node(node, value, key);
  return value;
}

// parse_variant's error, with the key that named the variant in front.
Variant variant_at(const std::string& text, const std::string& key) {
  try {
    return parse_variant(text);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, key, ": ", e.what_without_backtrace());
  }
}

void add_variant(StudyConfig& c, const std::string& text, const std::string& key) {
  const Variant v = variant_at(text, key);
  TORCH_CHECK(std::find(c.variants.begin(), c.variants.end(), v.name) == c.variants.end(), key,
              " lists '", v.name, "' twice");
  c.variants.push_back(v.name);
}

// The canonical name of the variant `text` names under `key`, which must be studied.
std::string studied_variant(const StudyConfig& c, const std::string& text, const std::string& key) {
  const Variant v = variant_at(text, key);
  TORCH_CHECK(std::find(c.variants.begin(), c.variants.end(), v.name) != c.variants.end(), key,
              ": variant '", v.name, "' is not in study.variants");
  return v.name;
}

// An lr grid: finite positive learning rates, ascending, none twice.
std::vector<double> read_lr_grid(const toml::node& node, const std::string& key) {
  std::vector<double> grid = read_as<std::vector<double>>(node, key);
  TORCH_CHECK(!grid.empty(), key, " is empty: give at least one learning rate");
  for (double lr : grid)
    TORCH_CHECK(std::isfinite(lr) && lr > 0, key, ": learning rates must be finite and > 0, got ", lr);
  std::sort(grid.begin(), grid.end());
  TORCH_CHECK(std::adjacent_find(grid.begin(), grid.end()) == grid.end(), key,
              " lists a learning rate twice");
  return grid;
}

// A family is named by its p = 1 variant (Adam, mSGD).
Family family_at(const std::string& text, const std::string& key) {
  const Variant v = variant_at(text, key);
  TORCH_CHECK(v.p == 1.0, key, ": '", text, "' is not a family (\"Adam\" or \"mSGD\")");
  return v.family;
}

// ------------------------------------------------------------ the fields ---

// What a field's reader sees: its value (nullptr when the key is absent: the reader applies
// the default), the whole [study] table (for keys read together) and the full key.
struct FieldSource {
  const toml::node* node;
  const toml::table& study;
  std::string key;  // "study.<name>"
};

// Variants: named, or the p axis (families × ps, each pair a variant "adam:p=0.125").
void read_variants(StudyConfig& c, const FieldSource& f) {
  const bool ps = f.study.get("ps") != nullptr;
  TORCH_CHECK(f.node || ps, "lacks study.variants (or the p axis study.ps with study.families)");
  TORCH_CHECK(!(f.node && ps), "give study.variants or study.ps (with study.families), not both");
  if (!f.node) return;
  const auto names = read_as<std::vector<std::string>>(*f.node, f.key);
  TORCH_CHECK(!names.empty(), f.key, " is empty: name at least one variant");
  for (const auto& name : names) add_variant(c, name, f.key);
}

void read_p_axis(StudyConfig& c, const FieldSource& f) {
  if (!f.node) return;
  std::vector<Family> families = {Family::kAdam, Family::kSGD};
  if (const toml::node* given = f.study.get("families")) {
    const auto names = read_as<std::vector<std::string>>(*given, "study.families");
    TORCH_CHECK(!names.empty(), "study.families must be a non-empty array of \"Adam\" / \"mSGD\"");
    families.clear();
    for (const auto& name : names) families.push_back(family_at(name, "study.families"));
  }
  const auto ps = read_as<std::vector<double>>(*f.node, f.key);
  TORCH_CHECK(!ps.empty(), f.key, " must be a non-empty array of p values");
  for (Family family : families)
    for (double p : ps) add_variant(c, variant_name(family, p), f.key);
}

// Learning-rate grids: an array for all variants, or a table of per-variant arrays, per-family
// arrays ([study.lrs.family]) and an optional `default`, in that order of precedence.
void read_lrs(StudyConfig& c, const FieldSource& f) {
  TORCH_CHECK(f.node != nullptr, "lacks study.lrs");
  std::vector<double> fallback;
  std::map<std::string, std::vector<double>> named;
  std::map<Family, std::vector<double>> by_family;
  if (f.node->is_array()) {
    fallback = read_lr_grid(*f.node, f.key);
  } else if (const toml::table* table = f.node->as_table()) {
    for (const auto& [name, grid] : *table) {
      const std::string key = f.key + "." + std::string(name.str());
      if (name.str() == "default") {
        fallback = read_lr_grid(grid, key);
      } else if (name.str() == "family") {
        const toml::table* families = grid.as_table();
        TORCH_CHECK(families != nullptr, key,
                    " must be a table of per-family grids ([study.lrs.family] Adam = [...])");
        for (const auto& [family, fgrid] : *families)
          by_family[family_at(std::string(family.str()), key + "." + std::string(family.str()))] =
              read_lr_grid(fgrid, key + "." + std::string(family.str()));
      } else {
        named[studied_variant(c, std::string(name.str()), key)] = read_lr_grid(grid, key);
      }
    }
  } else {
    TORCH_CHECK(false, f.key, " must be an array or a table of per-variant arrays ([study.lrs])");
  }
  for (const auto& v : c.variants) {
    const auto own = named.find(v);
    const auto family = by_family.find(parse_variant(v).family);
    TORCH_CHECK(own != named.end() || family != by_family.end() || !fallback.empty(),
                "no learning-rate grid for '", v, "' (add study.lrs.", v, " or study.lrs.default)");
    c.lrs[v] = own != named.end() ? own->second : family != by_family.end() ? family->second : fallback;
  }
}

void read_seeds(StudyConfig& c, const FieldSource& f) {
  if (!f.node) return;
  c.seeds = read_as<std::vector<int64_t>>(*f.node, f.key);
  TORCH_CHECK(!c.seeds.empty(), f.key, " is empty");
  for (int64_t seed : c.seeds) TORCH_CHECK(seed >= 0, f.key, " must be >= 0, got ", seed);
  TORCH_CHECK(std::set<int64_t>(c.seeds.begin(), c.seeds.end()).size() == c.seeds.size(), f.key,
              " lists a seed twice");
}

template <int64_t StudyConfig::*field, int64_t min>
void read_count(StudyConfig& c, const FieldSource& f) {
  if (!f.node) return;
  c.*field = read_as<int64_t>(*f.node, f.key);
  TORCH_CHECK(c.*field >= min, f.key, " must be >= ", min, ", got ", c.*field);
}

template <double StudyConfig::*field>
void read_tolerance(StudyConfig& c, const FieldSource& f) {
  if (!f.node) return;
  c.*field = read_as<double>(*f.node, f.key);
  TORCH_CHECK(std::isfinite(c.*field) && c.*field >= 0, f.key, " must be a number >= 0");
}

// Relative to the config file, not the working directory.
void read_reference(StudyConfig& c, const FieldSource& f) {
  if (!f.node) return;
  c.reference_configured = true;
  fs::path ref = read_as<std::string>(*f.node, f.key);
  if (ref.is_relative()) ref = fs::path(c.config_path).parent_path() / ref;
  c.reference = ref.lexically_normal().string();
}

void read_overrides(StudyConfig& c, const FieldSource& f) {
  if (!f.node) return;
  const toml::table* table = f.node->as_table();
  TORCH_CHECK(table != nullptr, f.key, " must be a table of per-variant arrays of \"key=value\" strings");
  for (const auto& [name, sets] : *table) {
    const std::string key = f.key + "." + std::string(name.str());
    auto& out = c.overrides[studied_variant(c, std::string(name.str()), key)];
    for (const auto& s : read_as<std::vector<std::string>>(sets, key)) out.push_back(s);
  }
}

// ---- config → TOML nodes (study_config_to_toml) ----

template <class T>
toml::array array_of(const std::vector<T>& values) {
  toml::array out;
  for (const auto& v : values) out.push_back(v);
  return out;
}

template <class T>
toml::table table_of(const std::map<std::string, std::vector<T>>& grids) {
  toml::table out;
  for (const auto& [name, values] : grids) out.insert(name, array_of(values));
  return out;
}

// One [study] key: its reader and its writer (which inserts the config's value under `key`;
// the p axis is written as the variants it expands to, so families and ps write nothing).
struct StudyField {
  const char* key;
  void (*read)(StudyConfig&, const FieldSource&);
  void (*write)(const StudyConfig&, toml::table& study, const char* key);
};

// In reading order: the variants before the grids and overrides that name them, the name
// before study_dir's default.
const std::vector<StudyField>& study_fields() {
  using C = const StudyConfig&;
  using T = toml::table&;
  using K = const char*;
  static const std::vector<StudyField> fields = {
      {"name",
       [](StudyConfig& c, const FieldSource& f) {
         c.name = f.node ? read_as<std::string>(*f.node, f.key) : fs::path(c.config_path).stem().string();
         TORCH_CHECK(!c.name.empty(), f.key, " is empty");
       },
       [](C c, T t, K k) { t.insert(k, c.name); }},
      {"variants", read_variants, [](C c, T t, K k) { t.insert(k, array_of(c.variants)); }},
      {"families",
       [](StudyConfig&, const FieldSource& f) {
         TORCH_CHECK(!f.node || f.study.get("ps"), f.key, " needs study.ps (the p values of each family)");
       },
       [](C, T, K) {}},
      {"ps", read_p_axis, [](C, T, K) {}},
      {"lrs", read_lrs, [](C c, T t, K k) { t.insert(k, table_of(c.lrs)); }},
      {"seeds", read_seeds, [](C c, T t, K k) { t.insert(k, array_of(c.seeds)); }},
      {"workers", read_count<&StudyConfig::workers, 1>, [](C c, T t, K k) { t.insert(k, c.workers); }},
      {"threads", read_count<&StudyConfig::threads, 0>, [](C c, T t, K k) { t.insert(k, c.threads); }},
      {"study_dir",
       [](StudyConfig& c, const FieldSource& f) {
         c.study_dir = f.node ? read_as<std::string>(*f.node, f.key) : "runs/study/" + c.name;
       },
       [](C c, T t, K k) { t.insert(k, c.study_dir); }},
      {"reference", read_reference,
       [](C c, T t, K k) {
         if (c.reference_configured) t.insert(k, fs::absolute(c.reference).lexically_normal().string());
       }},
      {"stable_tolerance", read_tolerance<&StudyConfig::stable_tolerance>,
       [](C c, T t, K k) { t.insert(k, c.stable_tolerance); }},
      {"reference_tolerance", read_tolerance<&StudyConfig::reference_tolerance>,
       [](C c, T t, K k) { t.insert(k, c.reference_tolerance); }},
      {"overrides", read_overrides,
       [](C c, T t, K k) {
         if (!c.overrides.empty()) t.insert(k, table_of(c.overrides));
       }},
  };
  return fields;
}

// ------------------------------------------------------------- the file ---

// "a.b.c=value": the value is parsed as a TOML value (numbers, booleans, arrays, quoted
// strings); anything that does not parse is taken as a bare string (variant=AdamS).
void apply_study_override(toml::table& root, const std::string& assignment, const std::string& file) {
  const auto eq = assignment.find('=');
  TORCH_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment,
              "': expected key=value (e.g. study.workers=2 or train.steps=100)");
  const std::string key = assignment.substr(0, eq);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) {
    TORCH_CHECK(!part.empty(), "--set '", assignment, "': empty component in key '", key, "'");
    parts.push_back(part);
  }
  toml::table* table = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (!table->contains(parts[i])) table->insert(parts[i], toml::table{});
    toml::node* child = table->get(parts[i]);
    TORCH_CHECK(child->is_table(), "--set '", assignment, "': '", parts[i], "' is not a table in ", file);
    table = child->as_table();
  }
  const std::string value = assignment.substr(eq + 1);
  const auto parsed = detail::parse_value(value);
  if (parsed && parsed->get("v") != nullptr) {
    // Copy the parsed node whatever its type.
    parsed->get("v")->visit([&](auto&& node) { table->insert_or_assign(parts.back(), node); });
  } else {
    table->insert_or_assign(parts.back(), value);
  }
}

toml::table read_study_file(const std::string& path, const std::vector<std::string>& overrides) {
  TORCH_CHECK(fs::exists(path), "study config '", path, "' does not exist");
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& err) {
    TORCH_CHECK(false, "study config '", path, "' line ", err.source().begin.line, ": ",
                std::string(err.description()));
  }
  for (const auto& o : overrides) apply_study_override(root, o, path);
  return root;
}

void read_study_table(StudyConfig& cfg, const toml::table& study) {
  const auto keys = study_config_keys();
  std::string valid;
  for (const auto& k : keys) valid += (valid.empty() ? "" : ", ") + k;
  for (const auto& [k, v] : study)
    TORCH_CHECK(std::find(keys.begin(), keys.end(), std::string(k.str())) != keys.end(),
                "unknown key 'study.", k.str(), "' in ", cfg.config_path, " (valid: ", valid, ")");
  try {
    for (const auto& field : study_fields())
      field.read(cfg, FieldSource{study.get(field.key), study, std::string("study.") + field.key});
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "study config '", cfg.config_path, "': ", e.what_without_backtrace());
  }
}

// Base train config: everything but [study]. Validated now (unknown keys, bad values, and each
// variant's overrides) so a typo fails before the first of many runs starts, with the trainer's
// own message.
void read_base_config(StudyConfig& cfg, toml::table root) {
  root.erase("study");
  std::ostringstream os;
  os << root << "\n";
  try {
    const TrainConfig base = config_from_toml_string(os.str(), cfg.config_path);
    // Resolved (every key) and written by config_to_toml: shortest-form floats.
    cfg.train_config_toml = config_to_toml(base);
    for (const auto& [variant, sets] : cfg.overrides) {
      TrainConfig c = base;
      for (const auto& s : sets) apply_override(c, s);
      c.validate();
    }
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "study config '", cfg.config_path, "': ", e.what_without_backtrace());
  }
}

// A key as TOML writes it: bare when it may be ("Adam"), else quoted ("adam:p=0.125").
std::string toml_key(const std::string& key) {
  const bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](unsigned char ch) {
    return std::isalnum(ch) || ch == '_' || ch == '-';
  });
  return bare ? key : describe(toml::value<std::string>(key));
}

}  // namespace

std::vector<std::string> study_config_keys() {
  std::vector<std::string> keys;
  for (const auto& field : study_fields()) keys.push_back(field.key);
  return keys;
}

StudyConfig load_study_config(const std::string& path, const std::vector<std::string>& overrides) {
  const toml::table root = read_study_file(path, overrides);
  StudyConfig cfg;
  cfg.config_path = path;
  cfg.set_overrides = overrides;
  const toml::table* study = root["study"].as_table();
  TORCH_CHECK(study != nullptr, "study config '", path, "' has no [study] table");
  read_study_table(cfg, *study);
  read_base_config(cfg, root);
  return cfg;
}

std::string study_config_to_toml(const StudyConfig& config) {
  toml::table study;
  for (const auto& field : study_fields()) field.write(config, study, field.key);
  std::ostringstream values, tables;
  for (const auto& field : study_fields()) {  // in field order (toml::table iterates sorted)
    const toml::node* node = study.get(field.key);
    if (!node) continue;
    if (const toml::table* sub = node->as_table()) {
      tables << "\n[study." << field.key << "]\n";
      for (const auto& [name, value] : *sub) tables << toml_key(std::string(name.str())) << " = " << describe(value) << "\n";
    } else {
      values << field.key << " = " << describe(*node) << "\n";
    }
  }
  return "# specopt study config (resolved: the p axis expanded, every variant's grid)\n[study]\n" +
         values.str() + tables.str() + "\n" + config.train_config_toml;
}

}  // namespace specopt
