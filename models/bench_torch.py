# Times PyTorch eager CPU training steps of one full-size model, no SBP vs SBP: the PyTorch side of `sbpc bench`.
"""Step time of PyTorch eager CPU training, no SBP vs SBP, one fresh process per plan.

The model is one of export.py's full-size timm models, built as reference.py and
peak_torch.py build it: export.py's builder, seeds and perturbation, and eval() like
reference.py (no dropout / drop path; these models have none at their defaults, and
gradients are still computed).  Input: seeded randn [B, 3, 224, 224]; labels: seeded
random classes (export.py's seeds for the model, or --seed).

A step is what gets timed (time.perf_counter around it):
    loss = cross_entropy(model(x), labels, reduction="mean"); loss.backward()
    optimizer.step(); optimizer.zero_grad(set_to_none=True)
with SGD (lr 0.01, momentum 0.9, sbpc's default).  The SBP plan patches the model with
reference.py's rules (sbp_targets' default block rule, apply_sbp, the paper's
Algorithm 1) and a fixed grid mask: keep --keep, phase 0 (keep 1 = all rows kept, the
split without any drop), attention --attention (qkv for ViT, none for ConvNeXt).

Processes.  Each plan runs in its own child process (this script with a hidden --child
flag), which sets torch.set_num_threads(--threads) and set_num_interop_threads(1),
builds the model and runs the --warmup steps, then waits.  The parent starts the
children one after another, and once all are ready it runs --runs rounds; in each
round it asks each plan's child, in turn, for one counted step.  So the plans
alternate step by step, a change in the machine's load hits both alike, and no model
is rebuilt between runs.  Only one child computes at a time: the idle one blocks on a
pipe (torch's OpenMP threads, libgomp, stop spinning within a millisecond or so).
Last, each child counts the FLOPs of one more step under
torch.utils.flop_counter.FlopCounterMode (not timed; matmul, conv and SDPA by torch's
formulas, whose SDPA backward includes recomputing the scores; element-wise ops are
not counted; flop_mapping() adds the CPU SDPA kernels and fixes the grouped conv's
weight gradient), then reports its peak resident set size,
resource.getrusage(RUSAGE_SELF).ru_maxrss * 1024 bytes: the whole process (interpreter,
torch and timm, weights, gradients, momentum buffers, activations).

The sgemm peak is measured before and after the rounds, each time in a child of its own
with the same threads: torch.mm of two 4096x4096 float32 matrices, 1 warm-up and the
median of 3, 2 * 4096^3 / t; the higher of the two is the peak.  Per plan: median, min and max of the counted step times, FLOPs per
step, achieved GFLOP/s = FLOPs / median, and its fraction of the sgemm peak.
Speed-up = no-SBP median / SBP median.  torch.use_deterministic_algorithms is left
off (PyTorch's default), unlike reference.py, which needs bit-stable outputs.

With --sbpc BIN --onnx PATH, sbpc's two plans (compiled from the export with --keep 1 and
with the same --keep and --attention) run too, as `sbpc bench-child` processes, and
each round steps all four plans in turn: PyTorch no-SBP, sbpc no-SBP, PyTorch SBP,
sbpc SBP.  The shared machine's slow spells, which last seconds to minutes, then fall
on both frameworks alike, which timing them one after the other does not give.  sbpc's
figures (its own sgemm peak through OpenBLAS, the rate inside its GEMM calls, its
children's peak RSS) go to --sbpc-json in `sbpc bench --json`'s schema.  `make bench`
runs it this way.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PLANS = ("no-sbp", "sbp")
ATTENTIONS = ("qkv", "query", "none")
SGEMM_N = 4096


class UsageError(Exception):
    """A bad argument: one line on stderr, exit 2."""


def default_attention(model):
    return "none" if "convnext" in model else "qkv"  # reference.py's kinds, by name


# --- child: one plan (or the sgemm peak) in this process ---------------------------

def flop_mapping():
    """FlopCounterMode formulas that torch 2.13 lacks or gets wrong: the CPU SDPA kernels
    (it lists only the GPU ones), and convolution_backward, whose weight-gradient term
    ignores groups (a depthwise conv's counted C times; pytorch/pytorch PR 183405).
    Here each gradient a conv's backward computes costs as much as its forward,
    groups included."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def conv_backward(grad_out, x, w, _bias, _stride, _padding, _dilation, transposed,
                      _output_padding, _groups, output_mask, *_, **__):
        return fc.conv_flop_count(x, w, grad_out, transposed) * sum(map(bool, output_mask[:2]))

    return {
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, **__: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, **__: fc.sdpa_backward_flop_count(g, q, k, v),
        aten.convolution_backward: conv_backward,
    }


def sgemm_child(out):
    import torch

    a, b = (torch.randn(SGEMM_N, SGEMM_N) for _ in range(2))
    c = torch.empty(SGEMM_N, SGEMM_N)
    times = []
    for _ in range(4):  # 1 warm-up + 3
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    out.write(json.dumps({"gflops": 2 * SGEMM_N**3 / statistics.median(times[1:]) / 1e9}) + "\n")


def plan_child(args, out):
    """Builds the plan, warms up, then serves "step" (one timed step) and "done"
    (FLOP count and peak RSS) requests from stdin, one JSON line each on `out`."""
    import export  # first: makes torchvision, hence timm, importable
    import numpy as np
    import reference
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    name = args.model
    model, chw = export.build(name, export.FULL[name])  # seeded, perturbed, eval()
    if args.seed is None:
        x = export.make_input(name, chw, args.batch)
        g = torch.Generator().manual_seed(export.seed_of(name, f"labels{args.batch}"))
    else:
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn((args.batch, *chw), generator=g)
    labels = torch.randint(0, model.num_classes, (args.batch,), generator=g)
    if args.child == "sbp":
        targets = reference.sbp_targets(model, x)
        keep = (np.ones(targets.grid, dtype=bool) if args.keep == 1 else reference.base_mask(
            reference.SbpConfig(args.attention, "grid", args.keep, 0, None), *targets.grid))
        reference.apply_sbp(model, targets, keep, args.attention)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        # --precision bf16: PyTorch's CPU autocast around the forward and the loss; the
        # backward runs outside it, as PyTorch documents.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), labels, reduction="mean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    while True:
        request = sys.stdin.readline().strip()
        if request == "step":
            t0 = time.perf_counter()
            loss = step()
            t = time.perf_counter() - t0
            out.write(json.dumps({"time_s": t, "loss": loss.item()}) + "\n")
        elif request == "done":
            with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
                step()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            out.write(json.dumps({"flops": counter.get_total_flops(), "peak_rss_bytes": rss}) + "\n")
            return
        else:  # EOF: the parent is gone
            return
        out.flush()


def child(args):
    # Protocol lines go to the original stdout; anything else printed here goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if args.child == "sgemm":
        sgemm_child(out)
    else:
        plan_child(args, out)
    out.flush()
    return 0


# --- parent ------------------------------------------------------------------------

class Progress:
    """One rewritten status line on a terminal stderr; short plain lines otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty()

    def __call__(self, msg):
        sys.stderr.write(f"\r\033[K{msg}" if self.tty else f"bench_torch: {msg}\n")
        sys.stderr.flush()

    def end(self):
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


class Piped:
    """A child process spoken to over a pipe, one request line and one reply line at a
    time, with its stderr kept in a file for the failure message."""

    def __init__(self, role, name, cmd):
        self.role, self.name = role, name
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True)

    def reply(self):
        """The next line of the child's stdout; SystemExit with its last stderr line if it died."""
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.err.seek(0)
            tail = [s for s in self.err.read().splitlines() if s.strip()][-1:]
            raise SystemExit(f"bench_torch.py: {self.name} child failed (exit {self.proc.returncode})"
                             + (f": {tail[0].strip()}" if tail else ""))
        return line

    def ask(self, request):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        self.err.close()


class Child(Piped):
    """A child process of this script: JSON lines."""

    def __init__(self, role, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", role, "--model", args.model,
               "--batch", str(args.batch), "--threads", str(args.threads),
               "--warmup", str(args.warmup), "--keep", repr(args.keep),
               "--attention", args.attention, "--precision", args.precision]
        if args.seed is not None:
            cmd += ["--seed", str(args.seed)]
        super().__init__(role, role, cmd)

    def read(self):
        return json.loads(self.reply())


class SbpcChild(Piped):
    """`sbpc bench-child PLAN`: sbpc's side of an interleaved run, the protocol `sbpc bench`
    drives (plain lines: "ready"; "step" -> "seconds flops gemm_seconds gemm_flops";
    "done" -> "rss BYTES")."""

    def __init__(self, role, sbpc, plan, args):
        cmd = [sbpc, "bench-child", plan, "--threads", str(args.threads), "--warmup", str(args.warmup),
               "--seed", str(args.seed or 0)]
        super().__init__(role, f"sbpc {role}", cmd)
        self.read()  # "ready"

    def read(self):
        return self.reply().split()


def sbpc_peak(sbpc, threads):
    """OpenBLAS's sgemm peak as sbpc measures it (4096^3, median of three), the OpenBLAS
    core it ran on and, when sbpc overrode OpenBLAS's choice, the core OpenBLAS had detected."""
    out = subprocess.run([sbpc, "bench-child", "--peak", "--threads", str(threads)],
                         capture_output=True, text=True, check=True)
    words = out.stdout.split()
    return float(words[0]), (words[1] if len(words) > 1 else None), (words[2] if len(words) > 2 else None)


def sbpc_plans(args, folder):
    """Compiles the ONNX export into the no-SBP and SBP plans; returns {plan: path}."""
    paths = {}
    for plan in args.plans:
        path = os.path.join(folder, f"{plan}.plan")
        keep = "1" if plan == "no-sbp" else repr(args.keep)
        cmd = [args.sbpc, "compile", args.onnx, "--batch", str(args.batch), "--keep", keep, "--precision", args.precision, "-o", path]
        if plan == "sbp" and args.attention != "none":
            cmd += ["--attention", args.attention]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench_torch.py: sbpc compile failed: {done.stderr.strip()}")
        paths[plan] = path
    return paths


def summary(name, ts, flops, peak, rss, gemm=None):
    median = statistics.median(ts)
    gflops = flops / median / 1e9
    row = {"name": name, "median_s": median, "min_s": min(ts), "max_s": max(ts), "times_s": ts,
           "flops": flops, "gflops": gflops, "peak_fraction": gflops / peak, "peak_rss_bytes": rss}
    if gemm:
        seconds, gemm_flops = gemm
        rate = gemm_flops / seconds / 1e9 if seconds > 0 else 0.0
        row.update({"gemm_gflops": rate, "gemm_peak_fraction": rate / peak,
                    "gemm_share": seconds / sum(ts)})
    return row


def document(framework, model, args, peak, plans):
    median = {p["name"]: p["median_s"] for p in plans}
    return {"framework": framework, "model": model, "batch": args.batch,
            "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "keep": args.keep,
            "attention": args.attention, "precision": args.precision, "sgemm_peak_gflops": peak, "plans": plans,
            "speedup": median["no-sbp"] / median["sbp"] if len(median) == 2 else None}


def bench(args, progress):
    """Runs the children; returns the PyTorch JSON document, and sbpc's when --sbpc is
    given (else None). With --sbpc, every round steps all four plans in turn, so a slow
    spell of the shared machine falls on both frameworks alike."""
    progress(f"sgemm {SGEMM_N}x{SGEMM_N}, {args.threads} threads")
    sgemm = Child("sgemm", args)
    peak = sgemm.read()["gflops"]
    sgemm.close()
    speak, score, sdetected = sbpc_peak(args.sbpc, args.threads) if args.sbpc else (None, None, None)
    children, sbpc_children = {}, {}
    folder = tempfile.mkdtemp(prefix="bench_torch-") if args.sbpc else None
    try:
        for plan in args.plans:
            progress(f"{plan}: building {args.model} b{args.batch}, {args.warmup} warm-up step(s)")
            children[plan] = Child(plan, args)
            children[plan].read()  # ready: built and warmed up
        if args.sbpc:
            for plan, path in sbpc_plans(args, folder).items():
                progress(f"sbpc {plan}: building the executor, {args.warmup} warm-up step(s)")
                sbpc_children[plan] = SbpcChild(plan, args.sbpc, path, args)
        times = {plan: [] for plan in args.plans}
        stimes = {plan: [] for plan in sbpc_children}
        sgemm_time = {plan: [0.0, 0] for plan in sbpc_children}
        sflops = {}
        for r in range(args.runs):
            for plan in args.plans:
                t = children[plan].ask("step")["time_s"]
                times[plan].append(t)
                progress(f"run {r + 1}/{args.runs} {plan}: {t:.3f} s")
                if plan in sbpc_children:
                    seconds, flops, gemm_s, gemm_flops = sbpc_children[plan].ask("step")
                    stimes[plan].append(float(seconds))
                    sflops[plan] = int(flops)
                    sgemm_time[plan][0] += float(gemm_s)
                    sgemm_time[plan][1] += int(gemm_flops)
                    progress(f"run {r + 1}/{args.runs} sbpc {plan}: {float(seconds):.3f} s")
        # The peak again after the rounds, and the higher of the two: one measurement that
        # fell in a slow spell would inflate every fraction of it.
        progress(f"sgemm {SGEMM_N}x{SGEMM_N} again")
        sgemm = Child("sgemm", args)
        peak = max(peak, sgemm.read()["gflops"])
        sgemm.close()
        if args.sbpc:
            speak = max(speak, sbpc_peak(args.sbpc, args.threads)[0])
        plans, splans = [], []
        for plan in args.plans:
            progress(f"{plan}: counting FLOPs")
            done = children[plan].ask("done")
            plans.append(summary(plan, times[plan], done["flops"], peak, done["peak_rss_bytes"]))
            if plan in sbpc_children:
                rss = int(sbpc_children[plan].ask("done")[1])
                splans.append(summary(plan, stimes[plan], sflops[plan], speak, rss, sgemm_time[plan]))
    finally:
        for c in list(children.values()) + list(sbpc_children.values()):
            c.close()
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    progress.end()
    sdoc = None
    if args.sbpc:
        sdoc = document("sbpc", args.onnx, args, speak, splans)
        sdoc.update({"blas_core": score, "blas_core_detected": sdetected})
    doc = document("pytorch", args.model, args, peak, plans)
    import torch
    # What PyTorch's kernels were built for here (e.g. AVX512), beside sbpc's OpenBLAS core.
    doc["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return doc, sdoc


def print_report(doc):
    import torch
    from saved_torch import print_table

    who = f"PyTorch {torch.__version__} eager CPU" if doc["framework"] == "pytorch" else "sbpc"
    print(f"{who}, {doc['model']}, batch {doc['batch']}, "
          f"{doc['threads']} threads, {doc['runs']} counted step(s) after {doc['warmup']} warm-up, "
          f"SBP keep {doc['keep']:g} attention {doc['attention']}; "
          f"sgemm peak {doc['sgemm_peak_gflops']:.1f} GFLOP/s")
    head = ("model", "batch", "plan", "median s", "min s", "max s", "GFLOP/step", "GFLOP/s",
            "% sgemm peak", "peak MiB")
    rows = [(doc["model"], str(doc["batch"]), p["name"], f"{p['median_s']:.3f}",
             f"{p['min_s']:.3f}", f"{p['max_s']:.3f}", f"{p['flops'] / 1e9:.1f}",
             f"{p['gflops']:.1f}", f"{100 * p['peak_fraction']:.1f}",
             f"{p['peak_rss_bytes'] / 2**20:.0f}") for p in doc["plans"]]
    print_table(head, rows)
    if doc["speedup"] is not None:
        print(f"speed-up (no-SBP median / SBP median): {doc['speedup']:.2f}x")


def parse(argv):
    parser = argparse.ArgumentParser(
        description="Time PyTorch eager CPU training steps of one model, no SBP vs SBP "
        "(reference.py's rules), each plan in a fresh process.", epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(msg):
        raise UsageError(msg)

    parser.error = error  # one line, exit 2 (main)
    parser.add_argument("--model", default="vit_tiny_patch16_224",
                        help="a full-size model of export.py (default %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads in each child (default %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="counted steps per plan (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed steps per plan before the counted ones (default %(default)s)")
    parser.add_argument("--keep", type=float, default=0.5,
                        help="SBP keep ratio of the grid mask, in (0, 1] (default %(default)s)")
    parser.add_argument("--attention", choices=ATTENTIONS,
                        help="SBP attention mode (default qkv for ViT, none for ConvNeXt)")
    parser.add_argument("--plans", default=",".join(PLANS),
                        help="comma-separated plans to run, of %s (default %%(default)s)" % ", ".join(PLANS))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: PyTorch's steps under torch.autocast('cpu', bfloat16) and sbpc's plans "
                        "compiled with --precision bf16 (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print only the JSON document")
    parser.add_argument("--seed", type=int,
                        help="seed of input and labels (default: export.py's seeds for the model)")
    parser.add_argument("--sbpc", metavar="BIN",
                        help="also run sbpc's plans (this sbpc binary), step-interleaved with PyTorch's")
    parser.add_argument("--onnx", metavar="PATH", help="with --sbpc: the model's ONNX export")
    parser.add_argument("--sbpc-json", metavar="FILE", help="with --sbpc: write sbpc's JSON document here")
    parser.add_argument("--child", choices=PLANS + ("sgemm",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    plans = args.plans.split(",")
    if not plans or any(p not in PLANS for p in plans) or len(set(plans)) != len(plans):
        raise UsageError(f"--plans {args.plans!r}: expected a comma-separated subset of {', '.join(PLANS)}")
    args.plans = plans
    if args.runs < 1:
        raise UsageError(f"--runs {args.runs}: must be at least 1")
    for flag, value, least in (("--warmup", args.warmup, 0), ("--batch", args.batch, 1),
                               ("--threads", args.threads, 1)):
        if value < least:
            raise UsageError(f"{flag} {value}: must be at least {least}")
    if not 0 < args.keep <= 1:
        raise UsageError(f"--keep {args.keep:g}: must be in (0, 1]")
    if args.sbpc and not (args.onnx and os.path.isfile(args.onnx)):
        raise UsageError(f"--sbpc needs --onnx with the model's export (got {args.onnx!r})")
    if args.sbpc and not os.access(args.sbpc, os.X_OK):
        raise UsageError(f"--sbpc {args.sbpc!r}: not an executable")
    import export  # the model list; also checks torch and timm load

    if args.model not in export.FULL:
        raise UsageError(f"unknown model {args.model!r}; choose from {', '.join(export.FULL)}")
    args.attention = args.attention or default_attention(args.model)
    if default_attention(args.model) == "none" and args.attention != "none":
        raise UsageError(f"{args.model} has no attention: use --attention none")
    return args


def main(argv=None):
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"bench_torch.py: error: {e}", file=sys.stderr)
        return 2
    if args.child:
        return child(args)
    doc, sdoc = bench(args, Progress())
    if sdoc and args.sbpc_json:
        with open(args.sbpc_json, "w") as f:
            json.dump(sdoc, f, indent=1)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print_report(doc)
        if sdoc:
            print()
            print_report(sdoc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
