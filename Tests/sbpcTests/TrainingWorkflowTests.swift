// TrainingWorkflowTests.swift: epochs over a data set, validation, the JSON log, schedules, clipping, checkpoints and bit-exact resume.
import Foundation
import XCTest

/// Writes a little-endian .npy file (f32 or i64, C order).
func writeNPY(_ path: String, descr: String, shape: [Int], bytes: Data) throws {
  let dims = shape.map(String.init).joined(separator: ", ") + (shape.count == 1 ? "," : "")
  var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': (\(dims)), }"
  while (10 + header.utf8.count + 1) % 64 != 0 { header += " " }
  header += "\n"
  var d = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
  d.append(contentsOf: [UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)])
  d.append(Data(header.utf8))
  d.append(bytes)
  try d.write(to: URL(fileURLWithPath: path))
}

/// A seeded data set for the tiny ViT (3×32×32 images, 10 classes) as X/Y .npy files.
func writeDataSet(_ dir: String, _ name: String, count: Int, seed: UInt64) throws {
  var state = seed &+ 0x9E37_79B9_7F4A_7C15
  func next() -> UInt64 {
    state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
    return state >> 11
  }
  let xs = (0..<(count * 3 * 32 * 32)).map { _ in Float(Int(next() % 2001) - 1000) / 1000 }
  let ys = (0..<count).map { _ in Int64(next() % 10) }
  try writeNPY(dir + "/\(name)_x.npy", descr: "<f4", shape: [count, 3, 32, 32], bytes: xs.withUnsafeBytes { Data($0) })
  try writeNPY(dir + "/\(name)_y.npy", descr: "<i8", shape: [count], bytes: ys.withUnsafeBytes { Data($0) })
}

/// The JSON objects of a `--log` file.
func logRecords(_ path: String) throws -> [[String: Any]] {
  try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
    try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
  }
}

final class TrainingWorkflowTests: XCTestCase {
  /// 7 samples at batch 2: padding the last batch gives 4 steps an epoch, dropping it 3; each
  /// epoch ends with one evaluation of all 5 validation samples.
  func testEpochsLastBatchValidationAndLog() throws {
    let d = try tmp()
    try writeDataSet(d, "train", count: 7, seed: 1)
    try writeDataSet(d, "val", count: 5, seed: 2)
    let (s0, _, e0) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/p.plan"])
    XCTAssertEqual(s0, 0, e0)
    for (policy, perEpoch) in [("pad", 4), ("drop", 3)] {
      let (s, out, err) = try sbpc([
        "train", d + "/p.plan", "--input", d + "/train_x.npy", "--labels", d + "/train_y.npy", "--epochs", "2", "--last-batch", policy,
        "--val", d + "/val_x.npy", d + "/val_y.npy", "--lr-schedule", "cosine", "--warmup", "2", "--log", d + "/\(policy).jsonl",
      ])
      XCTAssertEqual(s, 0, err)
      XCTAssertTrue(out.contains("epoch 2/2") && out.contains("top-1"), out)
      let records = try logRecords(d + "/\(policy).jsonl")
      let steps = records.filter { $0["kind"] as? String == "step" }, evals = records.filter { $0["kind"] as? String == "eval" }
      XCTAssertEqual(steps.count, 2 * perEpoch, policy)
      XCTAssertEqual(evals.map { $0["step"] as? Int }, [perEpoch, 2 * perEpoch], policy)
      // Warm-up then cosine: the rate rises over 2 steps, peaks at the plan's 0.01, falls.
      let lrs = steps.map { $0["lr"] as! Double }
      XCTAssertEqual(lrs[0], 0.005, accuracy: 1e-12)
      XCTAssertEqual(lrs[1], 0.01, accuracy: 1e-12)
      XCTAssertLessThan(lrs.last!, lrs[2])
      for e in evals {
        let top1 = e["top1"] as! Double
        XCTAssertTrue((0...1).contains(top1) && (top1 * 5).rounded() == top1 * 5, "top-1 \(top1) is not k/5")
      }
    }
  }

  /// An uninterrupted run and a run killed in the middle of its second checkpoint, then
  /// resumed from its first, end with byte-identical weights and optimizer state; the kill
  /// left the first checkpoint intact.
  func testKilledMidCheckpointThenResumedEqualsUninterrupted() throws {
    let d = try tmp()
    try writeDataSet(d, "train", count: 9, seed: 3)
    let (s0, _, e0) = try sbpc([
      "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--optimizer", "adamw", "--lr", "0.001", "-o", d + "/p.plan",
    ])
    XCTAssertEqual(s0, 0, e0)
    let common = [
      "train", d + "/p.plan", "--input", d + "/train_x.npy", "--labels", d + "/train_y.npy", "--epochs", "3", "--seed", "5",
      "--lr-schedule", "cosine", "--warmup", "3",
    ]
    let (s1, _, e1) = try sbpc(common + ["--checkpoint", d + "/whole"])
    XCTAssertEqual(s1, 0, e1)
    let whole = try Data(contentsOf: URL(fileURLWithPath: d + "/whole/checkpoint.sbpck"))
    // A checkpoint of this plan is ~3.7 MB: dying at 5 MB is inside the second save.
    let (s2, _, _) = try sbpc(common + ["--checkpoint", d + "/cut", "--checkpoint-every", "5", "--checkpoint-crash-after", "5000000"])
    XCTAssertNotEqual(s2, 0)
    let kept = try Data(contentsOf: URL(fileURLWithPath: d + "/cut/checkpoint.sbpck"))
    XCTAssertTrue(String(decoding: kept.prefix(200), as: UTF8.self).contains("\"step\":5"), "the step-5 checkpoint should survive")
    let (s3, out3, e3) = try sbpc(common + ["--checkpoint", d + "/cut", "--resume", d + "/cut"])
    XCTAssertEqual(s3, 0, e3)
    XCTAssertTrue(out3.contains("7 steps in"), out3)  // 12 steps in all, 5 done before
    let resumed = try Data(contentsOf: URL(fileURLWithPath: d + "/cut/checkpoint.sbpck"))
    XCTAssertEqual(resumed, whole, "resumed run differs from the uninterrupted one")
    XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: d + "/cut").contains { $0.contains(".tmp-") })
    // Resuming with another seed would replay other masks and data: refused.
    let (s4, _, e4) = try sbpc(common.map { $0 == "5" ? "6" : $0 } + ["--resume", d + "/cut"])
    XCTAssertEqual(s4, 1)
    XCTAssertTrue(e4.contains("resume it with the same seed"), e4)
  }

  /// Clipping needs the whole gradient before any update, so a fused plan is refused; on an
  /// unfused plan a tight norm changes the step and the log shows the norm before clipping.
  func testGradientClipping() throws {
    let d = try tmp()
    try writeDataSet(d, "train", count: 4, seed: 4)
    _ = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "-o", d + "/fused.plan"])
    _ = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--no-fuse-optimizer", "-o", d + "/unfused.plan"])
    let data = ["--input", d + "/train_x.npy", "--labels", d + "/train_y.npy", "--steps", "3", "--dump-loss"]
    let (s1, _, e1) = try sbpc(["train", d + "/fused.plan", "--clip-grad-norm", "1"] + data)
    XCTAssertEqual(s1, 1)
    XCTAssertTrue(e1.contains("--no-fuse-optimizer"), e1)
    let (s2, plain, e2) = try sbpc(["train", d + "/unfused.plan"] + data)
    XCTAssertEqual(s2, 0, e2)
    let (s3, clipped, e3) = try sbpc(["train", d + "/unfused.plan", "--clip-grad-norm", "0.01", "--log", d + "/c.jsonl"] + data)
    XCTAssertEqual(s3, 0, e3)
    let p = plain.split(separator: "\n"), c = clipped.split(separator: "\n")
    XCTAssertEqual(p[0], c[0], "the first loss comes before any update")
    XCTAssertNotEqual(p[2], c[2], "clipping to 0.01 should change later losses")
    let norms = try logRecords(d + "/c.jsonl").compactMap { $0["grad_norm"] as? Double }
    XCTAssertEqual(norms.count, 3)
    XCTAssertTrue(norms.allSatisfy { $0 > 0.01 }, "\(norms)")
  }

  /// `sbpc export` writes the trained weights into the original graph (external data as one
  /// new file beside the output): compiled again, its evaluation is the training run's.
  func testExportedModelEvaluatesAsTrained() throws {
    let d = try tmp()
    try writeDataSet(d, "train", count: 6, seed: 7)
    try writeDataSet(d, "val", count: 5, seed: 8)
    for (i, model) in ["models/vit_p4_d6_ts17.onnx", "models/vit_p4_d6_dynamo/model.onnx"].enumerated() {
      _ = try sbpc(["compile", model, "--batch", "2", "-o", d + "/t\(i).plan"])
      let (s1, out1, e1) = try sbpc([
        "train", d + "/t\(i).plan", "--input", d + "/train_x.npy", "--labels", d + "/train_y.npy", "--epochs", "1",
        "--val", d + "/val_x.npy", d + "/val_y.npy", "--checkpoint", d + "/ck\(i)",
      ])
      XCTAssertEqual(s1, 0, e1)
      let trainedVal = out1.split(separator: "\n").first { $0.hasPrefix("epoch 1/1") }.map { String($0.split(separator: "val ").last!) }
      let (s2, _, e2) = try sbpc(["export", d + "/t\(i).plan", "--weights", d + "/ck\(i)", "-o", d + "/out\(i).onnx"])
      XCTAssertEqual(s2, 0, e2)
      XCTAssertEqual(
        FileManager.default.fileExists(atPath: d + "/out\(i).onnx.data"), i == 1, "external data only where the original had it")
      _ = try sbpc(["compile", d + "/out\(i).onnx", "--batch", "2", "--keep", "1", "-o", d + "/e\(i).plan"])
      let (s3, out3, e3) = try sbpc(["eval", d + "/e\(i).plan", "--input", d + "/val_x.npy", "--labels", d + "/val_y.npy"])
      XCTAssertEqual(s3, 0, e3)
      // "loss L  top-1 T% (k/5)" from eval, "loss L  top-1 T%" after "val " in training.
      XCTAssertNotNil(trainedVal)
      XCTAssertTrue(
        out3.hasPrefix(trainedVal ?? "-"), "\(model): eval of the export '\(out3)' differs from training's '\(trainedVal ?? "")'")
    }
  }

  /// A tied initializer trains as one copy per layer, and `sbpc export` writes each copy as
  /// an initializer of its own that its layer reads: the exported model has no tie left.
  func testUntiedCopiesAreExported() throws {
    let d = try tmp()
    let (s1, _, e1) = try sbpc(["compile", "Tests/Fixtures/ok_shared_identity.onnx", "--batch", "2", "-o", d + "/t.plan"])
    XCTAssertEqual(s1, 0, e1)
    XCTAssertTrue(e1.contains("warning: initializer 'W' feeds 2 layers"), e1)
    let (s2, _, e2) = try sbpc(["train", d + "/t.plan", "--steps", "3", "--checkpoint", d + "/ck"])
    XCTAssertEqual(s2, 0, e2)
    let (s3, out3, e3) = try sbpc(["export", d + "/t.plan", "--weights", d + "/ck", "-o", d + "/out.onnx"])
    XCTAssertEqual(s3, 0, e3)
    XCTAssertTrue(out3.contains("3 trained initializers"), out3)
    let (s4, out4, e4) = try sbpc(["inspect", d + "/out.onnx", "--batch", "2"])
    XCTAssertEqual(s4, 0, e4)
    XCTAssertFalse(e4.contains("warning"), e4)
    XCTAssertTrue(out4.contains("W.copy1"), out4)
  }

  /// `--num-classes` replaces the classifier with a seeded fresh one: the plan finds the same
  /// weights again when it loads (same first loss for the same seed, another for another),
  /// training runs, and `sbpc export` writes the new head and output size.
  func testNumClassesReplacesTheHead() throws {
    let d = try tmp()
    func firstLoss(_ seed: Int, _ name: String) throws -> String {
      let (s, _, e) = try sbpc([
        "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--keep", "1", "--num-classes", "3", "--seed", "\(seed)", "-o", d + "/\(name).plan",
      ])
      XCTAssertEqual(s, 0, e)
      XCTAssertTrue(e.contains("the classifier '/head/Gemm' now has 3 outputs (was 10)"), e)
      let (s2, out, e2) = try sbpc(["train", d + "/\(name).plan", "--steps", "2", "--dump-loss", "--checkpoint", d + "/ck_\(name)"])
      XCTAssertEqual(s2, 0, e2)
      return String(out.split(separator: "\n").first ?? "")
    }
    let a = try firstLoss(7, "a"), b = try firstLoss(7, "b"), c = try firstLoss(8, "c")
    XCTAssertEqual(a, b, "the same seed gives the same head")
    XCTAssertNotEqual(a, c, "another seed, another head")
    let (s3, _, e3) = try sbpc(["export", d + "/a.plan", "--weights", d + "/ck_a", "-o", d + "/out.onnx"])
    XCTAssertEqual(s3, 0, e3)
    let (s4, out4, e4) = try sbpc(["inspect", d + "/out.onnx", "--batch", "2"])
    XCTAssertEqual(s4, 0, e4)
    XCTAssertTrue(out4.contains("head.weight") && out4.contains("f32[3,64]"), out4)
    let (s5, _, e5) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--num-classes", "1", "-o", d + "/x.plan"])
    XCTAssertNotEqual(s5, 0)
    XCTAssertTrue(e5.contains("--num-classes must be at least 2"), e5)
  }

  /// --freeze takes the --blocks grammar, stem, head and norm: frozen parameters get no
  /// gradient, the backward of a frozen prefix is gone (fewer FLOPs and saved bytes), and the
  /// gradients of the rest are those of the unfrozen model.
  func testFreezingAPrefixKeepsTheOtherGradients() throws {
    let d = try tmp()
    for (name, flags) in [("all", [String]()), ("frozen", ["--freeze", "stem", "--freeze", "first:3"])] {
      let (s, _, e) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--keep", "1", "-o", d + "/\(name).plan"] + flags)
      XCTAssertEqual(s, 0, e)
      if name == "frozen" { XCTAssertTrue(e.contains("--freeze stem first:3: 40 parameters frozen"), e) }
      let (s2, _, e2) = try sbpc(["train", d + "/\(name).plan", "--steps", "1", "--dump-grads", d + "/g_\(name)"])
      XCTAssertEqual(s2, 0, e2)
    }
    let all = try FileManager.default.contentsOfDirectory(atPath: d + "/g_all")
    let frozen = try FileManager.default.contentsOfDirectory(atPath: d + "/g_frozen")
    XCTAssertEqual(all.count, 80)
    XCTAssertEqual(frozen.count, 40)
    for f in frozen {
      XCTAssertEqual(
        try Data(contentsOf: URL(fileURLWithPath: d + "/g_frozen/" + f)), try Data(contentsOf: URL(fileURLWithPath: d + "/g_all/" + f)), f)
    }
    func flops(_ plan: String) throws -> String {
      let (_, out, _) = try sbpc(["memory", plan])
      return String(out.split(separator: "\n").first { $0.hasPrefix("step FLOPs") } ?? "")
    }
    XCTAssertNotEqual(try flops(d + "/all.plan"), try flops(d + "/frozen.plan"))
    let (s3, _, e3) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--freeze", "stage:3", "-o", d + "/x.plan"])
    XCTAssertNotEqual(s3, 0)
    XCTAssertTrue(e3.contains("--freeze stage:3:") && !e3.dropLast().contains("\n"), e3)
  }

  /// --layer-decay and --no-decay-1d set each update's learning rate and weight decay: the head
  /// at lr, block b of L at lr·R^(L−b), the stem at lr·R^(L+1); no decay on rank ≤ 1.
  func testLayerDecayAndNoDecay1D() throws {
    let d = try tmp()
    let (s, _, e) = try sbpc([
      "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "2", "--keep", "1", "--optimizer", "adamw", "--lr", "0.001",
      "--weight-decay", "0.05", "--no-decay-1d", "--layer-decay", "0.5", "-o", d + "/p.plan",
    ])
    XCTAssertEqual(s, 0, e)
    let plan = try String(contentsOfFile: d + "/p.plan", encoding: .utf8)
    func update(_ p: String) -> Substring? { plan.split(separator: "\n").first { $0.contains("adamw(@\(p),") } }
    for (p, lr, wd) in [
      ("head.weight", "lr=0.001,", "weight_decay=0.05"), ("head.bias", "lr=0.001,", "weight_decay=0.0,"),
      ("blocks.5.mlp.fc2.bias", "lr=0.0005,", "weight_decay=0.0,"), ("blocks.0.norm1.weight", "lr=1.5625e-05,", "weight_decay=0.0,"),
      ("pos_embed", "lr=7.8125e-06,", "weight_decay=0.05"),
    ] {
      let line = try XCTUnwrap(update(p), p)
      XCTAssertTrue(line.contains(lr) && line.contains(wd), "\(p): \(line)")
    }
    let (s2, _, e2) = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--layer-decay", "1.5", "-o", d + "/x.plan"])
    XCTAssertNotEqual(s2, 0)
    XCTAssertTrue(e2.contains("--layer-decay must be in (0, 1]"), e2)
  }

  /// `eval` reports top-5 beside top-1; --per-class prints each class; --log writes JSON with
  /// the confusion matrix, whose diagonal is the top-1 count. Training's eval records carry
  /// top-5 and the matrix too.
  func testEvaluationReportsTop5PerClassAndConfusion() throws {
    let d = try tmp()
    try writeDataSet(d, "train", count: 6, seed: 3)
    try writeDataSet(d, "val", count: 12, seed: 4)
    _ = try sbpc(["compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--keep", "1", "-o", d + "/p.plan"])
    let (s, out, e) = try sbpc([
      "eval", d + "/p.plan", "--input", d + "/val_x.npy", "--labels", d + "/val_y.npy", "--per-class", "--log", d + "/e.json",
    ])
    XCTAssertEqual(s, 0, e)
    XCTAssertTrue(out.split(separator: "\n")[0].contains("top-5"), out)
    XCTAssertEqual(out.split(separator: "\n").filter { $0.hasPrefix("class ") }.count, 10, out)
    let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: d + "/e.json"))) as? [String: Any])
    let confusion = try XCTUnwrap(json["confusion"] as? [[Int]])
    XCTAssertEqual(confusion.count, 10)
    XCTAssertEqual(confusion.flatMap { $0 }.reduce(0, +), 12)
    let top1 = try XCTUnwrap(json["top1"] as? Double), top5 = try XCTUnwrap(json["top5"] as? Double)
    XCTAssertEqual(Double((0..<10).map { confusion[$0][$0] }.reduce(0, +)) / 12, top1, accuracy: 1e-12)
    XCTAssertGreaterThanOrEqual(top5, top1)
    let (s2, _, e2) = try sbpc([
      "train", d + "/p.plan", "--input", d + "/train_x.npy", "--labels", d + "/train_y.npy", "--epochs", "1", "--val", d + "/val_x.npy",
      d + "/val_y.npy", "--log", d + "/t.jsonl",
    ])
    XCTAssertEqual(s2, 0, e2)
    let evals = try logRecords(d + "/t.jsonl").filter { $0["kind"] as? String == "eval" }
    XCTAssertEqual(evals.count, 1)
    XCTAssertNotNil(evals.first?["top5"] as? Double)
    XCTAssertEqual((evals.first?["confusion"] as? [[Int]])?.flatMap { $0 }.reduce(0, +), 12)
  }
}
