// Strided.swift: shape and stride helpers shared by the kernels.
import SBPIR

/// Strides of an input of `shape` read as if broadcast to `out` (0 on broadcast axes).
@inlinable func broadcastStrides(_ shape: [Int], to out: [Int]) -> [Int] {
  let pad = out.count - shape.count
  let s = rowMajorStrides(shape)
  return (0..<out.count).map { d in d < pad || shape[d - pad] == 1 ? 0 : s[d - pad] }
}

/// Calls `body(outOffset, offsets)` for every element of `shape`, with each operand's offset
/// from its own strides; the innermost axis runs as a tight loop via `inner`.
@inlinable func forEachRow(
  _ shape: [Int], _ strides: [[Int]], _ inner: (_ outBase: Int, _ bases: [Int], _ count: Int, _ innerStrides: [Int]) -> Void
) {
  let r = shape.count
  if r == 0 {
    inner(0, strides.map { _ in 0 }, 1, strides.map { _ in 0 })
    return
  }
  let n = shape[r - 1]
  let outer = shape.dropLast().reduce(1, *)
  guard n > 0, outer > 0 else { return }
  var idx = [Int](repeating: 0, count: r - 1)
  var bases = [Int](repeating: 0, count: strides.count)
  let innerStrides = strides.map { $0[r - 1] }
  for o in 0..<outer {
    inner(o * n, bases, n, innerStrides)
    // Advance the odometer over the outer axes.
    var d = r - 2
    while d >= 0 {
      idx[d] += 1
      for k in strides.indices { bases[k] += strides[k][d] }
      if idx[d] < shape[d] { break }
      for k in strides.indices { bases[k] -= strides[k][d] * shape[d] }
      idx[d] = 0
      d -= 1
    }
  }
}
