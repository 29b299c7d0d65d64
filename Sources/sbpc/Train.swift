// Train.swift: `sbpc train`, a thin front end over the runtime's Trainer: flags in, progress and results out.
import ArgumentParser
import Foundation
import SBPData
import SBPIR
import SBPPlan
import SBPRuntime

struct Train: ParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Run training steps of a plan on the CPU runtime.")

  @Argument(help: "The plan file from `sbpc compile`.") var plan: String
  @Option(help: "Number of steps (default 10; with --epochs, the epochs decide).") var steps: Int?
  @Option(
    help: ArgumentHelp(
      "Images, f32 [N,C,H,W] .npy (N >= the batch), or a folder of NAME.x.npy / NAME.y.npy pairs. Without it, seeded synthetic data."))
  var input: String?
  @Option(help: "Labels, i64 [N] .npy.") var labels: String?
  @Option(help: "Passes over the data set (needs --input or --data).") var epochs: Int?
  @Option(
    name: .customLong("last-batch"),
    help: "The samples after the last whole batch of an epoch: drop (default) or pad (with the epoch's first samples).")
  var lastBatch: String = "drop"
  @Flag(inversion: .prefixedNo, help: "Shuffle the data each epoch, by the seed (default: on with --epochs, off with --steps).")
  var shuffle: Bool?
  @Option(
    parsing: .upToNextOption,
    help: ArgumentHelp(
      "Evaluate the plain forward on this set after each epoch: X.npy Y.npy, or a folder of pairs; with --data, an image folder or shards.",
      valueName: "X Y"))
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
  @Option(
    help: ArgumentHelp(
      "auto (default): under mpirun, train data-parallel, one rank per process; off: every process trains alone.",
      valueName: "auto|off"))
  var distributed: String = "auto"
  @Flag(
    name: .customLong("sync-bn"),
    help: "Data-parallel runs: normalize BatchNorm by the statistics of the global batch (reduced across ranks) instead of each rank's own.")
  var syncBN = false
  @Option(name: .customLong("kill-rank-at"), help: .hidden) var killRankAt: String?
  @OptionGroup var memory: MemoryOptions
  @OptionGroup(title: "Image data") var loader: LoaderFlags
  @OptionGroup(title: "Transforms") var transforms: TransformOptions
  @Option(help: "Mixup's α: mix each batch with its reverse by λ ~ Beta(α, α) (default 0: off; needs a plan compiled with --soft-targets).")
  var mixup: Double = 0
  @Option(help: "CutMix's α: paste a box of the reversed batch, area 1 − λ, λ ~ Beta(α, α) (default 0: off; needs --soft-targets).")
  var cutmix: Double = 0
  @Option(name: .customLong("mixup-prob"), help: "Probability that a batch is mixed at all (default 1).") var mixupProb: Double = 1
  @Option(name: .customLong("mixup-switch-prob"), help: "With both --mixup and --cutmix: probability of CutMix (default 0.5).")
  var mixupSwitchProb: Double = 0.5

  func validate() throws {
    if let steps { guard steps >= 1 else { throw ValidationError("--steps must be >= 1, got \(steps)") } }
    guard threads >= 1, threads <= 256 else { throw ValidationError("--threads must be between 1 and 256, got \(threads)") }
    guard labels == nil || input != nil else { throw ValidationError("--labels needs --input") }
    guard input == nil || loader.data == nil else { throw ValidationError("--input (.npy) and --data (images) exclude each other") }
    if loader.data != nil, val.count > 1 { throw ValidationError("with --data, --val takes one image folder or shard spec") }
    for (name, v) in [("--mixup", mixup), ("--cutmix", cutmix)] where !(v >= 0 && v.isFinite) {
      throw ValidationError("\(name) must be >= 0, got \(v)")
    }
    for (name, v) in [("--mixup-prob", mixupProb), ("--mixup-switch-prob", mixupSwitchProb)] where !(v >= 0 && v <= 1) {
      throw ValidationError("\(name) must be in [0, 1], got \(v)")
    }
    if mixup > 0 || cutmix > 0, loader.data == nil { throw ValidationError("--mixup and --cutmix mix image batches: they need --data") }
    if let epochs {
      guard epochs >= 1, epochs <= 1_000_000 else { throw ValidationError("--epochs must be >= 1, got \(epochs)") }
      guard input != nil || loader.data != nil else { throw ValidationError("--epochs needs a data set (--input or --data)") }
      guard steps == nil else { throw ValidationError("--steps and --epochs exclude each other") }
    }
    guard LastBatch(rawValue: lastBatch) != nil else { throw ValidationError("--last-batch must be drop or pad, got '\(lastBatch)'") }
    guard val.count <= 2 else { throw ValidationError("--val takes X.npy Y.npy or one folder, got \(val.count) values") }
    guard TrainerOptions.ScheduleKind(rawValue: lrSchedule) != nil else {
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
    guard ["auto", "off"].contains(distributed) else { throw ValidationError("--distributed must be auto or off, got '\(distributed)'") }
    if let killRankAt, killRank == nil { throw ValidationError("--kill-rank-at expects RANK:STEP, got '\(killRankAt)'") }
  }

  var killRank: (rank: Int, step: Int)? {
    let parts = killRankAt?.split(separator: ":").compactMap { Int($0) } ?? []
    return parts.count == 2 ? (parts[0], parts[1]) : nil
  }

  /// The flags as the library's options (valid after `validate()`).
  var options: TrainerOptions {
    var o = TrainerOptions()
    o.steps = steps
    o.epochs = epochs
    o.input = input
    o.labels = labels
    // With --data the runtime gets image loaders instead of .npy paths.
    o.validation = loader.data == nil ? val : []
    o.lastBatch = LastBatch(rawValue: lastBatch)!
    o.shuffle = shuffle
    o.schedule = TrainerOptions.ScheduleKind(rawValue: lrSchedule)!
    o.warmup = warmup
    o.lrStepEvery = lrStepEvery
    o.lrGamma = lrGamma
    o.clipGradNorm = clipGradNorm
    o.log = log
    o.checkpoint = checkpoint
    o.checkpointEvery = checkpointEvery
    o.resume = resume
    o.checkpointCrashAfter = checkpointCrashAfter
    o.seed = seed
    o.maskPhase = maskPhase
    o.maskFile = maskFile
    o.dumpMask = dumpMask
    o.threads = threads
    o.maxMemory = memory.limit
    o.retainGradients = dumpGrads != nil
    o.profile = profile
    o.checkNumerics = checkNumerics
    o.syncBatchNorm = syncBN
    o.killRankAt = killRank
    // The loader's flags decide the data each rank reads: all ranks must share them too.
    o.shared = [
      ("--data", loader.data ?? "-"), ("--val", val.joined(separator: " ")), ("--mixup", "\(mixup)"), ("--cutmix", "\(cutmix)"),
      ("--mixup-prob", "\(mixupProb)"), ("--mixup-switch-prob", "\(mixupSwitchProb)"),
    ]
    return o
  }

  func run() throws {
    // Under mpirun every process runs this command; each becomes one rank.
    let comm = distributed == "auto" && Communicator.launched ? try reportingErrors { try Communicator.start() } : .single
    guard comm.size > 1 else { return try reportingErrors { try train(comm) } }
    do {
      try train(comm)
    } catch let e as CollectiveError {
      // Every rank found the same problem together: rank 0 says it once.
      if comm.rank == 0 { _ = fail(e.description) }
      comm.finish()
      throw ExitCode(1)
    } catch {
      // One rank failed alone: the others would wait for it forever, so the job stops.
      _ = fail("rank \(comm.rank) of \(comm.size): " + String(describing: error).split(separator: "\n").joined(separator: " "))
      comm.abort(1)
    }
    comm.finish()
  }

  func train(_ comm: Communicator) throws {
    do {
      let p = try Plan.load(plan)
      let (data, validation) = try imageLoaders(p, comm)
      defer {
        data?.shutdown()
        validation?.shutdown()
      }
      let trainer = try Trainer(plan: p, path: plan, options: options, data: data, validation: validation, communicator: comm)
      let root = comm.rank == 0
      if comm.size > 1 {
        if root {
          print("data-parallel: \(comm.size) ranks × batch \(p.batch) = global batch \(p.batch * comm.size); \(bucketLine(trainer))")
          StopNote.install()
        }
      }
      if root, p.train.nodes.contains(where: { $0.attrs[Annotation.precision] == .string("bf16") }) {
        printNotes(["bf16 products on the \(BF16GEMM.kernel) kernel: \(BF16GEMM.why)"])
      }
      let progress = Progress(total: trainer.total, first: trainer.first, batch: p.batch * comm.size)
      let dt = try trainer.run { event in
        guard root else { return }
        switch event {
        case .step(let step, let total, let epoch, let loss, let rate):
          if dumpLoss {
            print(loss)
          } else if epochs == nil {
            print("step \(step)/\(total)  loss \(String(format: "%.5f", loss))")
          }
          if comm.size > 1 { StopNote.set(stopNote(step: step, total: total)) }
          progress.update(step: step, epoch: epoch, loss: loss, rate: rate)
        case .epoch(let epoch, let epochs, let loss, let validation, let note):
          var line = String(format: "epoch %d/%d  loss %.5f", epoch, epochs, loss)
          if let (vl, top1) = validation { line += String(format: "  val loss %.5f  top-1 %.2f%%", vl, 100 * top1) }
          progress.clear()
          print(line)
          if let note { print("  " + note) }
          fflush(nil)  // each epoch's line shows as it ends, also in a file or a pipe
        }
      }
      guard root else { return }
      progress.clear()
      let done = trainer.total - trainer.first
      if !dumpLoss {
        print(
          String(
            format: "%d steps in %.2f s (%.1f ms/step, %.1f images/s); %.3f GFLOP per step, counted by the runtime", done, dt,
            1000 * dt / Double(max(done, 1)), Double(done * p.batch * comm.size) / dt, Double(trainer.executor.lastRunFlops) / 1e9)
            + (comm.size > 1 ? " on each rank" : ""))
      }
      if profile {
        print(trainer.executor.profileReport(steps: done))
        if comm.size > 1 {
          let wait = Double(trainer.executor.communicationWaitNanos) / 1e9
          print(
            String(
              format: "communication: the step waited %.1f ms per step for gradient allreduces (%.1f%% of the step)",
              1000 * wait / Double(max(done, 1)), 100 * wait / max(dt, 1e-9)))
        }
        if let data { print(String(format: "data: the step waited %.1f ms per step for the loader", 1000 * data.waitSeconds / Double(max(done, 1)))) }
      }
      if epochs == nil, let note = data?.takeEpochReport() { print(note) }
      if let dumpLogits { try write(trainer.logits, to: dumpLogits) }
      if let dumpGrads {
        try FileManager.default.createDirectory(atPath: dumpGrads, withIntermediateDirectories: true)
        for (name, g) in trainer.gradients() { try write(g, to: dumpGrads + "/" + name.replacingOccurrences(of: "/", with: "_") + ".npy") }
      }
    }
  }

  /// What the bucket schedule is, for the run's first line.
  func bucketLine(_ t: Trainer) -> String {
    let b = t.plan.train.gradientBuckets
    let mib = Double(b.reduce(0) { $0 + $1.bytes }) / 1_048_576
    return String(format: "gradients %.1f MiB in %d allreduce bucket%@", mib, b.count, b.count == 1 ? "" : "s")
  }

  /// What rank 0 says if mpirun stops it during the step after `step` (another rank ended).
  func stopNote(step: Int, total: Int) -> String {
    var note = "sbpc: error: the job stopped after step \(step) of \(total): another rank ended (or the job was interrupted), and mpirun stopped this one"
    if let dir = checkpoint {
      let every = checkpointEvery ?? Int.max
      let saved = every == Int.max ? 0 : step / every * every
      note +=
        saved > 0
        ? "; the checkpoint in \(dir) (step \(saved)) is whole: run the same command with --resume \(dir) to continue"
        : "; no checkpoint was saved yet"
    }
    return note + "\n"
  }

  /// The image loaders --data asks for: the training set (PATH/train when PATH has train
  /// and val) and the validation set (--val, or PATH/val).
  func imageLoaders(_ p: Plan, _ comm: Communicator) throws -> (ImageLoader?, ImageLoader?) {
    guard let path = loader.data else { return (nil, nil) }
    let feed = p.train.inputs.first { $0.name != "labels" && $0.name != "step" && !$0.name.hasPrefix("sbp.") }
    guard let feed else { throw PlanError("\(plan): the training graph has no image input") }
    let shape = Array(p.train.type(of: feed.value).shape.dropFirst())
    let classes = p.train.type(of: p.train.outputs[0].value).shape[1]
    let splits = ShardSet.isShardSpec(path) ? (path, nil) : ImageFolder.splits(path)
    let set = try ImageSet.open(splits.0, classes: classes)
    var o = loader.options(batch: p.batch, seed: seed)
    (o.rank, o.ranks) = (comm.rank, comm.size)
    (o.mixup, o.cutmix, o.mixProb, o.switchProb) = (mixup, cutmix, mixupProb, mixupSwitchProb)
    if mixup > 0 || cutmix > 0, p.train.inputs.first(where: { $0.name == "labels" }).map({ p.train.type(of: $0.value).rank }) != 2 {
      throw PlanError("\(plan): --mixup and --cutmix need soft targets in the loss; compile the plan with --soft-targets")
    }
    o.shuffle = shuffle ?? (epochs != nil)
    o.last = LastBatch(rawValue: lastBatch)!
    let train = try ImageLoader(set, transform: try transforms.config(.train, shape: shape), options: o)
    guard let valPath = val.first ?? splits.1 else { return (train, nil) }
    let valSet = try ImageSet.open(valPath, classes: classes)
    try set.checkSameClasses(as: valSet, name: valPath)
    return (
      train, try loader.evaluationLoader(valSet, transform: transforms, shape: shape, batch: p.batch, rank: comm.rank, ranks: comm.size)
    )
  }

  func write(_ b: Buffer, to path: String) throws {
    try NPYArray(f32: Array(b.floats), shape: b.type.shape).write(path)
  }
}

/// The line rank 0 prints when mpirun stops it because another rank ended: kept ready as
/// bytes, since a signal handler may only write(2) and exit.
enum StopNote {
  nonisolated(unsafe) static let text = UnsafeMutablePointer<CChar>.allocate(capacity: 1024)
  nonisolated(unsafe) static var length = 0

  static func install() {
    set("sbpc: error: the job stopped before its first step: another rank ended (or the job was interrupted), and mpirun stopped this one\n")
    signal(SIGTERM) { _ in
      _ = write(2, StopNote.text, StopNote.length)
      _exit(1)
    }
    // A collective that fails because a rank died says the same, whichever comes first.
    Communicator.onFailure = { _ in
      _ = write(2, StopNote.text, StopNote.length)
      _exit(1)
    }
  }

  static func set(_ s: String) {
    let bytes = Array(s.utf8.prefix(1023))
    // The handler reads `length` bytes: shorten first, so it never reads past the new text.
    length = 0
    for (i, b) in bytes.enumerated() { text[i] = CChar(bitPattern: b) }
    length = bytes.count
  }
}
