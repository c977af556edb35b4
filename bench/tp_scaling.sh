#!/usr/bin/env bash
# Decode throughput of dummy Llama-3.1-8B over tensor-parallel sizes, with the scaling efficiency
# of each size against one GPU: `sagellm bench --tp-size N` for N in TP_SIZES that the machine
# has GPUs for (one process per size, one after the other), then a table.
# Usage: bench/tp_scaling.sh SAGELLM MODEL_DIR OUT_DIR [bench flags...]
# Environment: TP_SIZES (default "1 2 4 8"), BATCHES ("1,64"), INPUT_LEN (1024), OUTPUT_LEN (128).
set -uo pipefail
bin=$1 model=$2 out=$3
shift 3
mkdir -p "$out"
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
status=0
sizes=()
for tp in ${TP_SIZES:-1 2 4 8}; do
  if ((tp > gpus)); then
    echo "tp $tp: skipped, $gpus GPU(s) visible" | tee -a "$out/tp_skipped.txt"
    continue
  fi
  echo "== sagellm bench --tp-size $tp"
  if "$bin" bench --model "$model" --load-format dummy --device cuda --tp-size "$tp" \
    --batch-sizes "${BATCHES:-1,64}" --input-lens "${INPUT_LEN:-1024}" \
    --output-len "${OUTPUT_LEN:-128}" --output "$out/bench_tp$tp.json" "$@" \
    >"$out/bench_tp$tp.log" 2>&1; then
    sizes+=("$tp")
  else
    echo "tp $tp failed; see $out/bench_tp$tp.log" >&2
    tail -3 "$out/bench_tp$tp.log" >&2
    status=1
  fi
done
((${#sizes[@]} > 0)) && python3 - "$out" "${sizes[@]}" <<'PY'
import json, sys
out, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
runs = {tp: json.load(open(f"{out}/bench_tp{tp}.json")) for tp in sizes}
def decode(tp):
    return {c["batch"]: c["decode_tokens_per_s"] for c in runs[tp]["cells"] if c.get("decode_tokens_per_s")}
base = decode(sizes[0])
print(f"| tp | batch | decode tokens/s | speedup vs tp {sizes[0]} | scaling efficiency |")
print("| --- | --- | --- | --- | --- |")
for tp in sizes:
    for batch, rate in sorted(decode(tp).items()):
        speedup = rate / base[batch] if base.get(batch) else float("nan")
        print(f"| {tp} | {batch} | {rate:,.1f} | {speedup:.2f} | {speedup / (tp / sizes[0]):.0%} |")
PY
exit $status
