// Edge lengths r = |v| of (E, 3) edge vectors, and their gradient g v / r, each in one pass over
// the edges: the operator `torch.ops.ekd.edge_lengths`, part of libekdops.so (see
// neighbour_sum.cpp), used by models/radial.py on the CPU.
//
// torch.linalg.vector_norm over the last of three columns is a general reduction, and its
// backward three more passes (divide, mask the zero lengths, multiply): 13 ms of a 160 ms force
// call of the demo student (14,625 ethanol atoms, one thread, float32; measured 2026-12-02).
// Here both are plain loops. A zero-length edge has gradient 0, as vector_norm's backward gives.
//
// Second derivatives (training with a force loss): a backward recorded with create_graph is
// written in ATen operators of the saved vectors and lengths, so autograd differentiates it.

#include <torch/torch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 4096;  // edges per task when threads share the work

void check(const Tensor& vectors) {
  TORCH_CHECK(vectors.dim() == 2 && vectors.size(1) == 3 && vectors.device().is_cpu() &&
                  at::isFloatingType(vectors.scalar_type()),
              "ekd::edge_lengths: expects floating-point edge vectors (E, 3) on the CPU");
}

Tensor edge_lengths_cpu(const Tensor& vectors_in) {
  check(vectors_in);
  const Tensor vectors = vectors_in.contiguous();
  const int64_t E = vectors.size(0);
  Tensor r = torch::empty({E}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "ekd_edge_lengths", [&] {
    const scalar_t* vp = vectors.data_ptr<scalar_t>();
    scalar_t* rp = r.data_ptr<scalar_t>();
    at::parallel_for(0, E, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t *v = vp + 3 * e;
        rp[e] = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
      }
    });
  });
  return r;
}

// g (E,) -> g v / r (E, 3); 0 where r = 0
Tensor edge_lengths_backward_cpu(const Tensor& g_in, const Tensor& vectors_in, const Tensor& r_in) {
  const Tensor g = g_in.contiguous(), vectors = vectors_in.contiguous(), r = r_in.contiguous();
  const int64_t E = vectors.size(0);
  Tensor out = torch::empty({E, 3}, vectors.options());
  AT_DISPATCH_FLOATING_TYPES(vectors.scalar_type(), "ekd_edge_lengths_backward", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *vp = vectors.data_ptr<scalar_t>(), *rp = r.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, E, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t e = begin; e < end; ++e) {
        const scalar_t k = rp[e] > scalar_t(0) ? gp[e] / rp[e] : scalar_t(0);
        for (int d = 0; d < 3; ++d) op[3 * e + d] = k * vp[3 * e + d];
      }
    });
  });
  return out;
}

struct EdgeLengths : torch::autograd::Function<EdgeLengths> {
  static Tensor forward(AutogradContext* ctx, const Tensor& vectors) {
    Tensor r = edge_lengths_cpu(vectors);
    ctx->save_for_backward({vectors, r});
    return r;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &vectors = saved[0], &r = saved[1];
    if (torch::GradMode::is_enabled()) {  // recorded: differentiable again (r through this function)
      const Tensor positive = r > 0;
      const Tensor k = torch::where(positive, grad[0] / torch::where(positive, r, torch::ones_like(r)),
                                    torch::zeros_like(r));
      return {k.unsqueeze(1) * vectors};
    }
    return {edge_lengths_backward_cpu(grad[0], vectors, r)};
  }
};

Tensor edge_lengths_autograd(const Tensor& vectors) { return EdgeLengths::apply(vectors); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(ekd, m) { m.def("edge_lengths(Tensor vectors) -> Tensor"); }

TORCH_LIBRARY_IMPL(ekd, CPU, m) { m.impl("edge_lengths", edge_lengths_cpu); }

TORCH_LIBRARY_IMPL(ekd, Autograd, m) { m.impl("edge_lengths", edge_lengths_autograd); }
