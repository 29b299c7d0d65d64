// Opt.swift: `sbpc opt`, which runs named passes on text IR or an ONNX model, like mlir-opt.
import ArgumentParser
import Foundation
import SBPIR
import SBPPasses

/// `sbpc opt`: runs registered passes on text IR or an imported model.
struct Opt: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run compiler passes on a text IR file (.sbpir) or an ONNX model and print the result.",
    discussion: "Passes: " + PassRegistry.all.map { "\($0.name) (\($0.summary))" }.joined(separator: "; "))

  @Argument(help: "Input: text IR (.sbpir) or an ONNX model (.onnx).")
  var input: String

  @Option(help: "Comma-separated passes to run in order, e.g. canonicalize,dce. Empty runs none.")
  var passes: String = ""

  @Option(name: .customLong("print-after"), help: "Print the IR after this pass (repeatable).")
  var printAfter: [String] = []

  @Flag(name: .customLong("print-after-all"), help: "Print the IR after every pass.")
  var printAfterAll = false

  @Flag(name: .customLong("verify-each"), help: "Run the IR verifier after every pass.")
  var verifyEach = false

  @Option(name: .shortAndLong, help: "Write the final IR to this file instead of standard output.")
  var output: String?

  @OptionGroup var shape: ShapeOptions
  @OptionGroup(title: "insert-sbp") var sbp: SBPFlags
  @Option(
    name: .customLong("bucket-mb"),
    help: ArgumentHelp("bucket-allreduce's bucket size in MiB (without it the pass leaves the step as it is).", valueName: "MB"))
  var bucketMB: Double?
  @Option(help: ArgumentHelp("mixed-precision's precision (default fp32: the pass leaves the step as it is).", valueName: "fp32|bf16"))
  var precision: String = "fp32"

  func validate() throws {
    if let bucketMB, !(bucketMB > 0 && bucketMB <= 4096) { throw ValidationError("--bucket-mb must be in (0, 4096], got \(bucketMB)") }
    guard Precision(rawValue: precision) != nil else { throw ValidationError("--precision must be fp32 or bf16, got '\(precision)'") }
  }

  func run() throws {
    try reportingErrors {
      // The passes take their settings from the flags, as compile's do (default: keep 0.5, grid,
      // qkv, default blocks; SGD; fused updates).
      let options = PipelineOptions(
        sbp: sbp.options, bucketBytes: bucketMB.map { Int($0 * 1_048_576) }, precision: Precision(rawValue: precision)!)
      let list = passes.isEmpty ? [] : try PassRegistry.pipeline(passes, options)
      for p in printAfter where PassRegistry.named(p) == nil {
        throw PassError("--print-after: unknown pass '\(p)'")
      }
      var notes: [String] = []
      var graph = try loadGraph(input, shape: shape, notes: &notes)
      printNotes(notes)
      if verifyEach { try graph.verify() }
      let pipeline = PassPipeline(passes: list, verifyEach: verifyEach, printAfter: Set(printAfter), printAfterAll: printAfterAll)
      try pipeline.run(&graph) { name, text in
        print("// -----// IR after \(name) //----- //")
        print(text, terminator: "")
      }
      let text = graph.printed()
      if let output {
        guard FileManager.default.createFile(atPath: output, contents: Data(text.utf8)) else { throw PassError("\(output): cannot write") }
      } else if printAfter.isEmpty && !printAfterAll {
        print(text, terminator: "")
      }
    }
  }
}
