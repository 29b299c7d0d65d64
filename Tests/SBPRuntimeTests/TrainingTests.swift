// TrainingTests.swift: training makes progress, threads agree, optimizer updates follow PyTorch's formulas, .npy round-trips.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class TrainingTests: XCTestCase {
  func testOverfitOneBatchOfTheTinyViT() throws {
    let (ex, _) = try runReferenceStep("vit_p4_d6", repoRoot + "/models/vit_p4_d6_ts17.onnx")
    let first = ex.output("loss")!.f32[0]
    for _ in 1..<100 { try ex.run() }
    let last = ex.output("loss")!.f32[0]
    XCTAssertLessThan(last, 0.1 * first, "100 SGD steps took the loss from \(first) to \(last)")
  }

  func testOneAndTwoThreadsAgree() throws {
    for model in ["vit_p4_d6", "convnext_t1131"] {
      let (a, _) = try runReferenceStep(model, repoRoot + "/models/\(model)_ts17.onnx", threads: 1)
      let (b, _) = try runReferenceStep(model, repoRoot + "/models/\(model)_ts17.onnx", threads: 2)
      let ga = gradients(a), gb = gradients(b)
      for (name, g) in ga {
        let (rel, _) = compare(Array(g.floats), Array(gb[name]!.floats))
        XCTAssertLessThan(rel, 1e-4, "\(model): @\(name) differs between 1 and 2 threads")
      }
    }
  }

  /// One parameter, one step, against the update written out by hand (PyTorch's SGD and AdamW).
  func runUpdate(_ op: Op, p: [Float], g: [Float], state: [[Float]], step: Float = 1) throws -> [[Float]] {
    var graph = Graph(name: "opt")
    let t = TensorType(.f32, [p.count])
    func param(_ name: String, _ v: [Float]) -> ValueID {
      v.withUnsafeBytes { graph.addParam(name, t, trainable: name == "p", data: TensorBytes(copying: $0)) }
    }
    var ins = [param("p", p), param("g", g)] + state.enumerated().map { param("s\($0.offset)", $0.element) }
    if case .adamw = op { ins.append(graph.addInput("step", TensorType(.f32, []))) }
    let outs = try graph.append(op, ins)
    graph.outputs = outs.map { GraphInput(value: $0, name: "o") }
    let ex = try Executor(graph: try graph.laidOut())
    ex.input("step")?.f32[0] = step
    try ex.run()
    return outs.map { Array(ex.buffer($0).floats) }
  }

  func testSGDWithMomentumAndWeightDecay() throws {
    let r = try runUpdate(.sgd(lr: 0.1, momentum: 0.9, weightDecay: 0.01), p: [1, -2], g: [0.5, 0.25], state: [[0.2, -0.1]])
    // d = g + wd·p; v = μ·v + d; p −= lr·v.
    let d: [Float] = [0.5 + 0.01, 0.25 - 0.02]
    let v: [Float] = [0.9 * 0.2 + d[0], 0.9 * -0.1 + d[1]]
    XCTAssertEqual(r[1][0], v[0], accuracy: 1e-6)
    XCTAssertEqual(r[1][1], v[1], accuracy: 1e-6)
    XCTAssertEqual(r[0][0], 1 - 0.1 * v[0], accuracy: 1e-6)
    XCTAssertEqual(r[0][1], -2 - 0.1 * v[1], accuracy: 1e-6)
  }

  func testAdamWDecoupledWeightDecay() throws {
    let r = try runUpdate(
      .adamw(lr: 0.01, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.1), p: [1], g: [0.5], state: [[0], [0]], step: 1)
    // Step 1: m̂ = g, v̂ = g², so the update is lr·g/|g| after decay p·(1 − lr·wd).
    let decayed: Float = 1 - 0.01 * 0.1
    let step: Float = 0.01 * 0.5 / (0.5 + 1e-8)
    XCTAssertEqual(r[0][0], decayed - step, accuracy: 1e-6)
    XCTAssertEqual(r[1][0], 0.05, accuracy: 1e-7)
    XCTAssertEqual(r[2][0], 0.001 * 0.25, accuracy: 1e-8)  // 1 − β₂ is 0.00099998713 in float32
  }

  func testNPYRoundTripAndErrors() throws {
    let a = NPYArray(f32: [1, -2.5, 3e-8, .infinity, 0, 7], shape: [2, 3])
    XCTAssertEqual(try NPYArray.parse(a.encoded(), name: "a"), a)
    XCTAssertEqual(a.encoded().count % 64, 24 % 64)  // header padded to 64 bytes, then 24 data bytes
    let b = NPYArray(i64: [3, -1], shape: [2])
    XCTAssertEqual(try NPYArray.parse(b.encoded(), name: "b"), b)
    let scalar = NPYArray(f32: [2], shape: [])
    XCTAssertEqual(try NPYArray.parse(scalar.encoded(), name: "s").shape, [])
    // numpy's own file (written by models/reference.py).
    let labels = try NPYArray.read(repoRoot + "/models/reference/vit_p4_d6/labels.npy")
    XCTAssertEqual(labels.int64s, [0, 7])
    var truncated = a.encoded()
    truncated.removeLast(4)
    for (bytes, fragment) in [([UInt8]("not npy".utf8), "magic"), (truncated, "needs 24"), (Array(a.encoded().prefix(9)), "magic")] {
      XCTAssertThrowsError(try NPYArray.parse(bytes, name: "x.npy")) { e in XCTAssertTrue("\(e)".contains(fragment), "\(e)") }
    }
  }
}
