# Writes the PyTorch oracle for sbpc's training step: logits, cross-entropy loss and every parameter gradient, plus ONNX-initializer-to-parameter maps.
"""PyTorch reference for sbpc's training step.

For each model this rebuilds the exact timm model of export.py (same builder, seeds
and perturbation, imported from export.py), puts it in eval() mode (no dropout; the
gradients are still computed) and runs one step on a fixed input and fixed labels:

    logits = model(input)
    loss   = torch.nn.functional.cross_entropy(logits, labels, reduction="mean")
    loss.backward()

labels = np.arange(batch) * 7 % num_classes (int64).  Written to
models/reference/<name>/ (tiny models, committed) or, with --full,
models/full/reference/<name>/ (git-ignored):

    labels.npy                 int64 [B]
    logits.npy                 float32 [B, classes]
    loss.npy                   float32 [1]
    grads/<torch name>.npy     float32, PyTorch layout, one per parameter
    <stem>.params.json         for each ONNX export <name>_<stem>.onnx or
                               <name>_dynamo/model.onnx (stem ts17, ts14, dynamo):
                               {"<initializer>": {"param": "<torch name>",
                                 "transpose": bool, "reshape": [ONNX shape] | null}}
    input.npy                  --full only (tiny models use <name>.ref/input.npy)

An initializer is derived from its parameter as
    onnx = param.T if transpose else param;  onnx = onnx.reshape(reshape) if reshape
Initializers are matched to parameters by value (bit-exact), not by name.  Every
float initializer with more than one element must match exactly one parameter and
every trainable parameter must be matched exactly once; otherwise the script fails.
Output is deterministic (2 threads, deterministic algorithms).

--sbp writes SBP references instead (DESIGN.md, "SBP semantics"): the same step with
the SBP rules applied for one given keep mask, by patching the forward of the
selected timm modules of the model instance (Algorithm 1 of the paper: run on the
kept rows with gradient, on the dropped rows under torch.no_grad, reassemble), into
<reference>/<name>/sbp/<config>/ (labels.npy, logits.npy, loss.npy, grads/ as above,
and mask.npy, uint8 [H, W], the base keep mask).  <config> is
<attention>_grid<keep>_p<phase> or <attention>_random<keep>_s<seed>, attention one of
qkv, query, none.  Before writing, every mask is checked against an independent
formulation (unpatched model, gradients zeroed at dropped rows by hooks, and timm's
attn_mask for qkv), and an all-kept mask against the no-SBP step.  models/README.md
has the mask and block rules.
"""

import argparse
import collections
import hashlib
import json
import os
import re
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export  # noqa: E402  (also makes torchvision importable, see export.py)
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from timm.models.convnext import ConvNeXt  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

HERE = export.HERE
TINY_BATCH = export.REF_BATCH
FULL_BATCH = {"vit_tiny_patch16_224": 4, "vit_tiny_avg_patch16_224": 4, "convnext_tiny": 2}
LOGITS_ATOL = 1e-5  # our forward vs the committed <name>.ref/logits.npy


def labels_for(batch, num_classes):
    return np.arange(batch, dtype=np.int64) * 7 % num_classes


def find_exports(folder, name):
    """[(stem, path)] of the ONNX exports of `name` in `folder`, sorted by stem."""
    found = []
    pat = re.compile(re.escape(name) + r"_(ts\d+)\.onnx$")
    for f in sorted(os.listdir(folder)):
        m = pat.match(f)
        if m:
            found.append((m.group(1), os.path.join(folder, f)))
    dyn = os.path.join(folder, f"{name}_dynamo", "model.onnx")
    if os.path.isfile(dyn):
        found.append(("dynamo", dyn))
    return found


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def match_params(path, params):
    """{initializer: {"param", "transpose", "reshape"}} by value; SystemExit on any gap."""
    plain = collections.defaultdict(list)  # bytes in PyTorch order -> params
    transposed = collections.defaultdict(list)  # bytes of param.T -> 2-D params
    for pname, p in params.items():
        plain[digest(p)].append(pname)
        if p.ndim == 2:
            transposed[digest(p.T)].append(pname)

    mapping, errors = {}, []
    used = collections.defaultdict(list)
    for t in onnx.load(path).graph.initializer:
        if t.data_type not in export.FLOAT_TYPES:
            continue
        a = numpy_helper.to_array(t)
        if a.size <= 1:
            continue
        if a.dtype != np.float32:
            errors.append(f"{t.name}: dtype {a.dtype}, expected float32")
            continue
        h = digest(a)
        cands = {}
        for pname in plain.get(h, []):
            p = params[pname]
            if np.array_equal(a.reshape(p.shape), p):
                cands[pname] = (False, None if a.shape == p.shape else list(a.shape))
        for pname in transposed.get(h, []):
            p = params[pname]
            if pname not in cands and np.array_equal(a.reshape(p.T.shape), p.T):
                cands[pname] = (True, None if a.shape == p.T.shape else list(a.shape))
        if len(cands) != 1:
            errors.append(
                f"{t.name} {list(a.shape)}: matches {len(cands)} parameters {sorted(cands)}"
            )
            continue
        (pname, (tr, rs)), = cands.items()
        mapping[t.name] = {"param": pname, "transpose": tr, "reshape": rs}
        used[pname].append(t.name)
    for pname in params:
        if len(used[pname]) != 1:
            errors.append(f"parameter {pname}: {len(used[pname])} initializers {used[pname]}")
    if errors:
        raise SystemExit(f"{path}: initializers and parameters do not match one to one:\n  "
                         + "\n  ".join(errors))
    return mapping


def write_json(path, mapping):
    # One entry per line: compact, diffable, deterministic (initializer order).
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in mapping.items()]
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


class Step(collections.namedtuple("Step", "logits labels loss grads")):
    """One training step's results: float32 logits, int64 labels, float loss, and
    {torch name: float32 gradient} in named_parameters() order."""


def train_step(name, model, x):
    """logits = model(x); mean cross-entropy against labels_for(); backward."""
    params = collections.OrderedDict(
        (n, p) for n, p in model.named_parameters() if p.requires_grad
    )
    model.zero_grad(set_to_none=True)
    logits = model(x)
    labels = labels_for(x.shape[0], logits.shape[-1])
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels), reduction="mean")
    loss.backward()
    missing = [n for n, p in params.items() if p.grad is None]
    if missing:
        raise SystemExit(f"{name}: no gradient for {missing} (unused in the eval forward)")
    grads = collections.OrderedDict(
        (n, p.grad.numpy().astype(np.float32)) for n, p in params.items()
    )
    return Step(logits.detach().numpy().astype(np.float32), labels, loss.item(), grads)


def write_step(out, step, keep=()):
    """Writes labels, logits, loss and grads/ into `out`, after emptying it of
    everything but the entries named in `keep`."""
    if os.path.isdir(out):
        for entry in os.listdir(out):
            if entry in keep:
                continue
            path = os.path.join(out, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(os.path.join(out, "grads"), exist_ok=True)
    np.save(os.path.join(out, "labels.npy"), step.labels)
    np.save(os.path.join(out, "logits.npy"), step.logits)
    np.save(os.path.join(out, "loss.npy"), np.array([step.loss], dtype=np.float32))
    for n, g in step.grads.items():
        np.save(os.path.join(out, "grads", f"{n}.npy"), g)


def reference(name, spec, x, out, onnx_folder, write_input, expect_logits=None):
    model, _ = export.build(name, spec)  # seeded, perturbed, eval()
    params = collections.OrderedDict(
        (n, p) for n, p in model.named_parameters() if p.requires_grad
    )
    step = train_step(name, model, x)
    if expect_logits is not None:
        d = float(np.abs(step.logits - expect_logits).max())
        print(f"  {name}: max |logits - {name}.ref/logits.npy| = {d:.1e}")
        if d > LOGITS_ATOL:
            raise SystemExit(f"{name}: logits differ from {name}.ref/logits.npy by {d:.2e}: "
                             "the model was not rebuilt identically")
    write_step(out, step, keep=("sbp",))  # the SBP references live in out/sbp/
    if write_input:
        np.save(os.path.join(out, "input.npy"), x.numpy())
    labels, loss = step.labels, step.loss

    values = {n: p.detach().numpy() for n, p in params.items()}
    stems = []
    for stem, path in find_exports(onnx_folder, name):
        mapping = match_params(path, values)
        write_json(os.path.join(out, f"{stem}.params.json"), mapping)
        quirks = collections.Counter(
            "transposed" if v["transpose"] else "reshaped" for v in mapping.values()
            if v["transpose"] or v["reshape"]
        )
        stems.append(f"{stem} ({len(mapping)}" + "".join(f", {c} {k}" for k, c in sorted(quirks.items())) + ")")
    if not stems:
        raise SystemExit(f"{name}: no ONNX export found in {onnx_folder}")
    print(f"{name}: batch {x.shape[0]}, labels {labels.tolist()}, loss {loss:.6f}, "
          f"{len(params)} params; maps: {', '.join(stems)}")


# ---------------------------------------------------------------------------
# SBP reference (--sbp): the rules of DESIGN.md "SBP semantics" in PyTorch, for a
# given keep mask, by splitting and reassembling as in the paper's Algorithm 1.
# ---------------------------------------------------------------------------

ATTENTION_MODES = ("qkv", "query", "none")
CONFIG_RE = re.compile(r"^(qkv|query|none)_(grid|random)([0-9]*\.?[0-9]+)_([ps])([0-9]+)$")

# The committed SBP references (models/reference/<name>/sbp/<config>/).  Models
# without attention use attention "none".  vit_p4_d6 keeps 3 of the 8 phases of
# keep 0.25 / 0.75 (p1 and p3 tell "== p" from "== -p mod s"), to stay near 15 MB.
SBP_TINY = {
    "vit_p4_d6": ["qkv_grid0.5_p0", "qkv_grid0.5_p1", "query_grid0.5_p0", "none_grid0.5_p0",
                  "qkv_grid0.25_p0", "qkv_grid0.25_p1", "qkv_grid0.75_p3",
                  "qkv_random0.5_s0"],
    "vit_avg_p4_d4": ["qkv_grid0.5_p0", "query_grid0.5_p0"],
    "deit_dist_p4_d4": ["qkv_grid0.5_p0"],
    "convnext_t1131": ["none_grid0.5_p0", "none_grid0.5_p1"],
}
SBP_FULL_DEFAULT = {"vit": "qkv_grid0.5_p0", "convnext": "none_grid0.5_p0"}
CHECK_COS = 0.99999  # independent check: SBP vs masked-gradient autograd
IDENTITY_ATOL = 1e-5  # an all-kept mask must reproduce the no-SBP step


class SbpConfig(collections.namedtuple("SbpConfig", "attention sampling keep phase seed")):
    """attention: qkv | query | none; sampling: grid (with phase) | random (with seed)."""

    @property
    def name(self):
        tail = f"p{self.phase}" if self.sampling == "grid" else f"s{self.seed}"
        return f"{self.attention}_{self.sampling}{self.keep:g}_{tail}"

    @classmethod
    def parse(cls, text):
        m = CONFIG_RE.match(text)
        if not m:
            raise ValueError(f"SBP config {text!r}: expected ATTENTION_grid<KEEP>_p<PHASE> or "
                             f"ATTENTION_random<KEEP>_s<SEED>, ATTENTION one of {ATTENTION_MODES}")
        attention, sampling, keep, ps, n = m.groups()
        keep = float(keep)
        if (sampling == "grid") != (ps == "p"):
            raise ValueError(f"SBP config {text!r}: grid takes _p<PHASE>, random _s<SEED>")
        if not 0 < keep < 1:
            raise ValueError(f"SBP config {text!r}: keep ratio must be in (0, 1)")
        cfg = cls(attention, sampling, keep, int(n) if ps == "p" else None,
                  int(n) if ps == "s" else None)
        if sampling == "grid" and not cfg.phase < grid_stride(keep)[0]:
            raise ValueError(f"SBP config {text!r}: phase must be below the stride "
                             f"{grid_stride(keep)[0]}")
        return cfg


def grid_stride(keep):
    """(stride, phase marks kept patches) for grid sampling; round half to even."""
    if keep <= 0.5:
        return int(np.round(1.0 / keep)), True
    return int(np.round(1.0 / (1.0 - keep))), False


def base_mask(cfg, h, w):
    """The bool [h, w] keep mask over the base grid (True = kept)."""
    if cfg.sampling == "grid":
        s, phase_keeps = grid_stride(cfg.keep)
        i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        return ((i + j) % s == cfg.phase) == phase_keeps
    n_drop = int(np.floor((1.0 - cfg.keep) * (h * w)))
    drop = np.random.default_rng(cfg.seed).choice(h * w, size=n_drop, replace=False)
    mask = np.ones(h * w, dtype=bool)
    mask[drop] = False
    return mask.reshape(h, w)


def replicate(mask, h, w):
    """Block-replicates a base mask to an [h, w] grid (an integer multiple of it)."""
    bh, bw = mask.shape
    if h % bh or w % bw or h // bh != w // bw:
        raise SystemExit(f"cannot replicate a {bh}x{bw} mask onto {h}x{w}")
    f = h // bh
    return np.kron(mask, np.ones((f, f), dtype=bool)).astype(bool)


class SbpTargets(collections.namedtuple("SbpTargets", "kind blocks downsamplers prefix grid")):
    """What the default --blocks rule selects.  kind: vit | convnext; blocks: [(module
    name, [H, W] grid of its tokens)]; downsamplers: [(conv module name, [Ho, Wo])];
    prefix: non-spatial tokens before the patches (ViT); grid: the base mask's [H, W]."""


def sbp_targets(model, x):
    """Applies the default --blocks rule (DESIGN.md): isotropic, the last ceil(2/3 depth)
    blocks; hierarchical, every stage before the second-to-last plus the first
    ceil(2/3 n) blocks of the second-to-last, and each stride==kernel downsampler of a
    stage whose first block is selected (the stem never)."""
    two_thirds = lambda n: -(-2 * n // 3)  # ceil(2n/3)
    if isinstance(model, VisionTransformer):
        grid = tuple(model.patch_embed.grid_size)
        depth = len(model.blocks)
        blocks = [(f"blocks.{i}", grid) for i in range(depth - two_thirds(depth), depth)]
        return SbpTargets("vit", blocks, [], model.num_prefix_tokens, grid)
    if isinstance(model, ConvNeXt):
        grids = []  # each stage's output grid, from a dry run
        hooks = [st.register_forward_hook(lambda m, i, o: grids.append(tuple(o.shape[-2:])))
                 for st in model.stages]
        with torch.no_grad():
            model.forward_features(x[:1])
        for h in hooks:
            h.remove()
        n = len(model.stages)
        blocks, downs = [], []
        for s, stage in enumerate(model.stages):
            count = len(stage.blocks)
            take = count if s < n - 2 else two_thirds(count) if s == n - 2 else 0
            blocks += [(f"stages.{s}.blocks.{b}", grids[s]) for b in range(take)]
            if take and isinstance(stage.downsample, torch.nn.Sequential):
                conv = stage.downsample[-1]
                if (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == conv.stride
                        and tuple(conv.padding) == (0, 0) and tuple(conv.dilation) == (1, 1)):
                    downs.append((f"stages.{s}.downsample.{len(stage.downsample) - 1}", grids[s]))
        deepest = max(s for s in range(n) if any(b.startswith(f"stages.{s}.") for b, _ in blocks))
        return SbpTargets("convnext", blocks, downs, 0, grids[deepest])
    raise SystemExit(f"SBP: unsupported model class {type(model).__name__}")


def split_rows(y_keep, y_drop, keep, drop, dim):
    """Reassembles rows computed apart: out[keep] = y_keep, out[drop] = y_drop (dim `dim`)."""
    shape = list(y_keep.shape)
    shape[dim] = len(keep) + len(drop)
    out = y_keep.new_zeros(shape)
    lead = (slice(None),) * dim
    out[lead + (keep,)] = y_keep
    out[lead + (drop,)] = y_drop
    return out


def sbp_apply(f, x, keep, drop, dim=1):
    """Algorithm 1: f on the kept rows with gradient, on the dropped rows without."""
    with torch.enable_grad():
        y_keep = f(x.index_select(dim, keep))
    with torch.no_grad():
        y_drop = f(x.index_select(dim, drop))
    return split_rows(y_keep, y_drop, keep, drop, dim)


def row_indices(mask_hw, prefix):
    """(kept, dropped) token indices (int64): prefix tokens, then the row-major grid."""
    flat = torch.from_numpy(np.ascontiguousarray(mask_hw).reshape(-1))
    keep = torch.cat([torch.arange(prefix), prefix + torch.nonzero(flat).flatten()])
    drop = prefix + torch.nonzero(~flat).flatten()
    return keep, drop


def attention_core(attn, q, k, v):
    """softmax(q k^T * scale) v as timm's Attention computes it (fused or not)."""
    if attn.fused_attn:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
    a = (q * attn.scale) @ k.transpose(-2, -1)
    return a.softmax(dim=-1) @ v


def patch_attention(attn, keep, drop, mode):
    """timm Attention.forward with the core split: qkv, q/k norms and proj on all tokens."""
    if getattr(attn, "gate", None) is not None:
        raise SystemExit("SBP: gated attention is not supported")

    def forward(x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise SystemExit("SBP: attention masks are not supported")
        B, N, C = x.shape
        qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if mode == "qkv":  # kept tokens attend among kept tokens only
            with torch.enable_grad():
                o_keep = attention_core(attn, *(t.index_select(2, keep) for t in (q, k, v)))
            with torch.no_grad():
                o_drop = attention_core(attn, q.index_select(2, drop), k, v)
            o = split_rows(o_keep, o_drop, keep, drop, 2)
        else:  # query: every query attends to all keys and values
            o = sbp_apply(lambda qq: attention_core(attn, qq, k, v), q, keep, drop, dim=2)
        o = o.transpose(1, 2).reshape(B, N, attn.attn_dim)
        return attn.proj_drop(attn.proj(attn.norm(o)))

    attn.forward = forward


def patch_vit_block(blk, keep, drop, attention):
    """Block: attention sub-block per `attention`; MLP sub-block norm2 -> mlp -> ls2 split."""
    if attention != "none":
        patch_attention(blk.attn, keep, drop, attention)

    def forward(x, attn_mask=None, is_causal=False):
        x = x + blk.drop_path1(blk.ls1(blk.attn(blk.norm1(x), attn_mask=attn_mask,
                                                is_causal=is_causal)))
        mlp = lambda t: blk.ls2(blk.mlp(blk.norm2(t)))
        return x + blk.drop_path2(sbp_apply(mlp, x, keep, drop))

    blk.forward = forward


def patch_convnext_block(blk, keep, drop):
    """ConvNeXtBlock: the 7x7 depthwise conv in full, the per-pixel part split."""
    if not isinstance(blk.mlp.norm, torch.nn.Identity):
        raise SystemExit("SBP: ConvNeXt MLP with a norm (GRN) is not per-pixel")

    def pixelwise(t):  # [B, n, C] -> [B, n, C]
        if blk.use_conv_mlp:  # NCHW layers on an [B, C, n, 1] image
            y = blk.mlp(blk.norm(t.transpose(1, 2).unsqueeze(-1)))
            if blk.gamma is not None:
                y = y.mul(blk.gamma.reshape(1, -1, 1, 1))
            return y.squeeze(-1).transpose(1, 2)
        y = blk.mlp(blk.norm(t))
        return y.mul(blk.gamma) if blk.gamma is not None else y

    def forward(x):
        shortcut = x
        x = blk.conv_dw(x)
        B, C, H, W = x.shape
        y = sbp_apply(pixelwise, x.flatten(2).transpose(1, 2), keep, drop)
        x = y.transpose(1, 2).reshape(B, -1, H, W)
        return blk.drop_path(x) + blk.shortcut(shortcut)

    blk.forward = forward


def patch_downsampler(conv, keep, drop):
    """A stride == kernel conv as a token-wise map of non-overlapping patches, split at
    its output positions; each patch goes through the module's own Conv2d.forward."""
    kh, kw = conv.kernel_size

    def forward(x):
        B, C, H, W = x.shape
        Ho, Wo = H // kh, W // kw
        p = x[:, :, :Ho * kh, :Wo * kw].reshape(B, C, Ho, kh, Wo, kw)
        p = p.permute(0, 2, 4, 1, 3, 5).reshape(B, Ho * Wo, C, kh, kw)

        def f(t):  # [B, n, C, kh, kw] -> [B, n, Cout]
            y = type(conv).forward(conv, t.reshape(-1, C, kh, kw))
            return y.reshape(B, t.shape[1], conv.out_channels)

        y = sbp_apply(f, p, keep, drop)  # [B, Ho*Wo, Cout]
        return y.transpose(1, 2).reshape(B, -1, Ho, Wo)

    conv.forward = forward


def apply_sbp(model, targets, mask, attention):
    """Patches the selected modules of this model instance (not the classes)."""
    for name, (h, w) in targets.blocks:
        keep, drop = row_indices(replicate(mask, h, w), targets.prefix)
        blk = model.get_submodule(name)
        if targets.kind == "vit":
            patch_vit_block(blk, keep, drop, attention)
        else:
            patch_convnext_block(blk, keep, drop)
    for name, (h, w) in targets.downsamplers:
        keep, drop = row_indices(replicate(mask, h, w), 0)
        patch_downsampler(model.get_submodule(name), keep, drop)


def sbp_step(name, spec, x, mask, attention):
    model, _ = export.build(name, spec)
    targets = sbp_targets(model, x)
    apply_sbp(model, targets, mask, attention)
    return train_step(name, model, x), targets


# --- independent check: no code shared with the SBP patches above ----------------

def masked_grad_step(name, spec, x, mask, targets, attention):
    """The same rules as masking instead of splitting: plain autograd on an unpatched
    model, where hooks zero the gradient at dropped rows of each selected block's MLP
    branch output (the input of its residual drop_path), of each split downsampler's
    output, and (attention qkv/query) of the attention core's output (the input of
    attn.proj); with qkv, timm's own attn_mask also stops kept queries from seeing
    dropped keys.  Nothing is split, gathered or run under no_grad."""
    model, _ = export.build(name, spec)

    def rows(hw, n_tokens=None):  # bool keep vector over an [h, w] grid (+ prefix)
        f = hw[0] // mask.shape[0]
        flat = (np.kron(mask, np.ones((f, f))) > 0).reshape(-1)
        if n_tokens is not None:
            flat = np.concatenate([np.ones(n_tokens - flat.size, dtype=bool), flat])
        return torch.from_numpy(flat)

    def zero_dropped(t):
        if t.dim() == 3:  # tokens [B, N, C]
            m = rows(targets.grid, t.shape[1]).view(1, -1, 1)
        else:  # NCHW
            m = rows(t.shape[-2:]).view(1, 1, *t.shape[-2:])
        t.register_hook(lambda g: g * m.to(g.dtype))

    def qkv_mask(mod, args, kwargs):
        kept = rows(targets.grid, args[0].shape[1])
        # query i sees key j iff i is dropped or j is kept
        return args, dict(kwargs, attn_mask=(~kept)[:, None] | kept[None, :])

    for bname, _ in targets.blocks:
        blk = model.get_submodule(bname)
        branch = blk.drop_path2 if targets.kind == "vit" else blk.drop_path
        branch.register_forward_hook(lambda mod, inp, out: zero_dropped(out))
        if attention != "none":
            blk.attn.proj.register_forward_pre_hook(lambda mod, inp: zero_dropped(inp[0]))
        if attention == "qkv":
            blk.attn.register_forward_pre_hook(qkv_mask, with_kwargs=True)
    for dname, _ in targets.downsamplers:
        model.get_submodule(dname).register_forward_hook(lambda mod, inp, out: zero_dropped(out))
    return train_step(name, model, x)


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 1.0 if na == nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0


def compare_steps(a, b):
    """(min cosine over gradients, its parameter, max over gradients of
    max|a-b|/max|b|, max |logits a - b|)."""
    worst = min((cosine(a.grads[n], b.grads[n]), n) for n in a.grads)
    rel = max(float(np.abs(a.grads[n] - b.grads[n]).max()) / max(float(np.abs(b.grads[n]).max()), 1e-30)
              for n in a.grads)
    return worst[0], worst[1], rel, float(np.abs(a.logits - b.logits).max())


def check_identity(name, spec, x, plain, attentions, grid):
    """An all-kept mask must reproduce the no-SBP step in every attention mode."""
    for att in attentions:
        full, _ = sbp_step(name, spec, x, np.ones(grid, dtype=bool), att)
        c, _, rel, dl = compare_steps(full, plain)
        print(f"  check {name} all-kept mask, attention {att}: vs no SBP: min cosine {c:.9f}, "
              f"max grad rel err {rel:.1e}, max |logits diff| {dl:.1e}")
        if rel > IDENTITY_ATOL or dl > IDENTITY_ATOL:
            raise SystemExit(f"{name}: an all-kept SBP step differs from the plain step")


def check_masked(name, spec, x, mask, label, attentions):
    """SBP (split, Algorithm 1) == masked-gradient autograd, for each attention mode."""
    parts = []
    for att in attentions:
        sbp, targets = sbp_step(name, spec, x, mask, att)
        hooked = masked_grad_step(name, spec, x, mask, targets, att)
        c, worst, rel, dl = compare_steps(sbp, hooked)
        parts.append(f"{att} 1-cos {1 - c:.1e}, rel err {rel:.1e}, logits {dl:.1e}")
        if c <= CHECK_COS:
            raise SystemExit(f"{name} {label} attention {att}: SBP and masked-gradient autograd "
                             f"disagree: cosine {c} ({worst})")
    print(f"  check {name} mask {label}: SBP vs masked-gradient autograd, min over grads: "
          + "; ".join(parts))


def sbp_reference(name, spec, x, out_root, configs, plain):
    """Writes out_root/<config>/ for each config; checks each distinct mask first."""
    targets = sbp_targets(export.build(name, spec)[0], x)
    h, w = targets.grid
    attentions = ATTENTION_MODES if targets.kind == "vit" else ("none",)
    check_identity(name, spec, x, plain, attentions, targets.grid)
    checked = set()
    for cfg in configs:
        if cfg.attention not in attentions:
            raise SystemExit(f"{name} has no attention: use attention 'none', not {cfg.name}")
        mask = base_mask(cfg, h, w)
        if mask.tobytes() not in checked:
            check_masked(name, spec, x, mask, cfg.name.split("_", 1)[1], attentions)
            checked.add(mask.tobytes())
        step, _ = sbp_step(name, spec, x, mask, cfg.attention)
        if cfg.attention in ("query", "none"):  # forward exact
            dl = float(np.abs(step.logits - plain.logits).max())
            if dl > IDENTITY_ATOL:
                raise SystemExit(f"{name} {cfg.name}: forward should be exact, logits differ by {dl}")
        out = os.path.join(out_root, cfg.name)
        write_step(out, step)
        np.save(os.path.join(out, "mask.npy"), mask.astype(np.uint8))
        c, worst, _, dl = compare_steps(step, plain)
        grids = sorted({g for _, g in targets.blocks}, reverse=True)
        print(f"{name} sbp {cfg.name}: kept {int(mask.sum())}/{h * w} patches on {h}x{w}"
              + (f" (+{targets.prefix} prefix)" if targets.prefix else "")
              + (f", replicated to {', '.join(f'{a}x{b}' for a, b in grids[:-1])}" if len(grids) > 1 else "")
              + f"; {len(targets.blocks)} blocks {targets.blocks[0][0]}..{targets.blocks[-1][0]}"
              + (f" + downsamplers {', '.join(d for d, _ in targets.downsamplers)}" if targets.downsamplers else "")
              + f"; loss {step.loss:.6f}; vs no SBP: min grad cosine {c:.4f} ({worst}), "
              f"max |logits diff| {dl:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Write PyTorch references (logits, mean cross-entropy loss, parameter "
        "gradients in eval mode) for sbpc's training step, and ONNX initializer -> "
        "parameter maps for every export of each model.",
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", action="store_true",
                        help="full-size models (%s) from models/full/ into "
                        "models/full/reference/" % ", ".join(f"{n} batch {b}" for n, b in FULL_BATCH.items()))
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only this model (repeatable); tiny: %s" % ", ".join(export.TINY))
    parser.add_argument("--sbp", action="store_true",
                        help="write SBP references into <reference>/<name>/sbp/<config>/ instead "
                        "(tiny default: %s; --full default: %s)" % (
                            "; ".join(f"{n}: {' '.join(c)}" for n, c in SBP_TINY.items()),
                            ", ".join(f"{k} {v}" for k, v in SBP_FULL_DEFAULT.items())))
    parser.add_argument("--config", action="append", metavar="CFG",
                        help="with --sbp: only this config (repeatable), e.g. qkv_grid0.5_p1, "
                        "query_grid0.25_p3, none_random0.5_s0")
    args = parser.parse_args(argv)
    if args.config and not args.sbp:
        parser.error("--config needs --sbp")
    try:
        configs = [SbpConfig.parse(c) for c in args.config or []]
    except ValueError as e:
        parser.error(str(e))

    specs = {n: export.FULL[n] for n in FULL_BATCH} if args.full else export.TINY
    default_names = list(SBP_TINY) if args.sbp and not args.full and not configs else list(specs)
    names = args.only or default_names
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown model {unknown}; choose from {', '.join(specs)}")
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    folder = os.path.join(HERE, "full") if args.full else HERE
    for name in names:
        spec = specs[name]
        out = os.path.join(folder, "reference", name)
        if args.full:
            x = export.make_input(name, spec.chw, FULL_BATCH[name])
            # export.py's <name>.ref holds batch 2: check against it when the input is the same.
            ref = os.path.join(folder, f"{name}.ref")
            expect = None
            if os.path.isfile(os.path.join(ref, "input.npy")) and np.array_equal(
                np.load(os.path.join(ref, "input.npy")), x.numpy()
            ):
                expect = np.load(os.path.join(ref, "logits.npy"))
        else:
            ref = os.path.join(HERE, f"{name}.ref")
            x = torch.from_numpy(np.load(os.path.join(ref, "input.npy")))
            if x.shape[0] != TINY_BATCH:
                raise SystemExit(f"{name}: {ref}/input.npy has batch {x.shape[0]}")
            expect = np.load(os.path.join(ref, "logits.npy"))
        if not args.sbp:
            reference(name, spec, x, out, folder, write_input=args.full, expect_logits=expect)
            continue
        cfgs = configs
        if not cfgs:
            if args.full:
                kind = "convnext" if "convnext" in name else "vit"
                cfgs = [SbpConfig.parse(SBP_FULL_DEFAULT[kind])]
            elif name in SBP_TINY:
                cfgs = [SbpConfig.parse(c) for c in SBP_TINY[name]]
                # The whole committed set is rewritten: drop configs no longer in it.
                shutil.rmtree(os.path.join(out, "sbp"), ignore_errors=True)
            else:
                parser.error(f"{name} has no default SBP configs; pass --config")
        plain = train_step(name, export.build(name, spec)[0], x)
        sbp_reference(name, spec, x, os.path.join(out, "sbp"), cfgs, plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
