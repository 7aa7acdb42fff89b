/* ----------------------------------------------------------------------
   pair_ekd_uncertainty.cpp — the per-atom uncertainty of pair_style ekd, for `fix pair`.

   How fix pair asks (LAMMPS src/fix_pair.cpp, `fix ID group pair N ekd uncertainty 1`):
     - when the fix is created: extract_peratom("uncertainty", ncol) gives ncol = 0 (one value per
       atom); with flag 1 also extract("uncertainty_flag", dim): a pointer to an int, dim = 0;
     - pre_force (and setup_pre_force) on steps that are multiples of N: sets that int to 1;
     - post_force on those steps: copies extract_peratom("uncertainty")[0, nlocal) into its own
       per-atom vector, then sets the int back to 0.
   So compute() sees the trigger set exactly on the steps fix pair stores the values, and computes
   them only then. With flag 0 there is no trigger: they are computed on every step.

   The source, in this order: `committee FILE` (its members' force deviation, on requested steps
   that are multiples of `every N`; in between the last value stands), the model file itself if it
   is an ensemble (its members' deviation), the model's own head (forward_with_uncertainty).
   The values live in a per-atom vector of LAMMPS (fix property/atom d_ekd_uncertainty, made here
   the first time they are asked for), so they move with their atoms between ranks and keep the
   committee's last value between its steps.
------------------------------------------------------------------------- */

#include "pair_ekd.h"

#include "ekd_text.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "modify.h"
#include "update.h"
#include "utils.h"

#include <torch/csrc/jit/runtime/graph_executor.h>

#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;
using ekd::first_line;
using ekd::shape_of;

namespace {
const char *const STORE_FIX = "EKD_UNCERTAINTY";     // the fix property/atom holding the values
const char *const STORE_NAME = "ekd_uncertainty";    // its per-atom vector, d_ekd_uncertainty
}    // namespace

void *PairEKD::extract(const char *name, int &dim)
{
  dim = 0;
  if (strcmp(name, "uncertainty_flag") == 0) {
    trigger_asked = true;
    return &uncertainty_trigger;
  }
  if (strcmp(name, "uncertainty_max") == 0) return &uncertainty_max;
  if (strcmp(name, "uncertainty_mean") == 0) return &uncertainty_mean;
  return nullptr;
}

void *PairEKD::extract_peratom(const char *name, int &ncol)
{
  if (strcmp(name, "uncertainty") != 0) return nullptr;
  ncol = 0;
  values_asked = true;
  return uncertainty_values();    // nullptr before the first run made the vector: fix pair allows it
}

double *PairEKD::uncertainty_values()
{
  int flag = 0, cols = 0;
  const int index = atom->find_custom(STORE_NAME, flag, cols);
  return index < 0 ? nullptr : atom->dvector[index];
}

void PairEKD::release_uncertainty_store()
{
  if (modify && modify->get_fix_by_id(STORE_FIX)) modify->delete_fix(STORE_FIX);
}

// init_style(): choose the source once something asked for the uncertainty; nothing is loaded,
// raised or allocated for it otherwise
void PairEKD::init_uncertainty()
{
  uncertainty_source = Uncertainty::NONE;
  if (!trigger_asked && !values_asked) return;

  std::string from;
  if (!committee_file.empty()) {
    uncertainty_source = Uncertainty::COMMITTEE;
    from = fmt::format("the force deviation of the {} members of the committee {}, on requested steps that are "
                       "multiples of {} (the last value stands in between)", committee.members, committee_file,
                       committee_every);
  } else if (model.is_committee()) {
    uncertainty_source = Uncertainty::ENSEMBLE;
    from = fmt::format("the force deviation of the {} members of {}", model.members, model_file);
  } else if (model.atom_uncertainty) {
    uncertainty_source = Uncertainty::OWN;
    from = fmt::format("the uncertainty head of {} (forward_with_uncertainty)", model_file);
  } else {
    error->all(FLERR,
               "pair_style ekd: the per-atom uncertainty was requested (fix pair ... uncertainty) but {} has "
               "none: it is a single {} model without an uncertainty head (no atom_uncertainty in ekd.json). "
               "Add 'committee ENSEMBLE.pt every N' to pair_style ekd (python -m ekd.export RUN --model ensemble), "
               "drive the dynamics with an ensemble file, or export a student trained with an uncertainty "
               "head",
               model_file, model.model_kind);
  }
  // writedata no: a data file written later stays readable by decks without this pair style
  if (!modify->get_fix_by_id(STORE_FIX))
    modify->add_fix(fmt::format("{} all property/atom d_{} writedata no", STORE_FIX, STORE_NAME));
  if (comm->me == 0)
    utils::logmesg(lmp, "ekd: per-atom uncertainty ({}) from {}; computed {}\n",
                   unit_factor == 1.0 ? "eV/A" : "kcal/mol/A", from,
                   trigger_asked ? "on the steps fix pair stores it" : "on every step (fix pair flag 0)");
}

bool PairEKD::uncertainty_now() const
{
  if (uncertainty_source == Uncertainty::NONE) return false;
  return uncertainty_trigger != 0 || !trigger_asked;
}

// after write_back() on requested steps; collective (reverse communication, reductions)
void PairEKD::compute_uncertainty()
{
  switch (uncertainty_source) {
    case Uncertainty::COMMITTEE:
      if (committee_step >= 0 && update->ntimestep % committee_every != 0) return;    // last value stands
      committee_graph.build(list);
      member_deviation(committee, committee_graph);
      committee_step = update->ntimestep;
      break;
    case Uncertainty::ENSEMBLE:
      member_deviation(model, graph);
      break;
    case Uncertainty::OWN:
      store_own_uncertainty();
      break;
    case Uncertainty::NONE:
      return;
  }
  reduce_uncertainty();
}

// sqrt(mean_k |F_k - mean F|^2) of the members' forces on each owned atom. A rank's members() call
// gives each member's d(energy of its local atoms)/d(edge vector); the forces this puts on ghost
// atoms are added on their owners by reverse communication, so every owned atom's M forces are
// complete (a rank that owns nothing takes part in the communication only)
void PairEKD::member_deviation(EKDModel &ensemble, EKDGraph &on)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int m = ensemble.members;
  comm_width = 3 * m;
  comm_rows.assign(static_cast<size_t>(nall) * comm_width, 0.0);
  if (nlocal > 0) add_member_forces(ensemble, on);
  comm->reverse_comm(this);

  double *u = uncertainty_values();
  for (int i = 0; i < nlocal; ++i) {
    const double *f = &comm_rows[static_cast<size_t>(i) * comm_width];
    double mean[3] = {0.0, 0.0, 0.0};
    for (int k = 0; k < m; ++k)
      for (int c = 0; c < 3; ++c) mean[c] += f[3 * k + c] / m;
    double sq = 0.0;
    for (int k = 0; k < m; ++k)
      for (int c = 0; c < 3; ++c) sq += (f[3 * k + c] - mean[c]) * (f[3 * k + c] - mean[c]);
    u[i] = unit_factor * std::sqrt(sq / m);
  }
}

// one members() call on the graph `on`; each member's forces (eV/A) into comm_rows, 3 columns per
// member, on receiver and sender atoms (ghosts included): F_i += g, F_j -= g (CONTRACT.md §2)
void PairEKD::add_member_forces(EKDModel &ensemble, EKDGraph &on)
{
  const int64_t n_edges = static_cast<int64_t>(on.receivers.size());
  const int m = ensemble.members;
  torch::Tensor t_vec, t_recv, t_send, t_species;
  ensemble.inputs(on, t_vec, t_recv, t_send, t_species);
  torch::Tensor grads;
  try {
    torch::AutoGradMode grad_on(true);    // members() differentiates inside
    torch::jit::GraphOptimizerEnabledGuard optimize(jit_optimize);
    c10::IValue result = ensemble.module.get_method("members")(
        {t_vec, t_recv, t_send, t_species, static_cast<int64_t>(atom->nlocal)});
    grads = result.toTupleRef().elements()[1].toTensor();
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style ekd: members() of the ensemble {} failed on {} nodes and {} edges: {}",
               ensemble.path, on.species.size(), n_edges, first_line(e.what()));
  }
  if (grads.dim() != 3 || grads.size(0) != m || grads.size(1) != n_edges || grads.size(2) != 3)
    error->one(FLERR, "pair_style ekd: members() of {} returned edge gradients {}; expected [{}, {}, 3] "
               "({} members in ekd.json)", ensemble.path, shape_of(grads), m, n_edges, m);
  grads = grads.to(torch::kCPU, torch::kFloat64).contiguous();

  const double *g = grads.data_ptr<double>();
  for (int64_t e = 0; e < n_edges; ++e) {
    double *fi = &comm_rows[static_cast<size_t>(on.edge_i[e]) * comm_width];
    double *fj = &comm_rows[static_cast<size_t>(on.edge_j[e]) * comm_width];
    for (int k = 0; k < m; ++k)
      for (int c = 0; c < 3; ++c) {
        const double gk = g[(k * n_edges + e) * 3 + c];
        fi[3 * k + c] += gk;
        fj[3 * k + c] -= gk;
      }
  }
}

// the model's own head, from this step's forward_with_uncertainty() or atom_uncertainty() call
void PairEKD::store_own_uncertainty()
{
  const int nlocal = atom->nlocal;
  if (nlocal == 0) return;
  double *u = uncertainty_values();
  const double *own = own_uncertainty.data_ptr<double>();
  for (int i = 0; i < nlocal; ++i) u[i] = unit_factor * own[i];
}

// largest and mean value over all atoms, for extract("uncertainty_max" / "uncertainty_mean")
void PairEKD::reduce_uncertainty()
{
  const int nlocal = atom->nlocal;
  const double *u = uncertainty_values();
  double local_max = 0.0, local_sum = 0.0, sum = 0.0;
  for (int i = 0; i < nlocal; ++i) {
    local_max = std::max(local_max, u[i]);
    local_sum += u[i];
  }
  MPI_Allreduce(&local_max, &uncertainty_max, 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(&local_sum, &sum, 1, MPI_DOUBLE, MPI_SUM, world);
  uncertainty_mean = atom->natoms > 0 ? sum / static_cast<double>(atom->natoms) : 0.0;
}
