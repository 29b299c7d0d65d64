// ImageDataCLITests.swift: `sbpc data`, and `train`/`eval --data` on the bundled image fixtures: listings, runs, one-line refusals.
import Foundation
import XCTest

final class ImageDataCLITests: XCTestCase {
  let images = "Tests/Fixtures/images"

  func scratch() throws -> String {
    let d = NSTemporaryDirectory() + "sbpc-imgcli-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
  }

  func testDataListsDumpsAndMeasures() throws {
    let (s, out, e) = try sbpc(["data", images + "/jpeg/train"])
    XCTAssertEqual(s, 0, e)
    XCTAssertTrue(out.hasPrefix(images + "/jpeg/train: ImageFolder, 3 classes, 9 images\n"), out)
    let (s2, json, e2) = try sbpc(["data", images + "/shards/train-{000..001}.tar", "--json"])
    XCTAssertEqual(s2, 0, e2)
    let record = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
    XCTAssertEqual(record["images"] as? Int, 9)
    XCTAssertEqual((record["classes"] as? [[String: Any]])?.map { $0["images"] as? Int }, [3, 3, 3])

    let d = try scratch()
    let (s3, _, e3) = try sbpc(["data", images + "/jpeg/val", "--size", "32", "--dump", "4", d + "/x.npy"])
    XCTAssertEqual(s3, 0, e3)
    XCTAssertTrue(FileManager.default.fileExists(atPath: d + "/x.npy") && FileManager.default.fileExists(atPath: d + "/x.labels.npy"))
    let (s4, bench, e4) = try sbpc(["data", images + "/jpeg/train", "--transform", "train", "--size", "32", "--bench", "--seconds", "0.2", "--json"])
    XCTAssertEqual(s4, 0, e4)
    XCTAssertTrue(bench.contains("\"images_per_s_one_worker\""), bench)
  }

  /// A plan of the tiny ViT with a 3-way head, at batch 4.
  func plan(_ d: String) throws -> String {
    let (s, _, e) = try sbpc([
      "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--num-classes", "3", "--keep", "0.5", "-o", d + "/v.plan",
    ])
    XCTAssertEqual(s, 0, e)
    return d + "/v.plan"
  }

  func testTrainAndEvalOnImages() throws {
    let d = try scratch(), p = try plan(d)
    // PATH has train and val: training reads the first, validation the second.
    let (s, out, e) = try sbpc(["train", p, "--data", images + "/jpeg", "--epochs", "2", "--threads", "1", "--workers", "2"])
    XCTAssertEqual(s, 0, e)
    XCTAssertNotNil(out.range(of: #"epoch 2/2  loss [0-9.]+  val loss [0-9.]+  top-1 [0-9.]+%"#, options: .regularExpression), out)
    // Shards train the same plan; eval reads a folder's val split and counts every image.
    let (s2, _, e2) = try sbpc(["train", p, "--data", images + "/shards/train-{000..001}.tar", "--steps", "3", "--threads", "1"])
    XCTAssertEqual(s2, 0, e2)
    let (s3, out3, e3) = try sbpc(["eval", p, "--data", images + "/png", "--threads", "1"])
    XCTAssertEqual(s3, 0, e3)
    XCTAssertTrue(out3.contains("/9)"), out3)
    // The same run with one worker or three: the same losses.
    func losses(_ workers: String) throws -> String {
      let (s, out, e) = try sbpc([
        "train", p, "--data", images + "/jpeg/train", "--steps", "4", "--shuffle", "--threads", "1", "--workers", workers, "--dump-loss",
      ])
      XCTAssertEqual(s, 0, e)
      return out
    }
    XCTAssertEqual(try losses("1"), try losses("3"))
  }

  func testImageDataRefusals() throws {
    let d = try scratch(), p = try plan(d)
    try FileManager.default.createDirectory(atPath: d + "/empty/a", withIntermediateDirectories: true)
    try Data(repeating: 1, count: 2048).write(to: URL(fileURLWithPath: d + "/junk.tar"))
    let cases: [([String], String)] = [
      (["train", p, "--data", d + "/nowhere"], "no such file or folder"),
      (["train", p, "--data", d + "/empty"], "an empty class folder"),
      (["train", p, "--data", d + "/junk.tar"], "junk.tar: not a tar file"),
      (["train", p, "--data", images + "/jpeg", "--workers", "0"], "--workers"),
      (["train", p, "--data", images + "/jpeg", "--on-bad-image", "maybe"], "--on-bad-image"),
      (["train", p, "--data", images + "/jpeg", "--input", "x.npy"], "exclude each other"),
      (["train", p, "--data", images + "/jpeg", "--crop-pct", "1.5"], "--crop-pct"),
      (["eval", p], "--input (.npy) or --data"),
      (["data", images + "/jpeg/train", "--transform", "sideways"], "--transform"),
    ]
    for (args, fragment) in cases {
      let (status, _, err) = try sbpc(args)
      XCTAssertTrue(status != 0 && status < 128, "\(args): exit \(status)")
      XCTAssertEqual(err.split(separator: "\n").count, 1, "\(args): \(err)")
      XCTAssertTrue(err.contains(fragment), "\(args): '\(err)' lacks '\(fragment)'")
    }
  }

  func testMixupNeedsSoftTargetsAndTrains() throws {
    let d = try scratch(), hard = try plan(d)
    let (s, _, e) = try sbpc(["train", hard, "--data", images + "/jpeg/train", "--steps", "1", "--mixup", "0.8"])
    XCTAssertEqual(s, 1)
    XCTAssertEqual(e.split(separator: "\n").count, 1, e)
    XCTAssertTrue(e.contains("compile the plan with --soft-targets"), e)
    let (s2, _, e2) = try sbpc([
      "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--num-classes", "3", "--soft-targets", "--smoothing", "0.1", "-o", d + "/soft.plan",
    ])
    XCTAssertEqual(s2, 0, e2)
    let (s3, out3, e3) = try sbpc([
      "train", d + "/soft.plan", "--data", images + "/jpeg", "--epochs", "2", "--mixup", "0.8", "--cutmix", "1", "--threads", "1",
    ])
    XCTAssertEqual(s3, 0, e3)
    XCTAssertTrue(out3.contains("epoch 2/2") && out3.contains("val loss"), out3)
    // Without mixing, soft targets are one-hot: the loss is the hard-label plan's.
    let (_, a, _) = try sbpc(["train", d + "/soft.plan", "--data", images + "/jpeg/train", "--steps", "2", "--threads", "1", "--dump-loss"])
    let (s4, _, e4) = try sbpc([
      "compile", "models/vit_p4_d6_ts17.onnx", "--batch", "4", "--num-classes", "3", "--smoothing", "0.1", "-o", d + "/hard.plan",
    ])
    XCTAssertEqual(s4, 0, e4)
    let (_, b, _) = try sbpc(["train", d + "/hard.plan", "--data", images + "/jpeg/train", "--steps", "2", "--threads", "1", "--dump-loss"])
    let la = a.split(separator: "\n").compactMap { Double($0) }, lb = b.split(separator: "\n").compactMap { Double($0) }
    XCTAssertEqual(la.count, 2)
    for (x, y) in zip(la, lb) { XCTAssertEqual(x, y, accuracy: 1e-5 * abs(y)) }
  }
}
