// Transform.swift: timm's train and eval image transforms (RandomResizedCrop, flip, color jitter; resize and center crop), normalize into CHW floats.
import Foundation
import SBPIR

/// The transform's settings, with timm's names and defaults.
public struct TransformConfig: Sendable, Equatable {
  public enum Mode: String, Sendable, CaseIterable { case train, eval }
  public var mode: Mode = .train
  /// The plan's image: channels (3, or 1 for grey models), height and width.
  public var channels = 3, height = 224, width = 224
  /// Eval: the short side is resized to size / cropPct before the center crop.
  public var cropPct = 0.875
  /// nil: bicubic for eval, and for train a random pick of bilinear or bicubic per image (timm's
  /// train default, `random`).
  public var interpolation: Interpolation?
  /// RandomResizedCrop's area fraction and aspect-ratio range.
  public var scale: ClosedRange<Double> = 0.08...1
  public var ratio: ClosedRange<Double> = (3.0 / 4)...(4.0 / 3)
  public var hflip = 0.5
  /// Brightness, contrast and saturation each by a factor in [1 − j, 1 + j], in random order.
  public var colorJitter = 0.4
  public var mean: [Float] = [0.485, 0.456, 0.406]
  public var std: [Float] = [0.229, 0.224, 0.225]

  public init() {}
}

/// The per-image random choices of the train transform, from the image's own generator.
struct TrainDraw {
  var crop: (x: Int, y: Int, w: Int, h: Int)
  var flip: Bool
  var filter: Interpolation
  /// (kind 0 brightness / 1 contrast / 2 saturation, factor), in the order applied.
  var jitter: [(Int, Float)]
}

/// Turns an encoded image into a normalized CHW float tensor: one per worker, its decoder and
/// resampler memory reused so that steady-state work allocates nothing.
public final class ImageTransform: @unchecked Sendable {
  public let config: TransformConfig
  let decoder: ImageDecoder
  let resampler = Resampler()
  var window: [UInt8] = []
  var jitterOrder: [(Int, Float)] = []
  /// (v / 255 − mean) / std as v · scale − shift, per channel.
  let scale: [Float], shift: [Float]

  public init(_ config: TransformConfig) throws {
    self.config = config
    scale = (0..<config.channels).map { 1 / (255 * config.std[$0]) }
    shift = (0..<config.channels).map { config.mean[$0] / config.std[$0] }
    decoder = try ImageDecoder()
    window = [UInt8](repeating: 0, count: config.height * config.width * 3)
    jitterOrder.reserveCapacity(3)
  }

  /// The generator of one image: from the seed, the epoch and the sample's index, so the
  /// result does not depend on which worker runs it or when.
  public static func generator(seed: UInt64, epoch: Int, index: Int) -> SplitMix64 {
    var g = SplitMix64(seed: seed ^ 0x5DA7_A5E7_1A6E_0000)
    g.state &+= UInt64(epoch) &* 0xA24B_AED4_963E_E407
    _ = g.next()
    g.state &+= UInt64(index) &* 0x9FB2_1C65_1E98_DF25
    _ = g.next()
    return g
  }

  /// Decodes `data` and writes the transformed image to `out` (channels × height × width),
  /// drawing its random choices from `rng` (the image's own generator, taken by value so a
  /// caller's closure captures no mutable box).
  public func apply(_ data: UnsafeRawBufferPointer, rng: SplitMix64, into out: UnsafeMutablePointer<Float>) throws {
    var rng = rng
    let c = config
    let (w, h) = try decoder.size(of: data)
    switch c.mode {
    case .train:
      let draw = ImageTransform.drawTrain(c, width: w, height: h, rng: &rng, jitter: &jitterOrder)
      let e = ImageTransform.eighths(sourceWidth: draw.crop.w, sourceHeight: draw.crop.h, targetWidth: c.width, targetHeight: c.height)
      let img = try decoder.decode(data, eighths: e, fast: true, size: (w, h))
      let fx = Double(img.width) / Double(w), fy = Double(img.height) / Double(h)
      let box = (
        Double(draw.crop.x) * fx, Double(draw.crop.y) * fy, Double(draw.crop.x + draw.crop.w) * fx, Double(draw.crop.y + draw.crop.h) * fy
      )
      window.withUnsafeMutableBufferPointer { win in
        resampler.resample(
          img, box: box, outWidth: c.width, outHeight: c.height, left: 0, top: 0, width: c.width, height: c.height,
          filter: draw.filter, into: win.baseAddress!)
      }
      finish(flip: draw.flip, jitter: draw.jitter, into: out)
    case .eval:
      let (rw, rh) = ImageTransform.evalResize(c, width: w, height: h)
      // Decoded whole: the IDCT's scaling differs from PIL's antialiased reduction by up to
      // 0.6 in normalized units on noisy photographs, and eval must give what timm gives.
      let img = try decoder.decode(data, size: (w, h))
      // torchvision's CenterCrop rounds half to even, as Python's round does.
      let left = Int((Double(rw - c.width) / 2).rounded(.toNearestOrEven))
      let top = Int((Double(rh - c.height) / 2).rounded(.toNearestOrEven))
      window.withUnsafeMutableBufferPointer { win in
        resampler.resample(
          img, box: (0, 0, Double(img.width), Double(img.height)), outWidth: rw, outHeight: rh, left: left, top: top,
          width: c.width, height: c.height, filter: c.interpolation ?? .bicubic, into: win.baseAddress!)
      }
      finish(flip: false, jitter: [], into: out)
    }
  }

  /// timm's eval resize: the short side to floor(size / crop_pct), the long side in
  /// proportion (torchvision truncates it); a non-square target scales both sides.
  static func evalResize(_ c: TransformConfig, width w: Int, height h: Int) -> (Int, Int) {
    if c.height != c.width {
      return (Int((Double(c.width) / c.cropPct).rounded(.down)), Int((Double(c.height) / c.cropPct).rounded(.down)))
    }
    let r = Int((Double(c.height) / c.cropPct).rounded(.down))
    return w <= h ? (r, Int(Double(r) * Double(h) / Double(w))) : (Int(Double(r) * Double(w) / Double(h)), r)
  }

  /// The train transform's JPEG scale (in eighths): the smallest of 1/8, 1/4 and 1/2 that keeps
  /// the crop at least as large as the target (so the IDCT does the reduction when the target
  /// is at most half the crop, and the resampler the rest); whole size otherwise.
  static func eighths(sourceWidth sw: Int, sourceHeight sh: Int, targetWidth tw: Int, targetHeight th: Int) -> Int {
    for e in [1, 2, 4] where sw * e >= tw * 8 && sh * e >= th * 8 { return e }
    return 8
  }

  /// timm's RandomResizedCropAndInterpolation.get_params, then the flip, the interpolation
  /// and torchvision's ColorJitter order and factors.
  static func drawTrain(_ c: TransformConfig, width w: Int, height h: Int, rng: inout SplitMix64, jitter: inout [(Int, Float)])
    -> TrainDraw
  {
    func uniform(_ r: ClosedRange<Double>) -> Double { r.lowerBound + (r.upperBound - r.lowerBound) * Double(rng.next() >> 11) / Double(1 << 53) }
    func below(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
    let area = Double(w * h)
    var crop: (x: Int, y: Int, w: Int, h: Int)?
    for _ in 0..<10 {
      let target = uniform(c.scale) * area
      let aspect = exp(uniform(log(c.ratio.lowerBound)...log(c.ratio.upperBound)))
      let cw = Int((target * aspect).squareRoot().rounded(.toNearestOrEven))
      let ch = Int((target / aspect).squareRoot().rounded(.toNearestOrEven))
      if cw >= 1, ch >= 1, cw <= w, ch <= h {
        let y = below(h - ch + 1), x = below(w - cw + 1)
        crop = (x, y, cw, ch)
        break
      }
    }
    if crop == nil {
      let inRatio = Double(w) / Double(h)
      var cw = w, ch = h
      if inRatio < c.ratio.lowerBound {
        ch = Int((Double(cw) / c.ratio.lowerBound).rounded(.toNearestOrEven))
      } else if inRatio > c.ratio.upperBound {
        cw = Int((Double(ch) * c.ratio.upperBound).rounded(.toNearestOrEven))
      }
      crop = ((w - cw) / 2, (h - ch) / 2, max(cw, 1), max(ch, 1))
    }
    let filter = c.interpolation ?? (below(2) == 0 ? .bilinear : .bicubic)
    let flip = uniform(0...1) < c.hflip
    jitter.removeAll(keepingCapacity: true)
    if c.colorJitter > 0 {
      // torch.randperm(3)'s role: a random order of the three, Fisher–Yates.
      var kinds = SIMD3<Int>(0, 1, 2)
      for i in stride(from: 2, to: 0, by: -1) {
        let j = below(i + 1)
        (kinds[i], kinds[j]) = (kinds[j], kinds[i])
      }
      for i in 0..<3 { jitter.append((kinds[i], Float(uniform(max(0, 1 - c.colorJitter)...(1 + c.colorJitter))))) }
    }
    return TrainDraw(crop: crop!, flip: flip, filter: filter, jitter: jitter)
  }

  /// From the 8-bit window to normalized floats: the pixels (flipped if drawn) into planes of
  /// 0...255 values, the color jitter on the planes (blends with black, with the mean grey
  /// and with each pixel's grey, each clamped to 0...255 as PIL's are, but not rounded to 8
  /// bits between them), then (v / 255 − mean) / std per channel; one channel takes PIL's luma.
  func finish(flip: Bool, jitter: [(Int, Float)], into out: UnsafeMutablePointer<Float>) {
    let c = config, n = c.height * c.width
    window.withUnsafeBufferPointer { win in
      let p = win.baseAddress!
      let r = out, g = out + (c.channels == 3 ? n : 0), b = out + (c.channels == 3 ? 2 * n : 0)
      if c.channels == 1 {
        for y in 0..<c.height {
          for x in 0..<c.width {
            let s = p + 3 * (y * c.width + (flip ? c.width - 1 - x : x))
            out[y * c.width + x] = Float(ImageTransform.luma(s))
          }
        }
      } else {
        for y in 0..<c.height {
          let row = y * c.width
          for x in 0..<c.width {
            let s = p + 3 * (row + (flip ? c.width - 1 - x : x))
            (r[row + x], g[row + x], b[row + x]) = (Float(s[0]), Float(s[1]), Float(s[2]))
          }
        }
        for (kind, f) in jitter { ImageTransform.jitter(kind, f, r, g, b, count: n) }
      }
      for k in 0..<c.channels { ImageTransform.affine(out + k * n, count: n, scale: scale[k], shift: -shift[k]) }
    }
  }

  /// One color-jitter op on RGB planes of `count` values in 0...255. Plain loops over the
  /// planes, which the compiler vectorizes (SIMD8's generic min and max did not).
  static func jitter(_ kind: Int, _ f: Float, _ r: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, _ b: UnsafeMutablePointer<Float>, count n: Int) {
    switch kind {
    case 0, 1:
      var a: Float = 0
      if kind == 1 {
        var total: Float = 0
        for i in 0..<n { total += r[i] * 0.299 + g[i] * 0.587 + b[i] * 0.114 }
        a = (total / Float(n)).rounded()
      }
      for k in 0..<3 {
        let p = k == 0 ? r : (k == 1 ? g : b)
        for i in 0..<n { p[i] = Swift.min(Swift.max(a + f * (p[i] - a), 0), 255) }
      }
    default:
      for i in 0..<n {
        let a = r[i] * 0.299 + g[i] * 0.587 + b[i] * 0.114
        r[i] = Swift.min(Swift.max(a + f * (r[i] - a), 0), 255)
        g[i] = Swift.min(Swift.max(a + f * (g[i] - a), 0), 255)
        b[i] = Swift.min(Swift.max(a + f * (b[i] - a), 0), 255)
      }
    }
  }

  /// p[i] = p[i] · scale + shift.
  static func affine(_ p: UnsafeMutablePointer<Float>, count n: Int, scale: Float, shift: Float) {
    for i in 0..<n { p[i] = p[i] * scale + shift }
  }

  /// PIL's RGB → L: (R·19595 + G·38470 + B·7471 + 2^15) >> 16.
  @inline(__always) static func luma(_ p: UnsafePointer<UInt8>) -> Int {
    (Int(p[0]) * 19595 + Int(p[1]) * 38470 + Int(p[2]) * 7471 + 0x8000) >> 16
  }
}

extension SplitMix64 {
  /// Uniform in [0, 1).
  mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }

  /// Gamma(α, 1), Marsaglia and Tsang's method (α < 1 through Gamma(α + 1)·U^(1/α)).
  mutating func gamma(_ alpha: Double) -> Double {
    if alpha < 1 { return gamma(alpha + 1) * pow(max(uniform(), 1e-300), 1 / alpha) }
    let d = alpha - 1.0 / 3, c = 1 / (9 * d).squareRoot()
    while true {
      let x = Double(normal())
      let v = pow(1 + c * x, 3)
      guard v > 0 else { continue }
      let u = uniform()
      if log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * log(v) { return d * v }
    }
  }

  /// Beta(α, α), as X / (X + Y) of two Gamma(α) draws.
  mutating func beta(_ alpha: Double) -> Double {
    let x = gamma(alpha), y = gamma(alpha)
    return x + y > 0 ? x / (x + y) : 0.5
  }
}
