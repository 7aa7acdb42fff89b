// The training loss's RMSE + MAE of one labelled quantity as one operator:
// `torch.ops.ekd.rmse_plus_mae`, part of libekdops.so (see models/neighbour_sum.cpp), used by
// training/losses.py on the CPU.
//
//   loss = √(Σ w d² / Σ w) + Σ w |d| / Σ w,   d = prediction − target,
//
// over the entries whose target is finite (a NaN target means "no label here"), w the weight of
// the entry's row (all 1 without weights). In ATen operators this is ~18 operators forward and
// ~11 autograd nodes backward per quantity, and a training step of the demo student (energies,
// forces, uncertainties) is bound by the count of its operators: here it is one pass forward
// and one backward. Sums are accumulated in double.
//
// The gradient at an exact fit (every d = 0) is 0 here; a backward recorded with create_graph is
// written in ATen operators, so autograd differentiates it again.

#include <torch/torch.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Entries per row of `prediction`: every row of a quantity shares its row's weight
int64_t check(const Tensor& prediction, const Tensor& target, const Tensor& weight) {
  TORCH_CHECK(prediction.device().is_cpu() && target.device().is_cpu() && at::isFloatingType(prediction.scalar_type()),
              "ekd::rmse_plus_mae: expects floating-point prediction and target on the CPU");
  TORCH_CHECK(prediction.sizes() == target.sizes() && prediction.scalar_type() == target.scalar_type(),
              "ekd::rmse_plus_mae: prediction ", prediction.sizes(), " and target ", target.sizes(),
              " must have the same shape and dtype");
  const int64_t rows = prediction.dim() == 0 ? 1 : prediction.size(0);
  if (weight.defined())
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == rows && weight.scalar_type() == prediction.scalar_type() &&
                    weight.device().is_cpu(),
                "ekd::rmse_plus_mae: weight must be one value per row (", rows, ") of the prediction's dtype, got ",
                weight.sizes(), " ", weight.scalar_type());
  return rows == 0 ? 0 : prediction.numel() / rows;
}

struct Sums {
  double weight = 0, squares = 0, absolutes = 0;
  double rmse() const { return std::sqrt(squares / weight); }
};

template <typename scalar_t>
Sums sums(const scalar_t* p, const scalar_t* t, const scalar_t* w, int64_t n, int64_t per_row) {
  Sums s;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(t[i])) continue;
    const double wi = w ? double(w[i / per_row]) : 1.0, d = double(p[i]) - double(t[i]);
    s.weight += wi;
    s.squares += wi * d * d;
    s.absolutes += wi * std::abs(d);
  }
  return s;
}

// The checked, contiguous inputs and their sums: what the forward computes and the backward reuses
struct Inputs {
  Tensor prediction, target, weight;  // weight undefined: all 1
  int64_t per_row;
  Sums sums;
};

Inputs inputs(const Tensor& prediction, const Tensor& target, const std::optional<Tensor>& weight) {
  Inputs in{prediction.contiguous(), target.contiguous(), weight.has_value() ? weight->contiguous() : Tensor(), 0, {}};
  in.per_row = check(in.prediction, in.target, in.weight);
  AT_DISPATCH_FLOATING_TYPES(in.prediction.scalar_type(), "ekd_rmse_plus_mae", [&] {
    in.sums = sums(in.prediction.data_ptr<scalar_t>(), in.target.data_ptr<scalar_t>(),
                   in.weight.defined() ? in.weight.data_ptr<scalar_t>() : nullptr, in.prediction.numel(), in.per_row);
  });
  return in;
}

// NaN without a finite target or with zero weights
Tensor loss(const Inputs& in) {
  return torch::full({}, in.sums.rmse() + in.sums.absolutes / in.sums.weight, in.prediction.options());
}

Tensor rmse_plus_mae_cpu(const Tensor& prediction, const Tensor& target, const std::optional<Tensor>& weight) {
  return loss(inputs(prediction, target, weight));
}

// g ∂loss/∂prediction in one pass, from the forward's sums (0 at entries without a finite target)
Tensor gradient(const Tensor& g, const Tensor& prediction, const Tensor& target, const Tensor& weight, int64_t per_row,
                double total, double rmse) {
  Tensor out = torch::zeros_like(prediction);
  AT_DISPATCH_FLOATING_TYPES(prediction.scalar_type(), "ekd_rmse_plus_mae_backward", [&] {
    const scalar_t *p = prediction.data_ptr<scalar_t>(), *t = target.data_ptr<scalar_t>();
    const scalar_t* w = weight.defined() ? weight.data_ptr<scalar_t>() : nullptr;
    const double scale = g.item<double>() / total;
    const double per_square = rmse > 0 ? scale / rmse : 0.0;
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t i = 0; i < prediction.numel(); ++i) {
      if (!std::isfinite(t[i])) continue;
      const double wi = w ? double(w[i / per_row]) : 1.0, d = double(p[i]) - double(t[i]);
      o[i] = scalar_t(wi * (per_square * d + scale * double((d > 0) - (d < 0))));
    }
  });
  return out;
}

// The same in ATen operators, differentiable again
Tensor gradient_aten(const Tensor& g, const Tensor& prediction, const Tensor& target, const Tensor& weight) {
  const Tensor finite = torch::isfinite(target);
  const Tensor d = torch::where(finite, prediction - torch::where(finite, target, torch::zeros_like(target)),
                                torch::zeros_like(prediction));
  Tensor w = finite.to(prediction.scalar_type());
  if (weight.defined()) {  // one per row, broadcast over the row's entries (a 0-dim prediction: one)
    std::vector<int64_t> shape(prediction.dim(), 1);
    if (!shape.empty()) shape[0] = weight.size(0);
    w = w * weight.reshape(shape);
  }
  const Tensor total = w.sum(), rmse = ((w * d * d).sum() / total).sqrt();
  const Tensor per_square = torch::where(rmse > 0, 1 / (total * torch::where(rmse > 0, rmse, torch::ones_like(rmse))),
                                         torch::zeros_like(rmse));
  return g * w * (per_square * d + torch::sgn(d) / total);
}

struct RmsePlusMae : torch::autograd::Function<RmsePlusMae> {
  // the weights are constants, kept beside the saved inputs (an absent weight is not a tensor
  // input), with the forward's sums for the backward
  static Tensor forward(AutogradContext* ctx, const Tensor& prediction, const Tensor& target,
                        const std::optional<Tensor>& weight) {
    Inputs in = inputs(prediction, target, weight);
    // the inputs themselves, not their contiguous copies: a recorded backward differentiates them
    ctx->save_for_backward({prediction, target});
    if (in.weight.defined()) ctx->saved_data["weight"] = in.weight;
    ctx->saved_data["per_row"] = in.per_row;
    ctx->saved_data["total"] = in.sums.weight;
    ctx->saved_data["rmse"] = in.sums.rmse();
    return loss(in);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &prediction = saved[0], &target = saved[1];
    const auto kept = ctx->saved_data.find("weight");
    const Tensor weight = kept == ctx->saved_data.end() ? Tensor() : kept->second.toTensor();
    const Tensor d_prediction =
        torch::GradMode::is_enabled()
            ? gradient_aten(grad[0], prediction, target, weight)
            : gradient(grad[0], prediction.contiguous(), target.contiguous(), weight, ctx->saved_data["per_row"].toInt(),
                       ctx->saved_data["total"].toDouble(), ctx->saved_data["rmse"].toDouble());
    return {d_prediction, ctx->needs_input_grad(1) ? -d_prediction : Tensor(), Tensor()};
  }
};

Tensor rmse_plus_mae_autograd(const Tensor& prediction, const Tensor& target, const std::optional<Tensor>& weight) {
  TORCH_CHECK(!weight.has_value() || !weight->requires_grad(),
              "ekd::rmse_plus_mae: the weights are constants; they cannot require a gradient");
  return RmsePlusMae::apply(prediction, target, weight);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(ekd, m) { m.def("rmse_plus_mae(Tensor prediction, Tensor target, Tensor? weight) -> Tensor"); }

TORCH_LIBRARY_IMPL(ekd, CPU, m) { m.impl("rmse_plus_mae", rmse_plus_mae_cpu); }

TORCH_LIBRARY_IMPL(ekd, Autograd, m) { m.impl("rmse_plus_mae", rmse_plus_mae_autograd); }
