/* ----------------------------------------------------------------------
   pair_style ekd — see pair_ekd.h for the steps and export/CONTRACT.md for the
   contract with the exported TorchScript file.
------------------------------------------------------------------------- */

#include "pair_ekd.h"

#include "ekd_json.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/version.h>

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cstring>

using namespace LAMMPS_NS;

namespace {

constexpr double KCAL_PER_MOL_PER_EV = 23.060547830619;    // units real: energies in kcal/mol
constexpr int EKD_FORMAT_VERSION = 1;

// first line of an exception message (torch messages carry long back-traces)
std::string first_line(const char *what)
{
  std::string s(what ? what : "");
  auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

std::string join(const std::vector<std::string> &items)
{
  std::string out;
  for (const auto &it : items) out += (out.empty() ? "" : " ") + it;
  return out;
}

std::string shape_of(const torch::Tensor &t)
{
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

}    // namespace

/* ---------------------------------------------------------------------- */

PairEKD::PairEKD(LAMMPS *lmp) :
    Pair(lmp), device_request("cpu"), device(torch::kCPU), unit_factor(1.0), exchange_allowed(true),
    model_loaded(false), model_dtype(torch::kFloat64), cutoff(0.0), receptive_field(0.0),
    min_distance(0.0), num_interactions(1), members(1), jit_optimize(false),
    many_ranks(false), exchange(false), ghost_receivers(false), comm_width(0), graph(lmp),
    model_energy(0.0), overlap_warned(false), ghost_message_printed(false)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from edge vectors (CONTRACT.md §2)
  unit_convert_flag = 0;          // units are handled here: metal and real only
  cutghost = nullptr;
  inputs.reserve(5);
}

PairEKD::~PairEKD()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairEKD::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      setflag[i][j] = 0;
      cutsq[i][j] = cutghost[i][j] = 0.0;
    }
}

/* ----------------------------------------------------------------------
   settings: pair_style ekd FILE [device cpu|cuda|auto] [heap keep|system] [exchange yes|no]
------------------------------------------------------------------------- */

void PairEKD::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style ekd command: expected 'pair_style ekd FILE [device cpu|cuda|auto] "
               "[heap keep|system] [exchange yes|no]'");
  model_file = arg[0];
  device_request = "cpu";
  exchange_allowed = true;
  bool keep_heap = true;
  int iarg = 1;
  while (iarg < narg) {
    std::string key = arg[iarg];
    if (key == "heap") {
      if (iarg + 1 >= narg || (std::string(arg[iarg + 1]) != "keep" && std::string(arg[iarg + 1]) != "system"))
        error->all(FLERR, "pair_style ekd: keyword 'heap' needs a value: keep or system");
      keep_heap = std::string(arg[iarg + 1]) == "keep";
      iarg += 2;
    } else if (key == "device") {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style ekd: keyword 'device' needs a value: cpu, cuda or auto");
      std::string value = arg[iarg + 1];
      if (value != "cpu" && value != "cuda" && value != "auto")
        error->all(FLERR, "pair_style ekd: unknown device '{}' (use cpu, cuda or auto)", value);
      device_request = value;
      iarg += 2;
    } else if (key == "exchange") {
      if (iarg + 1 >= narg || (std::string(arg[iarg + 1]) != "yes" && std::string(arg[iarg + 1]) != "no"))
        error->all(FLERR, "pair_style ekd: keyword 'exchange' needs a value: yes or no");
      exchange_allowed = std::string(arg[iarg + 1]) == "yes";
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style ekd: unknown keyword '{}' (known keywords: device, heap, exchange)", key);
    }
  }
  if (keep_heap) keep_tensor_memory();

  const std::string units = update->unit_style;
  if (units == "metal")
    unit_factor = 1.0;
  else if (units == "real")
    unit_factor = KCAL_PER_MOL_PER_EV;
  else
    error->all(FLERR,
               "pair_style ekd supports 'units metal' (eV, Angstrom) and 'units real' (kcal/mol, "
               "Angstrom) only, not 'units {}'",
               units);

  select_device();
}

// Every step allocates and frees the same large tensors. glibc serves blocks above its mmap
// threshold (at most 32 MB) with fresh pages that the kernel must fault in and zero again at
// every step: measured, 30% of the model's time at 7,488 atoms and the main reason the cost
// per atom grew with box size. Served from the heap and never trimmed, the memory is reused.
// (`heap system` keeps the C library's defaults; other C libraries are left alone.)
void PairEKD::keep_tensor_memory()
{
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
#endif
}

// resolve device cpu|cuda|auto; with cuda, one GPU per local rank
void PairEKD::select_device()
{
  device = torch::Device(torch::kCPU);
#ifdef EKD_WITH_CUDA
  // Untested: no GPU was available where this was written. Uses only libtorch's
  // device-generic API, so it compiles against a CPU libtorch too.
  const bool cuda_ok = torch::cuda::is_available();
  if (device_request == "cuda" && !cuda_ok)
    error->all(FLERR,
               "pair_style ekd: device cuda requested but CUDA is not available to libtorch "
               "(torch::cuda::is_available() is false); use 'device cpu' or 'device auto'");
  if (device_request == "cuda" || (device_request == "auto" && cuda_ok)) {
    MPI_Comm node_comm;
    int local_rank = 0;
    MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node_comm);
    MPI_Comm_rank(node_comm, &local_rank);
    MPI_Comm_free(&node_comm);
    const int ndev = static_cast<int>(torch::cuda::device_count());
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % ndev));
  }
#else
  if (device_request == "cuda")
    error->all(FLERR,
               "pair_style ekd: device cuda requested but CUDA is not available: this "
               "ekdplugin.so was built without CUDA code paths (rebuild with "
               "-DEKD_ENABLE_CUDA=ON against a CUDA-enabled libtorch)");
#endif
}

/* ----------------------------------------------------------------------
   coeff: pair_coeff * * El1 El2 ... (one element per LAMMPS atom type)
------------------------------------------------------------------------- */

void PairEKD::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_style ekd needs 'pair_coeff * * El1 El2 ...' with one element per atom type");
  if (narg - 2 != ntypes)
    error->all(FLERR,
               "pair_coeff * * for pair_style ekd needs one element per atom type: {} atom types "
               "but {} elements given",
               ntypes, narg - 2);

  load_model();

  type_to_species.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; ++t) {
    const std::string el = arg[t + 1];
    auto it = std::find(elements.begin(), elements.end(), el);
    if (it == elements.end())
      error->all(FLERR, "pair_style ekd: element {} not found in model {}; the model knows: {}", el,
                 model_file, join(elements));
    type_to_species[t] = static_cast<int>(it - elements.begin());
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;

  if (comm->me == 0) {
    std::string map;
    for (int t = 1; t <= ntypes; ++t) map += fmt::format(" {}->{}", t, arg[t + 1]);
    utils::logmesg(lmp, "ekd: atom type -> element:{}\n", map);
  }
}

// load the TorchScript file on the chosen device and read its ekd.json metadata
void PairEKD::load_model()
{
  const std::string key = model_file + "|" + device.str();
  if (model_loaded && key == loaded_key) return;
  model_loaded = false;

  if (!platform::file_is_readable(model_file))
    error->all(FLERR, "pair_style ekd: model file {} not found or not readable", model_file);

  torch::jit::ExtraFilesMap extra{{"ekd.json", ""}};
  try {
    module = torch::jit::load(model_file, device, extra);
  } catch (const std::exception &e) {
    error->all(FLERR,
               "pair_style ekd: cannot read {} as a TorchScript file (is it a model exported with "
               "python -m ekd.export, by a torch no newer than this plugin's libtorch {}.{}.{}?): {}",
               model_file, TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH,
               first_line(e.what()));
  }
  if (extra["ekd.json"].empty())
    error->all(FLERR,
               "pair_style ekd: {} is not an ekd model: it is TorchScript but has no ekd.json "
               "metadata (export models with python -m ekd.export)",
               model_file);
  read_metadata(extra["ekd.json"]);
  module.eval();
  if (!exchange_widths.empty()) check_layers();

  // The exported graph calls torch.autograd.grad inside forward(), so InferenceMode
  // cannot be used; grad mode is switched on for the call (see call_model()).
  // TorchScript's profiling executor re-specialises on tensor shapes, which change every
  // MD step (the number of edges). Measured here (torch 2.13 CPU, 1 thread, 1536 atoms,
  // ~49,500 edges, 2-layer and 1-layer message-passing toys, 200 MD steps, two repeats):
  // model call 16.3-17.5 ms/step with the optimiser off vs 22.3-22.8 ms on (1 layer) and
  // 24.4-24.9 vs 33.6-35.9 ms (2 layers); an exported HIP-NN (128 features, 2
  // interactions, cutoff 6.5 A, ~215,000 edges): 3.1 vs 3.5-3.9 s/step and 1.19 vs
  // 1.28-1.33 GB. So it is off, for the model call only (GraphOptimizerEnabledGuard);
  // EKD_JIT_OPTIMIZE=1 turns it on to re-measure.
  jit_optimize = false;
  if (const char *env = std::getenv("EKD_JIT_OPTIMIZE")) jit_optimize = std::atoi(env) != 0;

  model_loaded = true;
  loaded_key = key;

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "ekd: loaded {} ({}, {} member(s), elements: {}, cutoff {} A, {} interaction(s), "
                   "receptive field {} A, {}) on device {}; libtorch {}.{}.{} with {} intra-op "
                   "thread(s)\n",
                   model_file, model_kind, members, join(elements), cutoff, num_interactions,
                   receptive_field, dtype_name, device.str(), TORCH_VERSION_MAJOR,
                   TORCH_VERSION_MINOR, TORCH_VERSION_PATCH, at::get_num_threads());
}

// a file listing exchange_features: one isolated atom through edge_features() and every layer(),
// so a file whose features do not have the listed widths is refused here, on every rank alike,
// not in the middle of a run
void PairEKD::check_layers()
{
  if (!module.find_method("layer") || !module.find_method("edge_features"))
    error->all(FLERR, "pair_style ekd: {} lists exchange_features in ekd.json but has no layer() "
               "and edge_features() methods; re-export it with python -m ekd.export", model_file);
  const auto float_opts = torch::TensorOptions().dtype(model_dtype).device(device);
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
               model_file, first_line(e.what()));
  }
  for (size_t t = 0; t < widths.size(); ++t)
    if (widths[t] != exchange_widths[t])
      error->all(FLERR, "pair_style ekd: layer {} of {} gives features {} per atom but ekd.json lists "
                 "exchange_features[{}] = {}", t, model_file, widths[t], t, exchange_widths[t]);
}

void PairEKD::read_metadata(const std::string &json_text)
{
  ekd::FlatJson meta;
  try {
    meta = ekd::parse_flat_json(json_text);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} is not valid JSON: {}",
               model_file, e.what());
  }
  if (!meta.has_string("format") || meta.strings["format"] != "ekd-potential")
    error->all(FLERR,
               "pair_style ekd: {} is not an ekd model: its ekd.json has no \"format\": "
               "\"ekd-potential\"",
               model_file);
  if (!meta.has_number("format_version"))
    error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} has no format_version", model_file);
  const double version = meta.numbers["format_version"];
  if (version > EKD_FORMAT_VERSION)
    error->all(FLERR,
               "pair_style ekd: {} has format_version {} but this plugin reads format_version {} "
               "only; rebuild the plugin from a newer ekd",
               model_file, version, EKD_FORMAT_VERSION);

  auto need_number = [&](const char *name) {
    if (!meta.has_number(name))
      error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} has no number '{}'", model_file, name);
    return meta.numbers[name];
  };
  if (!meta.has_string_list("elements") || meta.string_lists["elements"].empty())
    error->all(FLERR, "pair_style ekd: the ekd.json metadata of {} has no list 'elements'", model_file);
  elements = meta.string_lists["elements"];
  cutoff = need_number("cutoff");
  num_interactions = static_cast<int>(need_number("num_interactions"));
  if (!(cutoff > 0.0) || num_interactions < 1)
    error->all(FLERR, "pair_style ekd: {} has cutoff {} and num_interactions {}; both must be positive",
               model_file, cutoff, num_interactions);
  receptive_field = meta.has_number("receptive_field") ? meta.numbers["receptive_field"] : 0.0;
  receptive_field = std::max(receptive_field, num_interactions * cutoff);
  min_distance = meta.has_number("min_distance") ? meta.numbers["min_distance"] : 0.0;
  members = meta.has_number("members") ? static_cast<int>(meta.numbers["members"]) : 1;
  model_kind = meta.has_string("model_kind") ? meta.strings["model_kind"] : "unknown kind";
  exchange_widths.clear();
  if (meta.has_number_list("exchange_features"))
    for (double width : meta.number_lists["exchange_features"]) {
      if (!(width >= 1.0) || width != std::floor(width))
        error->all(FLERR, "pair_style ekd: {} has exchange_features entry {} in ekd.json; expected "
                   "positive integers", model_file, width);
      exchange_widths.push_back(static_cast<int>(width));
    }
  if (!exchange_widths.empty() && static_cast<int>(exchange_widths.size()) != num_interactions - 1)
    error->all(FLERR, "pair_style ekd: {} lists {} exchange_features for {} interaction(s); expected {}",
               model_file, exchange_widths.size(), num_interactions, num_interactions - 1);
  comm_forward = comm_reverse = 0;
  for (int width : exchange_widths) comm_forward = comm_reverse = std::max(comm_forward, width);

  dtype_name = meta.has_string("dtype") ? meta.strings["dtype"] : "";
  if (dtype_name == "float64")
    model_dtype = torch::kFloat64;
  else if (dtype_name == "float32")
    model_dtype = torch::kFloat32;
  else
    error->all(FLERR, "pair_style ekd: {} has dtype '{}' in ekd.json; expected float32 or float64",
               model_file, dtype_name);

  for (const char *unit_key : {"energy_unit", "length_unit"}) {
    const char *expected = std::strcmp(unit_key, "energy_unit") == 0 ? "eV" : "Angstrom";
    if (meta.has_string(unit_key) && meta.strings[unit_key] != expected)
      error->all(FLERR, "pair_style ekd: {} has {} '{}'; format version 1 requires '{}'",
                 model_file, unit_key, meta.strings[unit_key], expected);
  }
}

/* ----------------------------------------------------------------------
   init_style: checks, neighbour request, ghost cutoff
------------------------------------------------------------------------- */

void PairEKD::init_style()
{
  if (!model_loaded) error->all(FLERR, "pair_style ekd: pair_coeff * * El1 El2 ... was not given");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style ekd requires 'newton on' (newton_pair on): forces on ghost atoms are "
               "sent back to their owners by reverse communication");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style ekd requires atom IDs (atom_modify id yes)");

  many_ranks = comm->nprocs > 1;
  // several ranks: a model with layer() is evaluated layer by layer, its features exchanged
  // between ranks, with ghosts one cutoff deep; `exchange no` selects the ghost-shell path
  // below instead (every model can take it; it recomputes the layers for a deep ghost shell)
  exchange = many_ranks && !exchange_widths.empty() && exchange_allowed;
  ghost_receivers = many_ranks && num_interactions > 1 && !exchange;

  // one rank (and exchange): full list, ghosts mapped to their owners where this rank owns
  // them; ghost-shell path with >1 layer: ghosts are receivers too, so they need neighbour lists
  ghostneigh = ghost_receivers ? 1 : 0;
  int flags = NeighConst::REQ_FULL;
  if (ghost_receivers) flags |= NeighConst::REQ_GHOST;
  neighbor->add_request(this, flags);

  if (ghost_receivers) {
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair_style ekd on several MPI ranks requires 'comm_modify mode single'");
    // nodes up to num_interactions edges away from a local atom must be ghosts here
    const double wanted = receptive_field + neighbor->skin;
    if (comm->cutghostuser < wanted) {
      comm->cutghostuser = wanted;
      if (comm->me == 0 && !ghost_message_printed)
        utils::logmesg(lmp,
                       "ekd: ghost cutoff set to {:.4f} A (receptive field {} A of {} interaction(s) "
                       "+ skin {} A) so every local energy is exact on {} ranks\n",
                       wanted, receptive_field, num_interactions, neighbor->skin, comm->nprocs);
      ghost_message_printed = true;
    }
  }
  if (exchange && comm->me == 0 && !ghost_message_printed) {
    utils::logmesg(lmp, "ekd: {} ranks exchange the features of {} layer(s) (ghost cutoff: one model "
                   "cutoff + skin)\n", comm->nprocs, exchange_widths.size());
    ghost_message_printed = true;
  }

  overlap_warned = false;    // the overlap warning is printed once per run
  graph.configure(cutoff, min_distance, num_interactions, type_to_species, many_ranks, ghost_receivers);
}

double PairEKD::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  cutghost[i][j] = cutghost[j][i] = cutoff;    // neighbour lists of ghost receivers
  return cutoff;
}

/* ----------------------------------------------------------------------
   compute: graph.build -> call_model (or call_layers) -> write_back
------------------------------------------------------------------------- */

void PairEKD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  graph.build(list);
  if (graph.overlap_found && !overlap_warned) warn_overlap();
  if (exchange) {
    if (atom->nlocal == 0)
      exchange_idle();    // nothing owned, but the neighbours' exchanges need this rank
    else
      call_layers();
  } else {
    if (atom->nlocal == 0) return;    // nothing owned: no energy, no forces
    call_model();
  }
  write_back();
}

void PairEKD::warn_overlap()
{
  error->warning(FLERR,
                 "pair_style ekd: atoms {} and {} are {:.4f} A apart, closer than the shortest "
                 "distance in the training data ({} A, min_distance in {}): the model extrapolates "
                 "(printed once per run)",
                 graph.overlap_tag_i, graph.overlap_tag_j, graph.overlap_dist, min_distance, model_file);
  overlap_warned = true;
}

/* ----------------------------------------------------------------------
   call_model: wrap the buffers (no copy on CPU/float64), one forward() call
------------------------------------------------------------------------- */

void PairEKD::input_tensors(torch::Tensor &t_vec, torch::Tensor &t_recv, torch::Tensor &t_send,
                            torch::Tensor &t_species)
{
  const int64_t n_edges = static_cast<int64_t>(graph.receivers.size());
  const int64_t n_node = static_cast<int64_t>(graph.species.size());
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);

  if (model_dtype == torch::kFloat64) {
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

void PairEKD::call_model()
{
  const int64_t n_edges = static_cast<int64_t>(graph.receivers.size());
  const int64_t n_node = static_cast<int64_t>(graph.species.size());
  torch::Tensor t_vec, t_recv, t_send, t_species;
  input_tensors(t_vec, t_recv, t_send, t_species);

  inputs.clear();
  inputs.emplace_back(t_vec);
  inputs.emplace_back(t_recv);
  inputs.emplace_back(t_send);
  inputs.emplace_back(t_species);
  inputs.emplace_back(static_cast<int64_t>(atom->nlocal));

  c10::IValue result;
  try {
    torch::AutoGradMode grad_on(true);    // the model differentiates inside forward()
    torch::jit::GraphOptimizerEnabledGuard optimize(jit_optimize);
    result = module.forward(inputs);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style ekd: the model {} failed on {} nodes and {} edges (model dtype {}): {}",
               model_file, n_node, n_edges, dtype_name, first_line(e.what()));
  }

  if (!result.isTuple() || result.toTupleRef().elements().size() != 3)
    error->one(FLERR, "pair_style ekd: the model {} must return (energy, atom_energy, edge_grad)",
               model_file);
  const auto &out = result.toTupleRef().elements();
  torch::Tensor energy = out[0].toTensor();
  torch::Tensor atom_energy = out[1].toTensor();
  torch::Tensor edge_grad = out[2].toTensor();
  if (energy.numel() != 1 || atom_energy.numel() != n_node || edge_grad.dim() != 2 ||
      edge_grad.size(0) != n_edges || edge_grad.size(1) != 3)
    error->one(FLERR,
               "pair_style ekd: the model {} returned shapes energy {}, atom_energy {}, edge_grad "
               "{}; expected [], [{}], [{}, 3]",
               model_file, shape_of(energy), shape_of(atom_energy), shape_of(edge_grad), n_node,
               n_edges);

  model_energy = energy.to(torch::kCPU, torch::kFloat64).item<double>();
  atom_energy_out = atom_energy.to(torch::kCPU, torch::kFloat64).contiguous();
  edge_grad_out = edge_grad.to(torch::kCPU, torch::kFloat64).contiguous();
}

/* ----------------------------------------------------------------------
   call_layers: CONTRACT.md §2b. Forward: s = edge_features(edge vectors), then for t = 0 .. L-1
     (z^{t+1} of local nodes, energy terms) = layer(t, z^t of all nodes, s, ...);
     z^{t+1} of ghost nodes arrives from their owners (forward comm).
   Backward, t = L-1 .. 0, by autograd through each layer's graph:
     d/d(s, z^t) of [ sum energy_t + <z^{t+1}, g^{t+1}> ];
     g^t = dE/dz^t of local nodes = own rows + ghost rows summed on their owners (reverse comm);
   at last dE/d(edge vectors) from dE/ds through edge_features.
------------------------------------------------------------------------- */

void PairEKD::call_layers()
{
  const int64_t nlocal = atom->nlocal;
  const int n_layers = num_interactions;
  torch::Tensor t_vec, t_recv, t_send, t_species;
  input_tensors(t_vec, t_recv, t_send, t_species);
  const auto float_opts = torch::TensorOptions().dtype(model_dtype).device(device);

  torch::AutoGradMode grad_on(true);
  torch::jit::GraphOptimizerEnabledGuard optimize(jit_optimize);
  torch::Tensor vec = t_vec.detach().requires_grad_(true);
  torch::Tensor features, s;    // s: the edge features as a leaf, so each layer's backward stops there
  try {
    features = module.get_method("edge_features")({vec}).toTensor();
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style ekd: edge_features of the model {} failed on {} edges: {}", model_file,
               graph.receivers.size(), first_line(e.what()));
  }
  s = features.detach().requires_grad_(true);
  std::vector<torch::Tensor> z_in(n_layers), z_out(n_layers), energy(n_layers);
  torch::Tensor z = torch::zeros({static_cast<int64_t>(graph.species.size()), 0}, float_opts);
  auto layer = module.get_method("layer");
  for (int t = 0; t < n_layers; ++t) {
    z_in[t] = t > 0 ? z.requires_grad_(true) : z;
    try {
      c10::IValue result = layer({static_cast<int64_t>(t), z_in[t], s, t_recv, t_send, t_species, nlocal});
      const auto &out = result.toTupleRef().elements();
      z_out[t] = out[0].toTensor();
      energy[t] = out[1].toTensor();
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style ekd: layer {} of the model {} failed on {} nodes and {} edges: {}", t,
                 model_file, graph.species.size(), graph.receivers.size(), first_line(e.what()));
    }
    const int64_t width = t + 1 < n_layers ? exchange_widths[t] : z_out[t].size(-1);
    if (energy[t].numel() != nlocal || z_out[t].dim() != 2 || z_out[t].size(0) != nlocal ||
        z_out[t].size(1) != width)
      error->one(FLERR, "pair_style ekd: layer {} of the model {} returned features {} and energies {} "
                 "for {} local atoms; expected [{}, {}] (exchange_features) and [{}]", t, model_file,
                 shape_of(z_out[t]), shape_of(energy[t]), nlocal, nlocal, width, nlocal);
    if (t + 1 < n_layers) z = exchange_features(z_out[t].detach());
  }

  torch::Tensor atom_energy = energy[0].detach();
  for (int t = 1; t < n_layers; ++t) atom_energy = atom_energy + energy[t].detach();
  atom_energy_out = atom_energy.to(torch::kCPU, torch::kFloat64).contiguous();
  model_energy = atom_energy_out.sum().item<double>();

  torch::Tensor feature_grad = torch::zeros_like(s);
  torch::Tensor g;    // dE/dz^{t+1} of the local nodes
  for (int t = n_layers - 1; t >= 0; --t) {
    std::vector<torch::Tensor> outputs{energy[t]}, seeds{torch::ones_like(energy[t])};
    if (g.defined()) {
      outputs.push_back(z_out[t]);
      seeds.push_back(g);
    }
    std::vector<torch::Tensor> wrt{s};
    if (t > 0) wrt.push_back(z_in[t]);
    std::vector<torch::Tensor> grads;
    try {
      grads = torch::autograd::grad(outputs, wrt, seeds, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style ekd: the gradient of layer {} of the model {} failed: {}", t,
                 model_file, first_line(e.what()));
    }
    if (grads[0].defined()) feature_grad = feature_grad + grads[0];
    if (t > 0) g = exchange_gradients(grads[1].defined() ? grads[1] : torch::zeros_like(z_in[t]));
  }
  torch::Tensor edge_grad = torch::zeros_like(t_vec);
  if (features.requires_grad()) {    // no edges: nothing depends on the edge vectors
    auto grads = torch::autograd::grad({features}, {vec}, {feature_grad}, false, false, true);
    if (grads[0].defined()) edge_grad = grads[0];
  }
  edge_grad_out = edge_grad.to(torch::kCPU, torch::kFloat64).contiguous();
}

// a rank that owns no atoms takes part in the same exchanges, with nothing to compute
void PairEKD::exchange_idle()
{
  const int nall = atom->nlocal + atom->nghost;
  for (int width : exchange_widths) {
    comm_width = width;
    comm_rows.assign(static_cast<size_t>(nall) * width, 0.0);
    comm->forward_comm(this);
  }
  for (int t = num_interactions - 1; t > 0; --t) {
    comm_width = exchange_widths[t - 1];
    comm_rows.assign(static_cast<size_t>(nall) * comm_width, 0.0);
    comm->reverse_comm(this);
  }
  model_energy = 0.0;
  atom_energy_out = torch::zeros({0}, torch::kFloat64);
  edge_grad_out = torch::zeros({0, 3}, torch::kFloat64);
}

// features of the local nodes -> features of every node: the rows of ghost nodes are filled
// by their owners through one forward communication
torch::Tensor PairEKD::exchange_features(const torch::Tensor &z_local)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int width = static_cast<int>(z_local.size(1));
  torch::Tensor local = z_local.to(torch::kCPU, torch::kFloat64).contiguous();
  comm_width = width;
  comm_rows.resize(static_cast<size_t>(nall) * width);
  std::copy(local.data_ptr<double>(), local.data_ptr<double>() + static_cast<size_t>(nlocal) * width,
            comm_rows.begin());
  comm->forward_comm(this);

  const int n_ghost_nodes = graph.n_nodes - nlocal;
  torch::Tensor ghosts = torch::empty({n_ghost_nodes, width}, torch::kFloat64);
  double *out = ghosts.data_ptr<double>();
  for (int k = 0; k < n_ghost_nodes; ++k)
    std::copy_n(&comm_rows[static_cast<size_t>(graph.node_atom[nlocal + k]) * width], width, out + static_cast<size_t>(k) * width);
  return torch::cat({local, ghosts}).to(device, model_dtype);
}

// dE/dz of every node -> dE/dz of the local nodes: ghost rows are added on their owners by one
// reverse communication
torch::Tensor PairEKD::exchange_gradients(const torch::Tensor &dz)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int width = static_cast<int>(dz.size(1));
  torch::Tensor all = dz.to(torch::kCPU, torch::kFloat64).contiguous();
  const double *in = all.data_ptr<double>();
  comm_width = width;
  comm_rows.assign(static_cast<size_t>(nall) * width, 0.0);
  for (int n = nlocal; n < graph.n_nodes; ++n)
    std::copy_n(in + static_cast<size_t>(n) * width, width, &comm_rows[static_cast<size_t>(graph.node_atom[n]) * width]);
  comm->reverse_comm(this);
  torch::Tensor from_ghosts = torch::from_blob(comm_rows.data(), {nlocal, width}, torch::kFloat64);
  return (all.narrow(0, 0, nlocal) + from_ghosts).to(device, model_dtype);
}

int PairEKD::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/, int * /*pbc*/)
{
  for (int k = 0; k < n; ++k)
    std::copy_n(&comm_rows[static_cast<size_t>(list[k]) * comm_width], comm_width, buf + static_cast<size_t>(k) * comm_width);
  return n * comm_width;
}

void PairEKD::unpack_forward_comm(int n, int first, double *buf)
{
  std::copy_n(buf, static_cast<size_t>(n) * comm_width, comm_rows.data() + static_cast<size_t>(first) * comm_width);
}

int PairEKD::pack_reverse_comm(int n, int first, double *buf)
{
  std::copy_n(comm_rows.data() + static_cast<size_t>(first) * comm_width, static_cast<size_t>(n) * comm_width, buf);
  return n * comm_width;
}

void PairEKD::unpack_reverse_comm(int n, int *list, double *buf)
{
  for (int k = 0; k < n; ++k) {
    double *row = &comm_rows[static_cast<size_t>(list[k]) * comm_width];
    for (int c = 0; c < comm_width; ++c) row[c] += buf[static_cast<size_t>(k) * comm_width + c];
  }
}

/* ----------------------------------------------------------------------
   write_back: CONTRACT.md §2 with g = dE/d(edge vector), r = edge vector
     F_i += g, F_j -= g, W -= r (x) g, W_i, W_j -= r (x) g / 2
------------------------------------------------------------------------- */

void PairEKD::write_back()
{
  const int nlocal = atom->nlocal;
  const double s = unit_factor;
  double **f = atom->f;

  if (eflag_global) eng_vdwl += s * model_energy;
  if (eflag_atom) {
    const double *ae = atom_energy_out.data_ptr<double>();
    for (int i = 0; i < nlocal; ++i) eatom[i] += s * ae[i];    // local atoms are nodes [0, nlocal)
  }

  const double *g = edge_grad_out.data_ptr<double>();
  const size_t n_edges = graph.edge_i.size();
  for (size_t e = 0; e < n_edges; ++e) {
    const int i = graph.edge_i[e];
    const int j = graph.edge_j[e];
    const double gx = s * g[3 * e], gy = s * g[3 * e + 1], gz = s * g[3 * e + 2];
    f[i][0] += gx;
    f[i][1] += gy;
    f[i][2] += gz;
    f[j][0] -= gx;
    f[j][1] -= gy;
    f[j][2] -= gz;
    if (vflag_either) {
      const double rx = graph.edge_vec[3 * e], ry = graph.edge_vec[3 * e + 1], rz = graph.edge_vec[3 * e + 2];
      const double v[6] = {-rx * gx, -ry * gy, -rz * gz, -rx * gy, -rx * gz, -ry * gz};
      if (vflag_global)
        for (int k = 0; k < 6; ++k) virial[k] += v[k];
      if (vflag_atom)
        for (int k = 0; k < 6; ++k) {
          vatom[i][k] += 0.5 * v[k];
          vatom[j][k] += 0.5 * v[k];
        }
    }
  }
}
