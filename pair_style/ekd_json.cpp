/* ekd_json.cpp — see ekd_json.h. A recursive-descent reader over RFC 8259 JSON (plus the
   NaN/Infinity tokens Python's json module writes) that keeps the strings, numbers,
   booleans and arrays of strings or of numbers of the top-level object. */

#include "ekd_json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace ekd {
namespace {

constexpr int kMaxDepth = 64;    // nested objects/arrays deeper than this are refused

class Reader {
 public:
  explicit Reader(const std::string &text) : s_(text) {}

  FlatJson read_document()
  {
    FlatJson out;
    skip_ws();
    expect('{', "'{' at the start of the metadata object");
    skip_ws();
    if (peek() == '}') {
      ++pos_;
    } else {
      while (true) {
        skip_ws();
        std::string key = read_string();
        skip_ws();
        expect(':', "':' after an object key");
        skip_ws();
        read_member_value(key, out);
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}', "',' or '}' after an object member");
        break;
      }
    }
    skip_ws();
    if (pos_ != s_.size()) fail("end of text after the metadata object");
    return out;
  }

 private:
  const std::string &s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string &what) const
  {
    std::string got = "end of text";
    if (pos_ < s_.size()) {    // a byte outside printable ASCII is shown by its code: messages stay valid UTF-8
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      char code[8];
      std::snprintf(code, sizeof code, "0x%02X", c);
      got = (c >= 0x20 && c < 0x7f) ? std::string("'") + s_[pos_] + "'" : std::string("byte ") + code;
    }
    throw std::runtime_error("invalid JSON at byte " + std::to_string(pos_) + ": expected " +
                             what + ", found " + got);
  }

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  void expect(char c, const char *what)
  {
    if (peek() != c) fail(what);
    ++pos_;
  }

  void skip_ws()
  {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  // one member of the top-level object: keep what the pair style can use
  void read_member_value(const std::string &key, FlatJson &out)
  {
    char c = peek();
    if (c == '"') {
      out.strings[key] = read_string();
    } else if (c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I') {
      out.numbers[key] = read_number();
    } else if (c == '[') {
      std::vector<std::string> strings;
      std::vector<double> numbers;
      if (!read_array(strings, numbers)) return;    // mixed or nested: kept as neither
      const bool of_strings = numbers.empty(), of_numbers = strings.empty();    // [] is both
      if (of_strings) out.string_lists[key] = std::move(strings);
      if (of_numbers) out.number_lists[key] = std::move(numbers);
    } else if (s_.compare(pos_, 4, "true") == 0 || s_.compare(pos_, 5, "false") == 0) {
      out.booleans[key] = c == 't';
      pos_ += c == 't' ? 4 : 5;
    } else {
      skip_value(1);
    }
  }

  // reads an array of strings or of numbers; false if it holds anything else or both kinds
  bool read_array(std::vector<std::string> &strings, std::vector<double> &numbers)
  {
    expect('[', "'['");
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return true;
    }
    bool other = false;
    while (true) {
      skip_ws();
      const char c = peek();
      if (c == '"') {
        strings.push_back(read_string());
      } else if (c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I') {
        numbers.push_back(read_number());
      } else {
        other = true;
        skip_value(2);
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect(']', "',' or ']' in an array");
      return !other && (strings.empty() || numbers.empty());
    }
  }

  void skip_value(int depth)
  {
    if (depth > kMaxDepth) fail("less deeply nested values");
    skip_ws();
    char c = peek();
    if (c == '"') {
      read_string();
    } else if (c == '-' || (c >= '0' && c <= '9') || c == 'N' || c == 'I') {
      read_number();
    } else if (c == '{') {
      ++pos_;
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        return;
      }
      while (true) {
        skip_ws();
        read_string();
        skip_ws();
        expect(':', "':' after an object key");
        skip_value(depth + 1);
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}', "',' or '}' after an object member");
        return;
      }
    } else if (c == '[') {
      ++pos_;
      skip_ws();
      if (peek() == ']') {
        ++pos_;
        return;
      }
      while (true) {
        skip_value(depth + 1);
        skip_ws();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect(']', "',' or ']' in an array");
        return;
      }
    } else if (s_.compare(pos_, 4, "true") == 0 || s_.compare(pos_, 4, "null") == 0) {
      pos_ += 4;
    } else if (s_.compare(pos_, 5, "false") == 0) {
      pos_ += 5;
    } else {
      fail("a JSON value");
    }
  }

  double read_number()
  {
    // validate the JSON number grammar, then convert the span with strtod;
    // Python's json.dumps also writes NaN, Infinity and -Infinity, accepted here
    size_t start = pos_;
    const bool negative = peek() == '-';
    if (negative) ++pos_;
    if (s_.compare(pos_, 8, "Infinity") == 0) {
      pos_ += 8;
      return negative ? -HUGE_VAL : HUGE_VAL;
    }
    if (!negative && s_.compare(pos_, 3, "NaN") == 0) {
      pos_ += 3;
      return std::nan("");
    }
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      fail("a digit");
    }
    if (peek() == '.') {
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("a digit after '.'");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("a digit in the exponent");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    std::string span = s_.substr(start, pos_ - start);
    return std::strtod(span.c_str(), nullptr);
  }

  unsigned read_hex4()
  {
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = peek();
      unsigned d;
      if (c >= '0' && c <= '9')
        d = c - '0';
      else if (c >= 'a' && c <= 'f')
        d = c - 'a' + 10;
      else if (c >= 'A' && c <= 'F')
        d = c - 'A' + 10;
      else
        fail("four hexadecimal digits after \\u");
      v = 16 * v + d;
      ++pos_;
    }
    return v;
  }

  static void append_utf8(std::string &out, unsigned cp)
  {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string read_string()
  {
    expect('"', "'\"' (a string)");
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("'\"' closing the string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) {
        --pos_;
        fail("no control characters inside a string");
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      char e = peek();
      ++pos_;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = read_hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            unsigned lo = read_hex4();
            if (lo >= 0xDC00 && lo < 0xE000)
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else
              fail("a low surrogate after a high surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: --pos_; fail("a valid escape character after '\\'");
      }
    }
  }
};

}    // namespace

FlatJson parse_flat_json(const std::string &text)
{
  if (text.size() > kMaxMetadataBytes)
    throw std::runtime_error("it has " + std::to_string(text.size()) + " bytes, more than ekd metadata ever holds (" +
                             std::to_string(kMaxMetadataBytes) + " at most)");
  Reader reader(text);
  return reader.read_document();
}

}    // namespace ekd
