// MovementKernels.swift: data movement (transpose, slice, gather, concat, split, expand) and reductions.
import SBPIR

/// Data movement and reductions, for any element size where the op allows it.
enum Movement {
  /// Copies elements of any dtype: out[o] = x[offset(o)] with x read through `strides` from `base`.
  /// A permutation that moves x's contiguous axis away from the last output position goes
  /// through `tiled`, so that neither side is walked with a large stride.
  static func strided(_ x: Buffer, base: Int, strides: [[Int]], _ out: Buffer) {
    let st = strides[0], shape = out.type.shape
    if x.type.dtype.byteSize == 4, let a = st.indices.last(where: { st[$0] == 1 && shape[$0] > 1 }), a != st.count - 1,
      (shape.last ?? 1) > 1, st.last != 0
    {
      tiled(x.raw.assumingMemoryBound(to: UInt32.self) + base, st, axis: a, out.raw.assumingMemoryBound(to: UInt32.self), shape)
      return
    }
    let size = x.type.dtype.byteSize
    let rows = outerRows(shape), width = shape.last ?? 1
    Parallel.chunks(rows, grain: Swift.max(1, (1 << 14) / Swift.max(width, 1))) { _, range in
      forEachRow(shape, strides, rows: range) { o, b, n, st in
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
  }

  /// out = x read through `st`, where output axis `a` is x's contiguous axis: 2-D tiles over
  /// (a, last) keep both the reads (along a) and the writes (along the last axis) in cache lines.
  /// Inside a tile, 8×8 blocks move as eight vector loads, an in-register transpose and eight
  /// vector stores, not 64 scalar loads and stores: ConvNeXt-Tiny's NCHW/NHWC transposes took
  /// a quarter less time per step. The edges that do not fill a block go element by element.
  static func tiled(_ x: UnsafePointer<UInt32>, _ st: [Int], axis a: Int, _ out: UnsafeMutablePointer<UInt32>, _ shape: [Int]) {
    // No arrays here: this runs every step and must not allocate.
    let r = shape.count
    let rowsA = shape[a], cols = shape[r - 1], sl = st[r - 1]
    var osa = 1, outer = 1
    for d in (a + 1)..<r { osa *= shape[d] }
    for d in 0..<(r - 1) where d != a { outer *= shape[d] }
    let tile = 64
    let tilesA = (rowsA + tile - 1) / tile
    let colBlocks = cols / 8 * 8
    Parallel.chunks(outer * tilesA, grain: 1) { _, range in
      for job in range {
        // The axes other than `a` and the last, walked as an odometer by flat index.
        var rest = job / tilesA, ib = 0, ob = 0, os = cols
        for d in stride(from: r - 2, through: 0, by: -1) {
          if d != a {
            let i = rest % shape[d]
            rest /= shape[d]
            ib += i * st[d]
            ob += i * os
          }
          os *= shape[d]
        }
        let i0 = (job % tilesA) * tile, i1 = Swift.min(rowsA, i0 + tile), rowBlocks = i0 + (i1 - i0) / 8 * 8
        var j = 0
        while j < colBlocks {
          var i = i0
          while i < rowBlocks {
            transpose8(x + (ib + i + j &* sl), sl, out + (ob + i &* osa + j), osa)
            i += 8
          }
          j += 8
        }
        // The edges, element by element: the columns past the last whole block in the block
        // rows, then every column of the rows past them. (Stepped pointers: indexing by j·sl
        // put an overflow check on every element. No local function: its captures of ib and ob
        // cost a heap box per call.)
        for i in i0..<i1 {
          let j0 = i < rowBlocks ? colBlocks : 0
          var src = x + (ib + i + j0 &* sl), dst = out + (ob + i &* osa + j0)
          for _ in j0..<cols {
            dst.pointee = src.pointee
            dst += 1
            src += sl
          }
        }
      }
    }
  }

  /// dst row p (stride `dstStride`) = element p of the eight vectors at src, src + srcStride, …:
  /// an 8×8 block transposed in registers (bit patterns only, so any 4-byte type).
  @inline(__always) static func transpose8(
    _ src: UnsafePointer<UInt32>, _ srcStride: Int, _ dst: UnsafeMutablePointer<UInt32>, _ dstStride: Int
  ) {
    typealias U8 = SIMD8<UInt32>
    @inline(__always) func load(_ q: Int) -> U8 { UnsafeRawPointer(src + q &* srcStride).loadUnaligned(as: U8.self) }
    let (v0, v1, v2, v3, v4, v5, v6, v7) = (load(0), load(1), load(2), load(3), load(4), load(5), load(6), load(7))
    @inline(__always) func store(_ p: Int) {
      UnsafeMutableRawPointer(dst + p &* dstStride).storeBytes(
        of: U8(v0[p], v1[p], v2[p], v3[p], v4[p], v5[p], v6[p], v7[p]), as: U8.self)
    }
    store(0)
    store(1)
    store(2)
    store(3)
    store(4)
    store(5)
    store(6)
    store(7)
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

  /// out[base + Σ i_d·strides[0][d]] = x[i] for every element i of x (4-byte elements): x
  /// written into a strided region of out, by rows over the threads.
  static func stridedWrite(_ x: Buffer, base: Int, strides: [[Int]], _ out: Buffer) {
    let shape = x.type.shape, width = shape.last ?? 1
    let px = x.raw.assumingMemoryBound(to: UInt32.self), po = out.raw.assumingMemoryBound(to: UInt32.self)
    Parallel.chunks(outerRows(shape), grain: Swift.max(1, (1 << 14) / Swift.max(width, 1))) { _, range in
      forEachRow(shape, strides, rows: range) { o, b, n, st in
        let dst = po + base + b[0]
        if st[0] == 1 { dst.update(from: px + o, count: n) } else { for i in 0..<n { dst[i * st[0]] = px[o + i] } }
      }
    }
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
    let px = x.f32, po = out.f32, pi = idx.i64
    Parallel.chunks(outer, grain: Swift.max(1, (1 << 14) / Swift.max(k * inner, 1))) { _, range in
      for o in range {
        let src = px + o &* dim &* inner, dst = po + o &* k &* inner
        if inner == 1 {
          // Single elements (a gather along the last axis): a plain loop, not a copy call each.
          for j in 0..<k {
            let t = Int(pi[j])
            dst[j] = t < 0 ? 0 : src[t]
          }
        } else {
          for j in 0..<k {
            let t = Int(pi[j]), row = dst + j &* inner
            if t < 0 { row.update(repeating: 0, count: inner) } else { row.update(from: src + t &* inner, count: inner) }
          }
        }
      }
    }
  }

  /// SBP row scatter (f32): every row zero, then row idx_k[j] = data_k row j; −1 skipped.
  static func scatterRows(axis: Int, _ ins: [Buffer], _ out: Buffer) throws {
    let s = out.type.shape
    let outer = s[..<axis].reduce(1, *), dim = s[axis], inner = s[(axis + 1)...].reduce(1, *)
    for p in stride(from: 0, to: ins.count, by: 2) {
      let idx = ins[p + 1]
      for j in 0..<idx.count where idx.i64[j] < -1 || idx.i64[j] >= Int64(dim) {
        throw RuntimeError("scatter_rows: index \(idx.i64[j]) is out of range for \(dim) rows")
      }
    }
    let po = out.f32
    Parallel.chunks(outer, grain: Swift.max(1, (1 << 14) / Swift.max(dim * inner, 1))) { _, range in
      for o in range {
        let dst = po + o &* dim &* inner
        dst.update(repeating: 0, count: dim * inner)
        for p in stride(from: 0, to: ins.count, by: 2) {
          let pi = ins[p + 1].i64, k = ins[p + 1].count, src = ins[p].f32 + o &* k &* inner
          for j in 0..<k {
            let t = Int(pi[j])
            guard t >= 0 else { continue }
            if inner == 1 { dst[t] = src[j] } else { (dst + t &* inner).update(from: src + j &* inner, count: inner) }
          }
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
      let chunk = x.type.shape[axis...].reduce(1, *) * size, at = offset
      parallelCopies(outer, bytes: chunk, dst: { out.raw + $0 * rowBytes + at }, src: { UnsafeRawPointer(x.raw + $0 * chunk) })
      offset += chunk
    }
  }

  /// Copies `bytes` from `src(o)` to `dst(o)` for o in 0..<count, split over the threads
  /// when there is enough to move: by rows, and large blocks (a split along the first axis
  /// is one block per result) in 64 KiB pieces.
  static func parallelCopies(
    _ count: Int, bytes: Int, dst: (Int) -> UnsafeMutableRawPointer, src: (Int) -> UnsafeRawPointer
  ) {
    let piece = 1 << 16, pieces = Swift.max(1, (bytes + piece - 1) / piece)
    Parallel.chunks(count * pieces, grain: Swift.max(1, pieces == 1 ? piece / Swift.max(bytes, 1) : 1)) { _, range in
      for job in range {
        let o = job / pieces, lo = (job % pieces) * piece
        (dst(o) + lo).copyMemory(from: src(o) + lo, byteCount: Swift.min(piece, bytes - lo))
      }
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
      let at = offset
      parallelCopies(outer, bytes: chunk, dst: { y.raw + $0 * chunk }, src: { UnsafeRawPointer(x.raw + $0 * rowBytes + at) })
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
  /// Rows are split over threads, each summing into its own copy of the output (chunk 0 into
  /// the output itself), which are then added up.
  static func reduce(strides: [[Int]], mean: Bool, _ x: Buffer, _ out: Buffer) {
    let po = out.f32, px = x.f32, m = out.count
    let shape = x.type.shape, rows = outerRows(shape)
    let chunks = out.count * 8 <= x.count ? Parallel.chunkCount(rows, grain: Norm.rowGrain(shape.last ?? 1)) : 1
    let extra = Scratch.floats(m * (chunks - 1))
    Parallel.chunks(chunks == 1 ? 1 : rows, grain: 1) { c, range in
      let acc = c == 0 ? po : extra + m * (c - 1)
      acc.update(repeating: 0, count: m)
      forEachRow(shape, strides, rows: chunks == 1 ? nil : range) { o, b, n, st in
        switch st[0] {
        case 0: acc[b[0]] += VMath.sum(n, px + o)
        case 1: VMath.map(n, px + o, acc + b[0], acc + b[0]) { $0 + $1 }
        default: for i in 0..<n { acc[b[0] + i * st[0]] += px[o + i] }
        }
      }
    }
    for c in 1..<chunks { VMath.map(m, po, extra + m * (c - 1), po) { $0 + $1 } }
    if mean {
      let scale = Float(out.count) / Float(max(x.count, 1))
      VMath.map(m, po, po) { $0 * scale }
    }
  }

}

/// An error while executing a step (bad labels, out-of-range indices).
public struct RuntimeError: Error, CustomStringConvertible {
  public let description: String
  public init(_ m: String) { description = m }
}
