#!/usr/bin/env python3
# make_plans.py: regenerates the committed plan files (fixtures, the plan fuzzer's seeds, the bad-plan cases) with the current sbpc.
"""Run from the repository root after a plan format change:

    python3 Tests/Fixtures/make_plans.py [.build/debug/sbpc]

Each plan is compiled from a bundled model, its model line made relative to the repository
(so the tests run from any checkout), and the bad cases derived from a good one: an edit
after compile (checksum mismatch), a misspelt op behind a valid checksum, a missing model.
"""
import os
import subprocess
import sys
import tempfile

SBPC = sys.argv[1] if len(sys.argv) > 1 else ".build/debug/sbpc"


def fnv1a(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def split(text: str):
    lines = text.split("\n")
    return lines[:5], "\n".join(lines[5:])


def join(head, body: str, reseal: bool) -> str:
    if reseal:
        head = head[:4] + [f"checksum {fnv1a(body.encode())}"]
    return "\n".join(head) + "\n" + body


def compile_plan(model: str, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "p.plan")
        subprocess.run([SBPC, "compile", model, "-o", out, "--quiet", *flags], check=True, capture_output=True)
        text = open(out).read()
    head, body = split(text)
    head[1] = f'model "{model}"'
    return join(head, body, reseal=False)


def write(path: str, text: str):
    with open(path, "w") as f:
        f.write(text)
    print("wrote", path)


linear = compile_plan("Tests/Fixtures/ok_linear.onnx", "--batch", "2", "--keep", "1")
write("Fuzz/corpus/plan/linear-sgd.plan", linear)
write("Fuzz/corpus/plan/linear-adamw.plan", compile_plan("Tests/Fixtures/ok_linear.onnx", "--batch", "2", "--keep", "1", "--optimizer", "adamw"))
write("Fuzz/corpus/plan/sbp-vit-ls.plan", compile_plan("models/vit_ls_p4_d2_ts17.onnx", "--batch", "1", "--blocks", "all"))
write("Tests/Fixtures/sbp-vit.plan", compile_plan("models/vit_p4_d6_ts17.onnx", "--batch", "2"))

head, body = split(linear)
assert "lr=0.01" in body and "softmax_cross_entropy(" in body
write("Tests/Fixtures/bad/edited.plan", join(head, body.replace("lr=0.01", "lr=0.02"), reseal=False))
write("Tests/Fixtures/bad/bad-op.plan", join(head, body.replace("softmax_cross_entropy(", "softmax_cross_entropyy(", 1), reseal=True))
write("Tests/Fixtures/bad/missing-model.plan", join(head[:1] + ['model "Tests/Fixtures/no-such-model.onnx"'] + head[2:], body, reseal=False))
