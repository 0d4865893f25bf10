// The target switches of the *_avx2.cpp and *_avx512.cpp files: code between PAGEDLLM_AVX2_BEGIN
// and PAGEDLLM_AVX2_END is compiled for AVX2 + FMA + F16C, and code between PAGEDLLM_AVX512_BEGIN
// and PAGEDLLM_AVX512_END for those plus AVX-512 F/BW/VL and VNNI, whatever the build's target;
// each is called only when the CPU reports all of its features (cpu_simd()), so one binary runs
// everywhere. Include this, and everything the file shares with other files, before the BEGIN
// macro, so that no inline function or template instance another file also emits is compiled for
// the wider target. Macros only.
#pragma once

#if defined(__clang__)
#define PAGEDLLM_AVX2_BEGIN _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define PAGEDLLM_AVX2_END _Pragma("clang attribute pop")
#define PAGEDLLM_AVX512_BEGIN \
  _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni\"))), apply_to = function)")
#define PAGEDLLM_AVX512_END _Pragma("clang attribute pop")
#else
#define PAGEDLLM_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define PAGEDLLM_AVX2_END _Pragma("GCC pop_options")
// (GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the unused source of their masked
// builtins, which -W(maybe-)uninitialized reports at every call: a false positive, GCC bug 105593.)
#define PAGEDLLM_AVX512_BEGIN                                                                   \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni\")") \
      _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")                   \
          _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define PAGEDLLM_AVX512_END _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#endif
