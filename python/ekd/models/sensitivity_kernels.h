// The loops of sensitivity.cpp, included there twice (compile_twice.h): once for any CPU and
// once compiled for AVX2 + FMA (chosen at run time, cpu_features.h). Each takes a range of edges
// [begin, end); the loops over the sensitivities v have no branches, so the compiler vectorises
// them, and in float32 so does the cutoff's and exp's arithmetic (polynomials instead of libm). No
// headers here: sensitivity.cpp includes what they need and defines kFloor and kOutside.
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


// log(y) in float32 for y in (0, 1], vectorised by the compiler: y = 2^e m with m in [sqrt(1/2),
// sqrt(2)), log m = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.172, by its series to t^9
inline float log_float(float y) {
  int32_t bits;
  __builtin_memcpy(&bits, &y, sizeof bits);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  const int32_t mantissa_bits = (bits & 0x7fffff) | 0x3f800000;  // m in [1, 2)
  float m;
  __builtin_memcpy(&m, &mantissa_bits, sizeof m);
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;
  e = high ? e + 1 : e;
  const float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
  const float atanh = t * (1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9)))));
  return static_cast<float>(e) * 0.693147180559945f + 2.0f * atanh;
}

// The cutoff's terms of an edge: L = log cos^2(theta) and L' = -(pi / r_c) tan(theta), kOutside
// and 0 beyond the cutoff. With phi = pi/2 - theta = (pi/2)(1 - r/r_c), cos(theta) = sin(phi)
// and sin(theta) = cos(phi), accurate up to the cutoff, where theta nears pi/2.
template <typename T>
inline void cutoff_terms(T r, T cutoff, T& log_cut, T& log_cut_slope) {
  const T phi = T(0.5 * M_PI) * (T(1) - r / cutoff);
  if constexpr (std::is_same<T, float>::value) {  // polynomials, vectorised (libm was ~9 ns per edge)
    const float p = std::max(phi, 1e-30f), p2 = p * p;  // beyond the cutoff: selected away below
    const float sine = p * (1.0f + p2 * (-1.0f / 6 + p2 * (1.0f / 120 + p2 * (-1.0f / 5040 + p2 * (1.0f / 362880 +
                           p2 * (-1.0f / 39916800 + p2 * (1.0f / 6227020800.0f)))))));
    const float cosine = 1.0f + p2 * (-0.5f + p2 * (1.0f / 24 + p2 * (-1.0f / 720 + p2 * (1.0f / 40320 +
                             p2 * (-1.0f / 3628800 + p2 * (1.0f / 479001600))))));
    const bool inside = r < cutoff;
    log_cut = inside ? 2.0f * log_float(sine) : float(kOutside);
    log_cut_slope = inside ? -float(M_PI) / cutoff * cosine / sine : 0.0f;
  } else {
    if (r >= cutoff) {
      log_cut = T(kOutside);
      log_cut_slope = T(0);
      return;
    }
    const T sine = std::sin(phi);
    log_cut = T(2) * std::log(sine);
    log_cut_slope = -T(M_PI) / cutoff * std::cos(phi) / sine;
  }
}

template <typename T>
inline T cutoff_log(T r, T cutoff) {
  T log_cut, log_cut_slope;
  cutoff_terms(r, cutoff, log_cut, log_cut_slope);
  return log_cut;
}

// x clamped at the floor for every edge (float32: exp(x), see exp_float), and L' where `slope` is
// not null. The cutoff's terms first, for a batch of edges at once (one vectorised loop), then
// each edge's row.
template <typename T>
void forward_rows(const T* r, const T* coef, T m, T cutoff, int64_t V, T* x, T* slope, int64_t begin, int64_t end) {
  constexpr int64_t kBatch = 256;
  T log_cuts[kBatch], slopes[kBatch];
  for (int64_t start = begin; start < end; start += kBatch) {
    const int64_t n = std::min(kBatch, end - start);
    for (int64_t k = 0; k < n; ++k) cutoff_terms(r[start + k], cutoff, log_cuts[k], slopes[k]);
    if (slope != nullptr)
      for (int64_t k = 0; k < n; ++k) slope[start + k] = slopes[k];
    for (int64_t k = 0; k < n; ++k) {
      const T u = T(1) / r[start + k] - m, log_cut = log_cuts[k];
      T* xe = x + (start + k) * V;
      for (int64_t v = 0; v < V; ++v)
        xe[v] = std::max((coef[v] * u + coef[V + v]) * u + coef[2 * V + v] + coef[3 * V + v] * log_cut, T(kFloor));
      if constexpr (std::is_same<T, float>::value) {
        for (int64_t v = 0; v < V; ++v) xe[v] = exp_float(std::min(xe[v], 88.0f));
      }
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
