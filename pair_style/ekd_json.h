/* ekd_json.h — a tiny reader for the flat ekd.json metadata of an ekd model file.

   The metadata (export/CONTRACT.md §3) is a JSON object whose values the pair style
   needs are strings, numbers, booleans and arrays of strings or numbers. This reader parses the
   whole text (so malformed JSON is reported, with its position) and keeps only those values of
   the top-level object; nested objects, nulls and mixed arrays are read and skipped.
   No third-party JSON library is needed. */

#ifndef EKD_JSON_H
#define EKD_JSON_H

#include <map>
#include <string>
#include <vector>

namespace ekd {

/// The values of the top-level JSON object that the pair style can use.
struct FlatJson {
  std::map<std::string, std::string> strings;                     // "key": "text"
  std::map<std::string, double> numbers;                          // "key": 1.5
  std::map<std::string, bool> booleans;                           // "key": true
  std::map<std::string, std::vector<std::string>> string_lists;   // "key": ["a", "b"]
  std::map<std::string, std::vector<double>> number_lists;        // "key": [1, 2.5]

  bool has_string(const std::string &key) const { return strings.count(key) != 0; }
  bool has_number(const std::string &key) const { return numbers.count(key) != 0; }
  bool has_boolean(const std::string &key) const { return booleans.count(key) != 0; }
  bool has_string_list(const std::string &key) const { return string_lists.count(key) != 0; }
  bool has_number_list(const std::string &key) const { return number_lists.count(key) != 0; }
};

/// Real metadata hold a few kB; longer text is refused before parsing (Python reader: the same limit).
constexpr size_t kMaxMetadataBytes = size_t(1) << 20;

/// Parse `text` as one JSON object. Throws std::runtime_error naming the byte offset
/// and what was expected when the text is not valid JSON or not an object, or is longer
/// than kMaxMetadataBytes.
FlatJson parse_flat_json(const std::string &text);

}    // namespace ekd

#endif
