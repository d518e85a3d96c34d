// The one exception type used inside the library; converted to a status at the C boundary.
#pragma once

#include <stdexcept>
#include <string>

#include "qfsdk.h"

namespace qfsdk {

class Error : public std::runtime_error {
public:
    Error(qfsdk_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    qfsdk_status status() const noexcept { return status_; }

private:
    qfsdk_status status_;
};

}  // namespace qfsdk
