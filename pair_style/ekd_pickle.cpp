/* ekd_pickle.cpp — see ekd_pickle.h. Opcodes of pickle protocols 0-5 (CPython's
   Lib/pickletools.py documents them); only the size of each opcode's arguments matters here. */

#include "ekd_pickle.h"

#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <cstring>

namespace ekd {
namespace {

// how an opcode's argument is laid out
enum class Arg { NONE, FIXED, LENGTH, LINE, TWO_LINES, UNKNOWN };

struct Layout {
  Arg kind;
  size_t bytes;    // FIXED: the argument's size; LENGTH: the size of the little-endian length before the data
};

Layout layout_of(unsigned char op)
{
  switch (op) {
    case 0x80: case 'K': case 'q': case 'h': case 0x82: return {Arg::FIXED, 1};   // PROTO BININT1 BINPUT BINGET EXT1
    case 'M': case 0x83: return {Arg::FIXED, 2};                                   // BININT2 EXT2
    case 'J': case 'r': case 'j': case 0x84: return {Arg::FIXED, 4};              // BININT LONG_BINPUT LONG_BINGET EXT4
    case 'G': return {Arg::FIXED, 8};                                              // BINFLOAT
    case 'U': case 0x8c: case 'C': case 0x8a: return {Arg::LENGTH, 1};  // SHORT_BINSTRING SHORT_BINUNICODE SHORT_BINBYTES LONG1
    case 'T': case 'X': case 'B': case 0x8b: return {Arg::LENGTH, 4};   // BINSTRING BINUNICODE BINBYTES LONG4
    case 0x8d: case 0x8e: case 0x96: case 0x95: return {Arg::LENGTH, 8};  // BINUNICODE8 BINBYTES8 BYTEARRAY8 FRAME
    case 'I': case 'L': case 'F': case 'S': case 'V': case 'P': case 'g': case 'p': return {Arg::LINE, 0};
    case 'c': case 'i': return {Arg::TWO_LINES, 0};                                // GLOBAL INST
    case '(': case '.': case '0': case '1': case '2': case 'N': case 0x88: case 0x89: case ')': case 't':
    case 0x85: case 0x86: case 0x87: case ']': case 'a': case 'e': case 'l': case '}': case 'd': case 's':
    case 'u': case 'R': case 'b': case 0x81: case 0x92: case 0x93: case 0x94: case 0x8f: case 0x90:
    case 0x91: case 'o': case 'Q': case 0x97: case 0x98:
      return {Arg::NONE, 0};
    default: return {Arg::UNKNOWN, 0};
  }
}

uint64_t little_endian(const unsigned char *p, size_t bytes)
{
  uint64_t value = 0;
  for (size_t k = 0; k < bytes; ++k) value |= static_cast<uint64_t>(p[k]) << (8 * k);
  return value;
}

}    // namespace

std::string pickle_length_problem(const unsigned char *data, size_t size)
{
  size_t pos = 0;
  while (pos < size) {
    const unsigned char op = data[pos];
    const size_t at = pos++;
    const Layout layout = layout_of(op);
    const size_t left = size - pos;
    switch (layout.kind) {
      case Arg::NONE:
        if (op == '.') return "";    // STOP
        break;
      case Arg::FIXED:
        if (layout.bytes > left) return "opcode at byte " + std::to_string(at) + " cut short";
        pos += layout.bytes;
        break;
      case Arg::LENGTH: {
        if (layout.bytes > left) return "opcode at byte " + std::to_string(at) + " cut short";
        const uint64_t length = little_endian(data + pos, layout.bytes);
        pos += layout.bytes;
        if (op == 0x95) break;    // FRAME: a length of what follows, nothing to skip
        if (length > size - pos)
          return "opcode at byte " + std::to_string(at) + " declares " + std::to_string(length) + " bytes but " +
                 std::to_string(size - pos) + " remain";
        pos += length;
        break;
      }
      case Arg::LINE:
      case Arg::TWO_LINES:
        for (int line = 0; line < (layout.kind == Arg::LINE ? 1 : 2); ++line) {
          const void *end = std::memchr(data + pos, '\n', size - pos);
          if (end == nullptr) return "opcode at byte " + std::to_string(at) + " has no end of line";
          pos = static_cast<const unsigned char *>(end) - data + 1;
        }
        break;
      case Arg::UNKNOWN: return "";    // the unpickler judges what this walk does not know
    }
  }
  return "";    // no STOP: the unpickler says so
}

std::string archive_pickle_problem(const std::string &path)
{
  caffe2::serialize::PyTorchStreamReader reader(path);
  for (const std::string &name : reader.getAllRecords()) {
    const bool pickle = (name.size() > 4 && name.compare(name.size() - 4, 4, ".pkl") == 0) ||
                        (name.size() > 10 && name.compare(name.size() - 10, 10, ".debug_pkl") == 0);
    if (!pickle) continue;
    auto record = reader.getRecord(name);
    const std::string problem = pickle_length_problem(
        static_cast<const unsigned char *>(std::get<0>(record).get()), std::get<1>(record));
    if (!problem.empty()) return name + ": " + problem;
  }
  return "";
}

}    // namespace ekd
