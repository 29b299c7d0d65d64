// WindowedAttentionTests.swift: Swin's windowed attention under SBP: per-window kept and dropped lists, and the plan lines that carry them.
import Foundation
import XCTest

@testable import SBPIR
@testable import SBPPasses
@testable import SBPPlan
@testable import SBPRuntime

final class WindowedAttentionTests: XCTestCase {
  let swin = repoRoot + "/models/families/swin_tiny_patch4_window7_224/model_ts17.onnx"

  /// 2x2 windows of a 4x4 grid, cyclically shifted by one: window w's rows in order.
  let shifted: [Int] = {
    var t: [Int] = []
    for wi in 0..<2 {
      for wj in 0..<2 {
        for a in 0..<2 { for b in 0..<2 { t.append(((wi * 2 + a + 1) % 4) * 4 + (wj * 2 + b + 1) % 4) } }
      }
    }
    return t
  }()

  func testEveryWindowOfTheCheckerboardKeepsHalf() throws {
    let spec = try MaskSpec(keep: 0.5, mode: .grid, height: 4, width: 4)
    let rows = MaskWindows.rows(table: shifted, windows: 4, size: 4, spec: spec, grid: [4, 4], factor: 1)
    XCTAssertEqual(rows.kept, 2)
    XCTAssertEqual(rows.dropped, 2)
    let w = MaskWindows(id: 0, stage: 0, windows: 4, size: 4, table: shifted, keptRows: 2, droppedRows: 2)
    let m = spec.gridMask(phase: 0)
    let layout = MaskLayout(spec: spec, stages: [MaskStage(stage: 0, grid: [4, 4], prefix: 0, factor: 1, keptRows: 8, droppedRows: 8)], windows: [w])
    let (kept, dropped) = try layout.windowIndices(for: m)[0]
    // Each list entry is window·4 + its row; the row's grid position is kept exactly when listed as kept.
    for (list, want) in [(kept, true), (dropped, false)] {
      XCTAssertEqual(list.count, 8)
      for (i, v) in list.enumerated() {
        XCTAssertEqual(Int(v) / 4, i / 2, "entry \(i) lists a row of another window")
        XCTAssertEqual(m.keep[shifted[Int(v)]], want)
      }
    }
    XCTAssertEqual(Set(kept + dropped).count, 16)
  }

  func testPaddingRowsAreDroppedAndRandomMasksAreBounded() throws {
    // One window of four rows, the last a padding row.
    let table = [0, 1, 2, -1]
    let spec = try MaskSpec(keep: 0.5, mode: .random, height: 2, width: 2)
    let rows = MaskWindows.rows(table: table, windows: 1, size: 4, spec: spec, grid: [2, 2], factor: 1)
    XCTAssertEqual(rows.kept, 2, "a random mask keeps 2 of the 4 positions: at most 2 of the window's 3 real rows")
    XCTAssertEqual(rows.dropped, 3, "the padding row and up to 2 dropped rows")
    let w = MaskWindows(id: 0, stage: 0, windows: 1, size: 4, table: table, keptRows: rows.kept, droppedRows: rows.dropped)
    var kept = [Int64](repeating: 9, count: 2), dropped = [Int64](repeating: 9, count: 3)
    let m = KeepMask(height: 2, width: 2, keep: [true, false, true, false])
    XCTAssertTrue(w.write(m, grid: [2, 2], factor: 1, kept: { kept[$0] = $1 }, dropped: { dropped[$0] = $1 }))
    XCTAssertEqual(kept, [0, 2])
    XCTAssertEqual(dropped, [1, 3, -1])
    // More kept rows than the window holds: refused, not written past its rows.
    XCTAssertFalse(
      w.write(KeepMask(height: 2, width: 2, keep: [true, true, true, true]), grid: [2, 2], factor: 1, kept: { kept[$0] = $1 }, dropped: { dropped[$0] = $1 }))
  }

  /// The tiny Swin's plan lists its two partitions (plain and shifted windows), reads back
  /// the same, and a table edited behind a valid checksum is one line naming the window.
  func testPlanCarriesTheWindowsAndRefusesACorruptTable() throws {
    let (plan, _) = try Plan.compile(model: swin, options: Plan.Options(batch: 2, sbp: SBPOptions()))
    let windows = try XCTUnwrap(plan.layout?.windows)
    XCTAssertEqual(windows.count, 2)
    XCTAssertEqual(windows.map(\.windows), [16, 16])
    XCTAssertEqual(windows.map(\.keptRows), [8, 8], "the checkerboard keeps 8 of each 4x4 window's 16 rows, shifted or not")
    XCTAssertNotEqual(windows[0].table, windows[1].table)
    XCTAssertEqual(windows[1].table[0], 2 * 16 + 2, "the shifted windows start two rows and two columns in")
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sbpc-windows-\(getpid())").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let text = plan.serialized()
    let good = dir + "/swin.plan"
    try Data(text.utf8).write(to: URL(fileURLWithPath: good))
    XCTAssertEqual(try Plan.load(good).layout?.windows, windows)
    let first = windows[0].table.map(String.init).joined(separator: ",")
    for (edit, says) in [
      (first.replacingOccurrences(of: "0,1,", with: "0,0,"), "twice"),
      (first.replacingOccurrences(of: "0,1,", with: "0,999,"), "off the"),
    ] {
      let bad = dir + "/bad.plan"
      let edited = text.replacingOccurrences(of: "table " + first + "\n", with: "table " + edit + "\n")
      XCTAssertNotEqual(edited, text)
      try Plan.resealed(Data(edited.utf8)).write(to: URL(fileURLWithPath: bad))
      XCTAssertThrowsError(try Plan.load(bad)) { e in
        let m = "\(e)"
        XCTAssertTrue(m.contains("sbp window 0") && m.contains(says), m)
        XCTAssertFalse(m.contains("\n"))
      }
    }
    let fewer = text.replacingOccurrences(of: "window 0 stage 0 windows 16 size 16 kept 8", with: "window 0 stage 0 windows 16 size 16 kept 7")
    try Plan.resealed(Data(fewer.utf8)).write(to: URL(fileURLWithPath: dir + "/fewer.plan"))
    XCTAssertThrowsError(try Plan.load(dir + "/fewer.plan")) { e in XCTAssertTrue("\(e)".contains("need 8"), "\(e)") }
  }
}
