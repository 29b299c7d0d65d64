// Inspect.swift: `sbpc inspect`, a summary of what sbpc makes of an ONNX model.
import ArgumentParser
import Foundation
import SBPIR
import SBPONNX
import SBPPasses

/// `sbpc inspect`: what sbpc makes of a model.
struct Inspect: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Summarize a model: inputs, outputs, op histograms, parameters, and the blocks SBP can apply to.",
    discussion: prose("""
      The block table lists each block `mark` found (by structure, not names): a residual
      unit, or a PW-Conv node that no residual unit holds (kind pwconv(plain): the first
      block of an EfficientNet stage, Swin's patch merging). For each: its stage, kind, token
      grid (leading non-spatial tokens + H x W), the roles it matched, its parameters, and
      whether --blocks selects it (default: the paper's rule, the last 2/3 of
      an isotropic model; for a hierarchical one every stage before the second-to-last plus
      the first 2/3 of it). Residual units the matcher could not read are listed with why.

      --blocks grammar: all, none, last:N, first:N, N, A-B, stage:S, stage:S[A-B], and
      comma-separated lists of these.
      """))

  @Argument(help: "The ONNX model.")
  var model: String

  @Flag(help: "Print the summary as JSON.")
  var json = false

  @Option(help: "Blocks to mark as selected in the table (default: the paper's rule).")
  var blocks: String?

  @OptionGroup var shape: ShapeOptions
  @OptionGroup var parameters: ParameterFlags

  func run() throws {
    try reportingErrors {
      var m = try importONNX(path: model, options: shape.importOptions(parameters))
      var g = m.graph
      let imported = g.opHistogram
      try Canonicalize().run(&g)
      let canonical = g.opHistogram
      try Mark().run(&g)
      let table = BlockTable(g)
      var notes = m.notes
      // Structural --freeze specs name parameters by mark's blocks, so they apply here.
      for spec in parameters.freeze where FreezeSpec.isStructural(spec) {
        let names = try FreezeSpec.parameters(g, spec: spec, notes: &notes)
        for i in m.initializers.indices where names.contains(m.initializers[i].name) {
          m.initializers[i].trainable = false
          m.initializers[i].reason = "frozen by --freeze \(spec)"
        }
      }
      let selected = try blocks.map { try BlockSelector.parse($0, table: table, notes: &notes) } ?? table.defaultSelection
      if blocks == nil, let note = table.defaultNote { notes.append(note) }
      let s = ModelSummary(
        model: model, imported: m, canonical: g, importedHistogram: imported, canonicalHistogram: canonical, table: table,
        selected: selected, selectionSpec: blocks ?? table.defaultSpec)
      printNotes(notes)
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
  /// Every initializer: trained or not, and why.
  var initializers: [InitializerRole]
  var blocks: [BlockInfo]
  var stages: Int
  var selection: String
  var selected: [Int]
  var unmatched: [UnmatchedUnit]
  var stemNodes: Int
  var downsamplers: Int
  var headNodes: Int

  init(
    model: String, imported m: ImportedModel, canonical g: Graph, importedHistogram: [String: Int], canonicalHistogram: [String: Int],
    table: BlockTable, selected: [Int], selectionSpec: String
  ) {
    self.model = model
    producer = m.producer
    opset = m.opset
    batch = m.batch
    notes = m.notes
    inputs = g.inputs.map { Tensor(name: $0.name, type: g.type(of: $0.value).description) }
    outputs = g.outputs.map { Tensor(name: $0.name, type: g.type(of: $0.value).description) }
    onnxOps = m.onnxHistogram
    importedOps = importedHistogram
    canonicalOps = canonicalHistogram
    blocks = table.blocks
    stages = table.stageCount
    selection = selectionSpec
    self.selected = selected
    unmatched = table.unmatched
    stemNodes = table.stemNodes
    downsamplers = table.downsamplers
    headNodes = table.headNodes
    let p = g.trainableParameterCount
    parameters = p.elements
    parameterBytes = p.bytes
    parameterTensors = g.params.filter(\.trainable).count
    initializers = m.initializers
  }

  var text: String {
    var s = "model     \(model)\nproducer  \(producer.isEmpty ? "(unknown)" : producer), opset \(opset), batch \(batch)\n"
    for i in inputs { s += "input     \(i.name) : \(i.type)\n" }
    for o in outputs { s += "output    \(o.name) : \(o.type)\n" }
    s += "params    \(parameters) in \(parameterTensors) tensors (\(formatBytes(parameterBytes)))\n\n"
    if !initializers.isEmpty {
      let trained = initializers.filter(\.trainable).count
      s += "Initializers (\(initializers.count): \(trained) trained, \(initializers.count - trained) not)\n"
      let width = min(max(initializers.map(\.name.count).max() ?? 0, 4), 48)
      for t in initializers {
        s += "  " + t.name.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + t.type.padding(toLength: 18, withPad: " ", startingAt: 0)
          + (t.trainable ? "  trained: " : "  not trained: ") + t.reason + "\n"
      }
      s += "\n"
    }
    s += "ONNX ops (\(onnxOps.values.reduce(0, +)))\n"
    s += columns(onnxOps.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" })
    s += "\nIR ops          imported  canonical\n"
    for n in Set(importedOps.keys).union(canonicalOps.keys).sorted() {
      func col(_ d: [String: Int]) -> String { d[n].map(String.init) ?? "-" }
      s += "  " + n.padding(toLength: 20, withPad: " ", startingAt: 0) + col(importedOps).leftPad(6) + col(canonicalOps).leftPad(11) + "\n"
    }
    s +=
      "  total".padding(toLength: 22, withPad: " ", startingAt: 0) + String(importedOps.values.reduce(0, +)).leftPad(6)
      + String(canonicalOps.values.reduce(0, +)).leftPad(11) + "\n\n"
    s += blockText
    return s
  }

  var blockText: String {
    var s =
      "Blocks (\(blocks.count) in \(stages) stage\(stages == 1 ? "" : "s"); stem \(stemNodes) nodes, \(downsamplers) downsamplers, head \(headNodes) nodes)\n"
    s += "  block stage  kind          tokens        params  sel  roles\n"
    let chosen = Set(selected)
    for b in blocks {
      let tokens = (b.prefix > 0 ? "\(b.prefix)+" : "") + b.grid.map(String.init).joined(separator: "x")
      s += String(b.index).leftPad(7) + String(b.stage).leftPad(6) + "  " + b.kind.padding(toLength: 13, withPad: " ", startingAt: 0) + " "
      s += tokens.padding(toLength: 10, withPad: " ", startingAt: 0) + String(b.parameters).leftPad(10)
      s += (chosen.contains(b.index) ? "    *" : "     ") + "  " + b.roles.joined(separator: " ") + "\n"
    }
    s += "  selected by --blocks \(selection): \(chosen.count) of \(blocks.count)"
    if !unmatched.isEmpty {
      s += "\n\nUnmatched residual units (left without SBP)"
      for u in unmatched { s += "\n  '\(u.node)': \(u.reason)" }
    }
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
