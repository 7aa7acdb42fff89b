/* ----------------------------------------------------------------------
   ekd_model.cpp — load one exported ekd file and check its metadata; see ekd_model.h.
------------------------------------------------------------------------- */

#include "ekd_model.h"

#include "ekd_graph.h"
#include "ekd_json.h"
#include "ekd_pickle.h"
#include "ekd_text.h"

#include "comm.h"
#include "error.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <cstdint>
#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;
using ekd::first_line;
using ekd::join;
using ekd::shown;

namespace {
// 2 added atom_uncertainty / forward_with_uncertainty, 3 ekd's operators (CONTRACT.md; the
// plugin links libekdops.so); files of versions 1 and 2 still load
constexpr int EKD_FORMAT_VERSION = 3;
constexpr double kMaxCutoff = 30.0;    // Angstrom; export/metadata.py has the same bound
}    // namespace

EKDModel::EKDModel(LAMMPS *lmp) :
    Pointers(lmp), device(torch::kCPU), loaded(false), dtype(torch::kFloat64), cutoff(0.0),
    receptive_field(0.0), min_distance(0.0), num_interactions(1), members(1), atom_uncertainty(false),
    uncertainty_scale(1.0), has_blocks(false), has_layer_apart(false), file_whole_edges(INT64_MAX),
    whole_edges(INT64_MAX), block_edges(0)
{
}

void EKDModel::load(const std::string &file, const torch::Device &on)
{
  const std::string key = file + "|" + on.str();
  if (loaded && key == loaded_key) return;
  loaded = false;
  path = file;
  device = on;

  if (!platform::file_is_readable(path))
    error->all(FLERR, "pair_style ekd: model file {} not found or not readable", path);

  auto unreadable = [&](const std::string &why) {
    error->all(FLERR,
               "pair_style ekd: cannot read {} as a TorchScript file (is it a model exported with "
               "python -m ekd.export, by a torch no newer than this plugin's libtorch {}.{}.{}?): {}",
               path, TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH, why);
  };
  // lengths inside the archive's pickles first: libtorch would allocate a damaged one's length
  std::string problem;
  try {
    problem = ekd::archive_pickle_problem(path);
    if (!problem.empty()) problem = "a damaged archive: " + problem;
  } catch (const std::exception &e) {
    problem = e.what();
  }
  if (!problem.empty()) unreadable(first_line(problem.c_str()));
  torch::jit::ExtraFilesMap extra{{"ekd.json", ""}};
  try {
    module = torch::jit::load(path, device, extra);
  } catch (const std::exception &e) {
    const std::string why = first_line(e.what());
    if (why.find("Unknown builtin op: ekd::") != std::string::npos)  // exported by a newer ekd
      error->all(FLERR,
                 "pair_style ekd: {} calls an operator this plugin's libekdops.so lacks ({}): rebuild the "
                 "plugin from the ekd that exported it (python -m ekd.plugin build)",
                 path, why);
    unreadable(why);
  }
  if (extra["ekd.json"].empty())
    error->all(FLERR,
               "pair_style ekd: {} is not an ekd model: it is TorchScript but has no ekd.json "
               "metadata (export models with python -m ekd.export)",
               path);
  read_metadata(extra["ekd.json"]);
  module.eval();
  if (!exchange_widths.empty()) check_layers();
  if (atom_uncertainty) check_uncertainty_methods();
  has_blocks = !exchange_widths.empty() && module.find_method("layer_values") &&
      module.find_method("layer_gradients") && module.hasattr("whole_edges") && module.attr("whole_edges").isInt();
  has_layer_apart = !exchange_widths.empty() && module.find_method("edge_features_apart") &&
      module.find_method("layer_apart");
  file_whole_edges = whole_edges = has_blocks ? module.attr("whole_edges").toInt() : INT64_MAX;
  block_edges = has_blocks && module.hasattr("block_edges") ? module.attr("block_edges").toInt() : 0;

  loaded = true;
  loaded_key = key;

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "ekd: loaded {} ({}, {} member(s), elements: {}, cutoff {} A, {} interaction(s), "
                   "receptive field {} A, {}{}) on device {}; libtorch {}.{}.{} with {} intra-op "
                   "thread(s)\n",
                   path, model_kind, members, join(elements), cutoff, num_interactions,
                   receptive_field, dtype_name,
                   atom_uncertainty ? fmt::format(", own per-atom uncertainty (scale {})", uncertainty_scale) : "",
                   device.str(), TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH,
                   at::get_num_threads());
}

int EKDModel::species_of(const std::string &element) const
{
  auto it = std::find(elements.begin(), elements.end(), element);
  return it == elements.end() ? -1 : static_cast<int>(it - elements.begin());
}

bool EKDModel::is_committee() const
{
  return model_kind == "ensemble" && members >= 2 && module.find_method("members");
}

void EKDModel::read_metadata(const std::string &json_text)
{
  ekd::FlatJson meta;
  try {
    meta = ekd::parse_flat_json(json_text);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} is not valid JSON: {}", path, e.what());
  }
  if (!meta.has_string("format") || meta.strings["format"] != "ekd-potential")
    error->all(FLERR,
               "pair_style ekd: {} is not an ekd model: its ekd.json has no \"format\": "
               "\"ekd-potential\"",
               path);
  if (!meta.has_number("format_version"))
    error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} has no format_version", path);
  const double version = meta.numbers["format_version"];
  if (version > EKD_FORMAT_VERSION)
    error->all(FLERR,
               "pair_style ekd: {} has format_version {} but this plugin reads format_version {} "
               "at most; rebuild the plugin from a newer ekd",
               path, version, EKD_FORMAT_VERSION);

  auto need_number = [&](const char *name) {
    if (!meta.has_number(name))
      error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} has no number '{}'", path, name);
    return meta.numbers[name];
  };
  // bounds far beyond any real model, so a damaged file cannot ask for a ghost shell or graph
  // that fills the memory; checked before any cast (a cast of 1e308 or NaN to int is undefined)
  auto in_range = [&](const char *name, double value, double least, double most, bool whole) {
    if (!(value >= least && value <= most) || (whole && value != std::floor(value)))
      error->all(FLERR, "pair_style ekd: {} has {} {} in ekd.json; expected a {} from {} to {}", path, name,
                 value, whole ? "whole number" : "number", least, most);
    return value;
  };
  if (!meta.has_string_list("elements") || meta.string_lists["elements"].empty())
    error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} has no list 'elements'", path);
  elements = meta.string_lists["elements"];
  if (elements.size() > 118)
    error->all(FLERR, "pair_style ekd: {} lists {} elements in ekd.json; there are 118", path, elements.size());
  for (const auto &symbol : elements)
    if (symbol.empty() || symbol.size() > 2 ||
        !std::all_of(symbol.begin(), symbol.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); }))
      error->all(FLERR, "pair_style ekd: {} lists '{}' in ekd.json's elements; expected chemical symbols", path,
                 shown(symbol));
  cutoff = in_range("cutoff", need_number("cutoff"), 1e-3, kMaxCutoff, false);
  num_interactions = static_cast<int>(in_range("num_interactions", need_number("num_interactions"), 1, 64, true));
  receptive_field = num_interactions * cutoff;
  if (meta.has_number("receptive_field"))    // the exporter writes num_interactions x cutoff
    in_range("receptive_field", meta.numbers["receptive_field"], 0.0, receptive_field * (1 + 1e-9), false);
  min_distance = meta.has_number("min_distance") ? in_range("min_distance", meta.numbers["min_distance"], 0.0,
                                                            cutoff, false)
                                                 : 0.0;
  members = meta.has_number("members") ? static_cast<int>(in_range("members", meta.numbers["members"], 1, 4096, true))
                                       : 1;
  model_kind = meta.has_string("model_kind") ? shown(meta.strings["model_kind"]) : "unknown kind";
  exchange_widths.clear();
  if (meta.has_number_list("exchange_features"))
    for (double width : meta.number_lists["exchange_features"]) {
      if (!(width >= 1.0) || width != std::floor(width))
        error->all(FLERR, "pair_style ekd: {} has exchange_features entry {} in ekd.json; expected "
                   "positive integers", path, width);
      exchange_widths.push_back(static_cast<int>(width));
    }
  if (!exchange_widths.empty() && static_cast<int>(exchange_widths.size()) != num_interactions - 1)
    error->all(FLERR, "pair_style ekd: {} lists {} exchange_features for {} interaction(s); expected {}",
               path, exchange_widths.size(), num_interactions, num_interactions - 1);

  // format version 2: absent means the file has no uncertainty of its own
  if (meta.has_number("atom_uncertainty") || meta.has_string("atom_uncertainty"))
    error->all(FLERR, "pair_style ekd: {} has a non-boolean atom_uncertainty in ekd.json; expected true "
               "or false", path);
  atom_uncertainty = meta.has_boolean("atom_uncertainty") && meta.booleans["atom_uncertainty"];
  uncertainty_scale = meta.has_number("uncertainty_scale")
                          ? in_range("uncertainty_scale", meta.numbers["uncertainty_scale"], 1e-300, 1e300, false)
                          : 1.0;

  dtype_name = meta.has_string("dtype") ? meta.strings["dtype"] : "";
  if (dtype_name == "float64")
    dtype = torch::kFloat64;
  else if (dtype_name == "float32")
    dtype = torch::kFloat32;
  else
    error->all(FLERR, "pair_style ekd: {} has dtype '{}' in ekd.json; expected float32 or float64",
               path, shown(dtype_name));

  // every file in eV and Angstrom, so a committee's units always match the driving model's
  for (const char *unit_key : {"energy_unit", "length_unit"}) {
    const char *expected = std::strcmp(unit_key, "energy_unit") == 0 ? "eV" : "Angstrom";
    if (meta.has_string(unit_key) && meta.strings[unit_key] != expected)
      error->all(FLERR, "pair_style ekd: {} has {} '{}'; format versions 1 to 3 require '{}'",
                 path, unit_key, shown(meta.strings[unit_key]), expected);
  }
}

// a file listing exchange_features: one isolated atom through edge_features() and every layer(),
// so a file whose features do not have the listed widths is refused here, on every rank alike,
// not in the middle of a run
void EKDModel::check_layers()
{
  if (!module.find_method("layer") || !module.find_method("edge_features"))
    error->all(FLERR, "pair_style ekd: {} lists exchange_features in ekd.json but has no layer() "
               "and edge_features() methods; re-export it with python -m ekd.export", path);
  const auto float_opts = torch::TensorOptions().dtype(dtype).device(device);
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64).device(device);
  torch::Tensor none = torch::zeros({0}, long_opts), one_atom = torch::zeros({1}, long_opts);
  torch::Tensor z = torch::zeros({1, 0}, float_opts);
  std::vector<int64_t> widths;
  try {
    torch::Tensor s = module.get_method("edge_features")({torch::zeros({0, 3}, float_opts)}).toTensor();
    for (int t = 0; t + 1 < num_interactions; ++t) {
      auto out = module.get_method("layer")({static_cast<int64_t>(t), z, s, none, none, one_atom,
                                             static_cast<int64_t>(1)});
      z = out.toTupleRef().elements()[0].toTensor();
      widths.push_back(z.dim() == 2 ? z.size(1) : -1);
    }
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style ekd: the layer() method of {} fails on one isolated atom: {}",
               path, first_line(e.what()));
  }
  for (size_t t = 0; t < widths.size(); ++t)
    if (widths[t] != exchange_widths[t])
      error->all(FLERR, "pair_style ekd: layer {} of {} gives features {} per atom but ekd.json lists "
                 "exchange_features[{}] = {}", t, path, widths[t], t, exchange_widths[t]);
}

// atom_uncertainty: true promises forward_with_uncertainty(), and atom_uncertainty() when the
// file can be evaluated layer by layer (the exchange path reads the head from the last layer)
void EKDModel::check_uncertainty_methods()
{
  if (!module.find_method("forward_with_uncertainty"))
    error->all(FLERR, "pair_style ekd: {} has atom_uncertainty: true in ekd.json but no "
               "forward_with_uncertainty() method; re-export it with python -m ekd.export", path);
  if (!exchange_widths.empty() && !module.find_method("atom_uncertainty"))
    error->all(FLERR, "pair_style ekd: {} has atom_uncertainty: true and layer() but no atom_uncertainty() "
               "method; re-export it with python -m ekd.export", path);
}

bool EKDModel::use_blocks(const std::string &request)
{
  if (!has_blocks) return request != "yes";
  whole_edges = request == "yes" ? 0 : request == "no" ? INT64_MAX : file_whole_edges;
  module.setattr("whole_edges", whole_edges);    // forward() reads it too (one rank)
  return true;
}

void EKDModel::inputs(EKDGraph &graph, torch::Tensor &t_vec, torch::Tensor &t_recv, torch::Tensor &t_send,
                      torch::Tensor &t_species)
{
  const int64_t n_edges = static_cast<int64_t>(graph.receivers.size());
  const int64_t n_node = static_cast<int64_t>(graph.species.size());
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);

  if (dtype == torch::kFloat64) {
    t_vec = torch::from_blob(graph.edge_vec.data(), {n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  } else {
    edge_vec_f32.resize(graph.edge_vec.size());
    std::copy(graph.edge_vec.begin(), graph.edge_vec.end(), edge_vec_f32.begin());
    t_vec = torch::from_blob(edge_vec_f32.data(), {n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat32));
  }
  t_recv = torch::from_blob(graph.receivers.data(), {n_edges}, long_opts);
  t_send = torch::from_blob(graph.senders.data(), {n_edges}, long_opts);
  t_species = torch::from_blob(graph.species.data(), {n_node}, long_opts);
  if (!device.is_cpu()) {
    t_vec = t_vec.to(device);
    t_recv = t_recv.to(device);
    t_send = t_send.to(device);
    t_species = t_species.to(device);
  }
}
