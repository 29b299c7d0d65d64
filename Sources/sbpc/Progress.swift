// Progress.swift: the training progress line on a terminal.
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
  init(total: Int, first: Int, batch: Int) {
    (self.total, self.first, self.batch) = (total, first, batch)
  }

  /// - Parameter rate: images per second since the run (or its resumption) began.
  func update(step: Int, epoch: (Int, Int)?, loss: Float, rate: Double) {
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
