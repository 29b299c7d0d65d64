// PoolKernels.swift: 2-D max and average pooling over NCHW and their gradients, one plane per task, and padding with its gradient.
import SBPIR

/// Pooling kernels. Each (n, c) plane is independent, so planes split over the threads; a
/// window's bounds are clipped to the input once per output position.
enum Pool {
  /// The input rows (or columns) window `o` covers along axis `i`: first position, step, count,
  /// and how many of the window's positions lie in the padded extent (`count_include_pad`).
  @inline(__always) static func window(_ g: PoolGeometry, axis i: Int, _ o: Int, size: Int) -> (first: Int, step: Int, n: Int, padded: Int) {
    let d = g.dilations[i]
    let start = o * g.strides[i] - g.pads[i]
    var k0 = 0, k1 = g.kernel[i]
    while k0 < k1 && start + k0 * d < 0 { k0 += 1 }
    while k1 > k0 && start + (k1 - 1) * d >= size { k1 -= 1 }
    // Positions inside input + pads (PyTorch's divisor with count_include_pad, ceil_mode included).
    let end = Swift.min(start + (g.kernel[i] - 1) * d + 1, size + g.pads[i + 2])
    let padded = (end - start + d - 1) / d
    return (start + k0 * d, d, k1 - k0, padded)
  }

  static func planes(_ t: TensorType) -> (count: Int, h: Int, w: Int) { (t.shape[0] * t.shape[1], t.shape[2], t.shape[3]) }

  /// Calls `body(p, o, rows, cols)` for every output position o of every plane p, with the
  /// window's input rows and columns; planes split over the threads (each plane is written
  /// by one thread only).
  @inline(__always) static func forEachWindow(
    _ g: PoolGeometry, input: TensorType, output: TensorType,
    _ body: (_ plane: Int, _ o: Int, _ rows: (first: Int, step: Int, n: Int, padded: Int), _ cols: (first: Int, step: Int, n: Int, padded: Int)) -> Void
  ) {
    let (planes, h, w) = Pool.planes(input), (oh, ow) = (output.shape[2], output.shape[3])
    withWindows(g, h: h, w: w, oh: oh, ow: ow) { rows, cols in
      Parallel.chunks(planes, grain: 1) { _, range in
        for p in range {
          for i in 0..<oh {
            let r = rows[i]
            for j in 0..<ow { body(p, i * ow + j, r, cols[j]) }
          }
        }
      }
    }
  }

  static func maxPool(_ g: PoolGeometry, _ x: Buffer, _ y: Buffer) {
    let (planes, h, w) = planes(x.type), (oh, ow) = (y.type.shape[2], y.type.shape[3])
    let px = x.f32, py = y.f32
    // Loops over the clipped windows directly, not through a closure per output position
    // (a call per position had cost ten times the comparisons).
    withWindows(g, h: h, w: w, oh: oh, ow: ow) { rows, cols in
      Parallel.chunks(planes, grain: 1) { _, range in
        for p in range {
          let xp = px + p * h * w, yp = py + p * oh * ow
          for i in 0..<oh {
            let r = rows[i]
            for j in 0..<ow {
              let c = cols[j]
              var m = -Float.infinity
              for a in 0..<r.n {
                let row = xp + (r.first + a * r.step) * w + c.first
                for b in 0..<c.n {
                  let v = row[b * c.step]
                  if v > m || v.isNaN { m = v }
                }
              }
              yp[i * ow + j] = m
            }
          }
        }
      }
    }
  }

  /// dx: each window's dy added at its first maximum in scan order (PyTorch's choice on ties).
  static func maxPoolGrad(_ g: PoolGeometry, _ x: Buffer, _ dy: Buffer, _ dx: Buffer) {
    let (planes, h, w) = planes(x.type), (oh, ow) = (dy.type.shape[2], dy.type.shape[3])
    let px = x.f32, pd = dy.f32, pg = dx.f32
    withWindows(g, h: h, w: w, oh: oh, ow: ow) { rows, cols in
      Parallel.chunks(planes, grain: 1) { _, range in
        for p in range {
          let xp = px + p * h * w, dp = pd + p * oh * ow, gp = pg + p * h * w
          gp.update(repeating: 0, count: h * w)
          for i in 0..<oh {
            let r = rows[i]
            for j in 0..<ow {
              let c = cols[j]
              var m = -Float.infinity, at = -1
              for a in 0..<r.n {
                let row = (r.first + a * r.step) * w + c.first
                for b in 0..<c.n {
                  let k = row + b * c.step
                  if xp[k] > m || xp[k].isNaN || at < 0 {
                    m = xp[k]
                    at = k
                  }
                }
              }
              if at >= 0 { gp[at] += dp[i * ow + j] }
            }
          }
        }
      }
    }
  }

  /// The clipped windows of every output row and column, the same in every plane, computed
  /// once on the stack (no allocation in the step).
  @inline(__always) static func withWindows(
    _ g: PoolGeometry, h: Int, w: Int, oh: Int, ow: Int,
    _ body: (UnsafeBufferPointer<(first: Int, step: Int, n: Int, padded: Int)>, UnsafeBufferPointer<(first: Int, step: Int, n: Int, padded: Int)>) -> Void
  ) {
    withUnsafeTemporaryAllocation(of: (first: Int, step: Int, n: Int, padded: Int).self, capacity: oh + ow) { win in
      for i in 0..<oh { win[i] = window(g, axis: 0, i, size: h) }
      for j in 0..<ow { win[oh + j] = window(g, axis: 1, j, size: w) }
      body(UnsafeBufferPointer(rebasing: win[0..<oh]), UnsafeBufferPointer(rebasing: win[oh...]))
    }
  }

  static func averagePool(_ g: PoolGeometry, includePad: Bool, _ x: Buffer, _ y: Buffer) {
    let (_, h, w) = planes(x.type), out = y.type.shape[2] * y.type.shape[3]
    let px = x.f32, py = y.f32
    forEachWindow(g, input: x.type, output: y.type) { p, o, r, c in
      var s: Float = 0
      for a in 0..<r.n {
        let row = px + p * h * w + (r.first + a * r.step) * w
        for b in 0..<c.n { s += row[c.first + b * c.step] }
      }
      let count = includePad ? r.padded * c.padded : r.n * c.n
      py[p * out + o] = count > 0 ? s / Float(count) : 0
    }
  }

  static func averagePoolGrad(_ g: PoolGeometry, includePad: Bool, _ dy: Buffer, _ dx: Buffer) {
    let (_, h, w) = planes(dx.type), out = dy.type.shape[2] * dy.type.shape[3]
    let pd = dy.f32, pg = dx.f32
    pg.update(repeating: 0, count: dx.count)
    forEachWindow(g, input: dx.type, output: dy.type) { p, o, r, c in
      let count = includePad ? r.padded * c.padded : r.n * c.n
      guard count > 0 else { return }
      let share = pd[p * out + o] / Float(count)
      for a in 0..<r.n {
        let row = pg + p * h * w + (r.first + a * r.step) * w
        for b in 0..<c.n { row[c.first + b * c.step] += share }
      }
    }
  }
}

/// Padding: each result element reads one operand element (by the mode's index map) or the
/// constant; the gradient adds each dy element back where it was read from.
enum Padding {
  /// The operand index along one axis for result index `o`, or nil for a constant pad.
  @inline(__always) static func source(_ o: Int, begin: Int, size: Int, _ mode: PadMode) -> Int? {
    let i = o - begin
    if i >= 0 && i < size { return i }
    switch mode {
    case .constant: return nil
    case .edge: return i < 0 ? 0 : size - 1
    case .reflect: return i < 0 ? -i : 2 * (size - 1) - i
    }
  }

  /// Calls `body(result offset, operand offset or nil)` for every result element, in order.
  /// The index and strides live on the stack: a step allocates nothing.
  static func forEach(_ pads: [Int], _ mode: PadMode, input: [Int], output: [Int], _ body: (Int, Int?) -> Void) {
    let r = input.count
    withUnsafeTemporaryAllocation(of: Int.self, capacity: 2 * r) { scratch in
      let index = scratch.baseAddress!, inStrides = index + r
      var stride = 1
      for a in (0..<r).reversed() {
        index[a] = 0
        inStrides[a] = stride
        stride *= input[a]
      }
      walk(pads, mode, input: input, output: output, index: index, inStrides: inStrides, body)
    }
  }

  private static func walk(
    _ pads: [Int], _ mode: PadMode, input: [Int], output: [Int], index: UnsafeMutablePointer<Int>, inStrides: UnsafeMutablePointer<Int>,
    _ body: (Int, Int?) -> Void
  ) {
    let r = input.count
    var total = 1
    for d in output { total *= d }
    for o in 0..<total {
      var src: Int? = 0
      for a in 0..<r {
        guard let s = src, let i = source(index[a], begin: pads[a], size: input[a], mode) else {
          src = nil
          break
        }
        src = s + i * inStrides[a]
      }
      body(o, src)
      var a = r - 1
      while a >= 0 {
        index[a] += 1
        if index[a] < output[a] { break }
        index[a] = 0
        a -= 1
      }
    }
  }

  static func pad(_ pads: [Int], _ mode: PadMode, _ value: Float, _ x: Buffer, _ y: Buffer) {
    let px = x.f32, py = y.f32
    forEach(pads, mode, input: x.type.shape, output: y.type.shape) { o, s in py[o] = s.map { px[$0] } ?? value }
  }

  static func grad(_ pads: [Int], _ mode: PadMode, _ dy: Buffer, _ dx: Buffer) {
    let pd = dy.f32, pg = dx.f32
    pg.update(repeating: 0, count: dx.count)
    forEach(pads, mode, input: dx.type.shape, output: dy.type.shape) { o, s in if let s { pg[s] += pd[o] } }
  }
}
