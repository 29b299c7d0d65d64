// Blocks.swift: the block table read back from `mark`'s annotations, and the --blocks selector grammar.
import SBPIR

/// One block as `mark` annotated it.
public struct BlockInfo: Sendable, Equatable, Encodable {
  public var index: Int
  public var stage: Int
  /// Sub-blocks, e.g. "mhsa+mlp" (transformer), "dwconv+mlp" (ConvNeXt), "mlp", "pwconv".
  public var kind: String
  /// "tokens" ([B,N,C]), "nchw" or "nhwc".
  public var layout: String
  public var tokenAxes: [Int]
  /// Spatial token grid, [H, W].
  public var grid: [Int]
  /// Leading non-spatial tokens (class, distillation), always kept by SBP.
  public var prefix: Int
  public var roles: [String]
  public var parameters: Int
  public var nodes: Int
  /// The stages whose masks its splits read: its own, and those of PW-Conv regions on
  /// another grid (a downsampling bottleneck's first 1×1 conv reads the previous stage's).
  public var splitStages: [Int]
}

/// A stage's token grid: every split on it uses its mask.
public struct StageInfo: Sendable, Equatable, Encodable {
  public var stage: Int
  public var grid: [Int]
  public var prefix: Int
}

/// A residual unit `mark` could not match, with its reason.
public struct UnmatchedUnit: Sendable, Equatable, Encodable {
  public var node: String
  public var reason: String
}

extension Graph {
  /// The block `mark` put each node in, by node index (nodes outside blocks are absent).
  public var nodeBlocks: [Int: Int] {
    var out: [Int: Int] = [:]
    for (i, n) in nodes.enumerated() { if case .int(let b)? = n.attrs[Annotation.block] { out[i] = b } }
    return out
  }
}

/// Everything `mark` found in a graph. Built from annotations, so it describes exactly what
/// later passes will see.
public struct BlockTable: Sendable, Encodable {
  public var blocks: [BlockInfo]
  /// Every stage a block or a split region is on, by stage.
  public var stages: [StageInfo]
  public var unmatched: [UnmatchedUnit]
  public var stemNodes: Int
  public var downsamplers: Int
  public var headNodes: Int

  public var stageCount: Int { (blocks.map(\.stage).max() ?? -1) + 1 }
  /// More than one token grid. Stages that differ only in prefix tokens (ConViT's class
  /// token joining on the same grid) keep the isotropic rule.
  public var isHierarchical: Bool { Set(stages.map(\.grid)).count > 1 }

  /// The grid of stage `s`.
  public func stage(_ s: Int) -> StageInfo? { stages.first { $0.stage == s } }

  /// Blocks of stage `s`, in order.
  public func blocks(inStage s: Int) -> [BlockInfo] { blocks.filter { $0.stage == s } }

  public init(
    blocks: [BlockInfo], stages: [StageInfo]? = nil, unmatched: [UnmatchedUnit] = [], stemNodes: Int = 0, downsamplers: Int = 0,
    headNodes: Int = 0
  ) {
    self.blocks = blocks
    self.stages =
      stages ?? Dictionary(blocks.map { ($0.stage, StageInfo(stage: $0.stage, grid: $0.grid, prefix: $0.prefix)) }) { a, _ in a }.values
      .sorted { $0.stage < $1.stage }
    self.unmatched = unmatched
    self.stemNodes = stemNodes
    self.downsamplers = downsamplers
    self.headNodes = headNodes
  }

  public init(_ g: Graph) {
    var byBlock: [Int: [Node]] = [:]
    var unmatched: [UnmatchedUnit] = []
    var stem = 0, down = 0, head = 0
    for n in g.nodes {
      if case .int(let b)? = n.attrs[Annotation.block] { byBlock[b, default: []].append(n) }
      if case .string(let r)? = n.attrs[Annotation.unmatched] { unmatched.append(UnmatchedUnit(node: n.name, reason: r)) }
      switch n.attrs[Annotation.role] {
      case .string("stem")?: stem += 1
      case .string("downsample")?: down += 1
      case .string("head")?: head += 1
      default: break
      }
    }
    var stageInfo: [Int: StageInfo] = [:]
    for n in g.nodes {
      guard case .int(let s)? = n.attrs[Annotation.stage], case .ints(let grid)? = n.attrs[Annotation.grid],
        case .int(let prefix)? = n.attrs[Annotation.prefix], stageInfo[s] == nil
      else { continue }
      stageInfo[s] = StageInfo(stage: s, grid: grid, prefix: prefix)
    }
    stages = stageInfo.values.sorted { $0.stage < $1.stage }
    let params = Dictionary(uniqueKeysWithValues: g.params.filter(\.trainable).map { ($0.value, $0) })
    blocks = byBlock.keys.sorted().compactMap { b in
      let nodes = byBlock[b]!
      // The node holding the block's facts: its residual add, or the PW-Conv node of a block
      // without one.
      guard let res = nodes.first(where: { $0.attrs[Annotation.kind] != nil }),
        case .int(let stage)? = res.attrs[Annotation.stage], case .string(let kind)? = res.attrs[Annotation.kind],
        case .string(let layout)? = res.attrs[Annotation.layout], case .ints(let axes)? = res.attrs[Annotation.tokenAxes],
        case .ints(let grid)? = res.attrs[Annotation.grid], case .int(let prefix)? = res.attrs[Annotation.prefix]
      else { return nil }
      var roles = Set<String>()
      var used = Set<ValueID>()
      var splitStages = Set<Int>()
      for n in nodes {
        if case .string(let r)? = n.attrs[Annotation.role], r != "residual" {
          roles.insert(r)
          if case .int(let s)? = n.attrs[Annotation.stage], n.attrs[Annotation.segment] != nil {
            splitStages.insert(s)
          } else if r.hasPrefix("mlp.") || r.hasPrefix("pwconv") || r.hasPrefix("mhsa.") {
            splitStages.insert(stage)
          }
        }
        used.formUnion(n.inputs.filter { params[$0] != nil })
      }
      let count = used.reduce(0) { $0 + g.type(of: $1).elementCount }
      return BlockInfo(
        index: b, stage: stage, kind: kind, layout: layout, tokenAxes: axes, grid: grid, prefix: prefix,
        roles: roles.sorted(), parameters: count, nodes: nodes.count, splitStages: splitStages.sorted())
    }
    self.unmatched = unmatched
    stemNodes = stem
    downsamplers = down
    headNodes = head
  }

  /// The paper's rule scaled to any depth: for an isotropic model the last ⌈2/3·depth⌉ blocks;
  /// for a hierarchical one every stage before the second-to-last plus the first ⌈2/3⌉ of it.
  /// Blocks on a stage whose grid is not a whole multiple of the deepest selected stage's (PiT's
  /// 27×27 before 14×14) are left out, since the one mask cannot be replicated to them.
  public var defaultSelection: [Int] {
    let rule = paperRule
    let chosen = blocks.filter { rule.contains($0.index) }
    guard let deepest = chosen.flatMap(\.splitStages).max(), let base = stage(deepest)?.grid, base.count == 2 else { return rule }
    return chosen.filter { b in
      b.splitStages.allSatisfy { s in
        guard let g = stage(s)?.grid, g.count == 2, g[0] % base[0] == 0, g[1] % base[1] == 0 else { return false }
        return g[0] / base[0] == g[1] / base[1]
      }
    }.map(\.index)
  }

  /// Why the default leaves out blocks the paper's rule picks, for a note; nil when it does not.
  public var defaultNote: String? {
    let kept = Set(defaultSelection)
    let left = blocks.filter { paperRule.contains($0.index) && !kept.contains($0.index) }
    guard !left.isEmpty, let deepest = blocks.filter({ kept.contains($0.index) }).flatMap(\.splitStages).max(),
      let base = stage(deepest)?.grid
    else { return nil }
    let stages = Set(left.map(\.stage)).sorted()
    let grids = stages.compactMap { stage($0)?.grid.map(String.init).joined(separator: "x") }
    return "the default SBP blocks leave out stage\(stages.count == 1 ? "" : "s") \(stages.map(String.init).joined(separator: ", ")) "
      + "(\(left.count) block\(left.count == 1 ? "" : "s")): \(stages.count == 1 ? "its" : "their") \(grids.joined(separator: ", ")) grid is not a whole multiple of "
      + "the \(base.map(String.init).joined(separator: "x")) base grid of stage \(deepest), so the one mask cannot be replicated to \(stages.count == 1 ? "it" : "them")"
  }

  var paperRule: [Int] {
    guard !blocks.isEmpty else { return [] }
    func twoThirds(_ n: Int) -> Int { (2 * n + 2) / 3 }
    if !isHierarchical { return Array(blocks.suffix(twoThirds(blocks.count)).map(\.index)) }
    let s = stageCount
    var out = blocks.filter { $0.stage < s - 2 }.map(\.index)
    out += blocks(inStage: s - 2).prefix(twoThirds(blocks(inStage: s - 2).count)).map(\.index)
    return out
  }

  /// The default written in the selector grammar, for messages and `--help`.
  public var defaultSpec: String {
    guard !blocks.isEmpty else { return "none" }
    let selected = defaultSelection
    if selected != paperRule {
      // Leftovers of the rule: list the blocks, as ranges.
      guard !selected.isEmpty else { return "none" }
      var parts: [String] = [], start = selected[0], prev = selected[0]
      for i in selected.dropFirst() + [Int.min] {
        if i == prev + 1 {
          prev = i
          continue
        }
        parts.append(start == prev ? "\(start)" : "\(start)-\(prev)")
        (start, prev) = (i, i)
      }
      return parts.joined(separator: ",")
    }
    if !isHierarchical { return "last:\(defaultSelection.count)" }
    let s = stageCount
    var parts = (0..<max(s - 2, 0)).map { "stage:\($0)" }
    let n = (2 * blocks(inStage: s - 2).count + 2) / 3
    if n > 0 { parts.append(n == blocks(inStage: s - 2).count ? "stage:\(s - 2)" : "stage:\(s - 2)[0-\(n - 1)]") }
    return parts.isEmpty ? "none" : parts.joined(separator: ",")
  }
}

/// Error in a `--blocks` spec; the message shows the valid range and the model's block count.
public struct BlockSpecError: Error, CustomStringConvertible {
  public let description: String
}

/// The `--blocks` grammar, shared by every command:
///
///     spec  := item (',' item)*
///     item  := 'all' | 'none' | 'last:' N | 'first:' N | N | A '-' B
///            | 'stage:' S | 'stage:' S '[' range (',' range)* ']'
///     range := N | A '-' B          (indices within the stage)
///
/// Block indices are global and 0-based; stage-qualified indices count within the stage.
/// `last:N` and `first:N` with N past the model's depth select every block, as `tail -n`
/// does, so the design card's `--blocks last:8` works on a shallower model too; `notes` says so.
public enum BlockSelector {
  public static func parse(_ spec: String, table: BlockTable) throws -> [Int] {
    var notes: [String] = []
    return try parse(spec, table: table, notes: &notes)
  }

  public static func parse(_ spec: String, table: BlockTable, notes: inout [String]) throws -> [Int] {
    let total = table.blocks.count
    let range = total == 0 ? "the model has no SBP blocks" : "valid blocks are 0-\(total - 1) (\(total) blocks)"
    func fail(_ m: String) -> BlockSpecError { BlockSpecError(description: "--blocks '\(spec)': \(m); \(range)") }
    func number(_ s: Substring, _ what: String) throws -> Int {
      guard let n = Int(s), n >= 0, !s.hasPrefix("+") else { throw fail("'\(s)' is not a \(what)") }
      return n
    }
    func indexRange(_ item: Substring, limit: Int, what: String) throws -> [Int] {
      let parts = item.split(separator: "-", omittingEmptySubsequences: false)
      switch parts.count {
      case 1:
        let n = try number(parts[0], what)
        guard n < limit else { throw fail("\(what) \(n) is out of range") }
        return [n]
      case 2:
        let a = try number(parts[0], what), b = try number(parts[1], what)
        guard a <= b else { throw fail("range \(a)-\(b) is empty") }
        guard b < limit else { throw fail("\(what) \(b) is out of range") }
        return Array(a...b)
      default: throw fail("'\(item)' is not N or A-B")
      }
    }

    let trimmed = spec.filter { $0 != " " }
    guard !trimmed.isEmpty else { throw fail("empty spec") }
    var items: [Substring] = []
    var depth = 0, start = trimmed.startIndex
    for i in trimmed.indices {
      switch trimmed[i] {
      case "[": depth += 1
      case "]":
        depth -= 1
        guard depth >= 0 else { throw fail("unbalanced ']'") }
      case "," where depth == 0:
        items.append(trimmed[start..<i])
        start = trimmed.index(after: i)
      default: break
      }
    }
    guard depth == 0 else { throw fail("unbalanced '['") }
    items.append(trimmed[start...])

    var chosen = Set<Int>()
    for item in items {
      guard !item.isEmpty else { throw fail("empty item") }
      if item == "all" {
        chosen.formUnion(table.blocks.map(\.index))
      } else if item == "none" {
        continue
      } else if item.hasPrefix("last:") || item.hasPrefix("first:") {
        let n = try number(item.drop { $0 != ":" }.dropFirst(), "count")
        if n > total { notes.append("--blocks \(item): the model has \(total) blocks; all \(total) selected") }
        let idx = table.blocks.map(\.index)
        chosen.formUnion(item.hasPrefix("last:") ? Array(idx.suffix(n)) : Array(idx.prefix(n)))
      } else if item.hasPrefix("stage:") {
        let rest = item.dropFirst("stage:".count)
        let stageText = rest.prefix { $0 != "[" }
        let s = try number(stageText, "stage")
        let stages = table.stageCount
        guard s < stages else {
          throw fail(
            "stage \(s) does not exist (stages are 0-\(max(stages - 1, 0)), sizes \(( 0..<stages).map { table.blocks(inStage: $0).count }))"
          )
        }
        let members = table.blocks(inStage: s).map(\.index)
        let bracket = rest.dropFirst(stageText.count)
        if bracket.isEmpty {
          chosen.formUnion(members)
        } else {
          guard bracket.hasPrefix("["), bracket.hasSuffix("]"), bracket.count > 2 else { throw fail("'\(item)' should be stage:S[A-B]") }
          for r in bracket.dropFirst().dropLast().split(separator: ",", omittingEmptySubsequences: false) {
            guard !r.isEmpty else { throw fail("empty range in '\(item)'") }
            do {
              for k in try indexRange(r, limit: members.count, what: "block") { chosen.insert(members[k]) }
            } catch {
              throw fail("in '\(item)': stage \(s) has \(members.count) blocks (0-\(members.count - 1))")
            }
          }
        }
      } else if item.first?.isNumber == true {
        chosen.formUnion(try indexRange(item, limit: total, what: "block"))
      } else {
        throw fail("'\(item)' is not all, none, last:N, first:N, N, A-B, stage:S or stage:S[A-B]")
      }
    }
    return chosen.sorted()
  }
}
