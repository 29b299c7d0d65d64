// MemoryPlanTests.swift: properties of the memory plan on random graphs: no overlap, every read sees its value, no stretched lifetimes.
import XCTest

@testable import SBPIR
@testable import SBPPasses

/// A small seeded generator for random graphs.
struct PlanRNG {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

final class MemoryPlanTests: XCTestCase {
  /// A random graph over [4, 8] values: elementwise ops (in-place candidates), views that go
  /// to [32] and back, matmuls with a parameter, some values read much later than made.
  func randomGraph(seed: UInt64) throws -> Graph {
    var rng = PlanRNG(state: seed)
    var g = Graph(name: "r\(seed)")
    let t = TensorType(.f32, [4, 8])
    var values = (0..<(1 + rng.below(3))).map { g.addInput("x\($0)", t) }
    let w = g.addParam("w", TensorType(.f32, [8, 8]), trainable: true, data: nil)
    for _ in 0..<(10 + rng.below(40)) {
      let a = values[rng.below(values.count)], b = values[rng.below(values.count)]
      let op: Op
      var ins = [a]
      switch rng.below(7) {
      case 0: (op, ins) = (.add, [a, b])
      case 1: (op, ins) = (.mul, [a, b])
      case 2: op = .unary(.gelu(.none))
      case 3: op = .unary(.relu)
      case 4: (op, ins) = (.matMul, [a, w])
      default:
        let flat = try g.append(.reshape([32]), [a])[0]
        let back = try g.append(rng.below(2) == 0 ? .unary(.neg) : .unary(.exp), [flat])[0]
        values.append(try g.append(.reshape([4, 8]), [back])[0])
        continue
      }
      values.append(try g.append(op, ins)[0])
    }
    let outs = Set((0..<(1 + rng.below(3))).map { _ in values[values.count - 1 - rng.below(min(values.count, 5))] })
    g.outputs = outs.sorted().map { GraphInput(value: $0, name: "y") }
    g.eliminateDeadCode()
    try g.verify()
    return g
  }

  func testRandomGraphsNeverOverlapAndEveryReadSeesItsValue() throws {
    var checked = 0, reused = 0
    for seed in UInt64(1)...200 {
      let g = try randomGraph(seed: seed)
      let plan = MemoryPlan(g)
      func root(_ v: ValueID) -> ValueID {
        var v = v
        while let o = plan.owner[v] { v = o }
        return v
      }
      let slot = Dictionary(uniqueKeysWithValues: plan.slots.map { ($0.value, $0) })
      // 1. Buffers live at the same time never share bytes, and all fit the arena.
      for (i, a) in plan.slots.enumerated() {
        XCTAssertLessThanOrEqual(a.offset + a.bytes, plan.arenaBytes)
        XCTAssertEqual(a.offset % MemoryPlan.alignment, 0)
        for b in plan.slots[(i + 1)...] where a.start <= b.end && b.start <= a.end {
          XCTAssertTrue(a.offset + a.bytes <= b.offset || b.offset + b.bytes <= a.offset, "seed \(seed): \(a) and \(b) overlap")
        }
      }
      // 2. Simulate the arena by 64-byte blocks, recording which value last wrote each: every
      //    read must find the value it reads (through views, the value they show), so an
      //    in-place result or another buffer that overwrote it too early is caught.
      var producerOp: [ValueID: Op] = [:]
      for n in g.nodes { for o in n.outputs { producerOp[o] = n.op } }
      func content(_ v: ValueID) -> ValueID {
        var v = v
        while let op = producerOp[v], op.isView, let o = plan.owner[v] { v = o }
        return v
      }
      var blocks = [ValueID?](repeating: nil, count: plan.arenaBytes / MemoryPlan.alignment + 1)
      func blocksOf(_ s: MemoryPlan.Slot) -> Range<Int> { (s.offset / 64)..<((s.offset + s.bytes) / 64) }
      for n in g.nodes {
        for v in n.inputs {
          guard let s = slot[root(v)] else { continue }
          for k in blocksOf(s) { XCTAssertEqual(blocks[k], content(v), "seed \(seed): a read of \(v) finds another value's bytes") }
        }
        for o in n.outputs where !n.op.isView {
          guard let s = slot[root(o)] else { continue }
          for k in blocksOf(s) { blocks[k] = o }
        }
      }
      for o in g.outputs {
        if let s = slot[root(o.value)] { for k in blocksOf(s) { XCTAssertEqual(blocks[k], content(o.value), "seed \(seed): output lost") } }
      }
      // 3. Every interval ends at its group's last reader (or the end, for outputs): the
      //    lower bound cannot be met by stretching lifetimes, and the arena stays near it.
      var last: [ValueID: Int] = [:]
      for (i, n) in g.nodes.enumerated() { for v in n.inputs { last[root(v)] = max(last[root(v)] ?? i, i) } }
      for o in g.outputs { last[root(o.value)] = g.nodes.count }
      for s in plan.slots { XCTAssertEqual(s.end, last[s.value] ?? s.start, "seed \(seed): \(s) outlives its last reader") }
      XCTAssertLessThanOrEqual(plan.lowerBound, plan.arenaBytes)
      reused += plan.owner.count
      checked += 1
    }
    XCTAssertEqual(checked, 200)
    XCTAssertGreaterThan(reused, 200, "the random graphs should exercise views and in-place reuse")
  }
}
