// SBPCLITests.swift: the SBP flags end to end: compile prints the mask it will draw, train draws it every step as DESIGN.md says.
import Foundation
import XCTest

/// The [H, W] bytes of a uint8 mask .npy written by `--dump-mask` (the data is the file's tail).
func maskBytes(_ path: String, count: Int) throws -> [UInt8] {
  let d = try Data(contentsOf: URL(fileURLWithPath: path))
  XCTAssertTrue(String(decoding: d.prefix(80), as: UTF8.self).contains("'|u1'"), path)
  return Array(d.suffix(count))
}

final class SBPCLITests: XCTestCase {
  func testCompilePrintsEffectiveKeepAndKeptRange() throws {
    let d = try tmp()
    let (s, out, err) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "1", "--keep", "0.3", "-o", d + "/v.plan"])
    XCTAssertEqual(s, 0, err)
    // Stride round(1/0.3) = 3 on 8x8: phases keep 22, 21, 21 patches.
    XCTAssertTrue(out.contains("SBP: keep 0.3 (grid), effective 0.3333; 21–22 of 64 patches kept per step"), out)
    XCTAssertTrue(out.contains("SBP blocks: 2,3,4,5"), out)
    let (s2, out2, _) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "1", "--keep", "1", "-o", d + "/p.plan"])
    XCTAssertEqual(s2, 0)
    XCTAssertTrue(out2.contains("SBP: off (--keep 1)"), out2)
  }

  /// 200 steps of a grid mask at keep 0.25 on the tiny ViT's 8x8 grid: every phase of stride 4
  /// turns up, each step's mask is one phase's grid, and 16 patches are kept every time.
  func testDumpMaskShowsEveryPhaseAndTheKeptCounts() throws {
    let d = try tmp()
    _ = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "1", "--keep", "0.25", "-o", d + "/v.plan"])
    let (s, _, err) = try sbpc(["train", d + "/v.plan", "--steps", "200", "--seed", "3", "--dump-mask", d + "/m"])
    XCTAssertEqual(s, 0, err)
    var phases = [Int: Int]()
    for step in 1...200 {
      let base = try maskBytes(d + "/m/step" + String(format: "%06d", step) + ".npy", count: 64)
      XCTAssertEqual(base.reduce(0) { $0 + Int($1) }, 16, "step \(step)")
      let phase = (0..<4).first { p in (0..<64).allSatisfy { i in (base[i] == 1) == ((i / 8 + i % 8) % 4 == p) } }
      XCTAssertNotNil(phase, "step \(step): not a stride-4 grid mask")
      phases[phase ?? -1, default: 0] += 1
      // The one stage's index input encodes the same mask.
      XCTAssertEqual(try maskBytes(d + "/m/step" + String(format: "%06d", step) + ".stage0.npy", count: 64), base)
    }
    XCTAssertEqual(Set(phases.keys), [0, 1, 2, 3], "\(phases)")
    XCTAssertTrue(phases.values.allSatisfy { $0 > 25 }, "phases are not drawn uniformly: \(phases)")
  }

  /// ConvNeXt: the mask is drawn on the deepest SBP stage (4x4) and every stage reads its block
  /// replication (16x16, 8x8, 4x4), so the same image region is dropped at every scale.
  func testConvNeXtStagesReadTheReplicatedMask() throws {
    let d = try tmp()
    _ = try sbpc(["compile", "models/convnext_t1131_ts17.onnx", "--batch", "1", "-o", d + "/c.plan"])
    let (s, _, err) = try sbpc(["train", d + "/c.plan", "--steps", "20", "--dump-mask", d + "/m"])
    XCTAssertEqual(s, 0, err)
    var phases = Set<Int>()
    for step in 1...20 {
      let stem = d + "/m/step" + String(format: "%06d", step)
      let base = try maskBytes(stem + ".npy", count: 16)
      XCTAssertEqual(base.reduce(0) { $0 + Int($1) }, 8)
      phases.insert(Int(base[0] == 1 ? 0 : 1))
      for (stage, side) in [(0, 16), (1, 8), (2, 4)] {
        let m = try maskBytes(stem + ".stage\(stage).npy", count: side * side)
        let f = side / 4
        for i in 0..<side {
          for j in 0..<side { XCTAssertEqual(m[i * side + j], base[(i / f) * 4 + j / f], "step \(step) stage \(stage)") }
        }
      }
    }
    XCTAssertEqual(phases, [0, 1])
  }

  func testMaskPhaseAndMaskFileFixTheMask() throws {
    let d = try tmp()
    _ = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "1", "-o", d + "/v.plan"])
    let (s, _, err) = try sbpc(["train", d + "/v.plan", "--steps", "3", "--mask-phase", "1", "--dump-mask", d + "/p"])
    XCTAssertEqual(s, 0, err)
    let ref = "models/reference/vit_p4_d6/sbp/qkv_grid0.5_p1/mask.npy"
    let want = try maskBytes(ref, count: 64)
    for step in 1...3 { XCTAssertEqual(try maskBytes(d + "/p/step00000\(step).npy", count: 64), want) }
    let (s2, _, err2) = try sbpc(["train", d + "/v.plan", "--steps", "2", "--mask-file", ref, "--dump-mask", d + "/f"])
    XCTAssertEqual(s2, 0, err2)
    XCTAssertEqual(try maskBytes(d + "/f/step000002.npy", count: 64), want)
  }

  /// Swift seeds its hashing per process: a pass that walked a dictionary would print a
  /// different plan in another process. Two compiles must write the same bytes.
  func testCompileIsDeterministicAcrossProcesses() throws {
    let d = try tmp()
    for model in ["models/vit_avg_p4_d4_ts17.onnx", "models/convnext_t1131_dynamo/model.onnx"] {
      var texts: [String] = []
      for k in 0..<2 {
        let (s, _, err) = try sbpc(["compile", model, "--batch", "2", "--attention", "query", "-o", d + "/p\(k).plan"])
        XCTAssertEqual(s, 0, err)
        texts.append(try String(contentsOfFile: d + "/p\(k).plan", encoding: .utf8))
      }
      XCTAssertEqual(texts[0], texts[1], model)
    }
  }

  /// `compile --max-memory` refuses a plan that does not fit and names a setting that does;
  /// `memory --dtype fp16` estimates another device's activations at two bytes.
  func testMaxMemorySuggestsAFitAndDtypeEstimates() throws {
    let d = try tmp()
    func total(_ extra: [String]) throws -> Double {
      let (s, out, err) = try sbpc(["memory", "models/vit_p4_d6_ts17.onnx", "--batch", "32", "--json"] + extra)
      XCTAssertEqual(s, 0, err)
      let j = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
      return (j["memory"] as! [String: Any])["totalBytes"] as! Double
    }
    // A limit between the default plan and keep 0.25 on every block: something smaller fits.
    let limit = Int((try total([]) + total(["--keep", "0.25", "--blocks", "all"])) / 2)
    let (s, _, err) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "32", "--max-memory", "\(limit)", "-o", d + "/v.plan"])
    XCTAssertEqual(s, 1)
    XCTAssertNotNil(err.range(of: #"more than --max-memory .*; --keep 0\.[0-9]+( --blocks all)? fits"#, options: .regularExpression), err)
    XCTAssertFalse(FileManager.default.fileExists(atPath: d + "/v.plan"))
    let fp32 = try total([]), fp16 = try total(["--dtype", "fp16"])
    XCTAssertLessThan(fp16, 0.75 * fp32)
  }

  /// `memory --dtype bf16` reports the plan `compile --precision bf16` makes: the report on the
  /// ONNX model, on the compiled plan file and compile's own `--memory-plan` are the same JSON,
  /// and its bytes are below fp32's. A plan keeps its precision: another one is refused.
  func testMemoryBF16IsThePlan() throws {
    let d = try tmp()
    let model = "models/vit_p4_d6_ts17.onnx"
    func report(_ args: [String]) throws -> String {
      let (s, out, err) = try sbpc(["memory"] + args + ["--json"])
      XCTAssertEqual(s, 0, err)
      return out
    }
    let estimate = try report([model, "--batch", "8", "--dtype", "bf16", "--compare"])
    let (s, _, err) = try sbpc(["compile", model, "--batch", "8", "--precision", "bf16", "-o", d + "/b.plan", "--memory-plan", d + "/m.json"])
    XCTAssertEqual(s, 0, err)
    XCTAssertEqual(estimate, try report([d + "/b.plan", "--compare"]))
    XCTAssertEqual(try report([model, "--batch", "8", "--dtype", "bf16"]), try String(contentsOfFile: d + "/m.json", encoding: .utf8))
    let j = try JSONSerialization.jsonObject(with: Data(estimate.utf8)) as! [String: Any]
    XCTAssertEqual(j["precision"] as? String, "bf16")
    XCTAssertNil(j["estimate"])
    let fp32 = try JSONSerialization.jsonObject(with: Data(try report([model, "--batch", "8", "--compare"]).utf8)) as! [String: Any]
    func saved(_ r: [String: Any]) -> Double { (r["cost"] as! [String: Any])["savedBytes"] as! Double }
    XCTAssertLessThanOrEqual(saved(j) / saved(fp32), 0.6)
    let (s2, _, err2) = try sbpc(["memory", d + "/b.plan", "--dtype", "fp32"])
    XCTAssertEqual(s2, 1)
    XCTAssertTrue(err2.contains("the plan computes in bf16, not fp32"), err2)
  }

  /// `memory --svg` writes the timeline: one band per category present, the boundary, the peak.
  func testMemoryTimelineSVG() throws {
    let d = try tmp()
    let (s, _, err) = try sbpc(["memory", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--svg", d + "/t.svg"])
    XCTAssertEqual(s, 0, err)
    let svg = try String(contentsOfFile: d + "/t.svg", encoding: .utf8)
    XCTAssertTrue(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
    XCTAssertTrue(svg.hasSuffix("</svg>\n"))
    XCTAssertGreaterThanOrEqual(svg.components(separatedBy: "<polygon").count - 1, 4)
    for label in ["saved for backward", "transient", "parameters", "forward", "backward", "peak "] {
      XCTAssertTrue(svg.contains(label), label)
    }
  }

  /// `compile --memory-plan FILE` writes the dump by extension: .svg, .json, or the table.
  func testCompileWritesTheMemoryPlanDump() throws {
    let d = try tmp()
    for (file, start) in [("m.svg", "<svg "), ("m.json", "{"), ("m.txt", "/")] {
      let (s, _, err) = try sbpc([
        "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/v.plan", "--memory-plan", d + "/" + file,
      ])
      XCTAssertEqual(s, 0, err)
      let text = try String(contentsOfFile: d + "/" + file, encoding: .utf8)
      XCTAssertTrue(text.hasPrefix(start), "\(file): \(text.prefix(40))")
    }
    let table = try String(contentsOfFile: d + "/m.txt", encoding: .utf8)
    XCTAssertTrue(table.contains("memory plan: arena") && table.contains("at the peak: saved for backward"), table)
  }
}

/// Issue 20: the design card's command works as typed, then `sbpc train` runs what it wrote.
final class DesignCardTests: XCTestCase {
  /// The `sbpc` lines of README.md's quick start, as words.
  func quickStart() throws -> [[String]] {
    let readme = try String(contentsOfFile: root + "/README.md", encoding: .utf8)
    guard let section = readme.components(separatedBy: "## Quick start").dropFirst().first,
      let block = section.components(separatedBy: "```sh\n").dropFirst().first?.components(separatedBy: "```").first
    else {
      XCTFail("README.md has no quick start with an sh block")
      return []
    }
    return block.split(separator: "\n").filter { $0.hasPrefix("sbpc ") }.map { $0.split(separator: " ").dropFirst().map(String.init) }
  }

  func testTheCardsCommandWritesModelPlanAndTrainRunsIt() throws {
    let lines = try quickStart()
    XCTAssertEqual(lines, [["compile", "model.onnx", "--keep", "0.5", "--blocks", "last:8"], ["train", "model.plan"]])
    guard lines.count == 2 else { return }
    let d = try tmp()
    try FileManager.default.copyItem(atPath: root + "/models/vit_p4_d6_ts17.onnx", toPath: d + "/model.onnx")
    let (s, out, err) = try sbpc(lines[0], in: d)
    XCTAssertEqual(s, 0, err)
    XCTAssertTrue(out.contains("compiled model.onnx -> model.plan"), out)
    XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/model.plan"))
    // The tiny ViT has 6 blocks: last:8 takes them all, and says so.
    XCTAssertTrue(err.contains("--blocks last:8: the model has 6 blocks; all 6 selected"), err)
    // What was saved, against --keep 1, by default; --quiet drops the line.
    let summary = out.split(separator: "\n").first { $0.hasPrefix("against --keep 1: memory ") }
    XCTAssertNotNil(summary, out)
    XCTAssertTrue(summary?.contains("saved activations") == true && summary?.contains("step FLOPs") == true, out)
    let (t, tout, terr) = try sbpc(lines[1] + ["--steps", "2"], in: d)
    XCTAssertEqual(t, 0, terr)
    XCTAssertTrue(tout.contains("step 2/2"), tout)
    // A second compile replaces the plan it wrote; --quiet leaves out the comparison.
    let (q, qout, qerr) = try sbpc(["compile", "model.onnx", "--quiet"], in: d)
    XCTAssertEqual(q, 0, qerr)
    XCTAssertFalse(qout.contains("against --keep 1"), qout)
  }

  /// The default output never replaces a file that is not a plan, and no output is the model.
  func testTheDefaultOutputRefusesToOverwriteOtherFiles() throws {
    let d = try tmp()
    try FileManager.default.copyItem(atPath: root + "/models/vit_p4_d6_ts17.onnx", toPath: d + "/model.onnx")
    try Data("my notes\n".utf8).write(to: URL(fileURLWithPath: d + "/model.plan"))
    let (s, out, err) = try sbpc(["compile", "model.onnx", "--batch", "1"], in: d)
    XCTAssertEqual(s, 1)
    XCTAssertEqual(out, "")
    XCTAssertTrue(err.hasSuffix("sbpc: error: model.plan: exists and is not an sbpc plan; not overwriting it (give -o PATH)\n"), err)
    XCTAssertEqual(try String(contentsOfFile: d + "/model.plan", encoding: .utf8), "my notes\n")
    let before = try Data(contentsOf: URL(fileURLWithPath: d + "/model.onnx"))
    let (s2, _, err2) = try sbpc(["compile", "model.onnx", "--batch", "1", "-o", "./model.onnx"], in: d)
    XCTAssertEqual(s2, 1)
    XCTAssertTrue(err2.contains("./model.onnx: is the model itself"), err2)
    XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: d + "/model.onnx")), before)
  }
}

/// `compile` and `opt --passes` build their passes from one registry with one set of typed
/// options, so the same flags give the same training step.
final class OnePipelineTests: XCTestCase {
  func testOptRunsTheSamePassesAsCompile() throws {
    let d = try tmp()
    let passes = "canonicalize,mark,batch-norm-train,insert-sbp,dead-rows,autodiff,prune-backward,remat,schedule,plan-memory"
    for flags in [["--keep", "0.5"], ["--keep", "0.25", "--attention", "query", "--blocks", "last:2"]] {
      let (s, _, err) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/v.plan", "--quiet"] + flags)
      XCTAssertEqual(s, 0, err)
      let plan = try String(contentsOfFile: d + "/v.plan", encoding: .utf8)
      let train = plan.components(separatedBy: "== train\n")[1].components(separatedBy: "== eval\n")[0]
      let (o, out, oerr) = try sbpc(["opt", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--passes", passes] + flags)
      XCTAssertEqual(o, 0, oerr)
      XCTAssertEqual(out, train, "\(flags)")
    }
  }
}
