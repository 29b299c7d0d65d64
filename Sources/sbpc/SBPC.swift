// SBPC.swift: the `sbpc` command-line entry point; each subcommand is a thin front end over the modules.
import ArgumentParser
import Foundation
import SBPIR
import SBPONNX
import SBPPasses
import SBPRuntime

@main
enum Main {
  /// Parses and runs a command. Unlike ArgumentParser's default, a bad flag value prints one
  /// line (`sbpc: error: …`) and no usage block, like every other error sbpc reports.
  static func main() {
    configureOpenBLAS()
    do {
      var command = try SBPC.parseAsRoot()
      try command.run()
    } catch {
      let code = SBPC.exitCode(for: error)
      if code == .success || error is CleanExit { SBPC.exit(withError: error) }
      let message = SBPC.message(for: error).split(separator: "\n").first.map(String.init) ?? ""
      if !message.isEmpty {
        FileHandle.standardError.write(Data("sbpc: error: \(message.replacingOccurrences(of: "Error: ", with: ""))\n".utf8))
      }
      SBPC.exit(withError: ExitCode(code.rawValue == 0 ? 1 : code.rawValue))
    }
  }

  /// Two OpenBLAS settings that are read only when the library loads, so sbpc sets them in
  /// its environment and re-executes itself once (values the user set are kept):
  /// - OPENBLAS_THREAD_TIMEOUT: OpenBLAS's idle threads spin (calling sched_yield) for 2²⁸
  ///   cycles after each multi-threaded call, which would take a core from the runtime's
  ///   kernels. Steps call OpenBLAS single-threaded; the sgemm peak `bench` measures does not.
  /// - OPENBLAS_CORETYPE: on a CPU newer than the library, OpenBLAS falls back to its SSE3
  ///   kernels; `BLASCore.coreOverride` names the AVX2 or AVX-512 ones the CPU can run.
  ///
  /// Only the commands that run the runtime pay for the re-exec (about 50 ms, a sixth of a
  /// ViT-Tiny compile).
  static func configureOpenBLAS() {
    let runtimeCommands: Set<String> = ["train", "eval", "bench", "bench-child"]
    guard CommandLine.arguments.count > 1, runtimeCommands.contains(CommandLine.arguments[1]) else { return }
    var changed = false
    if getenv("OPENBLAS_THREAD_TIMEOUT") == nil {
      setenv("OPENBLAS_THREAD_TIMEOUT", "16", 1)
      changed = true
    }
    if getenv("OPENBLAS_CORETYPE") == nil, let core = BLASCore.coreOverride() {
      // Remembered so that `sbpc bench` can say which core OpenBLAS had chosen.
      setenv("SBPC_OPENBLAS_DETECTED", BLASCore.name, 1)
      setenv("OPENBLAS_CORETYPE", core, 1)
      changed = true
    }
    guard changed else { return }
    execv("/proc/self/exe", CommandLine.unsafeArgv)
    // Only reached if exec failed: run as is, with OpenBLAS's defaults.
  }
}

struct SBPC: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sbpc",
    abstract: "Compile ONNX image models into memory-efficient training steps with Stochastic Backpropagation.",
    discussion: prose("""
      Start with `sbpc inspect model.onnx` to see what sbpc makes of a model, and
      `sbpc opt FILE --passes canonicalize` to run compiler passes on a model or on text IR.
      """),
    subcommands: [
      Inspect.self, Opt.self, Compile.self, Memory.self, Train.self, Eval.self, DataCommand.self, Export.self, Bench.self, BenchChild.self,
    ])
}

/// A help discussion as ArgumentParser should wrap it: the lines of each paragraph joined,
/// since it keeps the source's line breaks and wraps again at the terminal's width.
func prose(_ text: String) -> String {
  text.components(separatedBy: "\n\n").map { $0.split(separator: "\n").joined(separator: " ") }.joined(separator: "\n\n")
}

/// Options that fix a model's symbolic dimensions, shared by every command that imports ONNX.
struct ShapeOptions: ParsableArguments {
  @Option(help: "Batch size for the model's symbolic batch dimension (default \(ImportOptions.defaultBatch)).")
  var batch: Int?

  @Option(name: .customLong("dim"), help: ArgumentHelp("Value for another symbolic dimension, as NAME=N. Repeatable.", valueName: "NAME=N"))
  var dims: [String] = []

  func validate() throws {
    if let b = batch, b < 1 || b > 1 << 20 { throw ValidationError("--batch must be between 1 and \(1 << 20), got \(b)") }
    _ = try parsedDims()
  }

  private func parsedDims() throws -> [String: Int] {
    var out: [String: Int] = [:]
    for d in dims {
      let parts = d.split(separator: "=", maxSplits: 1)
      guard parts.count == 2, let n = Int(parts[1]), n >= 1 else {
        throw ValidationError("--dim expects NAME=N with N >= 1, got '\(d)'")
      }
      out[String(parts[0])] = n
    }
    return out
  }

  /// Valid after `validate()`, which ArgumentParser runs before any command.
  var importOptions: ImportOptions { ImportOptions(batch: batch, dims: (try? parsedDims()) ?? [:]) }

  func importOptions(_ p: ParameterFlags) -> ImportOptions {
    ImportOptions(
      batch: batch, dims: (try? parsedDims()) ?? [:], freeze: p.freeze.filter { !FreezeSpec.isStructural($0) }, keepTied: p.keepTied,
      numClasses: p.numClasses, headSeed: p.seed)
  }
}

/// Which initializers train, and a new classifier: `compile` and `inspect` share these.
struct ParameterFlags: ParsableArguments {
  @Option(
    name: .customLong("freeze"),
    help: ArgumentHelp(
      "Do not train what SPEC names: stem (before the first block), head (after the last), norm (every LayerNorm and BatchNorm scale and shift), blocks in the --blocks grammar (first:6, 0-5, stage:0), or initializer names: a name, a dotted prefix (blocks.0), or a pattern with * and ? (quote it: 'stages.0.*'). Frozen parameters get no gradient, no optimizer state and no update, and a frozen prefix runs no backward. Repeatable.",
      valueName: "SPEC"))
  var freeze: [String] = []
  @Flag(
    name: .customLong("keep-tied"),
    help: "Train an initializer that feeds several layers as one shared tensor (default: each layer gets its own copy, as PyTorch had before the exporter merged equal tensors).")
  var keepTied = false
  @Option(
    name: .customLong("num-classes"),
    help: ArgumentHelp(
      "Replace the classifier (the last linear or 1×1 conv before the output) with a fresh N-way one: weight from a normal of σ 0.02 truncated at ±2σ (timm's trunc_normal_), bias zero, seeded by --seed. `sbpc export` writes the new head.",
      valueName: "N"))
  var numClasses: Int?
  @Option(help: "Seed of the new classifier's weights (--num-classes).") var seed: UInt64 = 0

  func validate() throws {
    if let n = numClasses, n < 2 { throw ValidationError("--num-classes must be at least 2, got \(n)") }
    for p in freeze where p.isEmpty || p.contains(where: \.isWhitespace) {
      throw ValidationError("--freeze expects an initializer name or pattern, got '\(p)'")
    }
  }
}

/// Prints a one-line error and exits non-zero; every command funnels its failures through this.
func fail(_ message: String) -> ExitCode {
  FileHandle.standardError.write(Data("sbpc: error: \(message)\n".utf8))
  return ExitCode(1)
}

/// Runs `body`, turning any sbpc error into a one-line message and exit code 1.
func reportingErrors<T>(_ body: () throws -> T) throws -> T {
  do {
    return try body()
  } catch let e as ExitCode {
    throw e
  } catch let e as ValidationError {
    throw e
  } catch {
    throw fail(String(describing: error).split(separator: "\n").joined(separator: " "))
  }
}

/// Loads a graph from `.onnx` (imported) or text IR (any other extension).
func loadGraph(_ path: String, shape: ShapeOptions, notes: inout [String]) throws -> Graph {
  if path.hasSuffix(".onnx") {
    let m = try importONNX(path: path, options: shape.importOptions)
    notes += m.notes
    return m.graph
  }
  let data: [UInt8]
  do { data = try readFileBytes(path) } catch { throw PassError("\(path): cannot read file") }
  guard let text = String(validating: data, as: UTF8.self) else { throw PassError("\(path): not UTF-8 text") }
  do { return try parseGraph(text) } catch let e as IRError { throw PassError("\(path): \(e)") }
}

func printNotes(_ notes: [String]) {
  // A note that starts "warning: " is one: something the user should act on (an exporter artefact).
  for n in notes {
    let line = n.hasPrefix("warning: ") ? "sbpc: \(n)" : "sbpc: note: \(n)"
    FileHandle.standardError.write(Data("\(line)\n".utf8))
  }
}
