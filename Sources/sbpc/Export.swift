// Export.swift: `sbpc export`, a plan's ONNX model written back out with the weights of a checkpoint.
import ArgumentParser
import Foundation
import SBPONNX
import SBPPlan
import SBPRuntime

struct Export: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Write the plan's ONNX model with trained weights from a checkpoint.",
    discussion: prose("""
      The output is the original graph, byte for byte, with each trained initializer's data
      replaced by the checkpoint's values (optimizer state is left out). A model whose weights
      live in external data files gets one new file beside the output, OUTPUT.data, holding all
      of them; the original's files are only read. Files are written under temporary names and
      renamed, so a failed export leaves nothing half-written.
      """))

  @Argument(help: "The plan file the training ran.") var plan: String
  @Option(help: "The checkpoint folder (`sbpc train --checkpoint DIR`).") var weights: String
  @Option(name: .shortAndLong, help: "Where to write the ONNX model.") var output: String

  func run() throws {
    try reportingErrors {
      let p = try Plan.load(plan)
      let (state, tensors) = try Checkpoint.read(from: weights)
      let trained = tensors.filter { !$0.key.hasPrefix("opt.") }
      let names = Set(p.train.params.filter(\.trainable).map(\.name) + p.train.stateParameters.map(\.name))
      guard Set(trained.keys) == names else {
        let odd = Set(trained.keys).symmetricDifference(names).sorted().first ?? "?"
        throw RuntimeError("\(weights): the checkpoint is not of \(plan) (tensor @\(odd) is in one and not the other)")
      }
      let n = try exportONNX(model: p.model, weights: trained, to: output, numClasses: p.head?.classes)
      print("\(output): \(n) trained initializers from step \(state.step) of \(weights)")
    }
  }
}
