// PF_CHECK(cond, pieces...): throw std::runtime_error (Python: RuntimeError) with the pieces joined,
// built with std::string and std::to_string only.
//
// Why not TORCH_CHECK: its message goes through c10::str, an std::ostringstream. On the GPU image
// (Ubuntu 24.04, g++ 13.3, nvcc 13.0, torch 2.11) formatting a number that way inside this module
// segfaulted (cuda-gdb: std::basic_ostream::_M_insert<long>, resolved inside _C.so), so every failed
// input check killed the process instead of raising; the CPU build on Debian (g++ 12) raises. The
// cause is not established (an ostream instantiation emitted into the module is the lead). Keeping
// the error path off iostreams removes that crash site whatever the cause.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>

namespace progan_fast {
namespace check_detail {

inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string piece(const c10::Device& d) { return d.str(); }
inline std::string piece(c10::IntArrayRef a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + std::to_string(a[i]);
  return s + "]";
}
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
std::string piece(T v) {
  return std::to_string(v);
}

template <typename... Args>
std::string join(const Args&... args) {
  std::string s;
  ((s += piece(args)), ...);
  return s;
}

}  // namespace check_detail
}  // namespace progan_fast

#define PF_CHECK(cond, ...)                                                           \
  do {                                                                                \
    if (!(cond)) throw std::runtime_error(::progan_fast::check_detail::join(__VA_ARGS__)); \
  } while (0)
