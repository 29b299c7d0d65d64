// Plan.swift: a compiled model (training step and evaluation forward) and its file format, which carries everything the runtime reads.
import Foundation
import SBPIR
import SBPONNX
import SBPPasses

/// What `sbpc compile` produces: the training step and the plain forward for evaluation,
/// both scheduled and memory-planned, the masks the step reads, and where the weights come
/// from. The weights are not copied into the plan; loading re-reads them from the ONNX model
/// (mapped, not copied). The file is self-describing: the runtime reads the buffer layout
/// (`mem.*` annotations), the SBP index inputs and their stages and the mask spec from it,
/// and never runs a pass.
///
///     sbpc-plan 5
///     model "PATH"
///     batch N
///     sbp keep R mask grid|random attention qkv|query|none blocks SPEC
///     checksum HEX16                      (FNV-1a of everything below)
///     == sbp                              (only when SBP drops something)
///     blocks 2,3,4,5
///     mask grid 8x8
///     stage 0 grid 8x8 prefix 1 factor 1 kept 33 dropped 32
///     == train
///     graph @… { … }                      (text IR)
///     == eval
///     graph @… { … }
public struct Plan: Sendable {
  public static let formatVersion = 5

  public var model: String
  public var batch: Int
  /// SBP settings the training step was compiled with (`.off` for plain backpropagation).
  public var sbp: SBPOptions
  public var train: Graph
  public var eval: Graph
  /// The masks the training step reads each step; nil when SBP drops nothing.
  public var layout: SBPLayout?
  /// The masks as the runtime draws them (the plan file's `== sbp` section).
  public var mask: MaskLayout? { layout?.mask }
  /// The classifier `--num-classes` gave the model (the plan file's `== head` section):
  /// loading the plan replaces it again, from the same seed, to find the weights.
  public var head: HeadSpec?
  /// The precision its products compute in (`compile --precision`), read from the step.
  public var precision: Precision {
    train.nodes.contains { $0.attrs[Annotation.precision] == .string(Precision.bf16.rawValue) } ? .bf16 : .fp32
  }
  /// Why a plan without masks has none: "keep 1" or "no blocks".
  public var whyNoSBP: String { sbp.keep >= 1 ? "keep 1" : "no blocks" }

  public struct Options: Sendable {
    public var batch: Int?
    public var dims: [String: Int]
    public var optimizer: OptimizerConfig
    public var sbp: SBPOptions
    /// Run each optimizer update as soon as its gradient is complete (the gradient dies there).
    public var fuseOptimizer: Bool
    /// Initializer patterns that do not train (`ImportOptions.freeze`).
    public var freeze: [String]
    /// Keep tied initializers shared (`ImportOptions.keepTied`).
    public var keepTied: Bool
    /// A fresh classifier (`ImportOptions.numClasses` and `headSeed`).
    public var head: HeadSpec?
    /// Per-parameter learning rate and weight decay (`--no-decay-1d`, `--layer-decay`).
    public var groups: ParameterGroups
    /// Label smoothing of the loss, and whether it reads soft targets f32[B, classes].
    public var smoothing: Double
    public var softTargets: Bool
    /// Schedule the step for data-parallel training: gradients in allreduce buckets of this
    /// many bytes (`bucket-allreduce`); nil for one process.
    public var bucketBytes: Int?
    /// The products' operand precision (`mixed-precision`).
    public var precision: Precision
    public init(
      batch: Int? = nil, dims: [String: Int] = [:], optimizer: OptimizerConfig = .defaultSGD, sbp: SBPOptions = .off,
      fuseOptimizer: Bool = true, freeze: [String] = [], keepTied: Bool = false, head: HeadSpec? = nil,
      groups: ParameterGroups = ParameterGroups(), smoothing: Double = 0, softTargets: Bool = false, bucketBytes: Int? = nil,
      precision: Precision = .fp32
    ) {
      self.bucketBytes = bucketBytes
      self.precision = precision
      self.smoothing = smoothing
      self.softTargets = softTargets
      self.head = head
      self.groups = groups
      self.batch = batch
      self.dims = dims
      self.optimizer = optimizer
      self.sbp = sbp
      self.fuseOptimizer = fuseOptimizer
      self.freeze = freeze
      self.keepTied = keepTied
    }
  }

  /// Imports, canonicalizes and marks the model, then derives the training step.
  public static func compile(model: String, options: Options) throws -> (Plan, notes: [String]) {
    let imported = try importONNX(
      path: model,
      options: ImportOptions(
        batch: options.batch, dims: options.dims, freeze: options.freeze.filter { !FreezeSpec.isStructural($0) },
        keepTied: options.keepTied, numClasses: options.head?.classes,
        headSeed: options.head?.seed ?? 0))
    var eval = imported.graph
    let passOptions = PipelineOptions(
      sbp: options.sbp, optimizer: options.optimizer, fuseOptimizer: options.fuseOptimizer, groups: options.groups,
      smoothing: options.smoothing, softTargets: options.softTargets, bucketBytes: options.bucketBytes,
      precision: options.precision)
    try PassPipeline(passes: try PassRegistry.pipeline(PassRegistry.modelPipeline, passOptions), verifyEach: true).run(&eval)
    var notes = imported.notes
    // Structural --freeze specs (stem, head, norm, blocks) read mark's annotations.
    let structural = options.freeze.filter(FreezeSpec.isStructural)
    if !structural.isEmpty {
      var frozen: Set<String> = []
      for spec in structural { frozen.formUnion(try FreezeSpec.parameters(eval, spec: spec, notes: &notes)) }
      for i in eval.params.indices where frozen.contains(eval.params[i].name) { eval.params[i].trainable = false }
      let still = eval.params.filter(\.trainable)
      notes.append(
        "--freeze \(structural.joined(separator: " ")): \(frozen.count) parameters frozen; \(still.count) (\(eval.elementCount(still)) values) train")
    }
    if let spec = options.sbp.blocks, options.sbp.keep < 1 {
      _ = try BlockSelector.parse(spec, table: BlockTable(eval), notes: &notes)
    } else if options.sbp.keep < 1, let note = BlockTable(eval).defaultNote {
      notes.append(note)
    }
    var train = eval
    try PassPipeline(passes: try PassRegistry.pipeline(PassRegistry.trainingPipeline, passOptions), verifyEach: true).run(&train)
    // The evaluation forward is scheduled and laid out too, so the runtime reads its memory
    // from the plan as it does the step's.
    try PassPipeline(passes: try PassRegistry.pipeline(PassRegistry.evaluationPipeline, passOptions), verifyEach: true).run(&eval)
    let path = URL(fileURLWithPath: model).standardizedFileURL.path
    let layout = try SBPLayout.make(eval, options: options.sbp)
    var plan = Plan(model: path, batch: imported.batch, sbp: options.sbp, train: train, eval: eval, layout: layout)
    plan.head = options.head
    return (plan, notes)
  }

  /// The plan file: a header, the masks, then the two graphs in the text IR.
  public func serialized() -> String {
    var body = ""
    if let h = head { body += "== head\nclasses \(h.classes) seed \(h.seed)\n" }
    if let l = layout {
      let s = l.spec
      body += "== sbp\nblocks \(l.blocks.map(String.init).joined(separator: ","))\nmask \(s.mode.rawValue) \(s.height)x\(s.width)\n"
      for st in l.stages {
        body +=
          "stage \(st.stage) grid \(st.grid.map(String.init).joined(separator: "x")) prefix \(st.prefix) factor \(st.factor) "
          + "kept \(st.keptRows) dropped \(st.droppedRows)\n"
      }
      for w in l.windows {
        body +=
          "window \(w.id) stage \(w.stage) windows \(w.windows) size \(w.size) kept \(w.keptRows) dropped \(w.droppedRows) "
          + "table \(w.table.map(String.init).joined(separator: ","))\n"
      }
    }
    body += "== train\n\(train.printed())== eval\n\(eval.printed())"
    return "sbpc-plan \(Plan.formatVersion)\nmodel \(quoted(model))\nbatch \(batch)\nsbp \(sbp.text)\nchecksum \(Plan.checksum(body))\n"
      + body
  }

  /// FNV-1a over the plan's graphs, as 16 hex digits: an edited or truncated plan is refused
  /// before anything is parsed or run.
  static func checksum<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
    let hex = String(h, radix: 16)
    return String(repeating: "0", count: 16 - hex.count) + hex
  }

  static func checksum(_ text: String) -> String { checksum(text.utf8) }

  /// `bytes` with its fifth line replaced by the checksum of everything after it (for the
  /// fuzzer, so mutated plans reach the parser); unchanged when it has fewer lines.
  public static func resealed(_ bytes: Data) -> Data {
    let b = [UInt8](bytes)
    var ends: [Int] = []
    for (i, c) in b.enumerated() where c == 10 {
      ends.append(i)
      if ends.count == 5 { break }
    }
    guard ends.count == 5 else { return bytes }
    let line = Array("checksum \(checksum(b[(ends[4] + 1)...]))".utf8)
    return Data(b[...ends[3]] + line + b[ends[4]...])
  }

  func quoted(_ s: String) -> String {
    "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
  }

  /// Reads a plan file and attaches the weights from its model. Every problem is one line
  /// naming the plan file and what is wrong.
  public static func load(_ path: String) throws -> Plan {
    func bad(_ m: String) -> PlanError { PlanError("\(path): \(m)") }
    let data: [UInt8]
    do { data = try readFileBytes(path) } catch { throw bad("cannot read the plan file") }
    guard let text = String(validating: data, as: UTF8.self) else { throw bad("not a plan file (not UTF-8 text)") }
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    guard lines.count > 6, lines[0].hasPrefix("sbpc-plan ") else { throw bad("not an sbpc plan file (no 'sbpc-plan' header)") }
    guard Int(lines[0].dropFirst("sbpc-plan ".count)) == formatVersion else {
      throw bad("plan format '\(lines[0].dropFirst("sbpc-plan ".count))' is not version \(formatVersion); recompile the model")
    }
    guard lines[1].hasPrefix("model \""), lines[1].hasSuffix("\""), lines[1].count >= 8 else {
      throw bad("line 2: expected model \"PATH\"")
    }
    let model = String(lines[1].dropFirst("model \"".count).dropLast()).replacingOccurrences(of: "\\\"", with: "\"").replacingOccurrences(
      of: "\\\\", with: "\\")
    guard lines[2].hasPrefix("batch "), let batch = Int(lines[2].dropFirst("batch ".count)), batch > 0 else {
      throw bad("line 3: expected batch N")
    }
    guard lines[3].hasPrefix("sbp "), let sbp = SBPOptions(text: String(lines[3].dropFirst(4))) else {
      throw bad("line 4: expected sbp keep R mask grid|random attention qkv|query|none blocks SPEC")
    }
    guard lines[4].hasPrefix("checksum "), lines[4].count == "checksum ".count + 16 else {
      throw bad("line 5: expected checksum followed by 16 hex digits")
    }
    let bodyStart = lines[...4].reduce(0) { $0 + $1.utf8.count + 1 }
    guard Plan.checksum(data[bodyStart...]) == lines[4].dropFirst("checksum ".count) else {
      throw bad("checksum mismatch: the plan was edited, truncated or damaged; recompile it")
    }
    var trainStart = 5
    var head: HeadSpec?
    if lines[5] == "== head" {
      guard lines.count > 8 else { throw bad("the '== head' section ends the file") }
      let f = lines[6].split(separator: " ")
      guard f.count == 4, f[0] == "classes", f[2] == "seed", let n = Int(f[1]), n >= 2, let seed = UInt64(f[3]) else {
        throw bad("line 7: expected classes N seed S")
      }
      head = HeadSpec(classes: n, seed: seed)
      trainStart = 7
    }
    var layout: SBPLayout?
    if lines[trainStart] == "== sbp" {
      guard let t = lines.firstIndex(of: "== train") else { throw bad("missing '== train' section") }
      layout = try readMaskSection(lines[(trainStart + 1)..<t], options: sbp, firstLine: trainStart + 2, bad: bad)
      trainStart = t
    }
    guard lines[trainStart] == "== train", let evalStart = lines.firstIndex(of: "== eval") else {
      throw bad("missing '== train' or '== eval' section")
    }
    func graph(_ range: Range<Int>, _ what: String) throws -> Graph {
      do {
        let g = try parseGraph(lines[range].joined(separator: "\n"))
        try g.verify()
        return g
      } catch let e as IRError {
        if case .parse(let line, let m) = e { throw bad("\(what) graph, line \(line + range.lowerBound): \(m)") }
        throw bad("\(what) graph: \(e)")
      }
    }
    var train = try graph((trainStart + 1)..<evalStart, "train")
    var eval = try graph((evalStart + 1)..<lines.count, "eval")
    // Weights come from the model the plan was compiled from, matched by initializer name.
    let weights: Graph
    do {
      weights = try importONNX(path: model, options: ImportOptions(batch: batch, numClasses: head?.classes, headSeed: head?.seed ?? 0)).graph
    } catch {
      throw bad("loading weights: \(error)")
    }
    let byName = Dictionary(uniqueKeysWithValues: weights.params.map { ($0.name, $0) })
    for g in [0, 1] {
      var graph = g == 0 ? train : eval
      for i in graph.params.indices {
        let p = graph.params[i]
        guard let w = byName[p.name] else {
          if p.name.hasPrefix("opt.") { continue }  // optimizer state starts at zero
          throw bad("parameter @\(p.name) is not in \(model); recompile the plan")
        }
        guard weights.type(of: w.value) == graph.type(of: p.value) else {
          throw bad(
            "parameter @\(p.name) is \(weights.type(of: w.value)) in \(model) but \(graph.type(of: p.value)) in the plan; recompile")
        }
        graph.params[i].data = w.data
      }
      if g == 0 { train = graph } else { eval = graph }
    }
    if layout == nil, let i = train.inputs.first(where: { $0.name.hasPrefix("sbp.") }) {
      throw bad("the train graph reads \(i.name) but the plan has no '== sbp' section; recompile")
    }
    for (g, what) in [(train, "train"), (eval, "eval")] {
      do { _ = try g.bufferLayout() } catch { throw bad("\(what) graph: \(error)") }
    }
    if let l = layout {
      let listed = Set(l.stages.flatMap { [$0.keptInput, $0.droppedInput] } + l.windows.flatMap { [$0.keptInput, $0.droppedInput] })
      if let i = train.inputs.first(where: { $0.name.hasPrefix("sbp.") && !listed.contains($0.name) }) {
        throw bad("the train graph reads \(i.name), which its sbp section does not list; recompile")
      }
    }
    let windowInputs = (layout?.windows ?? []).flatMap { [($0.keptInput, $0.windows * $0.keptRows), ($0.droppedInput, $0.windows * $0.droppedRows)] }
    for (name, rows) in windowInputs {
      guard let i = train.inputs.first(where: { $0.name == name }), train.type(of: i.value) == TensorType(.i64, [rows]) else {
        throw bad("the train graph has no i64[\(rows)] input \(name), which its sbp settings need; recompile")
      }
    }
    for st in layout?.stages ?? [] {
      for (name, rows) in [(st.keptInput, st.keptRows), (st.droppedInput, st.droppedRows)] {
        guard let i = train.inputs.first(where: { $0.name == name }), train.type(of: i.value) == TensorType(.i64, [rows]) else {
          throw bad("the train graph has no i64[\(rows)] input \(name), which its sbp settings need; recompile")
        }
      }
    }
    var plan = Plan(model: model, batch: batch, sbp: sbp, train: train, eval: eval, layout: layout)
    plan.head = head
    return plan
  }
}

extension Plan {
  /// The `== sbp` section: the selected blocks, the base mask and each stage's index inputs,
  /// as `serialized()` writes them. Every value is checked; nothing is recomputed.
  static func readMaskSection(
    _ lines: ArraySlice<Substring>, options: SBPOptions, firstLine: Int, bad: (String) -> PlanError
  ) throws -> SBPLayout {
    func grid(_ s: Substring) -> [Int]? {
      let d = s.split(separator: "x").compactMap { Int($0) }
      return d.count == 2 && d.allSatisfy({ $0 > 0 }) ? d : nil
    }
    var blocks: [Int]?, spec: MaskSpec?, stages: [MaskStage] = [], windows: [MaskWindows] = []
    for (k, line) in lines.enumerated() {
      let f = line.split(separator: " ")
      let at = "line \(firstLine + k)"
      switch f.first {
      case "blocks"?:
        guard f.count == 2 else { throw bad("\(at): expected blocks N,N,…") }
        let b = f[1].split(separator: ",").compactMap { Int($0) }
        guard !b.isEmpty, b.allSatisfy({ $0 >= 0 }) else { throw bad("\(at): expected blocks N,N,…") }
        blocks = b
      case "mask"?:
        guard f.count == 3, let mode = MaskMode(rawValue: String(f[1])), let g = grid(f[2]) else {
          throw bad("\(at): expected mask grid|random HxW")
        }
        do { spec = try MaskSpec(keep: options.keep, mode: mode, height: g[0], width: g[1]) } catch { throw bad("\(at): \(error)") }
      case "stage"?:
        guard f.count == 12, f[2] == "grid", f[4] == "prefix", f[6] == "factor", f[8] == "kept", f[10] == "dropped",
          let s = Int(f[1]), let g = grid(f[3]), let prefix = Int(f[5]), let factor = Int(f[7]), let kept = Int(f[9]),
          let dropped = Int(f[11]), s >= 0, prefix >= 0, factor >= 1, kept >= 1, dropped >= 1
        else { throw bad("\(at): expected stage S grid HxW prefix P factor F kept K dropped D") }
        stages.append(MaskStage(stage: s, grid: g, prefix: prefix, factor: factor, keptRows: kept, droppedRows: dropped))
      case "window"?:
        guard f.count == 14, f[2] == "stage", f[4] == "windows", f[6] == "size", f[8] == "kept", f[10] == "dropped", f[12] == "table",
          let id = Int(f[1]), let s = Int(f[3]), let n = Int(f[5]), let size = Int(f[7]), let kept = Int(f[9]), let dropped = Int(f[11]),
          id == windows.count, s >= 0, n >= 1, size >= 1, n <= 1 << 20, size <= 1 << 16, (1...size).contains(kept), (1...size).contains(dropped)
        else { throw bad("\(at): expected window ID stage S windows N size K kept R dropped R table P,P,…") }
        let table = f[13].split(separator: ",").map { Int($0) }
        guard table.count == n * size, table.allSatisfy({ $0 != nil && $0! >= -1 }) else {
          throw bad("\(at): the window table needs \(n * size) grid positions (or -1)")
        }
        windows.append(MaskWindows(id: id, stage: s, windows: n, size: size, table: table.map { $0! }, keptRows: kept, droppedRows: dropped))
      default:
        throw bad("\(at): unexpected '\(line)' in the sbp section")
      }
    }
    guard let blocks, let spec, !stages.isEmpty else { throw bad("the sbp section needs blocks, mask and stage lines") }
    for st in stages {
      // What the runtime relies on when it writes a step's indices: the stage grid is the base
      // grid block-replicated, and the buffers hold the most rows any mask of the spec needs.
      let base = spec.height * spec.width, range = spec.keptRange
      guard st.grid == [spec.height * st.factor, spec.width * st.factor],
        st.keptRows >= st.prefix + range.upperBound * st.factor * st.factor,
        st.droppedRows >= (base - range.lowerBound) * st.factor * st.factor
      else { throw bad("sbp stage \(st.stage) does not fit the \(spec.height)x\(spec.width) mask; recompile") }
    }
    for w in windows {
      // The runtime writes each window's rows from the table: every position must be on the
      // stage's grid, once, and the rows must hold what any mask of the spec puts there.
      guard let st = stages.first(where: { $0.stage == w.stage }), st.prefix == 0 else {
        throw bad("sbp window \(w.id) is on stage \(w.stage), which has no stage line without prefix tokens; recompile")
      }
      let cells = st.grid[0] * st.grid[1]
      var seen = Set<Int>()
      guard w.table.allSatisfy({ $0 < cells && ($0 < 0 || seen.insert($0).inserted) }) else {
        throw bad("sbp window \(w.id): its table has a position off the \(st.grid[0])x\(st.grid[1]) grid or twice; recompile")
      }
      let need = MaskWindows.rows(table: w.table, windows: w.windows, size: w.size, spec: spec, grid: st.grid, factor: st.factor)
      guard w.keptRows >= need.kept, w.droppedRows >= need.dropped else {
        throw bad("sbp window \(w.id) holds \(w.keptRows) kept and \(w.droppedRows) dropped rows; its masks need \(need.kept) and \(need.dropped); recompile")
      }
    }
    return SBPLayout(options: options, blocks: blocks, spec: spec, stages: stages, windows: windows)
  }
}

/// A plan that cannot be built or read.
/// A replaced classifier: how many classes and the seed of its initial weights.
public struct HeadSpec: Sendable, Equatable {
  public var classes: Int
  public var seed: UInt64
  public init(classes: Int, seed: UInt64) {
    self.classes = classes
    self.seed = seed
  }
}

public struct PlanError: Error, CustomStringConvertible {
  public let description: String
  public init(_ m: String) { description = m }
}

extension Plan {
  /// `compile --max-memory`'s advice for a plan needing `need` bytes, more than `limit`: the
  /// first smaller keep ratio (then the same with every block) that fits, found by compiling
  /// each (compiling is cheap), or the smallest tried when none does.
  public static func fitting(model: String, options: Options, need: Int, limit: Int) throws -> String {
    let head = "\(model): the plan needs \(byteText(need)), more than --max-memory \(byteText(limit))"
    var tried: [(SBPOptions, Int)] = []
    for keep in [0.5, 0.4, 0.3, 0.25, 0.2] where keep < options.sbp.keep {
      for blocks in [options.sbp.blocks, "all"] {
        var o = options
        o.sbp.keep = keep
        o.sbp.blocks = blocks
        let bytes = MemoryPlan(try Plan.compile(model: model, options: o).0.train).totalBytes
        let flags = "--keep \(keep)" + (blocks == options.sbp.blocks ? "" : " --blocks all")
        if bytes <= limit { return "\(head); \(flags) fits (\(byteText(bytes)))" }
        tried.append((o.sbp, bytes))
      }
    }
    guard let best = tried.min(by: { $0.1 < $1.1 }) else { return "\(head); lower --batch" }
    return "\(head); even --keep \(best.0.keep) --blocks \(best.0.blocks ?? "default") needs \(byteText(best.1)); lower --batch"
  }
}
