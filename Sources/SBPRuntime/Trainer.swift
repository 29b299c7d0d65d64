// Trainer.swift: the training loop as a library type: data order, schedules, masks, checkpoints and resume, logging, evaluation.
import Foundation
import SBPIR
import SBPPlan

/// What a training run does, as plain values: `sbpc train` fills this from its flags, and a
/// program that trains through the library fills it itself.
public struct TrainerOptions: Sendable {
  /// Steps to run (default 10); with `epochs`, the epochs decide.
  public var steps: Int?
  /// Passes over `input` (which it needs).
  public var epochs: Int?
  /// Images, f32 [N, C, H, W] `.npy`, or a folder of NAME.x.npy / NAME.y.npy pairs; nil runs on
  /// seeded synthetic data.
  public var input: String?
  public var labels: String?
  public var lastBatch: LastBatch = .drop
  /// Shuffle each epoch by the seed (default: on with `epochs`, off with `steps`).
  public var shuffle: Bool?
  /// Evaluated after each epoch: X.npy [Y.npy], or one folder of pairs.
  public var validation: [String] = []
  public var schedule: ScheduleKind = .constant
  public var warmup = 0
  /// For `.step`: steps between decays (default: a third of the run) and the factor.
  public var lrStepEvery: Int?
  public var lrGamma = 0.1
  public var clipGradNorm: Double?
  /// One JSON record per step and per evaluation (.jsonl).
  public var log: String?
  public var checkpoint: String?
  public var checkpointEvery: Int?
  public var resume: String?
  /// Tests only: make a checkpoint write stop after this many files, as a crash would.
  public var checkpointCrashAfter: Int?
  public var seed: UInt64 = 0
  /// A fixed grid phase, or a fixed mask file, instead of drawing a mask each step.
  public var maskPhase: Int?
  public var maskFile: String?
  /// Folder for each step's masks (step<N>.npy and step<N>.stage<S>.npy).
  public var dumpMask: String?
  public var threads = ProcessInfo.processInfo.activeProcessorCount
  public var maxMemory: Int?
  /// Keep each gradient readable after the step (`gradients()`).
  public var retainGradients = false
  public var profile = false
  public var checkNumerics = false
  /// Data-parallel runs: reduce BatchNorm's batch statistics over every rank (`--sync-bn`);
  /// without it each rank normalizes by its own batch, as PyTorch's DDP does.
  public var syncBatchNorm = false
  /// Settings outside these options that every rank must share (the CLI's loader flags),
  /// compared across the ranks at the start with the rest.
  public var shared: [(flag: String, value: String)] = []
  /// Tests only: this rank kills itself (SIGKILL) as it reaches this step, as a crash would.
  public var killRankAt: (rank: Int, step: Int)?

  /// What every rank of a data-parallel run must agree on, flag by flag.
  public var fingerprint: [(flag: String, value: String)] {
    func text<T>(_ v: T?) -> String { v.map { "\($0)" } ?? "-" }
    return [
      ("--steps", text(steps)), ("--epochs", text(epochs)), ("--input", text(input)), ("--labels", text(labels)),
      ("--last-batch", lastBatch.rawValue), ("--shuffle", text(shuffle)), ("--val", validation.joined(separator: " ")),
      ("--lr-schedule", schedule.rawValue), ("--warmup", "\(warmup)"), ("--lr-step-every", text(lrStepEvery)),
      ("--lr-gamma", "\(lrGamma)"), ("--clip-grad-norm", text(clipGradNorm)), ("--checkpoint", text(checkpoint)),
      ("--checkpoint-every", text(checkpointEvery)), ("--resume", text(resume)), ("--seed", "\(seed)"),
      ("--mask-phase", text(maskPhase)), ("--mask-file", text(maskFile)), ("--sync-bn", "\(syncBatchNorm)"),
      ("--check-numerics", "\(checkNumerics)"),
    ] + shared
  }

  /// The learning-rate schedules `--lr-schedule` names.
  public enum ScheduleKind: String, Sendable, CaseIterable {
    case constant, cosine, step
  }

  public init() {}
}

/// A failure every rank of a data-parallel run finds together (their plans or flags differ):
/// rank 0 reports it once and every rank stops, with no rank left waiting.
public struct CollectiveError: Error, CustomStringConvertible {
  public let description: String
  public init(_ d: String) { description = d }
}

/// What the loop reports as it goes; the caller prints it.
public enum TrainerEvent {
  /// A step ran: its loss (before its update), and images per second since the run began.
  case step(step: Int, total: Int, epoch: (Int, Int)?, loss: Float, imagesPerSecond: Double)
  /// An epoch ended: its mean loss and, with a validation set, the evaluation.
  /// `note` is what the data source had to say of the epoch (unreadable images it skipped).
  case epoch(epoch: Int, epochs: Int, loss: Double, validation: (loss: Double, top1: Double)?, note: String?)
}

/// A training run on the CPU runtime: everything `sbpc train` does between parsing its flags
/// and printing. Every input is read and checked in `init`, before the first step.
public final class Trainer {
  public let plan: Plan
  public let options: TrainerOptions
  public let executor: Executor
  /// The step the run starts from (after `resume`) and the step it ends at.
  public let first: Int
  public let total: Int
  let feed: Feeder
  let data: BatchSource?
  let validation: BatchSource?
  let perEpoch: Int
  let schedule: LRSchedule
  var masks: MaskFeed?
  let evaluator: Evaluator?
  let log: JSONLog?
  let baseLR: Double
  /// The ranks training together (one process unless mpirun started several).
  public let comm: Communicator

  /// - Parameters:
  ///   - path: the plan file's name, for messages.
  ///   - data, validation: batch sources for a run whose options name no `.npy` input (an
  ///     image loader); the options' `input` and `validation` win when given.
  ///   - communicator: the ranks of a data-parallel run (`mpirun`); one process by default.
  ///     The ranks' plans and options are compared before anything else.
  public init(
    plan p: Plan, path: String, options o: TrainerOptions, data source: BatchSource? = nil, validation valSource: BatchSource? = nil,
    communicator comm: Communicator = .single
  )
    throws
  {
    plan = p
    options = o
    self.comm = comm
    if comm.size > 1 { try Trainer.checkAgreement(plan: p, path: path, options: o, comm) }
    executor = try Executor(
      graph: p.train, threads: o.threads, maxMemory: o.maxMemory, retaining: o.retainGradients ? Executor.gradientValues(p.train) : [])
    if comm.size > 1 {
      // Every rank holds the same plan (checked above), so every rank fails here together.
      do { try executor.distribute(over: comm, syncBatchNorm: o.syncBatchNorm) } catch let e as RuntimeError {
        throw CollectiveError("\(path): \(e)")
      }
    } else if o.syncBatchNorm {
      throw RuntimeError("--sync-bn reduces BatchNorm statistics across the ranks of an mpirun launch; this is one process")
    }
    let feed = try Feeder(plan: p, executor: executor, path: path)
    self.feed = feed
    let imageShape = Array(feed.input.type.shape.dropFirst()), classes = feed.classes
    let data: BatchSource? =
      try o.input.map {
        let set = try DataSet(images: $0, labels: o.labels, imageShape: imageShape, classes: classes)
        guard set.count >= p.batch * comm.size else {
          let what = comm.size > 1 ? "the global batch of \(p.batch * comm.size) (\(comm.size) ranks × \(p.batch))" : "the plan's batch of \(p.batch)"
          throw RuntimeError("\($0): \(set.count) samples, fewer than \(what)")
        }
        let order = BatchOrder(
          count: set.count, batch: p.batch, shuffle: o.shuffle ?? (o.epochs != nil), last: o.lastBatch, seed: o.seed, rank: comm.rank,
          ranks: comm.size)
        return TensorBatches(set, order: order)
      } ?? source
    self.data = data
    let validation: BatchSource? =
      try o.validation.first.map {
        let set = try DataSet(images: $0, labels: o.validation.count > 1 ? o.validation[1] : nil, imageShape: imageShape, classes: classes)
        return TensorBatches(
          set, order: BatchOrder(count: set.count, batch: p.batch, shuffle: false, last: .pad, seed: 0, rank: comm.rank, ranks: comm.size))
      } ?? valSource
    self.validation = validation
    let perEpoch = data?.batchesPerEpoch ?? 1
    self.perEpoch = perEpoch
    let total = o.epochs.map { $0 * perEpoch } ?? o.steps ?? 10
    self.total = total
    switch o.schedule {
    case .constant: schedule = .constant
    case .cosine: schedule = .cosine
    case .step: schedule = .step(every: o.lrStepEvery ?? max(1, (total - o.warmup) / 3), gamma: o.lrGamma)
    }
    try executor.setGradientClipping(o.clipGradNorm.map { Float($0) })
    var masks = try Trainer.maskFeed(p, executor, o, path: path)
    evaluator = try validation.map { _ in try Evaluator(eval: p.eval, threads: o.threads, maxMemory: o.maxMemory, communicator: comm) }
    var first = 0
    if let resume = o.resume {
      let state = try Checkpoint.load(executor, from: resume)
      guard state.seed == o.seed else {
        throw RuntimeError("\(resume): the run was started with --seed \(state.seed); resume it with the same seed")
      }
      guard state.step <= total else {
        throw RuntimeError("\(resume): the checkpoint is at step \(state.step), past this run's \(total) steps")
      }
      // Data order and masks follow the global step: any number of ranks may resume a run
      // whose global batch they keep.
      let saved = state.globalBatch ?? p.batch, now = p.batch * comm.size
      guard saved == now else {
        throw RuntimeError(
          "\(resume): the run was saved at a global batch of \(saved), this one is \(now) (\(comm.size) rank\(comm.size == 1 ? "" : "s") × \(p.batch)); resume with ranks × batch = \(saved)"
        )
      }
      first = state.step
      // The masks come from one generator: replay the draws of the steps already done.
      for _ in 0..<first { _ = masks?.step() }
    }
    self.masks = masks
    self.first = first
    // Rank 0 alone writes the log, the checkpoints and the masks.
    log = comm.rank == 0 ? try o.log.map { try JSONLog(path: $0, append: o.resume != nil) } : nil
    baseLR =
      p.train.nodes.lazy.compactMap { n -> Double? in
        if case .sgd(let lr, _, _) = n.op { return lr }
        if case .adamw(let lr, _, _, _, _) = n.op { return lr }
        return nil
      }.first ?? 0
    if let dir = o.dumpMask, comm.rank == 0 { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
  }

  /// Compares the ranks' plans and options before any step: one line names the first
  /// difference, with each rank's value.
  static func checkAgreement(plan p: Plan, path: String, options o: TrainerOptions, _ comm: Communicator) throws {
    func fnv(_ s: String) -> UInt64 { Checkpoint.fnv1a(s.utf8) }
    let planText = p.serialized()
    let items = [("the plan", "\(path) (checksum \(String(fnv(planText), radix: 16)))")] + o.fingerprint
    let hashes = [fnv(planText)] + o.fingerprint.map { fnv($0.value) }
    let (lo, hi) = comm.range(hashes)
    guard let k = hashes.indices.first(where: { lo[$0] != hi[$0] }) else { return }
    let values = comm.gather(items[k].1)
    let shown = values.enumerated().map { "rank \($0.offset): \($0.element.isEmpty ? "(none)" : $0.element)" }
    throw CollectiveError("the ranks were started differently: \(items[k].0) differs (\(shown.joined(separator: "; "))); every rank needs the same plan and flags")
  }

  /// After a step on several ranks: BatchNorm's running statistics as rank 0 has them (each
  /// rank's batch gave its own), so that every rank evaluates and saves the same model, as
  /// DDP's buffer broadcast does. With --sync-bn they agree already.
  func shareState() throws {
    guard !options.syncBatchNorm else { return }
    for p in plan.train.stateParameters {
      let b = executor.buffer(p.value)
      comm.broadcast(b.raw, bytes: b.byteCount)
    }
  }

  /// `--check-numerics` on several ranks: every weight and optimizer state must be the same
  /// bits on every rank after the step; the first that is not is named.
  func checkReplicas(step: Int) throws {
    let parts = Checkpoint.tensors(executor)
    let digests = parts.map { Checkpoint.fnv1a($0.buffer) }
    let (lo, hi) = comm.range(digests)
    if let k = digests.indices.first(where: { lo[$0] != hi[$0] }) {
      throw RuntimeError("step \(step): @\(parts[k].name) differs across the ranks after the update (replicas must stay bit-identical)")
    }
  }

  /// The mask source the options ask for; nil for a plan without SBP (mask options then are errors).
  static func maskFeed(_ p: Plan, _ ex: Executor, _ o: TrainerOptions, path: String) throws -> MaskFeed? {
    guard let layout = p.mask else {
      if o.maskPhase != nil || o.maskFile != nil || o.dumpMask != nil {
        throw RuntimeError(
          "\(path) was compiled without SBP (\(p.whyNoSBP)); --mask-phase, --mask-file and --dump-mask need an SBP plan"
        )
      }
      return nil
    }
    let source: MaskFeed.Source
    if let phase = o.maskPhase {
      source = .phase(phase)
    } else if let file = o.maskFile {
      source = .explicit(try KeepMask(npy: try NPYArray.read(file), name: file))
    } else {
      source = .sampled(seed: o.seed)
    }
    do { return try MaskFeed(layout: layout, source: source, executor: ex) } catch let e as MaskError {
      throw RuntimeError(o.maskFile.map { "\($0): \(e)" } ?? "\(e)")
    }
  }

  /// Runs the steps from `first` to `total`, reporting each step and epoch to `observe`, and
  /// saves the last checkpoint. Returns the wall time of the steps.
  @discardableResult
  public func run(_ observe: (TrainerEvent) throws -> Void) throws -> TimeInterval {
    let o = options, ex = executor
    let every = o.checkpointEvery ?? (o.epochs != nil ? perEpoch : Int.max)
    try data?.seek(epoch: first / perEpoch, batch: first % perEpoch)
    var epochLoss: Double = 0, epochSteps = 0
    let start = Date()
    for s in first..<total {
      let epoch = s / perEpoch, b = s % perEpoch
      let factor = schedule.factor(step: s, total: total, warmup: o.warmup)
      ex.learningRateScale = Float(factor)
      if let m = masks?.step(), let dir = o.dumpMask, comm.rank == 0 { try writeMasks(m, masks!, step: s + 1, to: dir) }
      if let k = o.killRankAt, k.rank == comm.rank, k.step == s + 1 { kill(getpid(), SIGKILL) }
      if let data {
        _ = try data.next(images: feed.input, labels: feed.labels)
      } else {
        feed.synthetic(seed: o.seed, step: s, first: comm.rank * plan.batch)
      }
      ex.input("step")?.f32[0] = Float(s + 1)
      do { try ex.run(checkNumerics: o.checkNumerics, profile: o.profile) } catch let e as NumericError {
        throw RuntimeError("step \(s + 1)\(comm.size > 1 ? " on rank \(comm.rank)" : ""): \(e)")
      }
      var loss = ex.output("loss")!.f32[0]
      if comm.size > 1 {
        // The step's loss is the mean over the global batch: the mean of the ranks' means.
        var l = [Double(loss)]
        comm.sum(&l)
        loss = Float(l[0] / Double(comm.size))
        try shareState()
        if o.checkNumerics { try checkReplicas(step: s + 1) }
      }
      guard loss.isFinite else {
        // The loss is the global one: on several ranks, every rank stops here together.
        let message = "step \(s + 1): the loss is \(loss); training diverged (lower --lr?)"
        throw comm.size > 1 ? CollectiveError(message) as Error : RuntimeError(message)
      }
      epochLoss += Double(loss)
      epochSteps += 1
      let dt = Date().timeIntervalSince(start)
      let rate = dt > 0 ? Double((s + 1 - first) * plan.batch * comm.size) / dt : 0
      try observe(.step(step: s + 1, total: total, epoch: o.epochs.map { (epoch + 1, $0) }, loss: loss, imagesPerSecond: rate))
      if let log {
        var record: [String: JSONValue] = ["kind": .string("step"), "step": .int(s + 1), "epoch": .int(epoch + 1)]
        record["loss"] = .double(Double(loss))
        record["lr"] = .double(baseLR * factor)
        record["images_per_s"] = .double(rate)
        if o.clipGradNorm != nil { record["grad_norm"] = .double(Double(ex.lastGradientNorm)) }
        try log.write(record)
      }
      if let dir = o.checkpoint, (s + 1) % every == 0, s + 1 < total {
        if comm.rank == 0 {
          try Checkpoint.save(
            ex, step: s + 1, seed: o.seed, globalBatch: plan.batch * comm.size, to: dir, crashAfter: o.checkpointCrashAfter)
        }
      }
      if let epochs = o.epochs, b == perEpoch - 1 {
        var evaluation: (loss: Double, top1: Double)?
        if let evaluator, let validation {
          let (vl, top1) = try evaluator.evaluate(validation, weights: ex)
          evaluation = (vl, top1)
          try log?.write([
            "kind": .string("eval"), "epoch": .int(epoch + 1), "step": .int(s + 1), "loss": .double(vl), "top1": .double(top1),
            "top5": .double(evaluator.lastTop5), "confusion": .matrix(evaluator.lastConfusion),
          ])
        }
        try observe(
          .epoch(
            epoch: epoch + 1, epochs: epochs, loss: epochLoss / Double(max(epochSteps, 1)), validation: evaluation,
            note: data?.takeEpochReport()))
        epochLoss = 0
        epochSteps = 0
      }
    }
    let elapsed = Date().timeIntervalSince(start)
    if let dir = o.checkpoint, comm.rank == 0 {
      try Checkpoint.save(ex, step: total, seed: o.seed, globalBatch: plan.batch * comm.size, to: dir, crashAfter: o.checkpointCrashAfter)
    }
    return elapsed
  }

  /// The last step's gradients (before their updates), by parameter name; needs `retainGradients`.
  public func gradients() -> [(name: String, gradient: Buffer)] {
    let names = Dictionary(uniqueKeysWithValues: plan.train.params.map { ($0.value, $0.name) })
    return plan.train.nodes.filter(\.op.isUpdate).map { (names[$0.inputs[0]]!, executor.buffer($0.inputs[1])) }
  }

  /// The last step's logits.
  public var logits: Buffer { executor.buffer(plan.train.outputs[0].value) }

  func writeMasks(_ m: KeepMask, _ feed: MaskFeed, step: Int, to dir: String) throws {
    let stem = dir + "/step" + String(format: "%06d", step)
    try NPYArray(dtype: .u8, shape: [m.height, m.width], data: m.keep.map { $0 ? 1 : 0 }).write(stem + ".npy")
    for (st, data) in feed.stageMasks() { try NPYArray(dtype: .u8, shape: st.grid, data: data).write(stem + ".stage\(st.stage).npy") }
  }
}

/// The training graph's image and label buffers, and seeded synthetic data for runs without a data set.
public struct Feeder {
  public let input: Buffer
  public let labels: Buffer
  public let classes: Int

  public init(plan p: Plan, executor ex: Executor, path: String) throws {
    guard let img = p.train.inputs.first(where: { $0.name != "labels" && $0.name != "step" && !$0.name.hasPrefix("sbp.") }),
      let lab = ex.input("labels")
    else {
      throw PlanError("\(path): the training graph has no image or labels input")
    }
    input = ex.buffer(img.value)
    labels = lab
    classes = p.train.type(of: p.train.outputs[0].value).shape[1]
  }

  /// Seeded synthetic data: N(0,1) images and uniform labels, each sample drawn from (seed,
  /// step, its index in the global batch), so that P ranks at batch B see the samples one
  /// process at batch P·B would; `first` is this rank's first index.
  public func synthetic(seed: UInt64, step: Int, first: Int = 0) {
    let rows = input.type.shape[0], size = input.count / max(rows, 1)
    for r in 0..<rows {
      var rng = SplitMix64(seed: (seed &+ UInt64(step) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(first + r) &* 0xD6E8_FEB8_6659_FD93))
      for i in (r * size)..<((r + 1) * size) { input.f32[i] = rng.normal() }
      Targets.set(row: r, label: Int64(rng.next() % UInt64(classes)), in: labels)
    }
  }
}

/// A JSON value of a log record.
public enum JSONValue {
  case string(String), int(Int), double(Double)
  /// Rows of integers (a confusion matrix).
  case matrix([[Int]])

  var text: String {
    switch self {
    case .string(let s):
      let data = (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8)
      return String(decoding: data, as: UTF8.self)
    case .int(let i): return String(i)
    case .double(let d): return d.isFinite ? "\(d)" : "null"
    case .matrix(let rows): return "[" + rows.map { "[" + $0.map(String.init).joined(separator: ",") + "]" }.joined(separator: ",") + "]"
    }
  }
}

/// `--log F.jsonl`: one JSON object per line, keys in sorted order, flushed per record so a
/// killed run keeps what it logged.
final class JSONLog {
  let handle: FileHandle

  init(path: String, append: Bool) throws {
    if !append || !FileManager.default.fileExists(atPath: path) {
      guard FileManager.default.createFile(atPath: path, contents: nil) else { throw RuntimeError("\(path): cannot create the log") }
    }
    guard let h = FileHandle(forWritingAtPath: path) else { throw RuntimeError("\(path): cannot open the log") }
    h.seekToEndOfFile()
    handle = h
  }

  func write(_ record: [String: JSONValue]) throws {
    let body = record.keys.sorted().map { "\"\($0)\": \(record[$0]!.text)" }.joined(separator: ", ")
    handle.write(Data("{\(body)}\n".utf8))
  }
}

extension Executor {
  /// `--profile`'s table: time by op and by block, largest first, with each op's share and
  /// achieved GFLOP/s, over `steps` profiled steps.
  public func profileReport(steps: Int) -> String {
    var byOp: [String: (ns: UInt64, flops: Int, count: Int)] = [:]
    var byPart: [String: UInt64] = [:]
    for (i, n) in graph.nodes.enumerated() {
      let ns = profileNanos[i]
      let f = graph.flops(n)
      let name = profileLabel(at: i)
      let e = byOp[name] ?? (0, 0, 0)
      byOp[name] = (e.ns + ns, e.flops + f.gemm + f.other, e.count + 1)
      let part: String
      if case .int(let b)? = n.attrs[Annotation.block] { part = "block \(b)" } else { part = "outside blocks" }
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
}
