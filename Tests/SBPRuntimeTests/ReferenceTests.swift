// ReferenceTests.swift: the training step's logits, loss and every gradient match PyTorch (models/reference).
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// One entry of models/reference/<model>/<export>.params.json: how an ONNX initializer relates to a PyTorch parameter.
struct ParamMap: Decodable {
  var param: String
  var transpose: Bool
  var reshape: [Int]?
}

/// Every (model, export stem, ONNX path) with a committed reference.
func referenceCases() -> [(model: String, stem: String, onnx: String)] {
  let dir = repoRoot + "/models/reference"
  var out: [(String, String, String)] = []
  for model in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() {
    for f in ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/" + model)) ?? []).sorted() where f.hasSuffix(".params.json") {
      let stem = String(f.dropLast(".params.json".count))
      let onnx = stem == "dynamo" ? "\(repoRoot)/models/\(model)_dynamo/model.onnx" : "\(repoRoot)/models/\(model)_\(stem).onnx"
      out.append((model, stem, onnx))
    }
  }
  return out
}

/// Runs one training step of `onnx` on the reference input and labels; returns the executor.
func runReferenceStep(_ model: String, _ onnx: String, threads: Int = 1, precision: Precision = .fp32) throws -> (Executor, Plan) {
  let ref = repoRoot + "/models/reference/" + model
  let x = try NPYArray.read(repoRoot + "/models/\(model).ref/input.npy")
  let labels = try NPYArray.read(ref + "/labels.npy")
  let (plan, _) = try Plan.compile(model: onnx, options: Plan.Options(batch: x.shape[0], precision: precision))
  let ex = try Executor(graph: plan.train, threads: threads, retaining: Executor.gradientValues(plan.train))
  let inp = try XCTUnwrap(plan.train.inputs.first { $0.name != "labels" && $0.name != "step" })
  x.data.withUnsafeBytes { ex.buffer(inp.value).raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
  labels.data.withUnsafeBytes { ex.input("labels")!.raw.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
  try ex.run()
  return (ex, plan)
}

/// Gradient buffers by parameter name: the grad operand of each optimizer update.
func gradients(_ ex: Executor) -> [String: Buffer] {
  var out: [String: Buffer] = [:]
  let params = Dictionary(uniqueKeysWithValues: ex.graph.params.map { ($0.value, $0.name) })
  for n in ex.graph.nodes {
    switch n.op {
    case .sgd, .adamw: out[params[n.inputs[0]]!] = ex.buffer(n.inputs[1])
    default: break
    }
  }
  return out
}

/// max|a−b| / max|b| and cosine similarity.
func compare(_ a: [Float], _ b: [Float]) -> (rel: Float, cos: Float) {
  var maxDiff: Float = 0, maxRef: Float = 0, dot: Float = 0, na: Float = 0, nb: Float = 0
  for i in a.indices {
    maxDiff = max(maxDiff, abs(a[i] - b[i]))
    maxRef = max(maxRef, abs(b[i]))
    dot += a[i] * b[i]
    na += a[i] * a[i]
    nb += b[i] * b[i]
  }
  let cos = na == 0 && nb == 0 ? 1 : dot / ((na * nb).squareRoot() + 1e-30)
  return (maxRef == 0 ? maxDiff : maxDiff / maxRef, cos)
}

/// PyTorch's tensor in the ONNX initializer's layout.
func toONNXLayout(_ t: NPYArray, _ m: ParamMap) -> [Float] {
  var v = t.floats
  if m.transpose, t.shape.count == 2 {
    let (r, c) = (t.shape[0], t.shape[1])
    let src = v
    v = (0..<(r * c)).map { i in src[(i % r) * c + i / r] }
  }
  return v
}

/// Asserts that every gradient `ex` computed matches PyTorch's in `refDir/grads`, mapped
/// through the export's params.json (cosine > 0.9999, max relative error < 1e-3), and that
/// the trained parameters are PyTorch's. Returns the worst relative error, worst cosine and count.
func assertGradientsMatchPyTorch(_ ex: Executor, params: String, refDir: String, what: String) throws -> (
  rel: Float, cos: Float, count: Int
) {
  let map = try JSONDecoder().decode([String: ParamMap].self, from: Data(contentsOf: URL(fileURLWithPath: params)))
  let grads = gradients(ex)
  XCTAssertEqual(Set(grads.keys), Set(map.keys), "\(what): trained parameters differ from PyTorch's")
  var worst = (rel: Float(0), cos: Float(1), count: 0)
  for (name, m) in map {
    guard let g = grads[name] else { continue }
    let (rel, cos) = compare(Array(g.floats), toONNXLayout(try NPYArray.read("\(refDir)/grads/\(m.param).npy"), m))
    XCTAssertGreaterThan(cos, 0.9999, "\(what): gradient of \(m.param) (@\(name)) cosine")
    XCTAssertLessThan(rel, 1e-3, "\(what): gradient of \(m.param) (@\(name)) max relative error")
    worst = (max(worst.rel, rel), min(worst.cos, cos), worst.count + 1)
  }
  return worst
}

final class ReferenceTests: XCTestCase {
  func testEveryTinyModelMatchesPyTorch() throws {
    let cases = referenceCases()
    XCTAssertGreaterThanOrEqual(cases.count, 9, "references missing: \(cases)")
    var worst = (logits: Float(0), loss: Float(0), gradRel: Float(0), gradCos: Float(1), grads: 0)
    defer {
      print(
        "reference: \(cases.count) exports, \(worst.grads) gradients; worst logits rel \(worst.logits), loss diff \(worst.loss), gradient rel \(worst.gradRel), cosine \(worst.gradCos)"
      )
    }
    for (model, stem, onnx) in cases {
      let ref = repoRoot + "/models/reference/" + model
      let (ex, _) = try runReferenceStep(model, onnx)
      let what = "\(model) (\(stem))"
      let logits = try NPYArray.read(ref + "/logits.npy").floats
      let (lrel, _) = compare(Array(ex.buffer(ex.graph.outputs[0].value).floats), logits)
      XCTAssertLessThan(lrel, 1e-4, "\(what): logits")
      worst.logits = max(worst.logits, lrel)
      let loss = try NPYArray.read(ref + "/loss.npy").floats[0]
      XCTAssertEqual(ex.output("loss")!.f32[0], loss, accuracy: 1e-5, "\(what): loss")
      worst.loss = max(worst.loss, abs(ex.output("loss")!.f32[0] - loss))
      let g = try assertGradientsMatchPyTorch(ex, params: "\(ref)/\(stem).params.json", refDir: ref, what: what)
      worst.gradRel = max(worst.gradRel, g.rel)
      worst.gradCos = min(worst.gradCos, g.cos)
      worst.grads += g.count
    }
  }
}
