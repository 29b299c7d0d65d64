// Rewrite.swift: the one API through which passes change a graph: pattern replacements, use
// substitution and dead-code elimination.

/// Operand of a node that a replacement creates: an existing value or a result of an
/// earlier node of the same replacement.
public enum Ref: Sendable {
  case value(ValueID)
  case result(node: Int, output: Int)
}

/// A node a replacement creates.
public struct NewNode: Sendable {
  public var op: Op
  public var inputs: [Ref]
  public var name: String
  public var attrs: [String: AttrValue]

  public init(_ op: Op, _ inputs: [Ref], name: String, attrs: [String: AttrValue] = [:]) {
    self.op = op
    self.inputs = inputs
    self.name = name
    self.attrs = attrs
  }
}

/// What a pattern wants: new nodes, and the refs that take the place of the root's results.
public struct Replacement: Sendable {
  public var nodes: [NewNode]
  public var results: [Ref]

  public init(nodes: [NewNode], results: [Ref]) {
    self.nodes = nodes
    self.results = results
  }

  /// A replacement that forwards the root's single result to an existing value.
  public static func forward(_ v: ValueID) -> Replacement { Replacement(nodes: [], results: [.value(v)]) }
}

/// A local rewrite rooted at one node. `match` reads the graph and never changes it.
public protocol RewritePattern: Sendable {
  var name: String { get }
  func match(_ root: Node, _ ud: UseDef) -> Replacement?
}

extension Graph {
  /// Applies `patterns` until none matches (at most `maxRounds` sweeps), then removes dead code.
  /// Each replacement must produce exactly the root's result types, or this throws: a pattern
  /// can never silently change what a value means. Returns how many replacements were made.
  @discardableResult
  public mutating func applyPatterns(_ patterns: [any RewritePattern], maxRounds: Int = 16) throws -> Int {
    var total = 0
    for _ in 0..<maxRounds {
      let ud = index()
      var subst: [ValueID: ValueID] = [:]
      var out: [Node] = []
      out.reserveCapacity(nodes.count)
      var changed = 0
      for root in nodes {
        var node = root
        node.inputs = node.inputs.map { subst[$0] ?? $0 }
        var replaced = false
        for p in patterns {
          guard let r = p.match(root, ud) else { continue }
          var made: [[ValueID]] = []
          for nn in r.nodes {
            let ins: [ValueID] = nn.inputs.map { ref in
              switch ref {
              case .value(let v): return subst[v] ?? v
              case .result(let i, let k): return made[i][k]
              }
            }
            let types = try nn.op.inferTypes(ins.map { type(of: $0) })
            let outs = types.map { newValue($0) }
            out.append(Node(op: nn.op, inputs: ins, outputs: outs, name: nn.name, attrs: nn.attrs))
            made.append(outs)
          }
          guard r.results.count == root.outputs.count else {
            throw IRError.verify("pattern \(p.name) at '\(root.name)' gives \(r.results.count) results for \(root.outputs.count)")
          }
          for (o, ref) in zip(root.outputs, r.results) {
            let v: ValueID
            switch ref {
            case .value(let x): v = subst[x] ?? x
            case .result(let i, let k): v = made[i][k]
            }
            guard type(of: v) == type(of: o) else {
              throw IRError.verify("pattern \(p.name) at '\(root.name)' changes \(type(of: o)) into \(type(of: v))")
            }
            subst[o] = v
          }
          replaced = true
          changed += 1
          break
        }
        if !replaced { out.append(node) }
      }
      nodes = out
      for i in outputs.indices { outputs[i].value = subst[outputs[i].value] ?? outputs[i].value }
      eliminateDeadCode()
      total += changed
      if changed == 0 { break }
    }
    return total
  }

  /// Sets annotation `key` on the node at `index` (nil removes it). Passes that only annotate
  /// compute their annotations first, from a read-only view, then apply them here.
  public mutating func annotate(node index: Int, _ key: String, _ value: AttrValue?) {
    nodes[index].attrs[key] = value
  }

  /// Replaces every read of `old` (node operands and graph outputs) by `new`, except in the
  /// nodes at indices `except` (those that build `new` from `old`).
  public mutating func replaceUses(of old: ValueID, with new: ValueID, except: Set<Int> = []) {
    for i in nodes.indices where !except.contains(i) {
      for k in nodes[i].inputs.indices where nodes[i].inputs[k] == old { nodes[i].inputs[k] = new }
    }
    for i in outputs.indices where outputs[i].value == old { outputs[i].value = new }
  }

  /// Replaces the reads of `old` by `new` in the node at index `node` only.
  public mutating func replaceUses(of old: ValueID, with new: ValueID, inNode node: Int) {
    for k in nodes[node].inputs.indices where nodes[node].inputs[k] == old { nodes[node].inputs[k] = new }
  }

  /// Inserts nodes, each before the node now at index `before` (`nodes.count`: at the end),
  /// keeping every other node's order; several at one index keep their given order. Each new
  /// node's results must be fresh values (`newValue`) of the types its op infers.
  public mutating func insert(_ new: [(before: Int, node: Node)]) throws {
    var at: [Int: [Node]] = [:]
    for (before, n) in new {
      guard before >= 0, before <= nodes.count else { throw IRError.verify("insert: position \(before) outside 0...\(nodes.count)") }
      guard try n.op.inferTypes(n.inputs.map(type(of:))) == n.outputs.map(type(of:)) else {
        throw IRError.verify("insert: node '\(n.name)' (\(n.op.name)) declares results its op does not infer")
      }
      at[before, default: []].append(n)
    }
    var out: [Node] = []
    out.reserveCapacity(nodes.count + new.count)
    for i in 0...nodes.count {
      out += at[i] ?? []
      if i < nodes.count { out.append(nodes[i]) }
    }
    nodes = out
  }

  /// Removes nodes whose results nobody reads, and parameters nobody reads.
  public mutating func eliminateDeadCode() {
    var live = Set(outputs.map(\.value))
    var keep = [Bool](repeating: false, count: nodes.count)
    for i in nodes.indices.reversed() where nodes[i].outputs.contains(where: live.contains) {
      keep[i] = true
      live.formUnion(nodes[i].inputs)
    }
    nodes = nodes.indices.filter { keep[$0] }.map { nodes[$0] }
    params.removeAll { !live.contains($0.value) }
  }

  /// Reorders nodes topologically (stable where the order is already valid). Throws when the
  /// graph has a cycle, naming a node on it.
  public mutating func sortTopologically() throws {
    var defined = Set(inputs.map(\.value)).union(params.map(\.value))
    var pending = Array(nodes.indices)
    var order: [Int] = []
    order.reserveCapacity(nodes.count)
    let produced = Set(nodes.flatMap(\.outputs))
    while !pending.isEmpty {
      var rest: [Int] = []
      for i in pending {
        if nodes[i].inputs.allSatisfy({ defined.contains($0) || !produced.contains($0) }) {
          order.append(i)
          defined.formUnion(nodes[i].outputs)
        } else {
          rest.append(i)
        }
      }
      if rest.count == pending.count {
        let n = nodes[rest[0]]
        throw IRError.verify("graph has a cycle through node '\(n.name)' (\(n.op.name))")
      }
      pending = rest
    }
    nodes = order.map { nodes[$0] }
  }
}
