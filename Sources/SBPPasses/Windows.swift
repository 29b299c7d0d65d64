// Windows.swift: where each row of a window-partitioned tensor sits on its stage's token grid (Swin's windowed attention).
import SBPIR

/// The window layout of one attention unit: row n of window w of the projections' input
/// ([B·windows, size, C]) is grid position `table[w·size + n]` of the unit's token grid
/// (row-major, without prefix tokens), or −1 for a row the partition padded.
struct WindowTable: Equatable {
  var windows: Int
  var size: Int
  var table: [Int]
}

/// Traces the data movement between a unit's token grid and its window-partitioned rows on
/// token ids, whatever ops make it (reshapes and transposes for the partition, slices and
/// concats or gathers for the cyclic shift, pads for grids that are not a whole number of
/// windows): the mechanism does not pattern-match Swin's code, it runs it on ids.
enum WindowTrace {
  /// Ids of the elements of one value: batch·tokens + token, or −1 where a pad filled.
  typealias Ids = (shape: [Int], ids: [Int32])

  /// The table for the rows of `sink` ([B·windows, size, C], or with the windows and their
  /// `size` tokens spread over more axes) computed from `source`, whose token axes are
  /// `tokenAxes` and whose axis 0 is the batch; the reason when the path is not a window
  /// partition.
  static func table(
    _ g: Graph, producer: [ValueID: Int], source: ValueID, tokenAxes: [Int], sink: ValueID, size: Int? = nil
  ) -> Result<WindowTable, PassError> {
    let s = g.type(of: source).shape
    guard s.count >= 2, let t0 = tokenAxes.first, t0 > 0, tokenAxes.allSatisfy({ $0 < s.count }) else {
      return .failure(PassError("the token grid's layout is not known"))
    }
    let tokens = tokenAxes.reduce(1) { $0 * s[$1] }, batch = s[0]
    guard s.reduce(1, *) < 1 << 28, batch * tokens < Int(Int32.max) else {
      return .failure(PassError("the window partition is too large to trace"))
    }
    // Source ids: b·tokens + the merged token index, the same for every channel.
    var ids = [Int32](repeating: 0, count: s.reduce(1, *))
    let strides = rowMajor(s)
    for flat in ids.indices {
      var t = 0
      for a in tokenAxes { t = t * s[a] + (flat / strides[a]) % s[a] }
      ids[flat] = Int32((flat / strides[0]) * tokens + t)
    }
    var values: [ValueID: Ids] = [source: (s, ids)]
    for i in g.nodesBetween(sources: [source], sink: sink, producer: producer) {
      let n = g.nodes[i]
      guard let x = values[n.inputs[0]], n.inputs.dropFirst().allSatisfy({ values[$0] != nil || isConstant($0, g, producer) }) else {
        return .failure(PassError("the window partition reads \(n.op.name) '\(n.name)' on more than the token grid"))
      }
      let outs = n.outputs.map { g.type(of: $0).shape }
      guard let r = step(n.op, x, n.inputs.dropFirst().map { values[$0] }, constant: n.inputs.count > 1 ? literal(n.inputs[1], g, producer) : nil, outs: outs)
      else {
        return .failure(PassError("the window partition runs \(n.op.name) '\(n.name)', which moves no rows (only data movement can partition windows)"))
      }
      for (o, v) in zip(n.outputs, r) { values[o] = v }
    }
    // [B·windows, tokens, C]; or the windows and their tokens as several axes each
    // ([B, wh, ww, sh, sw, C] in Twins): the trailing axes before C hold `size` tokens.
    guard let out = values[sink], out.shape.count >= 3, out.shape[0] % batch == 0 else {
      return .failure(PassError("the projections' input is not [batch·windows, tokens, channels]"))
    }
    let c = out.shape.last!, lead = Array(out.shape.dropLast())
    let size = size ?? lead.last!
    guard (1..<lead.count).contains(where: { lead[$0...].reduce(1, *) == size }) else {
      return .failure(PassError("the projections' input does not end in the \(size) tokens of a window before its channels"))
    }
    let rows = lead.reduce(1, *) / size
    let windows = rows / batch
    var table = [Int](repeating: -2, count: windows * size)
    var seen = Set<Int>()
    for r in 0..<rows {
      for n in 0..<size {
        let base = (r * size + n) * c
        let id = Int(out.ids[base])
        guard (1..<c).allSatisfy({ out.ids[base + $0] == out.ids[base] }) else {
          return .failure(PassError("the window partition mixes channels of different tokens in one row"))
        }
        let (b, w) = (r / windows, r % windows)
        let pos = id < 0 ? -1 : id % tokens
        guard id < 0 || id / tokens == b else { return .failure(PassError("the window partition moves tokens between images")) }
        let k = w * size + n
        if b == 0 {
          table[k] = pos
          if pos >= 0, !seen.insert(pos).inserted { return .failure(PassError("the windows overlap: a token sits in two of them")) }
        } else if table[k] != pos {
          return .failure(PassError("the window partition differs between images"))
        }
      }
    }
    return .success(WindowTable(windows: windows, size: size, table: table))
  }

  static func rowMajor(_ s: [Int]) -> [Int] {
    var st = [Int](repeating: 1, count: s.count)
    for d in stride(from: s.count - 2, through: 0, by: -1) { st[d] = st[d + 1] * s[d + 1] }
    return st
  }

  static func isConstant(_ v: ValueID, _ g: Graph, _ producer: [ValueID: Int]) -> Bool {
    guard let p = producer[v] else { return false }
    if case .constant = g.nodes[p].op { return true }
    return false
  }

  static func literal(_ v: ValueID, _ g: Graph, _ producer: [ValueID: Int]) -> [Int]? {
    guard let p = producer[v], case .constant(let l) = g.nodes[p].op else { return nil }
    return l.ints.map { Int($0) }
  }

  /// One data-movement op on ids: each output element takes the id of the input element it
  /// copies (−1 for a constant pad). nil for anything else.
  static func step(_ op: Op, _ x: Ids, _ more: [Ids?], constant: [Int]?, outs: [[Int]]) -> [Ids]? {
    let shape = outs[0], n = shape.reduce(1, *)
    let inStr = rowMajor(x.shape), outStr = rowMajor(shape)
    /// Output element → input element through `source(axis, index) -> input index or nil`.
    func remap(_ shape: [Int], _ source: (Int, Int) -> Int?) -> Ids {
      let os = rowMajor(shape)
      var out = [Int32](repeating: -1, count: shape.reduce(1, *))
      outer: for flat in out.indices {
        var r = 0
        for d in 0..<shape.count {
          guard let i = source(d, (flat / os[d]) % shape[d]) else { continue outer }
          r += i * inStr[d]
        }
        out[flat] = x.ids[r]
      }
      return (shape, out)
    }
    switch op {
    case .reshape, .squeeze, .unsqueeze:
      return [(shape, x.ids)]
    case .transpose(let perm):
      var out = [Int32](repeating: -1, count: n)
      for flat in 0..<n {
        var r = 0
        for d in 0..<shape.count { r += ((flat / outStr[d]) % shape[d]) * inStr[perm[d]] }
        out[flat] = x.ids[r]
      }
      return [(shape, out)]
    case .slice(let spec):
      var start = [Int](repeating: 0, count: shape.count), step = [Int](repeating: 1, count: shape.count)
      for (i, a) in spec.axes.enumerated() {
        step[a] = spec.steps[i]
        start[a] = min(max(spec.starts[i] < 0 ? spec.starts[i] + x.shape[a] : spec.starts[i], 0), x.shape[a] - (step[a] < 0 ? 1 : 0))
      }
      return [remap(shape) { d, o in start[d] + o * step[d] }]
    case .pad(let pads, .constant, _):
      let r = x.shape.count
      guard pads.count == 2 * r else { return nil }
      return [remap(shape) { d, o in
        let i = o - pads[d]
        return i >= 0 && i < x.shape[d] ? i : nil
      }]
    case .split(let axis, let sizes):
      var off = 0, res: [Ids] = []
      for (k, sz) in sizes.enumerated() {
        let o0 = off
        res.append(remap(outs[k]) { d, o in d == axis ? o0 + o : o })
        off += sz
      }
      return res
    case .gather(let axis):
      guard let idx = constant, outs[0].count == x.shape.count, idx.count == shape[axis] else { return nil }
      return [remap(shape) { d, o in d == axis ? (idx[o] < 0 ? idx[o] + x.shape[axis] : idx[o]) : o }]
    case .expand:
      // Broadcast: size-1 axes (right-aligned) repeat their one element.
      let lead = shape.count - x.shape.count
      guard lead >= 0 else { return nil }
      let os = rowMajor(shape)
      var out = [Int32](repeating: -1, count: n)
      for flat in 0..<n {
        var r = 0
        for d in 0..<x.shape.count where x.shape[d] != 1 { r += ((flat / os[d + lead]) % shape[d + lead]) * inStr[d] }
        out[flat] = x.ids[r]
      }
      return [(shape, out)]
    case .concat(let axis):
      let parts = [x] + more.compactMap { $0 }
      guard parts.count == more.count + 1 else { return nil }
      var out = [Int32](repeating: -1, count: n)
      let inner = shape[(axis + 1)...].reduce(1, *), outer = shape[..<axis].reduce(1, *)
      var at = 0
      for o in 0..<outer {
        for p in parts {
          let chunk = p.shape[axis] * inner
          out.replaceSubrange(at..<(at + chunk), with: p.ids[(o * chunk)..<((o + 1) * chunk)])
          at += chunk
        }
      }
      return [(shape, out)]
    case .pad, .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv,
      .layerNorm, .softmax, .gatherRows, .scatterRows, .reduceMean, .reduceSum, .globalAveragePool, .padGrad, .batchNorm,
      .batchNormTraining, .batchNormGrad, .runningStats, .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad, .stopGradient,
      .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .convGradInput, .convGradWeight,
      .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw:
      return nil
    }
  }
}

extension WindowTrace {
  /// Block `b`'s windowed attention in a marked graph (its softmax carries `sbp.windows`):
  /// the partition traced from the attention norm's output (or the residual's x) to the
  /// projections' input, the block's stage, the batch and that input; nil when the block has none.
  static func partition(_ g: Graph, producer: [ValueID: Int], block b: Int) throws -> (WindowTable, stage: Int, batch: Int, sink: ValueID)? {
    let nodes = g.nodes.indices.filter { g.nodes[$0].attrs[Annotation.block] == .int(b) }
    func role(_ r: String) -> Node? { nodes.lazy.map { g.nodes[$0] }.first { $0.attrs[Annotation.role] == .string(r) } }
    guard let sm = role("mhsa.softmax"), sm.attrs[Annotation.windows] != nil else { return nil }
    guard let res = role("residual"), case .int(let stage)? = res.attrs[Annotation.stage], case .ints(let axes)? = res.attrs[Annotation.tokenAxes],
      let proj = role("mhsa.qkv") ?? role("mhsa.q")
    else { throw PassError("insert-sbp: block \(b): a windowed attention without its residual, stage or projection; run mark first") }
    let inBlock = Set(nodes.flatMap { g.nodes[$0].outputs })
    guard let source = role("mhsa.norm")?.outputs[0] ?? res.inputs.first(where: { !inBlock.contains($0) }) else {
      throw PassError("insert-sbp: block \(b): the windowed attention's input is not found")
    }
    let size = g.type(of: sm.outputs[0]).shape.last
    switch table(g, producer: producer, source: source, tokenAxes: axes, sink: proj.inputs[0], size: size) {
    case .success(let t): return (t, stage, g.type(of: source).shape[0], proj.inputs[0])
    case .failure(let e): throw PassError("insert-sbp: block \(b): \(e.description)")
    }
  }
}

/// Where a windowed core's tensor holds its windows: folded into the batch (axis 0 is
/// B·windows, as in Swin) or on an axis of their own after the batch (Twins' axis 1, NesT's
/// axis 2, behind the heads).
struct WindowAxes: Equatable {
  var merged: Bool
  var axis: Int
}

extension WindowTrace {
  /// How `value` (q, k or v of a windowed core, tokens on `tokenAxis`) holds the windows of
  /// the projections' input `sink`: found by running the projection (row by row) and the
  /// data movement after it on row ids and testing each layout the ids could have; nil when
  /// none fits.
  static func axes(
    _ g: Graph, producer: [ValueID: Int], sink: ValueID, value: ValueID, tokenAxis t: Int, batch: Int, windows: Int, size: Int
  ) -> WindowAxes? {
    let s0 = g.type(of: sink).shape, c0 = s0.last ?? 1
    guard s0.reduce(1, *) < 1 << 28 else { return nil }
    var values: [ValueID: Ids] = [sink: (s0, (0..<s0.reduce(1, *)).map { Int32($0 / c0) })]
    for i in g.nodesBetween(sources: [sink], sink: value, producer: producer) {
      let n = g.nodes[i]
      guard let x = n.inputs.lazy.compactMap({ values[$0] }).first else { return nil }
      let out = g.type(of: n.outputs[0]).shape
      switch n.op {
      case .linear(let axis, _) where axis == x.shape.count - 1:
        // Row by row: every output channel of a row carries the row's id.
        let ci = x.shape.last!, co = out.last!
        values[n.outputs[0]] = (out, (0..<out.reduce(1, *)).map { x.ids[($0 / co) * ci] })
      case .reduceSum([x.shape.count - 1], true), .reduceMean([x.shape.count - 1], true):
        // Over a row's channels (cosine attention's norms of q and k): the row's id.
        let ci = x.shape.last!
        values[n.outputs[0]] = (out, (0..<out.reduce(1, *)).map { x.ids[$0 * ci] })
      case _ where n.op.isElementwise:
        // Rows keep their ids through element-wise ops; an operand broadcast over the row's
        // channels (a norm) or a constant does not move them.
        guard let full = n.inputs.lazy.compactMap({ values[$0] }).first(where: { $0.shape == out }) else { return nil }
        values[n.outputs[0]] = full
      default:
        guard let x = values[n.inputs[0]], n.inputs.dropFirst().allSatisfy({ values[$0] != nil || isConstant($0, g, producer) }),
          let r = step(n.op, x, n.inputs.dropFirst().map { values[$0] }, constant: n.inputs.count > 1 ? literal(n.inputs[1], g, producer) : nil,
            outs: n.outputs.map { g.type(of: $0).shape })
        else { return nil }
        for (o, v) in zip(n.outputs, r) { values[o] = v }
      }
    }
    guard let v = values[value] else { return nil }
    let s = v.shape, st = rowMajor(s)
    func fits(_ id: (_ index: (Int) -> Int) -> Int) -> Bool {
      for flat in v.ids.indices where Int(v.ids[flat]) != id({ (flat / st[$0]) % s[$0] }) { return false }
      return true
    }
    if s.count > t, s[0] == batch * windows, fits({ $0(0) * size + $0(t) }) { return WindowAxes(merged: true, axis: 0) }
    for a in 1..<s.count where a != t && s[0] == batch && s[a] == windows {
      if fits({ ($0(0) * windows + $0(a)) * size + $0(t) }) { return WindowAxes(merged: false, axis: a) }
    }
    return nil
  }
}
