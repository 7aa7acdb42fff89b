// HIP-NN's distance sensitivities in one pass over the edges: the operator
// `torch.ops.ekd.sensitivities`, part of libekdops.so (see neighbour_sum.cpp), used by
// models/radial.py on the CPU.
//
//     s[e, v] = exp(max(x[e, v], -60)),   x = a_v u^2 + b_v u + c_v + d_v L(r),   u = 1/r - m,
//     L(r) = log cos^2(pi r / 2 r_c) inside the cutoff, -1e4 outside
//
// with the coefficients (a, b, c, d) = coefficients[0..3, v] computed in Python from the
// trainable centres and widths (radial.py). Written with stock operators this is a dozen passes
// over the (edges x sensitivities) table forward and as many backward; here the forward writes
// s once (x, then exp: its own in float32, ATen's block by block in float64) and each edge's slope
// L'(r), and the backward reads g, s and the slopes once to give the gradient with respect to r
// and to the coefficients. The loops are in sensitivity_kernels.h.
//
// Second derivatives (training with a force loss differentiates the forces again): when the
// backward is recorded (create_graph) and only the gradient with respect to r is wanted, as for
// forces, it is itself an operator (`SensitivitiesBackward`) whose backward is one more pass over
// the edges, reading g, s, r and the slopes once. Third derivatives, and a recorded gradient with respect to
// the coefficients, re-evaluate the formula with ATen operators and differentiate that.

#include <torch/torch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_features.h"

constexpr double kFloor = -60.0;     // exponent floor: exp(-60) = 8.8e-27, still a normal float32
constexpr double kOutside = -1.0e4;  // L(r) beyond the cutoff: far below the floor

namespace ekd_sensitivity_kernels {
#define EKD_KERNELS "sensitivity_kernels.h"
#include "compile_twice.h"
}  // namespace ekd_sensitivity_kernels

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int64_t kGrain = 256;       // edges per task when threads share the work
constexpr int64_t kExpBlock = 2048;  // edges per block of the forward: 128 KB of float32 at V = 16

// the exponent was clamped (no slope) where s is exp(-60); the threshold sits just above it,
// dropping slopes of exponents within 1e-6 of the floor too (contributions below 1e-32)
template <typename T>
T floor_sensitivity() {
  return T(std::exp(kFloor) * (1.0 + 1e-6));
}

void check(const Tensor& r, const Tensor& coefficients) {
  TORCH_CHECK(r.dim() == 1 && coefficients.dim() == 2 && coefficients.size(0) == 4 &&
                  r.scalar_type() == coefficients.scalar_type() && r.device().is_cpu() &&
                  coefficients.device().is_cpu(),
              "ekd::sensitivities: expects distances (E,) and coefficients (4, V) of one dtype, on the CPU");
}

// s (E, V), and with `want_slope` L'(r) per edge (E,), which the backward passes read
std::tuple<Tensor, Tensor> sensitivities_and_slopes(const Tensor& r_in, const Tensor& coef_in, double m, double cutoff,
                                                    bool want_slope) {
  check(r_in, coef_in);
  const Tensor r = r_in.contiguous(), coef = coef_in.contiguous();
  const int64_t E = r.size(0), V = coef.size(1);
  Tensor out = torch::empty({E, V}, r.options());
  Tensor slope = want_slope ? torch::empty({E}, r.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "ekd_sensitivities", [&] {
    const scalar_t *rp = r.data_ptr<scalar_t>(), *cp = coef.data_ptr<scalar_t>();
    scalar_t *op = out.data_ptr<scalar_t>(), *sp = want_slope ? slope.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, E, kGrain, [&](int64_t begin, int64_t end) {
      // float32: exp in the loop (exp_float); float64: ATen's exp, block by block while the
      // block is in cache (one pass over memory instead of three: exp over the whole table took
      // 12 ms of a 165 ms force call)
      for (int64_t start = begin; start < end; start += kExpBlock) {
        const int64_t stop = std::min(start + kExpBlock, end);
        EKD_DISPATCH(ekd_sensitivity_kernels,
                   forward_rows<scalar_t>(rp, cp, scalar_t(m), scalar_t(cutoff), V, op, sp, start, stop));
        if (!std::is_same<scalar_t, float>::value) out.narrow(0, start, stop - start).exp_();
      }
    });
  });
  return {out, slope};
}

Tensor sensitivities_cpu(const Tensor& r, const Tensor& coef, double m, double cutoff) {
  return std::get<0>(sensitivities_and_slopes(r, coef, m, cutoff, false));
}

// gradients of sum(g * s) with respect to r (E,) and the coefficients (4, V)
std::tuple<Tensor, Tensor> sensitivities_backward_cpu(const Tensor& g_in, const Tensor& s_in, const Tensor& r_in,
                                                      const Tensor& slope, const Tensor& coef_in, double m,
                                                      double cutoff, bool want_coefficients) {
  const Tensor g = g_in.contiguous(), s = s_in.contiguous(), r = r_in.contiguous(), coef = coef_in.contiguous();
  const int64_t E = r.size(0), V = coef.size(1);
  Tensor grad_r = torch::empty({E}, r.options());
  const int64_t threads = want_coefficients && E > kGrain ? at::get_num_threads() : 1;
  Tensor grad_coef = torch::zeros({threads, 4, want_coefficients ? V : 0}, r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "ekd_sensitivities_backward", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>(), *rp = r.data_ptr<scalar_t>(),
                   *lp = slope.data_ptr<scalar_t>(), *cp = coef.data_ptr<scalar_t>();
    scalar_t *grp = grad_r.data_ptr<scalar_t>(), *gcp = grad_coef.data_ptr<scalar_t>();
    at::parallel_for(0, E, kGrain, [&](int64_t begin, int64_t end) {
      scalar_t* mine = want_coefficients ? gcp + std::min<int64_t>(at::get_thread_num(), threads - 1) * 4 * V : nullptr;
      EKD_DISPATCH(ekd_sensitivity_kernels,
                   backward_rows<scalar_t>(gp, sp, rp, lp, cp, scalar_t(m), scalar_t(cutoff),
                                           floor_sensitivity<scalar_t>(), V, grp, mine, begin, end));
    });
  });
  return {grad_r, want_coefficients ? grad_coef.sum(0) : Tensor()};
}

// The backward of `sensitivities_backward_cpu`'s grad_r = Σ_v g s x'_v (x' = dx/dr), given h =
// dL/d(grad_r): the gradients with respect to g (E, V), s (E, V), r (E,) at fixed s, and the
// coefficients (4, V) at fixed s. Autograd passes the one with respect to s on to the forward's
// backward (s = exp(x)), which turns it into the remaining r and coefficient terms.
//   dg = h s x',  ds = h g x',  dr = h Σ_v g s x'',  dc_k = Σ_e h g s ∂x'/∂c_k,
//   x' = (2a u + b) u' + d L',  x'' = 2a u'^2 + (2a u + b) u'' + d L'',  u' = -1/r^2, u'' = 2/r^3
std::vector<Tensor> sensitivities_double_backward_cpu(const Tensor& h_in, const Tensor& g_in, const Tensor& s_in,
                                                      const Tensor& r_in, const Tensor& slope, const Tensor& coef_in,
                                                      double m, double cutoff, std::array<bool, 4> want) {
  const Tensor h = h_in.contiguous(), g = g_in.contiguous(), s = s_in.contiguous(), r = r_in.contiguous(),
               coef = coef_in.contiguous();
  const int64_t E = r.size(0), V = coef.size(1);
  Tensor grad_g = want[0] ? torch::empty({E, V}, r.options()) : Tensor();
  Tensor grad_s = want[1] ? torch::empty({E, V}, r.options()) : Tensor();
  Tensor grad_r = want[2] ? torch::empty({E}, r.options()) : Tensor();
  const int64_t threads = want[3] && E > kGrain ? at::get_num_threads() : 1;
  Tensor grad_coef = torch::zeros({threads, 4, want[3] ? V : 0}, r.options());
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "ekd_sensitivities_double_backward", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>(),
                   *rp = r.data_ptr<scalar_t>(), *lp = slope.data_ptr<scalar_t>(), *cp = coef.data_ptr<scalar_t>();
    scalar_t* ggp = want[0] ? grad_g.data_ptr<scalar_t>() : nullptr;
    scalar_t* gsp = want[1] ? grad_s.data_ptr<scalar_t>() : nullptr;
    scalar_t* grp = want[2] ? grad_r.data_ptr<scalar_t>() : nullptr;
    scalar_t* gcp = grad_coef.data_ptr<scalar_t>();
    at::parallel_for(0, E, kGrain, [&](int64_t begin, int64_t end) {
      scalar_t* mine = want[3] ? gcp + std::min<int64_t>(at::get_thread_num(), threads - 1) * 4 * V : nullptr;
      EKD_DISPATCH(ekd_sensitivity_kernels,
                   double_backward_rows<scalar_t>(hp, gp, sp, rp, lp, cp, scalar_t(m), scalar_t(cutoff),
                                                  floor_sensitivity<scalar_t>(), V, ggp, gsp, grp, mine, begin, end));
    });
  });
  return {grad_g, grad_s, grad_r, want[3] ? grad_coef.sum(0) : Tensor()};
}

// the same formula in ATen operators (differentiable), for second derivatives
Tensor sensitivities_composite(const Tensor& r, const Tensor& coef, double m, double cutoff) {
  const Tensor u = r.reciprocal() - m;
  const Tensor inside = r < cutoff;
  const Tensor theta = (0.5 * M_PI / cutoff) * torch::where(inside, r, torch::zeros_like(r));
  const Tensor log_cut = torch::where(inside, torch::log(torch::cos(theta).pow(2)), torch::full_like(r, kOutside));
  const Tensor powers = torch::stack({u * u, u, torch::ones_like(u), log_cut}, 1);
  return torch::exp(torch::matmul(powers, coef).clamp_min(kFloor));
}

// grad_r of the backward as an operator of (g, s, r, coefficients), so that training with a force
// loss differentiates it in one pass (`sensitivities_double_backward_cpu`); the slopes L'(r) are
// a constant input, their dependence on r being part of that pass
struct SensitivitiesBackward : torch::autograd::Function<SensitivitiesBackward> {
  static Tensor forward(AutogradContext* ctx, const Tensor& g, const Tensor& s, const Tensor& r, const Tensor& coef,
                        const Tensor& slope, double m, double cutoff) {
    ctx->save_for_backward({g, s, r, coef, slope});
    ctx->saved_data["m"] = m;
    ctx->saved_data["cutoff"] = cutoff;
    return std::get<0>(sensitivities_backward_cpu(g, s, r, slope, coef, m, cutoff, false));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &g = saved[0], &s = saved[1], &r = saved[2], &coef = saved[3], &slope = saved[4];
    const double m = ctx->saved_data["m"].toDouble(), cutoff = ctx->saved_data["cutoff"].toDouble();
    const Tensor h = grad[0].defined() ? grad[0] : torch::zeros_like(r);
    if (torch::GradMode::is_enabled()) {  // third derivatives: the composite formula, s recomputed from r
      const Tensor s_again = sensitivities_composite(r, coef, m, cutoff);
      const Tensor grad_r = torch::autograd::grad({s_again}, {r}, {g}, true, true)[0];
      std::vector<Tensor> inputs{g, r};
      if (ctx->needs_input_grad(3)) inputs.push_back(coef);
      const auto wanted = torch::autograd::grad({grad_r}, inputs, {h}, true, true, true);
      return {wanted[0], Tensor(), wanted[1], ctx->needs_input_grad(3) ? wanted[2] : Tensor(), Tensor(), Tensor(),
              Tensor()};
    }
    auto grads = sensitivities_double_backward_cpu(
        h, g, s, r, slope, coef, m, cutoff,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2), ctx->needs_input_grad(3)});
    return {grads[0], grads[1], grads[2], grads[3], Tensor(), Tensor(), Tensor()};
  }
};

struct Sensitivities : torch::autograd::Function<Sensitivities> {
  static Tensor forward(AutogradContext* ctx, const Tensor& r, const Tensor& coef, double m, double cutoff) {
    // the slopes L'(r) too, for the backward, when anything is differentiated
    const bool slopes = r.requires_grad() || coef.requires_grad();
    auto [s, slope] = sensitivities_and_slopes(r, coef, m, cutoff, slopes);
    ctx->save_for_backward({r, coef, s, slope});
    ctx->saved_data["m"] = m;
    ctx->saved_data["cutoff"] = cutoff;
    return s;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const double m = ctx->saved_data["m"].toDouble(), cutoff = ctx->saved_data["cutoff"].toDouble();
    const bool want_r = ctx->needs_input_grad(0), want_coef = ctx->needs_input_grad(1);
    if (torch::GradMode::is_enabled() && want_r && !want_coef) {  // create_graph for forces
      return {SensitivitiesBackward::apply(grad[0], saved[2], saved[0], saved[1], saved[3], m, cutoff), Tensor(),
              Tensor(), Tensor()};
    }
    if (torch::GradMode::is_enabled()) {  // create_graph, coefficients too: the composite formula
      std::vector<Tensor> inputs, wanted;
      Tensor r = saved[0], coef = saved[1];
      const Tensor s = sensitivities_composite(r, coef, m, cutoff);
      if (want_r) inputs.push_back(r);
      if (want_coef) inputs.push_back(coef);
      if (!inputs.empty()) wanted = torch::autograd::grad({s}, inputs, {grad[0]}, true, true, true);
      Tensor grad_r = want_r ? wanted[0] : Tensor(), grad_coef = want_coef ? wanted[want_r ? 1 : 0] : Tensor();
      return {grad_r, grad_coef, Tensor(), Tensor()};
    }
    auto [grad_r, grad_coef] =
        sensitivities_backward_cpu(grad[0], saved[2], saved[0], saved[3], saved[1], m, cutoff, want_coef);
    return {want_r ? grad_r : Tensor(), grad_coef, Tensor(), Tensor()};
  }
};

Tensor sensitivities_autograd(const Tensor& r, const Tensor& coef, double m, double cutoff) {
  return Sensitivities::apply(r, coef, m, cutoff);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ekd, m) {
  m.def("sensitivities(Tensor r, Tensor coefficients, float m, float cutoff) -> Tensor");
}

TORCH_LIBRARY_IMPL(ekd, CPU, m) { m.impl("sensitivities", sensitivities_cpu); }

TORCH_LIBRARY_IMPL(ekd, Autograd, m) { m.impl("sensitivities", sensitivities_autograd); }
