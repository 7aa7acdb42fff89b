// Fused neighbour sums of HIP-NN's interaction layers, on the CPU: the operators
// `torch.ops.ekd.*`, built into libekdops.so (CMakeLists.txt), loaded by ekd in Python
// (models/neighbour_sum.py) and by the LAMMPS plugin, which links it.
//
// An interaction layer needs, for every receiver i, the environment
//     env[i, v, f] = sum over edges e into i of s[e, v] * z[sender(e), f]
// Written with stock operators this is a gather of z per edge, a padded layout and a batched
// product, each moving an (edges x features) table through memory, forward and backward. Here
// every receiver's edges are summed in place, and the backward is two more such sums:
//     environment(s, z)[i, v, f]     = sum_{e into i}    s[e, v] z[j_e, f]
//     edge_contraction(g, z)[e, v]   = sum_f             g[i_e, v, f] z[j_e, f]
//     sender_sum(s, g)[j, f]         = sum_{e from j} sum_v s[e, v] g[i_e, v, f]
// Each is bilinear, and the derivatives of each are the other two (or itself), so the three
// with their autograd rules give forces (first derivatives) and force-loss training (second
// derivatives) with no other code.
//
// The graph: edges sorted by receiver (row_ptr[i]..row_ptr[i+1] go into receiver i < R, as
// `edge_layout` makes them), their senders in that order, and n_senders, the rows of z.

#include <torch/torch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_features.h"

namespace ekd_kernels {
#define EKD_KERNELS "neighbour_sum_kernels.h"
#include "compile_twice.h"
}  // namespace ekd_kernels

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace kernels = ekd_kernels;

struct Graph {
  Tensor row_ptr, senders;
  int64_t n_senders;
};

// ---- dispatch: vectors per chunk (the instruction set: EKD_DISPATCH, cpu_features.h) ----------

// fn(std::integral_constant<int, K>) for K = k in 1..4
template <typename Fn>
void with_chunk(int64_t k, Fn&& fn) {
  switch (k) {
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    default: fn(std::integral_constant<int, 1>{});
  }
}

// vectors per chunk of F features: the most (up to 4) that divide F; 0 if F is not whole vectors
int64_t chunk_vectors(int64_t F, int64_t lanes) {
  if (F % lanes != 0) return 0;
  return F % (4 * lanes) == 0 ? 4 : F % (2 * lanes) == 0 ? 2 : 1;
}

constexpr int64_t kGrain = 16;  // receivers per task when threads share the work

void check_graph(const Graph& g, const char* op) {
  for (const Tensor* t : {&g.row_ptr, &g.senders}) {
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == torch::kLong && t->is_contiguous() && t->device().is_cpu(),
                "ekd::", op, ": row_ptr and senders must be contiguous int64 CPU vectors");
  }
}

// ---- CPU kernels (below autograd) -----------------------------------------------------------

Tensor environment_cpu(const Tensor& s_in, const Tensor& z_in, const Tensor& row_ptr, const Tensor& senders,
                       int64_t n_senders) {
  check_graph({row_ptr, senders, n_senders}, "environment");
  TORCH_CHECK(s_in.dim() == 2 && z_in.dim() == 2 && s_in.size(0) == senders.size(0) &&
                  s_in.scalar_type() == z_in.scalar_type(),
              "ekd::environment: expects s (E, V) and z (N, F) of one dtype");
  const Tensor s = s_in.contiguous(), z = z_in.contiguous();
  const int64_t R = row_ptr.size(0) - 1, V = s.size(1), F = z.size(1);
  Tensor out = torch::empty({R, V, F}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "ekd_environment", [&] {
    const scalar_t *sp = s.data_ptr<scalar_t>(), *zp = z.data_ptr<scalar_t>();
    const int64_t *rp = row_ptr.data_ptr<int64_t>(), *snd = senders.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t k = chunk_vectors(F, kernels::generic::Simd<scalar_t>::lanes);
    at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
      if (k == 0) return kernels::generic::environment_rows_plain(sp, zp, rp, snd, op, V, F, begin, end);
      with_chunk(k, [&](auto K) {
        constexpr int k_vectors = decltype(K)::value;
        EKD_DISPATCH(kernels, environment_rows<scalar_t, k_vectors>(sp, zp, rp, snd, op, V, F, begin, end));
      });
    });
  });
  return out;
}

Tensor edge_contraction_cpu(const Tensor& g_in, const Tensor& z_in, const Tensor& row_ptr, const Tensor& senders,
                            int64_t n_senders) {
  check_graph({row_ptr, senders, n_senders}, "edge_contraction");
  TORCH_CHECK(g_in.dim() == 3 && z_in.dim() == 2 && g_in.size(2) == z_in.size(1) &&
                  g_in.size(0) == row_ptr.size(0) - 1 && g_in.scalar_type() == z_in.scalar_type(),
              "ekd::edge_contraction: expects g (R, V, F) and z (N, F) of one dtype");
  const Tensor z = z_in.contiguous();
  const int64_t R = g_in.size(0), V = g_in.size(1), F = g_in.size(2);
  Tensor out = torch::empty({senders.size(0), V}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "ekd_edge_contraction", [&] {
    const int64_t lanes = kernels::generic::Simd<scalar_t>::lanes, k = (V + lanes - 1) / lanes;
    const int64_t *rp = row_ptr.data_ptr<int64_t>(), *snd = senders.data_ptr<int64_t>();
    const scalar_t* zp = z.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const Tensor ge = g_in.contiguous();
    const scalar_t* gp = ge.data_ptr<scalar_t>();
    at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
      if (k > 4) return kernels::generic::edge_contraction_rows_plain(gp, zp, rp, snd, op, V, F, begin, end);
      with_chunk(k, [&](auto K) {
        constexpr int k_vectors = decltype(K)::value;
        EKD_DISPATCH(kernels, edge_contraction_rows<scalar_t, k_vectors>(gp, zp, rp, snd, op, V, F, begin, end));
      });
    });
  });
  return out;
}

Tensor sender_sum_cpu(const Tensor& s_in, const Tensor& g_in, const Tensor& row_ptr, const Tensor& senders,
                      int64_t n_senders) {
  check_graph({row_ptr, senders, n_senders}, "sender_sum");
  TORCH_CHECK(s_in.dim() == 2 && g_in.dim() == 3 && s_in.size(1) == g_in.size(1) && s_in.size(0) == senders.size(0) &&
                  g_in.size(0) == row_ptr.size(0) - 1 && s_in.scalar_type() == g_in.scalar_type(),
              "ekd::sender_sum: expects s (E, V) and g (R, V, F) of one dtype");
  const Tensor s = s_in.contiguous(), ge = g_in.contiguous();
  const int64_t R = row_ptr.size(0) - 1, V = ge.size(1), F = ge.size(2);
  // each thread adds into its own (n_senders, F) table; the tables are summed at the end
  const int64_t threads = R > kGrain ? at::get_num_threads() : 1;
  Tensor sums = torch::zeros({threads, n_senders, F}, ge.options());
  AT_DISPATCH_FLOATING_TYPES(ge.scalar_type(), "ekd_sender_sum", [&] {
    const scalar_t *sp = s.data_ptr<scalar_t>(), *gp = ge.data_ptr<scalar_t>();
    const int64_t *rp = row_ptr.data_ptr<int64_t>(), *snd = senders.data_ptr<int64_t>();
    scalar_t* base = sums.data_ptr<scalar_t>();
    const int64_t k = chunk_vectors(F, kernels::generic::Simd<scalar_t>::lanes);
    at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
      scalar_t* op = base + std::min<int64_t>(at::get_thread_num(), threads - 1) * n_senders * F;
      if (k == 0) return kernels::generic::sender_sum_rows_plain(sp, gp, rp, snd, op, V, F, begin, end);
      with_chunk(k, [&](auto K) {
        constexpr int k_vectors = decltype(K)::value;
        EKD_DISPATCH(kernels, sender_sum_rows<scalar_t, k_vectors>(sp, gp, rp, snd, op, V, F, begin, end));
      });
    });
  });
  return threads == 1 ? sums[0] : sums.sum(0);
}

// ---- the graph in the layout above ------------------------------------------------------------

// A counting sort (stable, O(edges + rows)) of the edges into receivers [0, n_rows) by receiver;
// edges into other receivers are dropped. Returns the edges' indices in the input (`order`,
// empty when that is every edge in its own order), row_ptr and their senders, checked to lie in
// [0, n_senders).
std::tuple<Tensor, Tensor, Tensor> edge_layout(const Tensor& receivers_in, const Tensor& senders_in, int64_t n_rows,
                                               int64_t n_senders) {
  TORCH_CHECK(receivers_in.dim() == 1 && senders_in.dim() == 1 && receivers_in.size(0) == senders_in.size(0) &&
                  receivers_in.scalar_type() == torch::kLong && senders_in.scalar_type() == torch::kLong,
              "ekd::edge_layout: receivers and senders must be int64 vectors of one length");
  TORCH_CHECK(n_rows >= 0 && n_senders >= 0, "ekd::edge_layout: n_rows and n_senders must be >= 0");
  const Tensor rec = receivers_in.contiguous().cpu(), snd = senders_in.contiguous().cpu();
  const int64_t edges = rec.size(0);
  const int64_t *r = rec.data_ptr<int64_t>(), *s = snd.data_ptr<int64_t>();
  const auto long_options = torch::TensorOptions().dtype(torch::kLong);
  Tensor row_ptr = torch::zeros({n_rows + 1}, long_options);
  int64_t* rp = row_ptr.data_ptr<int64_t>();
  bool in_order = true;
  for (int64_t e = 0; e < edges; ++e) {
    TORCH_CHECK(r[e] >= 0, "ekd::edge_layout: edge ", e, " has receiver ", r[e]);
    in_order = in_order && r[e] < n_rows && (e == 0 || r[e - 1] <= r[e]);
    if (r[e] >= n_rows) continue;
    TORCH_CHECK(0 <= s[e] && s[e] < n_senders, "ekd::edge_layout: edge ", e, " into node ", r[e], " has sender ",
                s[e], ", outside 0..", n_senders - 1);
    ++rp[r[e] + 1];
  }
  for (int64_t i = 0; i < n_rows; ++i) rp[i + 1] += rp[i];
  if (in_order) return {torch::empty({0}, long_options), row_ptr, snd};
  const int64_t kept = rp[n_rows];
  Tensor order = torch::empty({kept}, long_options), senders = torch::empty({kept}, long_options);
  int64_t *op = order.data_ptr<int64_t>(), *sn = senders.data_ptr<int64_t>();
  std::vector<int64_t> next(rp, rp + n_rows);
  for (int64_t e = 0; e < edges; ++e) {
    if (r[e] >= n_rows) continue;
    const int64_t k = next[r[e]]++;
    op[k] = e;
    sn[k] = s[e];
  }
  return {order, row_ptr, senders};
}

// ---- autograd: each operator's derivatives are the three operators again ----------------------

// through the dispatcher, so that a derivative taken with create_graph is differentiable again
using Signature = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t);

Tensor call(const char* name, const Tensor& a, const Tensor& b, const Graph& g) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  return op.call(a, b, g.row_ptr, g.senders, g.n_senders);
}

Tensor environment(const Tensor& s, const Tensor& z, const Graph& g) { return call("ekd::environment", s, z, g); }
Tensor edge_contraction(const Tensor& ge, const Tensor& z, const Graph& g) {
  return call("ekd::edge_contraction", ge, z, g);
}
Tensor sender_sum(const Tensor& s, const Tensor& ge, const Graph& g) { return call("ekd::sender_sum", s, ge, g); }

void save(AutogradContext* ctx, const Tensor& a, const Tensor& b, const Graph& g) {
  ctx->save_for_backward({a, b});
  ctx->saved_data["row_ptr"] = g.row_ptr;
  ctx->saved_data["senders"] = g.senders;
  ctx->saved_data["n_senders"] = g.n_senders;
}

Graph saved_graph(AutogradContext* ctx) {
  return {ctx->saved_data["row_ptr"].toTensor(), ctx->saved_data["senders"].toTensor(),
          ctx->saved_data["n_senders"].toInt()};
}

// (s, z) -> environment; d/ds = edge_contraction(grad, z), d/dz = sender_sum(s, grad)
struct Environment : torch::autograd::Function<Environment> {
  static Tensor forward(AutogradContext* ctx, const Tensor& s, const Tensor& z, const Graph& g) {
    save(ctx, s, z, g);
    at::AutoDispatchBelowADInplaceOrView below;
    return environment(s, z, g);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Graph g = saved_graph(ctx);
    return {ctx->needs_input_grad(0) ? edge_contraction(grad[0], saved[1], g) : Tensor(),
            ctx->needs_input_grad(1) ? sender_sum(saved[0], grad[0], g) : Tensor(), Tensor()};
  }
};

// (g, z) -> per-edge contraction; d/dg = environment(grad, z), d/dz = sender_sum(grad, g)
struct EdgeContraction : torch::autograd::Function<EdgeContraction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& ge, const Tensor& z, const Graph& g) {
    save(ctx, ge, z, g);
    at::AutoDispatchBelowADInplaceOrView below;
    return edge_contraction(ge, z, g);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Graph g = saved_graph(ctx);
    return {ctx->needs_input_grad(0) ? environment(grad[0], saved[1], g) : Tensor(),
            ctx->needs_input_grad(1) ? sender_sum(grad[0], saved[0], g) : Tensor(), Tensor()};
  }
};

// (s, g) -> per-sender sum; d/ds = edge_contraction(g, grad), d/dg = environment(s, grad)
struct SenderSum : torch::autograd::Function<SenderSum> {
  static Tensor forward(AutogradContext* ctx, const Tensor& s, const Tensor& ge, const Graph& g) {
    save(ctx, s, ge, g);
    at::AutoDispatchBelowADInplaceOrView below;
    return sender_sum(s, ge, g);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Graph g = saved_graph(ctx);
    return {ctx->needs_input_grad(0) ? edge_contraction(saved[1], grad[0], g) : Tensor(),
            ctx->needs_input_grad(1) ? environment(saved[0], grad[0], g) : Tensor(), Tensor()};
  }
};

template <typename Fn>
Tensor with_autograd(const Tensor& a, const Tensor& b, const Tensor& row_ptr, const Tensor& senders,
                     int64_t n_senders) {
  return Fn::apply(a, b, Graph{row_ptr, senders, n_senders});
}

}  // namespace

TORCH_LIBRARY(ekd, m) {
  m.def("environment(Tensor s, Tensor z, Tensor row_ptr, Tensor senders, int n_senders) -> Tensor");
  m.def("edge_contraction(Tensor g, Tensor z, Tensor row_ptr, Tensor senders, int n_senders) -> Tensor");
  m.def("sender_sum(Tensor s, Tensor g, Tensor row_ptr, Tensor senders, int n_senders) -> Tensor");
  m.def("edge_layout(Tensor receivers, Tensor senders, int n_rows, int n_senders) -> "
        "(Tensor order, Tensor row_ptr, Tensor senders)");
  m.impl("edge_layout", edge_layout);
}

TORCH_LIBRARY_IMPL(ekd, CPU, m) {
  m.impl("environment", environment_cpu);
  m.impl("edge_contraction", edge_contraction_cpu);
  m.impl("sender_sum", sender_sum_cpu);
}

TORCH_LIBRARY_IMPL(ekd, Autograd, m) {
  m.impl("environment", with_autograd<Environment>);
  m.impl("edge_contraction", with_autograd<EdgeContraction>);
  m.impl("sender_sum", with_autograd<SenderSum>);
}
