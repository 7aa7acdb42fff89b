// The loops of species_sum.cpp, included there twice (compile_twice.h): once for any CPU and
// once compiled for AVX2 + FMA (chosen at run time, cpu_features.h). Each takes a range of
// receivers [begin, end) and their edges (row_ptr; sender_species: the species of each edge's
// sender, in [0, C)). The loops over v run over contiguous rows: the compiler vectorises them.
// No headers here: species_sum.cpp includes what they need.

// species_sum: out[i, v, c] = sum_{e into i, species c of its sender} s[e, v], the environment
// of one-hot features: each edge adds its row of s (V contiguous values) into its species' row
// of a (C x V) table of the receiver, transposed into out[i] (V x C) at the end
template <typename T>
void species_sum_rows(const T* s, const int64_t* sender_species, const int64_t* row_ptr, T* out, int64_t V,
                      int64_t C, int64_t begin, int64_t end) {
  std::vector<T> table(static_cast<size_t>(C * V));
  for (int64_t i = begin; i < end; ++i) {
    std::fill(table.begin(), table.end(), T(0));
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
      T* row = table.data() + sender_species[e] * V;
      const T* se = s + e * V;
      for (int64_t v = 0; v < V; ++v) row[v] += se[v];
    }
    T* oi = out + i * V * C;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t c = 0; c < C; ++c) oi[v * C + c] = table[c * V + v];
  }
}

// species_gather: out[e, v] = g[i, v, c] for the edges e into i, c the species of e's sender
// (species_sum's derivative, and species_sum is this one's): g[i] (V x C) is transposed into a
// (C x V) table, then each edge copies its species' row
template <typename T>
void species_gather_rows(const T* g, const int64_t* sender_species, const int64_t* row_ptr, T* out, int64_t V,
                         int64_t C, int64_t begin, int64_t end) {
  std::vector<T> table(static_cast<size_t>(C * V));
  for (int64_t i = begin; i < end; ++i) {
    if (row_ptr[i] == row_ptr[i + 1]) continue;
    const T* gi = g + i * V * C;
    for (int64_t v = 0; v < V; ++v)
      for (int64_t c = 0; c < C; ++c) table[c * V + v] = gi[v * C + c];
    for (int64_t e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
      const T* row = table.data() + sender_species[e] * V;
      T* oe = out + e * V;
      for (int64_t v = 0; v < V; ++v) oe[v] = row[v];
    }
  }
}
