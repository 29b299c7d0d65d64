// BatchNormKernels.swift: BatchNorm over the channel axis of [N, C, …]: evaluation, training with batch statistics, its gradient, and the running averages.
import SBPIR

/// BatchNorm kernels. Channels are independent, so they split over the threads; each sums
/// over its N·spatial values in double precision, as PyTorch's CPU kernel accumulates.
enum BatchNorm {
  /// (n, c, spatial) of an [N, C, …] tensor.
  static func dims(_ t: TensorType) -> (n: Int, c: Int, s: Int) { (t.shape[0], t.shape[1], t.shape.dropFirst(2).reduce(1, *)) }

  /// Calls `body(ch, offsets)` per channel with the start of each of its N spatial runs.
  @inline(__always) static func forEachChannel(_ t: TensorType, _ body: (_ ch: Int, _ runs: StrideTo<Int>) -> Void) {
    let (n, c, s) = dims(t)
    Parallel.chunks(c, grain: 1) { _, range in
      for ch in range { body(ch, stride(from: ch * s, to: n * c * s, by: c * s)) }
    }
  }

  static func inference(epsilon: Float, _ x: Buffer, _ scale: Buffer, _ bias: Buffer, _ mean: Buffer, _ variance: Buffer, _ y: Buffer) {
    let s = dims(x.type).s
    let px = x.f32, py = y.f32
    forEachChannel(x.type) { ch, runs in
      let k = scale.f32[ch] / (variance.f32[ch] + epsilon).squareRoot(), b = bias.f32[ch] - mean.f32[ch] * k
      for o in runs { for i in o..<(o + s) { py[i] = px[i] * k + b } }
    }
  }

  /// y with the batch's mean and biased variance per channel, which it also returns.
  static func training(
    epsilon: Float, _ x: Buffer, _ scale: Buffer, _ bias: Buffer, _ y: Buffer, _ mean: Buffer, _ variance: Buffer
  ) {
    let (n, _, s) = dims(x.type)
    let m = Double(n * s)
    forEachChannel(x.type) { ch, runs in
      let mu = sum(x, runs, s) / m
      normalize(epsilon, x, scale, bias, y, mean, variance, ch, runs, s, mu: mu, variance: squares(x, runs, s, around: mu) / m)
    }
  }

  /// Σx over one channel's runs of `s` values.
  @inline(__always) static func sum(_ x: Buffer, _ runs: StrideTo<Int>, _ s: Int) -> Double {
    let px = x.f32
    var sum = 0.0
    for o in runs { for i in o..<(o + s) { sum += Double(px[i]) } }
    return sum
  }

  /// Σ(x − μ)² over one channel's runs.
  @inline(__always) static func squares(_ x: Buffer, _ runs: StrideTo<Int>, _ s: Int, around mu: Double) -> Double {
    let px = x.f32
    var sq = 0.0
    for o in runs { for i in o..<(o + s) { sq += (Double(px[i]) - mu) * (Double(px[i]) - mu) } }
    return sq
  }

  /// Records channel `ch`'s statistics and writes its y = (x − μ)/σ · scale + bias.
  @inline(__always) static func normalize(
    _ epsilon: Float, _ x: Buffer, _ scale: Buffer, _ bias: Buffer, _ y: Buffer, _ mean: Buffer, _ variance: Buffer, _ ch: Int,
    _ runs: StrideTo<Int>, _ s: Int, mu: Double, variance v: Double
  ) {
    let px = x.f32, py = y.f32
    mean.f32[ch] = Float(mu)
    variance.f32[ch] = Float(v)
    let k = Float(Double(scale.f32[ch]) / (v + Double(epsilon)).squareRoot()), b = bias.f32[ch] - Float(mu) * k
    for o in runs { for i in o..<(o + s) { py[i] = px[i] * k + b } }
  }

  /// dx, dscale, dbias of `training`: with x̂ = (x − μ)/σ, dbias = Σdy, dscale = Σdy·x̂ and
  /// dx = scale/σ · (dy − dbias/m − x̂·dscale/m).
  static func gradient(
    epsilon: Float, _ x: Buffer, _ scale: Buffer, _ mean: Buffer, _ variance: Buffer, _ dy: Buffer, _ dx: Buffer, _ dscale: Buffer,
    _ dbias: Buffer
  ) {
    let (n, _, s) = dims(x.type)
    let m = Double(n * s)
    forEachChannel(x.type) { ch, runs in
      let (sd, sdx) = gradientSums(epsilon, x, mean, variance, dy, dscale, dbias, ch, runs, s)
      inputGradient(epsilon, x, scale, mean, variance, dy, dx, ch, runs, s, sd: sd, sdx: sdx, count: m)
    }
  }

  /// Channel `ch`'s Σdy and Σdy·x̂, written as its dbias and dscale and returned.
  @inline(__always) static func gradientSums(
    _ epsilon: Float, _ x: Buffer, _ mean: Buffer, _ variance: Buffer, _ dy: Buffer, _ dscale: Buffer, _ dbias: Buffer, _ ch: Int,
    _ runs: StrideTo<Int>, _ s: Int
  ) -> (Double, Double) {
    let px = x.f32, pd = dy.f32
    let mu = Double(mean.f32[ch]), inv = 1 / (Double(variance.f32[ch]) + Double(epsilon)).squareRoot()
    var sd = 0.0, sdx = 0.0
    for o in runs {
      for i in o..<(o + s) {
        sd += Double(pd[i])
        sdx += Double(pd[i]) * (Double(px[i]) - mu) * inv
      }
    }
    dbias.f32[ch] = Float(sd)
    dscale.f32[ch] = Float(sdx)
    return (sd, sdx)
  }

  /// Channel `ch`'s dx from the sums over `count` values (the batch's, or every rank's).
  @inline(__always) static func inputGradient(
    _ epsilon: Float, _ x: Buffer, _ scale: Buffer, _ mean: Buffer, _ variance: Buffer, _ dy: Buffer, _ dx: Buffer, _ ch: Int,
    _ runs: StrideTo<Int>, _ s: Int, sd: Double, sdx: Double, count m: Double
  ) {
    let px = x.f32, pd = dy.f32, pg = dx.f32
    let mu = Double(mean.f32[ch]), inv = 1 / (Double(variance.f32[ch]) + Double(epsilon)).squareRoot()
    let k = Double(scale.f32[ch]) * inv
    for o in runs {
      for i in o..<(o + s) { pg[i] = Float(k * (Double(pd[i]) - sd / m - (Double(px[i]) - mu) * inv * sdx / m)) }
    }
  }

  /// mean' = m·mean + (1 − m)·μ and var' = m·var + (1 − m)·σ²·n/(n − 1), in place.
  static func runningStats(momentum: Float, count: Int, _ mean: Buffer, _ variance: Buffer, _ mu: Buffer, _ sigma2: Buffer) {
    let unbias = Float(count) / Float(count - 1)
    for ch in 0..<mean.count {
      mean.f32[ch] = momentum * mean.f32[ch] + (1 - momentum) * mu.f32[ch]
      variance.f32[ch] = momentum * variance.f32[ch] + (1 - momentum) * sigma2.f32[ch] * unbias
    }
  }
}
