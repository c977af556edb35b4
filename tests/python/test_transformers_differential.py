#!/usr/bin/env python3
"""Differential test of `sagellm logits` against Hugging Face transformers (CPU torch, float32).

Builds small random Llama and Mistral models with a fixed seed (GQA and MHA, tied and untied
embeddings, head_dim 64 and 128, llama3 and linear RoPE scaling), saves them with
save_pretrained, and compares sagellm's float32 logits [T, vocab] with the transformers forward
pass: max |diff| <= 1e-4 with the exact `flash` backend. The 8-bit `sage_attn` backend must stay
close (cosine > 0.99) without being bitwise identical.

Exit codes: 0 pass, 1 fail, 77 skip (torch/transformers missing and CI != "true").
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FLASH_TOLERANCE = 1e-4
SAGE_MIN_COSINE = 0.99
SAGE_MAX_MEAN_KL = 0.05

try:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file
except ImportError as e:  # the oracle is optional outside CI
    print(f"oracle not available: {e}")
    sys.exit(1 if os.environ.get("CI") == "true" else 77)

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


@dataclass
class Case:
    name: str
    arch: str  # "llama" or "mistral"
    seq_len: int
    config: dict
    # Asserted: removing the RoPE scaling changes the reference logits by more than this, so
    # the comparison really exercises the scaling.
    scaling_matters: bool = False
    # Rewrites the saved config.json into another spelling that real checkpoints use; the
    # reference logits then come from transformers loading the rewritten file.
    edit_config: object = None


def legacy_rope_keys(cfg, type_key="rope_type"):
    """transformers 4 spelling: top-level rope_theta plus rope_scaling (Llama-3.1 checkpoints)."""
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params.pop("rope_theta")
    params[type_key] = params.pop("rope_type")
    cfg["rope_scaling"] = params


def implicit_head_counts(cfg):
    """Older configs leave head_dim and num_key_value_heads to their defaults."""
    del cfg["head_dim"]
    del cfg["num_key_value_heads"]


def null_head_dim(cfg):
    cfg["head_dim"] = None


BASE = dict(
    num_hidden_layers=2,
    rms_norm_eps=1e-5,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    hidden_act="silu",
    attention_bias=False,
    mlp_bias=False,
)

CASES = [
    Case("gqa_tied_hd64", "llama", 64,
         dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_attention_heads=4,
              num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0),
         edit_config=null_head_dim),
    Case("mha_untied_hd64", "llama", 120,
         dict(vocab_size=320, hidden_size=256, intermediate_size=384, num_attention_heads=4,
              num_key_value_heads=4, tie_word_embeddings=False, rope_theta=10000.0),
         edit_config=implicit_head_counts),
    # head_dim set explicitly and != hidden_size / num_heads (192 / 3 = 64).
    Case("gqa_explicit_hd128", "llama", 160,
         dict(vocab_size=384, hidden_size=192, intermediate_size=448, num_attention_heads=3,
              num_key_value_heads=1, head_dim=128, tie_word_embeddings=False,
              rope_theta=500000.0)),
    # original_max_position_embeddings 64 with 200 tokens: positions far beyond the original
    # context, where llama3 scaling changes the angles.
    Case("llama3_rope_hd64", "llama", 200,
         dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_attention_heads=2,
              num_key_value_heads=1, tie_word_embeddings=False, max_position_embeddings=1024,
              rope_theta=500000.0,
              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                high_freq_factor=4.0, original_max_position_embeddings=64)),
         scaling_matters=True, edit_config=legacy_rope_keys),
    Case("linear_rope_mha_hd128_tied", "llama", 96,
         dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_attention_heads=2,
              num_key_value_heads=2, tie_word_embeddings=True, rope_theta=10000.0,
              rope_scaling=dict(rope_type="linear", factor=4.0)),
         scaling_matters=True, edit_config=lambda cfg: legacy_rope_keys(cfg, type_key="type")),
    Case("mistral_gqa_hd64", "mistral", 150,
         dict(vocab_size=512, hidden_size=256, intermediate_size=640, num_attention_heads=4,
              num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1000000.0,
              sliding_window=None)),
]


def build_model(case: Case, seed: int, rope_scaling_override=False):
    cfg = dict(BASE)
    cfg.update(case.config)
    if rope_scaling_override:
        cfg.pop("rope_scaling", None)
    if case.arch == "llama":
        config = transformers.LlamaConfig(**cfg)
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.MistralConfig(**cfg)
        cls = transformers.MistralForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Norm weights around 1, perturbed so a transposed or skipped norm shows.
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                # Large enough that attention is far from uniform and logits are O(1).
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


def reference_logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32).numpy()


def run_sagellm(binary, model_dir, ids, out_path, backend):
    cmd = [binary, "logits", "--model", str(model_dir), "--ids", ",".join(map(str, ids)),
           "--out", str(out_path), "--device", "cpu", "--attention-backend", backend]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[:3])} ... --attention-backend {backend}` exited "
                           f"{r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
    tensors = load_file(str(out_path))
    if "logits" not in tensors:
        raise RuntimeError(f"{out_path} has no tensor 'logits' (has {sorted(tensors)})")
    return tensors, elapsed


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def mean_kl(p_logits, q_logits):
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def find_binary():
    env = os.environ.get("SAGELLM_BINARY")
    if env:
        return env
    return str(Path(__file__).resolve().parents[2] / "build" / "release" / "sagellm")


def main():
    binary = find_binary()
    if not os.access(binary, os.X_OK):
        print(f"FAIL: sagellm binary {binary} not found (set SAGELLM_BINARY)")
        return 1
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, binary {binary}")
    failures = []
    worst_flash = 0.0
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sagellm_diff_") as tmp:
        for index, case in enumerate(CASES):
            seed = 1000 + index
            model_dir = Path(tmp) / case.name
            model = build_model(case, seed)
            model.save_pretrained(model_dir, safe_serialization=True)
            for required in ("config.json", "model.safetensors"):
                assert (model_dir / required).exists(), f"save_pretrained wrote no {required}"

            rng = np.random.default_rng(seed)
            vocab = case.config["vocab_size"]
            ids = rng.integers(0, vocab, size=case.seq_len).tolist()
            assert len(set(ids)) > 1
            ref = reference_logits(model, ids)
            ref_scale = float(np.abs(ref).max())

            if case.edit_config is not None:
                config_path = model_dir / "config.json"
                cfg = json.loads(config_path.read_text())
                case.edit_config(cfg)
                config_path.write_text(json.dumps(cfg, indent=2))
                cls = type(model)
                reloaded = cls.from_pretrained(model_dir, dtype=torch.float32,
                                               attn_implementation="eager").eval()
                edited = reference_logits(reloaded, ids)
                if not np.array_equal(edited, ref):
                    failures.append(f"{case.name}: transformers reads the rewritten config.json "
                                    f"differently (max |diff| {np.abs(edited - ref).max():.2e})")
                    continue

            if case.scaling_matters:
                unscaled = reference_logits(build_model(case, seed, rope_scaling_override=True), ids)
                sensitivity = float(np.abs(unscaled - ref).max())
                if sensitivity < 100 * FLASH_TOLERANCE:
                    failures.append(f"{case.name}: RoPE scaling changes the reference logits by "
                                    f"only {sensitivity:.2e}; the case does not test it")

            try:
                flash, t_flash = run_sagellm(binary, model_dir, ids, Path(tmp) / "flash.st", "flash")
                sage, t_sage = run_sagellm(binary, model_dir, ids, Path(tmp) / "sage.st",
                                           "sage_attn")
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                failures.append(f"{case.name}: {e}")
                print(f"[FAIL] {case.name}: {e}")
                continue

            problems = []
            for label, t in (("flash", flash), ("sage_attn", sage)):
                got = t["logits"]
                if got.dtype != np.float32 or got.shape != ref.shape:
                    problems.append(f"{label} logits are {got.dtype} {list(got.shape)}, expected "
                                    f"float32 {list(ref.shape)}")
                if "input_ids" in t and t["input_ids"].tolist() != ids:
                    problems.append(f"{label} input_ids do not echo the given ids")
            if problems:
                failures += [f"{case.name}: {p}" for p in problems]
                print(f"[FAIL] {case.name}: " + "; ".join(problems))
                continue

            flash_logits, sage_logits = flash["logits"], sage["logits"]
            diff = np.abs(flash_logits - ref)
            max_diff = float(diff.max())
            worst_at = np.unravel_index(int(diff.argmax()), diff.shape)
            worst_flash = max(worst_flash, max_diff)
            same_top1 = float((flash_logits.argmax(-1) == ref.argmax(-1)).mean())
            sage_vs_flash_max = float(np.abs(sage_logits - flash_logits).max())
            sage_cos = cosine(sage_logits, ref)
            sage_kl = mean_kl(ref, sage_logits)
            sage_top1 = float((sage_logits.argmax(-1) == ref.argmax(-1)).mean())
            print(f"[{case.name}] T={case.seq_len} vocab={vocab} |ref|max={ref_scale:.2f}  "
                  f"flash: max|diff|={max_diff:.2e} at (pos {worst_at[0]}, tok {worst_at[1]}), "
                  f"top1 {same_top1:.1%}, {t_flash:.2f}s  "
                  f"sage_attn: cos={sage_cos:.6f} meanKL={sage_kl:.2e} top1 {sage_top1:.1%} "
                  f"max|sage-flash|={sage_vs_flash_max:.2e}, {t_sage:.2f}s")

            if not max_diff <= FLASH_TOLERANCE:  # also catches NaN
                failures.append(f"{case.name}: flash max |diff| {max_diff:.3e} > {FLASH_TOLERANCE} "
                                f"at position {worst_at[0]}, token {worst_at[1]} "
                                f"(sagellm {flash_logits[worst_at]:.6f}, transformers "
                                f"{ref[worst_at]:.6f})")
            if not sage_cos > SAGE_MIN_COSINE:
                failures.append(f"{case.name}: sage_attn cosine {sage_cos:.6f} <= {SAGE_MIN_COSINE}")
            if not sage_kl < SAGE_MAX_MEAN_KL:
                failures.append(f"{case.name}: sage_attn mean KL {sage_kl:.3e} >= {SAGE_MAX_MEAN_KL}")
            if sage_vs_flash_max == 0.0:
                failures.append(f"{case.name}: sage_attn logits are bitwise identical to flash; "
                                "the 8-bit backend does not seem to be in use")

    print(f"worst flash max |diff| over {len(CASES)} models: {worst_flash:.2e} "
          f"(tolerance {FLASH_TOLERANCE}); {time.monotonic() - t_start:.1f}s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
