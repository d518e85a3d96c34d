// A pool of OpenVINO infer requests on one compiled model: one per concurrent call, reused.
#pragma once

#include <mutex>
#include <openvino/openvino.hpp>
#include <utility>
#include <vector>

namespace qfsdk {

class RequestPool {
public:
    explicit RequestPool(ov::CompiledModel compiled) : compiled_(std::move(compiled)) {}

    const ov::CompiledModel& compiled() const noexcept { return compiled_; }

    // An idle infer request taken from the pool (or a new one), returned on scope exit.
    class Lease {
    public:
        explicit Lease(RequestPool& pool) : pool_(pool) {
            {
                std::lock_guard<std::mutex> lock(pool.mutex_);
                if (!pool.idle_.empty()) {
                    request = std::move(pool.idle_.back());
                    pool.idle_.pop_back();
                    return;
                }
            }
            request = pool.compiled_.create_infer_request();
        }
        ~Lease() {
            try {
                std::lock_guard<std::mutex> lock(pool_.mutex_);
                pool_.idle_.push_back(std::move(request));
            } catch (...) {  // the request is dropped; the pool makes a new one next time
            }
        }
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        ov::InferRequest request;

    private:
        RequestPool& pool_;
    };

private:
    ov::CompiledModel compiled_;
    std::mutex mutex_;
    std::vector<ov::InferRequest> idle_;
};

}  // namespace qfsdk
