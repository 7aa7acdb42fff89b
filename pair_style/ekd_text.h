/* ekd_text.h — small text helpers for pair_style ekd's messages (shared by its .cpp files). */

#ifndef EKD_TEXT_H
#define EKD_TEXT_H

#include <torch/script.h>

#include <string>
#include <vector>

namespace ekd {

// first line of an exception message (torch messages carry long back-traces)
inline std::string first_line(const char *what)
{
  std::string s(what ? what : "");
  auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  return s;
}

inline std::string join(const std::vector<std::string> &items)
{
  std::string out;
  for (const auto &it : items) out += (out.empty() ? "" : " ") + it;
  return out;
}

inline std::string shape_of(const torch::Tensor &t)
{
  std::string out = "[";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + "]";
}

}    // namespace ekd

#endif
