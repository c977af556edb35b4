#!/usr/bin/env python3
"""Peer timing for `sagellm bench`: Hugging Face transformers (eager PyTorch, SDPA attention)
decoding a Llama model built from a config.json with random bf16 weights on the GPU.

Prefill tokens/s = prompt tokens / time of generating one token; decode tokens/s = the extra
tokens / the extra time of generating N+1 tokens instead of one (medians over --repeats).

Usage: hf_decode_bench.py --config-dir DIR [--batch 1] [--input-len 1024] [--output-len 64]
                          [--repeats 3] [--json OUT]
"""
import argparse
import json
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config-dir", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        import torch
        import transformers
    except ImportError as e:
        print(f"skipped: {e}", file=sys.stderr)
        return 77
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU", file=sys.stderr)
        return 77

    config = transformers.AutoConfig.from_pretrained(args.config_dir)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config)
    model.eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.input_len), device="cuda",
                        generator=gen)

    def timed(new_tokens: int) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(2)  # warm-up
    first = [timed(1) for _ in range(args.repeats)]
    full = [timed(args.output_len + 1) for _ in range(args.repeats)]
    t1, tn = statistics.median(first), statistics.median(full)
    result = {
        "peer": f"transformers {transformers.__version__} eager, torch {torch.__version__}, sdpa",
        "gpu": torch.cuda.get_device_name(),
        "batch": args.batch,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "prefill_seconds": t1,
        "prefill_tokens_per_s": args.batch * args.input_len / t1,
        "decode_tokens_per_s": args.batch * args.output_len / (tn - t1),
        "step_ms": 1000 * (tn - t1) / args.output_len,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
