// Compile.swift: `sbpc compile`, a thin front end over SBPPlan, and the SBP flags it shares with `memory` and `bench`.
import ArgumentParser
import Foundation
import SBPIR
import SBPPasses
import SBPPlan

struct Compile: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Compile an ONNX model into a training step (a plan file).",
    discussion: prose("""
      The plan holds the training step (forward, mean softmax cross-entropy against integer
      labels, backward, one optimizer update per parameter) and the plain forward for
      evaluation. Weights stay in the ONNX file; the plan refers to it.

      Stochastic backpropagation (SBP) is on by default at keep 0.5 on the paper's blocks:
      each step, one mask over the token grid picks the kept tokens; the selected blocks'
      MLP/PW-Conv branches and attention cores pass gradient only through them. --keep 1 or
      --blocks none compile plain backpropagation. `sbpc inspect` lists the blocks.

      Without -o the plan is NAME.plan beside NAME.onnx; the last line compares the plan's
      memory, saved activations and step FLOPs with --keep 1 (--quiet leaves it out).
      """))

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
  @Flag(
    help:
      "Schedule the step for data-parallel training under mpirun: gradients travel in allreduce buckets in the order the backward finishes them, and each update waits for its bucket (see --bucket-mb)."
  )
  var distributed = false
  @Option(
    name: .customLong("bucket-mb"),
    help: ArgumentHelp("With --distributed: the allreduce bucket size in MiB (default 25, as PyTorch DDP's).", valueName: "MB"))
  var bucketMB: Double?
  @Option(
    help: ArgumentHelp(
      "fp32 (default), or bf16: the step's products (linear, matmul) read bf16 operands and accumulate in fp32, and keep bf16 copies for the backward; everything else stays fp32.",
      valueName: "fp32|bf16"))
  var precision: String = "fp32"
  @Option(help: "Optimizer: sgd or adamw.") var optimizer: String = "sgd"
  @Option(help: "Learning rate.") var lr: Double = 0.01
  @Option(help: "SGD momentum.") var momentum: Double = 0.9
  @Option(name: .customLong("weight-decay"), help: "Weight decay (decoupled for adamw).") var weightDecay: Double = 0
  @Flag(
    name: .customLong("no-decay-1d"),
    help: "No weight decay on parameters of rank 1 or less: biases, norm scales and shifts, layer scales (timm's default).")
  var noDecay1D = false
  @Option(
    name: .customLong("layer-decay"),
    help: ArgumentHelp(
      "Layer-wise learning-rate decay, 0 < R <= 1 (BEiT's and DeiT-III's fine-tuning): block b trains at lr·R^(L−b), the stem at lr·R^(L+1), the head at lr, for L blocks.",
      valueName: "R"))
  var layerDecay: Double?
  @Option(help: "Label smoothing ε of the loss, 0 <= ε < 1: the target is (1 − ε)·one-hot + ε/classes (timm's --smoothing).")
  var smoothing: Double = 0
  @Flag(
    name: .customLong("soft-targets"),
    help: "The loss reads soft targets f32 [batch, classes] instead of class labels: what train's --mixup and --cutmix write.")
  var softTargets = false
  @OptionGroup var shape: ShapeOptions
  @OptionGroup var parameters: ParameterFlags

  func validate() throws {
    if let maxMemory, MemoryOptions.parse(maxMemory) == nil {
      throw ValidationError("--max-memory expects a size such as 512M, 8G or a byte count, got '\(maxMemory)'")
    }
    guard ["sgd", "adamw"].contains(optimizer) else { throw ValidationError("--optimizer must be sgd or adamw, got '\(optimizer)'") }
    guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive, got \(lr)") }
    guard momentum >= 0, momentum < 1 else { throw ValidationError("--momentum must be in [0, 1), got \(momentum)") }
    guard weightDecay >= 0, weightDecay.isFinite else { throw ValidationError("--weight-decay must be >= 0, got \(weightDecay)") }
    if let r = layerDecay, !(r > 0 && r <= 1) { throw ValidationError("--layer-decay must be in (0, 1], got \(r)") }
    guard Precision(rawValue: precision) != nil else { throw ValidationError("--precision must be fp32 or bf16, got '\(precision)'") }
    if let bucketMB {
      guard distributed else { throw ValidationError("--bucket-mb needs --distributed") }
      guard bucketMB > 0, bucketMB <= 4096 else { throw ValidationError("--bucket-mb must be in (0, 4096], got \(bucketMB)") }
    }
    guard smoothing >= 0, smoothing < 1 else { throw ValidationError("--smoothing must be in [0, 1), got \(smoothing)") }
  }

  func run() throws {
    try reportingErrors {
      let opt: OptimizerConfig =
        optimizer == "sgd"
        ? .sgd(lr: lr, momentum: momentum, weightDecay: weightDecay)
        : .adamw(lr: lr, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: weightDecay)
      let options = Plan.Options(
        batch: shape.batch, dims: shape.importOptions.dims, optimizer: opt, sbp: sbp.options, fuseOptimizer: fuseOptimizer,
        freeze: parameters.freeze, keepTied: parameters.keepTied,
        head: parameters.numClasses.map { HeadSpec(classes: $0, seed: parameters.seed) },
        groups: ParameterGroups(noDecay1D: noDecay1D, layerDecay: layerDecay), smoothing: smoothing, softTargets: softTargets,
        bucketBytes: distributed ? Int((bucketMB ?? 25) * 1_048_576) : nil, precision: Precision(rawValue: precision)!)
      let (plan, notes) = try Plan.compile(model: model, options: options)
      printNotes(notes)
      if let limit = maxMemory.flatMap(MemoryOptions.parse) {
        let need = MemoryPlan(plan.train).totalBytes
        if need > limit { throw PlanError(try Plan.fitting(model: model, options: options, need: need, limit: limit)) }
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
    if let keep { guard MaskSpec.isValidKeep(keep) else { throw ValidationError("--keep must be in (0, 1], got \(keep)") } }
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
