// NormKernels.swift: layer_norm, softmax and softmax cross-entropy, forward and backward.
import Glibc
import SBPIR

/// Row-wise kernels: layer_norm, softmax and the cross-entropy loss, forward and backward.
enum Norm {
  /// Mean and 1/sqrt(variance + eps) of one row (population variance, as PyTorch).
  @inline(__always) static func rowStats(_ xr: UnsafeMutablePointer<Float>, _ n: Int, _ eps: Float) -> (mean: Float, inv: Float) {
    let mean = VMath.sum(n, xr) / Float(n)
    var acc = V8()
    var i = 0
    while i + 8 <= n {
      let d = VMath.load(xr + i) - mean
      acc += d * d
      i += 8
    }
    var v = acc.sum()
    while i < n {
      v += (xr[i] - mean) * (xr[i] - mean)
      i += 1
    }
    return (mean, 1 / (v / Float(n) + eps).squareRoot())
  }

  /// Rows per thread below which the row kernels stay on one thread.
  @inline(__always) static func rowGrain(_ n: Int) -> Int { Swift.max(1, Elementwise.grain / Swift.max(n, 1)) }

  static func layerNorm(axis: Int, eps: Float, _ x: Buffer, _ g: Buffer, _ b: Buffer?, _ out: Buffer) {
    let s = x.type.shape
    let rows = s[..<axis].reduce(1, *), n = s[axis...].reduce(1, *)
    let px = x.f32, py = out.f32, pg = g.f32, pb = b?.f32
    Parallel.chunks(rows, grain: rowGrain(n)) { _, range in
      for r in range {
        let xr = px + r * n, yr = py + r * n
        let (mean, inv) = rowStats(xr, n, eps)
        if let pb {
          VMath.map(n, xr, pg, yr) { xv, gv in (xv - mean) * inv * gv }
          VMath.map(n, yr, pb, yr) { $0 + $1 }
        } else {
          VMath.map(n, xr, pg, yr) { xv, gv in (xv - mean) * inv * gv }
        }
      }
    }
  }

  /// Row `r` of the normalized x̂ (bf16 or f32) of rows of `n`, as f32 into `dst`.
  @inline(__always) static func loadRow(_ xh: Buffer, _ r: Int, _ n: Int, _ dst: UnsafeMutablePointer<Float>) {
    if xh.type.dtype == .bf16 {
      BF16GEMM.widen(xh.bf16 + r * n, dst, count: n)
    } else {
      dst.update(from: xh.f32 + r * n, count: n)
    }
  }

  /// `layer_norm_saving`: y as `layerNorm` computes it, plus x̂ rounded to bf16 and 1/σ per
  /// row, which are all its gradient and its recomputation read.
  static func layerNormSaving(
    axis: Int, eps: Float, _ x: Buffer, _ g: Buffer, _ b: Buffer?, _ y: Buffer, _ xhat: Buffer, _ rstd: Buffer
  ) {
    let s = x.type.shape
    let rows = s[..<axis].reduce(1, *), n = s[axis...].reduce(1, *)
    let px = x.f32, py = y.f32, pg = g.f32, pb = b?.f32, ph = xhat.bf16, pr = rstd.f32
    Parallel.chunks(rows, grain: rowGrain(n)) { _, range in
      for r in range {
        let xr = px + r * n, yr = py + r * n
        let (mean, inv) = rowStats(xr, n, eps)
        pr[r] = inv
        VMath.map(n, xr, yr) { ($0 - mean) * inv }
        BF16GEMM.narrow(yr, ph + r * n, count: n)
        affineRow(n, yr, pg, pb, yr)
      }
    }
  }

  /// `layer_norm_affine`: x̂·scale + bias, row by row.
  static func layerNormAffine(axis: Int, _ xhat: Buffer, _ g: Buffer, _ b: Buffer?, _ y: Buffer) {
    let s = xhat.type.shape
    let rows = s[..<axis].reduce(1, *), n = s[axis...].reduce(1, *)
    let py = y.f32, pg = g.f32, pb = b?.f32
    Parallel.chunks(rows, grain: rowGrain(n)) { _, range in
      for r in range {
        let yr = py + r * n
        loadRow(xhat, r, n, yr)
        affineRow(n, yr, pg, pb, yr)
      }
    }
  }

  @inline(__always) static func affineRow(
    _ n: Int, _ xr: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, _ b: UnsafeMutablePointer<Float>?,
    _ yr: UnsafeMutablePointer<Float>
  ) {
    if let b {
      var i = 0
      while i + 8 <= n {
        VMath.store(VMath.load(xr + i) * VMath.load(g + i) + VMath.load(b + i), yr + i)
        i += 8
      }
      while i < n {
        yr[i] = xr[i] * g[i] + b[i]
        i += 1
      }
    } else {
      VMath.map(n, xr, g, yr) { $0 * $1 }
    }
  }

  /// `layer_norm_grad` from x: each row's x̂ is recomputed from its statistics.
  static func layerNormGrad(axis: Int, eps: Float, _ x: Buffer, _ g: Buffer, _ dy: Buffer, _ dx: Buffer, _ dg: Buffer, _ db: Buffer) {
    let n = x.type.shape[axis...].reduce(1, *), px = x.f32
    layerNormBackward(rows: x.count / max(n, 1), n, g, dy, dx, dg, db) { r, xh in
      let xr = px + r * n
      let (mean, inv) = rowStats(xr, n, eps)
      VMath.map(n, xr, xh) { ($0 - mean) * inv }
      return inv
    }
  }

  /// `layer_norm_grad` from x̂ and rstd, what `layerNormSaving` kept.
  static func layerNormGradSaved(
    axis: Int, _ xhat: Buffer, _ g: Buffer, _ dy: Buffer, _ rstd: Buffer, _ dx: Buffer, _ dg: Buffer, _ db: Buffer
  ) {
    let n = xhat.type.shape[axis...].reduce(1, *), pr = rstd.f32
    layerNormBackward(rows: xhat.count / max(n, 1), n, g, dy, dx, dg, db) { r, xh in
      loadRow(xhat, r, n, xh)
      return pr[r]
    }
  }

  /// dx = rstd·(dy·g − mean(dy·g) − x̂·mean(dy·g·x̂)) per row, dscale = Σ dy·x̂ and dbias = Σ dy
  /// over rows. `normalized(r, into)` writes row r's x̂ into dx's row, which the last loop
  /// then overwrites in place, and returns its 1/σ.
  static func layerNormBackward(
    rows: Int, _ n: Int, _ g: Buffer, _ dy: Buffer, _ dx: Buffer, _ dg: Buffer, _ db: Buffer,
    normalized: (Int, UnsafeMutablePointer<Float>) -> Float
  ) {
    let chunks = Parallel.chunkCount(rows, grain: rowGrain(n))
    // Chunk 0 accumulates into dg/db; chunk c > 0 into its own pair of rows of `extra`.
    let extra = Scratch.floats(2 * n * (chunks - 1))
    let pg = g.f32, pdy = dy.f32, pdx = dx.f32
    let k = 1 / Float(n)
    Parallel.chunks(rows, grain: rowGrain(n)) { c, range in
      let dgc = c == 0 ? dg.f32 : extra + 2 * n * (c - 1), dbc = c == 0 ? db.f32 : dgc + n
      dgc.update(repeating: 0, count: n)
      dbc.update(repeating: 0, count: n)
      for r in range {
        let dyr = pdy + r * n, dxr = pdx + r * n
        let inv = normalized(r, dxr)
        var sD = V8(), sDX = V8()
        var i = 0
        while i + 8 <= n {
          let xh = VMath.load(dxr + i), dyv = VMath.load(dyr + i)
          let d = dyv * VMath.load(pg + i)
          sD += d
          sDX += d * xh
          VMath.store(VMath.load(dgc + i) + dyv * xh, dgc + i)
          VMath.store(VMath.load(dbc + i) + dyv, dbc + i)
          i += 8
        }
        var sumD = sD.sum(), sumDX = sDX.sum()
        while i < n {
          let xh = dxr[i], d = dyr[i] * pg[i]
          sumD += d
          sumDX += d * xh
          dgc[i] += dyr[i] * xh
          dbc[i] += dyr[i]
          i += 1
        }
        let a = k * sumD, bx = k * sumDX
        i = 0
        while i + 8 <= n {
          VMath.store(inv * (VMath.load(dyr + i) * VMath.load(pg + i) - a - VMath.load(dxr + i) * bx), dxr + i)
          i += 8
        }
        while i < n {
          dxr[i] = inv * (dyr[i] * pg[i] - a - dxr[i] * bx)
          i += 1
        }
      }
    }
    for c in 1..<chunks {
      VMath.map(n, dg.f32, extra + 2 * n * (c - 1), dg.f32) { $0 + $1 }
      VMath.map(n, db.f32, extra + 2 * n * (c - 1) + n, db.f32) { $0 + $1 }
    }
  }

  /// Softmax of `rows` contiguous rows of `dim` (x and y may be the same memory).
  @inline(__always) static func softmaxRows(_ rows: Int, _ dim: Int, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    for r in 0..<rows {
      let xr = x + r * dim, yr = y + r * dim
      let m = VMath.max(dim, xr)
      VMath.map(dim, xr, yr) { VMath.exp($0 - m) }
      let inv = 1 / VMath.sum(dim, yr)
      VMath.map(dim, yr, yr) { $0 * inv }
    }
  }

  /// dx = y ⊙ (dy − ⟨y, dy⟩) over `rows` contiguous rows of `dim` (dx may be dy's memory).
  @inline(__always) static func softmaxGradRows(
    _ rows: Int, _ dim: Int, _ y: UnsafePointer<Float>, _ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>
  ) {
    for r in 0..<rows {
      let yr = y + r * dim, dyr = dy + r * dim
      let dot = VMath.dot(dim, yr, dyr)
      VMath.map(dim, yr, dyr, dx + r * dim) { yv, dv in yv * (dv - dot) }
    }
  }

  /// Softmax along `axis`, for any layout.
  static func softmax(axis: Int, _ x: Buffer, _ out: Buffer) {
    let (outer, dim, inner) = LinearAlgebra.around(x.type.shape, axis)
    let px = x.f32, py = out.f32
    if inner == 1 {
      Parallel.chunks(outer, grain: rowGrain(dim)) { _, range in
        for r in range { softmaxRows(1, dim, px + r * dim, py + r * dim) }
      }
      return
    }
    for o in 0..<outer {
      for i in 0..<inner {
        let base = o * dim * inner + i
        var m = -Float.infinity
        for k in 0..<dim { m = max(m, px[base + k * inner]) }
        var sum: Float = 0
        for k in 0..<dim {
          let e = expf(px[base + k * inner] - m)
          py[base + k * inner] = e
          sum += e
        }
        let inv = 1 / sum
        for k in 0..<dim { py[base + k * inner] *= inv }
      }
    }
  }

  static func softmaxGrad(axis: Int, _ y: Buffer, _ dy: Buffer, _ dx: Buffer) {
    let (outer, dim, inner) = LinearAlgebra.around(y.type.shape, axis)
    let py = y.f32, pdy = dy.f32, pdx = dx.f32
    if inner == 1 {
      Parallel.chunks(outer, grain: rowGrain(dim)) { _, range in
        for r in range { softmaxGradRows(1, dim, py + r * dim, pdy + r * dim, pdx + r * dim) }
      }
      return
    }
    for o in 0..<outer {
      for i in 0..<inner {
        let base = o * dim * inner + i
        var dot: Float = 0
        for k in 0..<dim { dot += py[base + k * inner] * pdy[base + k * inner] }
        for k in 0..<dim {
          let j = base + k * inner
          pdx[j] = py[j] * (pdy[j] - dot)
        }
      }
    }
  }

  static func checkLabel(_ labels: Buffer, _ r: Int, classes: Int) throws -> Int {
    let t = labels.index(r)
    guard t >= 0, t < classes else { throw RuntimeError("label \(t) at row \(r) is out of range for \(classes) classes") }
    return t
  }

  /// Mean cross-entropy of softmax(logits) against integer labels, smoothed: the target is
  /// (1 − ε)·one-hot + ε/C, so a row's loss is lse − (1 − ε)·z_t − ε·mean(z).
  ///
  /// With soft targets t (f32 [B, C]) the target is (1 − ε)·t + ε/C, which is timm's
  /// mixed target: smoothing is linear in the one-hots it mixes.
  static func softmaxCrossEntropy(_ logits: Buffer, _ labels: Buffer, _ out: Buffer, smoothing e: Float = 0) throws {
    let b = logits.type.shape[0], c = logits.type.shape[1]
    var total: Double = 0
    if labels.type.rank == 2 {
      for r in 0..<b {
        let row = logits.f32 + r * c, target = labels.f32 + r * c
        var m = -Float.infinity
        for k in 0..<c { m = max(m, row[k]) }
        var s: Double = 0
        for k in 0..<c { s += Double(expf(row[k] - m)) }
        let lse = Double(m) + log(s)
        for k in 0..<c { total += Double((1 - e) * target[k] + e / Float(c)) * (lse - Double(row[k])) }
      }
      out.f32[0] = Float(total / Double(b))
      return
    }
    for r in 0..<b {
      let row = logits.f32 + r * c
      let t = try checkLabel(labels, r, classes: c)
      var m = -Float.infinity
      for k in 0..<c { m = max(m, row[k]) }
      var s: Double = 0, sum: Double = 0
      for k in 0..<c {
        s += Double(expf(row[k] - m))
        sum += Double(row[k])
      }
      let lse = Double(m) + log(s)
      total += e == 0 ? lse - Double(row[t]) : lse - Double(1 - e) * Double(row[t]) - Double(e) * sum / Double(c)
    }
    out.f32[0] = Float(total / Double(b))
  }

  /// softmax − target, scaled by dloss / B.
  static func softmaxCrossEntropyGrad(_ logits: Buffer, _ labels: Buffer, _ dloss: Buffer, _ dx: Buffer, smoothing e: Float = 0) throws {
    let b = logits.type.shape[0], c = logits.type.shape[1]
    let scale = dloss.f32[0] / Float(b)
    for r in 0..<b {
      let row = logits.f32 + r * c, d = dx.f32 + r * c
      let t = labels.type.rank == 2 ? 0 : try checkLabel(labels, r, classes: c)
      var m = -Float.infinity
      for k in 0..<c { m = max(m, row[k]) }
      var s: Float = 0
      for k in 0..<c {
        d[k] = expf(row[k] - m)
        s += d[k]
      }
      let uniform = e / Float(c) * scale
      for k in 0..<c { d[k] = d[k] / s * scale - uniform }
      if labels.type.rank == 2 {
        for k in 0..<c { d[k] -= (1 - e) * scale * labels.f32[r * c + k] }
      } else {
        d[t] -= (1 - e) * scale
      }
    }
  }
}

/// Optimizer updates, in place on the parameter and its state (PyTorch's SGD and AdamW).
enum Optimizer {
  /// `gscale` multiplies the gradient first (gradient clipping).
  static func sgd(lr: Float, momentum: Float, wd: Float, gscale: Float = 1, _ p: Buffer, _ g: Buffer, _ v: Buffer) {
    let pp = p.f32, pg = g.f32, pv = v.f32
    Parallel.chunks(p.count, grain: Elementwise.grain) { _, r in
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let pi = VMath.load(pp + i)
        let vi = momentum * VMath.load(pv + i) + (VMath.load(pg + i) * gscale + wd * pi)
        VMath.store(vi, pv + i)
        VMath.store(pi - lr * vi, pp + i)
        i += 8
      }
      while i < r.upperBound {
        let d = pg[i] * gscale + wd * pp[i]
        pv[i] = momentum * pv[i] + d
        pp[i] -= lr * pv[i]
        i += 1
      }
    }
  }

  static func adamw(
    lr: Float, b1: Float, b2: Float, eps: Float, wd: Float, gscale: Float = 1, step: Float, _ p: Buffer, _ g: Buffer, _ m: Buffer,
    _ v: Buffer
  ) {
    let c1 = 1 - powf(b1, step), c2 = 1 - powf(b2, step)
    let pp = p.f32, pg = g.f32, pm = m.f32, pv = v.f32
    @inline(__always) func update(_ pi: V8, _ gi: V8, _ mi: V8, _ vi: V8) -> (p: V8, m: V8, v: V8) {
      let m2 = b1 * mi + (1 - b1) * gi
      let v2 = b2 * vi + (1 - b2) * gi * gi
      return (pi * (1 - lr * wd) - lr * (m2 / c1) / ((v2 / c2).squareRoot() + eps), m2, v2)
    }
    Parallel.chunks(p.count, grain: Elementwise.grain) { _, r in
      var i = r.lowerBound
      while i + 8 <= r.upperBound {
        let u = update(VMath.load(pp + i), VMath.load(pg + i) * gscale, VMath.load(pm + i), VMath.load(pv + i))
        VMath.store(u.p, pp + i)
        VMath.store(u.m, pm + i)
        VMath.store(u.v, pv + i)
        i += 8
      }
      while i < r.upperBound {
        let u = update(V8(repeating: pp[i]), V8(repeating: pg[i] * gscale), V8(repeating: pm[i]), V8(repeating: pv[i]))
        (pp[i], pm[i], pv[i]) = (u.p[0], u.m[0], u.v[0])
        i += 1
      }
    }
  }
}
