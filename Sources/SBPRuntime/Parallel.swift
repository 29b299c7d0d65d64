// Parallel.swift: splits a kernel's rows over the runtime's threads.
import Dispatch

/// Splits the non-GEMM kernels' work over the executor's threads (OpenBLAS threads its own
/// calls). Chunks are contiguous and disjoint, so a kernel writing only its own rows needs no
/// locks; below `grain` items per thread the work runs inline, where a thread hand-off would
/// cost more than it saves.
enum Parallel {
  /// Threads the kernels may use; the executor sets it from its `threads` option.
  nonisolated(unsafe) static var threads = 1

  /// The number of chunks `chunks(count, grain:)` splits `count` items into.
  @inline(__always) static func chunkCount(_ count: Int, grain: Int) -> Int {
    Swift.max(1, Swift.min(threads, count / Swift.max(grain, 1)))
  }

  /// Calls `body(chunk, range)` for disjoint ranges covering 0..<count, concurrently when
  /// there is enough work; `chunk` < `chunkCount(count, grain:)` names the caller's share.
  @inline(__always) static func chunks(_ count: Int, grain: Int, _ body: (_ chunk: Int, _ range: Range<Int>) -> Void) {
    let t = chunkCount(count, grain: grain)
    if t == 1 {
      body(0, 0..<count)
      return
    }
    withoutActuallyEscaping(body) { body in
      let box = UnsafeSendable(body)
      DispatchQueue.concurrentPerform(iterations: t) { i in
        box.value(i, (count * i / t)..<(count * (i + 1) / t))
      }
    }
  }
}

/// Lets a kernel's closure, which captures raw pointers, cross into concurrentPerform: each
/// chunk writes only its own range, which is what makes sharing those pointers safe.
struct UnsafeSendable<T>: @unchecked Sendable {
  let value: T
  init(_ value: T) { self.value = value }
}

/// Scratch memory for kernels that need per-thread space (partial sums, padded planes). It
/// grows on the first step that needs more and is reused after, so steady-state steps
/// allocate nothing. Callers size it before splitting work, from the calling thread.
enum Scratch {
  nonisolated(unsafe) private static var bases: [UnsafeMutablePointer<Float>] = [
    .allocate(capacity: 0), .allocate(capacity: 0), .allocate(capacity: 0),
  ]
  nonisolated(unsafe) private static var capacities = [0, 0, 0]

  /// At least `count` floats in `slot`, valid until the next call for that slot: 0 and 1
  /// for kernels needing one or two regions, 2 for GEMM's partial products (a GEMM may run
  /// inside a kernel that holds the others).
  static func floats(_ count: Int, slot: Int = 0) -> UnsafeMutablePointer<Float> {
    if count > capacities[slot] {
      bases[slot].deallocate()
      bases[slot] = .allocate(capacity: count)
      capacities[slot] = count
    }
    return bases[slot]
  }
}
