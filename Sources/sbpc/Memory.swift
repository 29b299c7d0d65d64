// Memory.swift: `sbpc memory`, the bytes a training step saves for backward and its FLOPs, per block, and what SBP changes.
import ArgumentParser
import Foundation
import SBPIR
import SBPPasses
import SBPPlan

struct Memory: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Report what a training step saves for backward and the FLOPs it runs, per block.",
    discussion: prose("""
      The input is a plan file, or an ONNX model plus compile flags. "Saved" bytes are the
      forward values, other than parameters and inputs, that a backward op reads: they are
      live where the forward ends. FLOPs count 2·M·N·K per matrix multiply plus the runtime's
      own kernels, exactly as `sbpc train` counts them. --compare adds plain backpropagation
      (--keep 1) and the ratio. For attention blocks it also prints the paper's Eq. 13 for
      Drop QKV, corrected (DESIGN.md), beside the measured attention-core ratio.
      """))

  @Argument(help: "A plan file or an ONNX model.") var input: String
  @OptionGroup var sbp: SBPFlags
  @Flag(help: "Also cost plain backpropagation (--keep 1) and show the ratio.") var compare = false
  @Flag(help: "Print JSON instead of a table.") var json = false
  @Flag(help: "Also list every saved value: its part, producing node, op, type and size.") var values = false
  @Option(
    help: ArgumentHelp(
      "Precision: fp32, bf16 or fp16.",
      discussion:
        "bf16 reports the plan `compile --precision bf16` makes, exactly; fp16 estimates another device's run, every fp32 activation at two bytes (parameters and optimizer state stay fp32). A plan file's own precision is the default."
    ))
  var dtype: String?

  @Option(help: "Also write a timeline of live bytes over the op sequence, stacked by category, as SVG.") var svg: String?

  /// Bytes per fp32 activation: 2 for the fp16 estimate; bf16 plans are costed as they are.
  var activationBytes: Int { dtype == "fp16" ? 2 : 4 }
  /// The precision to compile an ONNX model in.
  var precision: Precision { dtype == "bf16" ? .bf16 : .fp32 }

  func validate() throws {
    if let dtype, !["fp32", "bf16", "fp16"].contains(dtype) { throw ValidationError("--dtype must be fp32, bf16 or fp16, got '\(dtype)'") }
  }
  @OptionGroup var shape: ShapeOptions
  struct Report: Encodable {
    var model: String
    var batch: Int
    var sbp: String
    /// The plan's precision (`compile --precision`): its bytes are exact.
    var precision: String
    /// "fp16" when the bytes are `--dtype fp16`'s estimate rather than a plan's.
    var estimate: String?
    var blocks: [Int]
    var cost: StepCost
    var plain: StepCost?
    var savedRatio: Double?
    var flopRatio: Double?
    var attention: [AttentionRow]
    var memory: MemoryRow
    var plainMemory: MemoryRow?
    /// A data-parallel plan's allreduce buckets (`compile --distributed`), in order.
    var buckets: [BucketRow]
  }

  /// One allreduce bucket: what it carries, the op after which its reduction starts and the
  /// op before which the step waits for it (positions in the training step, from 0).
  struct BucketRow: Encodable {
    var bucket: Int
    var gradients: Int
    var bytes: Int
    var startsAfter: Int
    var startsAfterNode: String
    var waitedBefore: Int
    var waitedBeforeNode: String
    /// Ops the step runs while the reduction is in flight.
    var overlapOps: Int
  }

  /// The memory plan's totals: the arena against its lower bound, and the persistent parts.
  struct MemoryRow: Encodable {
    var arenaBytes: Int
    var lowerBound: Int
    var parameterBytes: Int
    var optimizerStateBytes: Int
    var gradientBytes: Int
    var inputBytes: Int
    var workspaceBytes: Int
    var totalBytes: Int
    /// At the busiest step: activations kept for the backward, and everything else in the arena.
    var peakSavedBytes = 0
    var peakTransientBytes = 0

    init(_ m: MemoryPlan) {
      arenaBytes = m.arenaBytes
      lowerBound = m.lowerBound
      parameterBytes = m.parameterBytes
      optimizerStateBytes = m.optimizerStateBytes
      gradientBytes = m.gradientBytes
      inputBytes = m.inputBytes
      workspaceBytes = m.workspaceBytes
      totalBytes = m.totalBytes
    }
  }

  struct AttentionRow: Encodable {
    var block: Int
    var tokens: Int
    var headDim: Int
    var keptFraction: Double
    var eq13Corrected: Double
    var measured: Double?
  }

  func run() throws {
    try reportingErrors {
      let plan: Plan
      if input.hasSuffix(".onnx") {
        plan = try Plan.compile(
          model: input, options: Plan.Options(batch: shape.batch, dims: shape.importOptions.dims, sbp: sbp.options, precision: precision)
        ).0
      } else {
        guard !sbp.given, shape.batch == nil else {
          throw PlanError("\(input): a plan already fixes its SBP flags and batch; pass the ONNX model to try others")
        }
        plan = try Plan.load(input)
        if let dtype, dtype != "fp16", dtype != plan.precision.rawValue {
          throw PlanError("\(input): the plan computes in \(plan.precision.rawValue), not \(dtype); compile it with --precision \(dtype), or pass the ONNX model")
        }
      }
      let out = try render(plan)
      if let svg { try write(out.svg, to: svg) }
      print(json ? out.json : out.table, terminator: "")
    }
  }

  /// The report on `plan`: the table, the same as JSON, and the SVG timeline.
  func render(_ plan: Plan) throws -> (table: String, json: String, svg: String) {
    let cost = StepCost(train: plan.train, bytesPerElement: activationBytes)
    var plain: StepCost?
    var plainMemory: MemoryRow?
    if compare {
      let p = try Plan.compile(
        model: plan.model, options: Plan.Options(batch: plan.batch, dims: shape.importOptions.dims, sbp: .off, precision: plan.precision)
      ).0
      plain = StepCost(train: p.train, bytesPerElement: activationBytes)
      plainMemory = MemoryRow(MemoryPlan(p.train, activationBytes: activationBytes))
    }
    let m = MemoryPlan(plan.train, activationBytes: activationBytes)
    let timeline = MemoryTimeline(plan.train, plan: m)
    var row = MemoryRow(m)
    row.peakSavedBytes = timeline.bytes[timeline.peakStep][3]
    row.peakTransientBytes = timeline.bytes[timeline.peakStep][4]
    let report = Report(
      model: plan.model, batch: plan.batch, sbp: plan.layout == nil ? "off" : plan.sbp.text,
      precision: plan.precision.rawValue, estimate: dtype == "fp16" ? "fp16" : nil, blocks: plan.layout?.blocks ?? [],
      cost: cost,
      plain: plain, savedRatio: plain.map { Double(cost.savedBytes) / Double(max($0.savedBytes, 1)) },
      flopRatio: plain.map { Double(cost.stepFlops) / Double(max($0.stepFlops, 1)) }, attention: attentionRows(plan, cost, plain),
      memory: row, plainMemory: plainMemory,
      buckets: plan.train.gradientBuckets.map { b in
        BucketRow(
          bucket: b.index, gradients: b.gradients.count, bytes: b.bytes, startsAfter: b.start, startsAfterNode: plan.train.nodes[b.start].name,
          waitedBefore: b.wait, waitedBeforeNode: plan.train.nodes[b.wait].name, overlapOps: max(0, b.wait - b.start - 1))
      })
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    let name = URL(fileURLWithPath: plan.model).lastPathComponent
    let title = "\(name), batch \(plan.batch), SBP \(plan.layout == nil ? "off" : "keep \(plan.sbp.keep)"): live bytes per op"
    let peak = values ? peakReport(plan, m, timeline) : nil
    return (table(report, peak: peak), String(decoding: try enc.encode(report), as: UTF8.self) + "\n", timeline.svg(title: title))
  }

  func write(_ text: String, to path: String) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) else { throw PlanError("\(path): cannot write") }
  }

  /// Corrected Eq. 13 per SBP attention block, beside the measured attention-core ratio.
  func attentionRows(_ plan: Plan, _ cost: StepCost, _ plain: StepCost?) -> [AttentionRow] {
    guard let layout = plan.layout, layout.options.attention == .qkv else { return [] }
    var out: [AttentionRow] = []
    for n in plan.eval.nodes where n.attrs[Annotation.role] == .string("mhsa.scores") {
      guard case .int(let b)? = n.attrs[Annotation.block], layout.blocks.contains(b), case .int(let s)? = n.attrs[Annotation.stage],
        let st = layout.stage(s)
      else { continue }
      let tokens = plan.eval.type(of: n.outputs[0]).shape.last ?? 0
      let d = plan.eval.type(of: n.inputs[0]).shape.last ?? 0
      let patches = Double(layout.spec.height * layout.spec.width * st.factor * st.factor)
      // A windowed core's n is a window's tokens, of which each window keeps its share.
      let windowed = Double(tokens) < Double(st.prefix) + patches && layout.windows.contains { $0.stage == s }
      let r = windowed ? layout.spec.effectiveKeep : (Double(st.prefix) + layout.spec.effectiveKeep * patches) / Double(tokens)
      let dn = Double(d) / Double(tokens)
      let eq13 = r * (3 * dn + 2 * r) / (3 * dn + 2)
      let name = "block \(b)"
      let measured = plain.flatMap { p -> Double? in
        guard let a = cost.parts.first(where: { $0.name == name }), let q = p.parts.first(where: { $0.name == name }),
          q.attentionSavedBytes > 0
        else { return nil }
        return Double(a.attentionSavedBytes) / Double(q.attentionSavedBytes)
      }
      out.append(AttentionRow(block: b, tokens: tokens, headDim: d, keptFraction: r, eq13Corrected: eq13, measured: measured))
    }
    return out
  }

  /// What is live at the arena's busiest step, for `--values`.
  func peakReport(_ plan: Plan, _ m: MemoryPlan, _ timeline: MemoryTimeline) -> String {
    let best = (step: timeline.peakStep, bytes: timeline.bytes[timeline.peakStep][3] + timeline.bytes[timeline.peakStep][4])
    let live = m.slots.filter { $0.start <= best.step && best.step <= $0.end }.sorted { $0.bytes > $1.bytes }
    let names = Dictionary(plan.train.nodes.flatMap { n in n.outputs.map { ($0, n) } }, uniquingKeysWith: { a, _ in a })
    var out = "busiest step \(best.step) of \(plan.train.nodes.count) ('\(plan.train.nodes[best.step].name)'): "
    out += String(format: "%.2f MiB live in %d buffers; the largest:", Double(best.bytes) / 1_048_576, live.count)
    for s in live.prefix(12) {
      let n = names[s.value]
      out +=
        String(format: "\n  %9.2f MiB  [%d, %d]  ", Double(s.bytes) / 1_048_576, s.start, s.end) + "\(n?.op.name ?? "?") \(n?.name ?? "")"
    }
    return out
  }

  func table(_ r: Report, peak: String?) -> String {
    var lines: [String] = []
    func print(_ s: String) { lines.append(s) }
    func mb(_ b: Int) -> String { String(format: "%.2f", Double(b) / 1_048_576) }
    func gf(_ f: Int) -> String { String(format: "%.3f", Double(f) / 1e9) }
    func ratio(_ a: Int, _ b: Int) -> String { b == 0 ? "-" : String(format: "%.3f", Double(a) / Double(b)) }
    let precision =
      r.estimate.map { "; activations estimated in \($0) (parameters and optimizer state fp32)" }
      ?? (r.precision == "bf16" ? "; bf16 plan (products and the activations autocast holds in bf16)" : "")
    print("\(r.model): batch \(r.batch); SBP \(r.sbp == "off" ? "off" : r.sbp)" + precision)
    if !r.blocks.isEmpty { print("SBP blocks: \(r.blocks.map(String.init).joined(separator: ","))") }
    var header =
      "part".padding(toLength: 16, withPad: " ", startingAt: 0) + "saved MiB".leftPad(11) + "fwd GFLOP".leftPad(11)
      + "bwd GFLOP".leftPad(11)
    if r.plain != nil { header += "keep-1 MiB".leftPad(12) + "ratio".leftPad(8) + "keep-1 GFLOP".leftPad(14) + "ratio".leftPad(8) }
    print(header)
    for p in r.cost.parts {
      var line =
        p.name.padding(toLength: 16, withPad: " ", startingAt: 0) + mb(p.savedBytes).leftPad(11) + gf(p.forwardFlops).leftPad(11)
        + gf(p.backwardFlops).leftPad(11)
      if let plain = r.plain, let q = plain.parts.first(where: { $0.name == p.name }) {
        line += mb(q.savedBytes).leftPad(12) + ratio(p.savedBytes, q.savedBytes).leftPad(8)
        line +=
          gf(q.forwardFlops + q.backwardFlops).leftPad(14)
          + ratio(p.forwardFlops + p.backwardFlops, q.forwardFlops + q.backwardFlops).leftPad(8)
      }
      print(line)
    }
    var total =
      "total".padding(toLength: 16, withPad: " ", startingAt: 0) + mb(r.cost.savedBytes).leftPad(11)
      + gf(r.cost.forwardFlops).leftPad(11) + gf(r.cost.backwardFlops).leftPad(11)
    if let plain = r.plain {
      total += mb(plain.savedBytes).leftPad(12) + ratio(r.cost.savedBytes, plain.savedBytes).leftPad(8)
      total +=
        gf(plain.forwardFlops + plain.backwardFlops).leftPad(14)
        + ratio(r.cost.forwardFlops + r.cost.backwardFlops, plain.forwardFlops + plain.backwardFlops).leftPad(8)
    }
    print(total)
    var steps = "step FLOPs (with the optimizer): \(gf(r.cost.stepFlops)) GFLOP"
    if let plain = r.plain { steps += ", keep 1: \(gf(plain.stepFlops)) GFLOP, ratio \(ratio(r.cost.stepFlops, plain.stepFlops))" }
    print(steps)
    func memoryLine(_ m: MemoryRow) -> String {
      String(
        format: "arena %@ MiB (lower bound %@ MiB, %.3f×); parameters %@, optimizer state %@, %@inputs %@, conv workspace %@; total %@ MiB",
        mb(m.arenaBytes), mb(m.lowerBound), Double(m.arenaBytes) / Double(max(m.lowerBound, 1)), mb(m.parameterBytes),
        mb(m.optimizerStateBytes), m.gradientBytes > 0 ? "gradients \(mb(m.gradientBytes)), " : "", mb(m.inputBytes), mb(m.workspaceBytes),
        mb(m.totalBytes))
    }
    print("memory plan: " + memoryLine(r.memory))
    print(
      "at the peak: saved for backward \(mb(r.memory.peakSavedBytes)) MiB, transient \(mb(r.memory.peakTransientBytes)) MiB; "
        + (!r.buckets.isEmpty
          ? "gradients are held until their allreduce bucket is reduced and their update runs (--distributed)"
          : r.memory.gradientBytes > 0
            ? "gradients are held to the updates at the end (--no-fuse-optimizer)" : "gradients live in the arena until their update"))
    if !r.buckets.isEmpty {
      let total = r.buckets.reduce(0) { $0 + $1.bytes }
      print(
        "allreduce buckets: \(r.buckets.count), \(mb(total)) MiB of gradients (and as much again for the packed copies MPI reduces, beside the plan); each starts after the op that makes its last gradient and is waited for before its first update:"
      )
      for b in r.buckets {
        print(
          "  bucket \(b.bucket): \(b.gradients) gradients, \(mb(b.bytes)) MiB; starts after op \(b.startsAfter) '\(b.startsAfterNode)', waited for before op \(b.waitedBefore) '\(b.waitedBeforeNode)' (\(b.overlapOps) ops overlap it)"
        )
      }
    }
    if let p = r.plainMemory {
      print("keep 1:      " + memoryLine(p) + String(format: "; ratio %.3f", Double(r.memory.totalBytes) / Double(max(p.totalBytes, 1))))
    }
    if let peak {
      print(peak)
    }
    if values {
      print("saved values, largest first:")
      for v in r.cost.values {
        print("  \(v.part.padding(toLength: 15, withPad: " ", startingAt: 0)) \(mb(v.bytes).leftPad(9)) MiB  \(v.op) \(v.type)  \(v.node)")
      }
    }
    for a in r.attention {
      var line = String(
        format: "block %d attention core: Eq. 13 (corrected, r = %.3f, n = %d, d = %d) %.3f", a.block, a.keptFraction, a.tokens, a.headDim,
        a.eq13Corrected)
      if let m = a.measured { line += String(format: "; measured %.3f", m) }
      print(line)
    }
    return lines.joined(separator: "\n") + "\n"
  }

}
