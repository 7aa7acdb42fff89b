// The loops of sensitivity.cpp, included there twice (compile_twice.h): once for any CPU and
// once compiled for AVX2 + FMA (chosen at run time, cpu_features.h). Each takes a range of edges [begin, end); the
// sums over the sensitivities v have no branches, so the compiler vectorises them. No headers
// here: sensitivity.cpp includes what they need and defines kFloor and kOutside.
//
//     x[e, v] = (a_v u + b_v) u + c_v + d_v L(r),   u = 1/r - m,   (a, b, c, d) = coef[0..3, :]
//     L(r) = log cos^2(theta), theta = pi r / 2 r_c, inside the cutoff; kOutside beyond it
//     L'(r) = -(pi / r_c) tan(theta),   L''(r) = -(pi^2 / 2 r_c^2) (1 + tan^2(theta))
//
// L' is computed once, in the forward, and kept per edge ("slope"): the backward passes then call
// no tangent, which took more time than the rest of the backward (14 ns per edge, float32).

// exp(x) in float32 for x in [-60, 88] (callers clamp), vectorised by the compiler:
// x = k ln 2 + f with |f| <= ln 2 / 2, exp(x) = 2^k p(f), p Cephes' degree-7 polynomial; at most
// 2.3e-7 relative error over [-60, 10] (two float32 ulp, built as this file is), at 0.3 ns per
// value against ATen's vectorised exp at 0.5-0.8 ns (one thread, measured 2026-12-02)
inline float exp_float(float x) {
  // rounded explicitly: this file is built with -fassociative-math, which would fold the
  // add-and-subtract-2^23 rounding trick away
  const float k = std::nearbyint(x * 1.44269504088896341f);
  const float f = (x - k * 0.693359375f) - k * -2.12194440e-4f;  // ln 2 in two parts (Cody-Waite)
  const float p = (((((1.9875691500e-4f * f + 1.3981999507e-3f) * f + 8.3334519073e-3f) * f + 4.1665795894e-2f) * f +
                    1.6666665459e-1f) * f + 5.0000001201e-1f) * (f * f) + f + 1.0f;
  const int32_t exponent = (static_cast<int32_t>(k) + 127) << 23;  // 2^k as a float's bits
  float scale;
  __builtin_memcpy(&scale, &exponent, sizeof scale);
  return p * scale;
}

template <typename T>
inline T cutoff_log(T r, T cutoff) {
  if (r >= cutoff) return T(kOutside);
  const T c = std::cos(T(0.5 * M_PI) * r / cutoff);
  return std::log(c * c);
}

// x clamped at the floor for every edge (float32: exp(x), see exp_float), and L' where `slope` is
// not null
template <typename T>
void forward_rows(const T* r, const T* coef, T m, T cutoff, int64_t V, T* x, T* slope, int64_t begin, int64_t end) {
  for (int64_t e = begin; e < end; ++e) {
    const T re = r[e], u = T(1) / re - m;
    T log_cut = T(kOutside), log_cut_slope = T(0);
    if (re < cutoff) {
      const T c = std::cos(T(0.5 * M_PI) * re / cutoff);
      log_cut = std::log(c * c);
      // tan from the cosine: theta lies in [0, pi/2), so sin = sqrt(1 - cos^2) >= 0
      log_cut_slope = -T(M_PI) / cutoff * std::sqrt(std::max(T(1) - c * c, T(0))) / c;
    }
    if (slope != nullptr) slope[e] = log_cut_slope;
    T* xe = x + e * V;
    for (int64_t v = 0; v < V; ++v)
      xe[v] = std::max((coef[v] * u + coef[V + v]) * u + coef[2 * V + v] + coef[3 * V + v] * log_cut, T(kFloor));
    if constexpr (std::is_same<T, float>::value) {
      for (int64_t v = 0; v < V; ++v) xe[v] = exp_float(std::min(xe[v], 88.0f));
    }
  }
}

// grad_r[e] = sum_v g s x'_v (x' = dx/dr; no slope where x was clamped, i.e. s at the floor), and
// where `coef_grad` is not null, adds sum_e g s dx/dcoef into it (4, V)
template <typename T>
void backward_rows(const T* g, const T* s, const T* r, const T* slope, const T* coef, T m, T cutoff, T floor_s,
                   int64_t V, T* grad_r, T* coef_grad, int64_t begin, int64_t end) {
  for (int64_t e = begin; e < end; ++e) {
    const T re = r[e], u = T(1) / re - m, du = -T(1) / (re * re), two_u_du = T(2) * u * du, lp = slope[e];
    const T *ge = g + e * V, *se = s + e * V;
    T sum = 0;
    for (int64_t v = 0; v < V; ++v) {
      const T w = se[v] > floor_s ? ge[v] * se[v] : T(0);
      sum += w * (coef[v] * two_u_du + coef[V + v] * du + coef[3 * V + v] * lp);
    }
    grad_r[e] = sum;
    if (coef_grad == nullptr) continue;
    const T log_cut = cutoff_log(re, cutoff);
    for (int64_t v = 0; v < V; ++v) {
      const T w = se[v] > floor_s ? ge[v] * se[v] : T(0);
      coef_grad[v] += w * u * u;
      coef_grad[V + v] += w * u;
      coef_grad[2 * V + v] += w;
      coef_grad[3 * V + v] += w * log_cut;
    }
  }
}

// The backward of backward_rows' grad_r, given h = dL/d(grad_r) (see sensitivity.cpp): writes
// grad_g, grad_s (E, V) and grad_r (E,) where not null, adds the coefficients' into coef_grad
template <typename T>
void double_backward_rows(const T* h, const T* g, const T* s, const T* r, const T* slope, const T* coef, T m,
                          T cutoff, T floor_s, int64_t V, T* grad_g, T* grad_s, T* grad_r, T* coef_grad,
                          int64_t begin, int64_t end) {
  for (int64_t e = begin; e < end; ++e) {
    const T re = r[e], he = h[e], u = T(1) / re - m, lp = slope[e];
    const T du = -T(1) / (re * re), d2u = T(-2) * du / re;
    const T tan = -lp * cutoff / T(M_PI);
    const T lpp = re < cutoff ? -T(0.5 * M_PI * M_PI) / (cutoff * cutoff) * (T(1) + tan * tan) : T(0);
    const T *ge = g + e * V, *se = s + e * V;
    T sum = 0;
    for (int64_t v = 0; v < V; ++v) {
      const T live = se[v] > floor_s ? he : T(0);  // no slope where x was clamped
      const T a = coef[v], b = coef[V + v], d = coef[3 * V + v];
      const T x1 = (T(2) * a * u + b) * du + d * lp;
      const T x2 = T(2) * a * du * du + (T(2) * a * u + b) * d2u + d * lpp;
      if (grad_g != nullptr) grad_g[e * V + v] = live * se[v] * x1;
      if (grad_s != nullptr) grad_s[e * V + v] = live * ge[v] * x1;
      sum += live * ge[v] * se[v] * x2;
    }
    if (grad_r != nullptr) grad_r[e] = sum;
    if (coef_grad == nullptr) continue;
    const T two_u_du = T(2) * u * du;
    for (int64_t v = 0; v < V; ++v) {
      const T q = (se[v] > floor_s ? he : T(0)) * ge[v] * se[v];
      coef_grad[v] += q * two_u_du;
      coef_grad[V + v] += q * du;
      coef_grad[3 * V + v] += q * lp;
    }
  }
}
