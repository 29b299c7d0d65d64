// Inspect.swift: `sbpc inspect`, a summary of what sbpc makes of an ONNX model.
import ArgumentParser
import Foundation
import SBPIR
import SBPONNX
import SBPPasses

struct Inspect: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Summarize a model: inputs and outputs, op histogram before and after canonicalization, parameters.")

  @Argument(help: "The ONNX model.")
  var model: String

  @Flag(help: "Print the summary as JSON.")
  var json = false

  @OptionGroup var shape: ShapeOptions

  func run() throws {
    try reportingErrors {
      let m = try importONNX(path: model, options: shape.importOptions)
      var g = m.graph
      let imported = g.opHistogram
      try Canonicalize().run(&g)
      let s = ModelSummary(model: model, imported: m, canonical: g, importedHistogram: imported)
      printNotes(m.notes)
      if json {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try enc.encode(s), as: UTF8.self))
      } else {
        print(s.text)
      }
    }
  }
}

/// What `inspect` reports, in one value so the text and JSON forms cannot drift apart.
struct ModelSummary: Encodable {
  struct Tensor: Encodable {
    var name: String
    var type: String
  }
  var model: String
  var producer: String
  var opset: Int
  var batch: Int
  var notes: [String]
  var inputs: [Tensor]
  var outputs: [Tensor]
  var onnxOps: [String: Int]
  var importedOps: [String: Int]
  var canonicalOps: [String: Int]
  var parameters: Int
  var parameterBytes: Int
  var parameterTensors: Int

  init(model: String, imported m: ImportedModel, canonical g: Graph, importedHistogram: [String: Int]) {
    self.model = model
    producer = m.producer
    opset = m.opset
    batch = m.batch
    notes = m.notes
    inputs = g.inputs.map { Tensor(name: $0.name, type: g.type(of: $0.value).description) }
    outputs = g.outputs.map { Tensor(name: $0.name, type: g.type(of: $0.value).description) }
    onnxOps = m.onnxHistogram
    importedOps = importedHistogram
    canonicalOps = g.opHistogram
    let p = g.trainableParameterCount
    parameters = p.elements
    parameterBytes = p.bytes
    parameterTensors = g.params.filter(\.trainable).count
  }

  var text: String {
    var s = "model     \(model)\nproducer  \(producer.isEmpty ? "(unknown)" : producer), opset \(opset), batch \(batch)\n"
    for i in inputs { s += "input     \(i.name) : \(i.type)\n" }
    for o in outputs { s += "output    \(o.name) : \(o.type)\n" }
    s += "params    \(parameters) in \(parameterTensors) tensors (\(formatBytes(parameterBytes)))\n\n"
    s += "ONNX ops (\(onnxOps.values.reduce(0, +)))\n"
    s += columns(onnxOps.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" })
    s += "\nIR ops          imported  canonical\n"
    for n in Set(importedOps.keys).union(canonicalOps.keys).sorted() {
      func col(_ d: [String: Int]) -> String { d[n].map(String.init) ?? "-" }
      s += "  " + n.padding(toLength: 20, withPad: " ", startingAt: 0) + col(importedOps).leftPad(6) + col(canonicalOps).leftPad(11) + "\n"
    }
    s +=
      "  total".padding(toLength: 22, withPad: " ", startingAt: 0) + String(importedOps.values.reduce(0, +)).leftPad(6)
      + String(canonicalOps.values.reduce(0, +)).leftPad(11)
    return s
  }
}

/// Lays out short cells in rows of four.
func columns(_ cells: [String]) -> String {
  var s = ""
  for (i, c) in cells.enumerated() {
    s += (i % 4 == 0 ? "  " : "") + c.padding(toLength: 24, withPad: " ", startingAt: 0)
    if i % 4 == 3 || i == cells.count - 1 { s = String(s.reversed().drop { $0 == " " }.reversed()) + "\n" }
  }
  return s
}

func formatBytes(_ b: Int) -> String {
  let units = ["B", "KiB", "MiB", "GiB"]
  var v = Double(b)
  var u = 0
  while v >= 1024 && u < units.count - 1 {
    v /= 1024
    u += 1
  }
  return u == 0 ? "\(b) B" : String(format: "%.1f %@", v, units[u])
}

extension String {
  func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
