#!/usr/bin/env python3
"""Peer timings for the attention benchmarks: PyTorch SDPA with its cuDNN and FlashAttention
backends on the shapes bench_flash_attention measures, in the same run on the same GPU.

Prefill: B=4, H=32, D=128, N in 4K/8K/16K, causal and not; TFLOP/s counted as 4*B*H*N^2*D (halved
for causal). Decode: one query token per request, GQA 32/8, D=128, over B x N cached keys; TB/s of
K/V bytes read. Median of CUDA-event-timed launches after warm-up, random bf16 inputs.
Usage: python3 bench/peers/sdpa_bench.py [--json OUT]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, warmup=5, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(), "prefill": [], "decode": []}
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
    b, h, d = 4, 32, 128
    for n in (4096, 8192, 16384):
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            flops = 4 * b * h * n * n * d / (2 if causal else 1)
            for name, be in backends.items():
                with sdpa_kernel([be]):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
                row = {"backend": name, "n": n, "causal": causal, "ms": ms,
                       "tflops": flops / ms / 1e9}
                results["prefill"].append(row)
                print(f"prefill {name:6s} B={b} H={h} D={d} N={n:6d} causal={int(causal)}: "
                      f"{ms:8.3f} ms {row['tflops']:7.1f} TFLOP/s", flush=True)
        del q, k, v
    hq, hkv = 32, 8
    for bs, n in ((1, 32768), (16, 8192), (64, 8192), (32, 32768), (8, 131072)):
        q = torch.randn(bs, hq, 1, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(bs, hkv, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        kv_bytes = 2 * bs * hkv * n * d * 2
        for name, be in backends.items():
            try:
                with sdpa_kernel([be]):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
            except RuntimeError as e:  # a backend may refuse a shape
                print(f"decode {name}: B={bs} N={n}: not supported ({str(e).splitlines()[0]})")
                continue
            row = {"backend": name, "batch": bs, "n": n, "ms": ms, "tbps": kv_bytes / ms / 1e9}
            results["decode"].append(row)
            print(f"decode  {name:6s} B={bs:3d} N={n:6d} GQA {hq}/{hkv} D={d}: {ms:8.3f} ms "
                  f"{row['tbps']:6.2f} TB/s", flush=True)
        del q, k, v
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
