// Importer.swift: turns a decoded ONNX graph into the static IR, folding shape arithmetic on the way.
import Glibc
import SBPIR

/// Options that fix what ONNX leaves symbolic.
public struct ImportOptions: Sendable {
  /// Value for the symbolic batch dimension (axis 0 of the graph inputs); nil means the default.
  public var batch: Int?
  /// Values for other named symbolic dimensions.
  public var dims: [String: Int]

  /// Initializer-name patterns that do not train (`--freeze`): `*` and `?` are wildcards; a
  /// pattern without them names an initializer or a dotted prefix (`blocks.0`).
  public var freeze: [String]
  /// Keep an initializer that feeds several layers as one shared tensor (`--keep-tied`);
  /// by default each reader gets its own copy.
  public var keepTied: Bool

  /// Replace the classifier with a fresh layer of this many classes (`--num-classes`).
  public var numClasses: Int?
  /// Seeds the new classifier's weights (`freshHeadWeights`).
  public var headSeed: UInt64

  public static let defaultBatch = 32

  public init(
    batch: Int? = nil, dims: [String: Int] = [:], freeze: [String] = [], keepTied: Bool = false, numClasses: Int? = nil,
    headSeed: UInt64 = 0
  ) {
    self.batch = batch
    self.dims = dims
    self.freeze = freeze
    self.keepTied = keepTied
    self.numClasses = numClasses
    self.headSeed = headSeed
  }

  /// The first `freeze` pattern that names `name`.
  public func frozenBy(_ name: String) -> String? { freeze.first { ImportOptions.pattern($0, names: name) } }

  static func pattern(_ p: String, names name: String) -> Bool {
    p.contains("*") || p.contains("?") ? globMatch(p, name) : name == p || name.hasPrefix(p + ".")
  }
}

/// Shell-style matching of the whole name: `*` any run of characters, `?` one.
func globMatch(_ pattern: String, _ name: String) -> Bool {
  let p = Array(pattern.utf8), s = Array(name.utf8)
  var pi = 0, si = 0, star = -1, mark = 0
  while si < s.count {
    if pi < p.count && (p[pi] == UInt8(ascii: "?") || p[pi] == s[si]) {
      pi += 1
      si += 1
    } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
      star = pi
      mark = si
      pi += 1
    } else if star >= 0 {
      pi = star + 1
      mark += 1
      si = mark
    } else {
      return false
    }
  }
  while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
  return pi == p.count
}

/// The imported graph with what the importer learned about the file.
public struct ImportedModel: Sendable {
  public var graph: Graph
  public var opset: Int
  public var producer: String
  public var batch: Int
  /// Things the user should know, such as a defaulted batch size.
  public var notes: [String]
  /// ONNX op histogram of the file as written.
  public var onnxHistogram: [String: Int]
  /// Every initializer of the file, in its order: trained or not, and why.
  public var initializers: [InitializerRole] = []
  /// The classifier `--num-classes` replaced, if any.
  public var head: ReplacedHead?
}

/// How one initializer of the file is used: trained by the training step, or not and why.
public struct InitializerRole: Sendable, Encodable, Equatable {
  public var name: String
  public var type: String
  public var trainable: Bool
  public var reason: String
}

/// Largest node (and initializer) count the importer accepts, so a hostile file cannot make it
/// build an unbounded graph.
public let maxGraphNodes = 1_000_000

/// Opsets of the default domain the importer understands.
public let supportedOpsets = 13...21

/// The ONNX ops the importer reads (default domain), sorted: its op table, one `case` each
/// in `lower()`. `OpTableTests` checks the two agree and writes the README's list from this.
public let supportedONNXOps: [String] = [
  "Add", "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Clip", "Concat", "Constant", "ConstantOfShape",
  "Conv", "Cos", "CumSum", "Div", "Dropout", "Einsum", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherND", "Gelu", "Gemm",
  "GlobalAveragePool", "GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish", "Identity",
  "InstanceNormalization", "LSTM", "LayerNormalization", "LeakyRelu", "MatMul", "Max", "MaxPool", "Min", "Mod", "Mul", "Neg", "Not", "Pad", "Pow",
  "Range", "Reciprocal", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Resize", "ScatterND", "SequenceAt", "Shape", "Sigmoid", "Sin",
  "Size", "Slice", "Softmax", "Split", "SplitToSequence", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "Transpose",
  "Unsqueeze", "Where"
]

/// Imports the ONNX model at `path`. Every error is one line naming the file and the thing at fault.
public func importONNX(path: String, options: ImportOptions = ImportOptions()) throws -> ImportedModel {
  var model = try readONNX(path: path)
  var head: ReplacedHead?
  if let n = options.numClasses {
    guard n >= 2 else { throw ImportError("\(path): --num-classes must be at least 2, got \(n)") }
    head = try replaceHead(&model, classes: n, seed: options.headSeed, path: path)
  }
  let ties = findTiedWeights(model)
  if !options.keepTied { untie(&model, ties) }
  var imp = Importer(path: path, model: model, options: options)
  if let h = head {
    imp.notes.append(
      "--num-classes: the classifier '\(h.node)' now has \(h.classes) outputs (was \(h.oldClasses)): @\(h.weight) drawn from a normal of σ 0.02 truncated at ±2σ (seed \(options.headSeed))\(h.bias.map { ", @\($0) zeros" } ?? "")"
    )
  }
  imp.notes += ties.map { t in
    let layers = "\(t.nodeNames.count) layers (\(t.nodeNames.map { "'\($0)'" }.joined(separator: ", ")))"
    return options.keepTied
      ? "warning: initializer '\(t.name)' feeds \(layers): trained as one shared tensor (--keep-tied)"
      : "warning: initializer '\(t.name)' feeds \(layers), as if the exporter merged equal tensors: each layer gets its own copy (\(Set(t.copies.map(\.copy)).sorted().joined(separator: ", "))); --keep-tied trains one shared tensor"
  }
  var imported = try imp.run()
  imported.head = head
  return imported
}

/// The initializers PyTorch holds as buffers (swin's attention mask, a relative-position
/// table's coordinates), from the graph signature the dynamo exporter writes into the graph's
/// metadata: `b_name: BUFFER target='layers.0.blocks.1.attn_mask' persistent=False`. They are
/// constants to train with, not parameters. TorchScript files say nothing; there the buffers
/// it keeps are folded (integers) or, for float tensors, weigh like weights (see `inspect`).
func dynamoBuffers(_ metadata: [String: String]) -> Set<String> { dynamoSignature(metadata, kinds: [": BUFFER ", ": CONSTANT_TENSOR "]) }

/// The initializers that are PyTorch parameters, by the same signature.
func dynamoParameters(_ metadata: [String: String]) -> Set<String> { dynamoSignature(metadata, kinds: [": PARAMETER "]) }

private func dynamoSignature(_ metadata: [String: String], kinds: [String]) -> Set<String> {
  guard let signature = metadata["pkg.torch.export.ExportedProgram.graph_signature"] else { return [] }
  var names: Set<String> = []
  for line in signature.split(separator: "\n") {
    guard kinds.contains(where: { line.contains($0) }),
      let start = line.range(of: "target='"), let end = line[start.upperBound...].firstIndex(of: "'")
    else { continue }
    names.insert(String(line[start.upperBound..<end]))
  }
  return names
}

/// Names recorded from read-only lowering helpers (a reference, so a non-mutating helper can add).
final class NameLog: @unchecked Sendable {
  var names: [String: String] = [:]
}

/// What an ONNX value name stands for while importing.
private enum Sym {
  case value(ValueID)
  case const(ConstTensor)
}

private struct Importer {
  let path: String
  let model: OModel
  let options: ImportOptions
  var graph: Graph
  var syms: [String: Sym] = [:]
  var materialized: [String: ValueID] = [:]
  /// Float scalar initializers the model named: parameters wherever computation reads them.
  var scalarParameters: Set<String> = []
  /// Named scalars an op read as a constant (Clip's bounds), with the reading node: such a
  /// scalar must not also train, or the op would keep its first value.
  let scalarsReadAsConstants = NameLog()
  /// Why each initializer trains or not (`ImportedModel.initializers`).
  var roles: [String: (trainable: Bool, reason: String)] = [:]
  var notes: [String] = []
  var batch = ImportOptions.defaultBatch
  var batchNames: Set<String> = []
  /// A model exported at a fixed batch, compiled at another (`--batch`): axis 0 of the inputs
  /// changes, and shape constants that hard-code the old batch on data are rewritten.
  var rebatch: (from: Int, to: Int)?
  var rebatchedShapes = 0
  /// Values computed from the graph inputs: where a shape constant's axis 0 is the batch.
  var fromInputs: Set<ValueID> = []
  /// ONNX sequences (dynamo's SplitToSequence), by name: their tensors, read by SequenceAt.
  var sequences: [String: [Sym]] = [:]
  /// Values computed from constants alone that were too large to fold, with what computes
  /// them: a scatter's indices (a slice assignment spells out every index) are evaluated
  /// from here when it needs them, and the ops are left for dead-code elimination.
  var deferredFolds: [ValueID: (op: Op, ins: [Sym])] = [:]
  var opset = 0
  let external: ExternalStore

  init(path: String, model: OModel, options: ImportOptions) {
    self.path = path
    self.model = model
    self.options = options
    self.graph = Graph(name: model.graphName.isEmpty ? "main" : model.graphName)
    self.external = ExternalStore(modelPath: path)
  }

  func err(_ m: String) -> ImportError { ImportError("\(path): \(m)") }

  mutating func run() throws -> ImportedModel {
    guard let v = model.opsets[""] else { throw err("model imports no opset of the default ONNX domain") }
    guard supportedOpsets.contains(v) else {
      throw err("opset \(v) is not supported (sbpc reads opsets \(supportedOpsets.lowerBound) to \(supportedOpsets.upperBound))")
    }
    opset = v
    try importInitializers()
    try importInputs()
    for node in try sortedNodes() { try convert(node) }
    for o in model.outputs {
      guard let s = syms[o.name] else { throw err("graph output '\(o.name)' is not produced by any node") }
      graph.outputs.append(GraphInput(value: try materialize(s, name: o.name), name: o.name))
    }
    try checkDeclaredTypes()
    if let rb = rebatch {
      notes.append(
        "the model was exported at batch \(rb.from); re-batched to \(rb.to) (\(rebatchedShapes) shape constant\(rebatchedShapes == 1 ? "" : "s") that hard-coded the batch rewritten)")
    }
    graph.eliminateDeadCode()
    do { try graph.verify() } catch let e as IRError { throw err("internal: imported graph does not verify: \(e)") }
    var hist: [String: Int] = [:]
    for n in model.nodes { hist[n.opType, default: 0] += 1 }
    for (name, reader) in scalarsReadAsConstants.names.sorted(by: { $0.key < $1.key }) where roles[name]?.trainable == true {
      throw err("the scalar @\(name) trains where computation reads it, but node '\(reader)' needs it as a constant; sbpc cannot train it consistently")
    }
    let frozenNames = roles.filter { $0.value.reason.hasPrefix("frozen by --freeze ") }.map(\.key)
    for p in options.freeze where !frozenNames.contains(where: { ImportOptions.pattern(p, names: $0) }) {
      throw err("--freeze \(p): names no trainable initializer (sbpc inspect lists their names)")
    }
    notes += artefactWarnings(graph)
    if !options.freeze.isEmpty {
      let frozen = graph.params.filter { frozenNames.contains($0.name) }
      let trained = graph.params.filter(\.trainable)
      notes.append(
        "--freeze: \(frozen.count) initializers (\(graph.elementCount(frozen)) values) frozen; \(trained.count) initializers (\(graph.elementCount(trained)) values) train"
      )
    }
    var imported = ImportedModel(graph: graph, opset: opset, producer: model.producer, batch: batch, notes: notes, onnxHistogram: hist)
    let live = Set(graph.params.map(\.name))
    imported.initializers = model.initializers.map { t in
      var role = roles[t.name] ?? (false, "not read")
      if role.trainable && !live.contains(t.name) { role = (false, "read by nothing the model computes") }
      let type = dtype(onnx: t.onnxType).map { TensorType($0, t.dims).description } ?? "type \(t.onnxType)"
      return InitializerRole(name: t.name, type: type, trainable: role.trainable, reason: role.reason)
    }
    return imported
  }

  // MARK: Initializers and inputs

  mutating func tensorData(_ t: OTensor, _ what: String) throws -> (TensorType, TensorBytes) {
    guard let dt = dtype(onnx: t.onnxType) else { throw err("\(what) '\(t.name)' has unsupported data type \(t.onnxType)") }
    guard let n = checkedElementCount(t.dims) else {
      throw err("\(what) '\(t.name)' has an invalid or too large shape [\(t.dims.map(String.init).joined(separator: ","))]")
    }
    let need = n * dt.byteSize
    let bytes: TensorBytes
    switch t.data {
    case .bytes(let b):
      bytes = b
    case .external(let loc, let off, let len):
      bytes = try external.bytes(tensor: t.name, location: loc, offset: off, length: len, expected: need)
    }
    guard bytes.count == need else {
      throw err("\(what) '\(t.name)' holds \(bytes.count) bytes but its shape \(TensorType(dt, t.dims)) needs \(need)")
    }
    return (TensorType(dt, t.dims), bytes)
  }

  mutating func importInitializers() throws {
    let buffers = dynamoBuffers(model.graphMetadata)
    for t in model.initializers {
      let (type, bytes) = try tensorData(t, "initializer")
      guard syms[t.name] == nil else { throw err("initializer '\(t.name)' is defined twice") }
      // Floating tensors with more than one element are the model's weights. Scalars and integer
      // tensors take part in folding; a float scalar the model named (StarReLU's scale and bias,
      // not the exporter's `val_58`) becomes a trained parameter where computation reads it
      // (`materialize`), and stays a constant where an op needs one (Clip's bounds, shapes).
      let buffer = buffers.contains(t.name)
      if type.dtype.isFloat && type.elementCount == 1 && !buffer && !Importer.isExporterConstant(t.name) { scalarParameters.insert(t.name) }
      roles[t.name] =
        buffer
        ? (false, "a buffer in PyTorch, not a parameter (the export's graph signature)")
        : !type.dtype.isFloat
        ? (false, "integer: shape and index arithmetic, folded")
        : type.elementCount > 1
          ? (true, "weight")
          : scalarParameters.contains(t.name)
            ? (false, "a named scalar only ops that need a constant read (folded)")
            : (false, "a constant the exporter made (its name), folded")
      if type.dtype.isFloat && type.elementCount > 1 {
        let frozen = buffer ? nil : options.frozenBy(t.name)
        if let frozen { roles[t.name] = (false, "frozen by --freeze \(frozen)") }
        syms[t.name] = .value(graph.addParam(t.name, type, trainable: !buffer && frozen == nil, data: bytes))
      } else if type.elementCount <= maxFoldElements, let c = ConstTensor.decode(type.dtype, shape: type.shape, bytes: bytes.buffer) {
        syms[t.name] = .const(c)
      } else {
        syms[t.name] = .value(graph.addParam(t.name, type, trainable: false, data: bytes))
      }
    }
  }

  /// Names exporters give the constants they make: TorchScript's `onnx::Mul_12` and
  /// `/blocks/attn/Constant_output_0`, dynamo's `val_58`, `_val_3` and `scalar_tensor_default`.
  /// A model's own parameters are named after their module path (`blocks.0.mlp.act.scale`).
  static func isExporterConstant(_ name: String) -> Bool {
    if name.hasPrefix("onnx::") || name.hasPrefix("/") || name.contains("Constant") { return true }
    for prefix in ["val_", "_val_", "scalar_tensor", "const_", "_const"] where name.hasPrefix(prefix) { return true }
    return false
  }

  mutating func importInputs() throws {
    var sawSymbolicBatch = false
    var fixedBatch: Int?
    let first = model.inputs.first { syms[$0.name] == nil }?.name
    for inp in model.inputs where syms[inp.name] == nil {
      guard let et = inp.elemType, let dt = dtype(onnx: et) else { throw err("graph input '\(inp.name)' has no supported tensor type") }
      guard let dims = inp.dims else { throw err("graph input '\(inp.name)' has no shape") }
      var shape: [Int] = []
      for (axis, d) in dims.enumerated() {
        if let v = d.value, v > 0 {
          // A fixed batch: the image input's axis 0 takes --batch (re-batching, see `rebatch`).
          let rebatched = axis == 0 && inp.name == first && options.batch != nil
          shape.append(rebatched ? options.batch! : v)
          if axis == 0 && inp.name == first { fixedBatch = v }
        } else if let p = d.param, let v = options.dims[p] {
          shape.append(v)
        } else if axis == 0 {
          sawSymbolicBatch = true
          if let p = d.param { batchNames.insert(p) }
          shape.append(options.batch ?? ImportOptions.defaultBatch)
        } else {
          let name = d.param.map { "'\($0)'" } ?? "(unnamed)"
          throw err(
            "symbolic dimension \(name) at axis \(axis) of input '\(inp.name)' has no value; only the batch (axis 0) is fixed by --batch, give others with --dim NAME=N"
          )
        }
      }
      guard checkedElementCount(shape) != nil else { throw err("graph input '\(inp.name)' has a too large shape \(shape)") }
      let v = graph.addInput(inp.name, TensorType(dt, shape))
      syms[inp.name] = .value(v)
      fromInputs.insert(v)
    }
    if sawSymbolicBatch {
      batch = options.batch ?? ImportOptions.defaultBatch
      if options.batch == nil { notes.append("batch size defaults to \(ImportOptions.defaultBatch) (set it with --batch N)") }
    } else if let fixedBatch {
      batch = options.batch ?? fixedBatch
      if batch != fixedBatch { rebatch = (fixedBatch, batch) }
    }
  }

  /// ONNX requires a topological order but exporters do not always give one; sort, and name a
  /// node on any cycle.
  func sortedNodes() throws -> [ONode] {
    guard model.nodes.count <= maxGraphNodes, model.initializers.count <= maxGraphNodes else {
      throw err(
        "graph has \(model.nodes.count) nodes and \(model.initializers.count) initializers; sbpc accepts at most \(maxGraphNodes) of each")
    }
    var producer: [String: Int] = [:]
    for (i, n) in model.nodes.enumerated() {
      for o in n.outputs where !o.isEmpty {
        guard producer[o] == nil, syms[o] == nil else { throw err("value '\(o)' is defined twice (node '\(n.name)')") }
        producer[o] = i
      }
    }
    var indeg = [Int](repeating: 0, count: model.nodes.count)
    var users: [[Int]] = Array(repeating: [], count: model.nodes.count)
    for (i, n) in model.nodes.enumerated() {
      for inp in Set(n.inputs) where !inp.isEmpty {
        if let p = producer[inp] {
          indeg[i] += 1
          users[p].append(i)
        } else if syms[inp] == nil {
          throw err("node '\(n.name)' (\(n.opType)) reads '\(inp)', which no node, input or initializer defines")
        }
      }
    }
    var ready = (0..<model.nodes.count).filter { indeg[$0] == 0 }.reversed() as [Int]
    var order: [Int] = []
    while let i = ready.popLast() {
      order.append(i)
      for u in users[i].reversed() {
        indeg[u] -= 1
        if indeg[u] == 0 { ready.append(u) }
      }
    }
    if order.count < model.nodes.count, let stuck = indeg.firstIndex(where: { $0 > 0 }) {
      let n = model.nodes[stuck]
      throw err("graph has a cycle through node '\(n.name)' (\(n.opType))")
    }
    return order.map { model.nodes[$0] }
  }

  /// Checks our inferred types against the types the exporter wrote (outputs and value_info),
  /// where those are fully known.
  func checkDeclaredTypes() throws {
    // Re-batched, the file's declared shapes hold the old batch: the outputs' axis 0 is
    // checked as the new one, and intermediate declarations (a [1, C, 1, 1] bias is not
    // batched) are not checked.
    for vi in model.outputs + (rebatch == nil ? model.valueInfo : []) {
      guard let s = syms[vi.name], let dims = vi.dims, let et = vi.elemType, let dt = dtype(onnx: et) else { continue }
      let t: TensorType
      switch s {
      case .value(let v): t = graph.type(of: v)
      case .const(let c): t = c.type
      }
      var expect: [Int] = []
      for (axis, d) in dims.enumerated() {
        if let v = d.value, let rb = rebatch, axis == 0, v == rb.from {
          expect.append(rb.to)
        } else if let v = d.value {
          expect.append(v)
        } else if let p = d.param, batchNames.contains(p) {
          expect.append(batch)
        } else if let p = d.param, let v = options.dims[p] {
          expect.append(v)
        } else {
          expect = []
          break
        }
      }
      guard expect.count == dims.count else { continue }
      guard t == TensorType(dt, expect) else {
        throw err("shape inference gives \(t) for '\(vi.name)', but the file declares \(TensorType(dt, expect))")
      }
    }
  }

  // MARK: Values

  /// Turns a constant into a graph value: inline when small, a non-trainable param when big.
  mutating func materialize(_ s: Sym, name: String) throws -> ValueID {
    switch s {
    case .value(let v): return v
    case .const(let c):
      if let v = materialized[name] { return v }
      let v: ValueID
      if scalarParameters.contains(name), let bytes = model.initializers.first(where: { $0.name == name }) {
        let frozen = options.frozenBy(name)
        v = graph.addParam(name, c.type, trainable: frozen == nil, data: try tensorData(bytes, "initializer").1)
        roles[name] = frozen.map { (false, "frozen by --freeze \($0)") } ?? (true, "a scalar the model named, read by computation")
      } else if c.count <= Literal.maxInlineElements {
        v = try graph.append(.constant(c.literal), [], name: name)[0]
      } else {
        var pname = name.isEmpty ? "const" : name
        while graph.params.contains(where: { $0.name == pname }) { pname += "_" }
        v = graph.addParam(pname, c.type, trainable: false, data: c.encoded())
      }
      if !name.isEmpty { materialized[name] = v }
      return v
    }
  }

  /// The value of `v` if it is computed from constants alone (`deferredFolds`) and has at
  /// most `limit` elements.
  func deferredValue(_ v: ValueID, limit: Int) -> ConstTensor? {
    // Each value once: shape arithmetic shares its intermediates.
    var done: [ValueID: ConstTensor] = [:]
    func value(_ v: ValueID) -> ConstTensor? {
      if let c = done[v] { return c }
      guard let (op, ins) = deferredFolds[v], graph.type(of: v).elementCount <= limit else { return nil }
      var xs: [ConstTensor] = []
      for s in ins {
        switch s {
        case .const(let c): xs.append(c)
        case .value(let u):
          guard let c = value(u) else { return nil }
          xs.append(c)
        }
      }
      let c = evaluate(op, xs, outType: graph.type(of: v))
      done[v] = c
      return c
    }
    return value(v)
  }

  /// True when `v` is computed from `source` (a batch statistic of it, say).
  func computed(_ v: ValueID, from source: ValueID) -> Bool {
    let producer = graph.producerIndex()
    var seen = Set<ValueID>(), stack = [v]
    while let u = stack.popLast() {
      if u == source { return true }
      guard seen.insert(u).inserted, let p = producer[u] else { continue }
      stack += graph.nodes[p].inputs
    }
    return false
  }

  func type(_ s: Sym) -> TensorType {
    switch s {
    case .value(let v): return graph.type(of: v)
    case .const(let c): return c.type
    }
  }

  // MARK: Nodes

  mutating func convert(_ n: ONode) throws {
    var ctx = NodeContext(node: n, importer: self)
    let results = try ctx.lower()
    self = ctx.importer
    for (name, s) in zip(n.outputs, results) where !name.isEmpty { syms[name] = s }
    if n.outputs.count > results.count {
      for extra in n.outputs[results.count...] where !extra.isEmpty && isUsed(extra) && sequences[extra] == nil {
        throw err(
          "node '\(n.name)' (\(n.opType)): output '\(extra)' is used, but sbpc supports only the first \(results.count) output(s) of \(n.opType)"
        )
      }
    }
  }

  func isUsed(_ name: String) -> Bool {
    model.nodes.contains { $0.inputs.contains(name) } || model.outputs.contains { $0.name == name }
  }

  /// Lowering of one node, with helpers that name the node in every error.
  struct NodeContext {
    let node: ONode
    var importer: Importer

    func err(_ m: String) -> ImportError { importer.err("node '\(node.name)' (\(node.opType)): \(m)") }

    func sym(_ i: Int) throws -> Sym? {
      guard i < node.inputs.count, !node.inputs[i].isEmpty else { return nil }
      guard let s = importer.syms[node.inputs[i]] else { throw err("input '\(node.inputs[i])' is undefined") }
      return s
    }

    func required(_ i: Int) throws -> Sym {
      guard let s = try sym(i) else { throw err("missing input \(i)") }
      return s
    }

    func const(_ i: Int, _ what: String) throws -> ConstTensor? {
      guard let s = try sym(i) else { return nil }
      guard case .const(let c) = s else { throw err("input \(i) (\(what)) must be constant after folding; sbpc needs static shapes") }
      if importer.scalarParameters.contains(node.inputs[i]) { importer.scalarsReadAsConstants.names[node.inputs[i]] = node.name }
      return c
    }

    /// True when `s` is input i's own value (not an intermediate a lowering emits at position i).
    func isOwnInput(_ s: Sym, _ i: Int) -> Bool {
      guard i < node.inputs.count, let own = importer.syms[node.inputs[i]] else { return false }
      switch (s, own) {
      case (.const(let a), .const(let b)): return a == b
      case (.value(let a), .value(let b)): return a == b
      default: return false
      }
    }

    /// `s` as a graph value. A constant is named after (and cached under) the node's input i
    /// only when it is that input's own value: a lowering emits intermediate constants (an
    /// epsilon) at positions whose ONNX input is something else.
    mutating func value(_ s: Sym, _ i: Int) throws -> ValueID {
      try importer.materialize(s, name: isOwnInput(s, i) ? node.inputs[i] : "")
    }

    func int(_ k: String, _ d: Int) throws -> Int {
      switch node.attrs[k] {
      case nil: return d
      case .int(let v)?: return v
      default: throw err("attribute '\(k)' must be an integer")
      }
    }
    func float(_ k: String, _ d: Double) throws -> Double {
      switch node.attrs[k] {
      case nil: return d
      case .float(let v)?: return v
      case .int(let v)?: return Double(v)
      default: throw err("attribute '\(k)' must be a float")
      }
    }
    func ints(_ k: String) throws -> [Int]? {
      switch node.attrs[k] {
      case nil: return nil
      case .ints(let v)?: return v
      default: throw err("attribute '\(k)' must be a list of integers")
      }
    }
    func string(_ k: String, _ d: String) throws -> String {
      switch node.attrs[k] {
      case nil: return d
      case .string(let v)?: return v
      default: throw err("attribute '\(k)' must be a string")
      }
    }

    /// The `axis` attribute made non-negative against `rank`, so the IR has one spelling per axis.
    func axis(_ d: Int, rank: Int) throws -> Int {
      let a = try int("axis", d)
      guard let n = normalizeAxis(a, rank: rank) else { throw err("axis \(a) out of range for rank \(rank)") }
      return n
    }

    /// Axes from the input (newer opsets) or the attribute (older ones).
    func axes(input i: Int) throws -> [Int]? {
      if let c = try const(i, "axes") { return c.intValues }
      return try ints("axes")
    }

    /// Emits `op`, folding it when every operand is constant and the op folds.
    mutating func emit(_ op: Op, _ ins: [Sym]) throws -> [Sym] {
      let types: [TensorType]
      do { types = try op.inferTypes(ins.map(importer.type)) } catch let e as IRError {
        guard let rb = importer.rebatch else { throw err(e.description) }
        throw err(
          "\(e.description); the model was exported at batch \(rb.from) and this node's shapes do not follow --batch \(rb.to): export with a symbolic batch (models/export_for_training.py) or compile at --batch \(rb.from)"
        )
      }
      let consts = ins.compactMap { s -> ConstTensor? in if case .const(let c) = s { return c } else { return nil } }
      // A named scalar parameter is never folded away: it would get no gradient.
      let readsParameter = ins.indices.contains { isOwnInput(ins[$0], $0) && importer.scalarParameters.contains(node.inputs[$0]) }
      if consts.count == ins.count, !readsParameter, types.count == 1, types[0].elementCount <= maxFoldElements,
        let folded = evaluate(op, consts, outType: types[0])
      {
        return [.const(folded)]
      }
      var vals: [ValueID] = []
      for (i, s) in ins.enumerated() { vals.append(try value(s, i)) }
      do {
        let outs = try importer.graph.append(op, vals, name: node.name)
        if vals.contains(where: importer.fromInputs.contains) { importer.fromInputs.formUnion(outs) }
        let known = ins.allSatisfy { s in
          switch s {
          case .const: return true
          case .value(let v): return importer.deferredFolds[v] != nil
          }
        }
        if known, !readsParameter, outs.count == 1 { importer.deferredFolds[outs[0]] = (op, ins) }
        return outs.map { .value($0) }
      } catch let e as IRError { throw err(e.description) }
    }

    mutating func unary(_ op: Op) throws -> [Sym] { try emit(op, [try required(0)]) }
    mutating func binary(_ op: Op) throws -> [Sym] { try emit(op, [try required(0), try required(1)]) }

    mutating func lower() throws -> [Sym] {
      guard node.domain.isEmpty || node.domain == "ai.onnx" else {
        throw err("unsupported op \(node.domain)::\(node.opType) (only the default ONNX domain is supported)")
      }
      let opset = importer.opset
      switch node.opType {
      case "Identity": return [try required(0)]
      case "Dropout":
        // In a training-mode export a dropout with a rate drops in PyTorch's training; sbpc has
        // no dropout, so it refuses rather than train a different model.
        let ratio = try const(1, "ratio")?.doubleValues.first ?? 0.5
        let training = try const(2, "training_mode")?.intValues.first ?? 0
        guard training == 0 || ratio == 0 else {
          throw err(
            "dropout with rate \(ratio) in a training-mode export: sbpc does not run dropout; export with every dropout rate 0 (timm: drop_rate=0, drop_path_rate=0; models/export_for_training.py also zeroes rates a model hard-codes)"
          )
        }
        return [try required(0)]
      case "Constant": return [.const(try constantValue())]
      case "Shape":
        let shape = importer.type(try required(0)).shape
        let r = shape.count
        var s = try int("start", 0), e = try int("end", r)
        s = min(max(s < 0 ? s + r : s, 0), r)
        e = min(max(e < 0 ? e + r : e, 0), r)
        return [.const(.i64(Array(shape[s..<max(s, e)])))]
      case "Size": return [.const(ConstTensor(dtype: .i64, shape: [], ints: [Int64(importer.type(try required(0)).elementCount)]))]
      case "ConstantOfShape":
        guard let shape = try const(0, "shape")?.intValues, let n = checkedElementCount(shape) else {
          throw err("shape must be a constant, non-negative shape")
        }
        guard n <= maxFoldElements else { throw err("ConstantOfShape of \(n) elements is too large to fold") }
        var fill = ConstTensor(dtype: .f32, shape: [1], floats: [0])
        if case .tensor(let t)? = node.attrs["value"] {
          let (ty, b) = try importer.tensorData(t, "value")
          guard let c = ConstTensor.decode(ty.dtype, shape: ty.shape, bytes: b.buffer), c.count == 1 else {
            throw err("value must hold one element")
          }
          fill = c
        }
        return [.const(fill.gathered([Int](repeating: 0, count: n), shape: shape))]
      case "Range":
        guard let s = try const(0, "start"), let l = try const(1, "limit"), let d = try const(2, "delta") else {
          throw err("start, limit and delta must be constant")
        }
        guard s.count == 1, l.count == 1, d.count == 1 else { throw err("start, limit and delta must be scalars") }
        let a = s.doubleValues[0], b = l.doubleValues[0], st = d.doubleValues[0]
        guard st != 0, a.isFinite, b.isFinite, st.isFinite else { throw err("start, limit and delta must be finite and delta non-zero") }
        let n = max(0, saturatingInt(((b - a) / st).rounded(.up)))
        guard n <= maxFoldElements else { throw err("range of \(n) elements is too large") }
        let v = (0..<n).map { a + Double($0) * st }
        return [.const(ConstTensor(dtype: s.dtype, shape: [n]).filled(v))]
      case "Cast":
        guard let d = dtype(onnx: Int32(clamping: try int("to", 0))) else { throw err("unsupported target type \(try int("to", 0))") }
        return try castTo(d)
      case "CastLike": return try castTo(importer.type(try required(1)).dtype)
      case "Add": return try binary(.add)
      case "Sub": return try binary(.sub)
      case "Mul": return try binary(.mul)
      case "Div": return try binary(.div)
      case "Pow": return try binary(.pow)
      case "Equal": return try binary(.equal)
      case "Where": return try emit(.select, [try required(0), try required(1), try required(2)])
      case "Mod":
        // Only on constants: the exporters emit it for shape and index arithmetic.
        guard case .const(let a)? = try sym(0), case .const(let b)? = try sym(1) else {
          throw err("Mod of computed tensors is not supported (it folds only on constants)")
        }
        let fmod = try int("fmod", 0) != 0
        guard fmod || !a.dtype.isFloat else { throw err("Mod of floats needs fmod=1") }
        guard let r = constMod(a, b, fmod: fmod) else { throw err("operands \(a.shape) and \(b.shape) do not broadcast, or a divisor is 0") }
        return [.const(r)]
      case "Max", "Min":
        // Variadic. The exporters emit it on index arithmetic (dynamo: a one-input Max over
        // the relative-position index) and as a clamp against a constant bound.
        let isMax = node.opType == "Max"
        let syms = try (0..<node.inputs.count).map { try required($0) }
        guard !syms.isEmpty else { throw err("needs at least one input") }
        let consts = syms.compactMap { s -> ConstTensor? in if case .const(let c) = s { return c } else { return nil } }
        if consts.count == syms.count {
          var acc = consts[0]
          for c in consts.dropFirst() {
            guard let r = constExtremum(acc, c, max: isMax) else { throw err("operands \(acc.shape) and \(c.shape) do not broadcast") }
            acc = r
          }
          return [.const(acc)]
        }
        let computed = syms.filter { if case .const = $0 { return false } else { return true } }
        guard computed.count == 1, consts.allSatisfy({ $0.count == 1 && $0.dtype.isFloat }) else {
          throw err("\(node.opType) of two computed tensors is not supported (only against constant scalars)")
        }
        guard consts.isEmpty || importer.type(computed[0]).shape.count >= consts.map(\.shape.count).max()! else {
          throw err("a constant operand broadcasts the computed one to a larger rank")
        }
        if consts.isEmpty { return computed }
        let bound = isMax ? consts.map { $0.doubleValues[0] }.max()! : consts.map { $0.doubleValues[0] }.min()!
        let big = Double(Float.greatestFiniteMagnitude)
        return try emit(.unary(isMax ? .clip(min: bound, max: big) : .clip(min: -big, max: bound)), computed)
      case "Sqrt": return try unary(.unary(.sqrt))
      case "Erf": return try unary(.unary(.erf))
      case "Tanh": return try unary(.unary(.tanh))
      case "Exp": return try unary(.unary(.exp))
      case "Neg": return try unary(.unary(.neg))
      case "Sin", "Cos", "CumSum", "Ceil", "Floor":
        // Only on constants: the sine position encodings (XCiT's, EdgeNeXt's) and TF-style
        // "same" padding (Ceil of a size over a stride) are computed from shapes alone, and
        // fold here; no kernel computes them per step.
        guard let x = try const(0, "data"), x.dtype.isFloat || node.opType == "CumSum" else {
          throw err("input 0 must be a floating constant; sbpc computes \(node.opType) only at import")
        }
        if node.opType == "CumSum" {
          guard let a = try const(1, "axis")?.intValues.first else { throw err("axis must be given") }
          let r = x.shape.count, axis = a < 0 ? a + r : a
          guard axis >= 0, axis < r else { throw err("axis \(a) outside a rank-\(r) input") }
          guard try int("exclusive", 0) == 0, try int("reverse", 0) == 0 else { throw err("exclusive and reverse are not supported") }
          let inner = x.shape[(axis + 1)...].reduce(1, *), len = x.shape[axis]
          var v = x.doubleValues
          for i in v.indices where (i / inner) % len != 0 { v[i] += v[i - inner] }
          return [.const(x.dtype.isFloat ? ConstTensor(dtype: x.dtype, shape: x.shape, floats: v) : ConstTensor(dtype: x.dtype, shape: x.shape, ints: v.map { Int64($0) }))]
        }
        let f: (Double) -> Double
        switch node.opType {
        case "Sin": f = { Glibc.sin($0) }
        case "Cos": f = { Glibc.cos($0) }
        case "Ceil": f = { $0.rounded(.up) }
        default: f = { $0.rounded(.down) }
        }
        let v = x.floats.map(f)
        return [.const(ConstTensor(dtype: x.dtype, shape: x.shape, floats: x.dtype == .f64 ? v : v.map { Double(Float($0)) }))]
      case "Not":
        // not x = (x == false); folded when x is a constant, as a mask built from shapes is.
        let x = try required(0)
        guard importer.type(x).dtype == .bool else { throw err("input must be bool, got \(importer.type(x).dtype)") }
        return try emit(.equal, [x, .const(ConstTensor(dtype: .bool, shape: [], ints: [0]))])
      case "Relu": return try unary(.unary(.relu))
      case "LeakyRelu":
        // relu(x) + α·min(x, 0), in ops that have gradients (TResNet's activation).
        let x = try required(0), alpha = try float("alpha", 0.01)
        let pos = try emit(.unary(.relu), [x])[0]
        let neg = try emit(.unary(.clip(min: -Double(Float.greatestFiniteMagnitude), max: 0)), [x])[0]
        let scaled = try emit(.mul, [neg, .const(ConstTensor(dtype: importer.type(x).dtype, shape: [], floats: [alpha]))])[0]
        return try emit(.add, [pos, scaled])
      case "Sigmoid": return try unary(.unary(.sigmoid))
      case "Reciprocal": return try unary(.unary(.reciprocal))
      case "MatMul": return try binary(.matMul)
      case "Gemm":
        var ins = [try required(0), try required(1)]
        if let c = try sym(2) { ins.append(c) }
        return try emit(
          .gemm(
            transA: try int("transA", 0) != 0, transB: try int("transB", 0) != 0, alpha: try float("alpha", 1), beta: try float("beta", 1)),
          ins)
      case "Conv": return try conv()
      case "ScatterND": return try scatterND()
      case "Einsum": return try einsum()
      case "LayerNormalization":
        var ins = [try required(0), try required(1)]
        if let b = try sym(2) { ins.append(b) }
        guard try int("stash_type", 1) == 1 else { throw err("stash_type other than float is not supported") }
        return try emit(.layerNorm(axis: try axis(-1, rank: importer.type(ins[0]).rank), epsilon: try float("epsilon", 1e-5)), ins)
      case "BatchNormalization":
        // Running statistics are the model's state, not weights: gradients never reach them;
        // the training step updates them from each batch (the batch-norm-train pass).
        let ins = try (0..<5).map { try required($0) }
        let stored = [3, 4].map { i -> Bool in
          if case .value(let v) = ins[i] { return importer.graph.params.contains { $0.value == v } }
          return false
        }
        // Only a train-mode export: an eval-mode BatchNorm whose statistics were folded into
        // constants has running statistics the step must keep, and is refused below.
        let trainMode = try int("training_mode", 0) != 0 || importer.model.trainingBatchNorms.contains(node.name)
        if !stored.contains(true), trainMode {
          // No running statistics to keep (`track_running_stats=False`, or F.batch_norm on a
          // weight, as NF-ResNet's weight standardization calls it): the exporter passes
          // computed values, and the step normalizes with the batch's statistics, as PyTorch does.
          let x = ins[0], r = importer.type(x).rank
          guard r >= 2 else { throw err("expects an input of rank 2 or more, got \(importer.type(x))") }
          let normalized = try normalize(x, axes: [0] + Array(2..<r), epsilon: try float("epsilon", 1e-5))
          return try affine(normalized, scale: ins[1], bias: ins[2], rank: r)
        }
        if !stored.contains(true), !trainMode, case .value(let xv) = ins[0],
          ins[3...4].allSatisfy({ if case .value(let s) = $0 { return importer.computed(s, from: xv) } else { return false } })
        {
          // Statistics the graph computes from the normalized tensor itself (dynamo's
          // decomposition of a batch_norm without running statistics passes the batch's mean
          // and variance to an inference-mode node): the formula, in ops that have gradients,
          // through the statistics too. Statistics from anywhere else (running statistics
          // behind a Cast, say) would normalize as eval mode does, and are refused below.
          let x = ins[0], r = importer.type(x).rank
          guard r >= 2, importer.type(ins[3]).elementCount == importer.type(x).shape[1], importer.type(ins[4]).elementCount == importer.type(x).shape[1] else {
            throw err("mean \(importer.type(ins[3])) and variance \(importer.type(ins[4])) must have one value per channel of \(importer.type(x))")
          }
          let perChannel = [importer.type(x).shape[1]] + [Int](repeating: 1, count: r - 2)
          let centered = try emit(.sub, [x, try emit(.reshape(perChannel), [ins[3]])[0]])
          let epsilon = Sym.const(ConstTensor(dtype: importer.type(x).dtype, shape: [], floats: [try float("epsilon", 1e-5)]))
          let std = try emit(.unary(.sqrt), try emit(.add, [try emit(.reshape(perChannel), [ins[4]])[0], epsilon]))
          return try affine(try emit(.div, [centered[0], std[0]])[0], scale: ins[1], bias: ins[2], rank: r)
        }
        for (i, what) in [(3, "running mean"), (4, "running variance")] {
          guard case .value(let v) = ins[i], let k = importer.graph.params.firstIndex(where: { $0.value == v }) else {
            throw err("the \(what) must be a float initializer with one value per channel, got \(importer.type(ins[i]))")
          }
          importer.graph.params[k].trainable = false
          importer.roles[importer.graph.params[k].name] = (false, "BatchNorm \(what): state the training step updates in place")
        }
        if !trainMode {
          importer.notes.append(
            "BatchNorm '\(node.name)' was exported in eval mode; the training step uses each batch's statistics, as PyTorch's train() does")
        }
        return try emit(.batchNorm(epsilon: try float("epsilon", 1e-5), momentum: try float("momentum", 0.9)), ins)
      case "InstanceNormalization":
        // (x − mean) / √(var + ε) · scale + bias over the spatial axes of each sample and
        // channel (PyTorch exports GroupNorm through it), in ops that have gradients.
        let x = try required(0)
        let r = importer.type(x).rank
        guard r >= 3 else { throw err("expects an input of rank 3 or more, got \(importer.type(x))") }
        let normalized = try normalize(x, axes: Array(2..<r), epsilon: try float("epsilon", 1e-5))
        return try affine(normalized, scale: try required(1), bias: try required(2), rank: r)
      case "GroupNormalization":
        // The same over each group of channels and the spatial axes. Opset 18 gave scale and
        // bias one value per group, opset 21 one per channel: both are read.
        let x = try required(0)
        let t = importer.type(x), groups = try int("num_groups", 0)
        guard t.rank >= 3, groups >= 1, t.shape[1] % groups == 0 else {
          throw err("num_groups \(groups) does not divide the \(t.shape[1]) channels of \(t)")
        }
        let grouped = try emit(.reshape([t.shape[0], groups, t.elementCount / (t.shape[0] * groups)]), [x])
        let normalized = try emit(.reshape(t.shape), [try normalize(grouped[0], axes: [2], epsilon: try float("epsilon", 1e-5))])
        var scale = try required(1), bias = try required(2)
        if importer.type(scale).elementCount == groups && groups != t.shape[1] {
          let perChannel = [groups, t.shape[1] / groups]
          scale = try emit(.reshape([t.shape[1]]), try emit(.expand(perChannel), try emit(.reshape([groups, 1]), [scale])))[0]
          bias = try emit(.reshape([t.shape[1]]), try emit(.expand(perChannel), try emit(.reshape([groups, 1]), [bias])))[0]
        }
        return try affine(normalized[0], scale: scale, bias: bias, rank: t.rank)
      case "Gelu":
        let a = try string("approximate", "none")
        guard let g = GeluApproximation(rawValue: a) else { throw err("unknown approximate '\(a)'") }
        return try unary(.unary(.gelu(g)))
      case "HardSigmoid": return try unary(.unary(.hardSigmoid(alpha: try float("alpha", 0.2), beta: try float("beta", 0.5))))
      case "HardSwish": return try unary(.unary(.hardSwish))
      case "Clip":
        // Bounds are optional constant inputs (opset 11 on); a missing one does not clip.
        func bound(_ i: Int, _ what: String, _ none: Double) throws -> Double {
          guard let c = try const(i, what) else { return none }
          guard c.count == 1, let v = c.doubleValues.first else { throw err("\(what) must be a scalar") }
          return v
        }
        let big = Double(Float.greatestFiniteMagnitude)
        let lo = try bound(1, "min", -big), hi = try bound(2, "max", big)
        guard lo <= hi else { throw err("min \(lo) is above max \(hi)") }
        return try unary(.unary(.clip(min: lo, max: hi)))
      case "Softmax": return try unary(.softmax(axis: try axis(-1, rank: importer.type(try required(0)).rank)))
      case "Reshape":
        let x = try required(0)
        guard let shapeC = try const(1, "shape") else { throw err("missing shape") }
        var spec = shapeC.intValues
        if let rb = importer.rebatch, case .value(let v) = x, importer.fromInputs.contains(v) {
          // Data whose axis 0 is the batch, reshaped to a shape that starts with the exported batch.
          if importer.type(x).shape.first == rb.to, spec.first == rb.from {
            spec[0] = rb.to
            importer.rebatchedShapes += 1
          }
          // Per-sample reshapes keep the batch on axis 0; one that merges it into another axis
          // (Swin's windows, [B·nW, …]) cannot be re-batched by rewriting a constant.
          let target = try? reshapeTarget(importer.type(x).shape, spec, allowZero: try int("allowzero", 0) != 0)
          guard let target, importer.type(x).shape.first != rb.to || target.first == rb.to else {
            throw err(
              "reshape of \(importer.type(x)) to \(shapeC.intValues) does not keep the batch on axis 0, so sbpc cannot re-batch this export (made at batch \(rb.from)); export with a symbolic batch (models/export_for_training.py) or compile at --batch \(rb.from)"
            )
          }
          return try emit(.reshape(target), [x])
        }
        return try emit(.reshape(try reshapeTarget(importer.type(x).shape, spec, allowZero: try int("allowzero", 0) != 0)), [x])
      case "Flatten":
        let x = try required(0)
        let s = importer.type(x).shape
        guard let a = normalizeAxis(try int("axis", 1), rank: s.count + 1) else { throw err("axis out of range") }
        return try emit(.reshape([s[..<a].reduce(1, *), s[a...].reduce(1, *)]), [x])
      case "Transpose":
        let x = try required(0)
        let r = importer.type(x).rank
        return try emit(.transpose(try ints("perm") ?? Array((0..<r).reversed())), [x])
      case "Slice":
        let x = try required(0)
        guard let starts = try const(1, "starts")?.intValues, let ends = try const(2, "ends")?.intValues else {
          throw err("starts and ends must be given")
        }
        let axes = try const(3, "axes")?.intValues ?? Array(0..<starts.count)
        let steps = try const(4, "steps")?.intValues ?? [Int](repeating: 1, count: starts.count)
        let spec: SliceSpec
        do { spec = try SliceSpec(starts: starts, ends: ends, axes: axes, steps: steps).normalized(for: importer.type(x).shape) } catch let
          e as IRError
        { throw err(e.description) }
        return try emit(.slice(spec), [x])
      case "Gather":
        return try emit(.gather(axis: try axis(0, rank: importer.type(try required(0)).rank)), [try required(0), try required(1)])
      case "GatherND":
        // Dynamo writes `table[index]` as GatherND with index [..., k]. With constant indices
        // and no batch dims it is one Gather over the first k axes flattened.
        let data = try required(0)
        let shape = importer.type(data).shape
        guard try int("batch_dims", 0) == 0 else { throw err("batch_dims other than 0 is not supported") }
        guard let idx = try const(1, "indices"), let k = idx.shape.last, k >= 1, k <= shape.count else {
          throw err("indices must be a constant whose last axis indexes the data's leading axes")
        }
        var linear: [Int64] = []
        linear.reserveCapacity(idx.count / k)
        let raw = idx.intValues
        for row in stride(from: 0, to: raw.count, by: k) {
          var l = 0
          for j in 0..<k {
            var i = raw[row + j]
            if i < 0 { i += shape[j] }
            guard i >= 0, i < shape[j] else { throw err("index \(raw[row + j]) is out of range for axis \(j) of size \(shape[j])") }
            l = l * shape[j] + i
          }
          linear.append(Int64(l))
        }
        let rest = Array(shape[k...])
        let table = k == 1 ? data : try emit(.reshape([shape[..<k].reduce(1, *)] + rest), [data])[0]
        let indices = ConstTensor(dtype: .i64, shape: [linear.count], ints: linear)
        let gathered = try emit(.gather(axis: 0), [table, .const(indices)])[0]
        return try emit(.reshape(Array(idx.shape.dropLast()) + rest), [gathered])
      case "Concat":
        let ins = try (0..<node.inputs.count).compactMap { try sym($0) }
        guard let first = ins.first else { throw err("has no inputs") }
        return try emit(.concat(axis: try axis(0, rank: importer.type(first).rank)), ins)
      case "Split": return try split()
      case "SplitToSequence":
        // Dynamo writes torch.split as a sequence read back by SequenceAt: a Split whose
        // outputs the sequence holds.
        let x = try required(0)
        let shape = importer.type(x).shape
        let axis = try int("axis", 0)
        guard let a = normalizeAxis(axis, rank: shape.count) else { throw err("axis \(axis) out of range") }
        let sizes: [Int]
        if let c = try const(1, "split") {
          let v = c.intValues
          sizes = c.shape.isEmpty ? stride(from: 0, to: shape[a], by: max(v[0], 1)).map { min(v[0], shape[a] - $0) } : v
        } else {
          sizes = [Int](repeating: 1, count: shape[a])
        }
        var parts = try emit(.split(axis: a, sizes: sizes), [x])
        if try const(1, "split") == nil, try int("keepdims", 1) == 0 { parts = try parts.map { try emit(.squeeze([a]), [$0])[0] } }
        importer.sequences[node.outputs[0]] = parts
        return []
      case "SequenceAt":
        guard let seq = importer.sequences[node.inputs.first ?? ""] else { throw err("reads '\(node.inputs.first ?? "")', which is not a sequence sbpc made") }
        guard let p = try const(1, "position")?.intValues.first else { throw err("position must be a constant") }
        let i = p < 0 ? p + seq.count : p
        guard i >= 0, i < seq.count else { throw err("position \(p) is outside the sequence of \(seq.count)") }
        return [seq[i]]
      case "Squeeze":
        let x = try required(0)
        let s = importer.type(x).shape
        let ax = try axes(input: 1) ?? s.indices.filter { s[$0] == 1 }
        return try emit(.squeeze(ax.map { $0 < 0 ? $0 + s.count : $0 }), [x])
      case "Unsqueeze":
        let x = try required(0)
        guard let ax = try axes(input: 1) else { throw err("axes must be given") }
        let r = importer.type(x).rank + ax.count
        return try emit(.unsqueeze(ax.map { $0 < 0 ? $0 + r : $0 }.sorted()), [x])
      case "Expand", "Tile":
        let x = try required(0)
        guard var shape = try const(1, node.opType == "Tile" ? "repeats" : "shape")?.intValues else {
          throw err("\(node.opType == "Tile" ? "repeats" : "shape") must be given")
        }
        if node.opType == "Tile" {
          // Repeating axes of size 1 (a position embedding tiled over the batch) is a
          // broadcast; repeating longer axes would need an op of its own.
          let inShape = importer.type(x).shape
          guard shape.count == inShape.count else { throw err("repeats has \(shape.count) entries for a rank-\(inShape.count) input") }
          if let axis = inShape.indices.first(where: { shape[$0] != 1 && inShape[$0] != 1 }) {
            throw err("repeats axis \(axis) of size \(inShape[axis]) \(shape[axis]) times; sbpc supports Tile only along axes of size 1")
          }
          shape = zip(inShape, shape).map { $0 * $1 }
        }
        // A folded `cls_token.expand(batch, -1, -1)`: the exported batch as a constant.
        if let rb = importer.rebatch, shape.first == rb.from, shape.count == importer.type(x).rank,
          let d0 = importer.type(x).shape.first, d0 == 1 || d0 == rb.from
        {
          shape[0] = rb.to
          importer.rebatchedShapes += 1
        }
        return try emit(.expand(shape), [x])
      case "ReduceMean", "ReduceSum", "ReduceL2":
        let x = try required(0)
        let fromInput = node.opType == "ReduceSum" ? opset >= 13 : opset >= 18
        var ax = (fromInput ? try const(1, "axes")?.intValues : try ints("axes")) ?? []
        let r = importer.type(x).rank
        let noop = try int("noop_with_empty_axes", 0) != 0
        if ax.isEmpty && noop { return [x] }
        ax = ax.map { $0 < 0 ? $0 + r : $0 }.sorted()
        if ax.isEmpty { ax = Array(0..<r) }
        let keep = try int("keepdims", 1) != 0
        switch node.opType {
        case "ReduceMean": return try emit(.reduceMean(axes: ax, keepDims: keep), [x])
        case "ReduceSum": return try emit(.reduceSum(axes: ax, keepDims: keep), [x])
        default:
          // ReduceL2 (ConvNeXt-V2's GRN) is √Σx², in ops that have gradients: the norm trains.
          let sq = try emit(.mul, [x, x])
          return try emit(.unary(.sqrt), try emit(.reduceSum(axes: ax, keepDims: keep), sq))
        }
      case "ReduceMax", "ReduceMin": return try reduceExtreme(min: node.opType == "ReduceMin")
      case "Resize": return try resize()
      case "LSTM": return try lstm()
      case "GlobalAveragePool": return try unary(.globalAveragePool)
      case "MaxPool", "AveragePool", "GlobalMaxPool": return try pool()
      case "Pad":
        let x = try required(0)
        let r = importer.type(x).rank
        guard let given = try const(1, "pads")?.intValues else { throw err("missing pads") }
        // Opset 18's axes name the padded axes; without them pads cover every axis.
        var pads = [Int](repeating: 0, count: 2 * r)
        if let axes = try const(3, "axes")?.intValues {
          guard given.count == 2 * axes.count else { throw err("\(given.count) pads for \(axes.count) axes") }
          for (k, a) in axes.enumerated() {
            guard let n = normalizeAxis(a, rank: r) else { throw err("axis \(a) out of range for rank \(r)") }
            (pads[n], pads[n + r]) = (given[k], given[k + axes.count])
          }
        } else {
          guard given.count == 2 * r else { throw err("\(given.count) pads for rank \(r)") }
          pads = given
        }
        let m = try string("mode", "constant")
        guard let mode = PadMode(rawValue: m) else { throw err("mode '\(m)' is not supported (constant, reflect or edge)") }
        let value = try const(2, "constant_value")?.doubleValues.first ?? 0
        return try emit(.pad(pads: pads, mode: mode, value: value), [x])
      default:
        throw err("unsupported op '\(node.opType)'")
      }
    }

    mutating func castTo(_ d: DType) throws -> [Sym] {
      let x = try required(0)
      if importer.type(x).dtype == d { return [x] }
      return try emit(.cast(d), [x])
    }

    func constantValue() throws -> ConstTensor {
      if case .tensor(let t)? = node.attrs["value"] {
        var imp = importer
        let (ty, b) = try imp.tensorData(t, "Constant value")
        guard ty.elementCount <= maxFoldElements, let c = ConstTensor.decode(ty.dtype, shape: ty.shape, bytes: b.buffer) else {
          throw err("constant of \(ty) is too large")
        }
        return c
      }
      switch node.attrs["value_float"] ?? node.attrs["value_int"] ?? node.attrs["value_floats"] ?? node.attrs["value_ints"] {
      case .float(let v)?: return ConstTensor(dtype: .f32, shape: [], floats: [v])
      case .int(let v)?: return ConstTensor(dtype: .i64, shape: [], ints: [Int64(v)])
      case .floats(let v)?: return ConstTensor(dtype: .f32, shape: [v.count], floats: v)
      case .ints(let v)?: return .i64(v)
      default: throw err("Constant has no supported value attribute")
      }
    }

    func reshapeTarget(_ inShape: [Int], _ spec: [Int], allowZero: Bool) throws -> [Int] {
      var out = spec
      for i in out.indices where out[i] == 0 && !allowZero {
        guard i < inShape.count else { throw err("shape \(spec) copies dimension \(i), which \(inShape) lacks") }
        out[i] = inShape[i]
      }
      let total = inShape.reduce(1, *)
      let minus = out.indices.filter { out[$0] == -1 }
      guard minus.count <= 1, out.allSatisfy({ $0 >= -1 }) else { throw err("bad reshape target \(spec)") }
      if let m = minus.first {
        guard let known = checkedElementCount(out.enumerated().filter { $0.offset != m }.map(\.element)), known > 0, total % known == 0
        else { throw err("cannot reshape \(inShape) to \(spec)") }
        out[m] = total / known
      }
      guard checkedElementCount(out) == total else { throw err("cannot reshape \(inShape) to \(spec)") }
      return out
    }

    mutating func conv() throws -> [Sym] {
      let x = try required(0), w = try required(1)
      let xs = importer.type(x).shape, ws = importer.type(w).shape
      let sp = max(xs.count - 2, 0)
      guard ws.count == xs.count else { throw err("input \(xs) and weight \(ws) differ in rank") }
      let kernel = try ints("kernel_shape") ?? Array(ws.dropFirst(2))
      let strides = try ints("strides") ?? [Int](repeating: 1, count: sp)
      let dil = try ints("dilations") ?? [Int](repeating: 1, count: sp)
      var pads = try ints("pads") ?? [Int](repeating: 0, count: 2 * sp)
      guard kernel.count == sp, strides.count == sp, dil.count == sp, pads.count == 2 * sp else {
        throw err("attributes do not match \(sp) spatial dimensions")
      }
      let limit = 1 << 20
      guard (strides + dil).allSatisfy({ (1...limit).contains($0) }), kernel.allSatisfy({ (0...limit).contains($0) }) else {
        throw err("strides, dilations and kernel_shape must be in 1...\(limit)")
      }
      pads = try autoPads(Array(xs.dropFirst(2)), kernel: kernel, strides: strides, dilations: dil, pads: pads)
      let bias = try sym(2), group = try int("group", 1)
      switch sp {
      case 2:
        return try emit(.conv(ConvGeometry(strides: strides, pads: pads, dilations: dil, group: group)), [x, w] + (bias.map { [$0] } ?? []))
      case 1:
        // A 1-D convolution (ECA's channel attention) is a 2-D one over a 1×L grid, which the
        // runtime and the gradient rules already have.
        let x2 = try emit(.unsqueeze([2]), [x])[0], w2 = try emit(.unsqueeze([2]), [w])[0]
        let g = ConvGeometry(strides: [1] + strides, pads: [0, pads[0], 0, pads[1]], dilations: [1] + dil, group: group)
        return try emit(.squeeze([2]), try emit(.conv(g), [x2, w2] + (bias.map { [$0] } ?? [])))
      case 3:
        // A 3-D convolution with a kernel-1 axis that it neither strides, dilates nor pads
        // (the lambda layer's position lambdas) is a 2-D one per slice along that axis: the
        // axis joins the batch.
        guard let t = (0..<3).first(where: { kernel[$0] == 1 && strides[$0] == 1 && dil[$0] == 1 && pads[$0] == 0 && pads[$0 + 3] == 0 })
        else {
          throw err("3-D convolution with kernel \(kernel) is not supported: the runtime runs 1-D and 2-D convolutions, and 3-D ones with a kernel-1 axis")
        }
        let keep = (0..<3).filter { $0 != t }
        let n = xs[0], d = xs[2 + t]
        let moved = try emit(.transpose([0, 2 + t, 1] + keep.map { 2 + $0 }), [x])
        let merged = try emit(.reshape([n * d, xs[1]] + keep.map { xs[2 + $0] }), moved)
        let w2 = try emit(.squeeze([2 + t]), [w])[0]
        let g = ConvGeometry(strides: keep.map { strides[$0] }, pads: keep.map { pads[$0] } + keep.map { pads[$0 + 3] },
          dilations: keep.map { dil[$0] }, group: group)
        let y = try emit(.conv(g), merged + [w2] + (bias.map { [$0] } ?? []))
        let ys = importer.type(y[0]).shape
        let split = try emit(.reshape([n, d] + ys.dropFirst()), y)
        // [N, D, O, a, b] back to [N, O, …] with D at spatial position t.
        var perm = [0, 2]
        var rest = [3, 4]
        for i in 0..<3 { perm.append(i == t ? 1 : rest.removeFirst()) }
        return try emit(.transpose(perm), split)
      default:
        throw err("\(sp)-D convolution is not supported: the runtime runs 1-D and 2-D convolutions")
      }
    }

    /// ScatterND into a computed tensor, for `scatterND`: indices must be constant.
    mutating func scatterComputed(_ reduction: String) throws -> [Sym] {
      let data = try required(0), upd = try required(2)
      let idx: ConstTensor
      if case .value(let v) = try required(1) {
        // A slice assignment over a large tensor (MViTv2's at 224 px) spells out every index,
        // past what folds as the graph is read: they are computed here, once.
        let limit = 1 << 27
        guard let c = importer.deferredValue(v, limit: limit) else {
          throw err(
            importer.graph.type(of: v).elementCount > limit
              ? "its indices (\(importer.graph.type(of: v))) are too many to compute at import (over \(limit) elements); sbpc scatters only with constant indices"
              : "indices must be constant; sbpc needs a static scatter")
        }
        idx = c
      } else {
        guard let c = try const(1, "indices") else { throw err("indices must be given") }
        idx = c
      }
      guard reduction == "none" else { throw err("reduction '\(reduction)' into a computed tensor is not supported") }
      let t = importer.type(data), ut = importer.type(upd)
      guard t.dtype.isFloat, ut.dtype == t.dtype else { throw err("data \(t) and updates \(ut) must be floating and of one type") }
      guard let k = idx.shape.last, k >= 1, k <= t.rank else { throw err("indices \(idx.shape) must end in an axis of 1...\(t.rank) (the data's rank)") }
      if let rb = importer.rebatch, case .value(let v) = data, importer.fromInputs.contains(v) {
        // The indices were computed at the exported batch and index the batch axis.
        throw err(
          "a scatter into data of the batch, with indices made at batch \(rb.from), cannot be re-batched; export with a symbolic batch (models/export_for_training.py) or compile at --batch \(rb.from)"
        )
      }
      let slots = t.shape[..<k].reduce(1, *), inner = t.shape[k...].reduce(1, *), rows = idx.count / k
      guard ut.shape == Array(idx.shape.dropLast()) + Array(t.shape[k...]) else {
        throw err("updates \(ut) do not match indices \(idx.shape) into data \(t)")
      }
      // writer[slot]: the update row that lands there (the last one, as ONNX's reference
      // applies them in order), or `rows` where none does.
      var writer = [Int](repeating: rows, count: slots)
      let raw = idx.intValues
      for r in 0..<rows {
        var at = 0
        for j in 0..<k {
          var i = raw[r * k + j]
          if i < 0 { i += t.shape[j] }
          guard i >= 0, i < t.shape[j] else { throw err("index \(raw[r * k + j]) is out of range for axis \(j) of size \(t.shape[j])") }
          at = at * t.shape[j] + i
        }
        writer[at] = r
      }
      if writer == Array(0..<slots) { return try emit(.reshape(t.shape), [upd]) }
      let covered = !writer.contains(rows)
      var table = try emit(.reshape([rows, inner]), [upd])[0]
      if !covered {
        table = try emit(.concat(axis: 0), [table, .const(ConstTensor(dtype: t.dtype, shape: [1, inner], floats: [Double](repeating: 0, count: inner)))])[0]
      }
      let placed = try emit(.reshape(t.shape), try emit(.gather(axis: 0), [table, .const(.i64(writer))]))[0]
      if covered { return [placed] }
      let keep = ConstTensor(dtype: t.dtype, shape: Array(t.shape[..<k]) + [Int](repeating: 1, count: t.rank - k), floats: writer.map { $0 == rows ? 1 : 0 })
      return try emit(.add, [try emit(.mul, [data, .const(keep)])[0], placed])
    }

    /// Einsum as the ops it is made of: each operand's labels that no one else reads are summed
    /// out, then operands are contracted pairwise, left to right, as one batched matmul each
    /// (batch labels, then the free labels of each side, with the contracted ones between),
    /// and the result is transposed to the output's order. Diagonals (a label twice in one
    /// operand) are refused.
    mutating func einsum() throws -> [Sym] {
      let equation = try string("equation", "").filter { !$0.isWhitespace }
      let sides = equation.components(separatedBy: "->")
      guard !equation.isEmpty, sides.count <= 2 else { throw err("malformed equation '\(equation)'") }
      let specs = sides[0].components(separatedBy: ",")
      let ins = try (0..<node.inputs.count).compactMap { try sym($0) }
      guard specs.count == ins.count, !ins.isEmpty else {
        throw err("equation '\(equation)' names \(specs.count) operands, the node has \(ins.count)")
      }
      // Labels are Characters; "..." becomes as many private labels as it covers, right-aligned.
      let ellipsisLabels = (0..<16).map { Character(UnicodeScalar(0xE000 + $0)!) }
      var ellipsisRank = 0
      var ops: [(sym: Sym, labels: [Character])] = []
      for (spec, x) in zip(specs, ins) {
        let shape = importer.type(x).shape
        let named = spec.replacingOccurrences(of: "...", with: "")
        guard named.allSatisfy({ $0.isASCII && $0.isLetter }), spec.components(separatedBy: "...").count <= 2 else {
          throw err("malformed operand '\(spec)' in '\(equation)'")
        }
        let e = spec.contains("...") ? shape.count - named.count : 0
        guard e >= 0, e <= ellipsisLabels.count, spec.contains("...") || named.count == shape.count else {
          throw err("operand '\(spec)' does not match its rank-\(shape.count) input")
        }
        ellipsisRank = max(ellipsisRank, e)
        let parts = spec.components(separatedBy: "...")
        let labels = Array(parts[0]) + (parts.count > 1 ? Array(ellipsisLabels[(ellipsisLabels.count - e)...]) + Array(parts[1]) : [])
        guard Set(labels).count == labels.count else { throw err("operand '\(spec)' repeats a label (a diagonal); sbpc does not support it") }
        ops.append((x, labels))
      }
      let dots = Array(ellipsisLabels[(ellipsisLabels.count - ellipsisRank)...])
      let output: [Character]
      if sides.count == 2 {
        let parts = sides[1].components(separatedBy: "...")
        guard parts.count <= 2, parts.joined().allSatisfy({ $0.isASCII && $0.isLetter }) else { throw err("malformed output '\(sides[1])' in '\(equation)'") }
        output = Array(parts[0]) + (parts.count > 1 ? dots + Array(parts[1]) : [])
      } else {
        var counts: [Character: Int] = [:]
        for o in ops { for l in o.labels where !dots.contains(l) { counts[l, default: 0] += 1 } }
        output = dots + counts.filter { $0.value == 1 }.keys.sorted()
      }
      guard Set(output).count == output.count, output.allSatisfy({ l in ops.contains { $0.labels.contains(l) } }) else {
        throw err("output '\(sides.count == 2 ? sides[1] : "")' names a label twice or one no operand has")
      }
      // One size per label; a size-1 axis broadcasts.
      var size: [Character: Int] = [:]
      for o in ops {
        for (l, n) in zip(o.labels, importer.type(o.sym).shape) {
          if let m = size[l], m != n, m != 1, n != 1 { throw err("label '\(l)' has sizes \(m) and \(n)") }
          size[l] = max(size[l] ?? 1, n)
        }
      }
      // Sum out the labels `o` alone has that `keep` does not want.
      func reduce(_ o: (sym: Sym, labels: [Character]), keep: Set<Character>) throws -> (sym: Sym, labels: [Character]) {
        let gone = o.labels.indices.filter { !keep.contains(o.labels[$0]) }
        guard !gone.isEmpty else { return o }
        return (try emit(.reduceSum(axes: gone, keepDims: false), [o.sym])[0], o.labels.enumerated().filter { !gone.contains($0.offset) }.map(\.element))
      }
      // `o` with its axes in `order` (a permutation of its labels), broadcast to full sizes.
      func arrange(_ o: (sym: Sym, labels: [Character]), _ order: [Character]) throws -> Sym {
        var x = o.sym
        let perm = order.map { o.labels.firstIndex(of: $0)! }
        if perm != Array(perm.indices) { x = try emit(.transpose(perm), [x])[0] }
        let full = order.map { size[$0]! }
        if importer.type(x).shape != full { x = try emit(.expand(full), [x])[0] }
        return x
      }
      func reshaped(_ x: Sym, _ shape: [Int]) throws -> Sym {
        importer.type(x).shape == shape ? x : try emit(.reshape(shape), [x])[0]
      }
      var acc = try reduce(ops[0], keep: Set(output).union(ops.dropFirst().flatMap(\.labels)))
      for i in 1..<max(ops.count, 1) {
        let later = Set(output).union(ops.dropFirst(i + 1).flatMap(\.labels))
        let a = acc, b = try reduce(ops[i], keep: later.union(acc.labels))
        let shared = a.labels.filter { b.labels.contains($0) }
        let batch = shared.filter { later.contains($0) }, contracted = shared.filter { !later.contains($0) }
        let aFree = a.labels.filter { !shared.contains($0) }, bFree = b.labels.filter { !shared.contains($0) }
        let count = { (ls: [Character]) in ls.reduce(1) { $0 * size[$1]! } }
        let bt = count(batch), m = count(aFree), k = count(contracted), n = count(bFree)
        let lhs = try reshaped(try arrange(a, batch + aFree + contracted), [bt, m, k])
        let rhs = try reshaped(try arrange(b, batch + contracted + bFree), [bt, k, n])
        let product = try emit(.matMul, [lhs, rhs])[0]
        acc = (try reshaped(product, (batch + aFree + bFree).map { size[$0]! }), batch + aFree + bFree)
      }
      acc = try reduce(acc, keep: Set(output))
      return [try arrange(acc, output)]
    }

    /// ScatterND. On constants (ConViT's relative indices, built from shapes and written
    /// element by element) it folds here. With constant indices into a computed tensor (a
    /// slice assignment, MViTv2's `attn[..., s:, s:] = …`) it is a gather of the updates
    /// into place, plus the data where nothing is written: ops that have gradients.
    mutating func scatterND() throws -> [Sym] {
      let reduction = try string("reduction", "none")
      guard ["none", "add", "mul", "max", "min"].contains(reduction) else { throw err("unknown reduction '\(reduction)'") }
      guard case .const = try required(0), case .const = try required(2) else { return try scatterComputed(reduction) }
      guard let data = try const(0, "data"), let idx = try const(1, "indices"), let upd = try const(2, "updates") else {
        throw err("data, indices and updates must be given")
      }
      guard let k = idx.shape.last, k >= 1, k <= data.shape.count else {
        throw err("indices \(idx.shape) must end in an axis of 1...\(data.shape.count) (the data's rank)")
      }
      let slice = Array(data.shape[k...]), inner = slice.reduce(1, *)
      guard upd.shape == Array(idx.shape.dropLast()) + slice, upd.dtype == data.dtype else {
        throw err("updates \(upd.type) do not match indices \(idx.shape) into data \(data.type)")
      }
      var out = data.doubleValues
      let u = upd.doubleValues, raw = idx.intValues
      for (row, start) in stride(from: 0, to: raw.count, by: k).enumerated() {
        var at = 0
        for j in 0..<k {
          var i = raw[start + j]
          if i < 0 { i += data.shape[j] }
          guard i >= 0, i < data.shape[j] else { throw err("index \(raw[start + j]) is out of range for axis \(j) of size \(data.shape[j])") }
          at = at * data.shape[j] + i
        }
        for e in 0..<inner {
          let o = at * inner + e, v = u[row * inner + e]
          switch reduction {
          case "add": out[o] += v
          case "mul": out[o] *= v
          case "max": out[o] = max(out[o], v)
          case "min": out[o] = min(out[o], v)
          default: out[o] = v
          }
        }
      }
      return [.const(data.dtype.isFloat ? ConstTensor(dtype: data.dtype, shape: data.shape, floats: out)
        : ConstTensor(dtype: data.dtype, shape: data.shape, ints: out.map { Int64($0) }))]
    }

    /// The pads `auto_pad` asks for (NOTSET keeps `pads`; VALID is none; SAME_UPPER and
    /// SAME_LOWER put the odd one after or before), for convolution and pooling alike.
    func autoPads(_ spatial: [Int], kernel: [Int], strides: [Int], dilations dil: [Int], pads: [Int]) throws -> [Int] {
      let sp = spatial.count
      var pads = pads
      switch try string("auto_pad", "NOTSET") {
      case "NOTSET": break
      case "VALID": pads = [Int](repeating: 0, count: 2 * sp)
      case let mode where mode == "SAME_UPPER" || mode == "SAME_LOWER":
        for i in 0..<sp {
          let out = (spatial[i] + strides[i] - 1) / strides[i]
          let total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1 - spatial[i])
          let small = total / 2, big = total - small
          pads[i] = mode == "SAME_UPPER" ? small : big
          pads[i + sp] = mode == "SAME_UPPER" ? big : small
        }
      case let mode: throw err("unsupported auto_pad '\(mode)'")
      }
      return pads
    }

    /// (x − mean) / √(var + ε) over `axes` (kept), for the norms lowered at import.
    mutating func normalize(_ x: Sym, axes: [Int], epsilon eps: Double) throws -> Sym {
      let mean = try emit(.reduceMean(axes: axes, keepDims: true), [x])
      let d = try emit(.sub, [x, mean[0]])
      let variance = try emit(.reduceMean(axes: axes, keepDims: true), try emit(.mul, [d[0], d[0]]))
      let epsilon = Sym.const(ConstTensor(dtype: importer.type(x).dtype, shape: [], floats: [eps]))
      let std = try emit(.unary(.sqrt), try emit(.add, [variance[0], epsilon]))
      return try emit(.div, [d[0], std[0]])[0]
    }

    /// y · scale + bias with one scale and bias per channel (axis 1) of a rank-`rank` y.
    mutating func affine(_ y: Sym, scale: Sym, bias: Sym, rank: Int) throws -> [Sym] {
      let channels = [importer.type(y).shape[1]] + [Int](repeating: 1, count: rank - 2)
      guard importer.type(scale).elementCount == channels[0], importer.type(bias).elementCount == channels[0] else {
        throw err("scale \(importer.type(scale)) and bias \(importer.type(bias)) must have one value per channel (\(channels[0]))")
      }
      let scaled = try emit(.mul, [y, try emit(.reshape(channels), [scale])[0]])
      return try emit(.add, [scaled[0], try emit(.reshape(channels), [bias])[0]])
    }

    /// ReduceMax and ReduceMin as one max pool over the reduced axes, moved last and merged:
    /// its gradient goes to the first maximal element, as the max pool's does (Hiera's max
    /// over its query-pooling stride). ReduceMin is −max(−x).
    /// LSTM unrolled over its (static) sequence into the ops it is made of, so autodiff, the
    /// planner and the runtime need nothing new: one product for every step's input gates,
    /// then per step h·Rᵀ, the iofc gates (σ, σ, σ, tanh), c = f·c + i·c̃ and h = o·tanh(c).
    /// The spec's defaults only: no peepholes, clip, coupled input-forget gate, other
    /// activations or ragged sequence lengths, each refused by name.
    mutating func lstm() throws -> [Sym] {
      for k in ["activations", "activation_alpha", "activation_beta", "clip"] where node.attrs[k] != nil {
        throw err("attribute '\(k)' is not supported (sbpc unrolls the default sigmoid/tanh LSTM without clipping)")
      }
      guard try int("input_forget", 0) == 0 else { throw err("input_forget = 1 is not supported") }
      guard try sym(7) == nil else { throw err("peephole weights (input P) are not supported") }
      let layout = try int("layout", 0)
      guard layout == 0 || layout == 1 else { throw err("layout \(layout) is not 0 or 1") }
      var x = try required(0)
      let xt = importer.type(x)
      guard xt.rank == 3, xt.dtype.isFloat else { throw err("input X must be a float tensor of rank 3, got \(xt)") }
      if layout == 1 { x = try emit(.transpose([1, 0, 2]), [x])[0] }
      let (steps, batch, inputSize) = (importer.type(x).shape[0], importer.type(x).shape[1], importer.type(x).shape[2])
      let hidden = try int("hidden_size", 0)
      let direction = try string("direction", "forward")
      let directions: [Bool]  // reversed?
      switch direction {
      case "forward": directions = [false]
      case "reverse": directions = [true]
      case "bidirectional": directions = [false, true]
      default: throw err("direction '\(direction)' is not forward, reverse or bidirectional")
      }
      let d = directions.count
      let w = try required(1), r = try required(2)
      guard hidden > 0, importer.type(w).shape == [d, 4 * hidden, inputSize], importer.type(r).shape == [d, 4 * hidden, hidden] else {
        throw err("W \(importer.type(w)) and R \(importer.type(r)) do not fit hidden_size \(hidden), \(d) direction(s) and \(inputSize) inputs")
      }
      if let lens = try sym(4) {
        guard case .const(let c) = lens, c.intValues.allSatisfy({ $0 == steps }) else {
          throw err("sequence_lens must be constant and equal to the \(steps) steps (ragged sequences are not supported)")
        }
      }
      let bias = try sym(3)
      if let bias, importer.type(bias).shape != [d, 8 * hidden] { throw err("B \(importer.type(bias)) is not [\(d), \(8 * hidden)]") }
      // Initial states, direction-major (layout 1 gives them batch-major).
      var initial: [Sym?] = []
      for (i, what) in [(5, "initial_h"), (6, "initial_c")] {
        guard var v = try sym(i) else {
          initial.append(nil)
          continue
        }
        let want = layout == 1 ? [batch, d, hidden] : [d, batch, hidden]
        guard importer.type(v).shape == want else { throw err("\(what) \(importer.type(v)) is not \(want)") }
        if layout == 1 { v = try emit(.transpose([1, 0, 2]), [v])[0] }
        initial.append(v)
      }
      let zeros = Sym.const(ConstTensor(dtype: xt.dtype, shape: [batch, hidden], floats: [Double](repeating: 0, count: batch * hidden)))
      func part(_ v: Sym, _ k: Int, _ shape: [Int]) throws -> Sym {
        let s = try emit(.slice(SliceSpec(starts: [k], ends: [k + 1], axes: [0], steps: [1])), [v])[0]
        return try emit(.reshape(shape), [s])[0]
      }
      var ys: [Sym] = [], hs: [Sym] = [], cs: [Sym] = []
      for (k, reversed) in directions.enumerated() {
        let wk = try emit(.transpose([1, 0]), [try part(w, k, [4 * hidden, inputSize])])[0]
        let rk = try emit(.transpose([1, 0]), [try part(r, k, [4 * hidden, hidden])])[0]
        // Every step's input gates in one product: [T, B, I]·[I, 4H], plus both biases.
        var gatesIn = try emit(.matMul, [x, wk])[0]
        if let bias {
          let b = try part(bias, k, [8 * hidden])
          let halves = try emit(.split(axis: 0, sizes: [4 * hidden, 4 * hidden]), [b])
          gatesIn = try emit(.add, [gatesIn, try emit(.add, [halves[0], halves[1]])[0]])[0]
        }
        let perStep = steps == 1 ? [gatesIn] : try emit(.split(axis: 0, sizes: [Int](repeating: 1, count: steps)), [gatesIn])
        var h = try initial[0].map { try part($0, k, [batch, hidden]) } ?? zeros
        var c = try initial[1].map { try part($0, k, [batch, hidden]) } ?? zeros
        var out = [Sym?](repeating: nil, count: steps)
        for t in reversed ? Array((0..<steps).reversed()) : Array(0..<steps) {
          let g0 = try emit(.reshape([batch, 4 * hidden]), [perStep[t]])[0]
          let g = try emit(.add, [g0, try emit(.matMul, [h, rk])[0]])[0]
          let q = try emit(.split(axis: 1, sizes: [hidden, hidden, hidden, hidden]), [g])
          let (i, o, f) = (try unary(.sigmoid, q[0]), try unary(.sigmoid, q[1]), try unary(.sigmoid, q[2]))
          let cand = try unary(.tanh, q[3])
          c = try emit(.add, [try emit(.mul, [f, c])[0], try emit(.mul, [i, cand])[0]])[0]
          h = try emit(.mul, [o, try unary(.tanh, c)])[0]
          out[t] = try emit(.reshape([1, 1, batch, hidden]), [h])[0]
        }
        ys.append(steps == 1 ? out[0]! : try emit(.concat(axis: 0), out.map { $0! })[0])
        hs.append(try emit(.reshape([1, batch, hidden]), [h])[0])
        cs.append(try emit(.reshape([1, batch, hidden]), [c])[0])
      }
      func joined(_ v: [Sym], axis: Int) throws -> Sym { v.count == 1 ? v[0] : try emit(.concat(axis: axis), v)[0] }
      var y = try joined(ys, axis: 1)
      if layout == 1 { y = try emit(.transpose([2, 0, 1, 3]), [y])[0] }
      var yh = try joined(hs, axis: 0), yc = try joined(cs, axis: 0)
      if layout == 1 {
        yh = try emit(.transpose([1, 0, 2]), [yh])[0]
        yc = try emit(.transpose([1, 0, 2]), [yc])[0]
      }
      return [y, yh, yc]
    }

    mutating func unary(_ u: Unary, _ x: Sym) throws -> Sym { try emit(.unary(u), [x])[0] }

    mutating func reduceExtreme(min: Bool) throws -> [Sym] {
      var x = try required(0)
      let s = importer.type(x).shape, r = s.count
      guard importer.type(x).dtype.isFloat else { throw err("input must be floating, got \(importer.type(x).dtype)") }
      let opset = importer.opset
      var ax = (opset >= 18 ? try const(1, "axes")?.intValues : try ints("axes")) ?? []
      if ax.isEmpty, try int("noop_with_empty_axes", 0) != 0 { return [x] }
      ax = try ax.map { a -> Int in
        guard let n = normalizeAxis(a, rank: r) else { throw err("axis \(a) out of range for rank \(r)") }
        return n
      }
      ax = Array(Set(ax.isEmpty ? Array(0..<r) : ax)).sorted()
      let keep = try int("keepdims", 1) != 0
      let others: [Int] = (0..<r).filter { !ax.contains($0) }
      let outer = others.reduce(1) { $0 * s[$1] }, k = ax.reduce(1) { $0 * s[$1] }
      if min { x = try emit(.unary(.neg), [x])[0] }
      let order: [Int] = others + ax
      if order != Array(0..<r) { x = try emit(.transpose(order), [x])[0] }
      x = try emit(.reshape([outer, 1, k, 1]), [x])[0]
      x = try emit(.maxPool(PoolGeometry(kernel: [k, 1], strides: [k, 1], pads: [0, 0, 0, 0], dilations: [1, 1], ceilMode: false)), [x])[0]
      let shape = keep ? (0..<r).map { ax.contains($0) ? 1 : s[$0] } : others.map { s[$0] }
      x = try emit(.reshape(shape), [x])[0]
      return min ? try emit(.unary(.neg), [x]) : [x]
    }

    /// Resize as one constant interpolation matrix per resized axis, applied by a product:
    /// y = M_h · x · M_wᵀ for an image. Every mode of ONNX's (nearest, linear, cubic) is a
    /// linear map along each axis, so its gradient is the product's; the matrices follow the
    /// spec and onnxruntime (`ok_resize.onnx` checks them). A dense matrix costs `in`
    /// multiply-adds per output where the interpolation needs 2 or 4, which the small
    /// upsampled maps of HRNet and GhostNetV2 afford.
    mutating func resize() throws -> [Sym] {
      var x = try required(0)
      let s = importer.type(x).shape, r = s.count
      guard importer.type(x).dtype.isFloat else { throw err("input must be floating, got \(importer.type(x).dtype)") }
      let mode = try string("mode", "nearest")
      guard ["nearest", "linear", "cubic"].contains(mode) else { throw err("mode '\(mode)' is not supported") }
      let transform = try string("coordinate_transformation_mode", "half_pixel")
      guard ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"].contains(transform) else {
        throw err("coordinate_transformation_mode '\(transform)' is not supported")
      }
      let antialias = try int("antialias", 0) != 0
      guard !antialias || mode != "nearest" else { throw err("antialias with mode 'nearest' is not supported") }
      // Taps past the ends: read the edge, or (exclude_outside) dropped, the rest renormalized.
      let excludeOutside = try int("exclude_outside", 0) != 0
      guard try ints("axes") == nil else { throw err("the axes attribute is not supported") }
      let nearestMode = try string("nearest_mode", "round_prefer_floor")
      guard ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"].contains(nearestMode) else {
        throw err("nearest_mode '\(nearestMode)' is not supported")
      }
      let cubicA = try float("cubic_coeff_a", -0.75)
      // Opset 10 has (X, scales); 11 and later (X, roi, scales, sizes).
      let opset = importer.opset
      let sizes = opset >= 11 ? try const(3, "sizes")?.intValues : nil
      let scales = try const(opset >= 11 ? 2 : 1, "scales")?.doubleValues
      var out = s
      var scale = [Double](repeating: 1, count: r)
      if let sizes, !sizes.isEmpty {
        guard sizes.count == r, sizes.allSatisfy({ $0 > 0 }) else { throw err("sizes must have \(r) positive entries, got \(sizes)") }
        guard try string("keep_aspect_ratio_policy", "stretch") == "stretch" else { throw err("keep_aspect_ratio_policy is not supported") }
        out = sizes
        scale = (0..<r).map { Double(sizes[$0]) / Double(s[$0]) }
      } else if let scales, !scales.isEmpty {
        guard scales.count == r, scales.allSatisfy({ $0 > 0 && $0.isFinite }) else { throw err("scales must have \(r) positive entries, got \(scales)") }
        scale = scales
        out = (0..<r).map { Int((Double(s[$0]) * scales[$0]).rounded(.down)) }
        guard out.allSatisfy({ $0 > 0 }) else { throw err("scales \(scales) make an empty output") }
      } else {
        throw err("scales or sizes must be given as constants")
      }
      guard (0..<Swift.max(r - 2, 0)).allSatisfy({ out[$0] == s[$0] }) else {
        throw err("only the last two axes may be resized, got sizes \(out) for an input of \(s)")
      }
      /// [out, in] weights of one axis.
      func matrix(inLen: Int, outLen: Int, scale: Double) -> [Double] {
        var m = [Double](repeating: 0, count: outLen * inLen)
        func add(_ o: Int, _ j: Int, _ w: Double) { m[o * inLen + Swift.min(Swift.max(j, 0), inLen - 1)] += w }
        for o in 0..<outLen {
          let i = Double(o)
          let x: Double
          switch transform {
          case "align_corners": x = outLen == 1 ? 0 : i * Double(inLen - 1) / Double(outLen - 1)
          case "asymmetric": x = i / scale
          case "pytorch_half_pixel": x = outLen > 1 ? (i + 0.5) / scale - 0.5 : 0
          default: x = (i + 0.5) / scale - 0.5
          }
          if antialias {
            // The filter stretched by 1/scale when downsampling and its taps normalized, as the
            // ONNX reference does it; with exclude_outside this is PyTorch's antialias, which
            // dynamo exports that way.
            let sc = Swift.min(scale, 1), ratio = x == x.rounded(.down) ? 1 : x - x.rounded(.down)
            let base = Int((x - ratio).rounded())
            let start = Int((-(mode == "linear" ? 1 : 2) / sc).rounded(.down)) + 1
            let taps = (0..<(2 - 2 * start)).map { k -> Double in
              let d = Swift.abs((Double(start + k) - ratio) * sc), a = cubicA
              if mode == "linear" { return Swift.max(0, 1 - d) }
              if d <= 1 { return ((a + 2) * d - (a + 3)) * d * d + 1 }
              if d < 2 { return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a }
              return 0
            }
            let kept = taps.enumerated().filter { !excludeOutside || (0..<inLen).contains(base + start + $0.offset) }
            let total = kept.reduce(0) { $0 + $1.element }
            for (k, w) in kept { add(o, base + start + k, w / total) }
            continue
          }
          switch mode {
          case "nearest":
            let f = x.rounded(.down), half = x - f == 0.5
            switch nearestMode {
            case "floor": add(o, Int(f), 1)
            case "ceil": add(o, Int(x.rounded(.up)), 1)
            case "round_prefer_ceil": add(o, Int(half ? f + 1 : x.rounded()), 1)
            default: add(o, Int(half ? f : x.rounded()), 1)
            }
          case "linear":
            // A coordinate before the first sample reads the first sample, as onnxruntime
            // and PyTorch's bilinear both do.
            let c = Swift.min(Swift.max(x, 0), Double(inLen - 1))
            let j = Int(c.rounded(.down)), f = c - Double(j)
            add(o, j, 1 - f)
            if f > 0 { add(o, j + 1, f) }
          default:
            // Cubic convolution with coefficient a; taps outside the input repeat the edge.
            let j = Int(x.rounded(.down)), t = x - Double(j), a = cubicA
            func w(_ d: Double) -> Double {
              let d = Swift.abs(d)
              if d <= 1 { return ((a + 2) * d - (a + 3)) * d * d + 1 }
              if d < 2 { return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a }
              return 0
            }
            let kept = (-1...2).filter { !excludeOutside || (0..<inLen).contains(j + $0) }
            let total = excludeOutside ? kept.reduce(0) { $0 + w(t - Double($1)) } : 1
            for k in kept { add(o, j + k, w(t - Double(k)) / total) }
          }
        }
        return m
      }
      for a in [r - 2, r - 1] where a >= 0 && (out[a] != s[a] || scale[a] != 1) {
        let m = matrix(inLen: s[a], outLen: out[a], scale: scale[a]).map { Double(Float($0)) }
        if a == r - 1 {
          // x · Mᵀ: the matrix as [in, out].
          var t = [Double](repeating: 0, count: m.count)
          for o in 0..<out[a] { for j in 0..<s[a] { t[j * out[a] + o] = m[o * s[a] + j] } }
          x = try emit(.matMul, [x, .const(ConstTensor(dtype: .f32, shape: [s[a], out[a]], floats: t))])[0]
        } else {
          x = try emit(.matMul, [.const(ConstTensor(dtype: .f32, shape: [out[a], s[a]], floats: m)), x])[0]
        }
      }
      return [x]
    }

    /// MaxPool, AveragePool and GlobalMaxPool over NCHW.
    mutating func pool() throws -> [Sym] {
      let x0 = try required(0)
      let xs0 = importer.type(x0).shape
      // A 1-D pool (NCL, Next-ViT's spatial reduction of tokens) runs as a 2-D one over a 1×L grid.
      let oneD = xs0.count == 3
      guard xs0.count == 4 || oneD else { throw err("pooling runs over 1-D NCL or 2-D NCHW inputs, got \(importer.type(x0))") }
      let x = oneD ? try emit(.unsqueeze([2]), [x0])[0] : x0
      let xs = importer.type(x).shape
      func finish(_ y: [Sym]) throws -> [Sym] { oneD ? try emit(.squeeze([2]), y) : y }
      if node.opType == "GlobalMaxPool" {
        return try finish(try emit(.maxPool(PoolGeometry(kernel: [xs[2], xs[3]], strides: [1, 1], pads: [0, 0, 0, 0], dilations: [1, 1], ceilMode: false)), [x]))
      }
      guard node.outputs.count < 2 || node.outputs[1].isEmpty else { throw err("the Indices output is not supported") }
      guard try int("storage_order", 0) == 0 else { throw err("storage_order 1 is not supported") }
      let sp = xs0.count - 2
      guard var kernel = try ints("kernel_shape"), kernel.count == sp else { throw err("kernel_shape must have \(sp) entries") }
      var strides = try ints("strides") ?? [Int](repeating: 1, count: sp), dil = try ints("dilations") ?? [Int](repeating: 1, count: sp)
      guard strides.count == sp, dil.count == sp else { throw err("strides and dilations must have \(sp) entries") }
      var pads = try autoPads(Array(xs0.dropFirst(2)), kernel: kernel, strides: strides, dilations: dil,
        pads: try ints("pads") ?? [Int](repeating: 0, count: 2 * sp))
      if oneD { (kernel, strides, dil, pads) = ([1] + kernel, [1] + strides, [1] + dil, [0, pads[0], 0, pads[1]]) }
      let g = PoolGeometry(kernel: kernel, strides: strides, pads: pads, dilations: dil, ceilMode: try int("ceil_mode", 0) != 0)
      if node.opType == "MaxPool" { return try finish(try emit(.maxPool(g), [x])) }
      guard dil == [1, 1] else { throw err("AveragePool with dilations is not supported") }
      return try finish(try emit(.averagePool(g, countIncludePad: try int("count_include_pad", 0) != 0), [x]))
    }

    mutating func split() throws -> [Sym] {
      let x = try required(0)
      let s = importer.type(x).shape
      let axis = try int("axis", 0)
      guard let a = normalizeAxis(axis, rank: s.count) else { throw err("axis \(axis) out of range") }
      var sizes = try const(1, "split")?.intValues ?? (try ints("split"))
      if sizes == nil {
        let parts = try int("num_outputs", node.outputs.count)
        guard parts == node.outputs.count, parts > 0 else {
          throw err("num_outputs \(parts) does not match the \(node.outputs.count) outputs")
        }
        let chunk = (s[a] + parts - 1) / parts
        sizes = (0..<parts).map { min(chunk, max(0, s[a] - $0 * chunk)) }
      }
      return try emit(.split(axis: a, sizes: sizes!), [x])
    }
  }
}

extension ConstTensor {
  func filled(_ v: [Double]) -> ConstTensor {
    var t = self
    if dtype.isFloat { t.floats = v } else { t.ints = v.map { Int64($0) } }
    return t
  }
}
