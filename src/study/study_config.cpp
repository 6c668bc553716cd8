// The study config: the [study] table (variants or the p axis, lr grids, seeds, workers, ...)
// and the base train config it shares, loaded and validated before any run starts.
#include "specopt/study/study_config.h"

#include "specopt/core/variants.h"
#include "specopt/train/config.h"

#include <c10/util/Exception.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

namespace specopt {

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------- config ---

const std::vector<std::string>& study_keys() {
  static const std::vector<std::string> keys = {
      "name", "variants", "families", "ps", "lrs", "seeds", "workers", "threads",
      "study_dir", "reference", "stable_tolerance", "reference_tolerance", "overrides"};
  return keys;
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

// "a.b.c=value": the value is parsed as a TOML value (numbers, booleans, arrays, quoted
// strings); anything that does not parse is taken as a bare string (variant=AdamS).
void apply_study_override(toml::table& root, const std::string& assignment, const std::string& file) {
  const auto eq = assignment.find('=');
  TORCH_CHECK(eq != std::string::npos && eq > 0, "--set '", assignment,
              "': expected key=value (e.g. study.workers=2 or train.steps=100)");
  const std::string key = assignment.substr(0, eq);
  const std::string value = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) {
    TORCH_CHECK(!part.empty(), "--set '", assignment, "': empty component in key '", key, "'");
    parts.push_back(part);
  }
  toml::table* table = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    toml::node* child = table->get(parts[i]);
    if (!child) {
      table->insert(parts[i], toml::table{});
      child = table->get(parts[i]);
    }
    TORCH_CHECK(child->is_table(), "--set '", assignment, "': '", parts[i],
                "' is not a table in ", file);
    table = child->as_table();
  }
  toml::table parsed;
  bool is_toml = true;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    is_toml = false;
  }
  if (is_toml && parsed.get("v") != nullptr) {
    // Copy the parsed node whatever its type.
    parsed.get("v")->visit([&](auto&& node) { table->insert_or_assign(parts.back(), node); });
  } else {
    table->insert_or_assign(parts.back(), value);
  }
}

std::vector<double> read_lr_grid(const toml::node& node, const std::string& key,
                                 const std::string& file) {
  const toml::array* arr = node.as_array();
  TORCH_CHECK(arr != nullptr, key, " in ", file, " must be an array of learning rates");
  TORCH_CHECK(!arr->empty(), key, " in ", file, " is empty: give at least one learning rate");
  std::vector<double> grid;
  for (const auto& item : *arr) {
    const auto v = item.value<double>();
    TORCH_CHECK(v.has_value(), key, " in ", file, ": every entry must be a number");
    TORCH_CHECK(std::isfinite(*v) && *v > 0, key, " in ", file,
                ": learning rates must be finite and > 0, got ", *v);
    grid.push_back(*v);
  }
  std::sort(grid.begin(), grid.end());
  TORCH_CHECK(std::adjacent_find(grid.begin(), grid.end()) == grid.end(), key, " in ", file,
              " lists a learning rate twice");
  return grid;
}

int64_t read_int(const toml::node& node, const std::string& key, const std::string& file,
                 int64_t min) {
  const auto v = node.value<int64_t>();
  TORCH_CHECK(v.has_value() && node.is_integer(), key, " in ", file, " must be an integer");
  TORCH_CHECK(*v >= min, key, " in ", file, " must be >= ", min, ", got ", *v);
  return *v;
}

std::string read_string(const toml::node& node, const std::string& key, const std::string& file) {
  const auto v = node.value<std::string>();
  TORCH_CHECK(v.has_value() && node.is_string(), key, " in ", file, " must be a string");
  return *v;
}

}  // namespace

StudyConfig load_study_config(const std::string& path, const std::vector<std::string>& overrides) {
  TORCH_CHECK(fs::exists(path), "study config '", path, "' does not exist");
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& err) {
    TORCH_CHECK(false, "study config '", path, "' line ", err.source().begin.line, ": ",
                std::string(err.description()));
  }
  for (const auto& o : overrides) apply_study_override(root, o, path);

  StudyConfig cfg;
  cfg.config_path = path;
  cfg.set_overrides = overrides;
  const toml::table* study = root["study"].as_table();
  TORCH_CHECK(study != nullptr, "study config '", path, "' has no [study] table");

  for (const auto& [k, v] : *study) {
    const std::string key(k.str());
    const auto& keys = study_keys();
    TORCH_CHECK(std::find(keys.begin(), keys.end(), key) != keys.end(), "unknown key 'study.", key,
                "' in ", path, " (valid: ", join(keys, ", "), ")");
  }

  cfg.name = fs::path(path).stem().string();
  if (const auto* n = study->get("name")) cfg.name = read_string(*n, "study.name", path);
  TORCH_CHECK(!cfg.name.empty(), "study.name in ", path, " is empty");

  // Variants: named, or the p axis (families × ps, each pair a variant "adam:p=0.125").
  auto add_variant = [&](const std::string& text, const std::string& key) {
    Variant v;
    try {
      v = parse_variant(text);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, key, " in ", path, ": ", e.what_without_backtrace());
    }
    TORCH_CHECK(std::find(cfg.variants.begin(), cfg.variants.end(), v.name) == cfg.variants.end(),
                key, " in ", path, " lists '", v.name, "' twice");
    cfg.variants.push_back(v.name);
  };
  const toml::node* variants = study->get("variants");
  const toml::node* ps = study->get("ps");
  TORCH_CHECK(variants != nullptr || ps != nullptr, "study config '", path,
              "' lacks study.variants (or the p axis study.ps with study.families)");
  TORCH_CHECK(!(variants && ps), "study config '", path,
              "': give study.variants or study.ps (with study.families), not both");
  TORCH_CHECK(ps || !study->get("families"), "study.families in ", path,
              " needs study.ps (the p values of each family)");
  if (variants) {
    const toml::array* varr = variants->as_array();
    TORCH_CHECK(varr != nullptr, "study.variants in ", path, " must be an array of variant names");
    TORCH_CHECK(!varr->empty(), "study.variants in ", path, " is empty: name at least one variant");
    for (const auto& item : *varr) {
      const auto s = item.value<std::string>();
      TORCH_CHECK(s.has_value(), "study.variants in ", path, ": every entry must be a string");
      add_variant(*s, "study.variants");
    }
  } else {
    std::vector<Family> families = {Family::kAdam, Family::kSGD};
    if (const auto* f = study->get("families")) {
      const toml::array* arr = f->as_array();
      TORCH_CHECK(arr && !arr->empty(), "study.families in ", path,
                  " must be a non-empty array of \"Adam\" / \"mSGD\"");
      families.clear();
      for (const auto& item : *arr) {
        const auto s = item.value<std::string>();
        TORCH_CHECK(s.has_value(), "study.families in ", path, ": every entry must be a string");
        // A family is its p = 1 variant's name (Adam, mSGD).
        const Variant v = parse_variant(*s);
        TORCH_CHECK(v.p == 1.0, "study.families in ", path, ": '", *s,
                    "' is not a family (\"Adam\" or \"mSGD\")");
        families.push_back(v.family);
      }
    }
    const toml::array* arr = ps->as_array();
    TORCH_CHECK(arr && !arr->empty(), "study.ps in ", path, " must be a non-empty array of p values");
    for (Family fam : families)
      for (const auto& item : *arr) {
        const auto p = item.value<double>();
        TORCH_CHECK(p.has_value(), "study.ps in ", path, ": every entry must be a number");
        add_variant(variant_name(fam, *p), "study.ps");
      }
  }

  // Learning-rate grids: an array for all variants, or a table of per-variant arrays with an
  // optional `default`.
  const toml::node* lrs = study->get("lrs");
  TORCH_CHECK(lrs != nullptr, "study config '", path, "' lacks study.lrs");
  std::vector<double> default_grid;
  std::map<std::string, std::vector<double>> named;
  std::map<Family, std::vector<double>> by_family;  // [study.lrs.family]: Adam = [...], mSGD = [...]
  if (lrs->is_array()) {
    default_grid = read_lr_grid(*lrs, "study.lrs", path);
  } else if (const toml::table* t = lrs->as_table()) {
    for (const auto& [k, v] : *t) {
      const std::string key(k.str());
      const std::string full = "study.lrs." + key;
      if (key == "default") {
        default_grid = read_lr_grid(v, full, path);
        continue;
      }
      if (key == "family") {
        const toml::table* ft = v.as_table();
        TORCH_CHECK(ft != nullptr, full, " in ", path,
                    " must be a table of per-family grids ([study.lrs.family] Adam = [...])");
        for (const auto& [fk, fv] : *ft) {
          const std::string fname(fk.str());
          const Variant fam = parse_variant(fname);
          TORCH_CHECK(fam.p == 1.0, full, ".", fname, " in ", path,
                      ": not a family (\"Adam\" or \"mSGD\")");
          by_family[fam.family] = read_lr_grid(fv, full + "." + fname, path);
        }
        continue;
      }
      Variant var;
      try {
        var = parse_variant(key);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, full, " in ", path, ": ", e.what_without_backtrace());
      }
      TORCH_CHECK(std::find(cfg.variants.begin(), cfg.variants.end(), var.name) != cfg.variants.end(),
                  full, " in ", path, ": variant '", var.name, "' is not in study.variants");
      named[var.name] = read_lr_grid(v, full, path);
    }
  } else {
    TORCH_CHECK(false, "study.lrs in ", path,
                " must be an array or a table of per-variant arrays ([study.lrs])");
  }
  for (const auto& v : cfg.variants) {
    auto it = named.find(v);
    const auto fam = by_family.find(parse_variant(v).family);
    if (it != named.end()) {
      cfg.lrs[v] = it->second;
    } else if (fam != by_family.end()) {
      cfg.lrs[v] = fam->second;
    } else {
      TORCH_CHECK(!default_grid.empty(), "study config '", path, "': no learning-rate grid for '", v,
                  "' (add study.lrs.", v, " or study.lrs.default)");
      cfg.lrs[v] = default_grid;
    }
  }

  if (const auto* s = study->get("seeds")) {
    const toml::array* arr = s->as_array();
    TORCH_CHECK(arr != nullptr, "study.seeds in ", path, " must be an array of integers");
    TORCH_CHECK(!arr->empty(), "study.seeds in ", path, " is empty");
    cfg.seeds.clear();
    for (const auto& item : *arr) cfg.seeds.push_back(read_int(item, "study.seeds", path, 0));
    std::set<int64_t> unique(cfg.seeds.begin(), cfg.seeds.end());
    TORCH_CHECK(unique.size() == cfg.seeds.size(), "study.seeds in ", path, " lists a seed twice");
  }
  if (const auto* w = study->get("workers")) cfg.workers = read_int(*w, "study.workers", path, 1);
  if (const auto* t = study->get("threads")) cfg.threads = read_int(*t, "study.threads", path, 0);
  for (auto [key, field] : {std::pair<const char*, double*>{"stable_tolerance", &cfg.stable_tolerance},
                            {"reference_tolerance", &cfg.reference_tolerance}}) {
    if (const auto* t = study->get(key)) {
      const auto v = t->value<double>();
      TORCH_CHECK(v.has_value() && std::isfinite(*v) && *v >= 0, "study.", key, " in ", path,
                  " must be a number >= 0");
      *field = *v;
    }
  }
  cfg.study_dir = "runs/study/" + cfg.name;
  if (const auto* d = study->get("study_dir")) cfg.study_dir = read_string(*d, "study.study_dir", path);
  if (const auto* r = study->get("reference")) {
    cfg.reference_configured = true;
    fs::path ref = read_string(*r, "study.reference", path);
    if (ref.is_relative()) ref = fs::path(path).parent_path() / ref;
    cfg.reference = ref.lexically_normal().string();
  }

  if (const auto* o = study->get("overrides")) {
    const toml::table* t = o->as_table();
    TORCH_CHECK(t != nullptr, "study.overrides in ", path,
                " must be a table of per-variant arrays of \"key=value\" strings");
    for (const auto& [k, v] : *t) {
      const std::string full = "study.overrides." + std::string(k.str());
      Variant var;
      try {
        var = parse_variant(std::string(k.str()));
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, full, " in ", path, ": ", e.what_without_backtrace());
      }
      TORCH_CHECK(std::find(cfg.variants.begin(), cfg.variants.end(), var.name) != cfg.variants.end(),
                  full, " in ", path, ": variant '", var.name, "' is not in study.variants");
      const toml::array* arr = v.as_array();
      TORCH_CHECK(arr != nullptr, full, " in ", path, " must be an array of \"key=value\" strings");
      for (const auto& item : *arr) {
        const auto s = item.value<std::string>();
        TORCH_CHECK(s.has_value(), full, " in ", path, ": every entry must be a \"key=value\" string");
        cfg.overrides[var.name].push_back(*s);
      }
    }
  }

  // Base train config: everything but [study]. Validated now (unknown keys, bad values) so a
  // typo fails before the first of many runs starts, with the trainer's own message.
  toml::table base = root;
  base.erase("study");
  std::ostringstream os;
  os << base << "\n";
  try {
    const TrainConfig base_config = config_from_toml_string(os.str(), path);
    // Resolved (every key) and written by config_to_toml: shortest-form floats.
    cfg.train_config_toml = config_to_toml(base_config);
    for (const auto& [variant, sets] : cfg.overrides) {
      TrainConfig c = base_config;
      for (const auto& s : sets) apply_override(c, s);
      c.validate();
    }
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "study config '", path, "': ", e.what_without_backtrace());
  }
  return cfg;
}

}  // namespace specopt
