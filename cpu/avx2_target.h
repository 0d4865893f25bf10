// The target switch of the *_avx2.cpp files: code between PAGEDLLM_AVX2_BEGIN and
// PAGEDLLM_AVX2_END is compiled for AVX2 + FMA + F16C whatever the build's target, and is called
// only when the CPU reports all three (cpu_simd()), so one binary runs everywhere. Include this, and
// everything the file shares with other files, before PAGEDLLM_AVX2_BEGIN, so that no inline
// function or template instance another file also emits is compiled for AVX2. Macros only.
#pragma once

#if defined(__clang__)
#define PAGEDLLM_AVX2_BEGIN _Pragma("clang attribute push(__attribute__((target(\"avx2,fma,f16c\"))), apply_to = function)")
#define PAGEDLLM_AVX2_END _Pragma("clang attribute pop")
#else
#define PAGEDLLM_AVX2_BEGIN _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")")
#define PAGEDLLM_AVX2_END _Pragma("GCC pop_options")
#endif
