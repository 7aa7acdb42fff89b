// The loops of neighbour_sum.cpp, included there twice (compile_twice.h): once for any CPU and
// once compiled for AVX2 + FMA (chosen at run time). Each loop takes a range of receivers
// [begin, end) and their edges (row_ptr, senders). Values move in 32-byte vectors (GCC / Clang
// vector extensions: 8 floats or 4 doubles); a chunk of K vectors of a feature row is summed in
// registers, with two independent sums where one would wait on the latency of each multiply-add.
// Shapes the vector loops do not cover (features not whole vectors, many sensitivities) take the
// plain loops at the end. No headers here: neighbour_sum.cpp includes what they need.

template <typename T>
struct Simd {
  static constexpr int64_t lanes = 32 / sizeof(T);
  typedef T vec __attribute__((vector_size(32)));
  static inline vec load(const T* p) {
    vec v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  }
  static inline void store(T* p, const vec& v) { __builtin_memcpy(p, &v, sizeof v); }
};

// environment: out[i, v, :] = sum_{e into i} s[e, v] z[j_e, :]
template <typename T, int K>
void environment_rows(const T* s, const T* z, const int64_t* row_ptr, const int64_t* senders, T* out, int64_t V,
                      int64_t F, int64_t begin, int64_t end) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t width = K * S::lanes;  // features per chunk
  for (int64_t i = begin; i < end; ++i) {
    const int64_t e0 = row_ptr[i], e1 = row_ptr[i + 1];
    for (int64_t c = 0; c < F; c += width) {
      int64_t v = 0;
      for (; v + 1 < V; v += 2) {  // two sensitivities at a time: each z chunk loaded once for both
        vec a0[K] = {}, a1[K] = {};
        for (int64_t e = e0; e < e1; ++e) {
          const T* zj = z + senders[e] * F + c;
          const T s0 = s[e * V + v], s1 = s[e * V + v + 1];
#pragma GCC unroll 4
          for (int k = 0; k < K; ++k) {
            const vec zk = S::load(zj + k * S::lanes);
            a0[k] += s0 * zk;
            a1[k] += s1 * zk;
          }
        }
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) {
          S::store(out + (i * V + v) * F + c + k * S::lanes, a0[k]);
          S::store(out + (i * V + v + 1) * F + c + k * S::lanes, a1[k]);
        }
      }
      if (v < V) {  // an odd number of sensitivities: the last one alone
        vec a0[K] = {};
        for (int64_t e = e0; e < e1; ++e) {
          const T* zj = z + senders[e] * F + c;
          const T s0 = s[e * V + v];
#pragma GCC unroll 4
          for (int k = 0; k < K; ++k) a0[k] += s0 * S::load(zj + k * S::lanes);
        }
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) S::store(out + (i * V + v) * F + c + k * S::lanes, a0[k]);
      }
    }
  }
}

// edge_contraction: out[e, :] = sum_f z[j_e, f] g[i, :, f] for the edges into i. Each receiver's
// g (V x F) is first transposed into `gt` (F x Vp, a few kilobytes that stay in L1), the
// sensitivities padded with zeros to Vp = K vectors, so that the sum over f is a broadcast and K
// multiply-adds, never a sum across lanes. (Transposing the whole (R, V, F) table with ATen
// instead was a strided copy that took as long as the contraction itself.)
template <typename T, int K>
void edge_contraction_rows(const T* g, const T* z, const int64_t* row_ptr, const int64_t* senders, T* out, int64_t V,
                           int64_t F, int64_t begin, int64_t end) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t Vp = K * S::lanes;
  std::vector<T> buffer(static_cast<size_t>(F * Vp), T(0));  // padding columns stay zero
  T* gt = buffer.data();
  for (int64_t i = begin; i < end; ++i) {
    if (row_ptr[i] == row_ptr[i + 1]) continue;
    const T* gi = g + i * V * F;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t f = 0; f < F; ++f) gt[f * Vp + v] = gi[v * F + f];
    int64_t e = row_ptr[i];
    // four edges at a time: each vector of gt, loaded once, serves four edges (loads, not
    // multiply-adds, bound this loop: one load per multiply-add edge by edge)
    for (; e + 3 < row_ptr[i + 1]; e += 4) {
      const T *z0 = z + senders[e] * F, *z1 = z + senders[e + 1] * F, *z2 = z + senders[e + 2] * F,
              *z3 = z + senders[e + 3] * F;
      vec a0[K] = {}, a1[K] = {}, a2[K] = {}, a3[K] = {};
      for (int64_t f = 0; f < F; ++f) {
        const T x0 = z0[f], x1 = z1[f], x2 = z2[f], x3 = z3[f];
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) {
          const vec gk = S::load(gt + f * Vp + k * S::lanes);
          a0[k] += x0 * gk;
          a1[k] += x1 * gk;
          a2[k] += x2 * gk;
          a3[k] += x3 * gk;
        }
      }
      T sums[4][Vp];
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) {
        S::store(sums[0] + k * S::lanes, a0[k]);
        S::store(sums[1] + k * S::lanes, a1[k]);
        S::store(sums[2] + k * S::lanes, a2[k]);
        S::store(sums[3] + k * S::lanes, a3[k]);
      }
      for (int q = 0; q < 4; ++q)
        for (int64_t v = 0; v < V; ++v) out[(e + q) * V + v] = sums[q][v];
    }
    for (; e < row_ptr[i + 1]; ++e) {
      const T* zj = z + senders[e] * F;
      vec a0[K] = {}, a1[K] = {};
      int64_t f = 0;
      for (; f + 1 < F; f += 2) {
        const T x0 = zj[f], x1 = zj[f + 1];
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) {
          a0[k] += x0 * S::load(gt + f * Vp + k * S::lanes);
          a1[k] += x1 * S::load(gt + (f + 1) * Vp + k * S::lanes);
        }
      }
      if (f < F) {
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) a0[k] += zj[f] * S::load(gt + f * Vp + k * S::lanes);
      }
      T sums[Vp];
#pragma GCC unroll 4
      for (int k = 0; k < K; ++k) S::store(sums + k * S::lanes, a0[k] + a1[k]);
      for (int64_t v = 0; v < V; ++v) out[e * V + v] = sums[v];
    }
  }
}

// sender_sum: out[j_e, :] += sum_v s[e, v] g[i, v, :] for the edges into i: each receiver's g
// (V x F, kilobytes) is read once, while it is in cache, and `out` (N x F, small) takes the
// sums; threads each add into their own copy of `out`
template <typename T, int K>
void sender_sum_rows(const T* s, const T* g, const int64_t* row_ptr, const int64_t* senders, T* out, int64_t V,
                     int64_t F, int64_t begin, int64_t end) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int64_t width = K * S::lanes;
  for (int64_t i = begin; i < end; ++i) {
    const T* gi = g + i * V * F;
    int64_t e = row_ptr[i];
    // two edges at a time: each vector of g, loaded once, serves both (loads bound this loop)
    for (; e + 1 < row_ptr[i + 1]; e += 2) {
      const T *s0 = s + e * V, *s1 = s + (e + 1) * V;
      T *o0 = out + senders[e] * F, *o1 = out + senders[e + 1] * F;
      for (int64_t c = 0; c < F; c += width) {
        vec a0[K] = {}, a1[K] = {};
        for (int64_t v = 0; v < V; ++v) {
          const T x0 = s0[v], x1 = s1[v];
#pragma GCC unroll 4
          for (int k = 0; k < K; ++k) {
            const vec gk = S::load(gi + v * F + c + k * S::lanes);
            a0[k] += x0 * gk;
            a1[k] += x1 * gk;
          }
        }
        // o0 first, then o1: the two edges may share a sender
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) S::store(o0 + c + k * S::lanes, S::load(o0 + c + k * S::lanes) + a0[k]);
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) S::store(o1 + c + k * S::lanes, S::load(o1 + c + k * S::lanes) + a1[k]);
      }
    }
    for (; e < row_ptr[i + 1]; ++e) {
      const T* se = s + e * V;
      T* oj = out + senders[e] * F;
      for (int64_t c = 0; c < F; c += width) {
        vec a0[K] = {}, a1[K] = {};
        int64_t v = 0;
        for (; v + 1 < V; v += 2) {
          const T x0 = se[v], x1 = se[v + 1];
#pragma GCC unroll 4
          for (int k = 0; k < K; ++k) {
            a0[k] += x0 * S::load(gi + v * F + c + k * S::lanes);
            a1[k] += x1 * S::load(gi + (v + 1) * F + c + k * S::lanes);
          }
        }
        if (v < V) {
#pragma GCC unroll 4
          for (int k = 0; k < K; ++k) a0[k] += se[v] * S::load(gi + v * F + c + k * S::lanes);
        }
#pragma GCC unroll 4
        for (int k = 0; k < K; ++k) S::store(oj + c + k * S::lanes, S::load(oj + c + k * S::lanes) + a0[k] + a1[k]);
      }
    }
  }
}

// ---- plain loops, any shape -------------------------------------------------------------------

template <typename T>
void environment_rows_plain(const T* s, const T* z, const int64_t* row_ptr, const int64_t* senders, T* out,
                            int64_t V, int64_t F, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    T* o = out + i * V * F;
    for (int64_t x = 0; x < V * F; ++x) o[x] = T(0);
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
      const T* zj = z + senders[e] * F;
      for (int64_t v = 0; v < V; ++v)
        for (int64_t f = 0; f < F; ++f) o[v * F + f] += s[e * V + v] * zj[f];
    }
  }
}

template <typename T>
void edge_contraction_rows_plain(const T* g, const T* z, const int64_t* row_ptr, const int64_t* senders, T* out,
                                 int64_t V, int64_t F, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
      const T* zj = z + senders[e] * F;
      for (int64_t v = 0; v < V; ++v) {
        T sum = 0;
        for (int64_t f = 0; f < F; ++f) sum += g[(i * V + v) * F + f] * zj[f];
        out[e * V + v] = sum;
      }
    }
  }
}

template <typename T>
void sender_sum_rows_plain(const T* s, const T* g, const int64_t* row_ptr, const int64_t* senders, T* out, int64_t V,
                           int64_t F, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
      T* oj = out + senders[e] * F;
      for (int64_t v = 0; v < V; ++v)
        for (int64_t f = 0; f < F; ++f) oj[f] += s[e * V + v] * g[(i * V + v) * F + f];
    }
  }
}
