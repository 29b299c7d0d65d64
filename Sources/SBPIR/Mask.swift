// Mask.swift: SBP keep masks over a token grid: grid and random sampling, kept counts, replication across stages, and the stages a plan indexes.
import Foundation

/// How the kept tokens are chosen at each step (DESIGN.md, "SBP semantics").
public enum MaskMode: String, Sendable, CaseIterable {
  /// keep ≤ 0.5: stride s = round(1/keep), keep (i + j) mod s == phase; keep > 0.5:
  /// s = round(1/(1 − keep)), drop (i + j) mod s == phase. The phase is drawn each step.
  case grid
  /// Drop ⌊(1 − keep)·H·W⌋ patches chosen uniformly without replacement.
  case random
}

/// One step's keep mask over an H×W grid (row-major, true = kept). Non-spatial tokens are
/// not part of it: they are always kept.
public struct KeepMask: Sendable, Equatable {
  public var height: Int
  public var width: Int
  public var keep: [Bool]

  public init(height: Int, width: Int, keep: [Bool]) {
    self.height = height
    self.width = width
    self.keep = keep
  }

  public var keptCount: Int { keep.reduce(0) { $0 + ($1 ? 1 : 0) } }

  /// Row-major indices of the kept patches, ascending.
  public var keptIndices: [Int] { keep.indices.filter { keep[$0] } }

  /// Replicates each patch into an f×f block, for a stage whose grid is f times larger, so the
  /// same image region is dropped at every scale.
  public func replicated(to h: Int, _ w: Int) throws -> KeepMask {
    guard h % height == 0, w % width == 0, h / height == w / width, h >= height else {
      throw MaskError("cannot replicate a \(height)x\(width) mask onto a \(h)x\(w) grid (needs an integer factor)")
    }
    let f = h / height
    var out = [Bool](repeating: false, count: h * w)
    for i in 0..<h { for j in 0..<w { out[i * w + j] = keep[(i / f) * width + j / f] } }
    return KeepMask(height: h, width: w, keep: out)
  }
}

/// An invalid mask request.
public struct MaskError: Error, CustomStringConvertible {
  public let description: String
  public init(_ m: String) { description = m }
}

/// What to sample: keep ratio, mode and the base grid (the deepest SBP stage's).
public struct MaskSpec: Sendable, Equatable {
  public var keep: Double
  public var mode: MaskMode
  public var height: Int
  public var width: Int

  /// A keep ratio SBP accepts: in (0, 1], where 1 turns SBP off. The one test of it, for
  /// flags, plan files and specs alike.
  public static func isValidKeep(_ keep: Double) -> Bool { keep > 0 && keep <= 1 && keep.isFinite }

  public init(keep: Double, mode: MaskMode, height: Int, width: Int) throws {
    guard MaskSpec.isValidKeep(keep) else { throw MaskError("keep ratio must be in (0, 1], got \(keep)") }
    guard height > 0, width > 0, height <= 1 << 12, width <= 1 << 12 else {
      throw MaskError("the token grid must be 1x1 to 4096x4096, got \(height)x\(width)")
    }
    // Strides beyond the grid would mean phases that keep nothing (and loops over them).
    let patches = Double(height * width)
    guard keep * patches >= 1 else {
      throw MaskError("keep \(keep) keeps less than one of the \(height)x\(width) grid's \(height * width) patches")
    }
    guard keep == 1 || (1 - keep) * patches >= 1 else {
      throw MaskError(
        "keep \(keep) drops less than one of the \(height)x\(width) grid's \(height * width) patches; use --keep 1 for no SBP")
    }
    self.keep = keep
    self.mode = mode
    self.height = height
    self.width = width
    if mode == .grid, let (stride, _) = gridStride, stride > height + width - 1 {
      throw MaskError(
        "keep \(keep) gives a grid stride of \(stride), more than the \(height + width - 1) diagonals of the \(height)x\(width) grid, so some phases would drop everything; use --mask random"
      )
    }
  }

  /// The grid stride s and whether the phase marks kept (true) or dropped (false) patches;
  /// nil when nothing is dropped. `round` is half-to-even, as NumPy's, so 1/0.4 = 2.5 gives 2.
  public var gridStride: (stride: Int, phaseKeeps: Bool)? {
    if keep >= 1 { return nil }
    if keep <= 0.5 { return (Int((1 / keep).rounded(.toNearestOrEven)), true) }
    return (Int((1 / (1 - keep)).rounded(.toNearestOrEven)), false)
  }

  /// Number of distinct grid phases (1 when nothing is dropped).
  public var phases: Int { gridStride?.stride ?? 1 }

  /// The grid mask for `phase` in 0..<phases.
  public func gridMask(phase: Int) -> KeepMask {
    guard let (s, keeps) = gridStride else {
      return KeepMask(height: height, width: width, keep: .init(repeating: true, count: height * width))
    }
    var m = [Bool](repeating: false, count: height * width)
    for i in 0..<height { for j in 0..<width { m[i * width + j] = ((i + j) % s == phase) == keeps } }
    return KeepMask(height: height, width: width, keep: m)
  }

  /// Patches a random mask drops.
  public var randomDropCount: Int { Int(((1 - keep) * Double(height * width)).rounded(.down)) }

  /// Draws one step's mask: a uniform phase for grid, a uniform subset for random.
  public func sample<R: RandomNumberGenerator>(using rng: inout R) -> KeepMask {
    switch mode {
    case .grid:
      return gridMask(phase: Int.random(in: 0..<phases, using: &rng))
    case .random:
      // Partial Fisher–Yates: the first `drop` entries of a uniform permutation are dropped.
      var idx = Array(0..<(height * width))
      let drop = randomDropCount
      for k in 0..<drop { idx.swapAt(k, Int.random(in: k..<idx.count, using: &rng)) }
      var m = [Bool](repeating: true, count: height * width)
      for k in 0..<drop { m[idx[k]] = false }
      return KeepMask(height: height, width: width, keep: m)
    }
  }

  /// Smallest and largest kept count over every mask this spec can draw; buffers are sized for
  /// the largest.
  public var keptRange: ClosedRange<Int> {
    switch mode {
    case .grid:
      let counts = (0..<phases).map { gridMask(phase: $0).keptCount }
      return counts.min()!...counts.max()!
    case .random:
      let n = height * width - randomDropCount
      return n...n
    }
  }

  /// Mean kept fraction over the masks this spec draws (phases are equally likely).
  public var effectiveKeep: Double {
    switch mode {
    case .grid:
      let total = (0..<phases).reduce(0) { $0 + gridMask(phase: $1).keptCount }
      return Double(total) / Double(phases * height * width)
    case .random:
      return Double(height * width - randomDropCount) / Double(height * width)
    }
  }
}

/// SplitMix64: a small seeded generator, so masks and synthetic data repeat for a seed.
public struct SplitMix64: RandomNumberGenerator, Sendable {
  public var state: UInt64
  public init(seed: UInt64) { state = seed }
  public mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// A standard normal draw (Box–Muller).
  public mutating func normal() -> Float {
    let u1 = Double(next() >> 11 + 1) / Double(1 << 53), u2 = Double(next() >> 11) / Double(1 << 53)
    return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
  }
}

/// One grid at which SBP indexes tokens: the graph inputs that carry each step's kept and
/// dropped token indices there, and how many rows they hold.
public struct MaskStage: Sendable, Equatable {
  public var stage: Int
  /// [H, W] of the stage's token grid.
  public var grid: [Int]
  /// Leading non-spatial tokens, always kept and listed first among the kept indices.
  public var prefix: Int
  /// The stage grid over the base grid (block replication factor).
  public var factor: Int
  /// Rows the kept-index vector holds: the prefix plus the largest kept patch count.
  public var keptRows: Int
  /// Rows the dropped-index vector holds: the largest dropped patch count.
  public var droppedRows: Int

  public init(stage: Int, grid: [Int], prefix: Int, factor: Int, keptRows: Int, droppedRows: Int) {
    self.stage = stage
    self.grid = grid
    self.prefix = prefix
    self.factor = factor
    self.keptRows = keptRows
    self.droppedRows = droppedRows
  }

  public var keptInput: String { "sbp.kept.\(stage)" }
  public var droppedInput: String { "sbp.dropped.\(stage)" }
}

/// The windows of a windowed attention's partition on one stage (Swin): where each window
/// row sits on the stage's grid, and how many rows each window's kept and dropped lists hold.
/// The step's lists are graph inputs `sbp.wkept.<id>` and `sbp.wdropped.<id>`: window w's
/// rows are entries w·rows ..< (w+1)·rows, each w·size + the row in the window, −1 padded.
/// A padding row of the partition is always dropped.
public struct MaskWindows: Sendable, Equatable {
  public var id: Int
  public var stage: Int
  public var windows: Int
  public var size: Int
  /// windows·size grid positions (row-major over the stage's H×W grid), −1 for padding.
  public var table: [Int]
  public var keptRows: Int
  public var droppedRows: Int

  public init(id: Int, stage: Int, windows: Int, size: Int, table: [Int], keptRows: Int, droppedRows: Int) {
    self.id = id
    self.stage = stage
    self.windows = windows
    self.size = size
    self.table = table
    self.keptRows = keptRows
    self.droppedRows = droppedRows
  }

  public var keptInput: String { "sbp.wkept.\(id)" }
  public var droppedInput: String { "sbp.wdropped.\(id)" }

  /// Whether grid position `p` of a stage (width `w`, factor `f`) is kept under base mask `m`.
  @inline(__always) static func kept(_ p: Int, _ m: KeepMask, width w: Int, factor f: Int) -> Bool {
    m.keep[(p / w / f) * m.width + (p % w) / f]
  }

  /// The most kept and dropped rows one window holds under any mask `spec` draws, for a
  /// stage of `grid` at block-replication `factor`.
  public static func rows(table: [Int], windows: Int, size: Int, spec: MaskSpec, grid: [Int], factor: Int) -> (kept: Int, dropped: Int) {
    var kept = 0, dropped = 0
    func count(_ m: KeepMask) {
      for w in 0..<windows {
        var k = 0
        for n in 0..<size where table[w * size + n] >= 0 && Self.kept(table[w * size + n], m, width: grid[1], factor: factor) { k += 1 }
        kept = max(kept, k)
        dropped = max(dropped, size - k)
      }
    }
    switch spec.mode {
    case .grid:
      for p in 0..<spec.phases { count(spec.gridMask(phase: p)) }
    case .random:
      // Any subset of the base grid can be drawn: bound each window by the mask's counts.
      let f2 = factor * factor, range = spec.keptRange, base = spec.height * spec.width
      for w in 0..<windows {
        let real = (0..<size).filter { table[w * size + $0] >= 0 }.count
        kept = max(kept, min(real, range.upperBound * f2))
        dropped = max(dropped, size - real + min(real, (base - range.lowerBound) * f2))
      }
    }
    return (max(kept, 1), max(dropped, 1))
  }

  /// Writes the step's lists for base mask `m` through `kept(i, v)` and `dropped(i, v)`,
  /// padding each window's rows with −1. False when a window holds more than its rows.
  @discardableResult
  public func write(_ m: KeepMask, grid: [Int], factor: Int, kept: (Int, Int64) -> Void, dropped: (Int, Int64) -> Void) -> Bool {
    var fits = true
    for w in 0..<windows {
      var k = 0, d = 0
      for n in 0..<size {
        let p = table[w * size + n], v = Int64(w * size + n)
        if p >= 0 && Self.kept(p, m, width: grid[1], factor: factor) {
          if k < keptRows { kept(w * keptRows + k, v) } else { fits = false }
          k += 1
        } else {
          if d < droppedRows { dropped(w * droppedRows + d, v) } else { fits = false }
          d += 1
        }
      }
      for r in min(k, keptRows)..<keptRows { kept(w * keptRows + r, -1) }
      for r in min(d, droppedRows)..<droppedRows { dropped(w * droppedRows + r, -1) }
    }
    return fits
  }
}

/// The masks a training step reads: the base mask drawn each step and the stages whose
/// kept and dropped token indices are graph inputs. The compiler decides it; the plan file
/// carries it, and the runtime draws masks from it without the passes.
public struct MaskLayout: Sendable, Equatable {
  public var spec: MaskSpec
  public var stages: [MaskStage]
  /// Windowed attentions' partitions, whose per-window lists are inputs too.
  public var windows: [MaskWindows]

  public init(spec: MaskSpec, stages: [MaskStage], windows: [MaskWindows] = []) {
    self.spec = spec
    self.stages = stages
    self.windows = windows
  }

  /// Each window partition's kept and dropped lists under base mask `m` (`MaskWindows`).
  public func windowIndices(for m: KeepMask) throws -> [(kept: [Int64], dropped: [Int64])] {
    try windows.map { w in
      guard let st = stage(w.stage) else { throw MaskError("window partition \(w.id) is on stage \(w.stage), which the mask does not index") }
      var kept = [Int64](repeating: -1, count: w.windows * w.keptRows), dropped = [Int64](repeating: -1, count: w.windows * w.droppedRows)
      guard w.write(m, grid: st.grid, factor: st.factor, kept: { kept[$0] = $1 }, dropped: { dropped[$0] = $1 }) else {
        throw MaskError("the mask keeps or drops more rows in a window of partition \(w.id) than its \(w.keptRows) / \(w.droppedRows) rows")
      }
      return (kept, dropped)
    }
  }

  public func stage(_ s: Int) -> MaskStage? { stages.first { $0.stage == s } }

  /// Kept and dropped token indices for each stage under base mask `m`, padded with −1 to the
  /// stage's row counts. Throws when `m` keeps more or drops more than the buffers hold.
  public func indices(for m: KeepMask) throws -> [(kept: [Int64], dropped: [Int64])] {
    guard m.height == spec.height, m.width == spec.width else {
      throw MaskError("the mask is \(m.height)x\(m.width); this plan's base grid is \(spec.height)x\(spec.width)")
    }
    return try stages.map { st in
      let r = try m.replicated(to: st.grid[0], st.grid[1])
      var kept = (0..<st.prefix).map { Int64($0) }
      var dropped: [Int64] = []
      for (i, k) in r.keep.enumerated() {
        if k { kept.append(Int64(st.prefix + i)) } else { dropped.append(Int64(st.prefix + i)) }
      }
      guard kept.count <= st.keptRows, dropped.count <= st.droppedRows else {
        let range = spec.keptRange
        throw MaskError(
          "the mask keeps \(m.keptCount) of \(m.keep.count) patches; this plan holds \(range.lowerBound)"
            + (range.count > 1 ? " to \(range.upperBound)" : "") + " kept patches per step (keep \(spec.keep), \(spec.mode.rawValue))"
        )
      }
      kept += [Int64](repeating: -1, count: st.keptRows - kept.count)
      dropped += [Int64](repeating: -1, count: st.droppedRows - dropped.count)
      return (kept, dropped)
    }
  }
}
