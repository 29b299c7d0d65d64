# sbp_hook_check.py: an architecture-independent PyTorch check of sbpc's SBP step: masks the gradient at the output of each split token-wise branch or PW-Conv region and compares every gradient.
"""Usage: python3 models/sbp_hook_check.py FAMILY [--sbpc .build/release/sbpc] [--phase 0] [--full]

FAMILY is a folder of models/families (its TorchScript export and float64 reference
model).  sbpc compiles the export with its default SBP (keep 0.5, default blocks) and runs
one step at a fixed grid phase, dumping its gradients and each stage's mask.  PyTorch then
runs the same step in float64 and, at the residual add of every branch sbpc split, zeroes
the gradient of the branch's dropped rows; a PW-Conv region split on its own (a CNN's 1x1
convs, an MLP whose middle mixes rows) has its gradient masked at the output of the module
its last node belongs to.  The add is found from its ONNX name: the scope
names the module whose forward makes it, and its rank among the scope's Adds that compute
on the input or the weights (shape arithmetic, such as SAM's window padding, left out) says
it is that forward's (k+1)-th addition; a torch function mode counts the additions each
module makes itself.  For a branch whose every op is row-wise,
that is Algorithm 1 exactly: dropped rows then give no gradient to the parameters or to the
branch input, kept rows their full one.  It needs no model-specific code, which is the point:
it checks splits on families the hand-written reference (reference.py --sbp) does not know.

An attention core sbpc splits gets the same rule in PyTorch: a torch function mode adds -inf
to the scores of dropped keys for kept queries (--attention qkv; none for query) and zeroes
them in the probabilities the context matmul reads (talking heads mix them again, with a
bias), and takes the context of dropped queries from the full attention, detached, carried
through every op between the softmax and the context.

With --write, the PyTorch gradients also go to models/families/FAMILY/ts17/sbp_p<PHASE>/grads/
(sbp_query_p<PHASE> with --attention query),
the committed reference FamilyReferenceTests holds sbpc's SBP step to in CI.

Bars (make check-torch's): logits 1e-4 relative, loss 1e-5, every gradient cosine > 0.9999
and max-rel < 1e-3.  Exits 1 on any miss.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import collections
import tempfile

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.overrides import TorchFunctionMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_family  # noqa: E402
import export_for_training as eft  # noqa: E402
import families  # noqa: E402

IR_LINE = re.compile(r'^\s*%(\d+) = .*\{(.*)\} : \S+ loc\("([^"]*)"\)')


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def module_path(scope):
    """'/stages/stages.0/blocks/blocks.0/mlp/fc2/Conv' -> 'stages.0.blocks.0.mlp.fc2'."""
    parts, prev = [], None
    for c in scope.strip("/").split("/")[:-1]:
        # A container's child is named "<container's scope>.<key>" ('blocks.0' then 'blocks.0.0').
        parts.append(c[len(prev) + 1:] if prev and c.startswith(prev + ".") else c)
        prev = c
    return ".".join(parts)


def split_branches(sbpc, onnx_path, batch, blocks):
    """{block: (residual add's scope, which operand is the branch, stage, token axes,
    prefix)} of the token-wise branches in `blocks`, and whether any selected block has an
    attention core."""
    ir = run([sbpc, "opt", onnx_path, "--passes", "canonicalize,mark", "--batch", str(batch)])
    tokenwise, attention, residual = set(), {}, {}
    segments = {}  # (block, k) -> [scope of its last node, stage, token axes, prefix]
    linears = []  # (scope, block, (block, region) or None for the block's stage and prefix) of every split linear
    downsamplers, first_of_stage = [], {}
    windowed, windowed_parts = {}, {}  # windowed attention: {block: {role: scope}}
    for line in ir.splitlines():
        m = IR_LINE.match(line)
        if not m:
            continue
        attrs = m.group(2)
        b = re.search(r"sbp\.block=(\d+)", attrs)
        role = re.search(r'sbp\.role="([^"]+)"', attrs)
        st = re.search(r"sbp\.stage=(\d+)", attrs)
        if role and role.group(1) == "downsample" and st and " conv(" in line:
            downsamplers.append((m.group(3), int(st.group(1))))
        # A block's facts sit on its residual add, or on the PW-Conv node of a block without one.
        if b and "sbp.kind=" in attrs:
            first_of_stage.setdefault(int(st.group(1)), int(b.group(1)))
        if not b or not role or int(b.group(1)) not in blocks:
            continue
        block = int(b.group(1))
        seg = re.search(r"sbp\.segment=(\d+)", attrs)
        if " = linear(" in line and role.group(1) in ("mlp.fc1", "mlp.fc2", "pwconv"):
            linears.append((m.group(3), block, (block, int(seg.group(1))) if seg else None))
        if seg:
            # A row-wise region split on its own: its output is its last node's.
            key = (block, int(seg.group(1)))
            if key not in segments:
                axes = [int(a) for a in re.search(r"sbp\.token_axes=\[([0-9,]+)\]", attrs).group(1).split(",")]
                segments[key] = [None, int(re.search(r"sbp\.stage=(\d+)", attrs).group(1)), axes,
                                 int(re.search(r"sbp\.prefix=(\d+)", attrs).group(1))]
            segments[key][0] = m.group(3)
            continue
        if role.group(1).startswith(("mlp.", "pwconv")):
            tokenwise.add(block)
        if role.group(1) == "mhsa.softmax":
            attention[block] = m.group(3)
            if "sbp.windows=" in attrs:
                windowed.setdefault(block, {})["softmax"] = m.group(3)
        if role.group(1) in ("mhsa.norm", "mhsa.qkv", "mhsa.q"):
            windowed_parts.setdefault(block, {})[role.group(1)] = m.group(3)
        if role.group(1) == "residual":
            ins = [int(v) for v in re.findall(r"%(\d+)", line.split("=", 1)[1].split("{")[0])]
            axes = [int(a) for a in re.search(r"sbp\.token_axes=\[([0-9,]+)\]", attrs).group(1).split(",")]
            # The branch is computed after the block input: the operand defined later.
            residual[block] = (m.group(3), ins.index(max(ins)), int(re.search(r"sbp\.stage=(\d+)", attrs).group(1)),
                               axes, int(re.search(r"sbp\.prefix=(\d+)", attrs).group(1)))
    # A stride = kernel downsampler splits at its output positions when its stage's first
    # block is selected (insert-sbp's rule), as a PW-Conv region does.
    k = 0
    for scope, stage in downsamplers:
        if first_of_stage.get(stage) in blocks:
            segments[(-1, k)] = (scope, stage, [2, 3], 0)
            k += 1
    # Attention cores: (the module whose forward takes the softmax, stage, prefix).
    cores = {b: (module_path(scope), residual[b][2], residual[b][4]) for b, scope in attention.items()}
    # For --algorithm1: each split linear with its stage and the prefix of its block's tokens.
    # A linear in a region split on its own takes the region's stage and prefix (a block with
    # no residual add has only those).
    split_linears = [(scope, segments[key][1], segments[key][3]) if key else (scope, residual[b][2], residual[b][4])
                     for scope, b, key in linears]
    downs = [(scope, stage) for scope, stage in downsamplers if first_of_stage.get(stage) in blocks]
    # Windowed cores: the norm whose output the windows partition, and the projection that
    # reads the windows (its input), by module.
    # Without a norm before the windows (SwinV2-CR's post-norm), the windows partition the
    # block's input: the module whose forward makes the residual add.
    windows = {b: (module_path(windowed_parts[b]["mhsa.norm"]) if "mhsa.norm" in windowed_parts[b] else None,
                   module_path(windowed_parts[b].get("mhsa.qkv") or windowed_parts[b]["mhsa.q"]),
                   module_path(residual[b][0]))
               for b in windowed}
    return ({b: residual[b] for b in sorted(tokenwise)}, {k: tuple(v) for k, v in segments.items()}, cores,
            (split_linears, downs), windows)


def kept_rows(keep, prefix):
    """Token indices kept and dropped by the [H, W] mask, after `prefix` always-kept tokens."""
    flat = torch.from_numpy(keep.reshape(-1))
    kept = torch.cat([torch.arange(prefix), prefix + torch.nonzero(flat).flatten()])
    return kept, prefix + torch.nonzero(~flat).flatten()


def algorithm1(module, keep, prefix, downsample=False):
    """A forward hook that recomputes `module`'s output as Algorithm 1 does, independently of
    the gradient masks: the kept rows of its input through the module with gradient, the
    dropped rows through it without, reassembled. Rows are tokens of a Linear's input
    ([B, N, C] or [B, H, W, C]), positions of a 1x1 Conv2d's, or patches of a stride = kernel
    Conv2d's output."""
    kept, dropped = kept_rows(keep, prefix)

    def hook(m, inputs, _out):
        x = inputs[0]
        if isinstance(m, torch.nn.Linear):
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
            f, axis = (lambda r: torch.nn.functional.linear(r, m.weight, m.bias)), 1
        elif isinstance(m, torch.nn.Conv2d) and downsample:
            k = m.kernel_size
            rows = torch.nn.functional.unfold(x, k, stride=m.stride)  # [B, C*k*k, L]
            w = m.weight.reshape(m.weight.shape[0], -1)
            f, axis = (lambda r: torch.einsum("ok,bkl->bol", w, r) + (m.bias[None, :, None] if m.bias is not None else 0)), 2
        elif isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1):
            rows = x.flatten(2)
            f, axis = (lambda r: torch.nn.functional.conv2d(r[..., None], m.weight, m.bias)[..., 0]), 2
        else:
            raise SystemExit(f"--algorithm1: {type(m).__name__} {m} is not a Linear, 1x1 Conv2d or patch downsampler")
        yk = f(rows.index_select(axis, kept))
        with torch.no_grad():
            yd = f(rows.index_select(axis, dropped))
        shape = list(yk.shape)
        shape[axis] = rows.shape[axis]
        y = yk.new_zeros(shape).index_copy(axis, kept, yk).index_copy(axis, dropped, yd)
        return y.reshape(_out.shape)
    return module.register_forward_hook(hook)


class MaskGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by a 0/1 row mask."""

    @staticmethod
    def forward(ctx, t, mask):
        ctx.save_for_backward(mask)
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask, None


class ResidualMasks(TorchFunctionMode):
    """Counts the additions each module's forward makes itself (not its children's) and
    masks the branch operand of the ones listed: {(module, k): (operand, mask view)}."""

    def __init__(self, model, targets, cores=None):
        super().__init__()
        self.targets, self.stack, self.counts, self.hits = targets, [], collections.Counter(), set()
        self.cores, self.shadow = cores or {}, {}
        self.hooks = []
        for name, mod in model.named_modules():
            self.hooks.append(mod.register_forward_pre_hook(lambda _m, _i, name=name: self.stack.append(name)))
            self.hooks.append(mod.register_forward_hook(self.leave))

    def leave(self, _module, _inputs, _output):
        self.stack.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        core = self.cores.get(self.stack[-1]) if self.stack else None
        if core and func in (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax):
            # The attention rule (DESIGN.md): kept queries attend to kept keys only (qkv) or to
            # every key (query), with gradient; dropped queries attend to every key, without.
            rows, mode = core[:2]
            s = args[0]
            if len(core) > 2:
                # Windowed attention: rows holds every window's keep row, batch first. The scores
                # hold the windows folded into the batch (Swin), or on an axis of their own
                # before the queries (Twins: [B, W, h, q, k]; NesT: [B, h, W, q, k]).
                n = s.shape[-1]
                view = [1] * (s.dim() - 2) + [n]
                if s.shape[0] * n == rows.numel():
                    view[0] = s.shape[0]
                else:
                    windows = rows.numel() // (n * s.shape[0])
                    axis = max(a for a in range(1, s.dim() - 2) if s.shape[a] == windows)
                    view[0], view[axis] = s.shape[0], windows
                rows = rows.reshape(view)
                qsel, kview = rows[..., :, None], rows[..., None, :]
            else:
                qsel, kview = rows[:, None], rows
            # Keys on another grid (PVT's spatial reduction): queries split only, as sbpc does.
            # Dropped keys get -1e30, not -inf: a window with no kept row has rows of dropped
            # keys only, whose softmax would be NaN and poison the backward through the where
            # that discards them (exp(-1e30) is exactly 0 wherever a kept key exists).
            keys = torch.zeros(s.shape[-1], dtype=s.dtype) if mode == "query" or s.shape[-1] != rows.shape[-1] else \
                torch.where(kview, torch.zeros((), dtype=s.dtype), torch.full((), -1e30, dtype=s.dtype))
            kept = func(s + keys, *args[1:], **kwargs)
            # The dropped queries' probabilities, detached, follow the kept ones through every
            # op up to the context matmul (talking heads mix them over heads on the way).
            # Under qkv the context reads kept keys only: talking heads' mix after the softmax
            # has a bias, which would otherwise give dropped keys weight again.
            visible = (keys == 0).to(s.dtype)
            self.shadow[id(kept)] = (kept, func(s, *args[1:], **kwargs).detach(), qsel, visible)
            self.hits.add(self.stack[-1])
            return kept
        tracked = [a for a in args if isinstance(a, torch.Tensor) and id(a) in self.shadow and self.shadow[id(a)][0] is a]
        if tracked:
            _, full, rows, visible = self.shadow.pop(id(tracked[0]))
            full_args = [full if a is tracked[0] else a for a in args]
            dropped = func(*full_args, **kwargs).detach()
            if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__) and args[0] is tracked[0]:
                out = func(args[0] * visible, *args[1:], **kwargs)
                return torch.where(rows, out, dropped)
            out = func(*args, **kwargs)
            self.shadow[id(out)] = (out, dropped, rows, visible)
            return out
        if func in (torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__) and self.stack:
            key = (self.stack[-1], self.counts[self.stack[-1]])
            self.counts[self.stack[-1]] += 1
            if key in self.targets:
                i, mask = self.targets[key]
                args = list(args)
                args[i] = MaskGrad.apply(args[i], mask(args[i]))
                self.hits.add(key)
        return func(*args, **kwargs)


def window_rows(modules, parts, cores, path, keep, mode):
    """Hooks that find, for a windowed attention, which grid position each window row holds,
    without sbpc's trace: every row the projection reads is matched by value to a row of the
    norm's output, or of the block's input without a norm (the partition and shift only move
    rows; a padded row matches none and
    counts as dropped). The core's keep rows become every window row's, batch first."""
    norm_path, proj_path, block_path = parts
    seen = {}

    def grab(_m, _i, out):
        seen["grid"] = out

    def grab_input(_m, inputs):
        seen["grid"] = inputs[0]

    def project(_m, inputs):
        x = inputs[0]
        grid = seen.pop("grid", None)
        if grid is None:
            raise SystemExit(f"{path}: the windows' norm {norm_path} did not run before {proj_path}")
        c = x.shape[-1]
        if grid.shape[-1] != c:
            grid = grid.movedim(1, -1)  # channels-first
        where = {tuple(r.tolist()): i for i, r in enumerate(grid[0].reshape(-1, c))}
        per_image = x.reshape(-1, c).shape[0] // grid.shape[0]
        table = torch.tensor([where.get(tuple(r.tolist()), -1) for r in x.reshape(-1, c)[:per_image]])
        rows = torch.where(table >= 0, keep[table.clamp(min=0)], torch.zeros((), dtype=torch.bool))
        cores[path] = (rows.repeat(grid.shape[0]), mode, "windows")

    source = modules[norm_path].register_forward_hook(grab) if norm_path else modules[block_path].register_forward_pre_hook(grab_input)
    return [source, modules[proj_path].register_forward_pre_hook(project)]


def initializers_of(onnx_path, model):
    """{initializer: (param, transposed)} for the export's float initializers, matched by
    shape and value to within 1e-6 (a rebuilt model's init can differ from the exported
    one in the last bit on another CPU); the model's parameters then take the file's values
    exactly, so both frameworks step from the same weights."""
    params = dict(model.named_parameters())
    found = {}
    for t in onnx.load(onnx_path).graph.initializer:
        if t.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t)
        hits = []
        # TorchScript keeps parameter names: a name and shape match needs no value match
        # (a full-size rebuild can draw a different init than the export did).
        if t.name in params and tuple(params[t.name].shape) == a.shape:
            hits.append((t.name, False))
        for k, p in params.items() if not hits else ():
            v = p.detach().numpy()
            for tr in (False, True):
                w = v.T if tr else v
                if (not tr or v.ndim == 2) and w.shape == a.shape and np.allclose(w, a, rtol=1e-5, atol=1e-6):
                    hits.append((k, tr))
        if len(hits) > 1:
            raise SystemExit(f"{onnx_path}: {t.name} matches {hits}")
        if hits:
            found[t.name] = hits[0]
            k, tr = hits[0]
            with torch.no_grad():
                params[k].copy_(torch.from_numpy(a.T.copy() if tr else a.copy()))
    missing = sorted(set(params) - {k for k, _ in found.values()})
    if missing:
        raise SystemExit(f"{onnx_path}: parameters without an initializer: {missing}")
    return found


def row_mask(t, keep, axes, prefix):
    """The 0/1 mask, shaped to broadcast over `t`, of the [H, W] keep mask on token axes
    `axes` (an H, W pair, or one axis of `prefix` always-kept tokens then H·W patches)."""
    view = [1] * t.dim()
    m = torch.from_numpy(keep).to(t.dtype)
    if len(axes) == 2:
        view[axes[0]], view[axes[1]] = keep.shape
    else:
        m = torch.cat([torch.ones(prefix, dtype=t.dtype), m.reshape(-1)])
        view[axes[0]] = m.numel()
    if [t.shape[a] for a in axes] != [view[a] for a in axes]:
        raise SystemExit(f"a branch of shape {list(t.shape)} does not have the mask's rows on axes {axes}")
    return m.reshape(view)


def data_add_ranks(onnx_path):
    """{Add node name: k} where the node is its scope's (k+1)-th addition of tensors that
    depend on the input or the weights.  The exporter also writes shape arithmetic as Adds
    (SAM's window padding, `(w - H % w) % w`), which PyTorch computes on Python ints and the
    torch function mode does not count; those are left out of the numbering."""
    g = onnx.load(onnx_path, load_external_data=False).graph
    floating = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    data = {i.name for i in g.input} | {i.name for i in g.initializer if i.data_type in floating}
    ranks, seen = {}, collections.Counter()
    for n in g.node:
        if n.op_type in ("Shape", "Size", "ConstantOfShape"):
            continue
        if any(i in data for i in n.input):
            data.update(n.output)
            if n.op_type == "Add":
                scope = n.name.rsplit("/", 1)[0]
                ranks[n.name] = seen[scope]
                seen[scope] += 1
    return ranks


ADD_RANKS = {}


def residual_key(scope):
    """'/blocks/blocks.0/Add_1' -> ('blocks.0', 1): the module and which of its additions."""
    if scope in ADD_RANKS:
        return module_path(scope), ADD_RANKS[scope]
    op = scope.rsplit("/", 1)[1]
    k = int(op.split("_")[1]) if "_" in op else 0
    return module_path(scope), k


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("family")
    ap.add_argument("--sbpc", default=".build/release/sbpc")
    ap.add_argument("--phase", type=int, default=0)
    ap.add_argument("--attention", choices=["qkv", "query"], default="qkv",
                    help="how sbpc splits attention cores (compile --attention); the oracle applies the same rule")
    ap.add_argument("--threads", type=int, default=1,
                    help="sbpc's threads (a BatchNorm net at a tiny batch can amplify one summation order's rounding)")
    ap.add_argument("--blocks", help="SBP blocks to split (compile --blocks); default: sbpc's default selection")
    ap.add_argument("--write", action="store_true", help="commit the PyTorch gradients as the family's SBP reference")
    ap.add_argument("--full", action="store_true",
                    help="the full-size family in models/full/families (python3 models/families.py --full writes it)")
    ap.add_argument("--algorithm1", action="store_true",
                    help="split each linear and downsampler explicitly (kept rows with gradient, dropped rows without) "
                         "instead of masking gradients: the second reference, which must agree")
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    ref = os.path.join(here, "full", "families", args.family) if args.full else os.path.join(here, "families", args.family)
    manifest = json.load(open(os.path.join(ref, "manifest.json")))
    onnx_path = os.path.join(ref, manifest["exports"]["ts17"]["file"])
    ADD_RANKS.update(data_add_ranks(onnx_path))
    batch = manifest["batch"]
    with tempfile.TemporaryDirectory() as d:
        plan = os.path.join(d, "sbp.plan")
        out = run([args.sbpc, "compile", onnx_path, "--batch", str(batch), "--attention", args.attention, "-o", plan]
                  + (["--blocks", args.blocks] if args.blocks else []))
        m = re.search(r"^SBP blocks: ([0-9,]+)", out, re.M)
        if not m:
            # resnet18 at full size: nothing is split, so there is nothing to check.
            print(f"{args.family}: sbpc selects no SBP block by default; nothing to check")
            return 0
        blocks = [int(b) for b in m.group(1).split(",")]
        loss = run([args.sbpc, "train", plan, "--steps", "1", "--threads", str(args.threads), "--input", os.path.join(ref, "input.npy"),
                    "--labels", os.path.join(ref, "labels.npy"), "--mask-phase", str(args.phase),
                    "--dump-grads", os.path.join(d, "grads"), "--dump-logits", os.path.join(d, "logits.npy"),
                    "--dump-mask", os.path.join(d, "masks"), "--dump-loss"])
        np.save(os.path.join(d, "loss.npy"), np.array([float(loss.split()[0])], dtype=np.float32))
        branches, segments, attention, explicit, windows = split_branches(args.sbpc, onnx_path, batch, set(blocks))
        masks = {int(re.search(r"stage(\d+)", f).group(1)): np.load(os.path.join(d, "masks", f)).astype(bool)
                 for f in os.listdir(os.path.join(d, "masks")) if ".stage" in f}

        fam = (families.FULL if args.full else families.TINY)[args.family]
        model = families.build(args.family, fam)
        eft.zero_dropout(model)  # as the export was made (timm's relative-position MLP hard-codes one)
        mapping = initializers_of(onnx_path, model)
        model = model.double().train()
        targets = {}
        for b, (scope, operand, stage, axes, prefix) in branches.items():
            keep = masks[stage]
            targets[residual_key(scope)] = (operand, lambda t, keep=keep, axes=axes, prefix=prefix: row_mask(t, keep, axes, prefix))
            print(f"block {b}: masking the branch at {scope} (operand {operand}; stage {stage}, "
                  f"{int(keep.sum())} of {keep.size} rows kept)")
        modules = dict(model.named_modules())
        hooked = []
        if args.algorithm1:
            # Every split linear and downsampler computed as Algorithm 1 writes it, instead of
            # masking gradients: a second, independent reference for the same semantics.
            split_linears, downs = explicit
            for scope, stage, prefix in split_linears:
                hooked.append(algorithm1(modules[module_path(scope)], masks[stage], prefix))
            for scope, stage in downs:
                hooked.append(algorithm1(modules[module_path(scope)], masks[stage], 0, downsample=True))
            print(f"Algorithm 1 on {len(split_linears)} linears and {len(downs)} downsamplers")
            targets, segments = {}, {}
        # A region split on its own ends at a module's output (a 1x1 conv, an activation, a
        # layer scale): its gradient is masked there, which for a row-wise region is Algorithm 1.
        for (b, k), (scope, stage, axes, prefix) in sorted(segments.items()):
            path = module_path(scope)
            if path not in modules:
                raise SystemExit(f"{args.family}: block {b} region {k} ends at {scope}, which is not a module's output")
            keep = masks[stage]
            hooked.append(modules[path].register_forward_hook(
                lambda _m, _i, out, keep=keep, axes=axes, prefix=prefix: MaskGrad.apply(out, row_mask(out, keep, axes, prefix))))
            print(f"block {b} region {k}: masking the output of {path} (stage {stage}, {int(keep.sum())} of {keep.size} rows kept)")
        cores = {}
        for b, (path, stage, prefix) in attention.items():
            keep = masks[stage]
            cores[path] = (torch.cat([torch.ones(prefix, dtype=torch.bool), torch.from_numpy(keep).reshape(-1)]), args.attention)
            if b in windows:
                hooked += window_rows(modules, windows[b], cores, path, torch.from_numpy(keep).reshape(-1), args.attention)
            print(f"block {b}: attention in {path} split ({args.attention}; stage {stage}, {int(keep.sum())} of {keep.size} rows kept"
                  f"{', per window' if b in windows else ''})")
        x = torch.from_numpy(np.load(os.path.join(ref, "input.npy"))).double()
        labels = torch.from_numpy(np.load(os.path.join(ref, "labels.npy")))
        mode = ResidualMasks(model, targets, cores)
        with mode:
            logits = model(x)
        missed = (set(targets) | set(cores)) - mode.hits
        if missed:
            raise SystemExit(f"{args.family}: no residual addition or attention softmax found for {sorted(missed)}")
        torch.nn.functional.cross_entropy(logits, labels).backward()
        # The reference folder the comparison reads: this step's gradients in ONNX layout.
        want = os.path.join(d, "ref")
        os.makedirs(os.path.join(want, "ts17", "grads"))
        params = dict(model.named_parameters())
        for init, (k, tr) in mapping.items():
            g = params[k].grad
            g = (torch.zeros_like(params[k]) if g is None else g).detach().float().numpy()
            np.save(os.path.join(want, "ts17", "grads", init.replace("/", "_") + ".npy"), g.T if tr else g)
        # The step's own logits and loss: attention under qkv changes the forward by design.
        np.save(os.path.join(want, "logits.npy"), logits.detach().float().numpy())
        np.save(os.path.join(want, "loss.npy"),
                np.array([torch.nn.functional.cross_entropy(logits, labels).item()], dtype=np.float32))
        # BatchNorm's running statistics after the step: an attention split under qkv changes
        # the forward, so they are the SBP step's own.
        buffers = dict(model.named_buffers())
        os.makedirs(os.path.join(want, "ts17", "state"))
        for init in manifest["exports"]["ts17"]["state"]:
            if init not in buffers:
                raise SystemExit(f"{args.family}: no buffer named {init} for the BatchNorm statistic")
            np.save(os.path.join(want, "ts17", "state", init.replace("/", "_") + ".npy"), buffers[init].detach().float().numpy())
        if args.write:
            folder = os.path.join(ref, "ts17", f"sbp_{'' if args.attention == 'qkv' else 'query_'}p{args.phase}")
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(os.path.join(want, "ts17", "grads"), os.path.join(folder, "grads"))
            if manifest["exports"]["ts17"]["state"]:
                shutil.copytree(os.path.join(want, "ts17", "state"), os.path.join(folder, "state"))
            for f in ("logits.npy", "loss.npy"):
                shutil.copy(os.path.join(want, f), folder)
            print(f"wrote {folder}")
        with open(os.path.join(want, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        return compare_family.main([want, "ts17", d])


if __name__ == "__main__":
    sys.exit(main())
