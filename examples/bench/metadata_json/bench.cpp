// Times torch::jit::load of an exported ekd file against parsing its ekd.json with the
// plugin's reader (ekd::parse_flat_json), and a flat-entries layout of the same metadata.
// usage: bench FILE.pt [FLAT.pt key1 key2 ...]
#include "ekd_json.h"

#include <torch/script.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

using clk = std::chrono::steady_clock;
static double ms_since(clk::time_point t0) { return std::chrono::duration<double, std::milli>(clk::now() - t0).count(); }
static double median(std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

static double load_ms(const std::string &file, torch::jit::ExtraFilesMap &extra)
{
  std::vector<double> t;
  for (int r = 0; r < 21; ++r) {
    for (auto &kv : extra) kv.second.clear();
    auto t0 = clk::now();
    auto m = torch::jit::load(file, torch::kCPU, extra);
    t.push_back(ms_since(t0));
  }
  return median(t);
}

int main(int argc, char **argv)
{
  at::set_num_threads(1);
  const std::string file = argv[1];
  torch::jit::ExtraFilesMap extra{{"ekd.json", ""}};
  const double load = load_ms(file, extra);
  const std::string text = extra["ekd.json"];
  const int n = 200000;
  size_t sink = 0;
  std::vector<double> per;
  for (int r = 0; r < 5; ++r) {
    auto t0 = clk::now();
    for (int i = 0; i < n; ++i) sink += ekd::parse_flat_json(text).numbers.size();
    per.push_back(ms_since(t0) * 1000.0 / n);
  }
  const double parse_us = median(per);
  std::printf("%s: ekd.json %zu bytes; torch::jit::load %.2f ms (median of 21); parse_flat_json %.2f us "
              "(median of 5 x %d); parse/load = %.1e  [%zu]\n",
              file.c_str(), text.size(), load, parse_us, n, parse_us / 1000.0 / load, sink % 2);
  if (argc > 2) {
    torch::jit::ExtraFilesMap flat;
    for (int k = 3; k < argc; ++k) flat[argv[k]] = "";
    std::printf("%s: %d flat entries; torch::jit::load %.2f ms (median of 21)\n", argv[2], argc - 3,
                load_ms(argv[2], flat));
  }
}
