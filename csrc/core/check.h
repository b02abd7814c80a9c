// PYPRUNE_CHECK: the one checking macro of the core.
//
// It throws std::invalid_argument carrying the failed expression and the values
// the caller streams after it; the bindings turn that into a Python ValueError.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace pyprune::detail {

inline void stream_all(std::ostringstream&) {}

template <typename T, typename... Rest>
void stream_all(std::ostringstream& os, const T& first, const Rest&... rest) {
    os << first;
    stream_all(os, rest...);
}

template <typename... Args>
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const Args&... args) {
    std::ostringstream os;
    stream_all(os, args...);
    os << " [check `" << expr << "` failed at " << file << ":" << line << "]";
    throw std::invalid_argument(os.str());
}

}  // namespace pyprune::detail

/// Throw std::invalid_argument("<message> [check `cond` failed at file:line]") when cond is false.
/// The message is the concatenation of the remaining arguments (any streamable values).
#define PYPRUNE_CHECK(cond, ...)                                                        \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            ::pyprune::detail::check_failed(#cond, __FILE__, __LINE__, __VA_ARGS__);    \
        }                                                                               \
    } while (0)
