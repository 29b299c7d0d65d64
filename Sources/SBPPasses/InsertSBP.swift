// InsertSBP.swift: rewrites each selected block as the paper's Algorithm 1: kept rows with gradient, dropped rows without, reassembled.
import SBPIR

/// Splits the selected blocks (DESIGN.md, "SBP semantics"). For each token-wise branch (MLP,
/// PW-Conv) and, per `--attention`, each attention core, it gathers the kept token rows and
/// computes the branch on them with gradient, computes the dropped rows from a clone whose
/// result passes through `stop_gradient`, and scatters both back. A patch-wise downsampler
/// keeps its forward and passes gradient only at kept output positions. The step's indices
/// arrive as graph inputs `sbp.kept.<stage>` and `sbp.dropped.<stage>` (i64, −1 padded).
public struct InsertSBP: Pass {
  public var options: SBPOptions
  /// Split norm-then-conv downsamplers as patch rows (the default); false keeps every
  /// downsampler's forward and masks its output gradient instead, the general fallback.
  public var patchDownsamplers = true
  public init(_ options: SBPOptions = SBPOptions()) { self.options = options }
  public let name = "insert-sbp"
  public let summary = "split the selected blocks into kept rows (with gradient) and dropped rows (without); needs mark"

  public func run(_ graph: inout Graph) throws {
    guard let layout = try SBPLayout.make(graph, options: options) else { return }
    var r = SBPRewriter(graph: graph, layout: layout)
    r.patchDownsamplers = patchDownsamplers
    try r.rewrite()
    graph = r.graph
    try graph.sortTopologically()
    graph.eliminateDeadCode()
  }
}

/// Token rows of a value: the axes that hold the stage's tokens (one, or H and W).
typealias TokenAxes = [Int]

struct SBPRewriter {
  var graph: Graph
  let layout: SBPLayout
  var producer: [ValueID: Int] = [:]
  var indexInputs: [Int: (kept: ValueID, dropped: ValueID)] = [:]
  var keyBias: [Int: ValueID] = [:]
  /// Per stage with leading tokens: its rows as positions of the H×W grid alone (`gridIndices`).
  var gridIndexInputs: [Int: (kept: ValueID, dropped: ValueID)] = [:]
  var patchDownsamplers = true
  var operandViews: [String: ValueID] = [:]
  /// Annotations every node made for the current block carries (its block and stage).
  var stamp: [String: AttrValue] = [:]
  /// Per window partition (`MaskWindows.id`): its kept and dropped list inputs.
  var windowInputs: [Int: (kept: ValueID, dropped: ValueID)] = [:]
  /// Per block with a windowed attention: its partition's id and the batch.
  var blockWindow: [Int: (id: Int, batch: Int, sink: ValueID)] = [:]
  var windowKeyBias: [Int: ValueID] = [:]

  mutating func emit(_ op: Op, _ inputs: [ValueID], name: String, attrs: [String: AttrValue] = [:]) throws -> [ValueID] {
    try graph.append(op, inputs, name: name, attrs: stamp.merging(attrs) { _, new in new })
  }

  init(graph: Graph, layout: SBPLayout) {
    self.graph = graph
    self.layout = layout
    producer = graph.producerIndex()
  }

  func fail(_ block: Int, _ m: String) -> PassError { PassError("insert-sbp: block \(block): \(m)") }

  mutating func rewrite() throws {
    for st in layout.stages {
      let k = graph.addInput(st.keptInput, TensorType(.i64, [st.keptRows]))
      let d = graph.addInput(st.droppedInput, TensorType(.i64, [st.droppedRows]))
      indexInputs[st.stage] = (k, d)
    }
    for w in layout.windows {
      let k = graph.addInput(w.keptInput, TensorType(.i64, [w.windows * w.keptRows]))
      let d = graph.addInput(w.droppedInput, TensorType(.i64, [w.windows * w.droppedRows]))
      windowInputs[w.id] = (k, d)
    }
    if layout.options.attention != .none {
      for b in layout.blocks {
        guard let (t, s, batch, sink) = try WindowTrace.partition(graph, producer: producer, block: b) else { continue }
        guard let w = layout.windows.first(where: { $0.stage == s && $0.table == t.table }) else {
          throw fail(b, "its window partition is not in the SBP layout")
        }
        blockWindow[b] = (w.id, batch, sink)
      }
    }
    let original = graph.nodes
    let table = BlockTable(graph)
    let selected = Set(layout.blocks)
    var blockNodes: [Int: [Int]] = [:]
    for (i, n) in original.enumerated() {
      if case .int(let b)? = n.attrs[Annotation.block], selected.contains(b) { blockNodes[b, default: []].append(i) }
    }
    for b in layout.blocks {
      let nodes = blockNodes[b] ?? []
      guard let res = nodes.first(where: { original[$0].attrs[Annotation.kind] != nil }),
        case .int(let stage)? = original[res].attrs[Annotation.stage], case .ints(let axes)? = original[res].attrs[Annotation.tokenAxes]
      else { throw fail(b, "has no block annotation (sbp.kind); run mark first") }
      let roles = nodes.compactMap { i -> (Int, String)? in
        if case .string(let r)? = original[i].attrs[Annotation.role] { return (i, r) } else { return nil }
      }
      stamp = [Annotation.block: .int(b), Annotation.stage: .int(stage)]
      let chain = roles.filter { $0.1.hasPrefix("mlp.") || $0.1.hasPrefix("pwconv") }.map(\.0)
      // A block's row-wise regions split one by one, each with the mask of its own grid.
      var segments: [Int: [Int]] = [:]
      for i in chain { if case .int(let k)? = original[i].attrs[Annotation.segment] { segments[k, default: []].append(i) } }
      let whole = chain.filter { original[$0].attrs[Annotation.segment] == nil }
      // The residual's x: the operand of its add that the block does not compute.
      let inBlock = Set(nodes.flatMap { original[$0].outputs })
      let blockInput = original[res].inputs.first { !inBlock.contains($0) }
      if !whole.isEmpty { try splitTokenwise(block: b, stage: stage, chain: whole, blockAxes: axes, blockInput: blockInput) }
      for k in segments.keys.sorted() {
        let nodes = segments[k]!, head = original[nodes.min()!]
        guard case .int(let s)? = head.attrs[Annotation.stage], case .ints(let segAxes)? = head.attrs[Annotation.tokenAxes] else {
          throw fail(b, "region \(k) has no stage or token axes; run mark first")
        }
        stamp = [Annotation.block: .int(b), Annotation.stage: .int(s)]
        try splitTokenwise(block: b, stage: s, chain: nodes, blockAxes: segAxes, inputAxes: segAxes)
      }
      stamp = [Annotation.block: .int(b), Annotation.stage: .int(stage)]
      if layout.options.attention != .none, let scores = roles.first(where: { $0.1 == "mhsa.scores" })?.0,
        let context = roles.first(where: { $0.1 == "mhsa.context" })?.0
      {
        if let w = blockWindow[b] {
          try splitWindowedAttention(block: b, scores: scores, context: context, window: layout.windows[w.id], batch: w.batch, sink: w.sink)
        } else {
          try splitAttention(block: b, stage: stage, scores: scores, context: context)
        }
      }
    }
    // Downsamplers feeding a stage whose first block is selected.
    stamp = [:]
    for n in original where n.attrs[Annotation.role] == .string("downsample") {
      guard case .int(let s)? = n.attrs[Annotation.stage], let first = table.blocks(inStage: s).first, selected.contains(first.index) else {
        continue
      }
      if try !(patchDownsamplers && splitPatchDownsampler(n, stage: s)) {
        try maskGradient(of: n.outputs[0], axes: [2, 3], stage: s, name: n.name)
      }
    }
  }

  // MARK: Token-wise branches

  /// Token axes of every value in `region` (and of its input), following transposes; throws
  /// when an op is not token-wise.
  func tokenAxes(region: [Int], input: ValueID, inputAxes: TokenAxes, block: Int) throws -> [ValueID: TokenAxes] {
    var axes: [ValueID: TokenAxes] = [input: inputAxes]
    for i in region {
      let n = graph.nodes[i]
      let acts = n.inputs.filter { axes[$0] != nil }
      guard let t = acts.first.flatMap({ axes[$0] }), acts.allSatisfy({ axes[$0] == t }) else {
        throw fail(block, "\(n.op.name) '\(n.name)' mixes token layouts")
      }
      let out: TokenAxes
      switch n.op {
      case .linear(let a, _) where !t.contains(a): out = t
      case .layerNorm(let a, _) where a > t.last!: out = t
      case .transpose(let p):
        let pos = t.map { p.firstIndex(of: $0)! }
        guard pos == Array(pos[0]..<(pos[0] + pos.count)) else { throw fail(block, "transpose '\(n.name)' separates the token axes") }
        out = pos
      case _ where n.op.isElementwise && n.outputs.count == 1:
        for v in n.inputs where axes[v] == nil {
          let s = graph.type(of: v).shape, r = graph.type(of: n.outputs[0]).rank
          let aligned = [Int](repeating: 1, count: r - s.count) + s
          guard t.allSatisfy({ aligned[$0] == 1 }) else { throw fail(block, "\(n.op.name) '\(n.name)' reads a per-token constant") }
        }
        out = t
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
        .softmax, .reshape, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand,
        .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad,
        .runningStats, .maxPool,
        .averagePool, .maxPoolGrad, .averagePoolGrad, .stopGradient,
        .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad,
        .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd,
        .adamw:
        throw fail(block, "\(n.op.name) '\(n.name)' is not token-wise, so the branch cannot be split by rows")
      }
      axes[n.outputs[0]] = out
    }
    return axes
  }

  /// Token axes of `v`, found by following transposes back to a value in the block's layout.
  func axesOf(_ v: ValueID, blockAxes: TokenAxes, rank: Int, blockInput: ValueID? = nil) -> TokenAxes {
    var perm: [Int]?
    var cur = v
    // The walk stops at the residual's x, which is in the block's layout whatever made it
    // (DaViT's x is a transpose of a reshaped NCHW map: walking past it read that map's axes).
    while cur != blockInput, let p = producer[cur], case .transpose(let pp) = graph.nodes[p].op {
      perm = perm.map { $0.map { pp[$0] } } ?? pp
      cur = graph.nodes[p].inputs[0]
    }
    guard let perm, graph.type(of: cur).rank == rank else { return blockAxes }
    return blockAxes.map { perm.firstIndex(of: $0)! }
  }

  /// Shape with the token axes merged into one (at the first token axis).
  static func merged(_ shape: [Int], _ t: TokenAxes) -> [Int] {
    Array(shape[..<t[0]]) + [t.reduce(1) { $0 * shape[$1] }] + Array(shape[(t.last! + 1)...])
  }

  static func mergedAxis(_ a: Int, _ t: TokenAxes) -> Int { a < t[0] ? a : a - (t.count - 1) }

  mutating func splitTokenwise(
    block: Int, stage: Int, chain: [Int], blockAxes: TokenAxes, inputAxes: TokenAxes? = nil, blockInput: ValueID? = nil
  ) throws {
    let first = chain.min()!, last = chain.max()!
    let x = graph.nodes[first].inputs[0], y = graph.nodes[last].outputs[0]
    let region = graph.nodesBetween(sources: [x], sink: y, producer: producer)
    let xAxes = inputAxes ?? axesOf(x, blockAxes: blockAxes, rank: blockAxes.count == 1 ? 3 : 4, blockInput: blockInput)
    let axes = try tokenAxes(region: region, input: x, inputAxes: xAxes, block: block)
    let (kept, dropped) = indexInputs[stage]!
    let name = graph.nodes[first].name
    let xm = try reshape(x, to: Self.merged(graph.type(of: x).shape, xAxes), name: name + ".sbp.merge")
    let tAxis = xAxes[0]
    var halves: [ValueID] = []
    for (idx, suffix) in [(kept, "kept"), (dropped, "dropped")] {
      let rows = try emit(.gatherRows(axis: tAxis), [xm, idx], name: "\(name).sbp.\(suffix)")[0]
      var map: [ValueID: ValueID] = [x: rows]
      for i in region {
        let n = graph.nodes[i]
        let t = axes[n.inputs.first { axes[$0] != nil }!]!
        var ins: [ValueID] = []
        for v in n.inputs {
          if let m = map[v] {
            ins.append(m)
          } else if !n.op.isElementwise {
            ins.append(v)
          } else {
            // A broadcast operand: right-align it, then drop the token axes it spans (all 1).
            let s = graph.type(of: v).shape, r = graph.type(of: n.outputs[0]).rank
            let aligned = [Int](repeating: 1, count: r - s.count) + s
            let want = s.count > r - 1 - t.last! ? Self.merged(aligned, t) : s
            // One reshape for both halves: the halves read the same operand, so they stay clones.
            let key = "\(v.raw):\(want)"
            if operandViews[key] == nil { operandViews[key] = try reshape(v, to: want, name: "\(n.name).sbp.operand") }
            ins.append(operandViews[key]!)
          }
        }
        let op: Op
        switch n.op {
        case .linear(let a, let l): op = .linear(axis: Self.mergedAxis(a, t), layout: l)
        case .layerNorm(let a, let e): op = .layerNorm(axis: Self.mergedAxis(a, t), epsilon: e)
        case .transpose(let p):
          // The permutation over merged axes: token axes move as one.
          var mp: [Int] = []
          for a in p {
            let m = a < t[0] ? a : (a <= t.last! ? t[0] : a - (t.count - 1))
            if !mp.contains(m) { mp.append(m) }
          }
          op = .transpose(mp)
        case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .gemm, .conv, .softmax,
          .reshape, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean,
          .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .maxPool,
          .averagePool, .maxPoolGrad, .averagePoolGrad, .stopGradient,
          .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad,
          .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd,
          .adamw: op = n.op
        }
        let outs = try emit(op, ins, name: "\(n.name).sbp.\(suffix)", attrs: n.attrs)
        map[n.outputs[0]] = outs[0]
      }
      var h = map[y]!
      if suffix == "dropped" { h = try emit(.stopGradient, [h], name: "\(name).sbp.dropped.stop")[0] }
      halves.append(h)
    }
    let yAxes = axes[y]!
    let ym = Self.merged(graph.type(of: y).shape, yAxes)
    let sc = try emit(
      .scatterRows(axis: yAxes[0], size: ym[yAxes[0]]), [halves[0], kept, halves[1], dropped], name: "\(name).sbp.scatter",
      attrs: [Annotation.block: .int(block)])[0]
    graph.replaceUses(of: y, with: try reshape(sc, to: graph.type(of: y).shape, name: "\(name).sbp.unmerge"))
  }

  // MARK: Attention

  mutating func splitAttention(block: Int, stage: Int, scores: Int, context: Int) throws {
    // Keys and values from another grid (more keys or fewer than queries; mark says so on
    // the softmax): only queries split.
    let reduced = graph.type(of: graph.nodes[scores].outputs[0]).shape.last != graph.type(of: graph.nodes[scores].inputs[0]).shape.dropLast().last
    let mode: AttentionSplit = reduced ? .query : layout.options.attention
    let q = throughScaling(graph.nodes[scores].inputs[0]), kt = throughScaling(graph.nodes[scores].inputs[1])
    let v = graph.nodes[context].inputs[1], ctx = graph.nodes[context].outputs[0]
    let region = graph.nodesBetween(sources: [q, kt, v], sink: ctx, producer: producer)
    let tokens = graph.type(of: q).shape[graph.type(of: q).rank - 2]
    for i in region {
      let n = graph.nodes[i]
      if case .softmax(let a) = n.op, a != graph.type(of: n.outputs[0]).rank - 1 {
        throw fail(block, "the attention softmax '\(n.name)' is not over the last axis")
      }
      // A scalar scale, or an additive bias over (query, key) pairs (a relative-position
      // table, a computed bias, a mask): each half reads the bias rows and columns of its
      // own queries and keys.
      for x in outsideOperands(n) where !region.contains(where: { graph.nodes[$0].outputs.contains(x) }) && ![q, kt, v].contains(x) {
        let shape = graph.type(of: x).shape
        guard graph.type(of: x).elementCount == 1 || (shape.count >= 2 && shape.suffix(2).allSatisfy { $0 == tokens || $0 == 1 }) else {
          throw fail(block, "the attention core reads an operand at '\(n.name)' that is neither a scalar nor a bias over query and key tokens")
        }
      }
    }
    let (kept, dropped) = indexInputs[stage]!
    let rq = graph.type(of: q).rank, rk = graph.type(of: kt).rank, rv = graph.type(of: v).rank
    let name = graph.nodes[scores].name
    // Kept half.
    var sub: [ValueID: ValueID] = [q: try emit(.gatherRows(axis: rq - 2), [q, kept], name: name + ".sbp.kept.q")[0]]
    var bias: ValueID?
    if mode == .qkv {
      sub[kt] = try emit(.gatherRows(axis: rk - 1), [kt, kept], name: name + ".sbp.kept.k")[0]
      sub[v] = try emit(.gatherRows(axis: rv - 2), [v, kept], name: name + ".sbp.kept.v")[0]
      bias = try paddingBias(stage: stage, kept: kept)
    }
    let keptCtx = try clone(
      region, sources: [q, kt, v], substituting: sub, suffix: "sbp.kept", keyBias: bias, tokens: tokens, queries: kept, keys: mode == .qkv ? kept : nil)[ctx]!
    // Dropped half: dropped queries attend to every key, without gradient.
    let dq = try emit(.gatherRows(axis: rq - 2), [q, dropped], name: name + ".sbp.dropped.q")[0]
    let dropCtx = try clone(region, sources: [q, kt, v], substituting: [q: dq], suffix: "sbp.dropped", keyBias: nil, tokens: tokens, queries: dropped, keys: nil)[ctx]!
    let stopped = try emit(.stopGradient, [dropCtx], name: name + ".sbp.dropped.stop")[0]
    let rc = graph.type(of: ctx).rank
    let sc = try emit(
      .scatterRows(axis: rc - 2, size: graph.type(of: ctx).shape[rc - 2]), [keptCtx, kept, stopped, dropped], name: name + ".sbp.scatter",
      attrs: [Annotation.block: .int(block)])[0]
    graph.replaceUses(of: ctx, with: sc)
  }

  // MARK: Windowed attention

  /// Splits a windowed attention core (Swin) with the stage's one mask, carried through the
  /// window partition and shift by the partition's table: every window's kept queries attend
  /// to its kept keys (or, with `query`, to all its keys) with gradient, its dropped and
  /// padding rows to all its keys without. The halves are per-window lists of a fixed number
  /// of rows (−1 padded), so each window's core stays one batched product.
  mutating func splitWindowedAttention(block: Int, scores: Int, context: Int, window w: MaskWindows, batch: Int, sink: ValueID) throws {
    let q = throughScaling(graph.nodes[scores].inputs[0]), kt = throughScaling(graph.nodes[scores].inputs[1])
    let v = graph.nodes[context].inputs[1], ctx = graph.nodes[context].outputs[0]
    let (nW, n) = (w.windows, w.size)
    // Where q, k and v hold the windows, traced from the projections' input; the context
    // leads as q does (the products keep q's leading axes).
    func axes(_ x: ValueID, token: Int) throws -> WindowAxes {
      guard let a = WindowTrace.axes(graph, producer: producer, sink: sink, value: x, tokenAxis: token, batch: batch, windows: nW, size: n) else {
        throw fail(block, "the windowed attention's \(x == q ? "q" : x == kt ? "k" : "v") does not hold the \(nW) windows of \(n) tokens as rows the split can gather")
      }
      return a
    }
    let (rq, rk, rv) = (graph.type(of: q).rank, graph.type(of: kt).rank, graph.type(of: v).rank)
    let qa = try axes(q, token: rq - 2), ka = try axes(kt, token: rk - 1), va = try axes(v, token: rv - 2)
    guard graph.type(of: ctx).shape.dropLast() == graph.type(of: q).shape.dropLast() else {
      throw fail(block, "the windowed attention's context does not lead as its queries do")
    }
    let region = graph.nodesBetween(sources: [q, kt, v], sink: ctx, producer: producer)
    let (kept, dropped) = windowInputs[w.id]!
    let name = graph.nodes[scores].name
    let qkv = layout.options.attention == .qkv
    var sub: [ValueID: ValueID] = [q: try windowGather(q, axis: rq - 2, qa, kept, w, batch: batch, name: name + ".sbp.kept.q")]
    if qkv {
      sub[kt] = try windowGather(kt, axis: rk - 1, ka, kept, w, batch: batch, name: name + ".sbp.kept.k")
      sub[v] = try windowGather(v, axis: rv - 2, va, kept, w, batch: batch, name: name + ".sbp.kept.v")
    }
    let keyBias = qkv ? try windowPaddingBias(w, kept: kept) : nil
    let keptCtx = try cloneWindowed(
      region, sources: [q, kt, v], sub, suffix: "sbp.kept", window: w, batch: batch, layout: qa, queries: kept, keys: qkv ? kept : nil,
      keyBias: keyBias)
    let dq = try windowGather(q, axis: rq - 2, qa, dropped, w, batch: batch, name: name + ".sbp.dropped.q")
    let dropCtx = try cloneWindowed(
      region, sources: [q, kt, v], [q: dq], suffix: "sbp.dropped", window: w, batch: batch, layout: qa, queries: dropped, keys: nil, keyBias: nil)
    let stopped = try emit(.stopGradient, [dropCtx], name: name + ".sbp.dropped.stop")[0]
    // Both halves back to window rows: one scatter over the flattened windows.
    let t = graph.type(of: ctx).rank - 2
    let kf = try toWindowRows(keptCtx, axis: t, qa, w, batch: batch, name: name + ".sbp.kept.ctx")
    let df = try toWindowRows(stopped, axis: t, qa, w, batch: batch, name: name + ".sbp.dropped.ctx")
    let sc = try emit(
      .scatterRows(axis: kf.axis, size: nW * n), [kf.value, kept, df.value, dropped], name: name + ".sbp.scatter", attrs: [Annotation.block: .int(block)])[0]
    graph.replaceUses(of: ctx, with: try fromWindowRows(sc, axis: kf.axis, perm: kf.perm, like: ctx, rowsAxis: t, name: name + ".sbp.unwindow"))
  }



  /// `x` ([B·windows, …] or [B, windows, …], tokens at `axis`) as [B, …, windows·rows, …]:
  /// the windows moved next to their rows and merged with them; the merged axis and the
  /// permutation used.
  mutating func toWindowRows(
    _ x: ValueID, axis t: Int, _ lay: WindowAxes, _ w: MaskWindows, batch: Int, name: String
  ) throws -> (value: ValueID, axis: Int, perm: [Int]) {
    let s = graph.type(of: x).shape
    let split = lay.merged ? try emit(.reshape([batch, w.windows] + s[1...]), [x], name: name)[0] : x
    let (wa, tt) = lay.merged ? (1, t + 1) : (lay.axis, t)
    // The windows' axis moves to just before the rows' axis: [B, …, W, rows, …].
    var perm = Array(0..<graph.type(of: split).rank)
    perm.remove(at: wa)
    let m = perm.firstIndex(of: tt)!
    perm.insert(wa, at: m)
    let moved = perm == Array(0..<perm.count) ? split : try emit(.transpose(perm), [split], name: name)[0]
    let ms = graph.type(of: moved).shape
    let merged = try emit(.reshape(Array(ms[..<m]) + [ms[m] * ms[m + 1]] + Array(ms[(m + 2)...])), [moved], name: name)[0]
    return (merged, m, perm)
  }

  /// The inverse of `toWindowRows`: back to `like`'s shape, with `rows` rows per window at
  /// `rowsAxis` when given.
  mutating func fromWindowRows(
    _ x: ValueID, axis m: Int, perm: [Int], like: ValueID, rows: Int? = nil, rowsAxis: Int, name: String
  ) throws -> ValueID {
    var target = graph.type(of: like).shape
    if let rows { target[rowsAxis] = rows }
    let s = graph.type(of: x).shape
    let per = target[rowsAxis]
    let unmerged = try emit(.reshape(Array(s[..<m]) + [s[m] / per, per] + Array(s[(m + 1)...])), [x], name: name)[0]
    var inverse = [Int](repeating: 0, count: perm.count)
    for (i, p) in perm.enumerated() { inverse[p] = i }
    let back = inverse == Array(0..<perm.count) ? unmerged : try emit(.transpose(inverse), [unmerged], name: name)[0]
    return try emit(.reshape(target), [back], name: name)[0]
  }

  /// Rows `idx` (a per-window list, `MaskWindows`) of every window of `x` along `axis`.
  mutating func windowGather(_ x: ValueID, axis t: Int, _ lay: WindowAxes, _ idx: ValueID, _ w: MaskWindows, batch: Int, name: String) throws -> ValueID {
    let (flat, m, perm) = try toWindowRows(x, axis: t, lay, w, batch: batch, name: name)
    let g = try emit(.gatherRows(axis: m), [flat, idx], name: name)[0]
    return try fromWindowRows(g, axis: m, perm: perm, like: x, rows: graph.type(of: idx).shape[0] / w.windows, rowsAxis: t, name: name)
  }

  /// 0 for a real kept row of each window's list, −1e9 for its padding (flat, windows·rows).
  mutating func windowPaddingBias(_ w: MaskWindows, kept: ValueID) throws -> ValueID {
    if let b = windowKeyBias[w.id] { return b }
    let b = try padScores(kept, name: "sbp.window_key_bias.\(w.id)")
    windowKeyBias[w.id] = b
    return b
  }

  /// A bias over (query, key) pairs read by a windowed core, as [windows, heads, rows, keys]
  /// for the half's per-window lists: `aligned` is its shape right-aligned to the node's
  /// output, whose leading axes are [B·windows] or, folded, [B, windows].
  mutating func windowBias(_ b: ValueID, aligned: [Int], folded: Bool, _ w: MaskWindows, queries: ValueID, keys: ValueID?, name: String) throws -> ValueID? {
    let r = aligned.count, n = w.size
    guard aligned[0] == 1, r == (folded ? 5 : 4) else { return nil }
    let (n1, n2) = (aligned[r - 2], aligned[r - 1])
    let wdim = folded ? aligned[1] : 1, heads = aligned[r - 3]
    var x = try emit(.reshape([wdim, heads, n1, n2]), [b], name: name)[0]
    if wdim == 1 { x = try emit(.expand([w.windows, heads, n1, n2]), [x], name: name)[0] }
    func rowsOf(_ x: ValueID, _ idx: ValueID, columns: Bool) throws -> ValueID {
      // [W, h, a, c] → [h, W, a, c] (rows) or [h, W, c, a] (columns), gather per window, back.
      let p = columns ? [1, 0, 3, 2] : [1, 0, 2, 3]
      let moved = try emit(.transpose(p), [x], name: name)[0]
      let s = graph.type(of: moved).shape
      let flat = try emit(.reshape([s[0], s[1] * s[2], s[3]]), [moved], name: name)[0]
      let g = try emit(.gatherRows(axis: 1), [flat, idx], name: name)[0]
      let k = graph.type(of: idx).shape[0] / w.windows
      let back = try emit(.reshape([s[0], s[1], k, s[3]]), [g], name: name)[0]
      return try emit(.transpose(p), [back], name: name)[0]
    }
    if n1 == n { x = try rowsOf(x, queries, columns: false) }
    if let keys, n2 == n { x = try rowsOf(x, keys, columns: true) }
    return x
  }

  /// Copies the core `region` for one half with q, k, v substituted: reshapes keep their
  /// leading axes and take the half's (queries, keys) sizes; operands over (query, key)
  /// pairs are read per window at the half's rows (and, for kept keys, columns), applied to
  /// the scores with the windows on an axis of their own; `keyBias` (flat, windows·keys)
  /// masks padding keys before the softmax. `layout` is how q holds the windows.
  mutating func cloneWindowed(
    _ region: [Int], sources: Set<ValueID>, _ sub: [ValueID: ValueID], suffix: String, window w: MaskWindows, batch: Int,
    layout qa: WindowAxes, queries: ValueID, keys: ValueID?, keyBias: ValueID?
  ) throws -> ValueID {
    var map = sub
    let inside = Set(region.flatMap { graph.nodes[$0].outputs }).union(sources)
    /// The windows' axis of a score-shaped value: folded into axis 0 (nil), or its own.
    func windowAxis(_ s: [Int]) throws -> Int? {
      if qa.merged {
        // Folded into the batch, or unfolded by the model itself (Swin's shift mask is added
        // to [B, windows, heads, q, k]).
        if s.first == batch * w.windows { return nil }
        if s.count >= 2, s[0] == batch, s[1] == w.windows { return 1 }
      } else if s.count > qa.axis, s[0] == batch, s[qa.axis] == w.windows {
        return qa.axis
      }
      throw PassError("insert-sbp: a windowed attention's scores \(s) do not hold the batch's \(w.windows) windows where its queries do")
    }
    /// Applies `f(act, window axis)`, with B·windows unfolded to [B, windows] for the call.
    func unfolded(_ act: ValueID, _ f: (ValueID, Int) throws -> ValueID) throws -> ValueID {
      let s = graph.type(of: act).shape
      if let a = try windowAxis(s) { return try f(act, a) }
      let v = try emit(.reshape([batch, w.windows] + s.dropFirst()), [act], name: "\(suffix).fold")[0]
      let y = try f(v, 1)
      return try emit(.reshape([s[0]] + graph.type(of: y).shape.dropFirst(2)), [y], name: "\(suffix).unfold")[0]
    }
    var last: ValueID?
    for i in region {
      let n = graph.nodes[i]
      guard n.inputs.contains(where: { map[$0] != nil }) else { continue }
      var ins = n.inputs.map { map[$0] ?? $0 }
      let out: ValueID
      if case .reshape(let shape) = n.op {
        let s = graph.type(of: ins[0]).shape
        out = try emit(.reshape(Array(shape.dropLast(2)) + s.suffix(2)), ins, name: "\(n.name).\(suffix)", attrs: n.attrs)[0]
      } else if let j = n.inputs.indices.first(where: { !inside.contains(n.inputs[$0]) && graph.type(of: n.inputs[$0]).elementCount > 1 }),
        n.op.isElementwise, n.inputs.count == 2
      {
        let o = graph.type(of: n.outputs[0])
        let shape = graph.type(of: n.inputs[j]).shape
        let aligned = [Int](repeating: 1, count: o.rank - shape.count) + shape
        let axis = try windowAxis(o.shape)
        guard axis == nil || (axis == 1 && o.rank == 5),
          let bias = try windowBias(n.inputs[j], aligned: aligned, folded: axis != nil, w, queries: queries, keys: keys, name: "\(n.name).\(suffix).bias")
        else {
          throw PassError(
            "insert-sbp: the windowed attention reads an operand at '\(n.name)' that is not a bias shared by the batch over (query, key) pairs")
        }
        let a = 1 - j
        out = try unfolded(ins[a]) { act, _ in
          var xs = ins
          xs[a] = act
          xs[j] = bias
          return try emit(n.op, xs, name: "\(n.name).\(suffix)", attrs: n.attrs)[0]
        }
      } else {
        if case .softmax = n.op, let keyBias {
          ins[0] = try unfolded(ins[0]) { act, a in
            // [windows, 1 …, keys], with the windows on the scores' windows axis.
            let r = graph.type(of: act).rank, k = graph.type(of: act).shape[r - 1]
            let view = try reshape(keyBias, to: [w.windows] + [Int](repeating: 1, count: r - a - 2) + [k], name: "\(n.name).\(suffix).key_bias")
            return try emit(.add, [act, view], name: "\(n.name).\(suffix).key_bias")[0]
          }
        }
        out = try emit(n.op, ins, name: "\(n.name).\(suffix)", attrs: n.attrs)[0]
      }
      map[n.outputs[0]] = out
      last = out
    }
    guard let last else { throw PassError("insert-sbp: the windowed attention core is empty") }
    return last
  }

  /// `v` before any scaling by a scalar (q·scale, k/√d): the split gathers the unscaled rows.
  func throughScaling(_ v: ValueID) -> ValueID {
    var v = v
    while let p = producer[v], [.mul, .div].contains(graph.nodes[p].op),
      graph.nodes[p].inputs.count == 2, graph.type(of: graph.nodes[p].inputs[1]).elementCount == 1,
      graph.type(of: graph.nodes[p].inputs[0]) == graph.type(of: v)
    {
      v = graph.nodes[p].inputs[0]
    }
    return v
  }

  /// 0 for a real kept row, −1e9 for a padding row: added to attention scores so that no query
  /// attends to a padding key.
  mutating func paddingBias(stage: Int, kept: ValueID) throws -> ValueID {
    if let b = keyBias[stage] { return b }
    let b = try padScores(kept, name: "sbp.key_bias.\(stage)")
    keyBias[stage] = b
    return b
  }

  /// 0 where an index list holds a row, −1e9 where it is padded (−1).
  mutating func padScores(_ kept: ValueID, name n: String) throws -> ValueID {
    let minus1 = try emit(.constant(Literal(type: TensorType(.i64, []), elements: .ints([-1]))), [], name: n)[0]
    let pad = try emit(.equal, [kept, minus1], name: n)[0]
    let big = try emit(.constant(Literal(f32: [-1e9], shape: [])), [], name: n)[0]
    let zero = try emit(.constant(Literal(f32: [0], shape: [])), [], name: n)[0]
    return try emit(.select, [pad, big, zero], name: n)[0]
  }

  /// The operands of an attention-core node that may be biases over its tokens: all of them,
  /// but a linear's weight and bias (talking heads' mix of the heads), which every half reads
  /// whole.
  func outsideOperands(_ n: Node) -> [ValueID] {
    if case .linear = n.op { return [n.inputs[0]] }
    return n.inputs
  }

  /// Appends a copy of every node of `region` that depends on a substituted value; nodes that do
  /// not are shared. With `keyBias`, the bias is added to the softmax's operand. An operand
  /// from outside the region that spans the `tokens` query and key axes (a position bias) is
  /// read at rows `queries` and, when given, columns `keys`.
  mutating func clone(
    _ region: [Int], sources: Set<ValueID>, substituting sub: [ValueID: ValueID], suffix: String, keyBias: ValueID?, tokens: Int,
    queries: ValueID, keys: ValueID?
  ) throws -> [ValueID: ValueID] {
    var map = sub
    // q, k and v are the core's own inputs, whole where a half does not substitute them.
    let inside = Set(region.flatMap { graph.nodes[$0].outputs }).union(sources)
    for i in region {
      let n = graph.nodes[i]
      guard n.inputs.contains(where: { map[$0] != nil }) else { continue }
      var ins = n.inputs.map { map[$0] ?? $0 }
      let operands = Set(outsideOperands(n))
      for (j, x) in n.inputs.enumerated() where operands.contains(x) && !inside.contains(x) && map[x] == nil && graph.type(of: x).elementCount > 1 {
        let shape = graph.type(of: x).shape, r = shape.count
        var b = x
        if shape[r - 2] == tokens { b = try emit(.gatherRows(axis: r - 2), [b, queries], name: "\(n.name).\(suffix).bias")[0] }
        if let keys, shape[r - 1] == tokens { b = try emit(.gatherRows(axis: r - 1), [b, keys], name: "\(n.name).\(suffix).bias")[0] }
        ins[j] = b
      }
      if case .softmax = n.op, let keyBias {
        ins[0] = try emit(.add, [ins[0], keyBias], name: "\(n.name).\(suffix).key_bias")[0]
      }
      let outs = try emit(n.op, ins, name: "\(n.name).\(suffix)", attrs: n.attrs)
      for (o, c) in zip(n.outputs, outs) { map[o] = c }
    }
    return map
  }

  // MARK: Downsamplers and helpers

  /// Keeps `y`'s forward and lets gradient through only at kept positions of token axes `axes`.
  mutating func maskGradient(of y: ValueID, axes: TokenAxes, stage: Int, name: String) throws {
    guard let (kept, dropped) = try gridIndices(stage) else { return }
    let shape = graph.type(of: y).shape
    // A view of its own, not the shared one: every other reader of y, a split's view
    // included, must read the masked output.
    let ym = try emit(.reshape(Self.merged(shape, axes)), [y], name: name + ".sbp.merge")[0]
    let k = try emit(.gatherRows(axis: axes[0]), [ym, kept], name: name + ".sbp.kept")[0]
    let d = try emit(.gatherRows(axis: axes[0]), [ym, dropped], name: name + ".sbp.dropped")[0]
    let ds = try emit(.stopGradient, [d], name: name + ".sbp.dropped.stop")[0]
    let sc = try emit(
      .scatterRows(axis: axes[0], size: Self.merged(shape, axes)[axes[0]]), [k, kept, ds, dropped], name: name + ".sbp.scatter",
      attrs: [Annotation.role: .string("downsample"), Annotation.stage: .int(stage)])[0]
    let out = try reshape(sc, to: shape, name: name + ".sbp.unmerge")
    let merge = graph.nodes.indices.filter { graph.nodes[$0].outputs == [ym] }
    graph.replaceUses(of: y, with: out, except: Set(merge))
  }

  /// A downsampler `conv(transpose(layer_norm(t)))` whose stride equals its kernel maps each
  /// non-overlapping f×f patch on its own: rows are patches. Split as Algorithm 1 splits the
  /// conv, with the per-pixel norm inside each patch row (its dropped pixels reach the loss
  /// only through dropped patches): kept patches through norm and conv-as-linear with
  /// gradient, dropped ones under stop_gradient. The backward then keeps only the kept
  /// patches' norm input. Returns false when the pattern does not hold.
  mutating func splitPatchDownsampler(_ conv: Node, stage: Int) throws -> Bool {
    guard case .conv(let geo) = conv.op, geo.group == 1, geo.pads.allSatisfy({ $0 == 0 }), geo.dilations.allSatisfy({ $0 == 1 }),
      let (kept, dropped) = try gridIndices(stage)
    else { return false }
    let w = graph.type(of: conv.inputs[1]).shape
    guard w.count == 4, w[2] == w[3], geo.strides == [w[2], w[3]], let tp = producer[conv.inputs[0]],
      graph.nodes[tp].op == .transpose([0, 3, 1, 2]), let lp = producer[graph.nodes[tp].inputs[0]],
      case .layerNorm(3, let eps) = graph.nodes[lp].op
    else { return false }
    let norm = graph.nodes[lp]
    let t = norm.inputs[0]
    let (b, h, wd, c) = (graph.type(of: t).shape[0], graph.type(of: t).shape[1], graph.type(of: t).shape[2], graph.type(of: t).shape[3])
    let f = w[2], co = w[0]
    guard graph.type(of: t).rank == 4, h % f == 0, wd % f == 0, graph.type(of: conv.outputs[0]).shape == [b, co, h / f, wd / f] else {
      return false
    }
    let (ho, wo) = (h / f, wd / f)
    let name = conv.name
    let r1 = try reshape(t, to: [b, ho, f, wo, f, c], name: name + ".sbp.patches")
    let r2 = try emit(.transpose([0, 1, 3, 2, 4, 5]), [r1], name: name + ".sbp.patches")[0]
    let rows = try reshape(r2, to: [b, ho * wo, f, f, c], name: name + ".sbp.patches")
    // The weight, not the patches, is put in the patches' (f, f, c) order: it is a few
    // thousand floats, where the patches are the whole activation (and its backward).
    let wp = try emit(.transpose([0, 2, 3, 1]), [conv.inputs[1]], name: name + ".sbp.weight")[0]
    let wf = try reshape(wp, to: [co, f * f * c], name: name + ".sbp.weight")
    var halves: [ValueID] = []
    for (idx, suffix) in [(kept, "kept"), (dropped, "dropped")] {
      let g = try emit(.gatherRows(axis: 1), [rows, idx], name: "\(name).sbp.\(suffix)")[0]
      let ln = try emit(
        .layerNorm(axis: 4, epsilon: eps), [g] + norm.inputs.dropFirst(), name: "\(norm.name).sbp.\(suffix)", attrs: norm.attrs)[0]
      let k = graph.type(of: idx).shape[0]
      let pf = try reshape(ln, to: [b, k, f * f * c], name: "\(name).sbp.\(suffix)")
      var y = try emit(
        .linear(axis: 2, layout: .outIn), [pf, wf] + conv.inputs.dropFirst(2), name: "\(name).sbp.\(suffix)", attrs: conv.attrs)[0]
      if suffix == "dropped" { y = try emit(.stopGradient, [y], name: name + ".sbp.dropped.stop")[0] }
      halves.append(y)
    }
    let sc = try emit(
      .scatterRows(axis: 1, size: ho * wo), [halves[0], kept, halves[1], dropped], name: name + ".sbp.scatter",
      attrs: [Annotation.role: .string("downsample"), Annotation.stage: .int(stage)])[0]
    let back = try emit(.transpose([0, 2, 1]), [sc], name: name + ".sbp.unpatch")[0]
    graph.replaceUses(of: conv.outputs[0], with: try reshape(back, to: [b, co, ho, wo], name: name + ".sbp.unpatch"))
    return true
  }

  /// The stage's kept and dropped rows as positions of its H×W grid alone, for a downsampler's
  /// output, which has no leading tokens: the stage's own indices count its prefix tokens
  /// first (CoaT's class token), so they drop those and shift the rest; padding (−1) stays.
  /// Both are gathers (the runtime copies indices as bytes; it does no integer arithmetic).
  mutating func gridIndices(_ stage: Int) throws -> (kept: ValueID, dropped: ValueID)? {
    guard let (kept, dropped) = indexInputs[stage] else { return nil }
    guard let st = layout.stage(stage), st.prefix > 0 else { return (kept, dropped) }
    if let cached = gridIndexInputs[stage] { return cached }
    let n = "sbp.grid_rows.\(stage)"
    let rows = graph.type(of: kept).shape[0], cells = st.grid.reduce(1, *)
    func ints(_ v: [Int]) -> Op { .constant(Literal(type: TensorType(.i64, [v.count]), elements: .ints(v.map(Int64.init)))) }
    let tail = try emit(ints(Array(st.prefix..<rows)), [], name: n)[0]
    // table[prefix + i] = i; its last entry, which index −1 reads, is −1 again.
    let table = try emit(ints([Int](repeating: -1, count: st.prefix) + Array(0..<cells) + [-1]), [], name: n)[0]
    let spatial = try emit(.gather(axis: 0), [kept, tail], name: n)[0]
    let out = (
      try emit(.gather(axis: 0), [table, spatial], name: n)[0], try emit(.gather(axis: 0), [table, dropped], name: n)[0]
    )
    gridIndexInputs[stage] = out
    return out
  }

  mutating func reshape(_ v: ValueID, to shape: [Int], name: String) throws -> ValueID {
    guard graph.type(of: v).shape != shape else { return v }
    // One view per value and shape: two splits reading one value (a bottleneck's first 1×1
    // conv and its projection shortcut) then gather the same kept rows, which
    // merge-duplicate-gathers folds into one saved copy.
    let key = "view:\(v.raw):\(shape)"
    if let view = operandViews[key] { return view }
    let view = try emit(.reshape(shape), [v], name: name)[0]
    operandViews[key] = view
    return view
  }

}
