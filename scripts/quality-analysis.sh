#!/usr/bin/env bash
# Reproduces the "Quality analysis" section of the README: disparity (INT8, low-rank r64 INT8), sweep and
# sensitivity on one reference model, a per-layer comparison, and the protection plan through the compressor. Tables go to docs/quality/<model>-*.txt, charts to docs/charts/.
# Usage: scripts/quality-analysis.sh MODEL [threads] [disparity]
#   MODEL: a reference model of ../shared/models (ref-gpt2, ref-gptneo, ref-opt, ref-opt-postln, ref-neox,
#   ref-neox-seq, ref-bloom). With `disparity`, only the two disparity tables (INT8, low-rank r64 INT8).
set -euo pipefail
m=${1:?model name, e.g. ref-gpt2}
threads=${2:-2}
only=${3:-all}
cd "$(dirname "$0")/.."
bin=target/release/slimlm
dir=../shared/models/$m
out=docs/quality
charts=docs/charts
mkdir -p "$out" "$charts"
run() { # name, command...
  local name=$1; shift
  echo "\$ slimlm ${*#$bin }" | sed "s|$bin ||" > "$out/$m-$name.txt"
  "$@" >> "$out/$m-$name.txt"
}
run disparity-int8 $bin eval disparity --reference "$dir" --method int8 --embeddings int8 \
  --svg "$charts/$m-disparity-int8.svg" --threads "$threads"
run disparity-r64 $bin eval disparity --reference "$dir" --method lowrank:r64:int8 --embeddings int8 \
  --svg "$charts/$m-disparity-r64.svg" --threads "$threads"
if [ "$only" = disparity ]; then exit 0; fi
run compare-r64 $bin eval compare --reference "$dir" --method lowrank:r64:int8 \
  --text ../shared/corpora/udhr/eng.txt --threads "$threads"
run sweep $bin eval sweep --model "$dir" --ranks 16,32,64,96,128 --energies 0.7,0.9 --int8-groups row,64 \
  --points f16 --embeddings int8 --max-tokens 2048 --svg "$charts/$m-sweep.svg" --threads "$threads"
run sensitivity $bin eval sensitivity --model "$dir" --base lowrank:r32:int8 --protect int8 --embeddings int8 \
  --unit layer-component --max-tokens 1024 --plan-out "$out/$m-protection-plan.toml" \
  --svg "$charts/$m-sensitivity.svg" --comparison-svg "$charts/$m-protection.svg" --threads "$threads"
# The protection plan through the compressor, measured on the full texts.
{
  echo "\$ slimlm compress --model $dir --plan $out/$m-protection-plan.toml --out /tmp/$m-protected --overwrite"
  $bin compress --model "$dir" --plan "$out/$m-protection-plan.toml" --out "/tmp/$m-protected" --overwrite | tail -1
  echo "\$ slimlm eval disparity --reference $dir --candidate /tmp/$m-protected --svg $charts/$m-disparity-protected.svg --threads $threads"
  $bin eval disparity --reference "$dir" --candidate "/tmp/$m-protected" --svg "$charts/$m-disparity-protected.svg" --threads "$threads"
} > "$out/$m-protected-disparity.txt"
