#!/usr/bin/env python3
"""An independent emulation of sage_attn's numerics (src/attention/sage/sage_numerics.h), for
ranking quantization choices before the specification, the CPU twin and the kernels change.

It runs a model's fp32 forward in Hugging Face transformers with the attention replaced by the
emulation (per page of 64 keys: INT8 Q.K^T after K-mean smoothing with q'.mean added back, online
softmax with one max update per page, P and V rounded as configured, two-level accumulation), and
reports the mean KL divergence and same-top-1 rate against the same forward with exact attention,
over windows cut as `sagellm perplexity --ctx N --chunks W` cuts them (BOS + N - 1 tokens).

Each --config is a JSON object of changes to the defaults (the specification with fp8 P.V):
  k:     "page" (the specification: one INT8 scale per page and KV head), "token" (one per key),
         "exact" (fp32 Q.K^T, nothing quantized)
  p:     "fp8" (FP8 e4m3 of 448 P), "fp16", "f32", "u8" (int8 mode: UINT8 of 255 P against
         each row's own page max, times INT8 V with one scale per channel per page, whatever "v"
         says; the page is scaled by exp2(page max - running max))
  v:     "fp8" (FP8 e4m3, one bf16 scale per channel per page), "int8" (INT8, one scale per
         channel per page, max |v| / 127), "fp16", "f32"
  cache: "f32" or "bf16" (K and V rounded to bf16 before anything else)
  sink_pages: N computes the first N pages exactly (fp32 Q.K^T, fp16 P, bf16 V); with
         sink "qk" or "pv" only that product
  v_mean: true subtracts each page's per-channel V mean before rounding V and adds
         rowsum(P) * mean back (exact, since the row sum is taken over the same rounded P)
Example (passkey-4k's held-out essays, as in BENCHMARKS.md):
  python3 bench/numerics/sage_emulation.py --model ../shared/models/passkey-4k --text held.txt \\
      --ctx 4096 --windows 4 --config '{"k": "page", "p": "fp8", "v": "fp8"}'
Approximate by design: fp32 sums in torch's order, torch's exp2; it matched the CPU twin's mean
KLD to within 5% on passkey-4k (BENCHMARKS.md).
"""
import argparse
import json
import math

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AttentionInterface, AutoModelForCausalLM

LOG2E = 1.4426950408889634
PAGE = 64
DEFAULTS = {"k": "page", "p": "fp8", "v": "fp8", "cache": "f32", "v_mean": False,
            "sink_pages": 0, "sink": "all"}  # the specification, fp8 P.V
CFG = dict(DEFAULTS)


def round_half_away(x):
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def int8_codes(x, scale):
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, round_half_away(x / safe).clamp(-127, 127), torch.zeros_like(x))


def fp8(x):
    return x.clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float32)


def attend_kv_head(q, k, v, scaling):
    """q [H, S, D] (the query heads of one KV head), k and v [S, D]; causal."""
    if CFG["cache"] == "bf16":
        k, v = k.bfloat16().float(), v.bfloat16().float()
    heads, seq, dim = q.shape
    qp = q * (scaling * LOG2E)
    q_scale = qp.abs().amax(-1, keepdim=True) / 127
    q8 = int8_codes(qp, q_scale)
    acc = torch.zeros(heads, seq, dim)
    m = torch.full((heads, seq), -math.inf)
    l = torch.zeros(heads, seq)
    rows = torch.arange(seq)
    for p0 in range(0, seq, PAGE):
        kp, vp = k[p0:p0 + PAGE], v[p0:p0 + PAGE]
        sink = p0 < CFG["sink_pages"] * PAGE
        if CFG["k"] == "exact" or (sink and CFG["sink"] in ("all", "qk")):
            s = (qp @ kp.T)
        else:
            mean = kp.mean(0)
            kc = kp - mean
            if CFG["k"] == "page":
                k_scale = kc.abs().max() / 127
                s = (q8 @ int8_codes(kc, k_scale).T) * (q_scale * k_scale)
            else:
                k_scale = kc.abs().amax(-1, keepdim=True) / 127
                s = (q8 @ int8_codes(kc, k_scale).T) * q_scale * k_scale.T[None]
            s = s + (qp @ mean)[..., None]
        visible = (p0 + torch.arange(kp.shape[0]))[None, :] <= rows[:, None]
        s = torch.where(visible[None], s, -math.inf)
        m_new = torch.maximum(m, s.amax(-1))
        live = m_new > -math.inf
        ref = torch.where(live, m_new, torch.zeros_like(m_new))
        alpha = torch.where(m > -math.inf, torch.exp2(m - ref), torch.zeros_like(m))
        alpha = torch.where(live, alpha, torch.ones_like(m))
        prob = torch.where(visible[None], torch.exp2(s - ref[..., None]), 0.0)
        p = {"fp8": lambda x: fp8(x * 448) / 448, "fp16": lambda x: x.half().float(),
             "f32": lambda x: x, "u8": lambda x: x}[CFG["p"]](prob)
        if CFG["p"] == "u8":
            # P as UINT8 against each row's own page max (255 there), V as INT8 per channel:
            # an integer product, scaled back by exp2(page max - running max) / 255.
            pmax = s.amax(-1)
            pref = torch.where(pmax > -math.inf, pmax, torch.zeros_like(pmax))
            codes_p = torch.where(visible[None],
                                  torch.round(torch.exp2(s - pref[..., None]) * 255), 0.0)
            beta = torch.where(pmax > -math.inf, torch.exp2(pref - ref),
                               torch.zeros_like(pref)) / 255
            v_scale = (vp.abs().amax(0) / 127).bfloat16().float()
            partial = (codes_p @ int8_codes(vp, v_scale)) * v_scale * beta[..., None]
            acc = acc * alpha[..., None] + partial
            l = l * alpha + codes_p.sum(-1) * beta
            m = m_new
            continue
        if sink and CFG["sink"] in ("all", "pv"):
            p = prob.half().float()
            partial = p @ vp.bfloat16().float()
            acc = acc * alpha[..., None] + partial
            l = l * alpha + p.sum(-1)
            m = m_new
            continue
        v_mean = vp.mean(0) if CFG["v_mean"] else torch.zeros(dim)
        vp = vp - v_mean
        if CFG["v"] == "fp8":
            v_scale = (vp.abs().amax(0) / 448).bfloat16().float()
            safe = torch.where(v_scale > 0, v_scale, torch.ones_like(v_scale))
            codes = torch.where(v_scale > 0, fp8(vp / safe), torch.zeros_like(vp))
            partial = (p @ codes) * v_scale
        elif CFG["v"] == "int8":
            v_scale = vp.abs().amax(0) / 127
            partial = (p @ int8_codes(vp, v_scale)) * v_scale
        else:
            partial = p @ (vp.half().float() if CFG["v"] == "fp16" else vp)
        partial = partial + p.sum(-1, keepdim=True) * v_mean
        acc = acc * alpha[..., None] + partial
        l = l * alpha + p.sum(-1)
        m = m_new
    return acc / l[..., None]


def emulated_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       **kwargs):
    batch, heads, _, _ = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    out = torch.stack([
        torch.cat([attend_kv_head(query[b, h * group:(h + 1) * group], key[b, h], value[b, h],
                                  scaling) for h in range(kv_heads)], 0) for b in range(batch)])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("sage_emulation", emulated_attention)


def logits(model_dir, impl, windows):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation=impl).eval()
    with torch.no_grad():
        return [model(torch.tensor([w])).logits[0, :-1].float() for w in windows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--bos", type=int, default=None, help="BOS id (default: the model config's)")
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(f"{args.model}/config.json") as f:
        bos = args.bos if args.bos is not None else json.load(f)["bos_token_id"]
    with open(args.text) as f:
        ids = Tokenizer.from_file(f"{args.model}/tokenizer.json").encode(
            f.read(), add_special_tokens=False).ids
    step = args.ctx - 1
    windows = [[bos] + ids[i * step:(i + 1) * step] for i in range(args.windows)
               if ids[i * step:(i + 1) * step]]
    base = logits(args.model, "sdpa", windows)
    for config in args.config:
        CFG.clear()
        CFG.update(DEFAULTS)
        CFG.update(json.loads(config))
        test = logits(args.model, "sage_emulation", windows)
        kld, same, n = [], 0, 0
        for b, t in zip(base, test):
            lp, lq = F.log_softmax(b, -1), F.log_softmax(t, -1)
            kld.append((lp.exp() * (lp - lq)).sum(-1))
            same += (b.argmax(-1) == t.argmax(-1)).sum().item()
            n += b.shape[0]
        print(f"{json.dumps(CFG)}: mean KLD {torch.cat(kld).mean().item():.3e}, "
              f"same top-1 {100.0 * same / n:.2f}%, {n} tokens", flush=True)


if __name__ == "__main__":
    main()
