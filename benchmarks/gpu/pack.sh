#!/bin/bash
# Here, before a GPU session: everything the GPU machine needs, under .gpu/ (git ignores it through
# .git/info/exclude). That machine has Python 3.12, no network, and takes 64 MB per call, so ONNX Runtime's
# GPU wheel (255 MB) goes as an xz tar split into parts of 63.5 MB: carry .gpu/p1, .gpu/p2, ... one per call,
# in calls close enough that the machine stays warm (each call: mkdir -p /tmp/parts && cp .gpu/pN /tmp/parts/),
# and the last part with .gpu/models, .gpu/whl and benchmarks/gpu/device.sh's run. Models: bench_gpu.py's
# list, or the names given.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl .gpu/ort
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"; }
get -d .gpu/ort "onnxruntime-gpu==${ORT_GPU:-1.31.1}"
get -d .gpu/whl cryptography cffi pycparser onnx2torch   # what edgewise needs there and the image lacks
rm -rf .gpu/ort/unpacked && mkdir .gpu/ort/unpacked && (cd .gpu/ort/unpacked && unzip -q ../onnxruntime_gpu-*.whl)
tar -C .gpu/ort/unpacked -cf - . | xz -T0 -6 > .gpu/ort.tar.xz
rm -f .gpu/p[0-9]* && split -b 63500000 -d -a 1 .gpu/ort.tar.xz .gpu/part
for f in $(ls -r .gpu/part*); do n=${f#.gpu/part}; mv "$f" ".gpu/p$((n + 1))"; done
.venv/bin/python benchmarks/bench_gpu.py prepare .gpu/models "$@"
ls -la .gpu .gpu/whl && du -sh .gpu/models
