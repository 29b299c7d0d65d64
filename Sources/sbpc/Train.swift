// Train.swift: `sbpc compile`, `sbpc train` and `sbpc eval`, thin front ends over SBPPlan and SBPRuntime.
import ArgumentParser
import Foundation
import SBPIR
import SBPPasses
import SBPPlan
import SBPRuntime

struct Compile: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Compile an ONNX model into a training step (a plan file).",
    discussion: """
      The plan holds the training step (forward, mean softmax cross-entropy against integer
      labels, backward, one optimizer update per parameter) and the plain forward for
      evaluation. Weights stay in the ONNX file; the plan refers to it.

      Stochastic backpropagation (SBP) is on by default at keep 0.5 on the paper's blocks:
      each step, one mask over the token grid picks the kept tokens; the selected blocks'
      MLP/PW-Conv branches and attention cores pass gradient only through them. --keep 1 or
      --blocks none compile plain backpropagation. `sbpc inspect` lists the blocks.
      """)

  @Argument(help: "The ONNX model.") var model: String
  @Option(name: .shortAndLong, help: "Where to write the plan.") var output: String
  @OptionGroup var sbp: SBPFlags
  @Option(
    name: .customLong("max-memory"),
    help: ArgumentHelp(
      "Fail when the plan needs more than SIZE (e.g. 2G), and say which keep ratio or blocks would fit.", valueName: "SIZE"))
  var maxMemory: String?
  @Option(
    name: .customLong("memory-plan"),
    help: ArgumentHelp(
      "Also write the memory-plan dump: FILE.svg (timeline), FILE.json, or anything else for the table.", valueName: "FILE"))
  var memoryPlan: String?
  @Flag(
    inversion: .prefixedNo,
    help: "Run each optimizer update as soon as its gradient is complete, so the gradient dies there (default on).")
  var fuseOptimizer = true
  @Option(help: "Optimizer: sgd or adamw.") var optimizer: String = "sgd"
  @Option(help: "Learning rate.") var lr: Double = 0.01
  @Option(help: "SGD momentum.") var momentum: Double = 0.9
  @Option(name: .customLong("weight-decay"), help: "Weight decay (decoupled for adamw).") var weightDecay: Double = 0
  @OptionGroup var shape: ShapeOptions

  func validate() throws {
    if let maxMemory, MemoryOptions.parse(maxMemory) == nil {
      throw ValidationError("--max-memory expects a size such as 512M, 8G or a byte count, got '\(maxMemory)'")
    }
    guard ["sgd", "adamw"].contains(optimizer) else { throw ValidationError("--optimizer must be sgd or adamw, got '\(optimizer)'") }
    guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive, got \(lr)") }
    guard momentum >= 0, momentum < 1 else { throw ValidationError("--momentum must be in [0, 1), got \(momentum)") }
    guard weightDecay >= 0, weightDecay.isFinite else { throw ValidationError("--weight-decay must be >= 0, got \(weightDecay)") }
  }

  func run() throws {
    try reportingErrors {
      let opt: OptimizerConfig =
        optimizer == "sgd"
        ? .sgd(lr: lr, momentum: momentum, weightDecay: weightDecay)
        : .adamw(lr: lr, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: weightDecay)
      let (plan, notes) = try Plan.compile(
        model: model,
        options: Plan.Options(
          batch: shape.batch, dims: shape.importOptions.dims, optimizer: opt, sbp: sbp.options, fuseOptimizer: fuseOptimizer))
      printNotes(notes)
      if let limit = maxMemory.flatMap(MemoryOptions.parse) {
        let need = MemoryPlan(plan.train).totalBytes
        if need > limit { throw PlanError(try fitting(need: need, limit: limit, options: plan.sbp, opt: opt)) }
      }
      guard FileManager.default.createFile(atPath: output, contents: Data(plan.serialized().utf8)) else {
        throw PlanError("\(output): cannot write")
      }
      if let memoryPlan {
        let m = try Memory.parse([output])
        let out = try m.render(plan)
        try m.write(memoryPlan.hasSuffix(".svg") ? out.svg : memoryPlan.hasSuffix(".json") ? out.json : out.table, to: memoryPlan)
      }
      let t = BlockTable(plan.eval)
      print(
        "compiled \(model) -> \(output): batch \(plan.batch), \(plan.train.nodes.count) training ops, \(t.blocks.count) blocks, optimizer \(optimizer)"
      )
      if let l = plan.layout {
        print(l.summary)
        print("SBP blocks: \(l.blocks.map(String.init).joined(separator: ","))")
      } else {
        print("SBP: off (\(sbp.options.keep >= 1 ? "--keep 1" : "no block selected")); plain backpropagation")
      }
    }
  }
}

extension Compile {
  /// The message for a plan over --max-memory: the first smaller keep ratio (then the same
  /// with every block) that fits, found by compiling each (compiling is cheap).
  func fitting(need: Int, limit: Int, options: SBPOptions, opt: OptimizerConfig) throws -> String {
    let head = "\(model): the plan needs \(byteText(need)), more than --max-memory \(byteText(limit))"
    var tried: [(SBPOptions, Int)] = []
    for keep in [0.5, 0.4, 0.3, 0.25, 0.2] where keep < options.keep {
      for blocks in [options.blocks, "all"] {
        var o = options
        o.keep = keep
        o.blocks = blocks
        let p = try Plan.compile(
          model: model,
          options: Plan.Options(batch: shape.batch, dims: shape.importOptions.dims, optimizer: opt, sbp: o, fuseOptimizer: fuseOptimizer)
        ).0
        let bytes = MemoryPlan(p.train).totalBytes
        let flags = "--keep \(keep)" + (blocks == options.blocks ? "" : " --blocks all")
        if bytes <= limit { return "\(head); \(flags) fits (\(byteText(bytes)))" }
        tried.append((o, bytes))
      }
    }
    guard let best = tried.min(by: { $0.1 < $1.1 }) else { return "\(head); lower --batch" }
    return "\(head); even --keep \(best.0.keep) --blocks \(best.0.blocks ?? "default") needs \(byteText(best.1)); lower --batch"
  }
}

/// The SBP flags of `compile`, `memory` and `bench`. Each is optional so a command can tell a
/// flag given from its default.
struct SBPFlags: ParsableArguments {
  @Option(help: "SBP keep ratio, 0 < R <= 1; 1 turns SBP off (default 0.5).") var keep: Double?
  @Option(help: "SBP blocks, e.g. last:8, 4-11, stage:0,stage:2[0-5], all or none (default: the paper's rule for the model).")
  var blocks: String?
  @Option(help: "Mask sampling: grid (a strided grid, its phase drawn each step; default) or random (patches drawn without replacement).")
  var mask: String?
  @Option(help: "Attention split: qkv (kept queries see only kept keys; the paper's, default), query (they see all keys) or none.")
  var attention: String?

  var given: Bool { keep != nil || blocks != nil || mask != nil || attention != nil }

  func validate() throws {
    if let keep { guard keep > 0, keep <= 1 else { throw ValidationError("--keep must be in (0, 1], got \(keep)") } }
    if let mask, MaskMode(rawValue: mask) == nil { throw ValidationError("--mask must be grid or random, got '\(mask)'") }
    if let attention, AttentionSplit(rawValue: attention) == nil {
      throw ValidationError("--attention must be qkv, query or none, got '\(attention)'")
    }
    if let blocks, blocks.trimmingCharacters(in: .whitespaces).isEmpty {
      throw ValidationError("--blocks is empty; use none to select no block")
    }
  }

  var options: SBPOptions {
    SBPOptions(
      keep: keep ?? 0.5, mask: mask.flatMap(MaskMode.init) ?? .grid, attention: attention.flatMap(AttentionSplit.init) ?? .qkv,
      blocks: blocks?.replacingOccurrences(of: " ", with: ""))
  }
}

/// Feeds a training or evaluation executor with batches.
struct Feeder {
  let input: Buffer
  let labels: Buffer
  let classes: Int

  /// The training graph's image and labels inputs.
  init(plan p: Plan, executor ex: Executor, path: String) throws {
    guard let img = p.train.inputs.first(where: { $0.name != "labels" && $0.name != "step" && !$0.name.hasPrefix("sbp.") }),
      let lab = ex.input("labels")
    else {
      throw PlanError("\(path): the training graph has no image or labels input")
    }
    self.init(input: ex.buffer(img.value), labels: lab, classes: p.train.type(of: p.train.outputs[0].value).shape[1])
  }

  init(input: Buffer, labels: Buffer, classes: Int) {
    self.input = input
    self.labels = labels
    self.classes = classes
  }

  /// Seeded synthetic data: N(0,1) images and uniform labels.
  func synthetic(seed: UInt64, step: Int) {
    var rng = SplitMix64(seed: seed &+ UInt64(step) &* 0x9E37_79B9_7F4A_7C15)
    for i in 0..<input.count { input.f32[i] = rng.normal() }
    for i in 0..<labels.count { labels.i64[i] = Int64(rng.next() % UInt64(classes)) }
  }

  /// Copies batch `b` of X and Y in.
  func load(_ x: NPYArray, _ y: NPYArray, batch b: Int) {
    let n = input.count, m = labels.count
    x.data.withUnsafeBytes { input.raw.copyMemory(from: $0.baseAddress! + b * n * 4, byteCount: n * 4) }
    let ys = y.int64s
    for i in 0..<m { labels.i64[i] = ys[b * m + i] }
  }

  /// Checks X and Y against the plan before anything runs.
  static func check(_ x: NPYArray, _ y: NPYArray, input: Buffer, labels: Buffer, classes: Int, xName: String, yName: String) throws {
    let want = Array(input.type.shape.dropFirst())
    guard x.dtype == .f32, x.shape.count == want.count + 1, Array(x.shape.dropFirst()) == want else {
      throw RuntimeError("\(xName): expected f32[N,\(want.map(String.init).joined(separator: ","))], got \(TensorType(x.dtype, x.shape))")
    }
    guard y.dtype == .i64, y.shape == [x.shape[0]] else {
      throw RuntimeError("\(yName): expected i64[\(x.shape[0])], got \(TensorType(y.dtype, y.shape))")
    }
    guard x.shape[0] % input.type.shape[0] == 0, x.shape[0] > 0 else {
      throw RuntimeError("\(xName): \(x.shape[0]) samples is not a multiple of the plan's batch \(input.type.shape[0])")
    }
    if let bad = y.int64s.enumerated().first(where: { $0.element < 0 || $0.element >= Int64(classes) }) {
      throw RuntimeError("\(yName): label \(bad.element) at index \(bad.offset) is out of range for \(classes) classes")
    }
  }
}

struct Train: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Run training steps of a plan on the CPU runtime.")

  @Argument(help: "The plan file from `sbpc compile`.") var plan: String
  @Option(help: "Number of steps.") var steps: Int = 10
  @Option(help: "Images, f32 [N,C,H,W] .npy; N a multiple of the batch. Without it, seeded synthetic data.") var input: String?
  @Option(help: "Labels, i64 [N] .npy.") var labels: String?
  @Option(help: "Seed for the SBP masks and for synthetic data.") var seed: UInt64 = 0
  @Option(name: .customLong("mask-phase"), help: "Use this grid phase at every step instead of drawing one (SBP plans with grid masks).")
  var maskPhase: Int?
  @Option(name: .customLong("mask-file"), help: "Use this keep mask at every step: .npy [H, W] over the base grid, nonzero = kept.")
  var maskFile: String?
  @Option(
    name: .customLong("dump-mask"),
    help: "Write each step's masks into this folder: step<N>.npy (base grid) and step<N>.stage<S>.npy (what each stage read).")
  var dumpMask: String?
  @Option(help: "Threads (default: the machine's cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
  @Option(name: .customLong("dump-logits"), help: "Write the last step's logits to this .npy file.") var dumpLogits: String?
  @Flag(name: .customLong("dump-loss"), help: "Print each step's loss (before its update) alone on a line, in full precision.")
  var dumpLoss = false
  @Option(
    name: .customLong("dump-grads"), help: "Write the last step's gradients (before its update) into this folder, one .npy per parameter.")
  var dumpGrads: String?
  @Flag(help: "Time every kernel and print where the step's time goes, by op and by block (one clock read per op).")
  var profile = false
  @Flag(
    name: .customLong("check-numerics"), help: "Stop at the first op that produces a NaN or Inf, naming the op, the block and the step.")
  var checkNumerics = false
  @OptionGroup var memory: MemoryOptions

  func validate() throws {
    guard steps >= 1 else { throw ValidationError("--steps must be >= 1, got \(steps)") }
    guard threads >= 1, threads <= 256 else { throw ValidationError("--threads must be between 1 and 256, got \(threads)") }
    guard (input == nil) == (labels == nil) else { throw ValidationError("--input and --labels go together") }
    guard maskPhase == nil || maskFile == nil else { throw ValidationError("--mask-phase and --mask-file exclude each other") }
  }

  /// The mask source the flags ask for; nil for a plan without SBP (flags then are errors).
  func maskFeed(_ p: Plan, _ ex: Executor) throws -> MaskFeed? {
    guard let layout = p.layout else {
      if maskPhase != nil || maskFile != nil || dumpMask != nil {
        throw RuntimeError(
          "\(plan) was compiled without SBP (\(p.sbp.keep >= 1 ? "keep 1" : "no blocks")); --mask-phase, --mask-file and --dump-mask need an SBP plan"
        )
      }
      return nil
    }
    let source: MaskFeed.Source
    if let maskPhase {
      source = .phase(maskPhase)
    } else if let maskFile {
      source = .explicit(try KeepMask(npy: try NPYArray.read(maskFile), name: maskFile))
    } else {
      source = .sampled(seed: seed)
    }
    do { return try MaskFeed(layout: layout, source: source, executor: ex) } catch let e as MaskError {
      throw RuntimeError(maskFile.map { "\($0): \(e)" } ?? "\(e)")
    }
  }

  func run() throws {
    try reportingErrors {
      let p = try Plan.load(plan)
      let ex = try Executor(
        graph: p.train, threads: threads, maxMemory: memory.limit, retaining: dumpGrads == nil ? [] : Executor.gradientValues(p.train))
      let feed = try Feeder(plan: p, executor: ex, path: plan)
      let (lab, classes) = (feed.labels, feed.classes)
      var data: (NPYArray, NPYArray)?
      if let input, let labels {
        let x = try NPYArray.read(input), y = try NPYArray.read(labels)
        try Feeder.check(x, y, input: feed.input, labels: lab, classes: classes, xName: input, yName: labels)
        data = (x, y)
      }
      let batches = data.map { $0.0.shape[0] / p.batch } ?? 1
      var masks = try maskFeed(p, ex)
      if let dumpMask { try FileManager.default.createDirectory(atPath: dumpMask, withIntermediateDirectories: true) }
      let start = Date()
      for s in 0..<steps {
        if let m = masks?.step() {
          if let dumpMask { try writeMasks(m, masks!, step: s + 1, to: dumpMask) }
        }
        if let (x, y) = data { feed.load(x, y, batch: s % batches) } else { feed.synthetic(seed: seed, step: s) }
        ex.input("step")?.f32[0] = Float(s + 1)
        do { try ex.run(checkNumerics: checkNumerics, profile: profile) } catch let e as NumericError {
          throw RuntimeError("step \(s + 1): \(e)")
        }
        let loss = ex.output("loss")!.f32[0]
        guard loss.isFinite else { throw RuntimeError("step \(s + 1): the loss is \(loss); training diverged (lower --lr?)") }
        if dumpLoss { print(loss) } else { print("step \(s + 1)/\(steps)  loss \(String(format: "%.5f", loss))") }
      }
      if !dumpLoss {
        let dt = Date().timeIntervalSince(start)
        print(
          String(
            format: "%d steps in %.2f s (%.1f ms/step, %.1f images/s); %.3f GFLOP per step, counted by the runtime", steps, dt,
            1000 * dt / Double(steps), Double(steps * p.batch) / dt, Double(ex.lastRunFlops) / 1e9))
      }
      if profile { print(profileTable(ex, steps: steps)) }
      if let dumpLogits { try write(ex.buffer(p.train.outputs[0].value), to: dumpLogits) }
      if let dumpGrads {
        try FileManager.default.createDirectory(atPath: dumpGrads, withIntermediateDirectories: true)
        let names = Dictionary(uniqueKeysWithValues: p.train.params.map { ($0.value, $0.name) })
        for n in p.train.nodes {
          switch n.op {
          case .sgd, .adamw:
            let file = names[n.inputs[0]]!.replacingOccurrences(of: "/", with: "_") + ".npy"
            try write(ex.buffer(n.inputs[1]), to: dumpGrads + "/" + file)
          default: break
          }
        }
      }
    }
  }

  /// Time by op and by block, largest first, with each op's share and achieved GFLOP/s.
  func profileTable(_ ex: Executor, steps: Int) -> String {
    var byOp: [String: (ns: UInt64, flops: Int, count: Int)] = [:]
    var byPart: [String: UInt64] = [:]
    for (i, n) in ex.graph.nodes.enumerated() {
      let ns = ex.profileNanos[i]
      let f = ex.graph.flops(n)
      let e = byOp[n.op.name] ?? (0, 0, 0)
      byOp[n.op.name] = (e.ns + ns, e.flops + f.gemm + f.other, e.count + 1)
      let part: String
      if case .int(let b)? = n.attrs["sbp.block"] { part = "block \(b)" } else { part = "outside blocks" }
      byPart[part, default: 0] += ns
    }
    let total = max(byOp.values.reduce(0) { $0 + $1.ns }, 1)
    var out = String(format: "profile over %d steps: %.1f ms per step in kernels\n", steps, Double(total) / 1e6 / Double(steps))
    out += "op                          ms/step   share   GFLOP/s  nodes\n"
    for (op, e) in byOp.sorted(by: { $0.value.ns > $1.value.ns }) where e.ns > 0 {
      let ms = Double(e.ns) / 1e6 / Double(steps)
      let gflops = e.flops > 0 ? String(format: "%9.1f", Double(e.flops) / (Double(e.ns) / Double(steps))) : "        -"
      out +=
        op.padding(toLength: 26, withPad: " ", startingAt: 0) + String(format: "%9.2f  %5.1f%%  ", ms, 100 * Double(e.ns) / Double(total))
        + gflops + String(format: "  %5d\n", e.count)
    }
    out +=
      "by block: "
      + byPart.sorted { $0.value > $1.value }.map { String(format: "%@ %.1f%%", $0.key, 100 * Double($0.value) / Double(total)) }
      .joined(separator: ", ")
    return out
  }

  func writeMasks(_ m: KeepMask, _ feed: MaskFeed, step: Int, to dir: String) throws {
    let stem = dir + "/step" + String(format: "%06d", step)
    try NPYArray(dtype: .u8, shape: [m.height, m.width], data: m.keep.map { $0 ? 1 : 0 }).write(stem + ".npy")
    for (st, data) in feed.stageMasks() { try NPYArray(dtype: .u8, shape: st.grid, data: data).write(stem + ".stage\(st.stage).npy") }
  }

  func write(_ b: Buffer, to path: String) throws {
    try NPYArray(f32: Array(b.floats), shape: b.type.shape).write(path)
  }
}

struct Eval: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Evaluate a plan's forward on a data set: mean loss and top-1 accuracy.")

  @Argument(help: "The plan file.") var plan: String
  @Option(help: "Images, f32 [N,C,H,W] .npy; N a multiple of the batch.") var input: String
  @Option(help: "Labels, i64 [N] .npy.") var labels: String
  @Option(help: "Threads (default: the machine's cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
  @OptionGroup var memory: MemoryOptions

  func run() throws {
    try reportingErrors {
      let p = try Plan.load(plan)
      var g = p.eval
      // Evaluation appends only the loss to the plain forward.
      let logits = g.outputs[0].value
      let lab = g.addInput("labels", TensorType(.i64, [p.batch]))
      let loss = try g.append(.softmaxCrossEntropy, [logits, lab], name: "loss")[0]
      g.outputs.append(GraphInput(value: loss, name: "loss"))
      let ex = try Executor(graph: g, threads: threads, maxMemory: memory.limit)
      let classes = g.type(of: logits).shape[1]
      let feed = Feeder(input: ex.buffer(g.inputs[0].value), labels: ex.buffer(lab), classes: classes)
      let x = try NPYArray.read(input), y = try NPYArray.read(labels)
      try Feeder.check(x, y, input: feed.input, labels: feed.labels, classes: classes, xName: input, yName: labels)
      var total: Double = 0, correct = 0
      let batches = x.shape[0] / p.batch
      for b in 0..<batches {
        feed.load(x, y, batch: b)
        try ex.run()
        total += Double(ex.buffer(loss).f32[0])
        let l = ex.buffer(logits)
        for r in 0..<p.batch {
          let row = UnsafeBufferPointer(start: l.f32 + r * classes, count: classes)
          if row.indices.max(by: { row[$0] < row[$1] }) == Int(feed.labels.i64[r]) { correct += 1 }
        }
      }
      print(
        String(
          format: "loss %.5f  top-1 %.2f%% (%d/%d)", total / Double(batches), 100 * Double(correct) / Double(x.shape[0]), correct,
          x.shape[0]))
    }
  }
}

/// `--max-memory`: a plan needing more is refused before anything is allocated.
struct MemoryOptions: ParsableArguments {
  @Option(
    name: .customLong("max-memory"),
    help: ArgumentHelp("Refuse plans needing more memory than this, e.g. 512M or 8G (default: the machine's memory).", valueName: "SIZE"))
  var maxMemory: String?

  func validate() throws {
    if let maxMemory, MemoryOptions.parse(maxMemory) == nil {
      throw ValidationError("--max-memory expects a size such as 512M, 8G or a byte count, got '\(maxMemory)'")
    }
  }

  /// The limit in bytes: the flag, or the machine's physical memory.
  var limit: Int { maxMemory.flatMap(MemoryOptions.parse) ?? Int(clamping: ProcessInfo.processInfo.physicalMemory) }

  /// "512M", "8G", "8GB", "1.5G" or a plain byte count.
  static func parse(_ s: String) -> Int? {
    let units: [Character: Double] = ["K": 1024, "M": 1024 * 1024, "G": 1024 * 1024 * 1024, "T": 1024 * 1024 * 1024 * 1024]
    var text = s.uppercased()
    if text.count > 1, text.hasSuffix("B"), units[text[text.index(text.endIndex, offsetBy: -2)]] != nil { text.removeLast() }
    var unit = 1.0
    if let u = text.last.flatMap({ units[$0] }) {
      unit = u
      text.removeLast()
    }
    guard let n = Double(text), n > 0, n.isFinite, n * unit < 9e18 else { return nil }
    return Int(n * unit)
  }
}
