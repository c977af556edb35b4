#!/usr/bin/env python3
"""Peer timings for the attention benchmarks: PyTorch SDPA with its cuDNN and FlashAttention
backends, in the same run on the same GPU as ours.

Without shape flags it runs the fixed suite that bench_flash_attention measures:
  prefill: B=4, H=32, D=128, N in 4K/8K/16K, causal and not;
  decode: one query token per request, GQA 32/8, D=128, over B x N cached keys.
With shape flags it times the shapes of `sagellm bench-attention` (same flag names and meaning):
  python3 bench/peers/sdpa_bench.py --batch 4 --heads 32 --kv-heads 8 --head-dim 128 \
      --seq-lens 4096,16384 [--causal] [--decode] [--k-offset 5] [--accuracy] --json OUT
prefill: B requests of N new tokens over N keys; decode: one new token over N keys.

TFLOP/s are counted as 4*B*H*q_len*kv_len*D (halved for causal prefill); decode also reports TB/s
of bf16 K/V read. Times are the median of CUDA-event-timed calls after warm-up, on standard normal
bf16 inputs (K optionally plus a per-channel offset ~ N(0, k_offset)). --accuracy compares each
backend's output with exact float64 attention on the same bf16 inputs (cosine, rel-L1, RMSE, the
metrics of `sagellm bench-attention`), over request 0 and up to --accuracy-heads heads.
A backend that refuses a shape is reported as not supported, not as a failure.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def time_ms(fn, warmup, iters, device):
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sdpa(q, k, v, causal, gqa):
    # enable_gqa only when the head counts differ: some backends refuse the flag itself.
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def reference_fp64(q, k, v, causal, heads):
    """Exact attention in float64 for request 0 and the given query heads: [len(heads), q_len, D].
    Causal masks are aligned bottom-right (query i sees keys <= kv_len - q_len + i), which for
    prefill (q_len == kv_len) is SDPA's mask."""
    group = q.shape[1] // k.shape[1]
    out = []
    for h in heads:
        qh = q[0, h].double()
        kh, vh = k[0, h // group].double(), v[0, h // group].double()
        s = (qh @ kh.T) / (q.shape[-1] ** 0.5)
        if causal:
            n_q, n_k = s.shape
            i = torch.arange(n_q, device=s.device)[:, None]
            j = torch.arange(n_k, device=s.device)[None, :]
            s = s.masked_fill(j > i + (n_k - n_q), float("-inf"))
        out.append(torch.softmax(s, dim=-1) @ vh)
    return torch.stack(out)


def metrics(o, ref):
    o, ref = o.double().flatten(), ref.flatten()
    d = o - ref
    return {"cosine": float((o @ ref) / torch.sqrt((o @ o) * (ref @ ref))),
            "rel_l1": float(d.abs().sum() / ref.abs().sum()),
            "rmse": float(torch.sqrt((d * d).mean()))}


def make_inputs(b, hq, hkv, q_len, kv_len, d, k_offset, device, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    dt = torch.bfloat16
    q = torch.randn(b, hq, q_len, d, device=device, generator=g).to(dt)
    k = torch.randn(b, hkv, kv_len, d, device=device, generator=g)
    if k_offset > 0:
        # One offset per channel (KV head x dim), the same for every token.
        k += k_offset * torch.randn(1, hkv, 1, d, device=device, generator=g)
    k = k.to(dt)
    v = torch.randn(b, hkv, kv_len, d, device=device, generator=g).to(dt)
    return q, k, v


def run_shape(args, backends, n, results):
    b, hq, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    q_len = 1 if args.decode else n
    causal = args.causal and not args.decode
    q, k, v = make_inputs(b, hq, hkv, q_len, n, d, args.k_offset, args.device, args.seed + n)
    flops = 4 * b * hq * q_len * n * d / (2 if causal else 1)
    kv_bytes = 2 * b * hkv * n * d * 2
    ref, heads = None, []
    if args.accuracy:
        step = max(1, hq // max(1, args.accuracy_heads))
        heads = list(range(0, hq, step))[: args.accuracy_heads]
        ref = reference_fp64(q, k, v, causal, heads)
    for name, be in backends.items():
        row = {"backend": name, "batch": b, "heads": hq, "kv_heads": hkv, "head_dim": d, "n": n,
               "q_len": q_len, "kv_len": n, "causal": causal, "k_offset": args.k_offset}
        try:
            with sdpa_kernel([be]):
                ms = time_ms(lambda: sdpa(q, k, v, causal, hq != hkv), args.warmup, args.repeats,
                             args.device)
                out = sdpa(q, k, v, causal, hq != hkv) if args.accuracy else None
        except RuntimeError as e:  # a backend may refuse a shape
            row["not_supported"] = str(e).splitlines()[0] if str(e) else "RuntimeError"
            results["decode" if args.decode else "prefill"].append(row)
            print(f"{'decode' if args.decode else 'prefill'} {name:9s} B={b} H={hq}/{hkv} D={d} "
                  f"N={n}: not supported ({row['not_supported']})", flush=True)
            continue
        row.update({"ms": ms, "tflops": flops / ms / 1e9, "tbps": kv_bytes / ms / 1e9})
        if ref is not None:
            row["accuracy"] = metrics(out[0, heads].float(), ref)
            row["accuracy"]["heads_checked"] = heads
        results["decode" if args.decode else "prefill"].append(row)
        acc = ""
        if "accuracy" in row:
            a = row["accuracy"]
            acc = f"  cos {a['cosine']:.7f} rel-L1 {a['rel_l1']:.3e} RMSE {a['rmse']:.3e}"
        extra = f" {row['tbps']:6.2f} TB/s" if args.decode else ""
        print(f"{'decode' if args.decode else 'prefill'} {name:9s} B={b} H={hq}/{hkv} D={d} "
              f"N={n:6d} causal={int(causal)}: {ms:9.3f} ms {row['tflops']:8.2f} TFLOP/s{extra}"
              f"{acc}", flush=True)
    del q, k, v


def default_suite(args, backends, results):
    """The fixed shapes of bench_flash_attention (kept as they were, for comparable logs)."""
    b, h, d = 4, 32, 128
    for n in (4096, 8192, 16384):
        q, k, v = (torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for causal in (False, True):
            flops = 4 * b * h * n * n * d / (2 if causal else 1)
            for name, be in backends.items():
                with sdpa_kernel([be]):
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                                 args.warmup, args.repeats, "cuda")
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
                    ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                                 args.warmup, args.repeats, "cuda")
            except RuntimeError as e:  # a backend may refuse a shape
                print(f"decode {name}: B={bs} N={n}: not supported ({str(e).splitlines()[0]})")
                continue
            row = {"backend": name, "batch": bs, "n": n, "ms": ms, "tbps": kv_bytes / ms / 1e9}
            results["decode"].append(row)
            print(f"decode  {name:6s} B={bs:3d} N={n:6d} GQA {hq}/{hkv} D={d}: {ms:8.3f} ms "
                  f"{row['tbps']:6.2f} TB/s", flush=True)
        del q, k, v


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--backends", default="cudnn,flash",
                    help="comma separated: " + ", ".join(BACKENDS))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--kv-heads", type=int)
    ap.add_argument("--head-dim", type=int)
    ap.add_argument("--seq-lens", default=None, help="comma separated N")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--decode", action="store_true", help="one query token over N keys")
    ap.add_argument("--k-offset", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--accuracy", action="store_true", help="compare with float64 attention")
    ap.add_argument("--accuracy-heads", type=int, default=2)
    ap.add_argument("--device", default="cuda",
                    help="cuda (the peers); cpu only checks this script with --backends math")
    args = ap.parse_args(argv)
    shape = [args.batch, args.heads, args.kv_heads, args.head_dim, args.seq_lens]
    args.custom = any(x is not None for x in shape) or args.decode or args.causal
    if args.custom:
        for name, default in (("batch", 4), ("heads", 32), ("kv_heads", 8), ("head_dim", 128)):
            if getattr(args, name) is None:
                setattr(args, name, default)
        try:
            args.seq_lens = [int(x) for x in (args.seq_lens or "4096").split(",")]
        except ValueError:
            ap.error(f"--seq-lens: not a list of integers: {args.seq_lens}")
        if min([args.batch, args.heads, args.kv_heads, args.head_dim] + args.seq_lens) < 1:
            ap.error("--batch, --heads, --kv-heads, --head-dim and --seq-lens must be positive")
        if args.heads % args.kv_heads:
            ap.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    elif args.device != "cuda":
        ap.error("the default suite runs on cuda; give shape flags to run elsewhere")
    unknown = [b for b in args.backends.split(",") if b not in BACKENDS]
    if unknown:
        ap.error(f"unknown backend(s) {unknown} (choose from {', '.join(BACKENDS)})")
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible to PyTorch")
    torch.manual_seed(args.seed)
    backends = {b: BACKENDS[b] for b in args.backends.split(",")}
    results = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
               "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
               "command": " ".join(sys.argv), "prefill": [], "decode": []}
    if args.custom:
        results["shape"] = {"batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
                            "head_dim": args.head_dim, "seq_lens": args.seq_lens,
                            "causal": args.causal and not args.decode, "decode": args.decode,
                            "k_offset": args.k_offset, "seed": args.seed}
        for n in args.seq_lens:
            run_shape(args, backends, n, results)
    else:
        default_suite(args, backends, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
