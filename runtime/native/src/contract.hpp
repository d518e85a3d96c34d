// The preprocessing contract (mirror of runtime/contract.py FaceContract).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qfsdk {

struct Json;

struct Contract {
    size_t height = 0;
    size_t width = 0;
    size_t embedding_size = 0;
    std::array<float, 3> mean{127.5f, 127.5f, 127.5f};  // float32, as numpy preprocesses
    std::array<float, 3> std{127.5f, 127.5f, 127.5f};
    bool bgr = false;
    std::string alignment = "arcface_5pt";
    std::string distance = "cosine";
    std::optional<double> threshold;
    std::vector<std::array<double, 2>> landmark_template;  // 5 (x, y) in input pixels, or empty
    bool fit_template_to_landmarks = false;                // template_fit == "template_to_landmarks"
};

// Parse and validate the contract JSON; unknown fields are ignored (newer writers).
// Throws Error(QFSDK_ERR_BAD_CONTRACT).
Contract parse_contract(std::string_view json);
Contract contract_from_json(const Json& value);

// The contract held in an engine sidecar: {"contract": {...} or "<json text>", ...}.
// Returns the contract's JSON text. Throws Error(QFSDK_ERR_NO_CONTRACT / BAD_CONTRACT).
std::string contract_text_from_sidecar(std::string_view sidecar_json, const std::string& source);

}  // namespace qfsdk
