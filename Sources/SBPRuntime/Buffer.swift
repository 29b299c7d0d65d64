// Buffer.swift: the runtime's tensor storage, 64-byte aligned.
import SBPIR

/// Memory for one tensor value. Results of in-place ops share their input's buffer.
public final class Buffer: @unchecked Sendable {
  public let raw: UnsafeMutableRawPointer
  public let byteCount: Int
  public let type: TensorType

  /// Whether this buffer allocated `raw` (and frees it), or views memory that another owns
  /// (the executor's arena, or the buffer a view or in-place result shares).
  public let owned: Bool
  /// Keeps the memory a view points into alive.
  private let base: AnyObject?

  public init(_ type: TensorType) {
    self.type = type
    byteCount = type.byteCount
    raw = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: 64)
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 1))
    owned = true
    base = nil
  }

  /// A buffer of `type` over memory at `raw` that `base` keeps alive.
  public init(viewing raw: UnsafeMutableRawPointer, _ type: TensorType, base: AnyObject) {
    self.type = type
    byteCount = type.byteCount
    self.raw = raw
    owned = false
    self.base = base
  }

  deinit { if owned { raw.deallocate() } }

  public var count: Int { type.elementCount }
  /// The addresses the buffer spans, for overlap checks between buffers.
  var byteRange: Range<Int> { Int(bitPattern: raw)..<(Int(bitPattern: raw) + byteCount) }
  public var f32: UnsafeMutablePointer<Float> { raw.assumingMemoryBound(to: Float.self) }
  public var i64: UnsafeMutablePointer<Int64> { raw.assumingMemoryBound(to: Int64.self) }
  public var u8: UnsafeMutablePointer<UInt8> { raw.assumingMemoryBound(to: UInt8.self) }
  /// bf16 elements: the upper 16 bits of an fp32.
  public var bf16: UnsafeMutablePointer<UInt16> { raw.assumingMemoryBound(to: UInt16.self) }

  public var floats: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: f32, count: count) }

  /// Integer index values, whatever the integer dtype.
  public func index(_ i: Int) -> Int {
    switch type.dtype {
    case .i64: return Int(i64[i])
    case .i32: return Int(raw.load(fromByteOffset: i * 4, as: Int32.self))
    default: return Int(raw.load(fromByteOffset: i * type.dtype.byteSize, as: UInt8.self))
    }
  }
}
