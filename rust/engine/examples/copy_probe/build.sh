#!/bin/sh
# Regenerates the .spv files next to each .comp (committed, so the example builds without glslang).
set -e
cd "$(dirname "$0")"
for f in *.comp; do
    glslangValidator -V --target-env vulkan1.1 -o "${f%.comp}.spv" "$f"
done
