/* -*- c++ -*- ----------------------------------------------------------
   pair_style ekd — runs an exported ekd potential (TorchScript + ekd.json metadata)
   inside LAMMPS. The C++ side of export/CONTRACT.md.

   Steps, one member function each:
     settings()    pair_style ekd FILE [device ..] [heap ..] [exchange ..]: file, device, units
     coeff()       pair_coeff * * El1 El2 ...: load the model, read metadata, type map
     init_style()  checks (newton, IDs), exchange or ghost shell, neighbour request, ghost cutoff
     graph.build() nodes, species, directed edges within the cutoff (EKDGraph, ekd_graph.cpp)
     call_model()  one TorchScript call: energy, atom_energy, edge_grad
     call_layers() several ranks, models with layer(): the layers one by one, their features
                   exchanged between ranks (forward comm), then their gradients (reverse comm)
     write_back()  energies, forces on receivers and senders, global and per-atom virial
------------------------------------------------------------------------- */

#ifndef LMP_PAIR_EKD_H
#define LMP_PAIR_EKD_H

#include "pair.h"

#include "ekd_graph.h"

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

  // features of the layers (forward) and their gradients (reverse) for call_layers()
  int pack_forward_comm(int n, int *list, double *buf, int pbc_flag, int *pbc) override;
  void unpack_forward_comm(int n, int first, double *buf) override;
  int pack_reverse_comm(int n, int first, double *buf) override;
  void unpack_reverse_comm(int n, int *list, double *buf) override;

 protected:
  void allocate();
  void select_device();
  void keep_tensor_memory();
  void load_model();
  void read_metadata(const std::string &json_text);
  void check_layers();
  void input_tensors(torch::Tensor &vec, torch::Tensor &recv, torch::Tensor &send, torch::Tensor &spec);
  void call_model();
  void call_layers();
  void exchange_idle();
  torch::Tensor exchange_features(const torch::Tensor &z_local);
  torch::Tensor exchange_gradients(const torch::Tensor &dz);
  void write_back();
  void warn_overlap();

  // --- settings -----------------------------------------------------------
  std::string model_file;
  std::string device_request;      // "cpu", "cuda" or "auto"
  torch::Device device;            // resolved device
  double unit_factor;              // model eV -> deck energy unit (1 for metal)
  bool exchange_allowed;           // `exchange yes` (default): see init_style()

  // --- model and metadata --------------------------------------------------
  torch::jit::Module module;
  bool model_loaded;
  std::string loaded_key;          // file + device of the loaded module
  std::vector<std::string> elements;
  std::string model_kind;
  std::string dtype_name;
  torch::ScalarType model_dtype;
  double cutoff;                   // Angstrom
  double receptive_field;          // Angstrom
  double min_distance;             // Angstrom (0 = no check)
  int num_interactions;
  int members;
  bool jit_optimize;               // see the comment in call_model()
  std::vector<int> type_to_species;    // LAMMPS type (1..ntypes) -> model species index
  std::vector<int> exchange_widths;    // features after each layer but the last (metadata
                                       // exchange_features); empty: the file has no layer()

  // --- decomposition -------------------------------------------------------
  bool many_ranks;                 // comm->nprocs > 1: nodes are local + ghost atoms
  bool exchange;                   // many_ranks, layer by layer with features exchanged
  bool ghost_receivers;            // many_ranks && num_interactions > 1 && !exchange

  // --- feature exchange: one row of comm_width values per local and ghost atom ----------
  std::vector<double> comm_rows;
  int comm_width;

  // --- the graph of the step (buffers reused from step to step) ---------------
  EKDGraph graph;
  std::vector<float> edge_vec_f32;     // [E*3] graph.edge_vec for a float32 model

  // --- model outputs (CPU, float64) ----------------------------------------
  double model_energy;
  torch::Tensor atom_energy_out;   // [N]
  torch::Tensor edge_grad_out;     // [E,3]
  std::vector<torch::jit::IValue> inputs;

  // --- messages ------------------------------------------------------------
  bool overlap_warned;
  bool ghost_message_printed;
};

}    // namespace LAMMPS_NS

#endif
