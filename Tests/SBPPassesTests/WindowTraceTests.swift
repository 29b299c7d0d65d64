// WindowTraceTests.swift: the window partition traced on token ids: padding, shift and the window axis behind the heads.
import XCTest

@testable import SBPIR
@testable import SBPPasses

final class WindowTraceTests: XCTestCase {
  /// A 3x3 grid padded to 4x4, shifted by one on both axes, cut into 2x2 windows kept as an
  /// axis of their own, then projected and split into heads ([B, heads, windows, tokens, d],
  /// NesT's order).
  let text = """
    graph @g {
      input %x : f32[2,3,3,4]
      param @w : f32[8,4]
      %p = pad(%x) {mode="constant", pads=[0,0,0,0,0,1,1,0], value=0.0} : f32[2,4,4,4]
      %a1 = slice(%p) {axes=[1], ends=[4], starts=[1], steps=[1]} : f32[2,3,4,4]
      %a2 = slice(%p) {axes=[1], ends=[1], starts=[0], steps=[1]} : f32[2,1,4,4]
      %a = concat(%a1, %a2) {axis=1} : f32[2,4,4,4]
      %i = constant() {value=[1,2,3,0]} : i64[4]
      %s = gather(%a, %i) {axis=2} : f32[2,4,4,4]
      %w1 = reshape(%s) {shape=[2,2,2,2,2,4]} : f32[2,2,2,2,2,4]
      %w2 = transpose(%w1) {perm=[0,1,3,2,4,5]} : f32[2,2,2,2,2,4]
      %xw = reshape(%w2) {shape=[2,4,4,4]} : f32[2,4,4,4]
      %y = linear(%xw, @w) {axis=3, layout="oi"} : f32[2,4,4,8]
      %r = reshape(%y) {shape=[2,4,4,2,4]} : f32[2,4,4,2,4]
      %q = transpose(%r) {perm=[0,3,1,2,4]} : f32[2,2,4,4,4]
      output %q
    }
    """

  func testTheTableFollowsPaddingShiftAndPartition() throws {
    let g = try parseGraph(text)
    let x = g.inputs[0].value, xw = g.nodes.first { $0.op == .linear(axis: 3, layout: .outIn) }!.inputs[0]
    let t = try WindowTrace.table(g, producer: g.producerIndex(), source: x, tokenAxes: [1, 2], sink: xw, size: 4).get()
    XCTAssertEqual(t.windows, 4)
    XCTAssertEqual(t.size, 4)
    // Padded grid row r, column c holds token r·3 + c (rows and columns 3 are padding); the
    // shift reads padded (r + 1, c + 1).
    func token(_ r: Int, _ c: Int) -> Int {
      let (pr, pc) = ((r + 1) % 4, (c + 1) % 4)
      return pr < 3 && pc < 3 ? pr * 3 + pc : -1
    }
    var want: [Int] = []
    for wi in 0..<2 { for wj in 0..<2 { for a in 0..<2 { for b in 0..<2 { want.append(token(wi * 2 + a, wj * 2 + b)) } } } }
    XCTAssertEqual(t.table, want)
    XCTAssertEqual(t.table.filter { $0 < 0 }.count, 7, "the 4x4 padded grid holds 7 padding rows")
  }

  func testTheWindowAxisBehindTheHeadsIsFound() throws {
    let g = try parseGraph(text)
    let xw = g.nodes.first { $0.op == .linear(axis: 3, layout: .outIn) }!.inputs[0]
    let q = g.outputs[0].value
    let a = WindowTrace.axes(g, producer: g.producerIndex(), sink: xw, value: q, tokenAxis: 3, batch: 2, windows: 4, size: 4)
    XCTAssertEqual(a, WindowAxes(merged: false, axis: 2))
    // Told the tokens are on the windows' axis, no layout fits the ids.
    XCTAssertNil(WindowTrace.axes(g, producer: g.producerIndex(), sink: xw, value: q, tokenAxis: 2, batch: 2, windows: 4, size: 4))
  }

  func testOverlappingWindowsAreRefused() throws {
    // Every window reads the same four tokens: not a partition.
    let g = try parseGraph(
      """
      graph @g {
        input %x : f32[1,4,2]
        param @w : f32[2,2]
        %c = concat(%x, %x) {axis=1} : f32[1,8,2]
        %xw = reshape(%c) {shape=[2,4,2]} : f32[2,4,2]
        %y = linear(%xw, @w) {axis=2, layout="oi"} : f32[2,4,2]
        output %y
      }
      """)
    let x = g.inputs[0].value, xw = g.nodes.first { $0.op == .linear(axis: 2, layout: .outIn) }!.inputs[0]
    guard case .failure(let e) = WindowTrace.table(g, producer: g.producerIndex(), source: x, tokenAxes: [1], sink: xw) else {
      return XCTFail("overlapping windows were traced as a partition")
    }
    XCTAssertTrue(e.description.contains("overlap"), e.description)
  }
}
