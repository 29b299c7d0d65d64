# rename.py: writes copies of ONNX models with every node, value and initializer renamed, for the structure-only matching test.
"""Usage: python3 models/rename.py IN.onnx OUT.onnx [--seed N]

Renames every node, every value (inputs, outputs, intermediates) and every initializer to
an opaque name (`n17`, `v42`, `w3`), keeping the graph otherwise byte-for-byte equivalent.
sbpc's block matcher must give the same block table on the copy (Tests check this).
"""
import argparse
import random

import onnx


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    m = onnx.load(a.src)
    g = m.graph
    rng = random.Random(a.seed)
    names = {}

    def fresh(old, prefix):
        if old == "":
            return ""
        if old not in names:
            names[old] = f"{prefix}{rng.randrange(10**9)}_{len(names)}"
        return names[old]

    for t in g.initializer:
        t.name = fresh(t.name, "w")
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        vi.name = fresh(vi.name, "v")
    for i, n in enumerate(g.node):
        n.name = f"n{rng.randrange(10**9)}_{i}"
        for k in range(len(n.input)):
            n.input[k] = fresh(n.input[k], "v")
        for k in range(len(n.output)):
            n.output[k] = fresh(n.output[k], "v")
    onnx.save(m, a.dst)


if __name__ == "__main__":
    main()
