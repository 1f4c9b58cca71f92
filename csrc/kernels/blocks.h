// Register blocks of a compile-time height over a run-time count: the native bf16 and int8 GEMMs
// (rows of A, panels of W) instantiate their microkernel once per height.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

namespace fastrnn {

namespace detail {
template <int... Hs, class F>
void tail_block(std::integer_sequence<int, Hs...>, int height, std::int64_t at, F& body) {
    ((height == Hs + 1 ? body(std::integral_constant<int, Hs + 1>{}, at) : void()), ...);
}
}  // namespace detail

// body(std::integral_constant<int, H>{}, first) for blocks of Max over [0, count), then one block
// of the remaining 1..Max-1.
template <int Max, class F>
void for_blocks(std::int64_t count, F&& body) {
    std::int64_t at = 0;
    for (; at + Max <= count; at += Max) body(std::integral_constant<int, Max>{}, at);
    if (at < count) detail::tail_block(std::make_integer_sequence<int, Max - 1>{}, int(count - at), at, body);
}

}  // namespace fastrnn
