// Checkpoint.swift: a training run's weights, optimizer state and position, saved atomically and restored bit for bit.
import Foundation
import SBPIR

/// What a resumed run needs to continue exactly where another stopped: every weight and
/// optimizer-state tensor of the training graph, and the number of steps done (from which
/// the data order, the masks and AdamW's step count follow).
///
/// One file, `DIR/checkpoint.sbpck`: a line `sbpc-checkpoint 1`, a line of JSON (the step,
/// the seed, each tensor's name and byte count, and an FNV-1a-64 digest of the tensor
/// bytes), then the bytes. It is written to a temporary file in DIR, flushed to disk and
/// renamed over the old one, so a crash at any moment leaves either the old checkpoint or
/// the new one, never a mix.
public enum Checkpoint {
  public static let fileName = "checkpoint.sbpck"

  /// Where a run is.
  public struct State: Codable, Sendable, Equatable {
    /// Training steps done.
    public var step: Int
    /// The run's seed (data order and masks follow from it and the step).
    public var seed: UInt64
    /// Samples per step over every rank (nil in checkpoints from before data parallelism:
    /// the plan's batch).
    public var globalBatch: Int?
    public var tensors: [Entry]
    public var digest: String

    public struct Entry: Codable, Sendable, Equatable {
      public var name: String
      public var bytes: Int
    }
  }

  /// The tensors a checkpoint holds: trainable weights, state the step updates (running
  /// statistics) and optimizer state, in graph order.
  static func tensors(_ ex: Executor) -> [(name: String, buffer: Buffer)] {
    let state = Set(ex.graph.stateParameters.map(\.value))
    return ex.graph.params.filter { $0.trainable || state.contains($0.value) || $0.name.hasPrefix("opt.") }.map {
      ($0.name, ex.buffer($0.value))
    }
  }

  /// FNV-1a-64 of `bytes`, continuing from `h` (the offset basis by default).
  static func fnv1a<S: Sequence>(_ bytes: S, from h: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 where S.Element == UInt8 {
    var h = h
    for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
  }

  /// FNV-1a-64 of a buffer's bytes.
  static func fnv1a(_ b: Buffer, from h: UInt64 = 0xcbf2_9ce4_8422_2325) -> UInt64 {
    fnv1a(UnsafeRawBufferPointer(start: b.raw, count: b.byteCount), from: h)
  }

  static func digest(_ parts: [(name: String, buffer: Buffer)]) -> String {
    let h = parts.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { fnv1a($1.buffer, from: $0) }
    return String(h, radix: 16)
  }

  /// Checkpoint bytes this process has written, over all saves (for `crashAfter`).
  nonisolated(unsafe) static var bytesWritten = 0

  /// Saves the executor's weights and optimizer state. `crashAfter` (tests only) kills the
  /// process once it has written that many checkpoint bytes, counted over all its saves:
  /// a crash in the middle of a later save.
  public static func save(_ ex: Executor, step: Int, seed: UInt64, globalBatch: Int? = nil, to dir: String, crashAfter: Int? = nil) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let parts = tensors(ex)
    let state = State(
      step: step, seed: seed, globalBatch: globalBatch, tensors: parts.map { .init(name: $0.name, bytes: $0.buffer.byteCount) }, digest: digest(parts))
    let enc = JSONEncoder()
    enc.outputFormatting = .sortedKeys
    var header = Data("sbpc-checkpoint 1\n".utf8)
    header.append(try enc.encode(state))
    header.append(Data("\n".utf8))
    let final = dir + "/" + fileName, temp = final + ".tmp-\(getpid())"
    let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw RuntimeError("\(temp): cannot create (\(String(cString: strerror(errno))))") }
    func write(_ p: UnsafeRawPointer, _ n: Int) throws {
      var off = 0
      while off < n {
        var chunk = min(n - off, 1 << 20)
        if let crashAfter, bytesWritten + chunk > crashAfter {
          chunk = max(0, crashAfter - bytesWritten)
          _ = Glibc.write(fd, p + off, chunk)
          fsync(fd)
          kill(getpid(), SIGKILL)
        }
        let r = Glibc.write(fd, p + off, chunk)
        guard r > 0 else {
          close(fd)
          unlink(temp)
          throw RuntimeError("\(temp): write failed (\(String(cString: strerror(errno))))")
        }
        off += r
        bytesWritten += r
      }
    }
    try header.withUnsafeBytes { try write($0.baseAddress!, $0.count) }
    for p in parts { try write(p.buffer.raw, p.buffer.byteCount) }
    guard fsync(fd) == 0, close(fd) == 0 else {
      unlink(temp)
      throw RuntimeError("\(temp): cannot flush to disk")
    }
    guard rename(temp, final) == 0 else {
      unlink(temp)
      throw RuntimeError("\(final): cannot replace (\(String(cString: strerror(errno))))")
    }
    // Temporary files of saves that were killed are no longer needed.
    for f in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where f.hasPrefix(fileName + ".tmp-") {
      unlink(dir + "/" + f)
    }
    // The rename itself is durable once the folder is flushed.
    let dfd = open(dir, O_RDONLY)
    if dfd >= 0 {
      fsync(dfd)
      close(dfd)
    }
  }

  /// The tensors of DIR's checkpoint by name, read without an executor (for `sbpc export`).
  public static func read(from dir: String) throws -> (state: State, tensors: [String: [UInt8]]) {
    let (state, bytes, start) = try parse(dir)
    var out: [String: [UInt8]] = [:]
    var off = start
    for e in state.tensors {
      out[e.name] = Array(bytes[off..<(off + e.bytes)])
      off += e.bytes
    }
    return (state, out)
  }

  /// The header and bytes of DIR's checkpoint, checked for size; tensor bytes start at the returned offset.
  static func parse(_ dir: String) throws -> (State, [UInt8], Int) {
    let path = dir + "/" + fileName
    let bytes: [UInt8]
    do { bytes = try readFileBytes(path) } catch { throw RuntimeError("\(path): cannot read (no checkpoint in \(dir)?)") }
    guard let nl1 = bytes.firstIndex(of: 10), String(decoding: bytes[..<nl1], as: UTF8.self) == "sbpc-checkpoint 1",
      let nl2 = bytes[(nl1 + 1)...].firstIndex(of: 10)
    else { throw RuntimeError("\(path): not an sbpc checkpoint (no 'sbpc-checkpoint 1' header)") }
    let state: State
    do { state = try JSONDecoder().decode(State.self, from: Data(bytes[(nl1 + 1)..<nl2])) } catch {
      throw RuntimeError("\(path): damaged checkpoint header")
    }
    let listed = state.tensors.reduce(0) { $0 + $1.bytes }
    guard bytes.count - (nl2 + 1) == listed else {
      throw RuntimeError("\(path): truncated or damaged (\(bytes.count - nl2 - 1) tensor bytes, the header lists \(listed))")
    }
    return (state, bytes, nl2 + 1)
  }

  /// Reads DIR's checkpoint into the executor; returns its state. Errors name the file and
  /// what does not fit (another plan's checkpoint, a truncated or damaged file).
  public static func load(_ ex: Executor, from dir: String) throws -> State {
    let path = dir + "/" + fileName
    let (state, bytes, start) = try parse(dir)
    let parts = tensors(ex)
    guard parts.map(\.name) == state.tensors.map(\.name) else {
      let missing = parts.map(\.name).first { n in !state.tensors.contains { $0.name == n } } ?? "?"
      throw RuntimeError("\(path): made by another plan (its tensors differ from this plan's, e.g. @\(missing))")
    }
    var off = start
    for (p, e) in zip(parts, state.tensors) {
      guard e.bytes == p.buffer.byteCount else {
        throw RuntimeError("\(path): @\(e.name) holds \(e.bytes) bytes, this plan's needs \(p.buffer.byteCount)")
      }
      bytes.withUnsafeBytes { p.buffer.raw.copyMemory(from: $0.baseAddress! + off, byteCount: e.bytes) }
      off += e.bytes
    }
    guard digest(parts) == state.digest else { throw RuntimeError("\(path): damaged (the tensor bytes do not match their digest)") }
    return state
  }
}
