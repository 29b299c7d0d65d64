// Graph.swift: the static SSA graph: values, parameters, nodes, and use-def queries.

/// Index of an SSA value in `Graph.values`.
public struct ValueID: Hashable, Comparable, Sendable, CustomStringConvertible {
  public let raw: Int
  public init(_ raw: Int) { self.raw = raw }
  public static func < (a: ValueID, b: ValueID) -> Bool { a.raw < b.raw }
  public var description: String { "v\(raw)" }
}

/// Bytes of a parameter tensor, owned or borrowed from a mapped file or decoded message.
/// `owner` keeps the backing memory alive; the bytes are never copied once loaded.
public final class TensorBytes: @unchecked Sendable {
  public let base: UnsafeRawPointer
  public let count: Int
  /// What keeps `base` alive (a mapped file, a decoded message), or nil when this object owns it.
  public let owner: AnyObject?
  /// True when `base` points into a read-only file mapping: a consumer that has copied the
  /// bytes may drop those pages from memory (they are read back from the file if touched again).
  public let fileBacked: Bool
  private let deallocate: Bool

  /// Wraps memory that `owner` keeps alive.
  public init(borrowing base: UnsafeRawPointer, count: Int, owner: AnyObject, fileBacked: Bool = false) {
    self.base = base
    self.count = count
    self.owner = owner
    self.fileBacked = fileBacked
    self.deallocate = false
  }

  /// Copies `bytes` into memory this object owns.
  public init(copying bytes: UnsafeRawBufferPointer) {
    let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
    if let b = bytes.baseAddress, bytes.count > 0 { p.copyMemory(from: b, byteCount: bytes.count) }
    self.base = UnsafeRawPointer(p)
    self.count = bytes.count
    self.owner = nil
    self.fileBacked = false
    self.deallocate = true
  }

  deinit {
    if deallocate { UnsafeMutableRawPointer(mutating: base).deallocate() }
  }

  public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
}

/// A named tensor that is not computed by the graph: a trainable weight, or a constant too big
/// to print inline (`trainable == false`). Printed as `@name`.
public struct Param: Sendable {
  public var name: String
  public var value: ValueID
  public var trainable: Bool
  /// Little-endian element bytes; nil for graphs parsed from text.
  public var data: TensorBytes?

  public init(name: String, value: ValueID, trainable: Bool, data: TensorBytes?) {
    self.name = name
    self.value = value
    self.trainable = trainable
    self.data = data
  }
}

/// One operation: its op, operand and result values, the name kept from ONNX, and the
/// annotations passes attach (`sbp.role`, `sbp.block`, …).
public struct Node: Sendable {
  public var op: Op
  public var inputs: [ValueID]
  public var outputs: [ValueID]
  public var name: String
  public var attrs: [String: AttrValue]

  public init(op: Op, inputs: [ValueID], outputs: [ValueID], name: String = "", attrs: [String: AttrValue] = [:]) {
    self.op = op
    self.inputs = inputs
    self.outputs = outputs
    self.name = name
    self.attrs = attrs
  }
}

/// A graph input fed by the caller (images, labels), with the name it had in ONNX.
public struct GraphInput: Sendable {
  public var value: ValueID
  public var name: String
  public init(value: ValueID, name: String) {
    self.value = value
    self.name = name
  }
}

/// A static, typed SSA graph. `nodes` are kept in a topological order.
public struct Graph: Sendable {
  public var name: String
  /// Type of every value, indexed by `ValueID.raw`. Values may be unused after rewrites.
  public private(set) var types: [TensorType]
  public var inputs: [GraphInput]
  public var params: [Param]
  public var nodes: [Node]
  public var outputs: [GraphInput]

  public init(name: String) {
    self.name = name
    self.types = []
    self.inputs = []
    self.params = []
    self.nodes = []
    self.outputs = []
  }

  public func type(of v: ValueID) -> TensorType { types[v.raw] }

  /// Number of values ever created (some may be unused after rewrites).
  public var valueCount: Int { types.count }

  /// Creates a fresh value of type `t`.
  public mutating func newValue(_ t: TensorType) -> ValueID {
    types.append(t)
    return ValueID(types.count - 1)
  }

  public mutating func addInput(_ name: String, _ t: TensorType) -> ValueID {
    let v = newValue(t)
    inputs.append(GraphInput(value: v, name: name))
    return v
  }

  public mutating func addParam(_ name: String, _ t: TensorType, trainable: Bool, data: TensorBytes?) -> ValueID {
    let v = newValue(t)
    params.append(Param(name: name, value: v, trainable: trainable, data: data))
    return v
  }

  /// Appends a node whose result types are inferred from its operands.
  @discardableResult
  public mutating func append(_ op: Op, _ inputs: [ValueID], name: String = "", attrs: [String: AttrValue] = [:]) throws -> [ValueID] {
    let outTypes = try op.inferTypes(inputs.map { types[$0.raw] })
    let outs = outTypes.map { newValue($0) }
    nodes.append(Node(op: op, inputs: inputs, outputs: outs, name: name, attrs: attrs))
    return outs
  }

  /// Parameter by value, if the value is a parameter.
  public func param(_ v: ValueID) -> Param? { params.first { $0.value == v } }

  /// Builds the use-def index for matching.
  public func index() -> UseDef { UseDef(self) }

  /// How many values `params` hold together.
  public func elementCount(_ params: [Param]) -> Int { params.reduce(0) { $0 + type(of: $1.value).elementCount } }

  /// Operation counts by op name.
  public var opHistogram: [String: Int] {
    var h: [String: Int] = [:]
    for n in nodes { h[n.op.name, default: 0] += 1 }
    return h
  }

  /// Element count of trainable parameters, and their bytes.
  public var trainableParameterCount: (elements: Int, bytes: Int) {
    params.filter(\.trainable).reduce((0, 0)) { acc, p in
      let t = type(of: p.value)
      return (acc.0 + t.elementCount, acc.1 + t.byteCount)
    }
  }
}

/// Where a value comes from.
public enum Producer: Sendable, Equatable {
  case input(Int)
  case param(Int)
  case node(Int, output: Int)
}

/// Read-only use-def view of a graph; patterns match against this and never mutate.
public struct UseDef: Sendable {
  public let graph: Graph
  private var producers: [ValueID: Producer] = [:]
  private var users: [ValueID: [Int]] = [:]
  private var outputSet: Set<ValueID> = []

  init(_ g: Graph) {
    graph = g
    for (i, inp) in g.inputs.enumerated() { producers[inp.value] = .input(i) }
    for (i, p) in g.params.enumerated() { producers[p.value] = .param(i) }
    for (i, n) in g.nodes.enumerated() {
      for (k, o) in n.outputs.enumerated() { producers[o] = .node(i, output: k) }
      for v in n.inputs where users[v]?.last != i { users[v, default: []].append(i) }
    }
    outputSet = Set(g.outputs.map(\.value))
  }

  public func producer(_ v: ValueID) -> Producer? { producers[v] }

  /// The node defining `v`, if a node does.
  public func definingNode(_ v: ValueID) -> Node? {
    if case .node(let i, _)? = producers[v] { return graph.nodes[i] }
    return nil
  }

  /// Indices of the nodes reading `v`, each once.
  public func users(_ v: ValueID) -> [Int] { users[v] ?? [] }

  /// True when `v` is read exactly once and is not a graph output, so a pattern may absorb it.
  public func hasSingleUse(_ v: ValueID) -> Bool {
    !outputSet.contains(v) && users(v).count == 1 && graph.nodes[users(v)[0]].inputs.filter { $0 == v }.count == 1
  }

  /// The literal behind `v` when a `constant` node defines it.
  public func literal(_ v: ValueID) -> Literal? {
    if case .constant(let l)? = definingNode(v)?.op { return l }
    return nil
  }

  /// The scalar behind `v` when it is a one-element constant.
  public func scalar(_ v: ValueID) -> Double? { literal(v)?.scalar }

  /// The parameter behind `v`, if any.
  public func param(_ v: ValueID) -> Param? {
    if case .param(let i)? = producers[v] { return graph.params[i] }
    return nil
  }
}
