// ShapeInference.swift: result types of every op from its operand types.

extension SliceSpec {
  /// Resolves ONNX slice bounds (negative indices, clamping, INT64_MAX ends) against `shape`,
  /// so the stored spec is canonical: every axis non-negative, every bound in range.
  public func normalized(for shape: [Int]) throws -> SliceSpec {
    guard starts.count == ends.count, starts.count == axes.count, steps.count == axes.count else {
      throw IRError.type("slice: starts, ends, axes and steps differ in length")
    }
    var out = SliceSpec(starts: [], ends: [], axes: [], steps: [])
    for i in 0..<axes.count {
      guard let ax = normalizeAxis(axes[i], rank: shape.count) else {
        throw IRError.type("slice: axis \(axes[i]) out of range for rank \(shape.count)")
      }
      let dim = shape[ax]
      let step = steps[i]
      guard step != 0 else { throw IRError.type("slice: step is 0") }
      var s = starts[i] < 0 ? starts[i] &+ dim : starts[i]
      var e = ends[i] < 0 ? ends[i] &+ dim : ends[i]
      if step > 0 {
        s = min(max(s, 0), dim)
        e = min(max(e, 0), dim)
      } else {
        s = min(max(s, 0), dim - 1)
        e = min(max(e, -1), dim - 1)
      }
      out.starts.append(s)
      out.ends.append(e)
      out.axes.append(ax)
      out.steps.append(step)
    }
    return out
  }

  /// True when every axis is non-negative and every bound is already clamped, as `normalized` leaves them.
  public func isNormalized(for shape: [Int]) -> Bool {
    guard starts.count == axes.count, ends.count == axes.count, steps.count == axes.count else { return false }
    for i in axes.indices {
      guard axes[i] >= 0, axes[i] < shape.count, steps[i] != 0 else { return false }
      let dim = shape[axes[i]]
      let ok =
        steps[i] > 0
        ? (0...dim).contains(starts[i]) && (0...dim).contains(ends[i])
        : (0...max(dim - 1, 0)).contains(starts[i]) && (-1...max(dim - 1, -1)).contains(ends[i])
      guard ok else { return false }
    }
    return true
  }

  /// Length of the slice along axis entry `i` of a normalized spec.
  func length(_ i: Int) -> Int {
    let s = starts[i], e = ends[i], st = steps[i]
    return st > 0 ? max(0, (e - s + st - 1) / st) : max(0, (s - e - st - 1) / -st)
  }
}

extension Op {
  /// Result types for operand types `t`. Throws an `IRError.type` naming the op and the mismatch.
  public func inferTypes(_ t: [TensorType]) throws -> [TensorType] {
    func fail(_ m: String) -> IRError { IRError.type("\(name): \(m)") }
    func arity(_ lo: Int, _ hi: Int? = nil) throws {
      let hi = hi ?? lo
      guard t.count >= lo, t.count <= hi else {
        throw fail(lo == hi ? "expects \(lo) operands, got \(t.count)" : "expects \(lo) to \(hi) operands, got \(t.count)")
      }
    }
    func axis(_ a: Int, _ rank: Int) throws -> Int {
      guard let n = normalizeAxis(a, rank: rank) else { throw fail("axis \(a) out of range for rank \(rank)") }
      return n
    }
    func checked(_ shape: [Int], _ dtype: DType) throws -> TensorType {
      guard checkedElementCount(shape) != nil else { throw fail("shape \(shape) is negative or too large") }
      return TensorType(dtype, shape)
    }
    /// A product's result dtype: fp32 when an operand is bf16 (bf16 operands, fp32
    /// accumulation: `mixed-precision`), else the operands'.
    func accumulated(_ a: TensorType, _ b: TensorType) throws -> DType {
      guard a.dtype == .bf16 || b.dtype == .bf16 else { return a.dtype }
      guard [DType.f32, .bf16].contains(a.dtype), [DType.f32, .bf16].contains(b.dtype) else {
        throw fail("a bf16 product takes f32 or bf16 operands, got \(a.dtype) and \(b.dtype)")
      }
      return .f32
    }

    switch self {
    case .constant(let lit):
      try arity(0)
      return [lit.type]
    case .add, .sub, .mul, .div, .pow, .equal:
      try arity(2)
      guard let s = broadcastShapes(t[0].shape, t[1].shape) else {
        throw fail("cannot broadcast \(t[0]) with \(t[1])")
      }
      if case .pow = self {
      } else if t[0].dtype != t[1].dtype {
        throw fail("operand dtypes differ: \(t[0].dtype) and \(t[1].dtype)")
      }
      return [try checked(s, self == .equal ? .bool : t[0].dtype)]
    case .select:
      try arity(3)
      guard t[1].dtype == t[2].dtype else { throw fail("branch dtypes differ: \(t[1].dtype) and \(t[2].dtype)") }
      guard let s1 = broadcastShapes(t[0].shape, t[1].shape), let s = broadcastShapes(s1, t[2].shape) else {
        throw fail("cannot broadcast \(t[0]), \(t[1]) and \(t[2])")
      }
      return [try checked(s, t[1].dtype)]
    case .unary:
      try arity(1)
      return [t[0]]
    case .softmax(let a):
      try arity(1)
      _ = try axis(a, t[0].rank)
      return [t[0]]
    case .cast(let to):
      try arity(1)
      return [TensorType(to, t[0].shape)]
    case .matMul:
      try arity(2)
      let a = t[0].shape, b = t[1].shape
      guard a.count >= 2, b.count >= 2 else { throw fail("operands must have rank >= 2, got \(t[0]) and \(t[1])") }
      guard a[a.count - 1] == b[b.count - 2] else { throw fail("inner dimensions differ: \(t[0]) and \(t[1])") }
      guard let batch = broadcastShapes(Array(a.dropLast(2)), Array(b.dropLast(2))) else {
        throw fail("cannot broadcast batch dimensions of \(t[0]) and \(t[1])")
      }
      return [try checked(batch + [a[a.count - 2], b[b.count - 1]], try accumulated(t[0], t[1]))]
    case .linear(let ax, let layout):
      try arity(2, 3)
      let x = t[0], w = t[1]
      let a = try axis(ax, x.rank)
      guard w.rank >= 2, w.shape.dropFirst(2).allSatisfy({ $0 == 1 }) else {
        throw fail("weight must be [out,in] (trailing 1s allowed), got \(w)")
      }
      let (wIn, wOut) = layout == .outIn ? (w.shape[1], w.shape[0]) : (w.shape[0], w.shape[1])
      guard x.shape[a] == wIn else { throw fail("input \(x) has \(x.shape[a]) features on axis \(a), weight \(w) expects \(wIn)") }
      if t.count == 3 {
        guard t[2].elementCount == wOut, t[2].rank <= 1 || t[2].shape.filter({ $0 != 1 }).count <= 1 else {
          throw fail("bias \(t[2]) does not match \(wOut) outputs")
        }
      }
      var s = x.shape
      s[a] = wOut
      return [try checked(s, try accumulated(x, w))]
    case .gemm(let ta, let tb, _, _):
      try arity(2, 3)
      guard t[0].rank == 2, t[1].rank == 2 else { throw fail("operands must be 2-D, got \(t[0]) and \(t[1])") }
      let (m, k) = ta ? (t[0].shape[1], t[0].shape[0]) : (t[0].shape[0], t[0].shape[1])
      let (k2, n) = tb ? (t[1].shape[1], t[1].shape[0]) : (t[1].shape[0], t[1].shape[1])
      guard k == k2 else { throw fail("inner dimensions differ: \(t[0]) and \(t[1])") }
      if t.count == 3, broadcastShapes(t[2].shape, [m, n]) != [m, n] {
        throw fail("bias \(t[2]) does not broadcast to [\(m),\(n)]")
      }
      return [try checked([m, n], try accumulated(t[0], t[1]))]
    case .conv(let g):
      try arity(2, 3)
      let x = t[0], w = t[1]
      let sp = x.rank - 2
      guard sp >= 1, w.rank == x.rank else { throw fail("input \(x) and weight \(w) must be NC… and OI… of equal rank") }
      guard g.strides.count == sp, g.dilations.count == sp, g.pads.count == 2 * sp else {
        throw fail("strides, dilations and pads do not match \(sp) spatial dimensions")
      }
      guard g.group >= 1, x.shape[1] % g.group == 0, w.shape[0] % g.group == 0, w.shape[1] * g.group == x.shape[1] else {
        throw fail("group \(g.group) does not fit input \(x) and weight \(w)")
      }
      if t.count == 3, t[2].elementCount != w.shape[0] { throw fail("bias \(t[2]) does not match \(w.shape[0]) output channels") }
      var s = [x.shape[0], w.shape[0]]
      for i in 0..<sp {  // Attributes come from files: bound them so no arithmetic below can overflow.
        let limit = 1 << 20
        guard (1...limit).contains(g.strides[i]), (1...limit).contains(g.dilations[i]), (0...limit).contains(g.pads[i]),
          (0...limit).contains(g.pads[i + sp])
        else { throw fail("strides and dilations must be in 1...\(limit), pads in 0...\(limit)") }
        let span = g.dilations[i] * (w.shape[2 + i] - 1) + 1
        let padded = x.shape[2 + i] + g.pads[i] + g.pads[i + sp]
        guard padded >= span else { throw fail("kernel \(w) larger than padded input \(x)") }
        s.append((padded - span) / g.strides[i] + 1)
      }
      return [try checked(s, x.dtype)]
    case .layerNorm(let ax, _):
      try arity(2, 3)
      let a = try axis(ax, t[0].rank)
      let n = t[0].shape[a...].reduce(1, *)
      for p in t.dropFirst() where p.elementCount != n {
        throw fail("scale/bias \(p) does not match normalized shape \(Array(t[0].shape[a...]))")
      }
      return [t[0]]
    case .reshape(let s):
      try arity(1)
      guard let n = checkedElementCount(s), n == t[0].elementCount else {
        throw fail("cannot reshape \(t[0]) to \(s)")
      }
      return [TensorType(t[0].dtype, s)]
    case .transpose(let p):
      try arity(1)
      guard p.count == t[0].rank, Set(p) == Set(0..<t[0].rank) else { throw fail("perm \(p) is not a permutation of rank \(t[0].rank)") }
      return [TensorType(t[0].dtype, p.map { t[0].shape[$0] })]
    case .slice(let spec):
      try arity(1)
      let n = spec
      guard n.isNormalized(for: t[0].shape) else { throw fail("spec \(n) is not normalized for \(t[0]) (axes in range, bounds clamped)") }
      guard Set(n.axes).count == n.axes.count else { throw fail("an axis is sliced twice") }
      var s = t[0].shape
      for i in 0..<n.axes.count { s[n.axes[i]] = n.length(i) }
      return [TensorType(t[0].dtype, s)]
    case .gather(let ax):
      try arity(2)
      let a = try axis(ax, t[0].rank)
      guard t[1].dtype == .i64 || t[1].dtype == .i32 else { throw fail("indices must be i64 or i32, got \(t[1].dtype)") }
      return [try checked(Array(t[0].shape[..<a]) + t[1].shape + Array(t[0].shape[(a + 1)...]), t[0].dtype)]
    case .gatherRows(let ax):
      try arity(2)
      guard ax >= 0, ax < t[0].rank else { throw fail("axis \(ax) out of range for rank \(t[0].rank)") }
      guard t[1].dtype == .i64, t[1].rank == 1 else { throw fail("indices must be a 1-D i64 vector, got \(t[1])") }
      var s = t[0].shape
      s[ax] = t[1].shape[0]
      return [TensorType(t[0].dtype, s)]
    case .scatterRows(let ax, let size):
      guard t.count >= 2, t.count % 2 == 0 else { throw fail("expects (data, indices) pairs, got \(t.count) operands") }
      guard ax >= 0, ax < t[0].rank else { throw fail("axis \(ax) out of range for rank \(t[0].rank)") }
      guard size >= 0 else { throw fail("size \(size) is negative") }
      var s = t[0].shape
      s[ax] = size
      for k in stride(from: 0, to: t.count, by: 2) {
        var d = t[k].shape
        guard d.count == s.count, t[k].dtype == t[0].dtype else { throw fail("data \(t[k]) does not match \(t[0])") }
        guard t[k + 1].dtype == .i64, t[k + 1].shape == [d[ax]] else {
          throw fail("indices \(t[k + 1]) must be i64[\(d[ax])] for data \(t[k])")
        }
        d[ax] = size
        guard d == s else { throw fail("data \(t[k]) does not match \(t[0]) outside axis \(ax)") }
      }
      return [try checked(s, t[0].dtype)]
    case .concat(let ax):
      guard !t.isEmpty else { throw fail("needs at least one operand") }
      let a = try axis(ax, t[0].rank)
      var s = t[0].shape
      s[a] = 0
      for x in t {
        guard x.rank == t[0].rank, x.dtype == t[0].dtype else { throw fail("operands \(t[0]) and \(x) differ in rank or dtype") }
        for i in 0..<x.rank where i != a && x.shape[i] != t[0].shape[i] { throw fail("operands \(t[0]) and \(x) differ off axis \(a)") }
        s[a] += x.shape[a]
      }
      return [try checked(s, t[0].dtype)]
    case .split(let ax, let sizes):
      try arity(1)
      let a = try axis(ax, t[0].rank)
      guard !sizes.isEmpty, sizes.allSatisfy({ $0 >= 0 && $0 <= t[0].shape[a] }), sizes.reduce(0, +) == t[0].shape[a] else {
        throw fail("sizes \(sizes) do not sum to \(t[0].shape[a]) on axis \(a)")
      }
      return sizes.map { n in
        var s = t[0].shape
        s[a] = n
        return TensorType(t[0].dtype, s)
      }
    case .squeeze(let axes):
      try arity(1)
      let norm = try Set(axes.map { try axis($0, t[0].rank) })
      for a in norm where t[0].shape[a] != 1 { throw fail("cannot squeeze axis \(a) of \(t[0])") }
      return [TensorType(t[0].dtype, t[0].shape.enumerated().filter { !norm.contains($0.offset) }.map(\.element))]
    case .unsqueeze(let axes):
      try arity(1)
      let r = t[0].rank + axes.count
      let norm = try Set(axes.map { try axis($0, r) })
      guard norm.count == axes.count else { throw fail("repeated axis in \(axes)") }
      var it = t[0].shape.makeIterator()
      return [TensorType(t[0].dtype, (0..<r).map { norm.contains($0) ? 1 : it.next()! })]
    case .expand(let shape):
      try arity(1)
      guard let s = broadcastShapes(t[0].shape, shape) else { throw fail("cannot expand \(t[0]) to \(shape)") }
      return [try checked(s, t[0].dtype)]
    case .reduceMean(let axes, let keep), .reduceSum(let axes, let keep):
      try arity(1)
      let norm = axes.isEmpty ? Set(0..<t[0].rank) : try Set(axes.map { try axis($0, t[0].rank) })
      var s: [Int] = []
      for (i, d) in t[0].shape.enumerated() {
        if !norm.contains(i) { s.append(d) } else if keep { s.append(1) }
      }
      return [TensorType(t[0].dtype, s)]
    case .stopGradient:
      try arity(1)
      return [t[0]]
    case .softmaxCrossEntropy:
      try arity(2)
      // Labels are class indices, or soft targets (a distribution per row: Mixup, CutMix).
      let hard = t[1].shape == [t[0].shape[0]] && (t[1].dtype == .i64 || t[1].dtype == .i32)
      let soft = t[1].shape == t[0].shape && t[1].dtype == .f32
      guard t[0].rank == 2, t[0].dtype == .f32, hard || soft else {
        throw fail("expects logits f32[B,C] and labels i64[B] or soft targets f32[B,C], got \(t[0]) and \(t[1])")
      }
      return [TensorType(.f32, [])]
    case .softmaxCrossEntropyGrad:
      try arity(3)
      guard t[0].rank == 2, t[1].shape == [t[0].shape[0]] || t[1].shape == t[0].shape, t[2].elementCount == 1 else {
        throw fail("expects logits, labels and a scalar dloss")
      }
      return [t[0]]
    case .unaryGrad:
      try arity(2)
      guard t[0] == t[1] else { throw fail("x \(t[0]) and dy \(t[1]) differ") }
      return [t[0]]
    case .softmaxGrad(let a):
      try arity(2)
      _ = try axis(a, t[0].rank)
      guard t[0] == t[1] else { throw fail("y \(t[0]) and dy \(t[1]) differ") }
      return [t[0]]
    case .layerNormGrad(let ax, _) where t.count == 4:
      let a = try axis(ax, t[0].rank)
      guard [DType.f32, .bf16].contains(t[0].dtype), t[0].shape == t[2].shape, t[2].dtype == .f32, t[1].elementCount == t[0].shape[a...].reduce(1, *),
        t[3] == TensorType(.f32, Array(t[0].shape[..<a]))
      else {
        throw fail("x̂ \(t[0]), scale \(t[1]), dy \(t[2]) and rstd \(t[3]) do not fit")
      }
      return [t[2], t[1], t[1]]
    case .layerNormGrad(let ax, _):
      try arity(3)
      let a = try axis(ax, t[0].rank)
      guard t[0] == t[2], t[1].elementCount == t[0].shape[a...].reduce(1, *) else {
        throw fail("x \(t[0]), scale \(t[1]) and dy \(t[2]) do not fit")
      }
      return [t[0], t[1], t[1]]
    case .layerNormSaving(let ax, _):
      try arity(2, 3)
      let a = try axis(ax, t[0].rank)
      guard t[0].dtype == .f32, t.dropFirst().allSatisfy({ $0.elementCount == t[0].shape[a...].reduce(1, *) }) else {
        throw fail("x \(t[0]) must be f32 and scale/bias must match its normalized shape \(Array(t[0].shape[a...]))")
      }
      return [t[0], TensorType(.bf16, t[0].shape), TensorType(.f32, Array(t[0].shape[..<a]))]
    case .layerNormAffine(let ax):
      try arity(2, 3)
      let a = try axis(ax, t[0].rank)
      guard [DType.f32, .bf16].contains(t[0].dtype), t.dropFirst().allSatisfy({ $0.elementCount == t[0].shape[a...].reduce(1, *) }) else {
        throw fail("scale/bias do not match x̂'s normalized shape \(Array(t[0].shape[a...]))")
      }
      return [TensorType(.f32, t[0].shape)]
    case .convGradInput(let g, let shape):
      try arity(2)
      guard try Op.conv(g).inferTypes([TensorType(t[0].dtype, shape), t[1]]) == [t[0]] else {
        throw fail("dy \(t[0]) is not the output of a conv on \(shape) with weight \(t[1])")
      }
      return [TensorType(t[0].dtype, shape)]
    case .convGradWeight(let g, let shape):
      try arity(2)
      guard try Op.conv(g).inferTypes([t[0], TensorType(t[0].dtype, shape)]) == [t[1]] else {
        throw fail("dy \(t[1]) is not the output of a conv on \(t[0]) with weight \(shape)")
      }
      return [TensorType(t[0].dtype, shape)]
    case .linearGradWeight(let ax, let layout, let shape):
      try arity(2)
      guard try Op.linear(axis: ax, layout: layout).inferTypes([t[0], TensorType(t[0].dtype, shape)]) == [t[1]] else {
        throw fail("dy \(t[1]) is not the output of a linear on \(t[0]) with weight \(shape)")
      }
      return [TensorType(try accumulated(t[0], t[1]), shape)]
    case .sliceGrad(let spec, let shape):
      try arity(1)
      guard try Op.slice(spec).inferTypes([TensorType(t[0].dtype, shape)]) == [t[0]] else {
        throw fail("dy \(t[0]) does not fit slice of \(shape)")
      }
      return [TensorType(t[0].dtype, shape)]
    case .gatherGrad(let ax, let shape):
      try arity(2)
      guard try Op.gather(axis: ax).inferTypes([TensorType(t[1].dtype, shape), t[0]]) == [t[1]] else {
        throw fail("dy \(t[1]) does not fit a gather of \(shape) by \(t[0])")
      }
      return [TensorType(t[1].dtype, shape)]
    case .sgd:
      try arity(3)
      guard t[0] == t[1], t[0] == t[2] else { throw fail("param, grad and velocity must have one type, got \(t.map(\.description))") }
      return [t[0], t[0]]
    case .adamw:
      try arity(5)
      guard t[0] == t[1], t[0] == t[2], t[0] == t[3], t[4] == TensorType(.f32, []) else {
        throw fail("param, grad, m and v must have one type and step must be f32[], got \(t.map(\.description))")
      }
      return [t[0], t[0], t[0]]
    case .pad(let pads, let mode, _):
      try arity(1)
      return [TensorType(t[0].dtype, try Op.paddedShape(t[0].shape, pads, mode, fail))]
    case .padGrad(let pads, let mode, let shape):
      try arity(1)
      guard try Op.paddedShape(shape, pads, mode, fail) == t[0].shape else { throw fail("dy \(t[0]) does not fit padding \(shape)") }
      return [TensorType(t[0].dtype, shape)]
    case .batchNorm, .batchNormTraining:
      let inference = { if case .batchNorm = self { return true } else { return false } }()
      try arity(inference ? 5 : 3)
      let c = try Op.channels(t[0], fail)
      guard t.dropFirst().allSatisfy({ $0 == c }) else { throw fail("scale, bias and statistics must be \(c), got \(t.dropFirst().map(\.description))") }
      return inference ? [t[0]] : [t[0], c, c]
    case .batchNormGrad:
      try arity(5)
      let c = try Op.channels(t[0], fail)
      guard t[1] == c, t[2] == c, t[3] == c, t[4] == t[0] else { throw fail("expects x, scale, mean, var \(c) and dy \(t[0])") }
      return [t[0], c, c]
    case .runningStats(let m, let n):
      try arity(4)
      guard t[0].rank == 1, t[0].dtype == .f32, t.allSatisfy({ $0 == t[0] }) else { throw fail("expects four f32[C] statistics") }
      guard m >= 0, m <= 1, n >= 2 else { throw fail("momentum must be in [0, 1] and count at least 2") }
      return [t[0], t[0]]
    case .maxPool(let g), .averagePool(let g, _):
      try arity(1)
      return [TensorType(t[0].dtype, try Op.poolShape(g, t[0], fail))]
    case .maxPoolGrad(let g):
      try arity(2)
      guard try Op.poolShape(g, t[0], fail) == t[1].shape else { throw fail("dy \(t[1]) does not fit pooling \(t[0])") }
      return [t[0]]
    case .averagePoolGrad(let g, _, let shape):
      try arity(1)
      let x = TensorType(t[0].dtype, shape)
      guard try Op.poolShape(g, x, fail) == t[0].shape else { throw fail("dy \(t[0]) does not fit pooling \(x)") }
      return [x]
    case .globalAveragePool:
      try arity(1)
      guard t[0].rank >= 3 else { throw fail("input must be N,C,spatial…, got \(t[0])") }
      return [TensorType(t[0].dtype, Array(t[0].shape[..<2]) + Array(repeating: 1, count: t[0].rank - 2))]
    }
  }
}

extension Op {
  /// The shape `pad` gives `shape`: pads are begins then ends, none negative, and a mirror
  /// (reflect) needs more elements than it pads.
  static func paddedShape(_ shape: [Int], _ pads: [Int], _ mode: PadMode, _ fail: (String) -> IRError) throws -> [Int] {
    let r = shape.count
    guard pads.count == 2 * r, pads.allSatisfy({ (0...(1 << 20)).contains($0) }) else {
      throw fail("pads \(pads) must be \(2 * r) values in 0...\(1 << 20) (cropping is not supported)")
    }
    for a in 0..<r where pads[a] + pads[a + r] > 0 {
      switch mode {
      case .reflect: guard pads[a] < shape[a], pads[a + r] < shape[a] else { throw fail("reflect pads \(pads) need axis \(a) longer than each pad") }
      case .edge: guard shape[a] > 0 else { throw fail("edge padding of an empty axis") }
      case .constant: break
      }
    }
    return (0..<r).map { shape[$0] + pads[$0] + pads[$0 + r] }
  }

  /// f32[C] for an f32 input [N, C, …] (BatchNorm's per-channel vectors).
  static func channels(_ x: TensorType, _ fail: (String) -> IRError) throws -> TensorType {
    guard x.rank >= 2, x.dtype == .f32 else { throw fail("expects an f32 input [N, C, …], got \(x)") }
    return TensorType(.f32, [x.shape[1]])
  }

  /// The output shape of 2-D pooling `g` over `x` (NCHW), checking the geometry: attributes
  /// come from files, so every value is bounded before any arithmetic.
  static func poolShape(_ g: PoolGeometry, _ x: TensorType, _ fail: (String) -> IRError) throws -> [Int] {
    guard x.rank == 4 else { throw fail("pooling runs over 2-D NCHW inputs, got \(x)") }
    guard g.kernel.count == 2, g.strides.count == 2, g.dilations.count == 2, g.pads.count == 4 else {
      throw fail("kernel, strides and dilations need 2 entries and pads 4")
    }
    let limit = 1 << 20
    guard (g.kernel + g.strides + g.dilations).allSatisfy({ (1...limit).contains($0) }), g.pads.allSatisfy({ (0...limit).contains($0) })
    else { throw fail("kernel, strides and dilations must be in 1...\(limit), pads in 0...\(limit)") }
    var s = Array(x.shape[..<2])
    for i in 0..<2 {
      guard g.pads[i] < g.dilations[i] * (g.kernel[i] - 1) + 1, g.pads[i + 2] < g.dilations[i] * (g.kernel[i] - 1) + 1 else {
        throw fail("pads \(g.pads) must be smaller than the kernel \(g.kernel)")
      }
      let n = g.outputSize(x.shape[2 + i], axis: i)
      guard n >= 1 else { throw fail("kernel \(g.kernel) larger than the padded input \(x)") }
      s.append(n)
    }
    return s
  }
}
