// Resample.swift: PIL's separable resampling (Image.resize with a box), bit for bit, into a window of the output.
/// How pixels are interpolated when an image is resized.
public enum Interpolation: String, Sendable, CaseIterable {
  case nearest, bilinear, bicubic

  /// PIL's filters: support in source pixels at scale 1, and the kernel.
  var support: Double { self == .bicubic ? 2 : 1 }

  func weight(_ x: Double) -> Double {
    let x = abs(x)
    switch self {
    case .nearest: return x < 0.5 ? 1 : 0
    case .bilinear: return x < 1 ? 1 - x : 0
    case .bicubic:
      let a = -0.5
      if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
      if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
      return 0
    }
  }
}

/// A resampler with its scratch memory, reused image after image (one per worker).
///
/// It follows Pillow's `ImagingResample` exactly: per output pixel, filter taps over the
/// source box scaled by max(scale, 1) (so a reduction is antialiased), weights normalized,
/// rounded to 22-bit fixed point, the horizontal pass first into 8-bit rows and then the
/// vertical pass, each rounded and clamped to 0...255. The eval transform's output is then
/// the one torchvision gives through PIL, not merely close to it.
public final class Resampler {
  static let precision = 22
  var xBounds: [Int] = [], yBounds: [Int] = []
  var xWeights: [Int32] = [], yWeights: [Int32] = []
  var rows: [UInt8] = []
  /// One output pixel's filter taps before normalization.
  var kernelScratch: [Double] = []

  public init() {}

  /// Taps for outputs `first..<first+count` of `outSize` over the source span `in0..<in1`:
  /// (start, taps) per output into `bounds`, `kernel`-strided fixed-point weights into `weights`.
  static func taps(
    in0: Double, in1: Double, inSize: Int, outSize: Int, first: Int, count: Int, filter: Interpolation,
    bounds: inout [Int], weights: inout [Int32], scratch k: inout [Double]
  ) -> Int {
    let scale = (in1 - in0) / Double(outSize)
    let filterScale = max(scale, 1)
    let support = filter.support * filterScale
    let kernel = Int(support.rounded(.up)) * 2 + 1
    bounds.removeAll(keepingCapacity: true)
    weights.removeAll(keepingCapacity: true)
    if k.count < kernel { k = [Double](repeating: 0, count: kernel) }
    for xx in first..<(first + count) {
      let center = in0 + (Double(xx) + 0.5) * scale
      let ss = 1 / filterScale
      let xmin = max(Int(center - support + 0.5), 0)
      let xmax = min(Int(center + support + 0.5), inSize) - xmin
      var sum = 0.0
      for x in 0..<kernel {
        k[x] = x < xmax ? filter.weight((Double(x + xmin) - center + 0.5) * ss) : 0
        sum += k[x]
      }
      for x in 0..<kernel {
        let w = sum != 0 ? k[x] / sum : k[x]
        let f = w * Double(1 << precision)
        weights.append(Int32((w < 0 ? f - 0.5 : f + 0.5).rounded(.towardZero)))
      }
      bounds.append(xmin)
      bounds.append(max(xmax, 0))
    }
    return kernel
  }

  @inline(__always) static func clip8(_ v: Int32) -> UInt8 {
    let s = v >> Int32(precision)
    return s <= 0 ? 0 : (s >= 255 ? 255 : UInt8(s))
  }

  /// Resizes the source box (x0, y0)–(x1, y1) of `src` to `outWidth` × `outHeight` and writes
  /// the window of `width` × `height` output pixels at (left, top) into `out` (RGB, row-major).
  public func resample(
    _ src: RGBImage, box: (x0: Double, y0: Double, x1: Double, y1: Double), outWidth: Int, outHeight: Int,
    left: Int, top: Int, width: Int, height: Int, filter: Interpolation, into out: UnsafeMutablePointer<UInt8>
  ) {
    if filter == .nearest {
      nearest(src, box: box, outWidth: outWidth, outHeight: outHeight, left: left, top: top, width: width, height: height, into: out)
      return
    }
    let kx = Resampler.taps(
      in0: box.x0, in1: box.x1, inSize: src.width, outSize: outWidth, first: left, count: width, filter: filter, bounds: &xBounds,
      weights: &xWeights, scratch: &kernelScratch)
    let ky = Resampler.taps(
      in0: box.y0, in1: box.y1, inSize: src.height, outSize: outHeight, first: top, count: height, filter: filter, bounds: &yBounds,
      weights: &yWeights, scratch: &kernelScratch)
    // The source rows the vertical pass reads: only those are resampled horizontally.
    var rowFirst = Int.max, rowEnd = 0
    for y in 0..<height {
      rowFirst = min(rowFirst, yBounds[2 * y])
      rowEnd = max(rowEnd, yBounds[2 * y] + yBounds[2 * y + 1])
    }
    let rowCount = max(rowEnd - rowFirst, 0)
    if rows.count < rowCount * width * 3 { rows = [UInt8](repeating: 0, count: rowCount * width * 3) }
    let half = Int32(1 << (Resampler.precision - 1))
    rows.withUnsafeMutableBufferPointer { tmp in
      xWeights.withUnsafeBufferPointer { xw in
        for r in 0..<rowCount {
          let line = src.pixels + (rowFirst + r) * src.width * 3
          let dst = tmp.baseAddress! + r * width * 3
          for x in 0..<width {
            let start = xBounds[2 * x], n = xBounds[2 * x + 1]
            var s0 = half, s1 = half, s2 = half
            let k = xw.baseAddress! + x * kx
            for t in 0..<n {
              let p = line + (start + t) * 3, w = k[t]
              s0 &+= Int32(p[0]) &* w
              s1 &+= Int32(p[1]) &* w
              s2 &+= Int32(p[2]) &* w
            }
            dst[3 * x] = Resampler.clip8(s0)
            dst[3 * x + 1] = Resampler.clip8(s1)
            dst[3 * x + 2] = Resampler.clip8(s2)
          }
        }
      }
      yWeights.withUnsafeBufferPointer { yw in
        let stride = width * 3
        for y in 0..<height {
          let start = yBounds[2 * y] - rowFirst, n = yBounds[2 * y + 1]
          let k = yw.baseAddress! + y * ky
          let dst = out + y * stride
          for c in 0..<stride {
            var s = half
            var p = tmp.baseAddress! + start * stride + c
            for t in 0..<n {
              s &+= Int32(p.pointee) &* k[t]
              p += stride
            }
            dst[c] = Resampler.clip8(s)
          }
        }
      }
    }
  }

  /// PIL's NEAREST resize: the source pixel under each output pixel's centre.
  func nearest(
    _ src: RGBImage, box: (x0: Double, y0: Double, x1: Double, y1: Double), outWidth: Int, outHeight: Int,
    left: Int, top: Int, width: Int, height: Int, into out: UnsafeMutablePointer<UInt8>
  ) {
    let sx = (box.x1 - box.x0) / Double(outWidth), sy = (box.y1 - box.y0) / Double(outHeight)
    for y in 0..<height {
      let yin = min(max(Int(box.y0 + (Double(top + y) + 0.5) * sy), 0), src.height - 1)
      for x in 0..<width {
        let xin = min(max(Int(box.x0 + (Double(left + x) + 0.5) * sx), 0), src.width - 1)
        let p = src.pixels + (yin * src.width + xin) * 3, d = out + (y * width + x) * 3
        d[0] = p[0]
        d[1] = p[1]
        d[2] = p[2]
      }
    }
  }
}
