# Prints one Markdown table from the JSON of bench_torch.py and `sbpc bench --json`: step time, FLOP rate, memory, speed-up.
"""One Markdown table from two or more benchmark JSON documents.

Each file is the output of `python3 models/bench_torch.py --json` ("framework":
"pytorch") or `sbpc bench --json` ("framework": "sbpc"), one schema:

    {"framework", "model", "batch", "threads", "runs", "warmup", "keep", "attention",
     "sgemm_peak_gflops", "plans": [{"name", "median_s", "min_s", "max_s", "times_s",
     "flops", "gflops", "peak_fraction", "peak_rss_bytes"}, ...], "speedup"}

A row per (framework, plan).  Speed-up is the file's no-sbp median over the row's
median (1.00x on the no-sbp row).  When both sbpc and PyTorch are present, two lines
follow: sbpc's median step time over PyTorch's, without SBP and with SBP (the first
file of each framework that has the plan); below 1, sbpc is faster; and the same
ratios as the median over rounds of sbpc's k-th step time over PyTorch's k-th (the
rounds of one bench_torch.py --sbpc run step both back to back).  A figure that is
null in the file prints as an em dash.

    python3 models/bench_table.py torch.json sbpc.json [more.json ...]
"""

import argparse
import json
import os
import statistics
import sys

NAMES = {"pytorch": "PyTorch", "sbpc": "sbpc"}
PLAN_NAMES = {"no-sbp": "no-SBP", "sbp": "SBP"}
SETTINGS = ("batch", "threads", "keep", "attention", "precision")  # should agree across files
DASH = "\u2014"


class BadFile(Exception):
    """An unreadable or malformed file: one line on stderr, exit 2."""


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load(path):
    """The document in `path`, checked for what the table reads."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise BadFile(f"{path}: cannot read: {e.strerror}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFile(f"{path}: not JSON: {e}")
    if not isinstance(doc, dict):
        raise BadFile(f"{path}: expected a JSON object")
    for key, ok in (("framework", lambda v: isinstance(v, str)), ("model", lambda v: isinstance(v, str)),
                    ("plans", lambda v: isinstance(v, list) and v),
                    ("sgemm_peak_gflops", lambda v: v is None or is_number(v))):
        if key not in doc or not ok(doc[key]):
            raise BadFile(f"{path}: missing or bad {key!r}")
    for i, plan in enumerate(doc["plans"]):
        if not isinstance(plan, dict) or not isinstance(plan.get("name"), str):
            raise BadFile(f"{path}: plans[{i}]: missing or bad 'name'")
        for key in ("median_s", "min_s", "max_s"):
            if not is_number(plan.get(key)) or plan[key] <= 0:
                raise BadFile(f"{path}: plans[{i}] ({plan['name']}): missing or bad {key!r}")
        for key in ("flops", "gflops", "peak_fraction", "peak_rss_bytes"):
            if not (plan.get(key) is None or is_number(plan[key])):
                raise BadFile(f"{path}: plans[{i}] ({plan['name']}): bad {key!r}")
    return doc


def fmt(v, spec, scale=1.0, unit=""):
    return DASH if v is None else f"{v * scale:{spec}}{unit}"


def describe(doc, label):
    return (f"- {label}: `{doc['model']}`, batch {doc.get('batch', '?')}, "
            f"{doc.get('threads', '?')} threads, runs {doc.get('runs', '?')}, "
            f"warm-up {doc.get('warmup', '?')}, keep {doc.get('keep', '?')}, "
            f"attention {doc.get('attention', '?')}, precision {doc.get('precision', 'fp32')}, "
            f"sgemm peak {fmt(doc['sgemm_peak_gflops'], '.1f')} GFLOP/s"
            + (f", OpenBLAS core {doc['blas_core']}" if doc.get("blas_core") else "")
            + (f" (OpenBLAS detected {doc['blas_core_detected']})" if doc.get("blas_core_detected") else "")
            + (f", CPU capability {doc['cpu_capability']}" if doc.get("cpu_capability") else ""))


def table(docs):
    """[lines] of the Markdown report for [(path, doc)]."""
    count = {}
    for _, doc in docs:
        count[doc["framework"]] = count.get(doc["framework"], 0) + 1
    lines, rows = [], []
    for path, doc in docs:
        label = NAMES.get(doc["framework"], doc["framework"])
        if count[doc["framework"]] > 1:
            label += f" ({os.path.basename(path)})"
        lines.append(describe(doc, label))
        base = next((p["median_s"] for p in doc["plans"] if p["name"] == "no-sbp"), None)
        for p in doc["plans"]:
            rows.append((label, p["name"], f"{p['median_s']:.3f}",
                         f"{p['min_s']:.3f}\u2013{p['max_s']:.3f}",
                         fmt(p.get("flops"), ".1f", 1e-9), fmt(p.get("gflops"), ".1f"),
                         fmt(p.get("peak_fraction"), ".1f", 100.0),
                         fmt(p.get("peak_rss_bytes"), ".0f", 2**-20),
                         fmt(None if base is None else base / p["median_s"], ".2f", 1.0, "\u00d7")))
    for key in SETTINGS:
        values = sorted({str(doc.get(key)) for _, doc in docs})
        if len(values) > 1:
            lines.append(f"- **Note**: the files differ in {key} ({', '.join(values)})")
    head = ("framework", "plan", "median s", "min\u2013max s", "GFLOP/step", "GFLOP/s",
            "% of sgemm peak", "peak MiB", "speed-up")
    lines += ["", "| " + " | ".join(head) + " |",
              "| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]

    def field(framework, plan, key):
        """The first file of the framework with the plan: the plan's `key`, or None."""
        return next((p.get(key) for _, doc in docs if doc["framework"] == framework
                     for p in doc["plans"] if p["name"] == plan), None)

    def median(framework, plan):
        return field(framework, plan, "median_s")

    ratios = [(plan, median("sbpc", plan), median("pytorch", plan)) for plan in PLAN_NAMES]
    ratios = [(plan, s / t) for plan, s, t in ratios if s is not None and t is not None]
    if ratios:
        lines += ["", "Median step time, sbpc over PyTorch (below 1: sbpc is faster):", ""]
        lines += [f"- sbpc/PyTorch {PLAN_NAMES[plan]}: {r:.2f}\u00d7" for plan, r in ratios]

    # bench_torch.py --sbpc steps the plans of both frameworks back to back in each round, so
    # the k-th times of two plans share the machine's state: their ratio is steadier.
    rounds = []
    for plan in PLAN_NAMES:
        s, t = field("sbpc", plan, "times_s"), field("pytorch", plan, "times_s")
        if s and t and len(s) == len(t):
            rounds.append((plan, statistics.median(a / b for a, b in zip(s, t))))
    if rounds:
        lines += ["", "Median of the per-round ratios (round k of each framework; files from one "
                  "bench_torch.py --sbpc run):", ""]
        lines += [f"- sbpc/PyTorch {PLAN_NAMES[plan]}: {r:.2f}\u00d7" for plan, r in rounds]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="One Markdown table from the JSON of bench_torch.py and sbpc bench.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", metavar="FILE.json")
    args = parser.parse_args(argv)
    try:
        if len(args.files) < 2:
            raise BadFile("usage: bench_table.py A.json B.json [...] (two or more files)")
        docs = [(path, load(path)) for path in args.files]
    except BadFile as e:
        print(f"bench_table.py: error: {e}", file=sys.stderr)
        return 2
    print("\n".join(table(docs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
