// Timeline.swift: live bytes over a training step's op sequence, by category, and a small SVG writer that plots them.
import Foundation
import SBPIR
import SBPPasses

/// Live bytes at every op of a scheduled step, stacked by category: parameters, optimizer
/// state and inputs (persistent), activations saved for the backward, transient buffers, and
/// the convolution workspace.
public struct MemoryTimeline: Sendable {
  public static let categories = [
    "parameters", "optimizer state", "inputs", "saved for backward", "transient", "conv workspace", "gradients",
  ]

  /// bytes[step][category]
  public var bytes: [[Int]]
  /// The first op after the loss: where the backward starts.
  public var backwardStart: Int
  public var peakStep: Int
  public var peakBytes: Int

  public init(_ g: Graph, plan: MemoryPlan) {
    let n = g.nodes.count
    let loss = g.lossIndex ?? n - 1
    var saved = Set<ValueID>()
    for s in plan.slots where s.start <= loss && s.end > loss { saved.insert(s.value) }
    var rows = [[Int]](
      repeating: [plan.parameterBytes, plan.optimizerStateBytes, plan.inputBytes, 0, 0, plan.workspaceBytes, plan.gradientBytes],
      count: max(n, 1))
    for s in plan.slots {
      let c = saved.contains(s.value) ? 3 : 4
      for t in s.start...min(s.end, n - 1) { rows[t][c] += s.bytes }
    }
    bytes = rows
    backwardStart = loss + 1
    let totals = rows.map { $0.reduce(0, +) }
    peakBytes = totals.max() ?? 0
    peakStep = totals.firstIndex(of: peakBytes) ?? 0
  }

  /// The timeline as a stacked-area SVG, with the forward/backward boundary and the peak marked.
  public func svg(title: String) -> String {
    let w = 900.0, h = 420.0, left = 70.0, right = 190.0, top = 40.0, bottom = 50.0
    let pw = w - left - right, ph = h - top - bottom
    let steps = bytes.count
    let maxY = Double(max(peakBytes, 1)) * 1.05
    func x(_ t: Int) -> Double { left + pw * Double(t) / Double(max(steps - 1, 1)) }
    func y(_ b: Int) -> Double { top + ph * (1 - Double(b) / maxY) }
    func f(_ v: Double) -> String { String(format: "%.1f", v) }
    let colors = ["#4c72b0", "#8172b2", "#937860", "#dd8452", "#55a868", "#c44e52", "#da8bc3"]
    var out =
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
    out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    out += "<text x=\"\(f(left))\" y=\"22\" font-size=\"15\">\(escape(title))</text>\n"
    var below = [Int](repeating: 0, count: steps)
    for c in MemoryTimeline.categories.indices {
      let above = (0..<steps).map { below[$0] + bytes[$0][c] }
      guard bytes.contains(where: { $0[c] > 0 }) else { continue }
      var pts = (0..<steps).map { "\(f(x($0))),\(f(y(above[$0])))" }
      pts += (0..<steps).reversed().map { "\(f(x($0))),\(f(y(below[$0])))" }
      out += "<polygon fill=\"\(colors[c])\" fill-opacity=\"0.85\" points=\"\(pts.joined(separator: " "))\"/>\n"
      below = above
    }
    // Axes, ticks in MiB.
    out += "<line x1=\"\(f(left))\" y1=\"\(f(top + ph))\" x2=\"\(f(left + pw))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
    out += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
    let mib = maxY / 1_048_576
    let tick = [1.0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000].first { mib / $0 <= 8 } ?? 50000
    var v = 0.0
    while v <= mib {
      let yy = y(Int(v * 1_048_576))
      out += "<line x1=\"\(f(left - 4))\" y1=\"\(f(yy))\" x2=\"\(f(left))\" y2=\"\(f(yy))\" stroke=\"black\"/>"
      out += "<text x=\"\(f(left - 8))\" y=\"\(f(yy + 4))\" text-anchor=\"end\">\(Int(v))</text>\n"
      v += tick
    }
    out +=
      "<text x=\"16\" y=\"\(f(top + ph / 2))\" transform=\"rotate(-90 16 \(f(top + ph / 2)))\" text-anchor=\"middle\">live MiB</text>\n"
    out += "<text x=\"\(f(left + pw / 2))\" y=\"\(f(h - 12))\" text-anchor=\"middle\">op (schedule order, \(steps) ops)</text>\n"
    // Forward/backward boundary and the peak.
    let bx = x(min(backwardStart, steps - 1))
    out += "<line x1=\"\(f(bx))\" y1=\"\(f(top))\" x2=\"\(f(bx))\" y2=\"\(f(top + ph))\" stroke=\"black\" stroke-dasharray=\"5,4\"/>"
    out += "<text x=\"\(f(bx - 4))\" y=\"\(f(top + ph - 6))\" text-anchor=\"end\">forward</text>"
    out += "<text x=\"\(f(bx + 4))\" y=\"\(f(top + ph - 6))\">backward</text>\n"
    let px = x(peakStep), py = y(peakBytes)
    out += "<circle cx=\"\(f(px))\" cy=\"\(f(py))\" r=\"4\" fill=\"black\"/>"
    out += "<line x1=\"\(f(px))\" y1=\"\(f(py))\" x2=\"\(f(px))\" y2=\"\(f(top - 2))\" stroke=\"black\"/>"
    out +=
      "<text x=\"\(f(px + 4))\" y=\"\(f(top - 4))\">peak \(String(format: "%.1f", Double(peakBytes) / 1_048_576)) MiB at op \(peakStep)</text>\n"
    // Legend.
    for (i, c) in MemoryTimeline.categories.enumerated() {
      let ly = top + 20 * Double(i)
      out += "<rect x=\"\(f(left + pw + 16))\" y=\"\(f(ly))\" width=\"12\" height=\"12\" fill=\"\(colors[i])\"/>"
      out += "<text x=\"\(f(left + pw + 34))\" y=\"\(f(ly + 10))\">\(c)</text>\n"
    }
    return out + "</svg>\n"
  }

  func escape(_ s: String) -> String {
    var o = ""
    for ch in s {
      switch ch {
      case "<": o += "&lt;"
      case ">": o += "&gt;"
      case "&": o += "&amp;"
      case "\"": o += "&quot;"
      default: o.append(ch)
      }
    }
    return o
  }
}
