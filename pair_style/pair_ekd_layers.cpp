/* ----------------------------------------------------------------------
   pair_ekd_layers.cpp — pair_style ekd on several MPI ranks with a layered file (export/CONTRACT.md
   §2b, §2d): the layers run one at a time on each rank's own atoms, and between layers the
   features of other ranks' atoms arrive by LAMMPS forward communication (their gradients go back
   by reverse communication). Graphs of up to the file's whole_edges edges run each layer whole
   (call_layers); larger ones in blocks through layer_values / layer_gradients
   (call_layers_in_blocks), whose memory grows with the atoms, not with every edge table.
------------------------------------------------------------------------- */

#include "pair_ekd.h"

#include "ekd_text.h"

#include "atom.h"
#include "comm.h"
#include "error.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>

using namespace LAMMPS_NS;
using ekd::first_line;
using ekd::shape_of;

/* ----------------------------------------------------------------------
   call_layers: CONTRACT.md §2b. Forward: the edge tables of edge_features_apart (the network's
     features and the edge lengths; older files: the one table of edge_features), then for
     t = 0 .. L-1 (z^{t+1} of local nodes, energy terms) = layer(t, z^t of all nodes, tables, ...);
     z^{t+1} of ghost nodes arrives from their owners (forward comm).
   Backward, t = L-1 .. 0, by autograd through each layer's graph:
     d/d(tables, z^t) of [ sum energy_t + <z^{t+1}, g^{t+1}> ];
     g^t = dE/dz^t of local nodes = own rows + ghost rows summed on their owners (reverse comm);
   at last dE/d(edge vectors) from dE/d(tables) through edge_features. With the model's own
   uncertainty requested: atom_uncertainty(z^L of the local nodes), the last layer's features.
------------------------------------------------------------------------- */

void PairEKD::call_layers(bool with_uncertainty)
{
  const int64_t nlocal = atom->nlocal;
  const int n_layers = model.num_interactions;
  torch::Tensor t_vec, t_recv, t_send, t_species;
  model.inputs(graph, t_vec, t_recv, t_send, t_species);
  const auto float_opts = torch::TensorOptions().dtype(model.dtype).device(device);

  torch::AutoGradMode grad_on(true);
  torch::jit::GraphOptimizerEnabledGuard optimize(jit_optimize);
  torch::Tensor vec = t_vec.detach().requires_grad_(true);
  const std::vector<torch::Tensor> tables = edge_tables(vec);
  std::vector<torch::Tensor> leaves;    // the tables as leaves, so each layer's backward stops there
  for (const auto &table : tables) leaves.push_back(table.detach().requires_grad_(true));

  std::vector<torch::Tensor> z_in(n_layers), z_out(n_layers), energy(n_layers);
  torch::Tensor z = torch::zeros({static_cast<int64_t>(graph.species.size()), 0}, float_opts);
  auto layer = model.module.get_method(model.has_layer_apart ? "layer_apart" : "layer");
  for (int t = 0; t < n_layers; ++t) {
    z_in[t] = t > 0 ? z.requires_grad_(true) : z;
    std::vector<c10::IValue> args{static_cast<int64_t>(t), z_in[t], leaves[0], t_recv, t_send, t_species, nlocal};
    if (model.has_layer_apart) args.push_back(leaves[1]);
    try {
      c10::IValue result = layer(args);
      const auto &out = result.toTupleRef().elements();
      z_out[t] = out[0].toTensor();
      energy[t] = out[1].toTensor();
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style ekd: layer {} of the model {} failed on {} nodes and {} edges: {}", t,
                 model_file, graph.species.size(), graph.receivers.size(), first_line(e.what()));
    }
    const int64_t width = t + 1 < n_layers ? model.exchange_widths[t] : z_out[t].size(-1);
    if (energy[t].numel() != nlocal || z_out[t].dim() != 2 || z_out[t].size(0) != nlocal ||
        z_out[t].size(1) != width)
      error->one(FLERR, "pair_style ekd: layer {} of the model {} returned features {} and energies {} "
                 "for {} local atoms; expected [{}, {}] (exchange_features) and [{}]", t, model_file,
                 shape_of(z_out[t]), shape_of(energy[t]), nlocal, nlocal, width, nlocal);
    if (t + 1 < n_layers) z = exchange_features(z_out[t].detach());
  }

  if (with_uncertainty) own_uncertainty = layer_uncertainty(z_out[n_layers - 1]);

  torch::Tensor atom_energy = energy[0].detach();
  for (int t = 1; t < n_layers; ++t) atom_energy = atom_energy + energy[t].detach();
  atom_energy_out = atom_energy.to(torch::kCPU, torch::kFloat64).contiguous();
  model_energy = atom_energy_out.sum().item<double>();

  // dE/d(table), summed over the layers; undefined while no layer has read that table
  std::vector<torch::Tensor> table_grad(leaves.size());
  torch::Tensor g;    // dE/dz^{t+1} of the local nodes
  for (int t = n_layers - 1; t >= 0; --t) {
    std::vector<torch::Tensor> outputs{energy[t]}, seeds{torch::ones_like(energy[t])};
    if (g.defined()) {
      outputs.push_back(z_out[t]);
      seeds.push_back(g);
    }
    std::vector<torch::Tensor> wrt(leaves);
    if (t > 0) wrt.push_back(z_in[t]);
    std::vector<torch::Tensor> grads;
    try {
      grads = torch::autograd::grad(outputs, wrt, seeds, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style ekd: the gradient of layer {} of the model {} failed: {}", t,
                 model_file, first_line(e.what()));
    }
    for (size_t k = 0; k < leaves.size(); ++k)
      if (grads[k].defined()) table_grad[k] = table_grad[k].defined() ? table_grad[k] + grads[k] : grads[k];
    if (t > 0) {
      const torch::Tensor &z_grad = grads[leaves.size()];
      g = exchange_gradients(z_grad.defined() ? z_grad : torch::zeros_like(z_in[t]));
    }
  }
  edge_grad_out = edge_gradient(vec, tables, table_grad).to(torch::kCPU).contiguous();    // model dtype
}

// the edge tables the layers read, from edge_features_apart (the network's features, the edge
// lengths) or, in files without it, edge_features (one table: both side by side, which each
// layer would split and its gradient assemble again: a third of a step on two ranks)
std::vector<torch::Tensor> PairEKD::edge_tables(const torch::Tensor &vec)
{
  try {
    if (!model.has_layer_apart) return {model.module.get_method("edge_features")({vec}).toTensor()};
    const auto result = model.module.get_method("edge_features_apart")({vec});
    const auto &out = result.toTupleRef().elements();
    return {out[0].toTensor(), out[1].toTensor()};
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style ekd: {} of the model {} failed on {} edges: {}",
               model.has_layer_apart ? "edge_features_apart" : "edge_features", model_file,
               graph.receivers.size(), first_line(e.what()));
  }
  return {};
}

// dE/d(edge vectors) from the gradients of the edge tables (zero where no table depends on them)
torch::Tensor PairEKD::edge_gradient(const torch::Tensor &vec, const std::vector<torch::Tensor> &tables,
                                     const std::vector<torch::Tensor> &table_grad)
{
  std::vector<torch::Tensor> outputs, seeds;
  for (size_t k = 0; k < tables.size(); ++k)
    if (table_grad[k].defined() && tables[k].requires_grad()) {    // no edges: nothing depends on them
      outputs.push_back(tables[k]);
      seeds.push_back(table_grad[k]);
    }
  if (!outputs.empty()) {
    auto grads = torch::autograd::grad(outputs, {vec}, seeds, false, false, true);
    if (grads[0].defined()) return grads[0];
  }
  return torch::zeros_like(vec);
}

/* ----------------------------------------------------------------------
   call_layers_in_blocks: CONTRACT.md §2d. Forward, t = 0 .. L-2: z^{t+1} of the local nodes =
     layer_values(t, z^t of all nodes, edge vectors, ...) (in blocks, no gradients), then the
     exchange. Backward, t = L-1 .. 0: layer_gradients(t, z^t, edge vectors, ..., g^{t+1}) recomputes
     the layer in blocks and gives its energies, its part of dE/d(edge vectors) and dE/dz^t of
     every node, whose ghost rows go to their owners (reverse exchange): g^t. The same exchanges
     as call_layers, in the same order, so ranks may take either path in the same step.
------------------------------------------------------------------------- */

void PairEKD::call_layers_in_blocks(bool with_uncertainty)
{
  const int64_t nlocal = atom->nlocal;
  const int n_layers = model.num_interactions;
  torch::Tensor t_vec, t_recv, t_send, t_species;
  model.inputs(graph, t_vec, t_recv, t_send, t_species);
  const auto float_opts = torch::TensorOptions().dtype(model.dtype).device(device);

  torch::AutoGradMode grad_on(true);    // layer_gradients differentiates inside
  torch::jit::GraphOptimizerEnabledGuard optimize(jit_optimize);
  auto values = model.module.get_method("layer_values");
  auto gradients = model.module.get_method("layer_gradients");
  std::vector<torch::Tensor> z_in(n_layers);
  z_in[0] = torch::zeros({static_cast<int64_t>(graph.species.size()), 0}, float_opts);
  for (int t = 0; t + 1 < n_layers; ++t) {
    torch::Tensor z_next;
    try {
      z_next = values({static_cast<int64_t>(t), z_in[t], t_vec, t_recv, t_send, t_species, nlocal})
                   .toTupleRef().elements()[0].toTensor();
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style ekd: layer_values({}) of the model {} failed on {} nodes and {} edges: {}", t,
                 model_file, graph.species.size(), graph.receivers.size(), first_line(e.what()));
    }
    if (z_next.dim() != 2 || z_next.size(0) != nlocal || z_next.size(1) != model.exchange_widths[t])
      error->one(FLERR, "pair_style ekd: layer_values({}) of the model {} returned features {}; expected [{}, {}]",
                 t, model_file, shape_of(z_next), nlocal, model.exchange_widths[t]);
    z_in[t + 1] = exchange_features(z_next);
  }

  torch::Tensor edge_grad = torch::zeros_like(t_vec);
  torch::Tensor atom_energy = torch::zeros({nlocal}, torch::kFloat64);
  torch::Tensor g = torch::zeros({0, 0}, float_opts);    // dE/dz^{t+1} of the local nodes (none after the last)
  for (int t = n_layers - 1; t >= 0; --t) {
    std::vector<torch::Tensor> out(4);
    try {
      const auto result = gradients({static_cast<int64_t>(t), z_in[t], t_vec, t_recv, t_send, t_species, nlocal, g});
      for (int k = 0; k < 4; ++k) out[k] = result.toTupleRef().elements()[k].toTensor();
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style ekd: layer_gradients({}) of the model {} failed on {} nodes and {} edges: {}",
                 t, model_file, graph.species.size(), graph.receivers.size(), first_line(e.what()));
    }
    if (out[1].numel() != nlocal || !out[2].sizes().equals(t_vec.sizes()) || !out[3].sizes().equals(z_in[t].sizes()))
      error->one(FLERR, "pair_style ekd: layer_gradients({}) of the model {} returned energies {}, edge gradients "
                 "{} and feature gradients {}; expected [{}], {} and {}", t, model_file, shape_of(out[1]),
                 shape_of(out[2]), shape_of(out[3]), nlocal, shape_of(t_vec), shape_of(z_in[t]));
    atom_energy += out[1].to(torch::kCPU, torch::kFloat64);
    edge_grad += out[2];
    if (t == n_layers - 1 && with_uncertainty) own_uncertainty = layer_uncertainty(out[0]);
    if (t > 0) g = exchange_gradients(out[3]);
  }
  atom_energy_out = atom_energy.contiguous();
  model_energy = atom_energy_out.sum().item<double>();
  edge_grad_out = edge_grad.to(torch::kCPU).contiguous();    // model dtype: write_back reads either
}
// the model's own uncertainty (CPU, float64) from the last layer's features of the local nodes
torch::Tensor PairEKD::layer_uncertainty(const torch::Tensor &z_last)
{
  const int64_t nlocal = atom->nlocal;
  torch::Tensor u;
  try {
    torch::NoGradGuard no_grad;
    u = model.module.get_method("atom_uncertainty")({z_last}).toTensor();
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style ekd: atom_uncertainty() of the model {} failed on {} local atoms: {}",
               model_file, nlocal, first_line(e.what()));
  }
  if (u.dim() != 1 || u.size(0) != nlocal)
    error->one(FLERR, "pair_style ekd: atom_uncertainty() of {} returned {}; expected [{}] (one value per "
               "local atom)", model_file, shape_of(u), nlocal);
  return u.to(torch::kCPU, torch::kFloat64).contiguous();
}

// a rank that owns no atoms takes part in the same exchanges, with nothing to compute
void PairEKD::exchange_idle()
{
  const int nall = atom->nlocal + atom->nghost;
  for (int width : model.exchange_widths) {
    comm_width = width;
    comm_rows.assign(static_cast<size_t>(nall) * width, 0.0);
    comm->forward_comm(this);
  }
  for (int t = model.num_interactions - 1; t > 0; --t) {
    comm_width = model.exchange_widths[t - 1];
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
  return torch::cat({local, ghosts}).to(device, model.dtype);
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
  return (all.narrow(0, 0, nlocal) + from_ghosts).to(device, model.dtype);
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
