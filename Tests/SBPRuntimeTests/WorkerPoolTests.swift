// WorkerPoolTests.swift: the spinning worker pool behind Parallel.chunks runs every part once, nests inline, and survives sleeping.
import Foundation
import Synchronization
import XCTest

@testable import SBPRuntime

final class WorkerPoolTests: XCTestCase {
  override func tearDown() {
    Parallel.threads = 1
    super.tearDown()
  }

  /// Thousands of back-to-back jobs of 2 to 4 parts: each part runs exactly once, on disjoint
  /// ranges that cover the work, and the caller sees every part's writes when `chunks` returns.
  func testEveryPartRunsOnceAndIsVisibleOnReturn() {
    for threads in [2, 3, 4] {
      Parallel.threads = threads
      let count = 1000
      let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
      defer { hits.deallocate() }
      for round in 0..<2000 {
        hits.update(repeating: 0, count: count)
        let n = count - round % 7
        // No XCTAssert here: the parts run on the pool's threads.
        Parallel.chunks(n, grain: 1) { chunk, range in for i in range { hits[i] += chunk + 1 } }
        // Part c covers n·c/t..<n·(c+1)/t and wrote c+1 there.
        for c in 0..<threads {
          for i in (n * c / threads)..<(n * (c + 1) / threads) where hits[i] != c + 1 {
            XCTFail("threads \(threads), round \(round): element \(i) holds \(hits[i]), not \(c + 1) from chunk \(c) alone")
            return
          }
        }
      }
    }
  }

  /// A kernel that calls `chunks` from inside a chunk gets all its parts run, inline.
  func testNestedCallsRunInline() {
    Parallel.threads = 2
    let total = Atomic<Int>(0)
    Parallel.chunks(2, grain: 1) { _, _ in
      Parallel.chunks(100, grain: 1) { _, range in total.add(range.count, ordering: .relaxed) }
    }
    XCTAssertEqual(total.load(ordering: .relaxed), 200)
  }

  /// After a pause longer than the spin, the worker is asleep on the condition variable;
  /// the next job must wake it rather than wait forever.
  func testJobsAfterTheWorkersSleep() {
    Parallel.threads = 2
    for _ in 0..<3 {
      usleep(UInt32(WorkerPool.spinNanoseconds / 1000 * 5))
      let parts = Atomic<Int>(0)
      Parallel.chunks(2, grain: 1) { _, _ in parts.add(1, ordering: .relaxed) }
      XCTAssertEqual(parts.load(ordering: .relaxed), 2)
    }
  }
}
