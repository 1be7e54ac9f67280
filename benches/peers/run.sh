#!/usr/bin/env bash
# Peers side by side: Hugging Face transformers on PyTorch (FP32 eager, dynamic INT8) and slimlm's variants,
# each in a fresh process, the same prompt and tokens, alternating, in one run. Writes
# target/bench-results/peers.{json,md}.
#
#   benches/peers/run.sh [MODEL_NAME ...]     # default: ref-gpt2 gpt2-124m
#
# Needs the bench models (made by `cargo bench --bench memory`) and installs torch + transformers into
# target/peers-venv on first use (PyPI; a few GB with torch's CUDA dependencies, never used here).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/peers-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers safetensors
fi
cargo build --release -q
models=("${@:-ref-gpt2 gpt2-124m}")
read -r -a models <<< "${models[*]}"
threads=${THREADS:-$(nproc)}
prompt=128 tokens=64 reps=${REPS:-3}
out=target/bench-results; mkdir -p "$out"
: > "$out/peers.jsonl"
dir_of() { case "$1" in ref-*) echo "../shared/models/$1" ;; *) echo "target/bench-models/$1" ;; esac; }
for m in "${models[@]}"; do
  base=$(dir_of "$m")
  for r in $(seq "$reps"); do
    for mode in fp32 int8; do
      "$venv/bin/python" benches/peers/hf_bench.py --model "$base" --mode "$mode" --threads "$threads" \
        --prompt-tokens $prompt --tokens $tokens | sed "s/^{/{\"name\": \"$m\", \"rep\": $r, /" >> "$out/peers.jsonl"
    done
    for v in f32 int8 lowrank-int8-r128; do
      d=$base; [ "$v" = f32 ] || d="target/bench-models/$m.$v"
      ./target/release/slimlm bench memory --model "$d" --prompt-tokens $prompt --tokens $tokens \
        --threads "$threads" --json | python3 -c "import json,sys; r=json.load(sys.stdin); r.update(name='$m', rep=$r, peer='slimlm-$v'); print(json.dumps(r))" >> "$out/peers.jsonl"
    done
  done
done
python3 benches/peers/report.py "$out/peers.jsonl" > "$out/peers.md"
cat "$out/peers.md"
