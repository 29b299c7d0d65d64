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

/// Where a windowed core's tensor holds its windows: folded into the batch (axis 0 is
/// B·windows, as in Swin) or on an axis of their own after the batch (Twins' axis 1, NesT's
/// axis 2, behind the heads).
struct WindowAxes: Equatable {
  var merged: Bool
  var axis: Int
}

/// Traces the data movement between a unit's token grid and its window-partitioned rows,
/// whatever ops make it (reshapes and transposes for the partition, slices and concats or
/// gathers for the cyclic shift, pads for grids that are not a whole number of windows): the
/// mechanism does not pattern-match Swin's code, it follows each element back to where it
/// was read from. Elements are pulled one at a time, from the result to the source, so a
/// trace costs a few operations per row it asks about, not per element of the tensors.
struct WindowTrace {
  let g: Graph
  let producer: [ValueID: Int]
  let source: ValueID
  /// Values computed from `source` on the way to the traced result.
  let reached: Set<ValueID>

  init(_ g: Graph, producer: [ValueID: Int], from source: ValueID, to sink: ValueID) {
    self.g = g
    self.producer = producer
    self.source = source
    reached = Set(g.nodesBetween(sources: [source], sink: sink, producer: producer).flatMap { g.nodes[$0].outputs }).union([source])
  }

  enum Pull: Equatable {
    /// Element `flat` of the source.
    case element(Int)
    /// A value no source element made (a constant pad).
    case padding
    /// An op the trace does not follow.
    case unknown(String)
  }

  static func rowMajor(_ s: [Int]) -> [Int] {
    var st = [Int](repeating: 1, count: s.count)
    for d in stride(from: s.count - 2, through: 0, by: -1) { st[d] = st[d + 1] * s[d + 1] }
    return st
  }

  static func unravel(_ flat: Int, _ s: [Int]) -> [Int] {
    let st = rowMajor(s)
    return s.indices.map { (flat / st[$0]) % s[$0] }
  }

  static func ravel(_ i: [Int], _ s: [Int]) -> Int {
    var f = 0
    for d in s.indices { f = f * s[d] + i[d] }
    return f
  }

  func literal(_ v: ValueID) -> [Int]? {
    guard let p = producer[v], case .constant(let l) = g.nodes[p].op else { return nil }
    return l.ints.map { Int($0) }
  }

  /// The source element element `flat` of `v` copies (or, through a row-wise op — a
  /// projection, a norm over a row's channels — the first element of the row it is
  /// computed from, with `rowwise`).
  func pull(_ v: ValueID, _ flat: Int, rowwise: Bool = false) -> Pull {
    var v = v, flat = flat
    while v != source {
      guard reached.contains(v), let p = producer[v] else { return .unknown("a value not computed from the token grid") }
      let n = g.nodes[p]
      let out = g.type(of: v).shape, o = Self.unravel(flat, out)
      // The data operand: the first input for data movement, else the one the trace reached.
      guard let x = reached.contains(n.inputs[0]) ? n.inputs[0] : n.inputs.first(where: { reached.contains($0) }) else {
        return .unknown("\(n.op.name) '\(n.name)'")
      }
      let xs = g.type(of: x).shape
      var i = o
      switch n.op {
      case .reshape, .squeeze, .unsqueeze:
        v = n.inputs[0]
        continue
      case .transpose(let perm):
        for d in perm.indices { i[perm[d]] = o[d] }
      case .slice(let spec):
        for (k, a) in spec.axes.enumerated() {
          let a = a < 0 ? a + xs.count : a
          let s0 = spec.starts[k] < 0 ? spec.starts[k] + xs[a] : spec.starts[k]
          i[a] = Swift.min(Swift.max(s0, 0), xs[a] - (spec.steps[k] < 0 ? 1 : 0)) + o[a] * spec.steps[k]
        }
      case .pad(let pads, .constant, _):
        guard pads.count == 2 * xs.count else { return .unknown("pad '\(n.name)'") }
        for d in xs.indices {
          i[d] = o[d] - pads[d]
          if i[d] < 0 || i[d] >= xs[d] { return .padding }
        }
      case .split(let axis, let sizes):
        guard let k = n.outputs.firstIndex(of: v) else { return .unknown("split '\(n.name)'") }
        i[axis] = sizes[..<k].reduce(0, +) + o[axis]
      case .gather(let axis):
        guard n.inputs[0] == x, let idx = literal(n.inputs[1]), g.type(of: n.inputs[1]).rank == 1, out.count == xs.count else {
          return .unknown("gather '\(n.name)'")
        }
        i[axis] = idx[o[axis]] < 0 ? idx[o[axis]] + xs[axis] : idx[o[axis]]
      case .concat(let axis):
        var at = o[axis]
        var which = n.inputs[0]
        for u in n.inputs {
          let len = g.type(of: u).shape[axis]
          if at < len {
            which = u
            break
          }
          at -= len
        }
        guard reached.contains(which) else { return .unknown("concat '\(n.name)' of a constant") }
        i[axis] = at
        v = which
        flat = Self.ravel(i, g.type(of: which).shape)
        continue
      case .expand:
        let lead = out.count - xs.count
        guard lead >= 0 else { return .unknown("expand '\(n.name)'") }
        i = xs.indices.map { xs[$0] == 1 ? 0 : o[$0 + lead] }
      case .linear(let axis, _) where rowwise && axis == xs.count - 1:
        i[axis] = 0
      case .reduceSum(let axes, true) where rowwise && axes == [xs.count - 1], .reduceMean(let axes, true) where rowwise && axes == [xs.count - 1]:
        i[xs.count - 1] = 0
      case _ where rowwise && n.op.isElementwise && xs == out && n.inputs.filter({ reached.contains($0) }).allSatisfy({ g.type(of: $0).shape == out || g.type(of: $0).shape.last == 1 }):
        // A full-shape operand carries the row (a norm's divisor broadcast over it does not move it).
        let full = n.inputs.first { reached.contains($0) && g.type(of: $0).shape == out }!
        v = full
        continue
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm, .softmax,
        .pad, .gatherRows, .scatterRows, .reduceMean, .reduceSum, .globalAveragePool, .padGrad, .batchNorm, .batchNormTraining,
        .batchNormGrad, .runningStats, .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad, .stopGradient, .softmaxCrossEntropy,
        .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight,
        .sliceGrad, .gatherGrad, .sgd, .adamw:
        return .unknown("\(n.op.name) '\(n.name)'")
      }
      v = x
      flat = Self.ravel(i, xs)
    }
    return .element(flat)
  }

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
    let batch = s[0]
    // [B·windows, tokens, C]; or the windows and their tokens as several axes each
    // ([B, wh, ww, sh, sw, C] in Twins): the trailing axes before C hold `size` tokens.
    let out = g.type(of: sink).shape
    guard out.count >= 3, out[0] % batch == 0 else {
      return .failure(PassError("the projections' input is not [batch·windows, tokens, channels]"))
    }
    let c = out.last!, lead = Array(out.dropLast())
    let size = size ?? lead.last!
    guard (1..<lead.count).contains(where: { lead[$0...].reduce(1, *) == size }) else {
      return .failure(PassError("the projections' input does not end in the \(size) tokens of a window before its channels"))
    }
    let rows = lead.reduce(1, *) / size, windows = rows / batch
    guard rows % batch == 0, windows >= 1 else { return .failure(PassError("the windows do not divide the batch")) }
    let trace = WindowTrace(g, producer: producer, from: source, to: sink)
    /// The (image, grid position) row r·size + n of the sink reads, or nil for padding.
    func position(_ row: Int, channel: Int) -> Result<(Int, Int)?, PassError> {
      switch trace.pull(sink, row * c + channel) {
      case .padding: return .success(nil)
      case .unknown(let what): return .failure(PassError("the window partition runs \(what), which moves no rows (only data movement can partition windows)"))
      case .element(let f):
        let i = unravel(f, s)
        var t = 0
        for a in tokenAxes { t = t * s[a] + i[a] }
        return .success((i[0], t))
      }
    }
    var table = [Int](repeating: -1, count: windows * size)
    var seen = Set<Int>()
    // The first image's rows make the table; the last image's must read the same positions
    // of their own image, and a row's last channel the same token as its first.
    for (b, check) in [(0, false), (batch - 1, true)] where !check || batch > 1 {
      for k in 0..<(windows * size) {
        let row = b * windows * size + k
        let first: (Int, Int)?, last: (Int, Int)?
        switch (position(row, channel: 0), position(row, channel: c - 1)) {
        case (.failure(let e), _), (_, .failure(let e)): return .failure(e)
        case (.success(let p), .success(let q)):
          first = p
          last = q
        }
        guard first?.0 == last?.0, first?.1 == last?.1 else {
          return .failure(PassError("the window partition mixes channels of different tokens in one row"))
        }
        guard first == nil || first!.0 == b else { return .failure(PassError("the window partition moves tokens between images")) }
        let pos = first?.1 ?? -1
        if !check {
          table[k] = pos
          if pos >= 0, !seen.insert(pos).inserted { return .failure(PassError("the windows overlap: a token sits in two of them")) }
        } else if table[k] != pos {
          return .failure(PassError("the window partition differs between images"))
        }
      }
    }
    return .success(WindowTable(windows: windows, size: size, table: table))
  }

  /// How `value` (q, k or v of a windowed core, tokens on `tokenAxis`) holds the windows of
  /// the projections' input `sink`: each probed element is pulled back, through the
  /// projection (row by row) and the data movement after it, to the row it was computed
  /// from, and each layout the rows could have is tested; nil when none fits. The probes are
  /// every index of every axis (the others at 0 and at their last index) and a spread of
  /// others.
  static func axes(
    _ g: Graph, producer: [ValueID: Int], sink: ValueID, value: ValueID, tokenAxis t: Int, batch: Int, windows: Int, size: Int
  ) -> WindowAxes? {
    let trace = WindowTrace(g, producer: producer, from: sink, to: value)
    let s = g.type(of: value).shape, c0 = g.type(of: sink).shape.last ?? 1
    guard t < s.count, s.count >= 2 else { return nil }
    let total = s.reduce(1, *)
    var probes: [[Int]] = []
    for a in s.indices {
      for k in 0..<s[a] {
        var lo = [Int](repeating: 0, count: s.count), hi = s.map { $0 - 1 }
        lo[a] = k
        hi[a] = k
        probes += [lo, hi]
      }
    }
    for k in 0..<256 { probes.append(unravel((k &* 2_654_435_761) % total, s)) }
    var rows: [([Int], Int)] = []
    for p in probes {
      guard case .element(let f) = trace.pull(value, ravel(p, s), rowwise: true) else { return nil }
      rows.append((p, f / c0))
    }
    func fits(_ id: ([Int]) -> Int) -> Bool { rows.allSatisfy { id($0.0) == $0.1 } }
    if s[0] == batch * windows, fits({ $0[0] * size + $0[t] }) { return WindowAxes(merged: true, axis: 0) }
    for a in 1..<s.count where a != t && s[0] == batch && s[a] == windows {
      if fits({ ($0[0] * windows + $0[a]) * size + $0[t] }) { return WindowAxes(merged: false, axis: a) }
    }
    return nil
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
