// LaidOut.swift: test graphs built by hand get the memory layout a plan file carries before an executor runs them.
import SBPIR
import SBPPasses

extension Graph {
  /// This graph with `plan-memory`'s annotations: the executor reads its buffers from them.
  func laidOut() throws -> Graph {
    var g = self
    try PlanMemory().run(&g)
    return g
  }
}
