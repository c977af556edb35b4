#!/usr/bin/env bash
# Serving throughput of both attention backends in one run: for each backend, starts
# `sagellm serve` on one model and runs `sagellm bench-serving` over concurrency x input length,
# then prints the same-run sage_attn / flash ratios.
# Usage: bench/serving_backends.sh SAGELLM MODEL_DIR OUT_DIR [serve flags...]
# Environment: CONCURRENCY (default "1 16 64"), INPUT_LENS ("1024 16384"), OUTPUT_LEN (128),
# BACKENDS ("flash sage_attn"), PORT (30123), PROMPTS_PER_SLOT (3: requests = 3 x concurrency,
# at least 8).
set -uo pipefail
bin=$1 model=$2 out=$3
shift 3
mkdir -p "$out"
port=${PORT:-30123}
status=0
for backend in ${BACKENDS:-flash sage_attn}; do
  log=$out/serve_$backend.log
  "$bin" serve --model "$model" --attention-backend "$backend" --port "$port" "$@" >"$log" 2>&1 &
  pid=$!
  ready=0
  for _ in $(seq 1 600); do
    if python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/health', timeout=2)" \
      2>/dev/null; then
      ready=1
      break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if [[ $ready != 1 ]]; then
    echo "serve ($backend) did not become ready; see $log" >&2
    tail -5 "$log" >&2
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    status=1
    continue
  fi
  for c in ${CONCURRENCY:-1 16 64}; do
    for n in ${INPUT_LENS:-1024 16384}; do
      prompts=$((${PROMPTS_PER_SLOT:-3} * c))
      ((prompts < 8)) && prompts=8
      echo "== $backend concurrency $c input $n ($prompts requests)"
      "$bin" bench-serving --port "$port" --num-prompts "$prompts" --random-input-len "$n" \
        --random-output-len "${OUTPUT_LEN:-128}" --max-concurrency "$c" \
        --output "$out/serving_${backend}_c${c}_in${n}.json" 2>&1 | tail -12 || status=1
    done
  done
  kill -INT "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
done
python3 - "$out" <<'EOF' || true
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("serving_*_c*_in*.json")):
    backend, rest = f.stem[len("serving_"):].rsplit("_c", 1)
    c, n = rest.split("_in")
    rows.setdefault((int(c), int(n)), {})[backend] = json.loads(f.read_text())
def g(r, *keys):
    for k in keys:
        if k in r:
            return r[k]
    return float("nan")
print("| concurrency | input | backend | req/s | output tok/s | median TTFT (ms) | p99 TTFT (ms) | median ITL (ms) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for (c, n), by in sorted(rows.items()):
    for b, r in sorted(by.items()):
        print(f"| {c} | {n} | {b} | {g(r,'request_throughput'):.2f} | {g(r,'output_throughput'):.1f} | "
              f"{g(r,'median_ttft_ms'):.1f} | {g(r,'p99_ttft_ms'):.1f} | {g(r,'median_itl_ms'):.2f} |")
    if "flash" in by and "sage_attn" in by:
        f, s = by["flash"], by["sage_attn"]
        print(f"| {c} | {n} | sage/flash | {g(s,'request_throughput')/g(f,'request_throughput'):.2f}x | "
              f"{g(s,'output_throughput')/g(f,'output_throughput'):.2f}x | "
              f"{g(f,'median_ttft_ms')/g(s,'median_ttft_ms'):.2f}x | | "
              f"{g(f,'median_itl_ms')/g(s,'median_itl_ms'):.2f}x |")
EOF
exit $status
