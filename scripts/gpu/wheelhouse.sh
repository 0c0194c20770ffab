#!/usr/bin/env bash
# Build the wheel folder the GPU check carries (run on a CPU machine with the pip registry reachable):
# the dependencies of `llava` that the GPU image (torch, transformers, peft, accelerate, PIL, numpy) lacks.
#   bash scripts/gpu/wheelhouse.sh [DIR]        # default scripts/gpu/wheelhouse (git-ignored)
# Pure-Python: protobuf (its py3-none-any wheel), tqdm. Binary: sentencepiece (the tiny tokenizer is trained
# with it), one manylinux x86_64 wheel per CPython 3.10-3.13 as the image's Python is not known here.
# PYTHON_VERSIONS / PLATFORM override those. Fails when the folder is over MAX_MIB (default 64).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-${HERE}/wheelhouse}"
PY="${PYTHON:-python3}"
: "${PYTHON_VERSIONS:=3.10 3.11 3.12 3.13}"
: "${PLATFORM:=manylinux2014_x86_64}"
: "${MAX_MIB:=64}"
PURE=("protobuf>=4" "tqdm>=4.66")
BINARY=("sentencepiece>=0.2")
mkdir -p "${DIR}"
"${PY}" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --platform any \
    --dest "${DIR}" "${PURE[@]}" 2>&1 | grep -v "is ignored: it is neither" || true
ls "${DIR}"/protobuf-*.whl "${DIR}"/tqdm-*.whl > /dev/null  # the pure-Python wheels are there
got=0
for v in ${PYTHON_VERSIONS}; do  # a version with no wheel in the registry is skipped, not fatal
    if "${PY}" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version "${v}" \
        --platform "${PLATFORM}" --dest "${DIR}" "${BINARY[@]}" 2>/dev/null; then
        got=$((got + 1))
    else
        echo "wheelhouse: no ${BINARY[*]} wheel for CPython ${v} (${PLATFORM}); skipped" >&2
    fi
done
(( got > 0 )) || { echo "wheelhouse: no binary wheel at all" >&2; exit 1; }
ls -l "${DIR}"
KIB="$(du -sk "${DIR}" | cut -f1)"
echo "wheelhouse: ${DIR} $((KIB / 1024)) MiB ($(ls "${DIR}" | wc -l) wheels)"
if (( KIB > MAX_MIB * 1024 )); then
    echo "wheelhouse: over ${MAX_MIB} MiB" >&2
    exit 1
fi
