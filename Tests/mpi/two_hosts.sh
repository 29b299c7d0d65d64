#!/usr/bin/env bash
# two_hosts.sh: the data-parallel equivalence across two "machines": two network namespaces joined by a veth pair.
#
# Host A (10.77.0.1) and host B (10.77.0.2) each have their own network stack; mpirun runs in
# A and starts B's daemon through a launch agent that enters B's namespace (ssh's role
# between real machines), so the ranks talk over TCP between the two addresses only.
# Then 3 steps of the tiny ViT (SBP) at batch 4 per rank against one process at batch 8:
# losses within 1e-5 relative and final weights within 1e-5. Needs root (ip netns) and
# mpirun; removes the namespaces at the end. Usage: Tests/mpi/two_hosts.sh [SBPC]
set -euo pipefail
cd "$(dirname "$0")/../.."
SBPC="$(realpath "${1:-${SBPC:-.build/release/sbpc}}")"
work="$(mktemp -d)"
cleanup() { ip netns del sbpc-hostA 2>/dev/null || true; ip netns del sbpc-hostB 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cleanup; work="$(mktemp -d)"
ip netns add sbpc-hostA
ip netns add sbpc-hostB
ip link add sbpc-vA type veth peer name sbpc-vB
ip link set sbpc-vA netns sbpc-hostA
ip link set sbpc-vB netns sbpc-hostB
ip -n sbpc-hostA addr add 10.77.0.1/24 dev sbpc-vA
ip -n sbpc-hostB addr add 10.77.0.2/24 dev sbpc-vB
for ns in sbpc-hostA sbpc-hostB; do ip -n $ns link set lo up; done
ip -n sbpc-hostA link set sbpc-vA up
ip -n sbpc-hostB link set sbpc-vB up
# The launch agent: "AGENT HOST COMMAND..." runs COMMAND on HOST, here inside its namespace.
cat > "$work/agent.sh" <<AGENT
#!/bin/sh
host="\$1"; shift
case "\$host" in 10.77.0.1) ns=sbpc-hostA ;; 10.77.0.2) ns=sbpc-hostB ;; *) echo "agent: unknown host \$host" >&2; exit 1 ;; esac
echo "\$host" >> "$work/launched"
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod +x "$work/agent.sh"
printf "10.77.0.1 slots=1\n10.77.0.2 slots=1\n" > "$work/hostfile"
"$SBPC" compile models/vit_p4_d6_ts17.onnx --batch 4 --keep 0.5 --distributed --bucket-mb 0.1 -o "$work/b4.plan" --quiet >/dev/null
"$SBPC" compile models/vit_p4_d6_ts17.onnx --batch 8 --keep 0.5 -o "$work/b8.plan" --quiet >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ip netns exec sbpc-hostA mpirun --hostfile "$work/hostfile" -np 2 --map-by node \
  --mca plm_rsh_agent "$work/agent.sh" --mca plm_rsh_no_tree_spawn 1 \
  --mca btl self,tcp --mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 \
  -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
  "$SBPC" train "$work/b4.plan" --steps 3 --threads 1 --dump-loss --checkpoint "$work/two" > "$work/two.out"
"$SBPC" train "$work/b8.plan" --steps 3 --threads 1 --dump-loss --checkpoint "$work/one" > "$work/one.out"
echo "host B's daemon was started through the agent: $(cat "$work/launched" 2>/dev/null || echo never)"
python3 - "$work" <<'PY'
import json, sys
import struct
work = sys.argv[1]
def losses(p): return [float(l) for l in open(p) if l.strip() and l[0] in "0123456789-"]
def tensors(d):
    b = open(d + "/checkpoint.sbpck", "rb").read()
    n1 = b.index(b"\n"); n2 = b.index(b"\n", n1 + 1)
    off, out = n2 + 1, {}
    for e in json.loads(b[n1 + 1:n2])["tensors"]:
        out[e["name"]] = struct.unpack(f"<{e['bytes'] // 4}f", b[off:off + e["bytes"]]); off += e["bytes"]
    return out
l2, l1 = losses(work + "/two.out"), losses(work + "/one.out")
worst_loss = max(abs(a - b) / abs(b) for a, b in zip(l2, l1))
a, b = tensors(work + "/one"), tensors(work + "/two")
worst = max(max(abs(x - y) for x, y in zip(a[k], b[k])) / (max(map(abs, a[k])) + 1e-12) for k in a)
print(f"losses 2 hosts {l2}\nlosses 1 process {l1}\nlargest loss difference {worst_loss:.2e} (bar 1e-5), largest weight difference {worst:.2e} (bar 1e-5)")
sys.exit(0 if len(l2) == 3 and worst_loss < 1e-5 and worst < 1e-5 else 1)
PY
