// Eval.swift: `sbpc eval`, a thin front end over the runtime's Evaluator, and the --max-memory option of the commands that run plans.
import ArgumentParser
import Foundation
import SBPData
import SBPIR
import SBPPlan
import SBPRuntime

struct Eval: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Evaluate a plan's forward on a data set: mean loss, top-1 and top-5 accuracy.",
    discussion: prose("""
      Prints one line: loss, top-1 (with the count) and top-5 (top-k for fewer than 5 classes).
      --per-class adds each class's accuracy; --log FILE writes all of it as JSON, with the
      confusion matrix (confusion[label][predicted]).
      """))

  @Argument(help: "The plan file.") var plan: String
  @Option(help: "Images, f32 [N,C,H,W] .npy (any N; a partial last batch is padded), or a folder of NAME.x.npy / NAME.y.npy pairs.")
  var input: String?
  @Option(help: "Labels, i64 [N] .npy.") var labels: String?
  @Option(help: "Threads (default: the machine's cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
  @Option(name: .customLong("dump-logits"), help: "Write every sample's logits to this .npy file, f32 [N, classes].") var dumpLogits:
    String?
  @Flag(name: .customLong("per-class"), help: "Also print each class's top-1 accuracy and sample count.") var perClass = false
  @Option(help: "Write the results as JSON to this file: loss, top1, top5, per_class and confusion.") var log: String?
  @OptionGroup var memory: MemoryOptions
  @OptionGroup(title: "Image data") var loader: LoaderFlags
  @OptionGroup(title: "Transforms") var transforms: TransformOptions

  func validate() throws {
    guard (input == nil) != (loader.data == nil) else { throw ValidationError("give the data set as --input (.npy) or --data (images), one of them") }
    guard labels == nil || input != nil else { throw ValidationError("--labels needs --input") }
  }

  func run() throws {
    try reportingErrors {
      let p = try Plan.load(plan)
      let g = p.eval
      let evaluator = try Evaluator(eval: g, threads: threads, maxMemory: memory.limit)
      evaluator.keepLogits = dumpLogits != nil
      let shape = Array(g.type(of: g.inputs[0].value).shape.dropFirst())
      let classes = g.type(of: g.outputs[0].value).shape[1], batch = g.type(of: g.inputs[0].value).shape[0]
      let data: BatchSource
      var images: ImageLoader?
      if let input {
        let set = try DataSet(images: input, labels: labels, imageShape: shape, classes: classes)
        data = TensorBatches(set, order: BatchOrder(count: set.count, batch: batch, shuffle: false, last: .pad, seed: 0))
      } else {
        // PATH/val when PATH holds train and val: evaluation reads the held-out split.
        let path = loader.data!, splits = ShardSet.isShardSpec(path) ? (path, nil) : ImageFolder.splits(path)
        images = try loader.evaluationLoader(
          try ImageSet.open(splits.1 ?? splits.0, classes: classes), transform: transforms, shape: shape, batch: batch)
        data = images!
      }
      defer { images?.shutdown() }
      let (loss, top1) = try evaluator.evaluate(data)
      let n = evaluator.lastCount
      let correct = Int((top1 * Double(n)).rounded())
      print(String(format: "loss %.5f  top-1 %.2f%% (%d/%d)  top-5 %.2f%%", loss, 100 * top1, correct, n, 100 * evaluator.lastTop5))
      if let note = data.takeEpochReport() { print(note) }
      let counts = evaluator.lastConfusion.map { $0.reduce(0, +) }
      if perClass {
        for (c, acc) in evaluator.lastPerClass.enumerated() {
          print(acc.map { String(format: "class %d  top-1 %6.2f%%  (%d samples)", c, 100 * $0, counts[c]) } ?? "class \(c)  no samples")
        }
      }
      if let log {
        let record: [String: Any] = [
          "loss": loss, "top1": top1, "top5": evaluator.lastTop5, "samples": n,
          "per_class": evaluator.lastPerClass.map { $0 as Any? ?? NSNull() }, "confusion": evaluator.lastConfusion,
        ]
        let json = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys])
        guard FileManager.default.createFile(atPath: log, contents: json + Data("\n".utf8)) else { throw PlanError("\(log): cannot write") }
      }
      if let dumpLogits {
        try NPYArray(f32: evaluator.lastLogits, shape: [n, evaluator.lastLogits.count / n]).write(dumpLogits)
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
