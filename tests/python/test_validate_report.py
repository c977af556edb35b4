#!/usr/bin/env python3
"""`sagellm validate --quick` on stories260K, checked from outside the C++ code.

- report.html: every chart is an <svg> that a real XML parser reads, and the values its marks
  carry (data-value, data-y) are the numbers of report.json (drift cosines and rel-L2 per layer,
  passkey rates per cell, KLD quantiles, tokens/s per cell).
- report.md: one section per check, each with its verdict.
- The flash perplexity of the sample text at ctx 512 equals the one Hugging Face transformers
  computes with the golden windowing (tokenized by `tokenizers`, not by sagellm), when torch and
  transformers are installed.

Exit codes: 0 pass, 1 fail, 77 skip (the binary has no `validate` subcommand and CI != "true").
"""

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"
CI = os.environ.get("CI") == "true"


def shared_dir() -> Path:
    env = os.environ.get("SAGELLM_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared"


def binary() -> str:
    return os.environ.get("SAGELLM_BINARY") or str(
        Path(__file__).resolve().parents[2] / "build" / "sagellm")


def fail(msg: str) -> None:
    print(f"FAIL: {msg}")
    sys.exit(1)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


def charts(html: str) -> dict:
    out = {}
    for m in re.finditer(r"<svg\b.*?</svg>", html, re.S):
        svg = ET.fromstring(m.group(0))  # raises on malformed SVG
        out[svg.get("id")] = svg
    return out


def marks(svg) -> list:
    return [e for e in svg.iter() if "mark" in (e.get("class") or "").split()]


def check_charts(report: dict, html: str) -> None:
    c = charts(html)
    for name in ["kld-quantiles", "throughput-prefill", "throughput-decode", "drift-cosine",
                 "drift-rel-l2", "kld-by-position", "passkey-baseline", "passkey-candidate"]:
        check(name in c, f"chart {name} missing from report.html")
    checks = report["checks"]

    layers = checks["drift"]["layers"]
    for chart, keys in [("drift-cosine", ("hidden_cosine", "attn_cosine")),
                        ("drift-rel-l2", ("hidden_rel_l2", "attn_rel_l2"))]:
        series = [g for g in c[chart].iter(f"{SVG}g") if g.get("class") == "series"]
        check(len(series) == 2, f"{chart}: {len(series)} series")
        for g, key in zip(series, keys):
            ys = [float(e.get("data-y")) for e in marks(g)]
            want = [layer[key] for layer in layers]
            check(len(ys) == len(want) == 5, f"{chart}: {len(ys)} points for {key}")
            check(all(close(a, b) for a, b in zip(ys, want)), f"{chart}: {ys} != {want}")

    pk = checks["context"]["passkey"]
    for role in ["baseline", "candidate"]:
        cells = [e for e in marks(c[f"passkey-{role}"]) if e.tag == f"{SVG}rect"]
        check(len(cells) == len(pk["lengths"]) * len(pk["depths"]),
              f"passkey-{role}: {len(cells)} cells")
        got = sorted(float(e.get("data-value")) for e in cells)
        want = sorted(cell[role]["rate"] for cell in pk["cells"])
        check(got == want, f"passkey-{role}: {got} != {want}")

    k = checks["logits"]["corpora"][0]["kld"]
    bars = [float(e.get("data-value")) for e in marks(c["kld-quantiles"])]
    want = [k[q] for q in ["median", "p90", "p99", "p99.9", "max"] if k[q] > 0]
    check(len(bars) == len(want) and all(close(a, b) for a, b in zip(bars, want)),
          f"kld-quantiles: {bars} != {want}")

    for phase in ["prefill", "decode"]:
        ys = sorted(float(e.get("data-y")) for e in marks(c[f"throughput-{phase}"]))
        want = sorted(cell[f"{phase}_tokens_per_s"] for cell in checks["throughput"]["cells"])
        check(len(ys) == len(want) and all(close(a, b) for a, b in zip(ys, want)),
              f"throughput-{phase}: {ys} != {want}")


def check_markdown(report: dict, md: str) -> None:
    titles = {"runtime": "1. Runtime flag", "logits": "2. Logits vs baseline",
              "perplexity": "3. Perplexity", "throughput": "4. Throughput", "memory": "5. Memory",
              "drift": "6. Activation drift and determinism",
              "context": "7. Context-length accuracy"}
    for key, title in titles.items():
        verdict = report["checks"][key]["verdict"].upper()
        check(f"## {title} — {verdict}" in md, f"report.md lacks '## {title} — {verdict}'")


def check_perplexity_with_transformers(report: dict, model: Path, text: Path) -> None:
    try:
        import torch
        import transformers
        from tokenizers import Tokenizer
    except ImportError as e:
        if CI:
            fail(f"the oracle is missing in CI: {e}")
        print(f"skipping the transformers perplexity oracle: {e}")
        return
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    ids = tok.encode(text.read_text(), add_special_tokens=False).ids
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
    hf.eval()
    nll = []
    with torch.no_grad():
        for start in range(0, len(ids), 511):
            seq = [1] + ids[start:start + 511]
            logits = hf(torch.tensor([seq])).logits[0].double()
            lp = torch.log_softmax(logits, dim=-1)
            nll += [-lp[j, seq[j + 1]].item() for j in range(len(seq) - 1)]
    ppl = math.exp(sum(nll) / len(nll))
    p = report["checks"]["perplexity"]["corpora"][0]
    check(p["tokens"] == len(nll), f"tokens {p['tokens']} != {len(nll)}")
    check(abs(p["baseline"]["ppl"] - ppl) < 5e-4, f"flash PPL {p['baseline']['ppl']} != HF {ppl}")
    print(f"flash PPL {p['baseline']['ppl']:.5f}, transformers {ppl:.5f}, over {len(nll)} tokens")


def main() -> None:
    help_run = subprocess.run([binary(), "validate", "--help"], capture_output=True, text=True)
    if help_run.returncode != 0:
        msg = f"{binary()} has no validate subcommand: {help_run.stderr.strip()}"
        if CI:
            fail(msg)
        print(msg)
        sys.exit(77)
    shared = shared_dir()
    model = shared / "models" / "stories260K"
    text = shared / "data" / "tinystories" / "sample.txt"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        run = subprocess.run(
            [binary(), "validate", "--model", str(model), "--quick", "--corpus", str(text),
             "--haystack-dir", str(shared / "data" / "haystack"), "--out", str(out), "--json"],
            capture_output=True, text=True)
        check(run.returncode == 0, f"validate failed: {run.stderr}")
        summary = json.loads(run.stdout)
        report = json.loads((out / "report.json").read_text())
        check(summary["verdict"] == report["verdict"], "stdout and report.json disagree")
        check(set(summary["checks"]) == set(report["checks"]), "stdout lists other checks")
        check_charts(report, (out / "report.html").read_text())
        check_markdown(report, (out / "report.md").read_text())
        check_perplexity_with_transformers(report, model, text)
    print("ok")


if __name__ == "__main__":
    main()
