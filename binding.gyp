# CPU-only source build with node-gyp, for machines without CMake or nvcc
# (`npm run build:gyp`). CMakeLists.txt is the main build; both compile every
# file of cpu/ and addon/ (the CUDA backend is cmake-only: gyp has no CUDA).
{
  "targets": [
    {
      "target_name": "pagedllm",
      "sources": [
        "<!@(node -p \"require('fs').readdirSync('cpu').filter(f => f.endsWith('.cpp')).map(f => 'cpu/' + f).join(' ')\")",
        "<!@(node -p \"require('fs').readdirSync('addon').filter(f => f.endsWith('.cpp')).map(f => 'addon/' + f).join(' ')\")"
      ],
      "include_dirs": [
        "include",
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "NODE_API_NO_EXTERNAL_BUFFERS_ALLOWED",
        "PAGEDLLM_VERSION=\"<!(node -p \"require('./package.json').version\")\"",
        "PAGEDLLM_BUILD_SYSTEM=\"node-gyp\""
      ],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++1y"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-fvisibility=hidden"],
      "conditions": [["OS=='linux'", { "ldflags": ["-Wl,-z,nodelete"] }]],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "GCC_ENABLE_CPP_RTTI": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17"
      },
      "msvs_settings": { "VCCLCompilerTool": { "ExceptionHandling": 1, "RuntimeTypeInfo": "true" } }
    }
  ]
}
