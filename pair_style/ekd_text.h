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
  s.erase(0, s.find_first_not_of(" \t\r\n"));  // libtorch starts some messages with a newline
  auto nl = s.find('\n');
  if (nl != std::string::npos) s.resize(nl);
  for (char &c : s)    // torch quotes bytes of damaged files: messages stay valid UTF-8
    if (static_cast<unsigned char>(c) >= 0x7f || static_cast<unsigned char>(c) < 0x20) c = '?';
  return s;
}

// a value from a file as a message quotes it: cut short (a damaged file's megabyte string), bytes
// outside printable ASCII as '?' (LAMMPS's messages, and Python's view of them, stay valid UTF-8)
inline std::string shown(const std::string &value)
{
  std::string out;
  for (size_t k = 0; k < value.size() && k < 40; ++k) {
    const unsigned char c = static_cast<unsigned char>(value[k]);
    out += (c >= 0x20 && c < 0x7f) ? value[k] : '?';
  }
  return value.size() <= 40 ? out : out + "... (" + std::to_string(value.size()) + " bytes)";
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
