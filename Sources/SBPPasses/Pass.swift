// Pass.swift: passes as named values, the one registry, and the pipeline that runs them.
import SBPIR

/// A graph transformation with a kebab-case name, registered in `PassRegistry`.
public protocol Pass: Sendable {
  var name: String { get }
  /// One line for `--help` and `sbpc opt --list`.
  var summary: String { get }
  func run(_ graph: inout Graph) throws
}

/// Error for pipeline problems such as an unknown pass name.
public struct PassError: Error, CustomStringConvertible {
  public let description: String
  public init(_ m: String) { description = m }
}

/// The settings of the passes that take any, as one typed value: `sbpc compile` and
/// `sbpc opt --passes` build their passes from it through the registry, so the two run the
/// same pass values.
public struct PipelineOptions: Sendable, Equatable {
  /// `insert-sbp`'s keep ratio, mask, attention split and blocks.
  public var sbp: SBPOptions
  /// The update `autodiff` appends per parameter.
  public var optimizer: OptimizerConfig
  /// `schedule`: each update as soon as its gradient is complete.
  public var fuseOptimizer: Bool
  /// `autodiff`'s per-parameter learning rate and weight decay (`--no-decay-1d`, `--layer-decay`).
  public var groups: ParameterGroups
  /// `autodiff`'s label smoothing, and whether its loss reads soft targets.
  public var smoothing: Double
  public var softTargets: Bool
  /// `bucket-allreduce`'s bucket size in bytes; nil schedules the step for one process.
  public var bucketBytes: Int?
  /// `mixed-precision`: the products' operand precision.
  public var precision: Precision

  public init(
    sbp: SBPOptions = SBPOptions(), optimizer: OptimizerConfig = .defaultSGD, fuseOptimizer: Bool = true,
    groups: ParameterGroups = ParameterGroups(), smoothing: Double = 0, softTargets: Bool = false, bucketBytes: Int? = nil,
    precision: Precision = .fp32
  ) {
    self.bucketBytes = bucketBytes
    self.precision = precision
    self.smoothing = smoothing
    self.softTargets = softTargets
    self.sbp = sbp
    self.optimizer = optimizer
    self.fuseOptimizer = fuseOptimizer
    self.groups = groups
  }
}

/// Every pass sbpc knows, by name. New passes are added here and nowhere else.
public enum PassRegistry {
  /// Every pass, configured by `options`.
  public static func all(_ options: PipelineOptions) -> [any Pass] {
    [
      Canonicalize(),
      Mark(),
      BatchNormTrain(),
      InsertSBP(options.sbp),
      DeadRows(),
      Autodiff(optimizer: options.optimizer, groups: options.groups, smoothing: options.smoothing, softTargets: options.softTargets),
      PruneBackward(),
      Rematerialize(),
      MixedPrecision(options.precision),
      Schedule(fuseOptimizer: options.fuseOptimizer),
      BucketAllreduce(bucketBytes: options.bucketBytes),
      PlanMemory(),
      DeadCodeElimination(),
    ]
  }

  /// Every pass with the default options.
  public static let all: [any Pass] = all(PipelineOptions())

  /// What `sbpc compile` runs: `model` on the imported graph (which is also the evaluation
  /// forward), then `training` on a copy of it, which becomes the training step.
  public static let modelPipeline = "canonicalize,mark"
  public static let trainingPipeline = "batch-norm-train,insert-sbp,dead-rows,autodiff,prune-backward,remat,mixed-precision,schedule,bucket-allreduce,plan-memory"
  /// Run on the evaluation forward after the training copy is made: its memory layout.
  public static let evaluationPipeline = "schedule,plan-memory"

  public static func named(_ name: String, _ options: PipelineOptions = PipelineOptions()) -> (any Pass)? {
    all(options).first { $0.name == name }
  }

  /// Resolves a comma-separated list such as `canonicalize,dce`, each pass configured by `options`.
  public static func pipeline(_ spec: String, _ options: PipelineOptions = PipelineOptions()) throws -> [any Pass] {
    let known = all(options)
    return try spec.split(separator: ",", omittingEmptySubsequences: false).map { raw in
      let n = raw.trimmingSpaces()
      guard let p = known.first(where: { $0.name == n }) else {
        throw PassError("unknown pass '\(n)'; known passes: \(all.map(\.name).joined(separator: ", "))")
      }
      return p
    }
  }
}

/// Runs passes in order, verifying after each when asked and dumping IR after the chosen ones.
public struct PassPipeline: Sendable {
  public var passes: [any Pass]
  public var verifyEach: Bool
  public var printAfter: Set<String>
  public var printAfterAll: Bool

  public init(passes: [any Pass], verifyEach: Bool = false, printAfter: Set<String> = [], printAfterAll: Bool = false) {
    self.passes = passes
    self.verifyEach = verifyEach
    self.printAfter = printAfter
    self.printAfterAll = printAfterAll
  }

  /// Runs the pipeline; `dump` receives the IR text after passes selected for printing.
  public func run(_ graph: inout Graph, dump: (String, String) -> Void = { _, _ in }) throws {
    for p in passes {
      try p.run(&graph)
      if verifyEach {
        do { try graph.verify() } catch let e as IRError { throw PassError("verifier failed after pass \(p.name): \(e)") }
      }
      if printAfterAll || printAfter.contains(p.name) { dump(p.name, graph.printed()) }
    }
  }
}

/// Removes nodes and parameters that nothing reads.
public struct DeadCodeElimination: Pass {
  public init() {}
  public let name = "dce"
  public let summary = "remove nodes and parameters whose results nothing reads"
  public func run(_ graph: inout Graph) throws { graph.eliminateDeadCode() }
}

extension Substring {
  func trimmingSpaces() -> String {
    String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
  }
}
