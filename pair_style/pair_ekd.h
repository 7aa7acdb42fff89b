/* -*- c++ -*- ----------------------------------------------------------
   pair_style ekd — runs an exported ekd potential (TorchScript + ekd.json metadata)
   inside LAMMPS. The C++ side of export/CONTRACT.md.

   Steps, one member function each:
     settings()    pair_style ekd FILE [committee FILE2] [every N] [device ..] [heap ..] [exchange ..]
     coeff()       pair_coeff * * El1 El2 ...: load the model(s) (EKDModel, ekd_model.cpp), type map
     init_style()  checks (newton, IDs), exchange or ghost shell, uncertainty source, neighbour
                   request, ghost cutoff
     graph.build() nodes, species, directed edges within the cutoff (EKDGraph, ekd_graph.cpp)
     call_model()  one TorchScript call: energy, atom_energy, edge_grad (and the model's own
                   uncertainty on the steps it is requested)
     call_layers() several ranks, models with layer(): the layers one by one, their features
                   exchanged between ranks (forward comm), then their gradients (reverse comm)
     write_back()  energies, forces on receivers and senders, global and per-atom virial
     compute_uncertainty()  on the steps fix pair asks for it: the per-atom uncertainty
                   (pair_ekd_uncertainty.cpp)
------------------------------------------------------------------------- */

#ifndef LMP_PAIR_EKD_H
#define LMP_PAIR_EKD_H

#include "pair.h"

#include "ekd_graph.h"
#include "ekd_model.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairEKD : public Pair {
 public:
  PairEKD(class LAMMPS *);
  ~PairEKD() override;

  void compute(int eflag, int vflag) override;
  void settings(int narg, char **arg) override;
  void coeff(int narg, char **arg) override;
  void init_style() override;
  double init_one(int i, int j) override;

  // per-atom rows: layer features (forward), their gradients and member forces (reverse)
  int pack_forward_comm(int n, int *list, double *buf, int pbc_flag, int *pbc) override;
  void unpack_forward_comm(int n, int first, double *buf) override;
  int pack_reverse_comm(int n, int first, double *buf) override;
  void unpack_reverse_comm(int n, int *list, double *buf) override;

  // the per-atom uncertainty for fix pair (pair_ekd_uncertainty.cpp): "uncertainty" (per atom),
  // "uncertainty_flag" (fix pair's trigger), "uncertainty_max" and "uncertainty_mean" (global)
  void *extract(const char *name, int &dim) override;
  void *extract_peratom(const char *name, int &ncol) override;

 protected:
  enum class Uncertainty { NONE, COMMITTEE, ENSEMBLE, OWN };

  void allocate();
  void select_device();
  void keep_tensor_memory();
  void load_committee();
  void check_positions();
  void call_model(bool with_uncertainty);
  // pair_ekd_layers.cpp: several ranks, a layered file
  void call_layers(bool with_uncertainty);
  void call_layers_in_blocks(bool with_uncertainty);
  std::vector<torch::Tensor> edge_tables(const torch::Tensor &vec);
  torch::Tensor edge_gradient(const torch::Tensor &vec, const std::vector<torch::Tensor> &tables,
                              const std::vector<torch::Tensor> &table_grad);
  torch::Tensor layer_uncertainty(const torch::Tensor &z_last);
  void exchange_idle();
  torch::Tensor exchange_features(const torch::Tensor &z_local);
  torch::Tensor exchange_gradients(const torch::Tensor &dz);
  void write_back();
  void warn_overlap();

  // pair_ekd_uncertainty.cpp
  void init_uncertainty();
  bool uncertainty_now() const;
  void compute_uncertainty();
  void member_deviation(EKDModel &ensemble, EKDGraph &on);
  void add_member_forces(EKDModel &ensemble, EKDGraph &on);
  void store_own_uncertainty();
  void reduce_uncertainty();
  double *uncertainty_values();
  void release_uncertainty_store();

  // --- settings -----------------------------------------------------------
  std::string model_file;
  std::string committee_file;      // `committee FILE`: "" = none
  int committee_every;             // `every N`: the committee runs on requested steps that are multiples of N
  std::string device_request;      // "cpu", "cuda" or "auto"
  torch::Device device;            // resolved device
  double unit_factor;              // model eV -> deck energy unit (1 for metal)
  bool exchange_allowed;           // `exchange yes` (default): see init_style()
  std::string blocks_request;      // `blocks auto|yes|no`: large graphs in blocks (EKDModel::use_blocks)
  bool jit_optimize;               // see the comment in call_model()

  // --- the models ------------------------------------------------------------
  EKDModel model;                      // drives the dynamics
  EKDModel committee;                  // `committee FILE`: gives the uncertainty
  std::vector<int> type_to_species;    // LAMMPS type (1..ntypes) -> model species index
  std::vector<int> type_to_committee;  // LAMMPS type (1..ntypes) -> committee species index

  // --- decomposition -------------------------------------------------------
  bool many_ranks;                 // comm->nprocs > 1: nodes are local + ghost atoms
  bool exchange;                   // many_ranks, layer by layer with features exchanged
  bool ghost_receivers;            // many_ranks && num_interactions > 1 && !exchange
  bool committee_ghost_receivers;  // the same for the committee graph (always a ghost shell)

  // --- per-atom rows for forward/reverse communication: comm_width values per atom ----------
  std::vector<double> comm_rows;
  int comm_width;

  // --- the graphs of the step (buffers reused from step to step) ---------------
  EKDGraph graph;                  // the driving model's
  EKDGraph committee_graph;        // the committee's, built on the steps it runs

  // --- model outputs (CPU; float64 but for edge_grad_out) -------------------
  double model_energy;
  torch::Tensor atom_energy_out;   // [N]
  torch::Tensor edge_grad_out;     // [E,3] in the model's dtype
  torch::Tensor own_uncertainty;   // [nlocal] the model's own uncertainty (eV/A) on requested steps
  std::vector<torch::jit::IValue> inputs;

  // --- the per-atom uncertainty (pair_ekd_uncertainty.cpp) -------------------
  Uncertainty uncertainty_source;  // chosen in init_style() when something asked for it
  int uncertainty_trigger;         // fix pair sets it to 1 on the steps it stores the uncertainty
  bool trigger_asked;              // extract("uncertainty_flag") was called (fix pair ... uncertainty 1)
  bool values_asked;               // extract_peratom("uncertainty") was called (fix pair, any flag)
  bigint committee_step;           // the last step the committee ran (-1: never)
  double uncertainty_max;          // over all atoms, deck force units, of the last computed values
  double uncertainty_mean;

  // --- messages ------------------------------------------------------------
  bool overlap_warned;
  bool exchange_message_printed;
};

}    // namespace LAMMPS_NS

#endif
