#!/usr/bin/env python3
# scaling_estimate.py: data-parallel scaling on paper, the gradients' ring-allreduce time against the measured step time.
"""Data-parallel scaling on paper: ring-allreduce time of the gradients against the step time.

For each model: its gradient bytes per step (4 bytes per trainable parameter, counted from
the ONNX initializers) and its measured step time without and with SBP (`sbpc bench --json`
on one machine, at the per-machine batch). A ring allreduce over P machines sends and
receives 2(P-1)/P of the gradient bytes per machine, in 2(P-1) messages:

    T_ar = 2(P-1)/P * G / B  +  2(P-1) * alpha

with B the link's usable bandwidth (90% of line rate) and alpha 30 us per message (TCP over
Ethernet in one rack). Two bounds for the step on P machines: no overlap (T_step + T_ar)
and the bucketed schedule's best case, where every bucket but the last reduces during the
backward (two thirds of the step): max(T_step, T_step/3 + T_rest) + T_last, with T_last the
allreduce of the last bucket (what is left after whole 25 MiB buckets, which starts when the
backward ends) and T_rest that of the others. A model under 25 MiB has one bucket: nothing
overlaps. Efficiency is T_step over that; speed-up over one machine
is P times it.

Usage: scaling_estimate.py NAME=MODEL.onnx:BENCH.json ...   (prints Markdown)
"""
import json
import sys

import onnx

LINKS = {"10 GbE": 10e9 / 8 * 0.9, "25 GbE": 25e9 / 8 * 0.9}
ALPHA = 30e-6
BUCKET = 25 * 2**20


def gradient_bytes(path):
    m = onnx.load(path, load_external_data=False)
    n = 0
    for t in m.graph.initializer:
        if "running_" in t.name or "num_batches" in t.name:
            continue
        size = 1
        for d in t.dims:
            size *= d
        if t.data_type == onnx.TensorProto.FLOAT:
            n += size
    return 4 * n


def allreduce(g, p, bw):
    return 2 * (p - 1) / p * g / bw + 2 * (p - 1) * ALPHA


def main():
    rows = []
    for arg in sys.argv[1:]:
        name, rest = arg.split("=", 1)
        model, bench = rest.rsplit(":", 1)
        b = json.load(open(bench))
        steps = {p["name"]: p["median_s"] for p in b["plans"]}
        rows.append((name, b["batch"], gradient_bytes(model), steps))
    print("| model | batch per machine | gradients | step (no SBP / SBP) | link | machines | allreduce | efficiency no SBP: no overlap / bucketed | efficiency SBP: no overlap / bucketed | speed-up over 1 machine, SBP bucketed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, batch, g, steps in rows:
        for link, bw in LINKS.items():
            for p in (4, 16, 64):
                t = allreduce(g, p, bw)
                last_bytes = g - (g - 1) // BUCKET * BUCKET
                t_last = allreduce(last_bytes, p, bw)
                t_rest = allreduce(g - last_bytes, p, bw) if g > last_bytes else 0
                eff = {}
                for plan, s in steps.items():
                    plain = s / (s + t)
                    bucketed = s / (max(s, s / 3 + t_rest) + t_last)
                    eff[plan] = (plain, bucketed)
                a, c = eff["no-sbp"], eff["sbp"]
                print(
                    f"| {name} | {batch} | {g / 2**20:.1f} MiB | {1000 * steps['no-sbp']:.0f} / {1000 * steps['sbp']:.0f} ms | {link} | {p} | "
                    f"{1000 * t:.0f} ms | {100 * a[0]:.0f}% / {100 * a[1]:.0f}% | {100 * c[0]:.0f}% / {100 * c[1]:.0f}% | {p * c[1]:.1f}x |"
                )


if __name__ == "__main__":
    main()
