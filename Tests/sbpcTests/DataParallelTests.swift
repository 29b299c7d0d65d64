// DataParallelTests.swift: mpirun -np 2 against one process at twice the batch, a rank killed mid-run, ranks that disagree.
import Foundation
import XCTest

/// mpirun on this machine, or nil (CI installs Open MPI with `make deps`, so there it must exist).
func mpirunPath() -> String? {
  let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":").map(String.init) + ["/usr/bin"]
  return dirs.map { $0 + "/mpirun" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// Runs `mpirun` with two ranks of sbpc (or one rank per context, as MPMD contexts),
/// one thread each, on loopback only; `--allow-run-as-root` through the environment, so
/// the tests run in containers too.
func mpirun(_ contexts: [[String]]) throws -> (Int32, String, String) {
  guard let launcher = mpirunPath() else { throw XCTSkip("mpirun not found (make deps installs openmpi-bin)") }
  var args = ["--oversubscribe", "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]
  for (i, c) in contexts.enumerated() {
    if i > 0 { args.append(":") }
    args += ["-np", contexts.count == 1 ? "2" : "1", sbpcBinary()] + c
  }
  var env = ProcessInfo.processInfo.environment
  env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
  env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
  return try runProcess(URL(fileURLWithPath: launcher), args, in: root, environment: env)
}

/// A checkpoint's tensors by name (the format `Checkpoint` writes: two header lines, then bytes).
func checkpointTensors(_ dir: String) throws -> [String: [Float]] {
  let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/checkpoint.sbpck"))
  let nl1 = bytes.firstIndex(of: 10)!, nl2 = bytes[(nl1 + 1)...].firstIndex(of: 10)!
  let header = try JSONSerialization.jsonObject(with: bytes[(nl1 + 1)..<nl2]) as! [String: Any]
  var off = nl2 + 1, out: [String: [Float]] = [:]
  for t in header["tensors"] as! [[String: Any]] {
    let n = t["bytes"] as! Int
    out[t["name"] as! String] = bytes[off..<(off + n)].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    off += n
  }
  return out
}

/// The largest difference between two checkpoints' tensors, each relative to its tensor's
/// largest magnitude.
func largestDifference(_ a: [String: [Float]], _ b: [String: [Float]]) -> (Double, String) {
  var worst = (0.0, "")
  for (name, x) in a {
    guard let y = b[name], y.count == x.count else { return (.infinity, name) }
    let scale = Double(x.map { abs($0) }.max() ?? 0) + 1e-12
    let d = zip(x, y).map { Double(abs($0 - $1)) }.max() ?? 0
    if d / scale > worst.0 { worst = (d / scale, name) }
  }
  return worst
}

func losses(_ out: String) -> [Double] { out.split(separator: "\n").compactMap { Double($0) } }

final class DataParallelTests: XCTestCase {
  /// The bar: 3 steps of the tiny ViT (SBP) on 2 ranks at batch 4 against one process at
  /// batch 8. Small buckets, so that reductions overlap the backward; replicas checked
  /// bit-identical after every step (--check-numerics). Then a data set over 2 shuffled
  /// epochs with a sharded evaluation.
  func testTwoRanksEqualOneProcessAtTwiceTheBatch() throws {
    let d = try tmp()
    for (batch, extra) in [("4", ["--distributed", "--bucket-mb", "0.1"]), ("8", [])] {
      let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", batch, "--keep", "0.5", "-o", d + "/b\(batch).plan"] + extra)
      XCTAssertEqual(s, 0, e)
    }
    let common = ["--steps", "3", "--threads", "1", "--dump-loss"]
    let (s2, out2, err2) = try mpirun([["train", d + "/b4.plan", "--check-numerics", "--checkpoint", d + "/two"] + common])
    XCTAssertEqual(s2, 0, err2)
    XCTAssertTrue(out2.contains("2 ranks × batch 4 = global batch 8") && out2.contains("allreduce buckets"), out2)
    let (s1, out1, err1) = try sbpc(["train", d + "/b8.plan", "--checkpoint", d + "/one"] + common)
    XCTAssertEqual(s1, 0, err1)
    let (l2, l1) = (losses(out2), losses(out1))
    XCTAssertEqual(l2.count, 3, "rank 0 alone prints: \(out2)")
    XCTAssertEqual(l1.count, 3)
    for (a, b) in zip(l2, l1) { XCTAssertLessThan(abs(a - b) / abs(b), 1e-5, "losses \(l2) vs \(l1)") }
    let (worst, name) = largestDifference(try checkpointTensors(d + "/one"), try checkpointTensors(d + "/two"))
    XCTAssertLessThan(worst, 1e-5, "@\(name)")

    // A data set: shuffled epochs cut into global batches, and an evaluation of all 13
    // validation samples shared between the ranks (with padding on both).
    try writeDataSet(d, "train", count: 20, seed: 3)
    try writeDataSet(d, "val", count: 13, seed: 4)
    let data = [
      "--input", d + "/train_x.npy", "--labels", d + "/train_y.npy", "--epochs", "2", "--val", d + "/val_x.npy", d + "/val_y.npy",
      "--threads", "1",
    ]
    let (t2, o2, e2) = try mpirun([["train", d + "/b4.plan", "--log", d + "/two.jsonl"] + data])
    XCTAssertEqual(t2, 0, e2)
    let (t1, o1, e1) = try sbpc(["train", d + "/b8.plan", "--log", d + "/one.jsonl"] + data)
    XCTAssertEqual(t1, 0, e1)
    XCTAssertTrue(o2.contains("epoch 2/2") && o1.contains("epoch 2/2"), o2)
    let (r2, r1) = (try logRecords(d + "/two.jsonl"), try logRecords(d + "/one.jsonl"))
    XCTAssertEqual(r2.count, r1.count)
    for (a, b) in zip(r2, r1) {
      XCTAssertEqual(a["kind"] as? String, b["kind"] as? String)
      let (x, y) = (a["loss"] as! Double, b["loss"] as! Double)
      XCTAssertLessThan(abs(x - y) / abs(y), 1e-5, "\(a) vs \(b)")
      if a["kind"] as? String == "eval" {
        XCTAssertEqual(a["top1"] as? Double, b["top1"] as? Double)
        XCTAssertEqual((a["confusion"] as? [[Int]])?.joined().reduce(0, +), 13, "every validation sample once")
      }
    }
  }

  /// An image folder (with its val split) and WebDataset shards (streams, shuffled through a
  /// buffer): each rank decodes its part of every global batch, and the losses are one
  /// process's at twice the batch.
  func testImageFoldersAndShardsSplitTheSameWay() throws {
    let d = try tmp()
    for (batch, extra) in [("2", ["--distributed"]), ("4", [])] {
      let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", batch, "-o", d + "/b\(batch).plan"] + extra)
      XCTAssertEqual(s, 0, e)
    }
    for data in ["Tests/Fixtures/images/jpeg", "Tests/Fixtures/images/shards/train-{000,001}.tar"] {
      let run = ["--data", data, "--epochs", "2", "--threads", "1", "--dump-loss"]
      let (s2, out2, err2) = try mpirun([["train", d + "/b2.plan"] + run])
      XCTAssertEqual(s2, 0, err2)
      let (s1, out1, err1) = try sbpc(["train", d + "/b4.plan"] + run)
      XCTAssertEqual(s1, 0, err1)
      XCTAssertFalse(losses(out1).isEmpty)
      XCTAssertEqual(losses(out2).count, losses(out1).count, out2)
      for (a, b) in zip(losses(out2), losses(out1)) { XCTAssertLessThan(abs(a - b) / abs(b), 1e-5, "\(data): \(out2) vs \(out1)") }
      let epochs = { (o: String) in o.split(separator: "\n").filter { $0.hasPrefix("epoch") } }
      XCTAssertEqual(epochs(out2), epochs(out1), data)
    }
  }

  /// --sync-bn: BatchNorm over the global batch makes 2 ranks equal one process even for a
  /// BatchNorm net, running statistics included.
  func testSyncBatchNormEqualsOneProcess() throws {
    let d = try tmp()
    let model = "models/families/resnet18/model_ts17.onnx"
    for (batch, extra) in [("2", ["--distributed"]), ("4", [])] {
      let (s, _, e) = try sbpc(["compile", model, "--batch", batch, "-o", d + "/b\(batch).plan"] + extra)
      XCTAssertEqual(s, 0, e)
    }
    let common = ["--steps", "3", "--threads", "1", "--dump-loss"]
    let (s2, out2, err2) = try mpirun([["train", d + "/b2.plan", "--sync-bn", "--checkpoint", d + "/two"] + common])
    XCTAssertEqual(s2, 0, err2)
    let (s1, out1, err1) = try sbpc(["train", d + "/b4.plan", "--checkpoint", d + "/one"] + common)
    XCTAssertEqual(s1, 0, err1)
    for (a, b) in zip(losses(out2), losses(out1)) { XCTAssertLessThan(abs(a - b) / abs(b), 1e-5, "\(out2) vs \(out1)") }
    let one = try checkpointTensors(d + "/one")
    XCTAssertTrue(one.keys.contains { $0.hasSuffix("running_var") })
    let (worst, name) = largestDifference(one, try checkpointTensors(d + "/two"))
    XCTAssertLessThan(worst, 1e-5, "@\(name)")
  }

  /// A rank killed at step 4 stops the job: rank 0 says so in one line and names the whole
  /// checkpoint (step 3); resuming with the same command ends bit for bit where an
  /// uninterrupted run does.
  func testKilledRankStopsTheJobAndResumeIsExact() throws {
    let d = try tmp()
    let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--distributed", "-o", d + "/p.plan"])
    XCTAssertEqual(s, 0, e)
    let run = ["train", d + "/p.plan", "--steps", "6", "--threads", "1", "--checkpoint-every", "1"]
    let (k, kout, kerr) = try mpirun([run + ["--checkpoint", d + "/ck", "--kill-rank-at", "1:4"]])
    XCTAssertNotEqual(k, 0)
    XCTAssertTrue(kout.contains("step 3/6") && !kout.contains("step 4/6"), kout)
    let notes = kerr.split(separator: "\n").filter { $0.hasPrefix("sbpc: error:") }
    XCTAssertEqual(notes.count, 1, kerr)
    XCTAssertTrue(notes.first?.contains("another rank ended") == true && notes.first?.contains("(step 3) is whole") == true, kerr)
    let (r, rout, rerr) = try mpirun([run + ["--checkpoint", d + "/ck", "--resume", d + "/ck"]])
    XCTAssertEqual(r, 0, rerr)
    XCTAssertTrue(rout.contains("step 4/6") && rout.contains("step 6/6"), rout)
    let (f, _, ferr) = try mpirun([run + ["--checkpoint", d + "/full"]])
    XCTAssertEqual(f, 0, ferr)
    XCTAssertEqual(
      try Data(contentsOf: URL(fileURLWithPath: d + "/ck/checkpoint.sbpck")),
      try Data(contentsOf: URL(fileURLWithPath: d + "/full/checkpoint.sbpck")))

    // The global batch decides: one process at batch 8 may continue the 2 × 4 run; at 4 not.
    let (s8, _, e8) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "8", "-o", d + "/p8.plan"])
    XCTAssertEqual(s8, 0, e8)
    let (c, cout, cerr) = try sbpc(["train", d + "/p8.plan", "--steps", "7", "--resume", d + "/full"])
    XCTAssertEqual(c, 0, cerr)
    XCTAssertTrue(cout.contains("step 7/7"), cout)
    let (w, wout, werr) = try sbpc(["train", d + "/p.plan", "--steps", "7", "--resume", d + "/full"])
    XCTAssertEqual(w, 1)
    XCTAssertEqual(wout, "")
    XCTAssertTrue(werr.contains("global batch of 8, this one is 4"), werr)
  }

  /// Ranks started with different flags, or a plan compiled for one process: one line
  /// before any step.
  func testRanksThatDisagreeAreRefusedBeforeAnyStep() throws {
    let d = try tmp()
    let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--distributed", "-o", d + "/p.plan"])
    XCTAssertEqual(s, 0, e)
    let run = ["train", d + "/p.plan", "--steps", "2", "--threads", "1"]
    let (m, mout, merr) = try mpirun([run + ["--seed", "1"], run + ["--seed", "2"]])
    XCTAssertNotEqual(m, 0)
    XCTAssertFalse(mout.contains("step 1"), mout)
    let lines = merr.split(separator: "\n").filter { $0.hasPrefix("sbpc:") }
    XCTAssertEqual(lines.count, 1, merr)
    XCTAssertTrue(lines.first?.contains("--seed differs (rank 0: 1; rank 1: 2)") == true, merr)

    let (s1, _, e1) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/one.plan"])
    XCTAssertEqual(s1, 0, e1)
    let (o, oout, oerr) = try mpirun([["train", d + "/one.plan", "--steps", "2", "--threads", "1"]])
    XCTAssertNotEqual(o, 0)
    XCTAssertFalse(oout.contains("step 1"), oout)
    let refusals = oerr.split(separator: "\n").filter { $0.hasPrefix("sbpc:") }
    XCTAssertEqual(refusals.count, 1, oerr)
    XCTAssertTrue(refusals.first?.contains("compile it with --distributed") == true, oerr)

    // --distributed off: each process trains alone, and a one-process plan is fine.
    let (a, aout, aerr) = try mpirun([["train", d + "/one.plan", "--steps", "1", "--threads", "1", "--distributed", "off"]])
    XCTAssertEqual(a, 0, aerr)
    XCTAssertEqual(aout.components(separatedBy: "step 1/1").count - 1, 2, aout)
  }
}

final class PrecisionCLITests: XCTestCase {
  /// compile --precision bf16 makes a plan whose products are bf16 and whose saved copies
  /// for them are casts; train runs it and says once which kernel multiplies; the losses
  /// stay within a percent of the fp32 plan's.
  func testBF16PlanCompilesTrainsAndSaysItsKernel() throws {
    let d = try tmp()
    for p in ["fp32", "bf16"] {
      let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--precision", p, "-o", d + "/\(p).plan", "--quiet"])
      XCTAssertEqual(s, 0, e)
    }
    let text = try String(contentsOfFile: d + "/bf16.plan", encoding: .utf8)
    XCTAssertTrue(text.contains("cast(") && text.contains("bf16[") && text.contains("mp.precision"))
    let (s1, out1, err1) = try sbpc(["train", d + "/bf16.plan", "--steps", "3", "--dump-loss", "--threads", "1"])
    XCTAssertEqual(s1, 0, err1)
    XCTAssertEqual(err1.components(separatedBy: "bf16 products on the").count - 1, 1, err1)
    let (s2, out2, err2) = try sbpc(["train", d + "/fp32.plan", "--steps", "3", "--dump-loss", "--threads", "1"])
    XCTAssertEqual(s2, 0, err2)
    XCTAssertFalse(err2.contains("bf16"))
    let (b, f) = (losses(out1), losses(out2))
    XCTAssertEqual(b.count, 3)
    for (x, y) in zip(b, f) { XCTAssertLessThan(abs(x - y) / y, 0.01, "\(b) vs \(f)") }
    XCTAssertNotEqual(b, f, "the bf16 plan computed in fp32")
  }
}
