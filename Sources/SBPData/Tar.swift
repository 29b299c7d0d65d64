// Tar.swift: a streaming reader of tar archives (ustar, GNU long names, pax paths) for WebDataset shards.
import Foundation

/// Bytes read in order, with skipping: a file or, for tests and fuzzing, memory.
public protocol ByteStream: AnyObject {
  /// Reads exactly `count` bytes into `into`; false at a clean end before the first byte.
  func read(_ count: Int, into: UnsafeMutableRawPointer) throws -> Bool
  func skip(_ count: Int) throws
  /// Bytes consumed so far (for messages).
  var offset: Int { get }
}

/// A tar file that ends or breaks where it should not.
public struct TarError: Error, CustomStringConvertible, Sendable {
  public let description: String
}

/// A file read through a buffer, whose skips seek.
public final class FileByteStream: ByteStream {
  let fd: Int32
  public let path: String
  public private(set) var offset = 0
  var buffer: UnsafeMutableRawPointer
  var start = 0, end = 0
  let capacity = 1 << 18

  public init(path: String) throws {
    fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw TarError(description: "\(path): cannot open (\(String(cString: strerror(errno))))") }
    self.path = path
    buffer = .allocate(byteCount: capacity, alignment: 64)
  }

  deinit {
    close(fd)
    buffer.deallocate()
  }

  public func read(_ count: Int, into out: UnsafeMutableRawPointer) throws -> Bool {
    var done = 0
    while done < count {
      if start == end {
        let n = Foundation.read(fd, buffer, capacity)
        guard n >= 0 else { throw TarError(description: "\(path): read error at byte \(offset) (\(String(cString: strerror(errno))))") }
        if n == 0 {
          if done == 0 { return false }
          throw TarError(description: "\(path): truncated at byte \(offset + done)")
        }
        (start, end) = (0, n)
      }
      let n = min(count - done, end - start)
      (out + done).copyMemory(from: buffer + start, byteCount: n)
      start += n
      done += n
    }
    offset += count
    return true
  }

  public func skip(_ count: Int) throws {
    let buffered = min(count, end - start)
    start += buffered
    if count > buffered {
      guard lseek(fd, off_t(count - buffered), SEEK_CUR) >= 0 else { throw TarError(description: "\(path): cannot seek at byte \(offset)") }
    }
    offset += count
  }
}

/// Bytes in memory.
public final class MemoryByteStream: ByteStream {
  let bytes: [UInt8]
  public private(set) var offset = 0
  public init(_ bytes: [UInt8]) { self.bytes = bytes }

  public func read(_ count: Int, into out: UnsafeMutableRawPointer) throws -> Bool {
    if offset == bytes.count, count > 0 { return false }
    guard count <= bytes.count - offset else { throw TarError(description: "truncated at byte \(bytes.count)") }
    bytes.withUnsafeBytes { out.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
    offset += count
    return true
  }

  public func skip(_ count: Int) throws {
    guard count <= bytes.count - offset else { throw TarError(description: "truncated at byte \(bytes.count)") }
    offset += count
  }
}

/// The members of a tar archive, one at a time: a member's data is read or skipped before
/// the next header.
public final class TarReader {
  let stream: ByteStream
  let name: String
  var header = [UInt8](repeating: 0, count: 512)
  var pending = 0, padding = 0
  var members = 0

  /// - Parameter name: the archive's name, for messages.
  public init(_ stream: ByteStream, name: String) {
    self.stream = stream
    self.name = name
  }

  /// The next regular file's path and size, or nil at the archive's end.
  public func next() throws -> (path: String, size: Int)? {
    try skipData()
    var longName: String?
    while true {
      let at = stream.offset
      let got = try header.withUnsafeMutableBytes { try stream.read(512, into: $0.baseAddress!) }
      // A tar ends with zero blocks; a file cut at a header boundary ends it as well.
      guard got, header.contains(where: { $0 != 0 }) else { return nil }
      guard checksumMatches() else {
        throw TarError(
          description: members == 0
            ? "\(name): not a tar file (no valid header at byte 0)" : "\(name): corrupt tar header at byte \(at)")
      }
      members += 1
      let size = try field(124, 12, at: at)
      let type = header[156]
      switch type {
      case UInt8(ascii: "L"), UInt8(ascii: "x"):
        let data = try readBytes(size)
        if type == UInt8(ascii: "L") {
          longName = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
        } else if let path = TarReader.paxPath(data) {
          longName = path
        }
      case 0, UInt8(ascii: "0"), UInt8(ascii: "7"):
        (pending, padding) = (size, (512 - size % 512) % 512)
        return (longName ?? headerPath(), size)
      default:
        // Directories, links, global pax headers: nothing to train on.
        (pending, padding) = (size, (512 - size % 512) % 512)
        try skipData()
        longName = nil
      }
    }
  }

  /// The current member's data, into `bytes` (resized to it).
  public func read(into bytes: inout [UInt8]) throws {
    let n = pending
    // Resized in place: an array that held a larger member keeps its memory.
    if bytes.count < n {
      bytes.append(contentsOf: repeatElement(0, count: n - bytes.count))
    } else if bytes.count > n {
      bytes.removeLast(bytes.count - n)
    }
    if n > 0 { _ = try bytes.withUnsafeMutableBytes { try stream.read(n, into: $0.baseAddress!) } }
    pending = 0
    try stream.skip(padding)
    padding = 0
  }

  func skipData() throws {
    if pending + padding > 0 { try stream.skip(pending + padding) }
    (pending, padding) = (0, 0)
  }

  func readBytes(_ n: Int) throws -> [UInt8] {
    guard n <= 1 << 20 else { throw TarError(description: "\(name): a \(n)-byte tar extension header at byte \(stream.offset)") }
    (pending, padding) = (n, (512 - n % 512) % 512)
    var out: [UInt8] = []
    try read(into: &out)
    return out
  }

  func checksumMatches() -> Bool {
    var unsigned = 0, signed = 0
    for (i, b) in header.enumerated() {
      let v = (148..<156).contains(i) ? 32 : Int(b)
      unsigned += v
      signed += (148..<156).contains(i) ? 32 : Int(Int8(bitPattern: b))
    }
    guard let stored = TarReader.octal(header[148..<156]) else { return false }
    return stored == unsigned || stored == signed
  }

  /// A numeric field: octal text, or GNU's base-256 with the high bit set.
  func field(_ at: Int, _ length: Int, at offset: Int) throws -> Int {
    let bytes = header[at..<(at + length)]
    if let first = bytes.first, first & 0x80 != 0 {
      var v = Int(first & 0x7F)
      for b in bytes.dropFirst() {
        guard v < 1 << 48 else { throw TarError(description: "\(name): member size out of range at byte \(offset)") }
        v = v << 8 | Int(b)
      }
      return v
    }
    guard let v = TarReader.octal(bytes), v < 1 << 40 else {
      throw TarError(description: "\(name): bad member size at byte \(offset)")
    }
    return v
  }

  static func octal(_ bytes: ArraySlice<UInt8>) -> Int? {
    var v = 0, digits = 0
    for b in bytes {
      if b == 0 || b == 32 {
        if digits > 0 { break } else { continue }
      }
      guard (48...55).contains(b), v < 1 << 50 else { return nil }
      v = v * 8 + Int(b - 48)
      digits += 1
    }
    return digits > 0 ? v : nil
  }

  func headerPath() -> String {
    func text(_ r: Range<Int>) -> String { String(decoding: header[r].prefix { $0 != 0 }, as: UTF8.self) }
    let base = text(0..<100)
    let ustar = header[257..<262].elementsEqual("ustar".utf8)
    let prefix = ustar ? text(345..<500) : ""
    return prefix.isEmpty ? base : prefix + "/" + base
  }

  /// The `path` record of a pax header ("LEN path=VALUE\n" records).
  static func paxPath(_ data: [UInt8]) -> String? {
    var i = 0
    while i < data.count {
      var len = 0, j = i
      while j < data.count, (48...57).contains(data[j]) {
        len = len * 10 + Int(data[j] - 48)
        j += 1
        if len > data.count { return nil }
      }
      guard len > 0, j < data.count, data[j] == 32, i + len <= data.count else { return nil }
      let record = data[(j + 1)..<(i + len)]
      if let eq = record.firstIndex(of: UInt8(ascii: "=")), String(decoding: record[record.startIndex..<eq], as: UTF8.self) == "path" {
        return String(decoding: record[(eq + 1)...].dropLast(record.last == 10 ? 1 : 0), as: UTF8.self)
      }
      i += len
    }
    return nil
  }
}
