// LinearAlgebraKernels.swift: matmul, linear, gemm and convolution, all through OpenBLAS sgemm.
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

  /// Batched matmul with broadcast batch axes; `batch` is `matMulBatch`'s result.
  static func matMul(_ a: Buffer, _ b: Buffer, _ out: Buffer, batch p: [[Int]]) {
    let sa = a.type.shape, sb = b.type.shape
    let m = sa[sa.count - 2], k = sa[sa.count - 1], n = sb[sb.count - 1]
    let (batch, ba, bb, bs) = (p[0], p[1], p[2], p[3])
    var count = 1
    for d in batch { count *= d }
    for i in 0..<count {
      var oa = 0, ob = 0
      for d in 0..<batch.count {
        let c = (i / bs[d]) % batch[d]
        oa += c * ba[d]
        ob += c * bb[d]
      }
      GEMM.sgemm(transA: false, transB: false, m: m, n: n, k: k, a: a.f32 + oa * m * k, b: b.f32 + ob * k * n, c: out.f32 + i * m * n)
    }
  }

  /// Splits a shape around `axis` into (outer, features, inner).
  static func around(_ shape: [Int], _ axis: Int) -> (Int, Int, Int) {
    (shape[..<axis].reduce(1, *), shape[axis], shape[(axis + 1)...].reduce(1, *))
  }

  /// y = x ·(axis) W (+ b).
  static func linear(axis: Int, layout: WeightLayout, _ x: Buffer, _ w: Buffer, _ bias: Buffer?, _ out: Buffer) {
    let (outer, fin, inner) = around(x.type.shape, axis)
    let fout = out.type.shape[axis]
    if inner == 1 {
      // Y[outer, out] = X[outer, in] · W' where W' = W (io) or Wᵀ (oi).
      GEMM.sgemm(transA: false, transB: layout == .outIn, m: outer, n: fout, k: fin, a: x.f32, b: w.f32, c: out.f32)
      if let bias {
        for r in 0..<outer {
          let row = out.f32 + r * fout
          for j in 0..<fout { row[j] += bias.f32[j] }
        }
      }
    } else {
      // Per outer index: Y[out, inner] = W''[out, in] · X[in, inner].
      for o in 0..<outer {
        GEMM.sgemm(
          transA: layout == .inOut, transB: false, m: fout, n: inner, k: fin, a: w.f32, b: x.f32 + o * fin * inner,
          c: out.f32 + o * fout * inner)
        if let bias {
          for j in 0..<fout {
            let row = out.f32 + (o * fout + j) * inner
            for i in 0..<inner { row[i] += bias.f32[j] }
          }
        }
      }
    }
  }

  /// dW for `linear`, in the weight's own layout.
  static func linearGradWeight(axis: Int, layout: WeightLayout, _ x: Buffer, _ dy: Buffer, _ dw: Buffer) {
    let (outer, fin, inner) = around(x.type.shape, axis)
    let fout = dy.type.shape[axis]
    if inner == 1 {
      if layout == .outIn {
        GEMM.sgemm(transA: true, transB: false, m: fout, n: fin, k: outer, a: dy.f32, b: x.f32, c: dw.f32)
      } else {
        GEMM.sgemm(transA: true, transB: false, m: fin, n: fout, k: outer, a: x.f32, b: dy.f32, c: dw.f32)
      }
    } else {
      dw.f32.update(repeating: 0, count: dw.count)
      for o in 0..<outer {
        let xo = x.f32 + o * fin * inner, dyo = dy.f32 + o * fout * inner
        if layout == .outIn {
          GEMM.sgemm(transA: false, transB: true, m: fout, n: fin, k: inner, a: dyo, b: xo, beta: 1, c: dw.f32)
        } else {
          GEMM.sgemm(transA: false, transB: true, m: fin, n: fout, k: inner, a: xo, b: dyo, beta: 1, c: dw.f32)
        }
      }
    }
  }

  /// out = alpha · op(A) · op(B) + beta · C.
  /// `cStrides`: C's strides broadcast to the output (prepared once).
  static func gemm(
    transA: Bool, transB: Bool, alpha: Float, beta: Float, _ a: Buffer, _ b: Buffer, _ c: Buffer?, _ out: Buffer, cStrides: [[Int]]
  ) {
    let m = out.type.shape[0], n = out.type.shape[1]
    let k = transA ? a.type.shape[0] : a.type.shape[1]
    if let c { Movement.strided(c, base: 0, strides: cStrides, out) }
    GEMM.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a.f32, b: b.f32, beta: c == nil ? 0 : beta, c: out.f32)
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

  /// Walks the im2col matrix: body(column offset, image offset or nil where the tap falls in
  /// the padding). col[(ci, ki, kj), (y, x)] pairs with x[ci, y·sh − ph + ki·dh, x·sw − pw + kj·dw].
  @inline(__always) func forEachColumnEntry(_ body: (_ colOffset: Int, _ imageOffset: Int?) -> Void) {
    var r = 0
    for ci in 0..<cg {
      for ki in 0..<kh {
        for kj in 0..<kw {
          for y in 0..<oh {
            let iy = y * sh - ph + ki * dh
            for xx in 0..<ow {
              let ix = xx * sw - pw + kj * dw
              body((r * oh + y) * ow + xx, iy >= 0 && iy < h && ix >= 0 && ix < w ? (ci * h + iy) * w + ix : nil)
            }
          }
          r += 1
        }
      }
    }
  }

  func im2col(_ x: UnsafePointer<Float>, _ col: UnsafeMutablePointer<Float>) {
    forEachColumnEntry { c, i in col[c] = i.map { x[$0] } ?? 0 }
  }

  /// The adjoint of im2col: accumulates col back into dx.
  func col2im(_ col: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>) {
    forEachColumnEntry { c, i in if let i { dx[i] += col[c] } }
  }

  /// Calls body(channel plane offset in x, weight offset, output plane offset) for depthwise taps.
  @inline(__always) func depthwiseTaps(_ body: (_ xi: Int, _ oi: Int, _ wv: Int) -> Void, channel ch: Int) {
    for ki in 0..<kh {
      for kj in 0..<kw {
        for y in 0..<oh {
          let iy = y * sh - ph + ki * dh
          guard iy >= 0 && iy < h else { continue }
          for xx in 0..<ow {
            let ix = xx * sw - pw + kj * dw
            if ix >= 0 && ix < w { body(iy * w + ix, y * ow + xx, (ch * kh + ki) * kw + kj) }
          }
        }
      }
    }
  }

  func forward(_ x: Buffer, _ wt: Buffer, _ bias: Buffer?, _ out: Buffer, scratch: UnsafeMutablePointer<Float>) {
    let po = out.f32, px = x.f32, pw = wt.f32
    if depthwise {
      po.update(repeating: 0, count: out.count)
      for b in 0..<n {
        for ch in 0..<c {
          let xi = px + (b * c + ch) * h * w, oo = po + (b * o + ch) * oh * ow
          depthwiseTaps({ xoff, ooff, woff in oo[ooff] += xi[xoff] * pw[woff] }, channel: ch)
        }
      }
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
      for b in 0..<n {
        for ch in 0..<o {
          let plane = po + (b * o + ch) * oh * ow
          for i in 0..<(oh * ow) { plane[i] += bias.f32[ch] }
        }
      }
    }
  }

  func gradInput(_ dy: Buffer, _ wt: Buffer, _ dx: Buffer, scratch: UnsafeMutablePointer<Float>) {
    let pd = dy.f32, pw = wt.f32, px = dx.f32
    px.update(repeating: 0, count: dx.count)
    for b in 0..<n {
      if depthwise {
        for ch in 0..<c {
          let di = px + (b * c + ch) * h * w, dd = pd + (b * o + ch) * oh * ow
          depthwiseTaps({ xoff, ooff, woff in di[xoff] += dd[ooff] * pw[woff] }, channel: ch)
        }
        continue
      }
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
    pw.update(repeating: 0, count: dwt.count)
    for b in 0..<n {
      if depthwise {
        for ch in 0..<c {
          let xi = px + (b * c + ch) * h * w, dd = pd + (b * o + ch) * oh * ow
          depthwiseTaps({ xoff, ooff, woff in pw[woff] += dd[ooff] * xi[xoff] }, channel: ch)
        }
        continue
      }
      for g in 0..<groups {
        im2col(px + (b * c + g * cg) * h * w, scratch)
        GEMM.sgemm(
          transA: false, transB: true, m: og, n: colRows, k: oh * ow, a: pd + (b * o + g * og) * oh * ow, b: scratch, beta: 1,
          c: pw + g * og * colRows)
      }
    }
  }
}
