// SBPLayout.swift: the SBP settings a plan is compiled with, and the mask stages they imply for a marked graph.
import SBPIR

/// How the attention core of a selected MHSA sub-block is split (DESIGN.md, "SBP semantics").
public enum AttentionSplit: String, Sendable, CaseIterable {
  /// Kept queries attend among kept keys and values only, with gradient (the paper's choice).
  case qkv
  /// Kept queries attend to every key and value, with gradient; the forward is exact.
  case query
  /// The attention core is not split.
  case none
}

/// SBP settings: the keep ratio, how masks are drawn, how attention is split, which blocks.
public struct SBPOptions: Sendable, Equatable {
  public var keep: Double
  public var mask: MaskMode
  public var attention: AttentionSplit
  /// A `--blocks` spec; nil selects the model's default (the paper's rule).
  public var blocks: String?

  public init(keep: Double = 0.5, mask: MaskMode = .grid, attention: AttentionSplit = .qkv, blocks: String? = nil) {
    self.keep = keep
    self.mask = mask
    self.attention = attention
    self.blocks = blocks
  }

  /// Plain backpropagation: nothing is dropped.
  public static let off = SBPOptions(keep: 1)

  /// The settings in the plan file's one-line form.
  public var text: String {
    "keep \(keep) mask \(mask.rawValue) attention \(attention.rawValue) blocks \(blocks ?? "default")"
  }

  /// Parses `text`; nil when it is not that form.
  public init?(text: String) {
    let f = text.split(separator: " ").map(String.init)
    guard f.count == 8, f[0] == "keep", let k = Double(f[1]), k > 0, k <= 1, f[2] == "mask", let m = MaskMode(rawValue: f[3]),
      f[4] == "attention", let a = AttentionSplit(rawValue: f[5]), f[6] == "blocks"
    else { return nil }
    self.init(keep: k, mask: m, attention: a, blocks: f[7] == "default" ? nil : f[7])
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

  public var keptInput: String { "sbp.kept.\(stage)" }
  public var droppedInput: String { "sbp.dropped.\(stage)" }
}

/// What SBP means for one marked graph: the selected blocks, the base mask and its stages.
public struct SBPLayout: Sendable, Equatable {
  public var options: SBPOptions
  public var blocks: [Int]
  /// The mask drawn each step, over the deepest selected stage's grid.
  public var spec: MaskSpec
  public var stages: [MaskStage]

  /// The layout for `graph` (annotated by `mark`), or nil when the options drop nothing:
  /// keep 1 or an empty selection.
  public static func make(_ graph: Graph, options: SBPOptions) throws -> SBPLayout? {
    guard options.keep < 1 else { return nil }
    let table = BlockTable(graph)
    let selected = try options.blocks.map { try BlockSelector.parse($0, table: table) } ?? table.defaultSelection
    let chosen = table.blocks.filter { selected.contains($0.index) }
    guard let deepest = chosen.max(by: { $0.stage < $1.stage }) else { return nil }
    guard deepest.grid.count == 2 else {
      throw PassError("insert-sbp: block \(deepest.index) has a \(deepest.grid.count)-D token grid; SBP needs 2-D")
    }
    let spec: MaskSpec
    do { spec = try MaskSpec(keep: options.keep, mode: options.mask, height: deepest.grid[0], width: deepest.grid[1]) } catch {
      throw PassError("insert-sbp: \(error)")
    }
    var stages: [MaskStage] = []
    let range = spec.keptRange
    let base = spec.height * spec.width
    for s in Set(chosen.map(\.stage)).sorted() {
      let inStage = chosen.filter { $0.stage == s }
      let b = inStage[0]
      guard b.prefix >= 0, b.prefix <= 1 << 16 else { throw PassError("insert-sbp: stage \(s) has \(b.prefix) prefix tokens") }
      guard inStage.allSatisfy({ $0.grid == b.grid && $0.prefix == b.prefix }) else {
        throw PassError("insert-sbp: the selected blocks of stage \(s) disagree on their token grid")
      }
      guard b.grid.count == 2, b.grid[0] % spec.height == 0, b.grid[1] % spec.width == 0,
        b.grid[0] / spec.height == b.grid[1] / spec.width
      else {
        throw PassError(
          "insert-sbp: stage \(s)'s \(b.grid) grid is not an integer multiple of the base \(spec.height)x\(spec.width) grid; "
            + "the mask cannot be replicated to it")
      }
      let f = b.grid[0] / spec.height
      stages.append(
        MaskStage(
          stage: s, grid: b.grid, prefix: b.prefix, factor: f, keptRows: b.prefix + range.upperBound * f * f,
          droppedRows: (base - range.lowerBound) * f * f))
    }
    return SBPLayout(options: options, blocks: chosen.map(\.index), spec: spec, stages: stages)
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
            + (range.count > 1 ? " to \(range.upperBound)" : "") + " kept patches per step (keep \(options.keep), \(options.mask.rawValue))"
        )
      }
      kept += [Int64](repeating: -1, count: st.keptRows - kept.count)
      dropped += [Int64](repeating: -1, count: st.droppedRows - dropped.count)
      return (kept, dropped)
    }
  }

  /// The compile summary: effective keep ratio and kept-count range.
  public var summary: String {
    let r = spec.keptRange
    let counts = r.count > 1 ? "\(r.lowerBound)–\(r.upperBound)" : "\(r.lowerBound)"
    let eff = (spec.effectiveKeep * 10000).rounded() / 10000
    return "SBP: keep \(options.keep) (\(options.mask.rawValue)), effective \(eff); \(counts) of \(spec.height * spec.width) patches "
      + "kept per step on the \(spec.height)x\(spec.width) base grid; \(blocks.count) blocks; attention \(options.attention.rawValue)"
  }
}
