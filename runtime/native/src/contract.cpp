#include "contract.hpp"

#include <cmath>
#include <charconv>
#include <sstream>

#include "error.hpp"
#include "json.hpp"

namespace qfsdk {
namespace {

[[noreturn]] void bad(const std::string& what) { throw Error(QFSDK_ERR_BAD_CONTRACT, "contract: " + what); }

double number(const Json& v, const char* field) {
    if (v.type != Json::Type::Number) bad(std::string(field) + " must be a number");
    return v.number;
}

size_t positive_int(const Json& v, const char* field) {
    double x = number(v, field);
    if (x < 1 || x > 1e6 || std::floor(x) != x) bad(std::string(field) + " must be a positive integer");
    return static_cast<size_t>(x);
}

const std::vector<Json>& array_of(const Json& v, size_t n, const char* field) {
    if (v.type != Json::Type::Array || v.array.size() != n)
        bad(std::string(field) + " must be a list of " + std::to_string(n) + " values");
    return v.array;
}

std::string text(const Json& v, const char* field) {
    if (v.type != Json::Type::String) bad(std::string(field) + " must be a string");
    return v.string;
}

void dump_string(const std::string& s, std::ostringstream& out) {
    out << '"';
    for (char c : s) {
        if (c == '"' || c == '\\') out << '\\' << c;
        else if (static_cast<unsigned char>(c) < 0x20) out << "\\u00" << "0123456789abcdef"[c >> 4] << "0123456789abcdef"[c & 15];
        else out << c;
    }
    out << '"';
}

// Serialise a JSON value compactly (to hand a nested contract object on as text).
void dump(const Json& v, std::ostringstream& out) {
    switch (v.type) {
        case Json::Type::Null: out << "null"; break;
        case Json::Type::Bool: out << (v.boolean ? "true" : "false"); break;
        case Json::Type::Number: {
            char buf[32];  // shortest round-trip form, locale-independent
            auto end = std::to_chars(buf, buf + sizeof buf, v.number).ptr;
            out.write(buf, end - buf);
            break;
        }
        case Json::Type::String: dump_string(v.string, out); break;
        case Json::Type::Array:
            out << '[';
            for (size_t i = 0; i < v.array.size(); ++i) {
                if (i) out << ", ";
                dump(v.array[i], out);
            }
            out << ']';
            break;
        case Json::Type::Object:
            out << '{';
            for (size_t i = 0; i < v.object.size(); ++i) {
                if (i) out << ", ";
                dump_string(v.object[i].first, out);
                out << ": ";
                dump(v.object[i].second, out);
            }
            out << '}';
            break;
    }
}

}  // namespace

Contract contract_from_json(const Json& root) {
    if (root.type != Json::Type::Object) bad("must be a JSON object");
    // Contracts are tagged by task (no tag: an embedder, as in files written before tags existed).
    if (const Json* v = root.find("task")) {
        std::string task = text(*v, "task");
        if (task != "embedder") bad("task '" + task + "' is not an embedder; the C ABI embeds faces with embedder models");
    }
    Contract c;
    const Json* size = root.find("input_size");
    const Json* emb = root.find("embedding_size");
    if (!size || !emb) bad("input_size and embedding_size are required");
    const auto& hw = array_of(*size, 2, "input_size");
    c.height = positive_int(hw[0], "input_size");
    c.width = positive_int(hw[1], "input_size");
    c.embedding_size = positive_int(*emb, "embedding_size");
    for (auto [key, dest] : {std::pair{"mean", &c.mean}, std::pair{"std", &c.std}}) {
        if (const Json* v = root.find(key)) {
            const auto& xs = array_of(*v, 3, key);
            for (size_t i = 0; i < 3; ++i) (*dest)[i] = static_cast<float>(number(xs[i], key));
        }
    }
    for (float s : c.std)
        if (!(s > 0)) bad("std must be > 0");
    if (const Json* v = root.find("channel_order")) {
        std::string order = text(*v, "channel_order");
        if (order != "RGB" && order != "BGR") bad("channel_order must be 'RGB' or 'BGR', got '" + order + "'");
        c.bgr = order == "BGR";
    }
    if (const Json* v = root.find("alignment")) c.alignment = text(*v, "alignment");
    if (const Json* v = root.find("distance")) {
        c.distance = text(*v, "distance");
        if (c.distance != "cosine" && c.distance != "euclidean") bad("distance must be 'cosine' or 'euclidean'");
    }
    if (const Json* v = root.find("threshold"); v && v->type != Json::Type::Null)
        c.threshold = number(*v, "threshold");
    if (const Json* v = root.find("template"); v && v->type != Json::Type::Null) {
        for (const Json& point : array_of(*v, 5, "template")) {
            const auto& xy = array_of(point, 2, "template point");
            c.landmark_template.push_back({number(xy[0], "template"), number(xy[1], "template")});
        }
    }
    if (const Json* v = root.find("template_fit")) {
        std::string fit = text(*v, "template_fit");
        if (fit != "landmarks_to_template" && fit != "template_to_landmarks")
            bad("template_fit must be 'landmarks_to_template' or 'template_to_landmarks', got '" + fit + "'");
        c.fit_template_to_landmarks = fit == "template_to_landmarks";
    }
    return c;
}

Contract parse_contract(std::string_view json) {
    try {
        return contract_from_json(parse_json(json));
    } catch (const std::invalid_argument& e) {
        bad(e.what());
    }
}

std::string contract_text_from_sidecar(std::string_view sidecar_json, const std::string& source) {
    Json root;
    try {
        root = parse_json(sidecar_json);
    } catch (const std::invalid_argument& e) {
        throw Error(QFSDK_ERR_BAD_CONTRACT, source + ": " + e.what());
    }
    const Json* c = root.find("contract");
    if (!c || c->type == Json::Type::Null)
        throw Error(QFSDK_ERR_NO_CONTRACT, source + ": no 'contract' key; build the engine with qfsdk so it carries its contract");
    if (c->type == Json::Type::String) return c->string;
    std::ostringstream out;
    dump(*c, out);
    return out.str();
}

}  // namespace qfsdk
