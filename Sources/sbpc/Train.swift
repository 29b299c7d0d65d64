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

      Without -o the plan is NAME.plan beside NAME.onnx; the last line compares the plan's
      memory, saved activations and step FLOPs with --keep 1 (--quiet leaves it out).
      """)

  @Argument(help: "The ONNX model.") var model: String
  @Option(
    name: .shortAndLong,
    help: "Where to write the plan (default: NAME.plan beside NAME.onnx, or in the current folder when that one is not writable).")
  var output: String?
  @Flag(help: "Do not print the line comparing the plan with --keep 1 (that line costs a second compile).") var quiet = false
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
      let options = Plan.Options(
        batch: shape.batch, dims: shape.importOptions.dims, optimizer: opt, sbp: sbp.options, fuseOptimizer: fuseOptimizer)
      let (plan, notes) = try Plan.compile(model: model, options: options)
      printNotes(notes)
      if let limit = maxMemory.flatMap(MemoryOptions.parse) {
        let need = MemoryPlan(plan.train).totalBytes
        if need > limit { throw PlanError(try fitting(need: need, limit: limit, options: plan.sbp, opt: opt)) }
      }
      let (output, note) = try PlanOutput.resolve(model: model, output: self.output)
      guard FileManager.default.createFile(atPath: output, contents: Data(plan.serialized().utf8)) else {
        throw PlanError("\(output): cannot write")
      }
      if let note { printNotes([note]) }
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
      if plan.layout != nil, !quiet {
        var plainOptions = options
        plainOptions.sbp = .off
        print(Savings(plan, plain: try Plan.compile(model: model, options: plainOptions).0).summary)
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

}

struct Train: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Run training steps of a plan on the CPU runtime.")

  @Argument(help: "The plan file from `sbpc compile`.") var plan: String
  @Option(help: "Number of steps (default 10; with --epochs, the epochs decide).") var steps: Int?
  @Option(
    help: ArgumentHelp(
      "Images, f32 [N,C,H,W] .npy (N >= the batch), or a folder of NAME.x.npy / NAME.y.npy pairs. Without it, seeded synthetic data."))
  var input: String?
  @Option(help: "Labels, i64 [N] .npy.") var labels: String?
  @Option(help: "Passes over the data set (needs --input).") var epochs: Int?
  @Option(
    name: .customLong("last-batch"),
    help: "The samples after the last whole batch of an epoch: drop (default) or pad (with the epoch's first samples).")
  var lastBatch: String = "drop"
  @Flag(inversion: .prefixedNo, help: "Shuffle the data each epoch, by the seed (default: on with --epochs, off with --steps).")
  var shuffle: Bool?
  @Option(
    parsing: .upToNextOption,
    help: ArgumentHelp("Evaluate the plain forward on this set after each epoch: X.npy Y.npy, or a folder of pairs.", valueName: "X Y"))
  var val: [String] = []
  @Option(name: .customLong("lr-schedule"), help: "Learning-rate schedule on the plan's rate: constant (default), cosine or step.")
  var lrSchedule: String = "constant"
  @Option(help: "Warm-up steps: the rate rises linearly to the schedule's over these (default 0).") var warmup: Int = 0
  @Option(name: .customLong("lr-step-every"), help: "For --lr-schedule step: steps between decays (default: a third of the run).")
  var lrStepEvery: Int?
  @Option(name: .customLong("lr-gamma"), help: "For --lr-schedule step: the factor at each decay (default 0.1).") var lrGamma: Double = 0.1
  @Option(
    name: .customLong("clip-grad-norm"),
    help: "Clip the gradients to this global L2 norm before each update (needs a plan compiled with --no-fuse-optimizer).")
  var clipGradNorm: Double?
  @Option(help: "Write one JSON record per step and per evaluation to this file (.jsonl).") var log: String?
  @Option(help: "Save weights and optimizer state into this folder (atomically) every --checkpoint-every steps and at the end.")
  var checkpoint: String?
  @Option(name: .customLong("checkpoint-every"), help: "Steps between checkpoints (default: each epoch's end, or only the end).")
  var checkpointEvery: Int?
  @Option(help: "Continue the run whose checkpoint is in this folder, bit for bit (same plan, data and flags).") var resume: String?
  @Option(name: .customLong("checkpoint-crash-after"), help: .hidden) var checkpointCrashAfter: Int?
  @Option(help: "Seed for the SBP masks, the data order and synthetic data.") var seed: UInt64 = 0
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
  @Flag(
    help:
      "Time every kernel and print where the step's time goes, by op and by block (one clock read per op; a slice group, such as attention run head by head, is one line)."
  )
  var profile = false
  @Flag(
    name: .customLong("check-numerics"),
    help:
      "Stop at the first op that produces a NaN or Inf, naming the op, the block and the step (every op runs on its own, so slice groups run op by op; the results are the same)."
  )
  var checkNumerics = false
  @OptionGroup var memory: MemoryOptions

  func validate() throws {
    if let steps { guard steps >= 1 else { throw ValidationError("--steps must be >= 1, got \(steps)") } }
    guard threads >= 1, threads <= 256 else { throw ValidationError("--threads must be between 1 and 256, got \(threads)") }
    guard labels == nil || input != nil else { throw ValidationError("--labels needs --input") }
    if let epochs {
      guard epochs >= 1, epochs <= 1_000_000 else { throw ValidationError("--epochs must be >= 1, got \(epochs)") }
      guard input != nil else { throw ValidationError("--epochs needs a data set (--input)") }
      guard steps == nil else { throw ValidationError("--steps and --epochs exclude each other") }
    }
    guard LastBatch(rawValue: lastBatch) != nil else { throw ValidationError("--last-batch must be drop or pad, got '\(lastBatch)'") }
    guard val.count <= 2 else { throw ValidationError("--val takes X.npy Y.npy or one folder, got \(val.count) values") }
    guard ["constant", "cosine", "step"].contains(lrSchedule) else {
      throw ValidationError("--lr-schedule must be constant, cosine or step, got '\(lrSchedule)'")
    }
    guard warmup >= 0 else { throw ValidationError("--warmup must be >= 0, got \(warmup)") }
    if let lrStepEvery { guard lrStepEvery >= 1 else { throw ValidationError("--lr-step-every must be >= 1, got \(lrStepEvery)") } }
    guard lrGamma > 0, lrGamma.isFinite else { throw ValidationError("--lr-gamma must be positive, got \(lrGamma)") }
    if let clipGradNorm {
      guard clipGradNorm > 0, clipGradNorm.isFinite else { throw ValidationError("--clip-grad-norm must be positive, got \(clipGradNorm)") }
    }
    if let checkpointEvery {
      guard checkpointEvery >= 1 else { throw ValidationError("--checkpoint-every must be >= 1, got \(checkpointEvery)") }
    }
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
      let imageShape = Array(feed.input.type.shape.dropFirst())
      // Every input is read and checked before the first step.
      let data = try input.map { try DataSet(images: $0, labels: labels, imageShape: imageShape, classes: feed.classes) }
      if let data, data.count < p.batch {
        throw RuntimeError("\(input!): \(data.count) samples, fewer than the plan's batch of \(p.batch)")
      }
      let valSet = try val.first.map {
        try DataSet(images: $0, labels: val.count > 1 ? val[1] : nil, imageShape: imageShape, classes: feed.classes)
      }
      let order = data.map {
        BatchOrder(count: $0.count, batch: p.batch, shuffle: shuffle ?? (epochs != nil), last: LastBatch(rawValue: lastBatch)!, seed: seed)
      }
      let perEpoch = order?.batchesPerEpoch ?? 1
      let total = epochs.map { $0 * perEpoch } ?? steps ?? 10
      let schedule: LRSchedule =
        switch lrSchedule {
        case "cosine": .cosine
        case "step": .step(every: lrStepEvery ?? max(1, (total - warmup) / 3), gamma: lrGamma)
        default: .constant
        }
      try ex.setGradientClipping(clipGradNorm.map { Float($0) })
      var masks = try maskFeed(p, ex)
      let evaluator = try valSet.map { _ in try Evaluator(eval: p.eval, threads: threads, maxMemory: memory.limit) }
      var first = 0
      if let resume {
        let state = try Checkpoint.load(ex, from: resume)
        guard state.seed == seed else {
          throw RuntimeError("\(resume): the run was started with --seed \(state.seed); resume it with the same seed")
        }
        guard state.step <= total else {
          throw RuntimeError("\(resume): the checkpoint is at step \(state.step), past this run's \(total) steps")
        }
        first = state.step
        // The masks come from one generator: replay the draws of the steps already done.
        for _ in 0..<first { _ = masks?.step() }
      }
      let logFile = try log.map { try JSONLog(path: $0, append: resume != nil) }
      let baseLR =
        ex.graph.nodes.lazy.compactMap { n -> Double? in
          switch n.op {
          case .sgd(let lr, _, _), .adamw(let lr, _, _, _, _): return lr
          default: return nil
          }
        }.first ?? 0
      let every = checkpointEvery ?? (epochs != nil ? perEpoch : Int.max)
      if let dumpMask { try FileManager.default.createDirectory(atPath: dumpMask, withIntermediateDirectories: true) }
      let progress = Progress(total: total, first: first, batch: p.batch)
      var epochOrder: [Int] = [], orderEpoch = -1
      var epochLoss: Double = 0, epochSteps = 0
      let start = Date()
      for s in first..<total {
        let epoch = s / perEpoch, b = s % perEpoch
        let factor = schedule.factor(step: s, total: total, warmup: warmup)
        ex.learningRateScale = Float(factor)
        if let m = masks?.step() {
          if let dumpMask { try writeMasks(m, masks!, step: s + 1, to: dumpMask) }
        }
        if let data, let order {
          if epoch != orderEpoch {
            epochOrder = order.permutation(epoch: epoch)
            orderEpoch = epoch
          }
          data.load(order.batch(b, of: epochOrder), images: feed.input, labels: feed.labels)
        } else {
          feed.synthetic(seed: seed, step: s)
        }
        ex.input("step")?.f32[0] = Float(s + 1)
        do { try ex.run(checkNumerics: checkNumerics, profile: profile) } catch let e as NumericError {
          throw RuntimeError("step \(s + 1): \(e)")
        }
        let loss = ex.output("loss")!.f32[0]
        guard loss.isFinite else { throw RuntimeError("step \(s + 1): the loss is \(loss); training diverged (lower --lr?)") }
        epochLoss += Double(loss)
        epochSteps += 1
        if dumpLoss {
          print(loss)
        } else if epochs == nil {
          print("step \(s + 1)/\(total)  loss \(String(format: "%.5f", loss))")
        }
        progress.update(step: s + 1, epoch: epochs.map { _ in (epoch + 1, epochs!) }, loss: loss)
        if let logFile {
          var record: [String: JSONValue] = ["kind": .string("step"), "step": .int(s + 1), "epoch": .int(epoch + 1)]
          record["loss"] = .double(Double(loss))
          record["lr"] = .double(baseLR * factor)
          record["images_per_s"] = .double(progress.rate)
          if clipGradNorm != nil { record["grad_norm"] = .double(Double(ex.lastGradientNorm)) }
          try logFile.write(record)
        }
        if let dir = checkpoint, (s + 1) % every == 0, s + 1 < total {
          try Checkpoint.save(ex, step: s + 1, seed: seed, to: dir, crashAfter: checkpointCrashAfter)
        }
        if epochs != nil, b == perEpoch - 1 {
          var line = String(format: "epoch %d/%d  loss %.5f", epoch + 1, epochs!, epochLoss / Double(max(epochSteps, 1)))
          if let evaluator, let valSet {
            let (vl, top1) = try evaluator.evaluate(valSet, weights: ex)
            line += String(format: "  val loss %.5f  top-1 %.2f%%", vl, 100 * top1)
            try logFile?.write([
              "kind": .string("eval"), "epoch": .int(epoch + 1), "step": .int(s + 1), "loss": .double(vl), "top1": .double(top1),
            ])
          }
          progress.clear()
          print(line)
          fflush(nil)  // each epoch's line shows as it ends, also in a file or a pipe
          epochLoss = 0
          epochSteps = 0
        }
      }
      progress.clear()
      if let dir = checkpoint { try Checkpoint.save(ex, step: total, seed: seed, to: dir, crashAfter: checkpointCrashAfter) }
      if !dumpLoss {
        let dt = Date().timeIntervalSince(start), done = total - first
        print(
          String(
            format: "%d steps in %.2f s (%.1f ms/step, %.1f images/s); %.3f GFLOP per step, counted by the runtime", done, dt,
            1000 * dt / Double(max(done, 1)), Double(done * p.batch) / dt, Double(ex.lastRunFlops) / 1e9))
      }
      if profile { print(profileTable(ex, steps: total - first)) }
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
      let name = ex.profileLabel(at: i)
      let e = byOp[name] ?? (0, 0, 0)
      byOp[name] = (e.ns + ns, e.flops + f.gemm + f.other, e.count + 1)
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
  @Option(help: "Images, f32 [N,C,H,W] .npy (any N; a partial last batch is padded), or a folder of NAME.x.npy / NAME.y.npy pairs.")
  var input: String
  @Option(help: "Labels, i64 [N] .npy.") var labels: String?
  @Option(help: "Threads (default: the machine's cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
  @Option(name: .customLong("dump-logits"), help: "Write every sample's logits to this .npy file, f32 [N, classes].") var dumpLogits:
    String?
  @OptionGroup var memory: MemoryOptions

  func run() throws {
    try reportingErrors {
      let p = try Plan.load(plan)
      let g = p.eval
      let evaluator = try Evaluator(eval: g, threads: threads, maxMemory: memory.limit)
      evaluator.keepLogits = dumpLogits != nil
      let shape = Array(g.type(of: g.inputs[0].value).shape.dropFirst())
      let data = try DataSet(images: input, labels: labels, imageShape: shape, classes: g.type(of: g.outputs[0].value).shape[1])
      let (loss, top1) = try evaluator.evaluate(data)
      let correct = Int((top1 * Double(data.count)).rounded())
      print(String(format: "loss %.5f  top-1 %.2f%% (%d/%d)", loss, 100 * top1, correct, data.count))
      if let dumpLogits {
        try NPYArray(f32: evaluator.lastLogits, shape: [data.count, evaluator.lastLogits.count / data.count]).write(dumpLogits)
      }
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
