// MovementKernels.swift: data movement (transpose, slice, gather, concat, split, expand) and reductions.
import SBPIR

/// Data movement and reductions, for any element size where the op allows it.
enum Movement {
  /// Copies elements of any dtype: out[o] = x[offset(o)] with x read through `strides` from `base`.
  static func strided(_ x: Buffer, base: Int, strides: [[Int]], _ out: Buffer) {
    let size = x.type.dtype.byteSize
    forEachRow(out.type.shape, strides) { o, b, n, st in
      let s0 = base + b[0]
      switch size {
      case 4:
        let px = x.raw.assumingMemoryBound(to: UInt32.self), po = out.raw.assumingMemoryBound(to: UInt32.self)
        if st[0] == 1 { (po + o).update(from: px + s0, count: n) } else { for i in 0..<n { po[o + i] = px[s0 + i * st[0]] } }
      case 8:
        let px = x.raw.assumingMemoryBound(to: UInt64.self), po = out.raw.assumingMemoryBound(to: UInt64.self)
        for i in 0..<n { po[o + i] = px[s0 + i * st[0]] }
      default:
        for i in 0..<n { (out.raw + (o + i) * size).copyMemory(from: x.raw + (s0 + i * st[0]) * size, byteCount: size) }
      }
    }
  }

  static func copy(_ x: Buffer, _ out: Buffer) { out.raw.copyMemory(from: x.raw, byteCount: out.byteCount) }

  /// Strides that read x in a transposed order.
  static func transposeStrides(_ perm: [Int], _ shape: [Int]) -> [Int] {
    let s = rowMajorStrides(shape)
    return perm.map { s[$0] }
  }

  static func sliceStrides(_ spec: SliceSpec, _ shape: [Int]) -> (base: Int, strides: [Int]) {
    var strides = rowMajorStrides(shape)
    var base = 0
    for (i, a) in spec.axes.enumerated() {
      base += spec.starts[i] * strides[a]
      strides[a] *= spec.steps[i]
    }
    return (base, strides)
  }

  /// dx = zeros with dy written where the slice read from (f32).
  static func sliceGrad(base: Int, strides: [[Int]], _ dy: Buffer, _ dx: Buffer) {
    dx.f32.update(repeating: 0, count: dx.count)
    let pd = dy.f32, po = dx.f32
    forEachRow(dy.type.shape, strides) { o, b, n, st in
      for i in 0..<n { po[base + b[0] + i * st[0]] = pd[o + i] }
    }
  }

  static func gather(axis: Int, _ x: Buffer, _ idx: Buffer, _ out: Buffer) throws {
    let s = x.type.shape
    let outer = s[..<axis].reduce(1, *), dim = s[axis], inner = s[(axis + 1)...].reduce(1, *)
    let size = x.type.dtype.byteSize
    let k = idx.count
    for o in 0..<outer {
      for j in 0..<k {
        var t = idx.index(j)
        if t < 0 { t += dim }
        guard t >= 0, t < dim else { throw RuntimeError("gather: index \(idx.index(j)) is out of range for a dimension of \(dim)") }
        (out.raw + ((o * k + j) * inner) * size).copyMemory(from: x.raw + ((o * dim + t) * inner) * size, byteCount: inner * size)
      }
    }
  }

  static func gatherGrad(axis: Int, _ idx: Buffer, _ dy: Buffer, _ dx: Buffer) {
    let s = dx.type.shape
    let outer = s[..<axis].reduce(1, *), dim = s[axis], inner = s[(axis + 1)...].reduce(1, *)
    dx.f32.update(repeating: 0, count: dx.count)
    let k = idx.count
    for o in 0..<outer {
      for j in 0..<k {
        var t = idx.index(j)
        if t < 0 { t += dim }
        let src = dy.f32 + (o * k + j) * inner, dst = dx.f32 + (o * dim + t) * inner
        for i in 0..<inner { dst[i] += src[i] }
      }
    }
  }

  /// SBP row gather (f32): out row j = x row idx[j], zeros for idx −1.
  static func gatherRows(axis: Int, _ x: Buffer, _ idx: Buffer, _ out: Buffer) throws {
    let s = x.type.shape
    let outer = s[..<axis].reduce(1, *), dim = s[axis], inner = s[(axis + 1)...].reduce(1, *)
    let k = idx.count
    for j in 0..<k where idx.i64[j] < -1 || idx.i64[j] >= Int64(dim) {
      throw RuntimeError("gather_rows: index \(idx.i64[j]) is out of range for \(dim) rows")
    }
    let px = x.f32, po = out.f32
    for o in 0..<outer {
      for j in 0..<k {
        let t = Int(idx.i64[j])
        let dst = po + (o * k + j) * inner
        if t < 0 { dst.update(repeating: 0, count: inner) } else { dst.update(from: px + (o * dim + t) * inner, count: inner) }
      }
    }
  }

  /// SBP row scatter (f32): every row zero, then row idx_k[j] = data_k row j; −1 skipped.
  static func scatterRows(axis: Int, _ ins: [Buffer], _ out: Buffer) throws {
    let s = out.type.shape
    let outer = s[..<axis].reduce(1, *), dim = s[axis], inner = s[(axis + 1)...].reduce(1, *)
    out.f32.update(repeating: 0, count: out.count)
    for p in stride(from: 0, to: ins.count, by: 2) {
      let data = ins[p].f32, idx = ins[p + 1]
      let k = idx.count
      for j in 0..<k where idx.i64[j] < -1 || idx.i64[j] >= Int64(dim) {
        throw RuntimeError("scatter_rows: index \(idx.i64[j]) is out of range for \(dim) rows")
      }
      for o in 0..<outer {
        for j in 0..<k where idx.i64[j] >= 0 {
          (out.f32 + (o * dim + Int(idx.i64[j])) * inner).update(from: data + (o * k + j) * inner, count: inner)
        }
      }
    }
  }

  /// Concatenation along `axis` (any dtype).
  static func concat(axis: Int, _ xs: [Buffer], _ out: Buffer) {
    let s = out.type.shape
    let outer = s[..<axis].reduce(1, *)
    let size = out.type.dtype.byteSize
    var offset = 0
    let rowBytes = s[axis...].reduce(1, *) * size
    for x in xs {
      let chunk = x.type.shape[axis...].reduce(1, *) * size
      for o in 0..<outer { (out.raw + o * rowBytes + offset).copyMemory(from: x.raw + o * chunk, byteCount: chunk) }
      offset += chunk
    }
  }

  static func split(axis: Int, _ x: Buffer, _ outs: [Buffer]) {
    let s = x.type.shape
    let outer = s[..<axis].reduce(1, *)
    let size = x.type.dtype.byteSize
    let rowBytes = s[axis...].reduce(1, *) * size
    var offset = 0
    for y in outs {
      let chunk = y.type.shape[axis...].reduce(1, *) * size
      for o in 0..<outer { (y.raw + o * chunk).copyMemory(from: x.raw + o * rowBytes + offset, byteCount: chunk) }
      offset += chunk
    }
  }

  /// Sum (or mean) over `axes`; the output's layout does not depend on keepdims.
  /// Strides that map x's elements onto the reduced output (0 on reduced axes).
  static func reduceStrides(axes: [Int], _ s: [Int]) -> [Int] {
    let all = Set(axes.isEmpty ? Array(0..<s.count) : axes)
    return broadcastStrides(s.enumerated().map { all.contains($0.offset) ? 1 : $0.element }, to: s)
  }

  /// Sum (or mean) over the axes `strides` leaves out; the layout does not depend on keepdims.
  static func reduce(strides: [[Int]], mean: Bool, _ x: Buffer, _ out: Buffer) {
    let po = out.f32, px = x.f32
    po.update(repeating: 0, count: out.count)
    forEachRow(x.type.shape, strides) { o, b, n, st in
      if st[0] == 0 {
        var acc: Float = 0
        for i in 0..<n { acc += px[o + i] }
        po[b[0]] += acc
      } else {
        for i in 0..<n { po[b[0] + i * st[0]] += px[o + i] }
      }
    }
    if mean {
      let scale = Float(out.count) / Float(max(x.count, 1))
      for i in 0..<out.count { po[i] *= scale }
    }
  }

}

/// An error while executing a step (bad labels, out-of-range indices).
public struct RuntimeError: Error, CustomStringConvertible {
  public let description: String
  public init(_ m: String) { description = m }
}
