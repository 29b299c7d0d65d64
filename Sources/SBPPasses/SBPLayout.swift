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
    guard f.count == 8, f[0] == "keep", let k = Double(f[1]), MaskSpec.isValidKeep(k), f[2] == "mask", let m = MaskMode(rawValue: f[3]),
      f[4] == "attention", let a = AttentionSplit(rawValue: f[5]), f[6] == "blocks"
    else { return nil }
    self.init(keep: k, mask: m, attention: a, blocks: f[7] == "default" ? nil : f[7])
  }
}

/// What SBP means for one marked graph: the selected blocks, the base mask and its stages.
public struct SBPLayout: Sendable, Equatable {
  public var options: SBPOptions
  public var blocks: [Int]
  /// The mask drawn each step, over the deepest selected stage's grid.
  public var spec: MaskSpec
  public var stages: [MaskStage]
  /// The window partitions of the selected windowed attentions (none with `--attention none`).
  public var windows: [MaskWindows] = []

  /// The layout for `graph` (annotated by `mark`), or nil when the options drop nothing:
  /// keep 1 or an empty selection.
  public static func make(_ graph: Graph, options: SBPOptions) throws -> SBPLayout? {
    guard options.keep < 1 else { return nil }
    let table = BlockTable(graph)
    let selected = try options.blocks.map { try BlockSelector.parse($0, table: table) } ?? table.defaultSelection
    let chosen = table.blocks.filter { selected.contains($0.index) }
    let splitStages = Set(chosen.flatMap(\.splitStages))
    guard let deepestStage = splitStages.max(), let deepest = table.stage(deepestStage) else { return nil }
    guard deepest.grid.count == 2 else {
      throw PassError("insert-sbp: stage \(deepestStage) has a \(deepest.grid.count)-D token grid; SBP needs 2-D")
    }
    let spec: MaskSpec
    do { spec = try MaskSpec(keep: options.keep, mode: options.mask, height: deepest.grid[0], width: deepest.grid[1]) } catch {
      throw PassError("insert-sbp: \(error)")
    }
    var stages: [MaskStage] = []
    let range = spec.keptRange
    let base = spec.height * spec.width
    for s in splitStages.sorted() {
      guard let b = table.stage(s) else { throw PassError("insert-sbp: stage \(s) has no token grid") }
      guard b.prefix >= 0, b.prefix <= 1 << 16 else { throw PassError("insert-sbp: stage \(s) has \(b.prefix) prefix tokens") }
      guard chosen.filter({ $0.stage == s }).allSatisfy({ $0.grid == b.grid && $0.prefix == b.prefix }) else {
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
    var layout = SBPLayout(options: options, blocks: chosen.map(\.index), spec: spec, stages: stages)
    if options.attention != .none {
      let producer = graph.producerIndex()
      for b in layout.blocks {
        guard let (table, s, _, _) = try WindowTrace.partition(graph, producer: producer, block: b),
          !layout.windows.contains(where: { $0.stage == s && $0.table == table.table })
        else { continue }
        guard let st = layout.stage(s), st.prefix == 0 else {
          throw PassError("insert-sbp: block \(b): windowed attention on a stage with prefix tokens is not supported")
        }
        let rows = MaskWindows.rows(table: table.table, windows: table.windows, size: table.size, spec: spec, grid: st.grid, factor: st.factor)
        layout.windows.append(
          MaskWindows(
            id: layout.windows.count, stage: s, windows: table.windows, size: table.size, table: table.table, keptRows: rows.kept,
            droppedRows: rows.dropped))
      }
    }
    return layout
  }

  public func stage(_ s: Int) -> MaskStage? { mask.stage(s) }

  /// The masks this layout draws: what the plan file carries for the runtime.
  public var mask: MaskLayout { MaskLayout(spec: spec, stages: stages, windows: windows) }

  /// Kept and dropped token indices for each stage under base mask `m` (`MaskLayout.indices`).
  public func indices(for m: KeepMask) throws -> [(kept: [Int64], dropped: [Int64])] { try mask.indices(for: m) }

  public init(options: SBPOptions, blocks: [Int], spec: MaskSpec, stages: [MaskStage], windows: [MaskWindows] = []) {
    self.options = options
    self.blocks = blocks
    self.spec = spec
    self.stages = stages
    self.windows = windows
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
