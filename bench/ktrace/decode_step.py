#!/usr/bin/env python3
"""Per-kernel breakdown of graph-replayed decode steps from a ktrace CSV (ktrace.cpp).

A step starts at each embedding kernel replayed from a graph. Over the last --steps steps it prints
the median span of a step and, for the kernels of one decoder layer (found as the period of the
step's kernel sequence), each kernel's median duration and its median increment: its end minus
the previous kernel's end, its share of the critical path when launches overlap (programmatic
dependent launch).

    python3 bench/ktrace/decode_step.py trace.csv [--steps 30]
"""
import argparse
import re
import statistics
import sys


def short_name(mangled):
    for key in ("split_combine", "rmsnorm", "gemv", "rope", "flash_decode", "sage_decode",
                "quantize", "embedding", "argmax", "sample"):
        if key in mangled:
            return key
    return re.sub(r"^_Z\w*?\d+", "", mangled)[:32]


def load_steps(path):
    kernels = []
    with open(path) as f:
        header = f.readline().strip().split(",")
        if header[:2] != ["start_ns", "end_ns"]:
            sys.exit(f"{path}: not a ktrace CSV")
        for lineno, line in enumerate(f, start=2):
            p = line.rstrip("\n").split(",", 8)
            try:
                if len(p) != 9:
                    raise ValueError(f"{len(p)} fields, not 9")
                start, end, graph = int(p[0]), int(p[1]), int(p[2])
            except ValueError as e:
                sys.exit(f"{path}:{lineno}: malformed row ({e})")
            if graph == 0:
                continue  # not replayed from a graph
            kernels.append((start, end, f"{short_name(p[8])}[{p[4]}x{p[5]}]"))
    kernels.sort()
    steps, cur = [], []
    for k in kernels:
        if k[2].startswith("embedding") and cur:
            steps.append(cur)
            cur = []
        cur.append(k)
    if cur:
        steps.append(cur)
    return steps


def layer_period(sigs):
    n = len(sigs)
    lo = n // 4
    for p in range(1, n // 3):
        if all(sigs[i] == sigs[i + p] for i in range(lo, lo + 2 * p)):
            return p
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    steps = load_steps(a.trace)
    if not steps:
        sys.exit("no graph-replayed kernels in the trace")
    n = len(steps[-1])
    steps = [s for s in steps[-a.steps:] if len(s) == n]
    span = statistics.median(s[-1][1] - s[0][0] for s in steps) / 1e3
    sigs = [k[2] for k in steps[0]]
    p = layer_period(sigs)
    start = n // 2
    if p >= n:  # no repeating layer: the whole step, from its second kernel
        start, p = 1, n - 1
    print(f"{len(steps)} steps of {n} kernels, median span {span:.1f} us; "
          f"one layer = {p} kernels")
    print(f"{'kernel[grid]':<28} {'duration us':>12} {'increment us':>13}")
    total = 0.0
    for i in range(start, start + p):
        dur = statistics.median(s[i][1] - s[i][0] for s in steps) / 1e3
        inc = statistics.median(s[i][1] - s[i - 1][1] for s in steps) / 1e3
        total += inc
        print(f"{sigs[i]:<28} {dur:12.2f} {inc:13.2f}")
    print(f"{'layer':<28} {'':>12} {total:13.2f}")


if __name__ == "__main__":
    main()
