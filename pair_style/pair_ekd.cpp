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
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
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
    Pair(lmp), device_request("cpu"), device(torch::kCPU), unit_factor(1.0),
    model_loaded(false), model_dtype(torch::kFloat64), cutoff(0.0), receptive_field(0.0),
    min_distance(0.0), num_interactions(1), members(1), jit_optimize(false),
    many_ranks(false), ghost_receivers(false), n_nodes(0), owner_built_at(-1),
    model_energy(0.0), overlap_warned(false), overlap_found(false), overlap_tag_i(0),
    overlap_tag_j(0), overlap_dist(0.0), ghost_message_printed(false)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from edge vectors (CONTRACT.md §2)
  unit_convert_flag = 0;          // units are handled here: metal and real only
  cutghost = nullptr;

  // a non-null data pointer even for zero edges, for torch::from_blob
  species.reserve(1024);
  receivers.reserve(16384);
  senders.reserve(16384);
  edge_vec.reserve(3 * 16384);
  edge_i.reserve(16384);
  edge_j.reserve(16384);
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
   settings: pair_style ekd FILE [device cpu|cuda|auto] [heap keep|system]
------------------------------------------------------------------------- */

void PairEKD::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style ekd command: expected 'pair_style ekd FILE [device cpu|cuda|auto] [heap keep|system]'");
  model_file = arg[0];
  device_request = "cpu";
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
    } else {
      error->all(FLERR, "pair_style ekd: unknown keyword '{}' (known keywords: device, heap)", key);
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
  ghost_receivers = many_ranks && num_interactions > 1;

  // one rank: full list, ghosts mapped to their owners (exact for any number of layers);
  // several ranks with >1 layer: ghosts are receivers too, so they need neighbour lists
  ghostneigh = ghost_receivers ? 1 : 0;
  int flags = NeighConst::REQ_FULL;
  if (ghost_receivers) flags |= NeighConst::REQ_GHOST;
  neighbor->add_request(this, flags);

  if (many_ranks) {
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair_style ekd on several MPI ranks requires 'comm_modify mode single'");
    // nodes up to num_interactions edges away from a local atom must be ghosts here
    const double wanted = receptive_field + neighbor->skin;
    if (receptive_field > cutoff && comm->cutghostuser < wanted) {
      comm->cutghostuser = wanted;
      if (comm->me == 0 && !ghost_message_printed)
        utils::logmesg(lmp,
                       "ekd: ghost cutoff set to {:.4f} A (receptive field {} A of {} interaction(s) "
                       "+ skin {} A) so every local energy is exact on {} ranks\n",
                       wanted, receptive_field, num_interactions, neighbor->skin, comm->nprocs);
      ghost_message_printed = true;
    }
  }

  overlap_warned = false;    // the overlap warning is printed once per run
  owner_built_at = -1;
}

double PairEKD::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  cutghost[i][j] = cutghost[j][i] = cutoff;    // neighbour lists of ghost receivers
  return cutoff;
}

/* ----------------------------------------------------------------------
   compute: build_graph -> call_model -> write_back
------------------------------------------------------------------------- */

void PairEKD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  build_graph();
  if (overlap_found && !overlap_warned) warn_overlap();
  if (atom->nlocal == 0) return;    // nothing owned: no energy, no forces
  call_model();
  write_back();
}

void PairEKD::build_graph()
{
  receivers.clear();
  senders.clear();
  edge_vec.clear();
  edge_i.clear();
  edge_j.clear();
  species.clear();
  overlap_found = false;
  // atoms are re-ordered (sorting, exchange) and ghosts re-created only when the
  // neighbour lists are rebuilt
  const int nall = atom->nlocal + atom->nghost;
  if (neighbor->ago == 0 || owner_built_at != neighbor->ncalls || static_cast<int>(owner.size()) != nall)
    build_owner_map();
  if (many_ranks)
    build_graph_many_ranks();
  else
    build_graph_one_rank();
}

// tag -> local index, then the owner of every local and ghost atom: on one rank every ghost
// is an image of a local atom; on several ranks ghosts owned elsewhere get -1
void PairEKD::build_owner_map()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const tagint *tag = atom->tag;

  tagint maxtag = 0;
  for (int i = 0; i < nlocal; ++i) maxtag = std::max(maxtag, tag[i]);
  const bool dense = maxtag <= 4 * static_cast<tagint>(nlocal) + 1024;
  if (dense) {
    tag_to_local.assign(maxtag + 1, -1);
    for (int i = 0; i < nlocal; ++i) tag_to_local[tag[i]] = i;
  } else {
    tag_to_local_sparse.clear();
    for (int i = 0; i < nlocal; ++i) tag_to_local_sparse[tag[i]] = i;
  }

  owner.resize(nall);
  for (int k = 0; k < nall; ++k) {
    int o = -1;
    if (dense) {
      if (tag[k] >= 0 && tag[k] <= maxtag) o = tag_to_local[tag[k]];
    } else {
      auto it = tag_to_local_sparse.find(tag[k]);
      if (it != tag_to_local_sparse.end()) o = it->second;
    }
    if (o < 0 && !many_ranks)
      error->one(FLERR, "pair_style ekd: atom ID {} of a ghost atom has no local owner on this rank",
                 tag[k]);
    owner[k] = o;
  }
  owner_built_at = neighbor->ncalls;
}

// one rank: nodes are the local atoms; an edge to a ghost uses its owner's node
void PairEKD::build_graph_one_rank()
{
  const int nlocal = atom->nlocal;

  double **x = atom->x;
  const int *type = atom->type;
  const double cutsq_model = cutoff * cutoff;
  const double minsq = min_distance * min_distance;

  n_nodes = nlocal;
  species.resize(nlocal);
  for (int i = 0; i < nlocal; ++i) species[i] = type_to_species[type[i]];

  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  for (int ii = 0; ii < inum; ++ii) {
    const int i = ilist[ii];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0];
      const double dy = x[j][1] - x[i][1];
      const double dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      if (rsq < minsq && !overlap_found) {
        overlap_found = true;
        overlap_tag_i = atom->tag[i];
        overlap_tag_j = atom->tag[j];
        overlap_dist = std::sqrt(rsq);
      }
      receivers.push_back(i);
      senders.push_back(owner[j]);
      edge_vec.push_back(dx);
      edge_vec.push_back(dy);
      edge_vec.push_back(dz);
      edge_i.push_back(i);
      edge_j.push_back(j);
    }
  }
}

// several ranks: nodes are the local atoms [0, nlocal) and the ghost atoms reached
// within num_interactions edges; atoms closer than num_interactions edges to a local
// atom are receivers (ghost neighbour lists), so every local energy is exact
void PairEKD::build_graph_many_ranks()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;
  const int *type = atom->type;
  const double cutsq_model = cutoff * cutoff;
  const double minsq = min_distance * min_distance;

  atom_node.assign(nall, -1);
  node_atom.clear();
  node_hop.clear();
  for (int i = 0; i < nlocal; ++i) {
    atom_node[i] = i;
    node_atom.push_back(i);
    node_hop.push_back(0);
  }
  // a periodic image of one of this rank's own atoms has that atom's features: it is the
  // same node (as on one rank), which saves evaluating the images as extra receivers
  for (int k = nlocal; k < nall; ++k)
    if (owner[k] >= 0) atom_node[k] = owner[k];

  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  // breadth-first: nodes are appended in order of graph distance from the local atoms
  for (size_t n = 0; n < node_atom.size(); ++n) {
    const int hop = node_hop[n];
    if (hop >= num_interactions) break;    // its features are never needed
    const int i = node_atom[n];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const double dx = x[j][0] - x[i][0];
      const double dy = x[j][1] - x[i][1];
      const double dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      if (rsq >= cutsq_model) continue;
      if (atom_node[j] < 0) {
        atom_node[j] = static_cast<int>(node_atom.size());
        node_atom.push_back(j);
        node_hop.push_back(hop + 1);
      }
      if (hop == 0 && rsq < minsq && !overlap_found) {
        overlap_found = true;
        overlap_tag_i = atom->tag[i];
        overlap_tag_j = atom->tag[j];
        overlap_dist = std::sqrt(rsq);
      }
      receivers.push_back(static_cast<int64_t>(n));
      senders.push_back(atom_node[j]);
      edge_vec.push_back(dx);
      edge_vec.push_back(dy);
      edge_vec.push_back(dz);
      edge_i.push_back(i);
      edge_j.push_back(j);
    }
  }

  n_nodes = static_cast<int>(node_atom.size());
  species.resize(n_nodes);
  for (int n = 0; n < n_nodes; ++n) species[n] = type_to_species[type[node_atom[n]]];
}

void PairEKD::warn_overlap()
{
  error->warning(FLERR,
                 "pair_style ekd: atoms {} and {} are {:.4f} A apart, closer than the shortest "
                 "distance in the training data ({} A, min_distance in {}): the model extrapolates "
                 "(printed once per run)",
                 overlap_tag_i, overlap_tag_j, overlap_dist, min_distance, model_file);
  overlap_warned = true;
}

/* ----------------------------------------------------------------------
   call_model: wrap the buffers (no copy on CPU/float64), one forward() call
------------------------------------------------------------------------- */

void PairEKD::call_model()
{
  const int64_t n_edges = static_cast<int64_t>(receivers.size());
  const int64_t n_node = static_cast<int64_t>(species.size());
  const auto long_opts = torch::TensorOptions().dtype(torch::kInt64);

  torch::Tensor t_vec;
  if (model_dtype == torch::kFloat64) {
    t_vec = torch::from_blob(edge_vec.data(), {n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  } else {
    edge_vec_f32.resize(edge_vec.size());
    std::copy(edge_vec.begin(), edge_vec.end(), edge_vec_f32.begin());
    t_vec = torch::from_blob(edge_vec_f32.data(), {n_edges, 3}, torch::TensorOptions().dtype(torch::kFloat32));
  }
  torch::Tensor t_recv = torch::from_blob(receivers.data(), {n_edges}, long_opts);
  torch::Tensor t_send = torch::from_blob(senders.data(), {n_edges}, long_opts);
  torch::Tensor t_species = torch::from_blob(species.data(), {n_node}, long_opts);
  if (!device.is_cpu()) {
    t_vec = t_vec.to(device);
    t_recv = t_recv.to(device);
    t_send = t_send.to(device);
    t_species = t_species.to(device);
  }

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
  const size_t n_edges = edge_i.size();
  for (size_t e = 0; e < n_edges; ++e) {
    const int i = edge_i[e];
    const int j = edge_j[e];
    const double gx = s * g[3 * e], gy = s * g[3 * e + 1], gz = s * g[3 * e + 2];
    f[i][0] += gx;
    f[i][1] += gy;
    f[i][2] += gz;
    f[j][0] -= gx;
    f[j][1] -= gy;
    f[j][2] -= gz;
    if (vflag_either) {
      const double rx = edge_vec[3 * e], ry = edge_vec[3 * e + 1], rz = edge_vec[3 * e + 2];
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
