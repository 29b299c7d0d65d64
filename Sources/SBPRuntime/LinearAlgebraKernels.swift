// LinearAlgebraKernels.swift: matmul, linear, gemm and convolution, through OpenBLAS sgemm (bf16 operands: the bf16 kernels).
import SBPIR

/// GEMM-backed kernels: batched matmul, linear and its weight gradient, gemm.
enum LinearAlgebra {
  /// Batched matmul with broadcast batch axes.
  /// Batch axes of a matmul and each operand's strides over them (prepared once).
  static func matMulBatch(_ sa: [Int], _ sb: [Int], _ so: [Int]) -> [[Int]] {
    let batch = Array(so.dropLast(2))
    return [
      batch, broadcastStrides(Array(sa.dropLast(2)), to: batch), broadcastStrides(Array(sb.dropLast(2)), to: batch), rowMajorStrides(batch),
    ]
  }

  /// Batched matmul with broadcast batch axes; `batch` is `matMulBatch`'s result. With
  /// `transA`/`transB` an operand's memory holds each matrix transposed (a transposed view).
  /// `bf16`: round the operands to bf16 (`mixed-precision`), as a bf16 operand already is.
  static func matMul(_ a: Buffer, _ b: Buffer, _ out: Buffer, batch p: [[Int]], transA: Bool = false, transB: Bool = false, bf16: Bool = false) {
    let sa = a.type.shape, sb = b.type.shape
    let m = sa[sa.count - 2], k = sa[sa.count - 1], n = sb[sb.count - 1]
    let (batch, ba, bb, bs) = (p[0], p[1], p[2], p[3])
    var count = 1
    for d in batch { count *= d }
    let threads = 2 * m * n * k <= GEMM.smallProductFlops ? Parallel.threads : 1
    GEMM.batched(
      count: count, threads: threads, transA: transA, transB: transB, m: m, n: n, k: k, a: a.operand, b: b.operand, c: out.f32, bf16: bf16
    ) { i in
      var oa = 0, ob = 0
      for d in 0..<batch.count {
        let c = (i / bs[d]) % batch[d]
        oa += c * ba[d]
        ob += c * bb[d]
      }
      return (oa * m * k, ob * k * n, i * m * n)
    }
  }

  /// Splits a shape around `axis` into (outer, features, inner).
  static func around(_ shape: [Int], _ axis: Int) -> (Int, Int, Int) {
    (shape[..<axis].reduce(1, *), shape[axis], shape[(axis + 1)...].reduce(1, *))
  }

  /// y = x ·(axis) W (+ b).
  static func linear(axis: Int, layout: WeightLayout, _ x: Buffer, _ w: Buffer, _ bias: Buffer?, _ out: Buffer, bf16: Bool = false) {
    let (outer, fin, inner) = around(x.type.shape, axis)
    let fout = out.type.shape[axis]
    // The bias is written into C first and sgemm accumulates onto it (beta 1): the GEMM's
    // store then adds it, instead of a second pass over the whole output.
    if let bias {
      fillBias(
        bias.f32, out.f32, rows: inner == 1 ? outer : outer * fout, width: inner == 1 ? fout : inner, perRow: inner != 1, features: fout)
    }
    let beta: Float = bias == nil ? 0 : 1
    if inner == 1 {
      // Y[outer, out] = X[outer, in] · W' where W' = W (io) or Wᵀ (oi).
      GEMM.product(transA: false, transB: layout == .outIn, m: outer, n: fout, k: fin, a: x.operand, b: w.operand, beta: beta, c: out.f32, bf16: bf16)
    } else {
      // Per outer index: Y[out, inner] = W''[out, in] · X[in, inner].
      for o in 0..<outer {
        GEMM.product(
          transA: layout == .inOut, transB: false, m: fout, n: inner, k: fin, a: w.operand, b: x.operand.advanced(by: o * fin * inner),
          beta: beta, c: out.f32 + o * fout * inner, bf16: bf16)
      }
    }
  }

  /// Fills `rows` rows of `width` with the bias: each row a copy of it (`perRow` false), or
  /// row r splatted with bias[r % features] (`perRow`, a bias along a non-last axis).
  static func fillBias(_ bias: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, rows: Int, width: Int, perRow: Bool, features: Int)
  {
    Parallel.chunks(rows, grain: Swift.max(1, (1 << 15) / Swift.max(width, 1))) { _, range in
      for r in range {
        if perRow {
          (out + r * width).update(repeating: bias[r % features], count: width)
        } else {
          (out + r * width).update(from: bias, count: width)
        }
      }
    }
  }

  /// dW for `linear`, in the weight's own layout.
  static func linearGradWeight(axis: Int, layout: WeightLayout, _ x: Buffer, _ dy: Buffer, _ dw: Buffer, bf16: Bool = false) {
    let (outer, fin, inner) = around(x.type.shape, axis)
    let fout = dy.type.shape[axis]
    if inner == 1 {
      if layout == .outIn {
        GEMM.product(transA: true, transB: false, m: fout, n: fin, k: outer, a: dy.operand, b: x.operand, c: dw.f32, bf16: bf16)
      } else {
        GEMM.product(transA: true, transB: false, m: fin, n: fout, k: outer, a: x.operand, b: dy.operand, c: dw.f32, bf16: bf16)
      }
    } else {
      dw.f32.update(repeating: 0, count: dw.count)
      for o in 0..<outer {
        let xo = x.operand.advanced(by: o * fin * inner), dyo = dy.operand.advanced(by: o * fout * inner)
        if layout == .outIn {
          GEMM.product(transA: false, transB: true, m: fout, n: fin, k: inner, a: dyo, b: xo, beta: 1, c: dw.f32, bf16: bf16)
        } else {
          GEMM.product(transA: false, transB: true, m: fin, n: fout, k: inner, a: xo, b: dyo, beta: 1, c: dw.f32, bf16: bf16)
        }
      }
    }
  }

  /// out = alpha · op(A) · op(B) + beta · C.
  /// `cStrides`: C's strides broadcast to the output (prepared once).
  static func gemm(
    transA: Bool, transB: Bool, alpha: Float, beta: Float, _ a: Buffer, _ b: Buffer, _ c: Buffer?, _ out: Buffer, cStrides: [[Int]],
    bf16: Bool = false
  ) {
    let m = out.type.shape[0], n = out.type.shape[1]
    let k = transA ? a.type.shape[0] : a.type.shape[1]
    if let c { Movement.strided(c, base: 0, strides: cStrides, out) }
    GEMM.product(
      transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a.operand, b: b.operand, beta: c == nil ? 0 : beta, c: out.f32, bf16: bf16)
  }
}

/// 2-D NCHW convolution: im2col + sgemm per group, with a direct path for depthwise convs.
struct Conv2D {
  let n: Int, c: Int, h: Int, w: Int
  let o: Int, kh: Int, kw: Int, oh: Int, ow: Int
  let sh: Int, sw: Int, ph: Int, pw: Int, dh: Int, dw: Int
  let groups: Int

  init(_ g: ConvGeometry, input: [Int], weight: [Int], output: [Int]) {
    (n, c, h, w) = (input[0], input[1], input[2], input[3])
    (o, kh, kw) = (weight[0], weight[2], weight[3])
    (oh, ow) = (output[2], output[3])
    (sh, sw, ph, pw, dh, dw) = (g.strides[0], g.strides[1], g.pads[0], g.pads[1], g.dilations[0], g.dilations[1])
    groups = g.group
  }

  var cg: Int { c / groups }
  var og: Int { o / groups }
  var colRows: Int { cg * kh * kw }
  var colCount: Int { colRows * oh * ow }
  var depthwise: Bool { groups == c && o == c }

  /// Walks the im2col matrix one row segment at a time: col[(ci, ki, kj), (y, x)] pairs with
  /// x[ci, y·sh − ph + ki·dh, x·sw − pw + kj·dw]. body(column offset, image offset, count) gets
  /// each output row's run of taps that fall inside the image (image stride sw); the rest is
  /// padding.
  /// With `channels`, only those input channels' rows (disjoint in both col and the image).
  @inline(__always) func forEachColumnRun(
    channels: Range<Int>? = nil, _ body: (_ colOffset: Int, _ imageOffset: Int, _ count: Int) -> Void
  ) {
    let channels = channels ?? 0..<cg
    var r = channels.lowerBound * kh * kw
    for ci in channels {
      for ki in 0..<kh {
        for kj in 0..<kw {
          let cols = validColumns(kj)
          for y in 0..<oh {
            let iy = y * sh - ph + ki * dh
            if iy >= 0 && iy < h && !cols.isEmpty {
              body((r * oh + y) * ow + cols.lowerBound, (ci * h + iy) * w + cols.lowerBound * sw - pw + kj * dw, cols.count)
            }
          }
          r += 1
        }
      }
    }
  }

  func im2col(_ x: UnsafePointer<Float>, _ col: UnsafeMutablePointer<Float>) {
    if ph > 0 || pw > 0 { col.update(repeating: 0, count: colCount) }
    Parallel.chunks(cg, grain: channelGrain) { _, channels in
      forEachColumnRun(channels: channels) { c, i, count in
        if sw == 1 {
          (col + c).update(from: x + i, count: count)
        } else {
          var src = x + i, dst = col + c
          for _ in 0..<count {
            dst.pointee = src.pointee
            dst += 1
            src += sw
          }
        }
      }
    }
  }

  /// The adjoint of im2col: accumulates col back into dx.
  func col2im(_ col: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>) {
    Parallel.chunks(cg, grain: channelGrain) { _, channels in
      forEachColumnRun(channels: channels) { c, i, count in
        for k in 0..<count { dx[i + k * sw] += col[c + k] }
      }
    }
  }

  /// Input channels per thread in im2col and col2im: enough columns that a hand-off pays.
  var channelGrain: Int { Swift.max(1, (1 << 14) / Swift.max(kh * kw * oh * ow, 1)) }

  /// The output columns whose tap `kj` reads inside the image: x·sw − pw + kj·dw ∈ [0, w).
  @inline(__always) func validColumns(_ kj: Int) -> Range<Int> {
    let shift = kj * dw - pw
    // Both ends rounded toward the valid side; a tap right of the image for every x (a
    // negative last column) selects nothing, which truncating division would miss.
    let last = w - 1 - shift
    let lo = Swift.max(0, (-shift + sw - 1) / sw), hi = last < 0 ? 0 : Swift.min(ow, last / sw + 1)
    return lo..<Swift.max(lo, hi)
  }

  /// Walks a depthwise conv's taps row by row: body(output row y, input row iy, weight index,
  /// valid output columns, input column of the first valid one). Rows of the output, not
  /// single pixels, are the unit, so the kernels run as vector axpy and dot loops.
  @inline(__always) func depthwiseRows(_ body: (_ y: Int, _ iy: Int, _ tap: Int, _ cols: Range<Int>, _ ix0: Int) -> Void) {
    for y in 0..<oh {
      for ki in 0..<kh {
        let iy = y * sh - ph + ki * dh
        guard iy >= 0 && iy < h else { continue }
        for kj in 0..<kw {
          let cols = validColumns(kj)
          if !cols.isEmpty { body(y, iy, ki * kw + kj, cols, cols.lowerBound * sw - pw + kj * dw) }
        }
      }
    }
  }

  /// Copies an srcH×srcW plane into a zeroed padH×padW buffer at (top, left), clipped.
  @inline(__always) func pad(
    _ src: UnsafePointer<Float>, _ srcH: Int, _ srcW: Int, into buf: UnsafeMutablePointer<Float>, _ padH: Int, _ padW: Int, top: Int,
    left: Int
  ) {
    buf.update(repeating: 0, count: padH * padW)
    let x0 = Swift.max(0, -left), x1 = Swift.min(srcW, padW - left)
    guard x1 > x0 else { return }
    for r in Swift.max(0, top)..<Swift.min(padH, srcH + top) {
      (buf + r * padW + x0 + left).update(from: src + (r - top) * srcW + x0, count: x1 - x0)
    }
  }

  /// Stride-1 depthwise correlation over zero-padded planes, the fast path of the forward
  /// and of dx: dst[p][y, x] = Σ wts[p mod c][ki, kj] · src[p][y − top + ki·dh, x − left + kj·dw].
  /// Each thread copies a plane into a padded buffer once, so a tile of output rows and
  /// columns accumulates every tap in registers with no bounds checks. A tile holds eight
  /// vector accumulators, so eight independent add chains hide the vector unit's latency,
  /// and its shape follows the plane's width: 2 rows × 32 columns, 4 × 16 or 8 × 8, so
  /// ConvNeXt's 14- and 7-wide planes do not compute a 32-wide row for 14 or 7 results.
  func correlate(
    _ src: UnsafePointer<Float>, _ srcH: Int, _ srcW: Int, _ wts: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
    _ dstH: Int, _ dstW: Int, top: Int, left: Int
  ) {
    let vectors = dstW > 16 ? 4 : dstW > 8 ? 2 : 1, tileRows = 8 / vectors, tileW = 8 * vectors
    // Spare zero rows below the plane, read by a tile's rows past dstH (their results are dropped).
    let padW = (dstW + tileW - 1) / tileW * tileW + (kw - 1) * dw, padH = dstH + (kh - 1) * dh + tileRows - 1
    let planes = n * c, chunks = Parallel.chunkCount(planes, grain: 1)
    let scratch = Scratch.floats(chunks * padH * padW, slot: 0)
    Parallel.chunks(planes, grain: 1) { chunk, range in
      let buf = scratch + chunk * padH * padW
      for p in range {
        pad(src + p * srcH * srcW, srcH, srcW, into: buf, padH, padW, top: top, left: left)
        let wc = wts + (p % c) * kh * kw, out = dst + p * dstH * dstW
        var y = 0
        while y < dstH {
          var x = 0
          while x < dstW {
            let rows = Swift.min(tileRows, dstH - y), cols = Swift.min(tileW, dstW - x)
            let t = buf + y * padW + x, o = out + y * dstW + x
            // Literal widths, so each call inlines with its offsets folded into the loads.
            switch vectors {
            case 4: tile(t, padW, wc, vectors: 4, o, dstW, rows, cols)
            case 2: tile(t, padW, wc, vectors: 2, o, dstW, rows, cols)
            default: tile(t, padW, wc, vectors: 1, o, dstW, rows, cols)
            }
            x += tileW
          }
          y += tileRows
        }
      }
    }
  }

  /// One tile of `correlate`: eight accumulators, `vectors` per output row (4, 2 or 1), so
  /// 8 / vectors rows of 8 · vectors columns, from the padded plane at `t` (row stride
  /// `padW`) into `o` (row stride `ow`); only `rows` × `cols` of it are stored.
  @inline(__always) func tile(
    _ t: UnsafePointer<Float>, _ padW: Int, _ wc: UnsafePointer<Float>, vectors: Int, _ o: UnsafeMutablePointer<Float>, _ ow: Int,
    _ rows: Int, _ cols: Int
  ) {
    // Accumulator k covers row k / vectors, columns 8 · (k % vectors) of the tile.
    @inline(__always) func at(_ k: Int) -> Int { k / vectors * padW + k % vectors * 8 }
    let (o0, o1, o2, o3, o4, o5, o6, o7) = (at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7))
    var a0 = V8(), a1 = V8(), a2 = V8(), a3 = V8(), a4 = V8(), a5 = V8(), a6 = V8(), a7 = V8()
    // Pointers stepped tap by tap: indices computed with checked arithmetic cost more
    // instructions than the eight products.
    var wp = wc, row = t
    let rowStep = dh * padW
    for _ in 0..<kh {
      var q = row
      for _ in 0..<kw {
        let w = V8(repeating: wp.pointee)
        a0 = VMath.fma(w, VMath.load(q + o0), a0)
        a1 = VMath.fma(w, VMath.load(q + o1), a1)
        a2 = VMath.fma(w, VMath.load(q + o2), a2)
        a3 = VMath.fma(w, VMath.load(q + o3), a3)
        a4 = VMath.fma(w, VMath.load(q + o4), a4)
        a5 = VMath.fma(w, VMath.load(q + o5), a5)
        a6 = VMath.fma(w, VMath.load(q + o6), a6)
        a7 = VMath.fma(w, VMath.load(q + o7), a7)
        wp += 1
        q += dw
      }
      row += rowStep
    }
    for (k, v) in [a0, a1, a2, a3, a4, a5, a6, a7].enumerated() {
      let r = k / vectors, c = k % vectors * 8
      guard r < rows, c < cols else { continue }
      let dst = o + r * ow + c
      if cols - c >= 8 { VMath.store(v, dst) } else { VMath.storePartial(v, dst, cols - c) }
    }
  }

  /// Whether the padded-plane fast path applies: stride 1, and padding that fits inside the
  /// kernel (so dx's equivalent padding is not negative).
  var fastDepthwise: Bool { sh == 1 && sw == 1 && ph <= (kh - 1) * dh && pw <= (kw - 1) * dw }

  /// Depthwise forward: each (image, channel) plane on its own, planes split over threads.
  func depthwiseForward(_ x: UnsafePointer<Float>, _ wt: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    if fastDepthwise {
      correlate(x, h, w, wt, y, oh, ow, top: ph, left: pw)
      return
    }
    Parallel.chunks(n * c, grain: 1) { _, planes in
      for p in planes {
        let xi = x + p * h * w, yo = y + p * oh * ow, wc = wt + (p % c) * kh * kw
        yo.update(repeating: 0, count: oh * ow)
        depthwiseRows { oy, iy, tap, cols, ix0 in
          let src = xi + iy * w + ix0, dst = yo + oy * ow + cols.lowerBound, wv = wc[tap]
          for i in 0..<cols.count { dst[i] += wv * src[i * sw] }
        }
      }
    }
  }

  /// Depthwise dx: the transpose of the forward. With stride 1 it is the forward's
  /// correlation of dy with the flipped kernel.
  func depthwiseGradInput(_ dy: UnsafePointer<Float>, _ wt: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>) {
    if fastDepthwise {
      let flipped = Scratch.floats(c * kh * kw, slot: 1)
      for ch in 0..<c {
        for t in 0..<(kh * kw) { flipped[ch * kh * kw + t] = wt[ch * kh * kw + kh * kw - 1 - t] }
      }
      correlate(dy, oh, ow, flipped, dx, h, w, top: (kh - 1) * dh - ph, left: (kw - 1) * dw - pw)
      return
    }
    Parallel.chunks(n * c, grain: 1) { _, planes in
      for p in planes {
        let di = dx + p * h * w, dd = dy + p * oh * ow, wc = wt + (p % c) * kh * kw
        di.update(repeating: 0, count: h * w)
        depthwiseRows { oy, iy, tap, cols, ix0 in
          let src = dd + oy * ow + cols.lowerBound, dst = di + iy * w + ix0, wv = wc[tap]
          for i in 0..<cols.count { dst[i * sw] += wv * src[i] }
        }
      }
    }
  }

  /// Depthwise dW: per channel, summed over the batch; channels split over threads. With
  /// stride 1, each image's plane is padded once and every tap is a full-row dot product.
  func depthwiseGradWeight(_ x: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dwt: UnsafeMutablePointer<Float>) {
    let fast = fastDepthwise
    // dy rows padded with zeros to whole vectors, so the 7-wide kernel needs no tail loop.
    let dyW = (ow + 7) / 8 * 8
    let padW = dyW + (kw - 1) * dw + 8, padH = oh + (kh - 1) * dh
    let chunks = Parallel.chunkCount(c, grain: 1), perChunk = padH * padW + oh * dyW
    let scratch = fast ? Scratch.floats(chunks * perChunk, slot: 0) : dwt
    Parallel.chunks(c, grain: 1) { chunk, channels in
      let buf = scratch + chunk * perChunk, dpad = buf + padH * padW
      for ch in channels {
        let wc = dwt + ch * kh * kw
        wc.update(repeating: 0, count: kh * kw)
        for b in 0..<n {
          let xi = x + (b * c + ch) * h * w, dd = dy + (b * c + ch) * oh * ow
          if fast {
            pad(xi, h, w, into: buf, padH, padW, top: ph, left: pw)
            if kw == 7 {
              pad(dd, oh, ow, into: dpad, oh, dyW, top: 0, left: 0)
              tapRows7(dpad, dyW, buf, padW, wc)
              continue
            }
            for y in 0..<oh {
              for ki in 0..<kh {
                let row = buf + (y + ki * dh) * padW
                for kj in 0..<kw { wc[ki * kw + kj] += VMath.dot(ow, dd + y * ow, row + kj * dw) }
              }
            }
            continue
          }
          depthwiseRows { oy, iy, tap, cols, ix0 in
            let g = dd + oy * ow + cols.lowerBound, src = xi + iy * w + ix0
            var acc: Float = 0
            for i in 0..<cols.count { acc += g[i] * src[i * sw] }
            wc[tap] += acc
          }
        }
      }
    }
  }

  /// dW for a 7-wide kernel (ConvNeXt's): per kernel row, the seven taps' dot products
  /// accumulate together over every output row, so each dy vector is loaded once, not seven
  /// times, and the seven vector sums are reduced to scalars once per kernel row, not once
  /// per output row (those horizontal sums had cost as much as the products).
  @inline(__always) func tapRows7(
    _ dpad: UnsafePointer<Float>, _ dyW: Int, _ buf: UnsafePointer<Float>, _ padW: Int, _ wc: UnsafeMutablePointer<Float>
  ) {
    for ki in 0..<kh {
      var a0 = V8(), a1 = V8(), a2 = V8(), a3 = V8(), a4 = V8(), a5 = V8(), a6 = V8()
      for y in 0..<oh {
        let g = dpad + y * dyW, row = buf + (y + ki * dh) * padW
        var xo = 0
        while xo < dyW {
          let d = VMath.load(g + xo), q = row + xo
          a0 = VMath.fma(d, VMath.load(q), a0)
          a1 = VMath.fma(d, VMath.load(q + dw), a1)
          a2 = VMath.fma(d, VMath.load(q + 2 * dw), a2)
          a3 = VMath.fma(d, VMath.load(q + 3 * dw), a3)
          a4 = VMath.fma(d, VMath.load(q + 4 * dw), a4)
          a5 = VMath.fma(d, VMath.load(q + 5 * dw), a5)
          a6 = VMath.fma(d, VMath.load(q + 6 * dw), a6)
          xo += 8
        }
      }
      let t = wc + ki * 7
      t[0] += a0.sum()
      t[1] += a1.sum()
      t[2] += a2.sum()
      t[3] += a3.sum()
      t[4] += a4.sum()
      t[5] += a5.sum()
      t[6] += a6.sum()
    }
  }

  func forward(_ x: Buffer, _ wt: Buffer, _ bias: Buffer?, _ out: Buffer, scratch: UnsafeMutablePointer<Float>) {
    let po = out.f32, px = x.f32, pw = wt.f32
    if depthwise {
      depthwiseForward(px, pw, po)
    } else {
      for b in 0..<n {
        for g in 0..<groups {
          im2col(px + (b * c + g * cg) * h * w, scratch)
          GEMM.sgemm(
            transA: false, transB: false, m: og, n: oh * ow, k: colRows, a: pw + g * og * colRows, b: scratch,
            c: po + (b * o + g * og) * oh * ow)
        }
      }
    }
    if let bias {
      let pb = bias.f32, plane = oh * ow
      Parallel.chunks(n * o, grain: Swift.max(1, Elementwise.grain / Swift.max(plane, 1))) { _, planes in
        for p in planes {
          let bv = V8(repeating: pb[p % o])
          VMath.map(plane, po + p * plane, po + p * plane) { $0 + bv }
        }
      }
    }
  }

  func gradInput(_ dy: Buffer, _ wt: Buffer, _ dx: Buffer, scratch: UnsafeMutablePointer<Float>) {
    let pd = dy.f32, pw = wt.f32, px = dx.f32
    if depthwise {
      depthwiseGradInput(pd, pw, px)
      return
    }
    px.update(repeating: 0, count: dx.count)
    for b in 0..<n {
      for g in 0..<groups {
        // col = W_gᵀ · dy_g, then scatter back.
        GEMM.sgemm(
          transA: true, transB: false, m: colRows, n: oh * ow, k: og, a: pw + g * og * colRows, b: pd + (b * o + g * og) * oh * ow,
          c: scratch)
        col2im(scratch, px + (b * c + g * cg) * h * w)
      }
    }
  }

  func gradWeight(_ x: Buffer, _ dy: Buffer, _ dwt: Buffer, scratch: UnsafeMutablePointer<Float>) {
    let pd = dy.f32, px = x.f32, pw = dwt.f32
    if depthwise {
      depthwiseGradWeight(px, pd, pw)
      return
    }
    pw.update(repeating: 0, count: dwt.count)
    for b in 0..<n {
      for g in 0..<groups {
        im2col(px + (b * c + g * cg) * h * w, scratch)
        GEMM.sgemm(
          transA: false, transB: true, m: og, n: colRows, k: oh * ow, a: pd + (b * o + g * og) * oh * ow, b: scratch, beta: 1,
          c: pw + g * og * colRows)
      }
    }
  }
}
