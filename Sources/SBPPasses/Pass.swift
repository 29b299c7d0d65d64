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

/// Every pass sbpc knows, by name. New passes are added here and nowhere else.
public enum PassRegistry {
  public static let all: [any Pass] = [
    Canonicalize(),
    Mark(),
    InsertSBP(),
    DeadRows(),
    Autodiff(),
    PruneBackward(),
    Rematerialize(),
    Schedule(),
    PlanMemory(),
    DeadCodeElimination(),
  ]

  public static func named(_ name: String) -> (any Pass)? { all.first { $0.name == name } }

  /// Resolves a comma-separated list such as `canonicalize,dce`.
  public static func pipeline(_ spec: String) throws -> [any Pass] {
    try spec.split(separator: ",", omittingEmptySubsequences: false).map { raw in
      let n = raw.trimmingSpaces()
      guard let p = named(n) else {
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
