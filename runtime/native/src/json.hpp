// A small strict JSON reader (RFC 8259), enough for contracts and engine sidecars.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qfsdk {

struct Json {
    enum class Type { Null, Bool, Number, String, Array, Object };
    Type type = Type::Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Json> array;
    std::vector<std::pair<std::string, Json>> object;  // in file order

    // The member named key, or nullptr (also when this is not an object).
    const Json* find(std::string_view key) const;
};

// Parse one JSON document; throws std::invalid_argument naming the byte offset on bad input.
Json parse_json(std::string_view text);

}  // namespace qfsdk
