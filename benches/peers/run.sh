#!/usr/bin/env bash
# Peers side by side, one command: slimlm and what users would otherwise pick, each engine and variant in a
# fresh process, the same prompt token ids and the same number of greedy tokens, alternating within each
# repetition. Writes target/bench-results/peers.{jsonl,md} and prints the table.
#
#   benches/peers/run.sh [MODEL_NAME ...]     # default: ref-gpt2 gpt2-124m
#
#   ENGINES   which engines (default "slimlm llama.cpp ort ct2 transformers")
#     slimlm        f32, f16, int8        slimlm bench memory (variants: target/bench-models/<model>.<v>)
#     llama.cpp     f32, f16, q8_0, q4_0  llamacpp_bench.py (llama-cpp-python built for this CPU)
#     ort           fp32, int8            ort_bench.py (ONNX Runtime; dynamic INT8)
#     ct2           fp32, int8            ct2_bench.py (CTranslate2)
#     transformers  fp32, int8            hf_bench.py (PyTorch eager; dynamic INT8)
#   REPS (default 3), THREADS (default nproc); 128 prompt tokens, TOKENS generated (default 64; fewer only
#   for a smoke test); BUILD=0 skips `cargo build --release` (uses the slimlm binary as it is).
#
# Each row's first 8 greedy tokens are checked against transformers FP32 on the same ids (a reference run
# made here whatever ENGINES says): an FP32 engine that differs is marked FAIL in the table and makes this
# script exit 1; lower-precision variants are only reported. A one-thread memory bandwidth probe
# (bandwidth.py) runs at the start of each repetition and is printed under the table.
#
# First use installs into target/peers-venv (PyPI; torch from the CPU-only index when reachable, else
# PyPI's, which pulls CUDA wheels never used here) and builds llama-cpp-python from source for this CPU
# (GGML_NATIVE; tens of minutes on 2 cores, at nice 10). Conversions are made once, at nice 10, and kept in
# target/peers-models/<model>.<engine>.<variant>.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benches/peers
venv=target/peers-venv py=target/peers-venv/bin/python
LLAMA_CPP_PYTHON=0.3.36
engines=${ENGINES:-slimlm llama.cpp ort ct2 transformers}
threads=${THREADS:-$(nproc)}
prompt=128 tokens=${TOKENS:-64} reps=${REPS:-3}
models=("${@:-ref-gpt2 gpt2-124m}")
read -r -a models <<< "${models[*]}"
has() { [[ " $engines " == *" $1 "* ]]; }
variants() {
  case $1 in
    slimlm) echo f32 f16 int8 ;; llama.cpp) echo f32 f16 q8_0 q4_0 ;; ort | ct2 | transformers) echo fp32 int8 ;;
  esac
}

# --- environment --------------------------------------------------------------------------------------
pip() { nice -n 10 "$venv/bin/pip" install -q "$@"; }
[ -x "$py" ] || python3 -m venv "$venv"
if ! "$py" -c "import torch" 2>/dev/null; then
  pip torch==2.15.0 --index-url https://download.pytorch.org/whl/cpu 2>/dev/null || pip torch==2.15.0
fi
"$py" -c "import transformers, safetensors, numpy" 2>/dev/null || pip transformers==5.25.0 safetensors==0.8.0 numpy==2.4.6
if has ort && ! "$py" -c "import onnx, onnxscript, onnxruntime" 2>/dev/null; then
  pip onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0
fi
if has ct2 && ! "$py" -c "import ctranslate2" 2>/dev/null; then pip ctranslate2==4.8.5; fi
llama_src=target/peers-models/llama-cpp-python-$LLAMA_CPP_PYTHON
if has llama.cpp; then
  if ! "$py" -c "import llama_cpp" 2>/dev/null; then
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON for this CPU (long)..." >&2
    # Without ggml's AMX backend: on AMX CPUs its q8_0 / q4_0 products segfault
    # (ggml-org/llama.cpp#20824); its AVX-512 VNNI kernels run instead.
    nox="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$nox' -DCMAKE_CXX_FLAGS='$nox'" \
      CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) pip "llama-cpp-python==$LLAMA_CPP_PYTHON"
  fi
  # llama.cpp's HF → GGUF converter (and the gguf-py it imports) from the same sdist that was built.
  if [ ! -f "$llama_src/convert_hf_to_gguf.py" ]; then
    d=$(mktemp -d)
    nice -n 10 "$venv/bin/pip" download -q --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$d"
    mkdir -p "$llama_src.tmp"
    tar xzf "$d"/llama_cpp_python-*.tar.gz -C "$llama_src.tmp" --strip-components=3 \
      "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/convert_hf_to_gguf.py" \
      "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/conversion" \
      "llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp/gguf-py"
    rm -rf "$d" "$llama_src" && mv "$llama_src.tmp" "$llama_src"
  fi
fi
has slimlm && [ "${BUILD:-1}" != 0 ] && cargo build --release -q

out=target/bench-results; mkdir -p "$out"
: > "$out/peers.jsonl"
dir_of() { case "$1" in ref-*) echo "../shared/models/$1" ;; *) echo "target/bench-models/$1" ;; esac; }
# tag NAME REP PEER [KEY=JSON ...]: read an engine's JSON (one line, or slimlm's pretty print) from stdin
# and append it to peers.jsonl with the run's keys.
tag() {
  python3 -c '
import json, sys
s = sys.stdin.read()
try:
    r = json.loads(s)
except ValueError:
    r = json.loads([l for l in s.splitlines() if l.startswith("{")][-1])
r.update(name=sys.argv[1], rep=int(sys.argv[2]))
if sys.argv[3]:
    r["peer"] = sys.argv[3]
for kv in sys.argv[4:]:
    k, v = kv.split("=", 1)
    r[k] = json.loads(v)
print(json.dumps(r))' "$@" >> "$out/peers.jsonl"
}
# fail NAME REP PEER CODE: a row for a run that failed.
fail() { echo "{\"name\": \"$1\", \"rep\": $2, \"peer\": \"$3\", \"error\": \"exit $4\"}" >> "$out/peers.jsonl"; }

for m in "${models[@]}"; do
  base=$(dir_of "$m")
  if [ ! -f "$base/model.safetensors" ]; then
    ./target/release/slimlm synth --arch "${m%-*}" --preset "${m##*-}" --overwrite --out "$base"
  fi
  ids=$("$py" $here/prompt_ids.py "$base" $prompt 2>/dev/null)
  # The reference: transformers FP32's first tokens on these ids (timings unused).
  "$py" $here/hf_bench.py --model "$base" --mode fp32 --threads "$threads" --prompt-ids "$ids" --tokens 8 \
    2>/dev/null | tag "$m" 0 reference
  # Conversions, once.
  for e in llama.cpp ort ct2; do
    has $e || continue
    for v in $(variants $e); do
      d=target/peers-models/$m.$e.$v
      # A conversion that left an empty directory behind is made again.
      [ -n "$(ls -A "$d" 2>/dev/null)" ] || nice -n 10 "$py" $here/convert.py --engine $e --variant $v --src "$base" --out "$d" \
        --llama-convert "$llama_src/convert_hf_to_gguf.py" >&2
    done
  done
  if has slimlm; then
    for v in f16 int8; do
      d=target/bench-models/$m.$v
      [ -f "$d/model.safetensors" ] || ./target/release/slimlm compress --model "$base" --out "$d" --mode $v --overwrite >&2
    done
    # slimlm bench memory tokenizes common.TEXT itself (it takes no ids): check that it gets these ids.
    slim_ids=$(./target/release/slimlm generate --model "$base" --max-tokens 1 --json --threads "$threads" \
      --prompt "$("$py" -c "import sys; sys.path.insert(0, '$here'); import common; print(common.TEXT, end='')")" |
      python3 -c "import json,sys; b=json.load(sys.stdin)['prompt_ids']; print(','.join(str(b[i % len(b)]) for i in range($prompt)))")
    [ "$slim_ids" = "$ids" ] && slim_same=true || slim_same=false
  fi
  runs=()
  for e in $engines; do for v in $(variants "$e"); do runs+=("$e:$v"); done; done
  for r in $(seq "$reps"); do
    "$py" $here/bandwidth.py | tag "$m" "$r" ""
    # Alternate: every engine/variant once per repetition, starting one further along each time. Each
    # engine's output is captured and only then handed to `tag`: piped straight in, tag's Python would
    # start beside the engine — slimlm, which starts in milliseconds, then shared the two cores with that
    # start-up during its prefill (a third of its prefill speed lost), while the Python engines measure
    # after their imports, when tag already waits.
    n=${#runs[@]}
    for ((i = 0; i < n; i++)); do
      run=${runs[$(((i + r - 1) % n))]}
      e=${run%%:*} v=${run##*:}
      rc=0
      case $e in
        slimlm)
          d=$base; [ "$v" = f32 ] || d=target/bench-models/$m.$v
          first=$(./target/release/slimlm generate --model "$d" --prompt-ids "$ids" --max-tokens 8 --greedy \
            --ignore-eos --json --threads "$threads" | python3 -c "import json,sys; print(json.load(sys.stdin)['generated_ids'])") &&
          o=$(./target/release/slimlm bench memory --model "$d" --prompt-tokens $prompt --tokens $tokens \
            --threads "$threads" --json) && printf '%s\n' "$o" | tag "$m" "$r" "slimlm-$v" "first_tokens=$first" \
            "prompt_ids_equal=$slim_same" "versions={\"slimlm\": \"$(git describe --always --dirty)\"}" || rc=$?
          ;;
        transformers)
          o=$("$py" $here/hf_bench.py --model "$base" --mode "$v" --threads "$threads" --prompt-ids "$ids" \
            --tokens $tokens 2>/dev/null) && printf '%s\n' "$o" | tag "$m" "$r" "" || rc=$?
          ;;
        *)
          script=$here/${e//./}_bench.py; [ "$e" = llama.cpp ] && script=$here/llamacpp_bench.py
          o=$("$py" "$script" --model "target/peers-models/$m.$e.$v" --hf-model "$base" --variant "$v" \
            --threads "$threads" --prompt-ids "$ids" --tokens $tokens 2>/dev/null) && printf '%s\n' "$o" | tag "$m" "$r" "" || rc=$?
          ;;
      esac
      if [ $rc != 0 ]; then
        echo "peers: $m $e $v failed (exit $rc)" >&2
        fail "$m" "$r" "$e-$v" $rc
      fi
    done
  done
done
rc=0
python3 $here/report.py "$out/peers.jsonl" > "$out/peers.md" || rc=$?
cat "$out/peers.md"
exit $rc
