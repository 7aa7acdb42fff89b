/* ----------------------------------------------------------------------
   ekd_graph.cpp — the model's graph of one step; see ekd_graph.h for which atoms are nodes.
------------------------------------------------------------------------- */

#include "ekd_graph.h"

#include "atom.h"
#include "error.h"
#include "neigh_list.h"
#include "neighbor.h"

#include <algorithm>
#include <cmath>

using namespace LAMMPS_NS;

namespace {

// edge(j, d, rsq) for every neighbour j of atom i closer than the cutoff, with the edge vector
// d = x(j) - x(i) and rsq = |d|^2
template <typename Edge>
void neighbours_within(double *const *x, const NeighList *list, int i, double cutsq, Edge &&edge)
{
  const int *jlist = list->firstneigh[i];
  const int jnum = list->numneigh[i];
  for (int jj = 0; jj < jnum; ++jj) {
    const int j = jlist[jj] & NEIGHMASK;
    const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
    const double rsq = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    if (rsq >= cutsq) continue;
    edge(j, d, rsq);
  }
}

}    // namespace

EKDGraph::EKDGraph(LAMMPS *lmp) :
    Pointers(lmp), n_nodes(0), overlap_found(false), overlap_tag_i(0), overlap_tag_j(0),
    overlap_dist(0.0), same_found(false), same_tag_i(0), same_tag_j(0), same_dist(0.0), cutsq(0.0),
    minsq(0.0), num_interactions(1), many_ranks(false), ghost_receivers(false), owner_built_at(-1)
{
  // a non-null data pointer even for zero edges, for torch::from_blob
  species.reserve(1024);
  receivers.reserve(16384);
  senders.reserve(16384);
  edge_vec.reserve(3 * 16384);
  edge_i.reserve(16384);
  edge_j.reserve(16384);
}

void EKDGraph::configure(double cutoff, double min_distance, int num_interactions,
                         const std::vector<int> &type_to_species, bool many_ranks, bool ghost_receivers)
{
  cutsq = cutoff * cutoff;
  minsq = min_distance * min_distance;
  this->num_interactions = num_interactions;
  this->type_to_species = type_to_species;
  this->many_ranks = many_ranks;
  this->ghost_receivers = ghost_receivers;
  owner_built_at = -1;    // atoms may have been created or deleted since the last run
}

void EKDGraph::build(NeighList *list)
{
  receivers.clear();
  senders.clear();
  edge_vec.clear();
  edge_i.clear();
  edge_j.clear();
  species.clear();
  overlap_found = same_found = false;
  // atoms are re-ordered (sorting, exchange) and ghosts re-created only when the
  // neighbour lists are rebuilt
  const int nall = atom->nlocal + atom->nghost;
  if (neighbor->ago == 0 || owner_built_at != neighbor->ncalls || static_cast<int>(owner.size()) != nall)
    build_owner_map();
  if (ghost_receivers)
    build_ghost_shell(list);
  else
    build_local_receivers(list);
}

// tag -> local index, then the owner of every local and ghost atom: on one rank every ghost
// is an image of a local atom; on several ranks ghosts owned elsewhere get -1
void EKDGraph::build_owner_map()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const tagint *tag = atom->tag;

  // a vector indexed by tag when the tags are dense enough, else a hash map
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

// receivers are the local atoms [0, nlocal); an edge to a ghost uses its owner's node when this
// rank owns it (always on one rank), else a node of its own after the local ones (exchange)
void EKDGraph::build_local_receivers(NeighList *list)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;

  n_nodes = nlocal;
  node_atom.resize(nlocal);
  for (int i = 0; i < nlocal; ++i) node_atom[i] = i;
  atom_node.assign(nall, -1);

  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    neighbours_within(x, list, i, cutsq, [&](int j, const double *d, double rsq) {
      note_overlap(i, j, rsq);
      int node = owner[j];
      if (node < 0) {    // another rank's atom: its features arrive by forward communication
        if (atom_node[j] < 0) {
          atom_node[j] = n_nodes++;
          node_atom.push_back(j);
        }
        node = atom_node[j];
      }
      add_edge(i, node, i, j, d);
    });
  }
  fill_species();
}

// several ranks, ghost-shell path: nodes are the local atoms [0, nlocal) and the ghost atoms reached
// within num_interactions edges; atoms closer than num_interactions edges to a local
// atom are receivers (ghost neighbour lists), so every local energy is exact
void EKDGraph::build_ghost_shell(NeighList *list)
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double **x = atom->x;

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

  // breadth-first: nodes are appended in order of graph distance from the local atoms
  for (size_t n = 0; n < node_atom.size(); ++n) {
    const int hop = node_hop[n];
    if (hop >= num_interactions) break;    // its features are never needed
    const int i = node_atom[n];
    neighbours_within(x, list, i, cutsq, [&](int j, const double *d, double rsq) {
      if (atom_node[j] < 0) {
        atom_node[j] = static_cast<int>(node_atom.size());
        node_atom.push_back(j);
        node_hop.push_back(hop + 1);
      }
      if (hop == 0) note_overlap(i, j, rsq);    // receivers that are local atoms, as on one rank
      add_edge(static_cast<int64_t>(n), atom_node[j], i, j, d);
    });
  }
  n_nodes = static_cast<int>(node_atom.size());
  fill_species();
}

// the first pair closer than min_distance is kept for the warning (printed once per run), the
// first pair at the same position for the error; every pair with a local atom passes here
void EKDGraph::note_overlap(int i, int j, double rsq)
{
  if (rsq < minsq && !overlap_found) {
    overlap_found = true;
    overlap_tag_i = atom->tag[i];
    overlap_tag_j = atom->tag[j];
    overlap_dist = std::sqrt(rsq);
  }
  if (rsq < SAME_POSITION * SAME_POSITION && !same_found) {
    same_found = true;
    same_tag_i = atom->tag[i];
    same_tag_j = atom->tag[j];
    same_dist = std::sqrt(rsq);
  }
}

// edge receiver <- sender (node indices) between atoms i and j, edge vector d = x(j) - x(i)
void EKDGraph::add_edge(int64_t receiver, int64_t sender, int i, int j, const double *d)
{
  receivers.push_back(receiver);
  senders.push_back(sender);
  edge_vec.push_back(d[0]);
  edge_vec.push_back(d[1]);
  edge_vec.push_back(d[2]);
  edge_i.push_back(i);
  edge_j.push_back(j);
}

void EKDGraph::fill_species()
{
  const int *type = atom->type;
  species.resize(n_nodes);
  for (int n = 0; n < n_nodes; ++n) species[n] = type_to_species[type[node_atom[n]]];
}
