// MaskFeed.swift: draws each step's SBP keep mask and writes its token indices into the step's inputs.
import SBPIR

/// Where each step's mask comes from: drawn from the plan's spec with a seed, the grid mask of
/// one fixed phase, or an explicit mask over the base grid.
public struct MaskFeed {
  public enum Source: Sendable {
    case sampled(seed: UInt64)
    case phase(Int)
    case explicit(KeepMask)
  }

  public let layout: MaskLayout
  public let source: Source
  private var rng: SplitMix64
  private let targets: [(kept: Buffer, dropped: Buffer)]
  private let windowTargets: [(kept: Buffer, dropped: Buffer)]
  private var phaseMasks: [KeepMask] = []
  private var current: KeepMask
  private var order: [Int]

  /// Checks `source` against the plan and finds the index inputs in `executor`.
  public init(layout: MaskLayout, source: Source, executor: Executor) throws {
    self.layout = layout
    self.source = source
    current = layout.spec.gridMask(phase: 0)
    order = Array(0..<(layout.spec.height * layout.spec.width))
    switch source {
    case .sampled(let seed): rng = SplitMix64(seed: seed ^ 0x5BD1_E995_7F4A_7C15)
    case .phase(let p):
      guard layout.spec.mode == .grid else { throw MaskError("--mask-phase needs a grid mask; this plan draws random masks") }
      guard p >= 0, p < layout.spec.phases else {
        throw MaskError(
          "--mask-phase \(p) is out of range: this plan's grid has \(layout.spec.phases) phases (0–\(layout.spec.phases - 1))")
      }
      rng = SplitMix64(seed: 0)
      current = layout.spec.gridMask(phase: p)
    case .explicit(let m):
      _ = try layout.indices(for: m)
      _ = try layout.windowIndices(for: m)
      rng = SplitMix64(seed: 0)
      current = m
    }
    if layout.spec.mode == .grid { phaseMasks = (0..<layout.spec.phases).map { layout.spec.gridMask(phase: $0) } }
    targets = try layout.stages.map { st in
      guard let k = executor.input(st.keptInput), let d = executor.input(st.droppedInput) else {
        throw RuntimeError("the training graph has no \(st.keptInput) / \(st.droppedInput) inputs")
      }
      return (k, d)
    }
    windowTargets = try layout.windows.map { w in
      guard let k = executor.input(w.keptInput), let d = executor.input(w.droppedInput),
        k.count == w.windows * w.keptRows, d.count == w.windows * w.droppedRows, layout.stage(w.stage) != nil
      else {
        throw RuntimeError("the training graph has no \(w.keptInput) / \(w.droppedInput) inputs of the plan's window sizes")
      }
      return (k, d)
    }
  }

  /// Draws the next step's mask and writes its indices into the step's inputs without
  /// allocating: grid phases are precomputed, a random mask is drawn in place, and each
  /// stage's indices are written straight from the block-replicated base mask. Returns the mask.
  public mutating func step() -> KeepMask {
    switch source {
    case .sampled where layout.spec.mode == .grid:
      let p = Int.random(in: 0..<layout.spec.phases, using: &rng)
      current = phaseMasks[p]
    case .sampled:
      // Partial Fisher–Yates over a kept permutation: the first `drop` entries are dropped.
      let drop = layout.spec.randomDropCount
      for k in 0..<drop { order.swapAt(k, Int.random(in: k..<order.count, using: &rng)) }
      for i in current.keep.indices { current.keep[i] = true }
      for k in 0..<drop { current.keep[order[k]] = false }
    case .phase, .explicit: break
    }
    write(current)
    return current
  }

  /// Writes `m`'s kept and dropped token indices (−1 padded) for every stage, with no
  /// intermediate arrays. `m` must fit the plan (the initializer checks explicit masks).
  private func write(_ m: KeepMask) {
    for (st, t) in zip(layout.stages, targets) {
      var k = 0, d = 0
      for p in 0..<st.prefix {
        t.kept.i64[k] = Int64(p)
        k += 1
      }
      let (h, w, f) = (st.grid[0], st.grid[1], st.factor)
      for i in 0..<h {
        for j in 0..<w {
          let token = Int64(st.prefix + i * w + j)
          if m.keep[(i / f) * m.width + j / f] {
            t.kept.i64[k] = token
            k += 1
          } else {
            t.dropped.i64[d] = token
            d += 1
          }
        }
      }
      for r in k..<st.keptRows { t.kept.i64[r] = -1 }
      for r in d..<st.droppedRows { t.dropped.i64[r] = -1 }
    }
    for (w, t) in zip(layout.windows, windowTargets) {
      let st = layout.stage(w.stage)!  // checked in init
      let (kept, dropped) = (t.kept.i64, t.dropped.i64)
      w.write(m, grid: st.grid, factor: st.factor, kept: { kept[$0] = $1 }, dropped: { dropped[$0] = $1 })
    }
  }

  /// Writes `mask`'s kept and dropped token indices (−1 padded) into the step's inputs.
  public func feed(_ mask: KeepMask) throws {
    _ = try layout.indices(for: mask)  // checks that it fits
    _ = try layout.windowIndices(for: mask)
    write(mask)
  }

  /// The keep mask each stage's kept-index input currently encodes, as uint8 [H, W]: what the
  /// step really read, rebuilt from the buffers rather than from the drawn mask.
  public func stageMasks() -> [(stage: MaskStage, mask: [UInt8])] {
    zip(layout.stages, targets).map { st, t in
      var m = [UInt8](repeating: 0, count: st.grid[0] * st.grid[1])
      for i in 0..<st.keptRows {
        let v = Int(t.kept.i64[i]) - st.prefix
        if v >= 0 { m[v] = 1 }
      }
      return (st, m)
    }
  }
}

extension KeepMask {
  /// A mask from an `.npy` array: [H, W] of bool, uint8 or int64, nonzero = kept.
  public init(npy a: NPYArray, name: String) throws {
    guard a.shape.count == 2 else { throw RuntimeError("\(name): a keep mask must be 2-D [H, W], got shape \(a.shape)") }
    let values: [Bool]
    switch a.dtype {
    case .bool, .u8: values = a.data.map { $0 != 0 }
    case .i64: values = a.int64s.map { $0 != 0 }
    default: throw RuntimeError("\(name): a keep mask must be bool, uint8 or int64, got \(a.dtype)")
    }
    self.init(height: a.shape[0], width: a.shape[1], keep: values)
  }
}
