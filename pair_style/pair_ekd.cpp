/* ----------------------------------------------------------------------
   pair_style ekd — see pair_ekd.h for the steps and export/CONTRACT.md for the
   contract with the exported TorchScript file.
------------------------------------------------------------------------- */

#include "pair_ekd.h"

#include "ekd_text.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

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
using ekd::first_line;
using ekd::join;
using ekd::shape_of;

namespace {
constexpr double KCAL_PER_MOL_PER_EV = 23.060547830619;    // units real: energies in kcal/mol
}    // namespace

/* ---------------------------------------------------------------------- */

PairEKD::PairEKD(LAMMPS *lmp) :
    Pair(lmp), committee_every(1), device_request("cpu"), device(torch::kCPU), unit_factor(1.0),
    exchange_allowed(true), jit_optimize(false), model(lmp), committee(lmp), many_ranks(false),
    exchange(false), ghost_receivers(false), committee_ghost_receivers(false), comm_width(0),
    graph(lmp), committee_graph(lmp), model_energy(0.0), uncertainty_source(Uncertainty::NONE),
    uncertainty_trigger(0), trigger_asked(false), values_asked(false), committee_step(-1),
    uncertainty_max(0.0), uncertainty_mean(0.0), overlap_warned(false), exchange_message_printed(false)
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
  release_uncertainty_store();
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
   settings: pair_style ekd FILE [committee FILE2] [every N] [device cpu|cuda|auto]
                                 [heap keep|system] [exchange yes|no] [blocks auto|yes|no]
------------------------------------------------------------------------- */

void PairEKD::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style ekd command: expected 'pair_style ekd FILE [committee FILE2] "
               "[every N] [device cpu|cuda|auto] [heap keep|system] [exchange yes|no] [blocks auto|yes|no]'");
  model_file = arg[0];
  committee_file.clear();
  committee_every = 1;
  bool every_given = false;
  device_request = "cpu";
  exchange_allowed = true;
  blocks_request = "auto";
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
    } else if (key == "blocks") {
      if (iarg + 1 >= narg || (std::string(arg[iarg + 1]) != "auto" && std::string(arg[iarg + 1]) != "yes" &&
                               std::string(arg[iarg + 1]) != "no"))
        error->all(FLERR, "pair_style ekd: keyword 'blocks' needs a value: auto (the file's choice), yes or no");
      blocks_request = arg[iarg + 1];
      iarg += 2;
    } else if (key == "committee") {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style ekd: keyword 'committee' needs a file: committee ENSEMBLE.pt [every N]");
      committee_file = arg[iarg + 1];
      iarg += 2;
    } else if (key == "every") {
      if (iarg + 1 >= narg)
        error->all(FLERR, "pair_style ekd: keyword 'every' needs a number of steps: every N");
      committee_every = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (committee_every < 1)
        error->all(FLERR, "pair_style ekd: 'every {}': the committee runs every N steps, N must be a positive "
                   "integer", arg[iarg + 1]);
      every_given = true;
      iarg += 2;
    } else {
      error->all(FLERR, "pair_style ekd: unknown keyword '{}' (known keywords: committee, every, device, heap, "
                 "exchange, blocks)", key);
    }
  }
  if (every_given && committee_file.empty())
    error->all(FLERR, "pair_style ekd: keyword 'every' sets how often the committee runs; it needs "
               "'committee ENSEMBLE.pt'");
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

  // TorchScript's profiling executor re-specialises on tensor shapes, which change every
  // MD step (the number of edges). Measured here (torch 2.13 CPU, 1 thread, 1536 atoms,
  // ~49,500 edges, 2-layer and 1-layer message-passing toys, 200 MD steps, two repeats):
  // model call 16.3-17.5 ms/step with the optimiser off vs 22.3-22.8 ms on (1 layer) and
  // 24.4-24.9 vs 33.6-35.9 ms (2 layers); an exported HIP-NN (128 features, 2
  // interactions, cutoff 6.5 A, ~215,000 edges): 3.1 vs 3.5-3.9 s/step and 1.19 vs
  // 1.28-1.33 GB. So it is off, for the model calls only (GraphOptimizerEnabledGuard);
  // EKD_JIT_OPTIMIZE=1 turns it on to re-measure.
  jit_optimize = false;
  if (const char *env = std::getenv("EKD_JIT_OPTIMIZE")) jit_optimize = std::atoi(env) != 0;

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

  model.load(model_file, device);
  if (!model.use_blocks(blocks_request))
    error->all(FLERR, "pair_style ekd: 'blocks yes' but {} cannot be evaluated in blocks: it has no "
               "layer_values() and layer_gradients() (a model with one layer, an ensemble, or a file exported "
               "before 2026-12; re-export it with python -m ekd.export)", model_file);
  if (model.has_blocks && comm->me == 0)
    utils::logmesg(lmp, "ekd: {}\n", model.whole_edges == 0 ? fmt::format("layers run in blocks of about {} edges",
                                                                          model.block_edges)
                   : model.whole_edges == INT64_MAX ? std::string("layers run on the whole graph (blocks no)")
                   : fmt::format("graphs of more than {} edges per rank run in blocks of about {} edges "
                                 "(less memory, more time; keyword blocks)", model.whole_edges, model.block_edges));
  type_to_species.assign(ntypes + 1, -1);
  for (int t = 1; t <= ntypes; ++t) {
    type_to_species[t] = model.species_of(arg[t + 1]);
    if (type_to_species[t] < 0)
      error->all(FLERR, "pair_style ekd: element {} not found in model {}; the model knows: {}", arg[t + 1],
                 model_file, join(model.elements));
  }
  if (!committee_file.empty()) {
    load_committee();
    type_to_committee.assign(ntypes + 1, -1);
    for (int t = 1; t <= ntypes; ++t) type_to_committee[t] = committee.species_of(arg[t + 1]);
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;

  if (comm->me == 0) {
    std::string map;
    for (int t = 1; t <= ntypes; ++t) map += fmt::format(" {}->{}", t, arg[t + 1]);
    utils::logmesg(lmp, "ekd: atom type -> element:{}\n", map);
  }
}

// the committee: an ensemble of at least two members that knows the model's elements (in any
// order); its cutoff and depth may differ (the neighbour list and ghost shell then cover the larger)
void PairEKD::load_committee()
{
  committee.load(committee_file, device);
  if (!committee.is_committee())
    error->all(FLERR,
               "pair_style ekd: committee file {} is a {} model with {} member(s){}; a committee is an "
               "ensemble file of at least 2 members (python -m ekd.export RUN --model ensemble -o committee.pt)",
               committee_file, committee.model_kind, committee.members,
               committee.module.find_method("members") ? "" : " and no members() method");
  std::vector<std::string> mine = model.elements, theirs = committee.elements;
  std::sort(mine.begin(), mine.end());
  std::sort(theirs.begin(), theirs.end());
  if (mine != theirs)
    error->all(FLERR, "pair_style ekd: committee {} knows the elements {} but the model {} knows {}; "
               "both files must know the same elements (in any order)", committee_file,
               join(committee.elements), model_file, join(model.elements));
}

/* ----------------------------------------------------------------------
   init_style: checks, uncertainty source, neighbour request, ghost cutoff
------------------------------------------------------------------------- */

void PairEKD::init_style()
{
  if (!model.loaded) error->all(FLERR, "pair_style ekd: pair_coeff * * El1 El2 ... was not given");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style ekd requires 'newton on' (newton_pair on): forces on ghost atoms are "
               "sent back to their owners by reverse communication");
  if (atom->tag_enable == 0) error->all(FLERR, "pair_style ekd requires atom IDs (atom_modify id yes)");

  many_ranks = comm->nprocs > 1;
  // several ranks: a model with layer() is evaluated layer by layer, its features exchanged
  // between ranks, with ghosts one cutoff deep; `exchange no` selects the ghost-shell path
  // below instead (every model can take it; it recomputes the layers for a deep ghost shell)
  exchange = many_ranks && !model.exchange_widths.empty() && exchange_allowed;
  ghost_receivers = many_ranks && model.num_interactions > 1 && !exchange;
  init_uncertainty();    // only when something asked for the uncertainty: the committee's needs
  committee_ghost_receivers = uncertainty_source == Uncertainty::COMMITTEE && many_ranks &&
      committee.num_interactions > 1;

  // one rank (and exchange): full list, ghosts mapped to their owners where this rank owns
  // them; ghost-shell path with >1 layer: ghosts are receivers too, so they need neighbour lists
  const bool need_ghost_lists = ghost_receivers || committee_ghost_receivers;
  ghostneigh = need_ghost_lists ? 1 : 0;
  int flags = NeighConst::REQ_FULL;
  if (need_ghost_lists) flags |= NeighConst::REQ_GHOST;
  neighbor->add_request(this, flags);

  if (need_ghost_lists) {
    if (comm->mode != Comm::SINGLE)
      error->all(FLERR, "pair_style ekd on several MPI ranks requires 'comm_modify mode single'");
    // nodes up to num_interactions edges away from a local atom must be ghosts here
    const double field = std::max(ghost_receivers ? model.receptive_field : 0.0,
                                  committee_ghost_receivers ? committee.receptive_field : 0.0);
    const double wanted = field + neighbor->skin;
    if (comm->cutghostuser < wanted) {
      comm->cutghostuser = wanted;
      std::string whose = ghost_receivers ? "model " + model_file : "";
      if (committee_ghost_receivers) whose += (whose.empty() ? "committee " : " and committee ") + committee_file;
      if (comm->me == 0)    // once: the ghost cutoff stays raised for later runs
        utils::logmesg(lmp,
                       "ekd: ghost cutoff set to {:.4f} A (receptive field {} A of the {} + skin {} A) so "
                       "every local energy is exact on {} ranks\n",
                       wanted, field, whose, neighbor->skin, comm->nprocs);
    }
  }
  if (exchange && comm->me == 0 && !exchange_message_printed) {
    utils::logmesg(lmp, "ekd: {} ranks exchange the features of {} layer(s) (ghost cutoff: one model "
                   "cutoff + skin)\n", comm->nprocs, model.exchange_widths.size());
    if (!model.has_layer_apart)    // CONTRACT.md §2b: files exported before 2026-12-02
      utils::logmesg(lmp, "ekd: {} has no edge_features_apart(): its layers split one edge table on every "
                     "step (about 1.2x slower on two ranks); re-export it with python -m ekd.export\n", model_file);
    exchange_message_printed = true;
  }

  // widest per-atom row sent between ranks: exchanged features, or 3 force components per member
  comm_forward = comm_reverse = 0;
  for (int width : model.exchange_widths) comm_forward = comm_reverse = std::max(comm_forward, width);
  if (uncertainty_source == Uncertainty::COMMITTEE) comm_reverse = std::max(comm_reverse, 3 * committee.members);
  if (uncertainty_source == Uncertainty::ENSEMBLE) comm_reverse = std::max(comm_reverse, 3 * model.members);

  overlap_warned = false;    // the overlap warning is printed once per run
  graph.configure(model.cutoff, model.min_distance, model.num_interactions, type_to_species, many_ranks,
                  ghost_receivers);
  if (uncertainty_source == Uncertainty::COMMITTEE)
    committee_graph.configure(committee.cutoff, 0.0, committee.num_interactions, type_to_committee, many_ranks,
                              committee_ghost_receivers);
}

// the neighbour list covers the committee's cutoff too when the committee is in use
double PairEKD::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  double cut = model.cutoff;
  if (uncertainty_source == Uncertainty::COMMITTEE) cut = std::max(cut, committee.cutoff);
  cutghost[i][j] = cutghost[j][i] = cut;    // neighbour lists of ghost receivers
  return cut;
}

/* ----------------------------------------------------------------------
   compute: graph.build -> call_model (or, with exchange, call_layers / call_layers_in_blocks)
            -> write_back [-> compute_uncertainty]
------------------------------------------------------------------------- */

void PairEKD::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  const bool uncertain = uncertainty_now();
  const bool own = uncertain && uncertainty_source == Uncertainty::OWN;
  graph.build(list);
  check_positions();
  if (exchange) {
    if (atom->nlocal == 0)
      exchange_idle();    // nothing owned, but the neighbours' exchanges need this rank
    else if (model.in_blocks(graph.receivers.size()))
      call_layers_in_blocks(own);
    else
      call_layers(own);
    write_back();
  } else if (atom->nlocal > 0) {    // nothing owned: no energy, no forces
    call_model(own);
    write_back();
  }
  if (uncertain) compute_uncertainty();    // collective: every rank, owning atoms or not
}

// two atoms at the same position make the model's energy NaN: stop, naming them; closer than the
// training data: warn once per run
void PairEKD::check_positions()
{
  if (graph.same_found)
    error->one(FLERR,
               "pair_style ekd: atoms {} and {} are {:.3g} A apart, closer than {} A: two atoms at (nearly) "
               "the same position, where the model's energy and forces are undefined (check the data "
               "file, or the steps before: lost atoms, too long a timestep)",
               graph.same_tag_i, graph.same_tag_j, graph.same_dist, EKDGraph::SAME_POSITION);
  if (graph.overlap_found && !overlap_warned) warn_overlap();
}

void PairEKD::warn_overlap()
{
  error->warning(FLERR,
                 "pair_style ekd: atoms {} and {} are {:.4f} A apart, closer than the shortest "
                 "distance in the training data ({} A, min_distance in {}): the model extrapolates "
                 "(printed once per run)",
                 graph.overlap_tag_i, graph.overlap_tag_j, graph.overlap_dist, model.min_distance, model_file);
  overlap_warned = true;
}

/* ----------------------------------------------------------------------
   call_model: wrap the buffers (no copy on CPU/float64), one forward() call; on the steps the
   model's own uncertainty is requested, forward_with_uncertainty() instead (same outputs + one)
------------------------------------------------------------------------- */

void PairEKD::call_model(bool with_uncertainty)
{
  const int64_t n_edges = static_cast<int64_t>(graph.receivers.size());
  const int64_t n_node = static_cast<int64_t>(graph.species.size());
  const int64_t nlocal = atom->nlocal;
  torch::Tensor t_vec, t_recv, t_send, t_species;
  model.inputs(graph, t_vec, t_recv, t_send, t_species);

  inputs.clear();
  inputs.emplace_back(t_vec);
  inputs.emplace_back(t_recv);
  inputs.emplace_back(t_send);
  inputs.emplace_back(t_species);
  inputs.emplace_back(nlocal);

  c10::IValue result;
  try {
    torch::AutoGradMode grad_on(true);    // the model differentiates inside forward()
    torch::jit::GraphOptimizerEnabledGuard optimize(jit_optimize);
    result = with_uncertainty ? model.module.get_method("forward_with_uncertainty")(inputs)
                              : model.module.forward(inputs);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style ekd: the model {} failed on {} nodes and {} edges (model dtype {}): {}",
               model_file, n_node, n_edges, model.dtype_name, first_line(e.what()));
  }

  const size_t n_out = with_uncertainty ? 4 : 3;
  if (!result.isTuple() || result.toTupleRef().elements().size() != n_out)
    error->one(FLERR, "pair_style ekd: the model {} must return (energy, atom_energy, edge_grad{}) from {}",
               model_file, with_uncertainty ? ", atom_uncertainty" : "",
               with_uncertainty ? "forward_with_uncertainty()" : "forward()");
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
  if (with_uncertainty) {
    torch::Tensor u = out[3].toTensor();
    if (u.dim() != 1 || u.size(0) != nlocal)
      error->one(FLERR, "pair_style ekd: forward_with_uncertainty() of {} returned atom_uncertainty {}; "
                 "expected [{}] (one value per local atom)", model_file, shape_of(u), nlocal);
    own_uncertainty = u.to(torch::kCPU, torch::kFloat64).contiguous();
  }

  model_energy = energy.to(torch::kCPU, torch::kFloat64).item<double>();
  atom_energy_out = atom_energy.to(torch::kCPU, torch::kFloat64).contiguous();
  edge_grad_out = edge_grad.to(torch::kCPU).contiguous();    // model dtype: write_back reads either
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

  // the edge gradients in the model's dtype: a float64 copy would take 24 bytes per edge more
  const bool single = edge_grad_out.scalar_type() == torch::kFloat32;
  const float *g32 = single ? edge_grad_out.data_ptr<float>() : nullptr;
  const double *g64 = single ? nullptr : edge_grad_out.data_ptr<double>();
  const size_t n_edges = graph.edge_i.size();
  double total = model_energy;    // NaN or infinity anywhere makes it non-finite
  for (size_t e = 0; e < n_edges; ++e) {
    const int i = graph.edge_i[e];
    const int j = graph.edge_j[e];
    const double gx = s * (single ? g32[3 * e] : g64[3 * e]), gy = s * (single ? g32[3 * e + 1] : g64[3 * e + 1]),
                 gz = s * (single ? g32[3 * e + 2] : g64[3 * e + 2]);
    total += gx + gy + gz;
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
  if (!std::isfinite(total))    // damaged weights, or dynamics far outside the training data
    error->one(FLERR, "pair_style ekd: the model {} gave a non-finite energy or forces at step {} (damaged "
               "weights, or a structure far outside its training data)", model_file, update->ntimestep);
}
