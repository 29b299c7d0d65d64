// MaskFeed.swift: draws each step's SBP keep mask and writes its token indices into the step's inputs.
import SBPIR
import SBPPasses

/// Where each step's mask comes from: drawn from the plan's spec with a seed, the grid mask of
/// one fixed phase, or an explicit mask over the base grid.
public struct MaskFeed {
  public enum Source: Sendable {
    case sampled(seed: UInt64)
    case phase(Int)
    case explicit(KeepMask)
  }

  public let layout: SBPLayout
  public let source: Source
  private var rng: SplitMix64
  private let targets: [(kept: Buffer, dropped: Buffer)]

  /// Checks `source` against the plan and finds the index inputs in `executor`.
  public init(layout: SBPLayout, source: Source, executor: Executor) throws {
    self.layout = layout
    self.source = source
    switch source {
    case .sampled(let seed): rng = SplitMix64(seed: seed ^ 0x5BD1_E995_7F4A_7C15)
    case .phase(let p):
      guard layout.spec.mode == .grid else { throw MaskError("--mask-phase needs a grid mask; this plan draws random masks") }
      guard p >= 0, p < layout.spec.phases else {
        throw MaskError(
          "--mask-phase \(p) is out of range: this plan's grid has \(layout.spec.phases) phases (0–\(layout.spec.phases - 1))")
      }
      rng = SplitMix64(seed: 0)
    case .explicit(let m):
      _ = try layout.indices(for: m)
      rng = SplitMix64(seed: 0)
    }
    targets = try layout.stages.map { st in
      guard let k = executor.input(st.keptInput), let d = executor.input(st.droppedInput) else {
        throw RuntimeError("the training graph has no \(st.keptInput) / \(st.droppedInput) inputs")
      }
      return (k, d)
    }
  }

  /// The mask for the next step.
  public mutating func next() -> KeepMask {
    switch source {
    case .sampled: return layout.spec.sample(using: &rng)
    case .phase(let p): return layout.spec.gridMask(phase: p)
    case .explicit(let m): return m
    }
  }

  /// Writes `mask`'s kept and dropped token indices (−1 padded) into the step's inputs.
  public func feed(_ mask: KeepMask) throws {
    for (t, idx) in zip(targets, try layout.indices(for: mask)) {
      for (i, v) in idx.kept.enumerated() { t.kept.i64[i] = v }
      for (i, v) in idx.dropped.enumerated() { t.dropped.i64[i] = v }
    }
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
