// NPY.swift: a small reader and writer for NumPy .npy files (little-endian f32 and i64, C order).
import Foundation
import SBPIR

/// An array read from or written to a `.npy` file.
public struct NPYArray: Sendable, Equatable {
  public var dtype: DType
  public var shape: [Int]
  /// Little-endian element bytes.
  public var data: [UInt8]

  public init(dtype: DType, shape: [Int], data: [UInt8]) {
    self.dtype = dtype
    self.shape = shape
    self.data = data
  }

  public init(f32 values: [Float], shape: [Int]) {
    self.init(dtype: .f32, shape: shape, data: values.withUnsafeBytes { Array($0) })
  }

  public init(i64 values: [Int64], shape: [Int]) {
    self.init(dtype: .i64, shape: shape, data: values.withUnsafeBytes { Array($0) })
  }

  public var floats: [Float] {
    data.withUnsafeBytes { raw in (0..<(data.count / 4)).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) } }
  }

  public var int64s: [Int64] {
    data.withUnsafeBytes { raw in (0..<(data.count / 8)).map { raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self) } }
  }

  static let descr: [DType: String] = [.f32: "<f4", .i64: "<i8", .i32: "<i4", .f64: "<f8", .u8: "|u1", .bool: "|b1"]

  /// Reads `path`; errors name the file and what is wrong with it.
  public static func read(_ path: String) throws -> NPYArray {
    let d: [UInt8]
    do { d = try readFileBytes(path) } catch { throw RuntimeError("\(path): cannot read") }
    return try parse(d, name: path)
  }

  public static func parse(_ b: [UInt8], name: String) throws -> NPYArray {
    func bad(_ m: String) -> RuntimeError { RuntimeError("\(name): not a valid .npy file (\(m))") }
    guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw bad("missing the \\x93NUMPY magic") }
    let major = b[6]
    let headerLen: Int, start: Int
    switch major {
    case 1:
      headerLen = Int(b[8]) | Int(b[9]) << 8
      start = 10
    case 2, 3:
      guard b.count >= 12 else { throw bad("truncated header") }
      headerLen = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24
      start = 12
    default: throw bad("unknown version \(major)")
    }
    guard start + headerLen <= b.count else { throw bad("truncated header") }
    let header = String(decoding: b[start..<(start + headerLen)], as: UTF8.self)
    func field(_ key: String) -> String? {
      guard let r = header.range(of: "'\(key)':") else { return nil }
      return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
    }
    guard let descrField = field("descr"), let q1 = descrField.firstIndex(of: "'"),
      let q2 = descrField[descrField.index(after: q1)...].firstIndex(of: "'")
    else { throw bad("no descr") }
    let descr = String(descrField[descrField.index(after: q1)..<q2])
    guard
      let dtype = descr == "<i8"
        ? DType.i64
        : descr == "<f4" ? .f32 : descr == "<i4" ? .i32 : descr == "|u1" ? .u8 : descr == "|b1" ? .bool : descr == "<f8" ? .f64 : nil
    else { throw bad("unsupported dtype '\(descr)'; sbpc reads <f4, <f8, <i8, <i4, |u1 and |b1") }
    guard let fo = field("fortran_order"), fo.hasPrefix("False") else { throw bad("Fortran order is not supported") }
    guard let sf = field("shape"), let open = sf.firstIndex(of: "("), let close = sf.firstIndex(of: ")") else { throw bad("no shape") }
    let dims = try sf[sf.index(after: open)..<close].split(separator: ",").map { s -> Int in
      guard let n = Int(s.trimmingCharacters(in: .whitespaces)), n >= 0 else { throw bad("bad shape \(sf[open...close])") }
      return n
    }
    guard let count = checkedElementCount(dims) else { throw bad("shape \(dims) is too large") }
    let body = start + headerLen
    guard b.count - body == count * dtype.byteSize else {
      throw bad("holds \(b.count - body) data bytes, shape \(dims) of \(descr) needs \(count * dtype.byteSize)")
    }
    return NPYArray(dtype: dtype, shape: dims, data: Array(b[body...]))
  }

  /// The file's bytes: a version 1.0 header padded to 64 bytes, then the data.
  public func encoded() -> [UInt8] {
    let shapeText = shape.isEmpty ? "()" : shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    var header = "{'descr': '\(NPYArray.descr[dtype] ?? "<f4")', 'fortran_order': False, 'shape': \(shapeText), }"
    let total = 10 + header.utf8.count + 1
    header += String(repeating: " ", count: (64 - total % 64) % 64) + "\n"
    var out: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
    let n = header.utf8.count
    out += [UInt8(n & 0xff), UInt8(n >> 8)]
    out += Array(header.utf8)
    return out + data
  }

  public func write(_ path: String) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(encoded())) else { throw RuntimeError("\(path): cannot write") }
  }
}
