#!/usr/bin/env bash
# Concatenate per-chunk answer files (--num-chunks N --chunk-idx 0..N-1) in chunk order.
#   bash scripts/v1_5/eval/merge_chunks.sh MERGED.jsonl CHUNK0.jsonl CHUNK1.jsonl ...
# The result equals a single-process run's answers file. A missing chunk file is an error.
set -euo pipefail
if [[ $# -lt 2 ]]; then
    echo "usage: $0 MERGED.jsonl CHUNK0.jsonl [CHUNK1.jsonl ...]" >&2
    exit 2
fi
out="$1"; shift
for f in "$@"; do
    [[ -f "$f" ]] || { echo "merge_chunks: chunk file '$f' does not exist (did that chunk's job finish?)" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
cat "$@" > "$out"
