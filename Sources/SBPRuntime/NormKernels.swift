// NormKernels.swift: layer_norm, softmax and softmax cross-entropy, forward and backward.
import Glibc
import SBPIR

/// Row-wise kernels: layer_norm, softmax and the cross-entropy loss, forward and backward.
enum Norm {
  /// Mean and 1/sqrt(variance + eps) of one row (population variance, as PyTorch).
  @inline(__always) static func rowStats(_ xr: UnsafeMutablePointer<Float>, _ n: Int, _ eps: Float) -> (mean: Float, inv: Float) {
    var mean: Float = 0
    for i in 0..<n { mean += xr[i] }
    mean /= Float(n)
    var v: Float = 0
    for i in 0..<n { v += (xr[i] - mean) * (xr[i] - mean) }
    return (mean, 1 / (v / Float(n) + eps).squareRoot())
  }

  static func layerNorm(axis: Int, eps: Float, _ x: Buffer, _ g: Buffer, _ b: Buffer?, _ out: Buffer) {
    let s = x.type.shape
    let rows = s[..<axis].reduce(1, *), n = s[axis...].reduce(1, *)
    for r in 0..<rows {
      let xr = x.f32 + r * n, yr = out.f32 + r * n
      let (mean, inv) = rowStats(xr, n, eps)
      for i in 0..<n { yr[i] = (xr[i] - mean) * inv * g.f32[i] + (b?.f32[i] ?? 0) }
    }
  }

  static func layerNormGrad(axis: Int, eps: Float, _ x: Buffer, _ g: Buffer, _ dy: Buffer, _ dx: Buffer, _ dg: Buffer, _ db: Buffer) {
    let s = x.type.shape
    let rows = s[..<axis].reduce(1, *), n = s[axis...].reduce(1, *)
    dg.f32.update(repeating: 0, count: n)
    db.f32.update(repeating: 0, count: n)
    for r in 0..<rows {
      let xr = x.f32 + r * n, dyr = dy.f32 + r * n, dxr = dx.f32 + r * n
      let (mean, inv) = rowStats(xr, n, eps)
      var sumD: Float = 0, sumDX: Float = 0
      for i in 0..<n {
        let xh = (xr[i] - mean) * inv
        let d = dyr[i] * g.f32[i]
        sumD += d
        sumDX += d * xh
        dg.f32[i] += dyr[i] * xh
        db.f32[i] += dyr[i]
      }
      let k = 1 / Float(n)
      for i in 0..<n {
        let xh = (xr[i] - mean) * inv
        dxr[i] = inv * (dyr[i] * g.f32[i] - k * sumD - xh * k * sumDX)
      }
    }
  }

  /// Softmax along `axis`, for any layout.
  static func softmax(axis: Int, _ x: Buffer, _ out: Buffer) {
    let (outer, dim, inner) = LinearAlgebra.around(x.type.shape, axis)
    for o in 0..<outer {
      for i in 0..<inner {
        let base = o * dim * inner + i
        var m = -Float.infinity
        for k in 0..<dim { m = max(m, x.f32[base + k * inner]) }
        var sum: Float = 0
        for k in 0..<dim {
          let e = expf(x.f32[base + k * inner] - m)
          out.f32[base + k * inner] = e
          sum += e
        }
        let inv = 1 / sum
        for k in 0..<dim { out.f32[base + k * inner] *= inv }
      }
    }
  }

  static func softmaxGrad(axis: Int, _ y: Buffer, _ dy: Buffer, _ dx: Buffer) {
    let (outer, dim, inner) = LinearAlgebra.around(y.type.shape, axis)
    for o in 0..<outer {
      for i in 0..<inner {
        let base = o * dim * inner + i
        var dot: Float = 0
        for k in 0..<dim { dot += y.f32[base + k * inner] * dy.f32[base + k * inner] }
        for k in 0..<dim {
          let j = base + k * inner
          dx.f32[j] = y.f32[j] * (dy.f32[j] - dot)
        }
      }
    }
  }

  static func checkLabel(_ labels: Buffer, _ r: Int, classes: Int) throws -> Int {
    let t = labels.index(r)
    guard t >= 0, t < classes else { throw RuntimeError("label \(t) at row \(r) is out of range for \(classes) classes") }
    return t
  }

  /// Mean cross-entropy of softmax(logits) against integer labels.
  static func softmaxCrossEntropy(_ logits: Buffer, _ labels: Buffer, _ out: Buffer) throws {
    let b = logits.type.shape[0], c = logits.type.shape[1]
    var total: Double = 0
    for r in 0..<b {
      let row = logits.f32 + r * c
      let t = try checkLabel(labels, r, classes: c)
      var m = -Float.infinity
      for k in 0..<c { m = max(m, row[k]) }
      var s: Double = 0
      for k in 0..<c { s += Double(expf(row[k] - m)) }
      total += Double(m) + log(s) - Double(row[t])
    }
    out.f32[0] = Float(total / Double(b))
  }

  static func softmaxCrossEntropyGrad(_ logits: Buffer, _ labels: Buffer, _ dloss: Buffer, _ dx: Buffer) throws {
    let b = logits.type.shape[0], c = logits.type.shape[1]
    let scale = dloss.f32[0] / Float(b)
    for r in 0..<b {
      let row = logits.f32 + r * c, d = dx.f32 + r * c
      let t = try checkLabel(labels, r, classes: c)
      var m = -Float.infinity
      for k in 0..<c { m = max(m, row[k]) }
      var s: Float = 0
      for k in 0..<c {
        d[k] = expf(row[k] - m)
        s += d[k]
      }
      for k in 0..<c { d[k] = d[k] / s * scale }
      d[t] -= scale
    }
  }
}

/// Optimizer updates, in place on the parameter and its state (PyTorch's SGD and AdamW).
enum Optimizer {
  static func sgd(lr: Float, momentum: Float, wd: Float, _ p: Buffer, _ g: Buffer, _ v: Buffer) {
    let pp = p.f32, pg = g.f32, pv = v.f32
    for i in 0..<p.count {
      let d = pg[i] + wd * pp[i]
      pv[i] = momentum * pv[i] + d
      pp[i] -= lr * pv[i]
    }
  }

  static func adamw(lr: Float, b1: Float, b2: Float, eps: Float, wd: Float, step: Float, _ p: Buffer, _ g: Buffer, _ m: Buffer, _ v: Buffer)
  {
    let c1 = 1 - powf(b1, step), c2 = 1 - powf(b2, step)
    for i in 0..<p.count {
      p.f32[i] *= 1 - lr * wd
      m.f32[i] = b1 * m.f32[i] + (1 - b1) * g.f32[i]
      v.f32[i] = b2 * v.f32[i] + (1 - b2) * g.f32[i] * g.f32[i]
      p.f32[i] -= lr * (m.f32[i] / c1) / ((v.f32[i] / c2).squareRoot() + eps)
    }
  }
}
