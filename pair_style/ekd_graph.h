/* -*- c++ -*- ----------------------------------------------------------
   ekd_graph.h — the graph pair_style ekd hands to the model every step (export/CONTRACT.md
   §2 and §4): nodes, their species and the directed edges receiver <- sender with r < cutoff,
   built from LAMMPS's full neighbour list (one EKDGraph per model: the driving model's and a
   committee's, each with its own cutoff). PairEKD::init_style() fixes which nodes there are:

     one rank, several ranks with exchange, or a one-layer model (build_local_receivers):
         receivers are the local atoms [0, nlocal); a ghost that is an image of one of this
         rank's atoms uses that atom's node; another rank's atom gets a send-only node after them
     several ranks, ghost shell, more than one layer (build_ghost_shell):
         local atoms, then ghosts breadth-first up to num_interactions edges away; those fewer
         than num_interactions edges away are receivers too, so every local energy is exact
------------------------------------------------------------------------- */

#ifndef LMP_EKD_GRAPH_H
#define LMP_EKD_GRAPH_H

#include "pointers.h"

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace LAMMPS_NS {

class EKDGraph : protected Pointers {
 public:
  explicit EKDGraph(class LAMMPS *);

  // the settings of a run (from init_style()); the owner map is rebuilt at the next build()
  void configure(double cutoff, double min_distance, int num_interactions,
                 const std::vector<int> &type_to_species, bool many_ranks, bool ghost_receivers);
  // this step's graph; `list` is the full neighbour list (with ghost atoms' lists on the
  // ghost-shell path)
  void build(class NeighList *list);

  // --- the graph: buffers reused from step to step ---------------------------
  std::vector<int64_t> species;        // [N]
  std::vector<int64_t> receivers;      // [E] node index
  std::vector<int64_t> senders;        // [E] node index
  std::vector<double> edge_vec;        // [E*3] float64, x(sender image) - x(receiver)
  std::vector<int> edge_i;             // [E] LAMMPS index of the receiver atom
  std::vector<int> edge_j;             // [E] LAMMPS index of the sender atom (maybe a ghost)
  std::vector<int> node_atom;          // node -> LAMMPS index (local nodes: the atom itself)
  int n_nodes;

  // the first pair of this step closer than min_distance (for the overlap warning)
  bool overlap_found;
  tagint overlap_tag_i, overlap_tag_j;
  double overlap_dist;
  // the first pair of this step closer than SAME_POSITION (an error: the model's energy is NaN there)
  static constexpr double SAME_POSITION = 1e-4;    // Angstrom; the Python reader uses the same
  bool same_found;
  tagint same_tag_i, same_tag_j;
  double same_dist;

 private:
  void build_owner_map();
  void build_local_receivers(class NeighList *list);
  void build_ghost_shell(class NeighList *list);
  void note_overlap(int i, int j, double rsq);
  void add_edge(int64_t receiver, int64_t sender, int i, int j, const double *d);
  void fill_species();

  // --- settings of the run ----------------------------------------------------
  double cutsq;                        // model cutoff squared, Angstrom^2
  double minsq;                        // min_distance squared (0 = no check)
  int num_interactions;
  std::vector<int> type_to_species;    // LAMMPS type (1..ntypes) -> model species index
  bool many_ranks;                     // ghosts may be owned by another rank
  bool ghost_receivers;                // ghost-shell path with more than one layer

  std::vector<int> node_hop;           // ghost-shell path: graph distance from a local atom
  std::vector<int> atom_node;          // LAMMPS index -> node or -1 (exchange: other ranks' atoms only)

  // owner (local index) of every local and ghost atom (-1: owned by another rank), rebuilt on
  // reneighbouring steps from a tag -> local index map
  std::vector<int> owner;
  std::vector<int> tag_to_local;
  std::unordered_map<tagint, int> tag_to_local_sparse;
  bigint owner_built_at;               // neighbor->ncalls when owner was built
};

}    // namespace LAMMPS_NS

#endif
