// MaskTests.swift: SBP mask sampling follows DESIGN.md's rules exactly.
import XCTest

@testable import SBPIR

final class MaskTests: XCTestCase {
  func testGridStridesRoundHalfToEven() throws {
    XCTAssertEqual(try MaskSpec(keep: 0.5, mode: .grid, height: 14, width: 14).gridStride?.stride, 2)
    XCTAssertEqual(try MaskSpec(keep: 0.25, mode: .grid, height: 14, width: 14).gridStride?.stride, 4)
    XCTAssertEqual(try MaskSpec(keep: 0.4, mode: .grid, height: 14, width: 14).gridStride?.stride, 2)  // 2.5 rounds to 2
    let high = try MaskSpec(keep: 0.75, mode: .grid, height: 14, width: 14)
    XCTAssertEqual(high.gridStride?.stride, 4)
    XCTAssertEqual(high.gridStride?.phaseKeeps, false)
    XCTAssertNil(try MaskSpec(keep: 1, mode: .grid, height: 14, width: 14).gridStride)
  }

  func testKeptCountsMatchDesign() throws {
    // "with stride 4 on a 14×14 grid it is 48 to 50"
    XCTAssertEqual(try MaskSpec(keep: 0.25, mode: .grid, height: 14, width: 14).keptRange, 48...50)
    XCTAssertEqual(try MaskSpec(keep: 0.5, mode: .grid, height: 14, width: 14).keptRange, 98...98)
    XCTAssertEqual(try MaskSpec(keep: 0.75, mode: .grid, height: 14, width: 14).keptRange, 146...148)
    XCTAssertEqual(try MaskSpec(keep: 1, mode: .grid, height: 14, width: 14).keptRange, 196...196)
    XCTAssertEqual(try MaskSpec(keep: 0.5, mode: .random, height: 14, width: 14).keptRange, 98...98)
    XCTAssertEqual(try MaskSpec(keep: 0.3, mode: .random, height: 7, width: 7).keptRange, 15...15)  // drop ⌊0.7·49⌋ = 34
    XCTAssertEqual(try MaskSpec(keep: 0.5, mode: .grid, height: 14, width: 14).effectiveKeep, 0.5)
  }

  func testGridPhasesSelectTheDiagonals() throws {
    let spec = try MaskSpec(keep: 0.25, mode: .grid, height: 4, width: 4)
    let m = spec.gridMask(phase: 1)
    for i in 0..<4 { for j in 0..<4 { XCTAssertEqual(m.keep[i * 4 + j], (i + j) % 4 == 1) } }
    let drop = try MaskSpec(keep: 0.75, mode: .grid, height: 4, width: 4).gridMask(phase: 2)
    for i in 0..<4 { for j in 0..<4 { XCTAssertEqual(drop.keep[i * 4 + j], (i + j) % 4 != 2) } }
  }

  func testSamplingIsSeededAndCoversEveryPhase() throws {
    let spec = try MaskSpec(keep: 0.25, mode: .grid, height: 14, width: 14)
    var a = SplitMix64(seed: 7), b = SplitMix64(seed: 7)
    var seen = Set<[Bool]>()
    for _ in 0..<200 {
      let m = spec.sample(using: &a)
      XCTAssertEqual(m, spec.sample(using: &b))
      seen.insert(m.keep)
    }
    XCTAssertEqual(seen.count, 4, "200 steps should draw all 4 phases")
    let random = try MaskSpec(keep: 0.5, mode: .random, height: 14, width: 14)
    var r = SplitMix64(seed: 1)
    let masks = (0..<50).map { _ in random.sample(using: &r) }
    XCTAssertTrue(masks.allSatisfy { $0.keptCount == 98 })
    XCTAssertGreaterThan(Set(masks.map(\.keep)).count, 45, "random masks should differ from step to step")
  }

  func testReplicationAcrossStages() throws {
    let base = try MaskSpec(keep: 0.5, mode: .grid, height: 2, width: 2).gridMask(phase: 0)  // keeps (0,0) and (1,1)
    let up = try base.replicated(to: 4, 4)
    XCTAssertEqual(up.keep, [true, true, false, false, true, true, false, false, false, false, true, true, false, false, true, true])
    XCTAssertEqual(up.keptCount, 4 * base.keptCount)
    XCTAssertThrowsError(try base.replicated(to: 3, 3))
    XCTAssertThrowsError(try base.replicated(to: 4, 6))
  }

  func testInvalidSpecs() {
    for k in [0, -0.5, 1.5, .nan, .infinity] { XCTAssertThrowsError(try MaskSpec(keep: k, mode: .grid, height: 4, width: 4)) }
    XCTAssertThrowsError(try MaskSpec(keep: 0.5, mode: .grid, height: 0, width: 4))
  }

  /// Ratios that would keep or drop nothing, or whose grid stride outgrows the grid, are refused
  /// with the reason instead of looping over empty phases (or trapping on 1/1e-300).
  func testDegenerateKeepRatiosAreRefused() {
    for (keep, mode, fragment) in [
      (1e-300, MaskMode.grid, "keeps less than one"), (0.999, .grid, "drops less than one"), (0.02, .grid, "grid stride of 50"),
      (1e-9, .random, "keeps less than one"),
    ] {
      XCTAssertThrowsError(try MaskSpec(keep: keep, mode: mode, height: 8, width: 8)) { e in
        XCTAssertTrue("\(e)".contains(fragment), "\(keep): \(e)")
      }
    }
    XCTAssertNoThrow(try MaskSpec(keep: 0.02, mode: .random, height: 8, width: 8))
    XCTAssertThrowsError(try MaskSpec(keep: 0.5, mode: .grid, height: 1 << 20, width: 2))
  }
}
