// Fuzz.swift: fuzz targets for the ONNX importer, the text-IR parser, the plan loader and the image data path.
//
// Built with `make fuzz` (-DFUZZING -sanitize=fuzzer,address) it is a libFuzzer binary; the
// target comes from SBPC_FUZZ_TARGET (onnx, ir, plan or data). Built normally it replays files:
// `sbpc-fuzz TARGET FILE...`, which is how a finding becomes a regression test.
// Beyond "no crash", each target checks a property: whatever is accepted must print, parse
// back and print byte-identically, and the passes must keep it verifiable.
import CFuzzerDriver
import Foundation
import SBPData
import SBPIR
import SBPONNX
import SBPPasses
import SBPPlan

enum FuzzTarget: String {
  case onnx, ir, plan, data
}

/// The data target's transforms, one per mode, made once (their memory is reused, as a
/// loader worker's is).
let transforms: [ImageTransform] = TransformConfig.Mode.allCases.map { mode in
  var c = TransformConfig()
  (c.mode, c.height, c.width) = (mode, 16, 16)
  return try! ImageTransform(c)
}

/// An image's bytes through both transforms: whatever decodes must come out finite.
func transformImage(_ bytes: UnsafeRawBufferPointer) {
  var out = [Float](repeating: 0, count: 3 * 16 * 16)
  for t in transforms {
    let rng = ImageTransform.generator(seed: 1, epoch: 0, index: bytes.count)
    do {
      try out.withUnsafeMutableBufferPointer { try t.apply(bytes, rng: rng, into: $0.baseAddress!) }
      property(out.allSatisfy(\.isFinite), "a decoded image transforms to non-finite values")
    } catch is ImageError {
    } catch { property(false, "the image path threw \(error), not an ImageError") }
  }
}

/// Scratch file per process, for the loaders that take a path.
let scratch: String = {
  let d = NSTemporaryDirectory() + "sbpc-fuzz-\(getpid())"
  try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
  return d
}()

func property(_ ok: Bool, _ what: String) {
  if !ok { fatalError("fuzz property violated: \(what)") }
}

/// Round trip and passes on a graph some loader accepted.
func exercise(_ g: Graph) {
  let text = g.printed()
  guard let back = try? parseGraph(text) else { return property(false, "printed IR does not parse back") }
  property(back.printed() == text, "print -> parse -> print is not identical")
  var h = g
  do {
    try Canonicalize().run(&h)
    try Mark().run(&h)
    try h.verify()
    _ = BlockTable(h)
  } catch is IRError {
  } catch is PassError {
  } catch {}
}

func runOne(_ target: FuzzTarget, _ bytes: Data) {
  switch target {
  case .onnx:
    let path = scratch + "/model.onnx"
    _ = FileManager.default.createFile(atPath: path, contents: bytes)
    if let m = try? importONNX(path: path, options: ImportOptions(batch: 2)) { exercise(m.graph) }
  case .ir:
    if let g = try? parseGraph(String(decoding: bytes, as: UTF8.self)) {
      try? g.verify()
      exercise(g)
    }
  case .plan:
    let path = scratch + "/model.plan"
    // Half the inputs get a correct checksum, so mutations reach the parser and validator
    // behind it instead of stopping at the checksum.
    _ = FileManager.default.createFile(atPath: path, contents: (bytes.last ?? 0) & 1 == 0 ? Plan.resealed(bytes) : bytes)
    if let p = try? Plan.load(path) {
      exercise(p.eval)
      property(p.serialized().hasPrefix("sbpc-plan "), "a loaded plan serializes")
    }
  case .data:
    // The first byte picks the reader: even, the rest is a WebDataset shard whose samples'
    // images are transformed; odd, the rest is one image file.
    guard let mode = bytes.first else { return }
    let rest = Array(bytes.dropFirst())
    if mode & 1 == 1 { return rest.withUnsafeBytes(transformImage) }
    let reader = SampleReader(TarReader(MemoryByteStream(rest), name: "fuzz.tar"), name: "fuzz.tar")
    var image: [UInt8] = []
    for _ in 0..<64 {
      guard let sample = try? reader.next(into: &image) else { return }
      property(sample.label >= 0, "a negative label was accepted")
      image.withUnsafeBytes(transformImage)
    }
  }
}

@main
enum FuzzMain {
  static func main() {
    #if FUZZING
      // SwiftPM links an executable's entry point itself, so run libFuzzer's driver from here.
      var argc = CommandLine.argc
      var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
      exit(
        LLVMFuzzerRunDriver(&argc, &argv) { data, size in
          // The target is read per input: a C callback cannot capture it.
          let t = FuzzTarget(rawValue: ProcessInfo.processInfo.environment["SBPC_FUZZ_TARGET"] ?? "") ?? .onnx
          runOne(t, data.map { Data(bytes: $0, count: size) } ?? Data())
          return 0
        })
    #else
      replay()
    #endif
  }

  /// `sbpc-fuzz TARGET FILE...`: runs each file through the target once.
  static func replay() {
    let args = CommandLine.arguments.dropFirst()
    guard let t = args.first.flatMap(FuzzTarget.init(rawValue:)), args.count >= 2 else {
      FileHandle.standardError.write(Data("usage: sbpc-fuzz onnx|ir|plan FILE...\n".utf8))
      exit(2)
    }
    for f in args.dropFirst() {
      guard let d = FileManager.default.contents(atPath: f) else {
        FileHandle.standardError.write(Data("sbpc-fuzz: cannot read \(f)\n".utf8))
        exit(2)
      }
      runOne(t, d)
    }
    print("replayed \(args.count - 1) input(s): no crash")
  }
}
