// ShapeInferenceTests.swift: result types for the ops exporters emit, and the errors for bad operands.
import XCTest

@testable import SBPIR

final class ShapeInferenceTests: XCTestCase {
  func t(_ s: [Int], _ d: DType = .f32) -> TensorType { TensorType(d, s) }

  func testBroadcastingAndMatMul() throws {
    XCTAssertEqual(try Op.add.inferTypes([t([2, 1, 4]), t([3, 1])]), [t([2, 3, 4])])
    XCTAssertEqual(try Op.matMul.inferTypes([t([2, 3, 5, 4]), t([4, 6])]), [t([2, 3, 5, 6])])
    XCTAssertEqual(try Op.equal.inferTypes([t([2], .i64), t([2], .i64)]), [t([2], .bool)])
    XCTAssertThrowsError(try Op.add.inferTypes([t([2, 3]), t([4])]))
    XCTAssertThrowsError(try Op.matMul.inferTypes([t([2, 3]), t([4, 5])]))
  }

  func testLinearLayoutsAndAxis() throws {
    XCTAssertEqual(try Op.linear(axis: 2, layout: .inOut).inferTypes([t([2, 5, 4]), t([4, 8]), t([8])]), [t([2, 5, 8])])
    XCTAssertEqual(try Op.linear(axis: 2, layout: .outIn).inferTypes([t([2, 5, 4]), t([8, 4])]), [t([2, 5, 8])])
    // A 1x1 conv weight on the channel axis of NCHW.
    XCTAssertEqual(try Op.linear(axis: 1, layout: .outIn).inferTypes([t([2, 4, 7, 7]), t([8, 4, 1, 1]), t([8])]), [t([2, 8, 7, 7])])
    XCTAssertThrowsError(try Op.linear(axis: 2, layout: .inOut).inferTypes([t([2, 5, 4]), t([5, 8])]))
  }

  func testConvGeometry() throws {
    let patch = Op.conv(ConvGeometry(strides: [16, 16], pads: [0, 0, 0, 0], dilations: [1, 1], group: 1))
    XCTAssertEqual(try patch.inferTypes([t([2, 3, 224, 224]), t([192, 3, 16, 16]), t([192])]), [t([2, 192, 14, 14])])
    let dw = Op.conv(ConvGeometry(strides: [1, 1], pads: [3, 3, 3, 3], dilations: [1, 1], group: 96))
    XCTAssertEqual(try dw.inferTypes([t([2, 96, 56, 56]), t([96, 1, 7, 7])]), [t([2, 96, 56, 56])])
    XCTAssertThrowsError(try dw.inferTypes([t([2, 96, 56, 56]), t([96, 2, 7, 7])]))
  }

  func testSliceNormalization() throws {
    let spec = try SliceSpec(starts: [-1], ends: [Int(Int64.max)], axes: [-1], steps: [1]).normalized(for: [2, 10])
    XCTAssertEqual(spec, SliceSpec(starts: [9], ends: [10], axes: [1], steps: [1]))
    XCTAssertEqual(try Op.slice(spec).inferTypes([t([2, 10])]), [t([2, 1])])
    let rev = try SliceSpec(starts: [-1], ends: [Int(Int64.min)], axes: [0], steps: [-2]).normalized(for: [5])
    XCTAssertEqual(try Op.slice(rev).inferTypes([t([5])]), [t([3])])
  }

  func testDataMovement() throws {
    XCTAssertEqual(try Op.gather(axis: 1).inferTypes([t([2, 197, 64]), t([], .i64)]), [t([2, 64])])
    XCTAssertEqual(try Op.squeeze([0]).inferTypes([t([1, 2, 3])]), [t([2, 3])])
    XCTAssertEqual(try Op.unsqueeze([0, 3]).inferTypes([t([2, 3])]), [t([1, 2, 3, 1])])
    XCTAssertEqual(try Op.expand([4, 1, 1]).inferTypes([t([1, 1, 64])]), [t([4, 1, 64])])
    XCTAssertEqual(try Op.split(axis: 0, sizes: [1, 2]).inferTypes([t([3, 4])]), [t([1, 4]), t([2, 4])])
    XCTAssertEqual(try Op.reduceMean(axes: [2, 3], keepDims: true).inferTypes([t([2, 8, 7, 7])]), [t([2, 8, 1, 1])])
    XCTAssertThrowsError(try Op.reshape([5]).inferTypes([t([2, 3])]))
    XCTAssertThrowsError(try Op.transpose([0, 0]).inferTypes([t([2, 3])]))
  }

  func testOverflowingShapesAreRejected() {
    XCTAssertNil(checkedElementCount([1 << 40, 1 << 40]))
    XCTAssertThrowsError(try Op.expand([1 << 30, 1 << 30]).inferTypes([t([1])]))
  }
}
