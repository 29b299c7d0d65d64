// Strided.swift: shape and stride helpers shared by the kernels.
import SBPIR

/// Strides of an input of `shape` read as if broadcast to `out` (0 on broadcast axes).
@inlinable func broadcastStrides(_ shape: [Int], to out: [Int]) -> [Int] {
  let pad = out.count - shape.count
  let s = rowMajorStrides(shape)
  return (0..<out.count).map { d in d < pad || shape[d - pad] == 1 ? 0 : s[d - pad] }
}

/// Calls `inner(outOffset, bases, count, innerStrides)` for every innermost row of `shape`,
/// with each operand's offset from its own strides; the innermost axis runs as a tight loop in
/// `inner`. The odometer lives on the stack, so a kernel step allocates nothing.
/// With `rows`, only those outer rows (indices into the product of all axes but the last).
@inlinable func forEachRow(
  _ shape: [Int], _ strides: [[Int]], rows: Range<Int>? = nil,
  _ inner: (_ outBase: Int, _ bases: UnsafeMutableBufferPointer<Int>, _ count: Int, _ innerStrides: UnsafeMutableBufferPointer<Int>) -> Void
) {
  let r = shape.count, k = strides.count
  withUnsafeTemporaryAllocation(of: Int.self, capacity: max(r, 1) + 2 * k) { tmp in
    tmp.initialize(repeating: 0)
    let idx = UnsafeMutableBufferPointer(rebasing: tmp[0..<max(r, 1)])
    let bases = UnsafeMutableBufferPointer(rebasing: tmp[max(r, 1)..<(max(r, 1) + k)])
    let innerStrides = UnsafeMutableBufferPointer(rebasing: tmp[(max(r, 1) + k)...])
    if r == 0 {
      inner(0, bases, 1, innerStrides)
      return
    }
    let n = shape[r - 1]
    var outer = 1
    for d in 0..<(r - 1) { outer *= shape[d] }
    guard n > 0, outer > 0 else { return }
    for j in 0..<k { innerStrides[j] = strides[j][r - 1] }
    let rows = rows ?? 0..<outer
    // Start the odometer at the first requested row.
    var rest = rows.lowerBound
    var d = r - 2
    while d >= 0 {
      idx[d] = rest % shape[d]
      rest /= shape[d]
      for j in 0..<k { bases[j] += idx[d] * strides[j][d] }
      d -= 1
    }
    for o in rows {
      inner(o * n, bases, n, innerStrides)
      // Advance the odometer over the outer axes.
      var d = r - 2
      while d >= 0 {
        idx[d] += 1
        for j in 0..<k { bases[j] += strides[j][d] }
        if idx[d] < shape[d] { break }
        for j in 0..<k { bases[j] -= strides[j][d] * shape[d] }
        idx[d] = 0
        d -= 1
      }
    }
  }
}

/// Number of innermost rows `forEachRow` walks for `shape`.
@inlinable func outerRows(_ shape: [Int]) -> Int { shape.dropLast().reduce(1, *) }
