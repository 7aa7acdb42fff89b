/* -*- c++ -*- ----------------------------------------------------------
   ekd_model.h — one exported ekd file as pair_style ekd uses it (export/CONTRACT.md §3-4): the
   TorchScript module on its device and the metadata the pair style needs, read and checked once.
   pair_style ekd holds one for the model that drives the dynamics and, with `committee FILE`, one
   for the committee that gives the per-atom uncertainty.
------------------------------------------------------------------------- */

#ifndef LMP_EKD_MODEL_H
#define LMP_EKD_MODEL_H

#include "pointers.h"

#include <torch/script.h>

#include <string>
#include <vector>

namespace LAMMPS_NS {

class EKDGraph;

class EKDModel : protected Pointers {
 public:
  explicit EKDModel(class LAMMPS *);

  // load `path` on `device` and check its metadata (nothing to do if that file is loaded on that
  // device already); every error names the file
  void load(const std::string &path, const torch::Device &device);
  // model species index of an element symbol, -1 if the file does not know it
  int species_of(const std::string &element) const;
  // an ensemble file with a members() method and at least two members: a committee
  bool is_committee() const;
  // the graph's buffers as model inputs on the model's device (no copy for float64 on the CPU;
  // a float32 model gets a float32 copy of the edge vectors)
  void inputs(EKDGraph &graph, torch::Tensor &vec, torch::Tensor &recv, torch::Tensor &send,
              torch::Tensor &species);
  // `blocks auto|yes|no` (CONTRACT.md §2d): graphs of more than whole_edges edges run in blocks
  // (auto: the file's threshold; yes: always; no: never); false if `yes` and the file has no blocks
  bool use_blocks(const std::string &request);
  // whether a graph of n_edges edges runs in blocks
  bool in_blocks(size_t n_edges) const { return has_blocks && static_cast<int64_t>(n_edges) > whole_edges; }

  // --- the file and its metadata (ekd.json) ---------------------------------
  std::string path;
  torch::jit::Module module;
  torch::Device device;
  bool loaded;
  std::vector<std::string> elements;
  std::string model_kind;
  std::string dtype_name;
  torch::ScalarType dtype;
  double cutoff;                       // Angstrom
  double receptive_field;              // Angstrom
  double min_distance;                 // Angstrom (0 = no check)
  int num_interactions;
  int members;
  std::vector<int> exchange_widths;    // features after each layer but the last (metadata
                                       // exchange_features); empty: the file has no layer()
  bool atom_uncertainty;               // forward_with_uncertainty() (and atom_uncertainty() with layer())
  bool has_blocks;                     // layer_values(), layer_gradients() and whole_edges (§2d)
  bool has_layer_apart;                // edge_features_apart() and layer_apart() (§2b)
  int64_t file_whole_edges;            // the file's whole_edges
  int64_t whole_edges;                 // in use: larger graphs run in blocks (set by use_blocks)
  int64_t block_edges;                 // edges per block
  double uncertainty_scale;            // informational: already applied inside the file

 private:
  void read_metadata(const std::string &json_text);
  void check_layers();
  void check_uncertainty_methods();

  std::string loaded_key;              // path + device of the loaded module
  std::vector<float> edge_vec_f32;     // [E*3] the graph's edge vectors for a float32 model
};

}    // namespace LAMMPS_NS

#endif
