// Progress.swift: the training progress line on a terminal, and the JSON-lines log.
import Foundation

/// One status line on standard error, rewritten in place: step, epoch, loss, throughput and
/// time left. Silent when standard error is not a terminal (logs and pipes get the
/// per-epoch lines on standard output and `--log` instead).
final class Progress {
  let total: Int, first: Int, batch: Int
  let tty = isatty(2) != 0
  let start = Date()
  private var lastDraw = Date.distantPast
  private var shown = false
  /// Images per second since the run (or its resumption) began.
  private(set) var rate: Double = 0

  init(total: Int, first: Int, batch: Int) {
    (self.total, self.first, self.batch) = (total, first, batch)
  }

  func update(step: Int, epoch: (Int, Int)?, loss: Float) {
    let dt = Date().timeIntervalSince(start)
    rate = dt > 0 ? Double((step - first) * batch) / dt : 0
    guard tty, Date().timeIntervalSince(lastDraw) > 0.1 || step == total else { return }
    lastDraw = Date()
    let left = rate > 0 ? Double((total - step) * batch) / rate : 0
    var text = "step \(step)/\(total)"
    if let (e, n) = epoch { text += "  epoch \(e)/\(n)" }
    text += String(format: "  loss %.4f  %.1f img/s  ETA %d:%02d", loss, rate, Int(left) / 60, Int(left) % 60)
    FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
    shown = true
  }

  /// Erases the line before other output.
  func clear() {
    guard shown else { return }
    FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    shown = false
  }
}

/// A JSON value of a log record.
enum JSONValue {
  case string(String), int(Int), double(Double)

  var text: String {
    switch self {
    case .string(let s):
      let data = (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8)
      return String(decoding: data, as: UTF8.self)
    case .int(let i): return String(i)
    case .double(let d): return d.isFinite ? "\(d)" : "null"
    }
  }
}

/// `--log F.jsonl`: one JSON object per line, keys in sorted order, flushed per record so a
/// killed run keeps what it logged.
final class JSONLog {
  let handle: FileHandle

  init(path: String, append: Bool) throws {
    if !append || !FileManager.default.fileExists(atPath: path) {
      guard FileManager.default.createFile(atPath: path, contents: nil) else { throw RuntimeLogError("\(path): cannot create the log") }
    }
    guard let h = FileHandle(forWritingAtPath: path) else { throw RuntimeLogError("\(path): cannot open the log") }
    h.seekToEndOfFile()
    handle = h
  }

  func write(_ record: [String: JSONValue]) throws {
    let body = record.keys.sorted().map { "\"\($0)\": \(record[$0]!.text)" }.joined(separator: ", ")
    handle.write(Data("{\(body)}\n".utf8))
  }
}

/// An error opening the log.
struct RuntimeLogError: Error, CustomStringConvertible {
  let description: String
  init(_ d: String) { description = d }
}
