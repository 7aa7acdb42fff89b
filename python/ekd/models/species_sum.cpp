// HIP-NN's first neighbour sum, whose features are one-hot species: the operators
// `torch.ops.ekd.species_sum` and `ekd.species_gather`, part of libekdops.so (see
// neighbour_sum.cpp), used by models/neighbour_sum.py on the CPU.
//
//     species_sum(s)[i, v, c]  = sum over edges e into i whose sender has species c of s[e, v]
//     species_gather(g)[e, v]  = g[i_e, v, species of e's sender]
//
// Each is linear and the derivative of the other, so forces and force-loss training need no
// other code. Before these, the first layer took the general environment of one-hot features
// padded to 8 columns, its edge contraction and slicing copies: 20 of 150 ms of the demo
// student's force call (14,625 ethanol atoms, one thread, float32; measured 2026-12-02).
//
// The graph is neighbour_sum.cpp's: edges sorted by receiver (row_ptr), and here the species of
// each edge's sender (int64, in [0, n_species)) instead of the sender.

#include <torch/torch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_features.h"

namespace ekd_species_kernels {
#define EKD_KERNELS "species_sum_kernels.h"
#include "compile_twice.h"
}  // namespace ekd_species_kernels

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 16;  // receivers per task when threads share the work

void check_graph(const Tensor& sender_species, const Tensor& row_ptr, int64_t n_species, int64_t edges,
                 const char* op) {
  for (const Tensor* t : {&sender_species, &row_ptr}) {
    TORCH_CHECK(t->dim() == 1 && t->scalar_type() == torch::kLong && t->is_contiguous() && t->device().is_cpu(),
                "ekd::", op, ": sender_species and row_ptr must be contiguous int64 CPU vectors");
  }
  TORCH_CHECK(sender_species.size(0) == edges && row_ptr.size(0) >= 1 &&
                  row_ptr[row_ptr.size(0) - 1].item<int64_t>() == edges,
              "ekd::", op, ": ", edges, " edges but ", sender_species.size(0), " sender species and row_ptr ending at ",
              row_ptr.size(0) >= 1 ? row_ptr[row_ptr.size(0) - 1].item<int64_t>() : -1);
  const int64_t* c = sender_species.data_ptr<int64_t>();
  for (int64_t e = 0; e < edges; ++e)
    TORCH_CHECK(0 <= c[e] && c[e] < n_species, "ekd::", op, ": edge ", e, " has sender species ", c[e],
                ", outside 0..", n_species - 1);
}

Tensor species_sum_cpu(const Tensor& s_in, const Tensor& sender_species, const Tensor& row_ptr, int64_t n_species) {
  TORCH_CHECK(s_in.dim() == 2 && at::isFloatingType(s_in.scalar_type()), "ekd::species_sum: expects s (E, V)");
  check_graph(sender_species, row_ptr, n_species, s_in.size(0), "species_sum");
  const Tensor s = s_in.contiguous();
  const int64_t R = row_ptr.size(0) - 1, V = s.size(1);
  Tensor out = torch::empty({R, V, n_species}, s.options());
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "ekd_species_sum", [&] {
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const int64_t *cp = sender_species.data_ptr<int64_t>(), *rp = row_ptr.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
      EKD_DISPATCH(ekd_species_kernels, species_sum_rows<scalar_t>(sp, cp, rp, op, V, n_species, begin, end));
    });
  });
  return out;
}

Tensor species_gather_cpu(const Tensor& g_in, const Tensor& sender_species, const Tensor& row_ptr,
                          int64_t n_species) {
  TORCH_CHECK(g_in.dim() == 3 && g_in.size(2) == n_species && g_in.size(0) == row_ptr.size(0) - 1 &&
                  at::isFloatingType(g_in.scalar_type()),
              "ekd::species_gather: expects g (R, V, n_species) with R = row_ptr's length - 1");
  check_graph(sender_species, row_ptr, n_species, sender_species.size(0), "species_gather");
  const Tensor g = g_in.contiguous();
  const int64_t R = g.size(0), V = g.size(1), E = sender_species.size(0);
  Tensor out = torch::empty({E, V}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "ekd_species_gather", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t *cp = sender_species.data_ptr<int64_t>(), *rp = row_ptr.data_ptr<int64_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, R, kGrain, [&](int64_t begin, int64_t end) {
      EKD_DISPATCH(ekd_species_kernels, species_gather_rows<scalar_t>(gp, cp, rp, op, V, n_species, begin, end));
    });
  });
  return out;
}

// ---- autograd: each operator's derivative is the other -----------------------------------------

using Signature = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t);

// through the dispatcher, so that a derivative taken with create_graph is differentiable again
Tensor call(const char* name, const Tensor& a, const Tensor& sender_species, const Tensor& row_ptr,
            int64_t n_species) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
  return op.call(a, sender_species, row_ptr, n_species);
}

template <const char* Name, const char* Derivative>
struct Linear : torch::autograd::Function<Linear<Name, Derivative>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& a, const Tensor& sender_species, const Tensor& row_ptr,
                        int64_t n_species) {
    ctx->save_for_backward({sender_species, row_ptr});
    ctx->saved_data["n_species"] = n_species;
    at::AutoDispatchBelowADInplaceOrView below;
    return call(Name, a, sender_species, row_ptr, n_species);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    return {call(Derivative, grad[0], saved[0], saved[1], ctx->saved_data["n_species"].toInt()), Tensor(), Tensor(),
            Tensor()};
  }
};

constexpr char kSum[] = "ekd::species_sum";
constexpr char kGather[] = "ekd::species_gather";

template <typename Fn>
Tensor with_autograd(const Tensor& a, const Tensor& sender_species, const Tensor& row_ptr, int64_t n_species) {
  return Fn::apply(a, sender_species, row_ptr, n_species);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ekd, m) {
  m.def("species_sum(Tensor s, Tensor sender_species, Tensor row_ptr, int n_species) -> Tensor");
  m.def("species_gather(Tensor g, Tensor sender_species, Tensor row_ptr, int n_species) -> Tensor");
}

TORCH_LIBRARY_IMPL(ekd, CPU, m) {
  m.impl("species_sum", species_sum_cpu);
  m.impl("species_gather", species_gather_cpu);
}

TORCH_LIBRARY_IMPL(ekd, Autograd, m) {
  m.impl("species_sum", with_autograd<Linear<kSum, kGather>>);
  m.impl("species_gather", with_autograd<Linear<kGather, kSum>>);
}
