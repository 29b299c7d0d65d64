// BufferLayout.swift: where a scheduled graph's values live, as the plan-memory pass writes it onto the nodes and the runtime reads it back.

/// Consecutive nodes that each work on the slices of the same leading axes independently
/// (batch × heads): small batched matmuls, softmax and its gradient along the last axis, a
/// transpose of the last two axes, and elementwise ops against a scalar; views and constants
/// may sit between them. The runtime runs such a run slice by slice, so one head's scores
/// stay in cache from the product that makes them to the one that reads them. That is only
/// the same computation if no member writes memory another member reads for a later slice,
/// so the memory plan keeps every value a member reads or writes in memory alive to the
/// run's end; values made and read only inside the run (`scratch`) never touch memory.
public struct SliceRun: Sendable, Equatable {
  /// Schedule positions from the first member to the last.
  public var nodes: [Int]
  /// The nodes that compute, in order.
  public var members: [Int]
  /// Constants inside the run: they run before it.
  public var hoisted: [Int]
  /// Results of members read only by later members (through the run's views), not kept
  /// after the step, and small enough for per-thread scratch.
  public var scratch: Set<ValueID>
  /// Slices (the product of the leading axes) every member works on.
  public var slices: Int

  /// Largest slice (floats; 1 MiB) kept in scratch: a few per thread should fit in L2.
  public static let scratchLimit = 1 << 18
  /// Largest matmul slice (2·M·N·K) in a run: larger products are split over the threads
  /// by themselves.
  public static let productLimit = 1 << 25

  public init(nodes: [Int], members: [Int], hoisted: [Int], scratch: Set<ValueID>, slices: Int) {
    self.nodes = nodes
    self.members = members
    self.hoisted = hoisted
    self.scratch = scratch
    self.slices = slices
  }

  /// The value whose memory a member's operand is: through the run's views back to a
  /// member's result or to a value made before the run.
  public func root(_ v: ValueID, _ g: Graph) -> ValueID {
    var v = v
    while let p = nodes.first(where: { !members.contains($0) && !hoisted.contains($0) && g.nodes[$0].outputs == [v] }) {
      v = g.nodes[p].inputs[0]
    }
    return v
  }
}

/// The memory layout of a scheduled graph, read from the annotations `plan-memory` writes:
/// `mem.offsets` (each result's arena offset, −1 outside the arena), `mem.shares` (the operand
/// whose memory a result is, −1 for none), `mem.pair` (this node and the next run as one
/// movement kernel) and `mem.run` / `mem.scratch` (slice runs and their scratch results).
/// The runtime lays its buffers out by this and nothing else: it reads the compiler's
/// decisions and checks them, it does not make them again.
public struct BufferLayout: Sendable, Equatable {
  public static let alignment = 64

  /// Arena offset of each value that owns arena memory.
  public var offsets: [ValueID: Int]
  /// Each value that is another's memory (a view, an in-place result, a transposed view, an
  /// updated parameter), mapped to that operand.
  public var owner: [ValueID: ValueID]
  /// Transposes whose result is a view that matmuls read with the BLAS transpose flag.
  public var transposedViews: Set<ValueID>
  /// Node positions: a movement pair's first node → its second (always the next node).
  public var movementPairs: [Int: Int]
  public var sliceRuns: [SliceRun]
  public var arenaBytes: Int

  public init(
    offsets: [ValueID: Int], owner: [ValueID: ValueID], transposedViews: Set<ValueID>, movementPairs: [Int: Int], sliceRuns: [SliceRun],
    arenaBytes: Int
  ) {
    self.offsets = offsets
    self.owner = owner
    self.transposedViews = transposedViews
    self.movementPairs = movementPairs
    self.sliceRuns = sliceRuns
    self.arenaBytes = arenaBytes
  }

  /// Bytes an arena slot of type `t` takes: its bytes rounded up to the alignment.
  public static func slotBytes(_ t: TensorType) -> Int { (max(t.byteCount, 1) + alignment - 1) / alignment * alignment }
}

extension Graph {
  /// Reads the layout `plan-memory` wrote, checking that it describes this graph: every node
  /// annotated, offsets aligned, shared memory of the same size, pairs and runs well formed.
  public func bufferLayout() throws -> BufferLayout {
    func bad(_ n: Node, _ m: String) -> IRError { IRError.verify("node '\(n.name)' (\(n.op.name)): \(m); recompile the plan") }
    var offsets: [ValueID: Int] = [:], owner: [ValueID: ValueID] = [:], transposed: Set<ValueID> = []
    var pairs: [Int: Int] = [:]
    var runNodes: [Int: [Int]] = [:], runSlices: [Int: Int] = [:]
    var arena = 0
    for (i, n) in nodes.enumerated() {
      guard case .ints(let offs)? = n.attrs[Annotation.memOffsets], case .ints(let shares)? = n.attrs[Annotation.memShares] else {
        throw bad(n, "no memory plan (mem.offsets, mem.shares)")
      }
      guard offs.count == n.outputs.count, shares.count == n.outputs.count else { throw bad(n, "mem.offsets or mem.shares has the wrong length") }
      for (k, o) in n.outputs.enumerated() {
        if shares[k] >= 0 {
          guard shares[k] < n.inputs.count, offs[k] < 0 else { throw bad(n, "mem.shares names no operand") }
          let x = n.inputs[shares[k]]
          guard type(of: x).byteCount == type(of: o).byteCount else { throw bad(n, "result \(k) shares an operand of another size") }
          owner[o] = x
          if case .transpose = n.op { transposed.insert(o) }
        } else if offs[k] >= 0 {
          guard offs[k] % BufferLayout.alignment == 0 else { throw bad(n, "arena offset \(offs[k]) is not aligned") }
          offsets[o] = offs[k]
          arena = max(arena, offs[k] + BufferLayout.slotBytes(type(of: o)))
        } else if offs[k] != -1 || shares[k] != -1 {
          throw bad(n, "mem.offsets and mem.shares take −1 or a valid entry")
        }
      }
      if case .int(1)? = n.attrs[Annotation.memPair] {
        guard i + 1 < nodes.count else { throw bad(n, "mem.pair on the last node") }
        switch (n.op, nodes[i + 1].op) {
        case (.transpose, .split), (.concat, .transpose): pairs[i] = i + 1
        default: throw bad(n, "mem.pair joins \(n.op.name) and \(nodes[i + 1].op.name), not a movement pair")
        }
      }
      if case .ints(let r)? = n.attrs[Annotation.memRun] {
        guard r.count == 2, r[0] >= 0, r[1] > 1 else { throw bad(n, "mem.run must be [run, slices]") }
        runNodes[r[0], default: []].append(i)
        guard runSlices[r[0]] == nil || runSlices[r[0]] == r[1] else { throw bad(n, "mem.run's slice count differs within the run") }
        runSlices[r[0]] = r[1]
      }
    }
    var runs: [SliceRun] = []
    for k in runNodes.keys.sorted() {
      let at = runNodes[k]!
      guard at.last! - at.first! + 1 == at.count else { throw bad(nodes[at[0]], "slice run \(k) is not contiguous") }
      var members: [Int] = [], hoisted: [Int] = [], scratch: Set<ValueID> = []
      for i in at {
        let n = nodes[i]
        if case .constant = n.op {
          hoisted.append(i)
        } else if !(n.op.isView || n.outputs.count == 1 && transposed.contains(n.outputs[0])) {
          members.append(i)
          if case .int(1)? = n.attrs[Annotation.memScratch] { scratch.insert(n.outputs[0]) }
        }
      }
      guard members.count >= 2 else { throw bad(nodes[at[0]], "slice run \(k) has fewer than two members") }
      runs.append(SliceRun(nodes: at, members: members, hoisted: hoisted, scratch: scratch, slices: runSlices[k]!))
    }
    return BufferLayout(
      offsets: offsets, owner: owner, transposedViews: transposed, movementPairs: pairs, sliceRuns: runs, arenaBytes: arena)
  }

  /// Bytes of the im2col buffer a convolution node's kernel needs: (C/group)·kh·kw rows by
  /// the output's H·W columns (0 for other nodes).
  public func workspaceBytes(_ node: Node) -> Int {
    let w: [Int], y: [Int]
    switch node.op {
    case .convGradInput: (w, y) = (type(of: node.inputs[1]).shape, type(of: node.inputs[0]).shape)
    case .convGradWeight(_, let ws): (w, y) = (ws, type(of: node.inputs[1]).shape)
    case .conv: (w, y) = (type(of: node.inputs[1]).shape, type(of: node.outputs[0]).shape)
    case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .layerNorm, .softmax,
      .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean,
      .reduceSum, .globalAveragePool, .pad, .padGrad, .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
      .unaryGrad, .softmaxGrad,
      .layerNormGrad, .layerNormSaving, .layerNormAffine, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw, .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
      .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats:
      return 0
    }
    guard w.count == 4, y.count == 4 else { return 0 }
    return w[1] * w[2] * w[3] * y[2] * y[3] * 4
  }
}
