#!/bin/sh
# prebuildify calls its "node-gyp" with node-gyp's arguments; we build with
# cmake-js instead (CPU + CUDA in one binary), ignoring them. prebuildify then
# takes build/Release/pagedllm.node into prebuilds/<platform>-<arch>/.
set -e
cd "$(dirname "$0")/.."
exec node node_modules/cmake-js/bin/cmake-js rebuild --log-level warn
