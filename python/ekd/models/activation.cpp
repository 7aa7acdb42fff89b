// SiLU, x σ(x), with its first and second derivatives each one operator: `torch.ops.ekd.silu`,
// part of libekdops.so (see neighbour_sum.cpp), used by HIP-NN's layers in training
// (models/activation.py).
//
// Training with a force loss differentiates the forces, so autograd differentiates SiLU's
// backward. PyTorch writes that backward, when it is recorded, as six elementwise operators
// (sigmoid, 1 − σ, products, a sum), each with its own backward node: ~20 operators per SiLU per
// step, and the demo student's training step is bound by the count of its operators, not by their
// arithmetic (32 small molecules: ~300 atoms × 32 features per SiLU). Here the values and the
// first derivative are ATen's (silu, silu_backward: the same numbers bit for bit), and a recorded
// first derivative keeps σ so that the second is one loop of products:
//
//   y  = x σ,   y' = σ (1 + x (1 − σ)),   y'' = σ (1 − σ) (2 + x (1 − 2σ)).
//
// A third derivative (nothing in ekd asks for one) is written in ATen operators, so it is right.

#include <torch/torch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 32768;  // elements per task when threads share the work

void check(const Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && at::isFloatingType(x.scalar_type()),
              "ekd::silu: expects a floating-point tensor on the CPU, got ", x.scalar_type(), " on ", x.device());
}

// Both derivatives of g y'(x) contracted with h: (h g y''(x), h y'(x)), in one pass
std::pair<Tensor, Tensor> second_derivatives(const Tensor& h_in, const Tensor& g, const Tensor& x,
                                             const Tensor& sigma) {
  const Tensor h = h_in.contiguous();
  Tensor dx = torch::empty_like(x), dg = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ekd_silu_double_backward", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>(),
                   *sp = sigma.data_ptr<scalar_t>();
    scalar_t *dxp = dx.data_ptr<scalar_t>(), *dgp = dg.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t s = sp[i], q = scalar_t(1) - s;
        dgp[i] = hp[i] * s * (scalar_t(1) + xp[i] * q);
        dxp[i] = hp[i] * gp[i] * s * q * (scalar_t(2) + xp[i] * (q - s));
      }
    });
  });
  return {dx, dg};
}

// g y'(x) as a function of (x, g): what a recorded SiLU backward returns. Its value is ATen's
// silu_backward; σ is kept for the second derivatives.
struct SiluGradient : torch::autograd::Function<SiluGradient> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& g) {
    const Tensor gc = g.contiguous();
    ctx->save_for_backward({x, gc, torch::sigmoid(x)});
    return torch::silu_backward(gc, x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &g = saved[1], &sigma = saved[2];
    if (torch::GradMode::is_enabled()) {  // a third derivative: ATen operators, differentiable again
      const Tensor s = torch::sigmoid(x), q = 1 - s;
      return {grad[0] * g * s * q * (2 + x * (q - s)), grad[0] * s * (1 + x * q)};
    }
    auto [dx, dg] = second_derivatives(grad[0], g, x, sigma);
    return {dx, dg};
  }
};

// The stock SiLU and, unrecorded, its stock backward: training on energies alone costs what it
// did; only a recorded backward (force training) goes through SiluGradient.
struct Silu : torch::autograd::Function<Silu> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x_in) {
    check(x_in);
    const Tensor x = x_in.contiguous();
    ctx->save_for_backward({x});
    return torch::silu(x);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const Tensor x = ctx->get_saved_variables()[0];
    if (torch::GradMode::is_enabled()) return {SiluGradient::apply(x, grad[0])};
    return {torch::silu_backward(grad[0].contiguous(), x)};
  }
};

Tensor silu_cpu(const Tensor& x) {
  check(x);
  return torch::silu(x);
}

Tensor silu_autograd(const Tensor& x) { return Silu::apply(x); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(ekd, m) { m.def("silu(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(ekd, CPU, m) { m.impl("silu", silu_cpu); }

TORCH_LIBRARY_IMPL(ekd, Autograd, m) { m.impl("silu", silu_autograd); }
