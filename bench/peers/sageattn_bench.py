#!/usr/bin/env python3
"""Peer timings for 8-bit attention: thu-ml SageAttention's Triton kernels (INT8 QK, FP16 PV).

They are timed in the same run on the same GPU as ours, on the shapes of `sagellm bench-attention`.

The flags, inputs, timing and accuracy metrics are those of sdpa_bench.py (imported from it), so the
rows of both files mean the same:
  python3 bench/peers/sageattn_bench.py --batch 4 --heads 32 --kv-heads 8 --head-dim 128 \
      --seq-lens 4096,16384 [--causal] [--decode] [--k-offset 5] [--accuracy] --json OUT
Without shape flags it runs sdpa_bench.py's fixed suite (prefill B=4, H=32, D=128, N 4K/8K/16K,
causal and not; decode GQA 32/8 over B x N cached keys).

What is timed is SageAttention's public call on bf16 Q, K, V returning bf16, so its quantization is
included: K smoothing (mean over the sequence), V to fp16, the Triton INT8 per-block quantization of
Q and K, and the attention kernel. With SageAttention 2 that is sageattn_qk_int8_pv_fp16_triton
(quantization_backend="triton"); with 1.x the pure-Triton sageattn. The package is not installed: it
is imported from --sageattention-dir, filled by scripts/fetch-sage-peer.sh (python files only).
TFLOP/s are counted as 4*B*H*q_len*kv_len*D (halved for causal prefill); decode's TB/s counts bf16
K/V bytes like sdpa_bench.py, so it compares times, not bytes actually moved (SageAttention reads
its own int8 K and fp16 V). Decode runs the prefill kernel with one query row per 128-row block.
A shape the kernel refuses is reported as not supported; any other failure is reported in the JSON
and makes the exit status 1. SageAttention 1.0.6's non-causal kernel does not mask the keys past
kv_len in the last 64-key block, so its accuracy rows are off when kv_len % 64 != 0 (version 2
masks them); the benchmark's shapes are multiples of 64.
"""
import argparse
import importlib
import json
import os
import re
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from sdpa_bench import make_inputs, metrics, reference_fp64, time_ms  # noqa: E402

BACKEND = "sageattn_triton"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DIR = os.environ.get("SAGELLM_SAGEATTENTION_DIR",
                             os.path.join(REPO_ROOT, ".device", "peers", "sageattention"))
# Exceptions with which SageAttention's wrappers refuse a shape (asserts on head_dim, on causal
# masks with q_len != kv_len, ...), as opposed to failures of a supported call.
REFUSALS = (AssertionError, ValueError, NotImplementedError)


def _cuda_extension_stub(name):
    stub = types.ModuleType(name)

    def missing(attr):
        if attr.startswith("__"):  # the import machinery probes for these
            raise AttributeError(attr)
        raise NotImplementedError(f"{name}.{attr}: SageAttention's CUDA extension is not carried; "
                                  "only its Triton path can run here")
    stub.__getattr__ = missing
    return stub


def load_sageattention(directory):
    """Imports the sageattention package from directory and returns (attention(q, k, v, causal,
    smooth_k), description). Exits with a clear message when the folder is missing."""
    directory = os.path.abspath(directory)
    if not os.path.isfile(os.path.join(directory, "sageattention", "__init__.py")):
        sys.exit(f"error: SageAttention not found in {directory} (expected "
                 f"{os.path.join(directory, 'sageattention', '__init__.py')}); run "
                 "scripts/fetch-sage-peer.sh on a machine with internet access and carry .device/ "
                 "along, or pass --sageattention-dir")
    sys.path.insert(0, directory)
    stubbed = []
    while True:
        for name in [m for m in sys.modules if m.split(".")[0] == "sageattention"]:
            del sys.modules[name]
        for name in stubbed:
            sys.modules[f"sageattention.{name}"] = _cuda_extension_stub(f"sageattention.{name}")
        try:
            sage = importlib.import_module("sageattention")
            break
        except ImportError as e:
            # SageAttention 2 imports its compiled CUDA extensions (_qattn, _fused, ...) at import
            # time although its Triton path never calls them; stubs that fail loudly when used
            # stand in for the ones that were not carried.
            m = re.search(r"cannot import name '(\w+)'|No module named 'sageattention\.(\w+)'",
                          str(e))
            name = m and (m.group(1) or m.group(2))
            if (not name or name in stubbed or len(stubbed) > 8
                    or os.path.exists(os.path.join(directory, "sageattention", name + ".py"))):
                raise
            stubbed.append(name)
    if not os.path.abspath(sage.__file__).startswith(directory + os.sep):
        sys.exit(f"error: imported sageattention from {sage.__file__}, not from {directory}")
    source = "unknown"
    if os.path.isfile(os.path.join(directory, "SOURCE")):
        with open(os.path.join(directory, "SOURCE")) as f:
            source = f.readline().strip()
    if hasattr(sage, "sageattn_qk_int8_pv_fp16_triton"):
        api = "sageattn_qk_int8_pv_fp16_triton"

        def attention(q, k, v, causal, smooth_k):
            return sage.sageattn_qk_int8_pv_fp16_triton(q, k, v, tensor_layout="HND",
                                                        quantization_backend="triton",
                                                        is_causal=causal, smooth_k=smooth_k)
    elif hasattr(sage, "sageattn"):
        api = "sageattn"  # 1.x: every path is Triton

        def attention(q, k, v, causal, smooth_k):
            return sage.sageattn(q, k, v, tensor_layout="HND", is_causal=causal,
                                 smooth_k=smooth_k)
    else:
        sys.exit(f"error: {sage.__file__} has neither sageattn_qk_int8_pv_fp16_triton nor "
                 "sageattn")
    return attention, {"source": source, "api": api, "path": os.path.dirname(sage.__file__),
                       "stubbed_extensions": stubbed}


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def run_shape(args, attention, n, results):
    b, hq, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    q_len = 1 if args.decode else n
    causal = args.causal and not args.decode
    phase = "decode" if args.decode else "prefill"
    q, k, v = make_inputs(b, hq, hkv, q_len, n, d, args.k_offset, "cuda", args.seed + n)
    flops = 4 * b * hq * q_len * n * d / (2 if causal else 1)
    kv_bytes = 2 * b * hkv * n * d * 2
    ref, heads = None, []
    if args.accuracy:
        step = max(1, hq // max(1, args.accuracy_heads))
        heads = list(range(0, hq, step))[: args.accuracy_heads]
        ref = reference_fp64(q, k, v, causal, heads)
    row = {"backend": BACKEND, "batch": b, "heads": hq, "kv_heads": hkv, "head_dim": d, "n": n,
           "q_len": q_len, "kv_len": n, "causal": causal, "k_offset": args.k_offset}
    label = f"{phase} {BACKEND} B={b} H={hq}/{hkv} D={d} N={n:6d} causal={int(causal)}"
    # SageAttention 1.x smooths K in place (k -= mean): it gets its own copy, so the reference and
    # the output checked against it see the same K.
    k_sage = k.clone()
    call = lambda: attention(q, k_sage, v, causal, not args.no_smooth_k)  # noqa: E731
    try:
        out = call()  # compiles the Triton kernels outside the timed calls; output of the inputs
        torch.cuda.synchronize()
        ms = time_ms(call, args.warmup, args.repeats, "cuda")
    except REFUSALS as e:
        row["not_supported"] = first_line(e)
        results[phase].append(row)
        print(f"{label}: not supported ({row['not_supported']})", flush=True)
        return True
    except Exception as e:  # noqa: BLE001 -- reported, and the run goes on with the next shape
        row["error"] = f"{type(e).__name__}: {first_line(e)}"
        results[phase].append(row)
        print(f"{label}: error ({row['error']})", flush=True)
        return False
    row.update({"ms": ms, "tflops": flops / ms / 1e9, "tbps": kv_bytes / ms / 1e9})
    acc = ""
    if ref is not None:
        row["accuracy"] = metrics(out[0, heads].float(), ref)
        row["accuracy"]["heads_checked"] = heads
        a = row["accuracy"]
        acc = f"  cos {a['cosine']:.7f} rel-L1 {a['rel_l1']:.3e} RMSE {a['rmse']:.3e}"
    results[phase].append(row)
    extra = f" {row['tbps']:6.2f} TB/s" if args.decode else ""
    print(f"{label}: {ms:9.3f} ms {row['tflops']:8.2f} TFLOP/s{extra}{acc}", flush=True)
    return True


def default_suite(args, attention, results):
    """sdpa_bench.py's fixed shapes, for rows comparable with its default run."""
    ok = True
    for causal in (False, True):
        shape = argparse.Namespace(**vars(args))
        shape.batch, shape.heads, shape.kv_heads, shape.head_dim = 4, 32, 32, 128
        shape.causal, shape.decode = causal, False
        for n in (4096, 8192, 16384):
            ok &= run_shape(shape, attention, n, results)
    for bs, n in ((1, 32768), (16, 8192), (64, 8192), (32, 32768), (8, 131072)):
        shape = argparse.Namespace(**vars(args))
        shape.batch, shape.heads, shape.kv_heads, shape.head_dim = bs, 32, 8, 128
        shape.causal, shape.decode = False, True
        ok &= run_shape(shape, attention, n, results)
    return ok


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="write the results to this file")
    ap.add_argument("--sageattention-dir", default=DEFAULT_DIR,
                    help="folder holding the sageattention package (scripts/fetch-sage-peer.sh); "
                         "default $SAGELLM_SAGEATTENTION_DIR, else .device/peers/sageattention in "
                         "the repository (now %(default)s)")
    ap.add_argument("--check-import", action="store_true",
                    help="only import SageAttention from --sageattention-dir, print what was "
                         "found and exit (needs no GPU)")
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
    ap.add_argument("--no-smooth-k", action="store_true",
                    help="call SageAttention with smooth_k=False (its default is True)")
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
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.check_import:
        _, info = load_sageattention(args.sageattention_dir)
        print(f"SageAttention: {info['api']} from {info['path']} ({info['source']})")
        return 0
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA device visible to PyTorch (SageAttention's Triton kernels need an "
                 "NVIDIA GPU)")
    attention, info = load_sageattention(args.sageattention_dir)
    info["smooth_k"] = not args.no_smooth_k
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    torch.manual_seed(args.seed)
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(), "triton": triton_version,
               "sageattention": info, "command": " ".join(sys.argv), "prefill": [], "decode": []}
    print(f"SageAttention: {info['api']} ({info['source']}), Triton {triton_version}", flush=True)
    if args.custom:
        results["shape"] = {"batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
                            "head_dim": args.head_dim, "seq_lens": args.seq_lens,
                            "causal": args.causal and not args.decode, "decode": args.decode,
                            "k_offset": args.k_offset, "seed": args.seed}
        ok = True
        for n in args.seq_lens:
            ok &= run_shape(args, attention, n, results)
    else:
        ok = default_suite(args, attention, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
