// DataTests.swift: image data: the eval transform against timm's, the tar reader, folders and shards, the loader's order, bad images.
import Foundation
import SBPData
import SBPIR
import SBPRuntime
import XCTest

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
let images = repoRoot + "/Tests/Fixtures/images"

/// A fresh scratch folder.
func scratch(_ name: String) throws -> String {
  let dir = NSTemporaryDirectory() + "sbpc-data-\(name)-\(getpid())"
  try? FileManager.default.removeItem(atPath: dir)
  try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  return dir
}

/// A ustar archive of `members`, as Python's tarfile writes one.
func tar(_ members: [(String, [UInt8])], type: UInt8 = UInt8(ascii: "0")) -> [UInt8] {
  var out: [UInt8] = []
  for (name, data) in members {
    var h = [UInt8](repeating: 0, count: 512)
    for (i, b) in name.utf8.prefix(100).enumerated() { h[i] = b }
    func put(_ at: Int, _ s: String) { for (i, b) in s.utf8.enumerated() { h[at + i] = b } }
    put(100, "0000644\0")
    put(124, String(format: "%011o\0", data.count))
    put(136, "00000000000\0")
    h[156] = type
    put(257, "ustar\000")
    for i in 148..<156 { h[i] = 32 }
    put(148, String(format: "%06o\0 ", h.reduce(0) { $0 + Int($1) }))
    out += h + data + [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
  }
  return out + [UInt8](repeating: 0, count: 1024)
}

final class DataTests: XCTestCase {
  func transform(_ mode: TransformConfig.Mode, size: Int, interpolation: Interpolation? = nil) throws -> ImageTransform {
    var c = TransformConfig()
    (c.mode, c.height, c.width, c.interpolation) = (mode, size, size, interpolation)
    return try ImageTransform(c)
  }

  /// The eval transform of each image file against timm's (PIL's decode and resize), from
  /// `models/transform_reference.py --write`.
  func checkEval(_ folder: String, reference: String, size: Int, interpolation: Interpolation? = nil) throws -> (mean: Double, max: Double) {
    let ref = try NPYArray.read(images + "/" + reference)
    let set = try ImageSet.open(images + "/" + folder, classes: nil)
    let t = try transform(.eval, size: size, interpolation: interpolation)
    let n = ref.shape[0], each = 3 * size * size
    var got = [Float](repeating: 0, count: n * each)
    try set.forEach(limit: n) { i, _, _, bytes in
      let rng = ImageTransform.generator(seed: 0, epoch: 0, index: i)
      try got.withUnsafeMutableBufferPointer { try t.apply(bytes, rng: rng, into: $0.baseAddress! + i * each) }
    }
    let want = ref.floats
    var sum = 0.0, worst = 0.0
    for i in 0..<want.count {
      let d = Double(abs(want[i] - got[i]))
      sum += d
      worst = max(worst, d)
    }
    return (sum / Double(want.count), worst)
  }

  func testEvalTransformIsTimms() throws {
    // Bars of the issue: mean ≤ 0.01, max ≤ 0.1 in normalized units; the resampler is PIL's
    // own arithmetic, so the JPEGs (same libjpeg-turbo decode) and PNGs come out equal.
    for (folder, ref, size, filter) in [
      ("jpeg/val", "eval32_jpeg.npy", 32, Interpolation?.none), ("png/val", "eval32_png.npy", 32, .bilinear),
      ("photo", "eval64_photo.npy", 64, nil),
    ] {
      let (mean, worst) = try checkEval(folder, reference: ref, size: size, interpolation: filter)
      XCTAssertLessThanOrEqual(mean, 0.01, folder)
      XCTAssertLessThanOrEqual(worst, 0.1, folder)
      XCTAssertLessThan(worst, 1e-5, "\(folder): PIL's resampling is integer arithmetic; sbpc repeats it")
    }
  }

  func testTrainTransformIsSeededPerSample() throws {
    let data = try Data(contentsOf: URL(fileURLWithPath: images + "/photo/c0/00000.jpg"))
    let a = try transform(.train, size: 48), b = try transform(.train, size: 48)
    func run(_ t: ImageTransform, epoch: Int, index: Int) throws -> [Float] {
      var out = [Float](repeating: 0, count: 3 * 48 * 48)
      let rng = ImageTransform.generator(seed: 7, epoch: epoch, index: index)
      try data.withUnsafeBytes { raw in try out.withUnsafeMutableBufferPointer { try t.apply(raw, rng: rng, into: $0.baseAddress!) } }
      return out
    }
    XCTAssertEqual(try run(a, epoch: 1, index: 3), try run(b, epoch: 1, index: 3))
    XCTAssertNotEqual(try run(a, epoch: 1, index: 3), try run(a, epoch: 2, index: 3))
    XCTAssertNotEqual(try run(a, epoch: 1, index: 3), try run(a, epoch: 1, index: 4))
  }

  func testFolderOrderAndClasses() throws {
    guard case .folder(let f) = try ImageSet.open(images + "/jpeg/train", classes: 10) else { return XCTFail() }
    XCTAssertEqual(f.classes, ["0", "1", "2"])
    XCTAssertEqual(f.files.count, 9)
    XCTAssertEqual(f.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    XCTAssertEqual(f.files, f.files.sorted())
    XCTAssertEqual(ImageFolder.splits(images + "/jpeg").val, images + "/jpeg/val")
    XCTAssertThrowsError(try ImageSet.open(images + "/jpeg/train", classes: 2)) { e in
      XCTAssertTrue("\(e)".contains("3 class folders, more than the head's 2 classes"), "\(e)")
    }
  }

  func testTarReader() throws {
    let archive = tar([("a/0001.jpg", [1, 2, 3]), ("a/0001.cls", Array("4\n".utf8)), ("a/0002.png", []), ("a/0002.cls", Array("1".utf8))])
    let reader = SampleReader(TarReader(MemoryByteStream(archive), name: "mem.tar"), name: "mem.tar")
    var bytes: [UInt8] = []
    let s1 = try reader.next(into: &bytes)
    XCTAssertEqual(s1?.key, "a/0001")
    XCTAssertEqual(s1?.label, 4)
    XCTAssertEqual(bytes, [1, 2, 3])
    let s2 = try reader.next(into: &bytes)
    XCTAssertEqual(s2?.label, 1)
    XCTAssertEqual(bytes, [])
    XCTAssertNil(try reader.next(into: &bytes))

    // GNU long names and pax paths name the member that follows them.
    let long = String(repeating: "d/", count: 60) + "0003"
    let gnu = tar([("././@LongLink", Array((long + ".cls\0").utf8))], type: UInt8(ascii: "L")).dropLast(1024) + tar([("x.cls", Array("2".utf8))])
    let r2 = TarReader(MemoryByteStream(Array(gnu)), name: "gnu.tar")
    XCTAssertEqual(try r2.next()?.path, long + ".cls")
    let record = " path=\(long).jpg\n"
    let pax = "\(record.utf8.count + String(record.utf8.count + 3).count)" + record
    let paxArchive = tar([("PaxHeader", Array(pax.utf8))], type: UInt8(ascii: "x")).dropLast(1024) + tar([("short.jpg", [9])])
    XCTAssertEqual(try TarReader(MemoryByteStream(Array(paxArchive)), name: "pax.tar").next()?.path, long + ".jpg")

    // Not a tar, and a tar cut in the middle of a member: one line each.
    XCTAssertThrowsError(try TarReader(MemoryByteStream(Array(repeating: 7, count: 2048)), name: "x.tar").next()) { e in
      XCTAssertEqual("\(e)", "x.tar: not a tar file (no valid header at byte 0)")
    }
    let cut = TarReader(MemoryByteStream(Array(archive.prefix(600))), name: "cut.tar")
    XCTAssertThrowsError(try { var b: [UInt8] = []; _ = try cut.next(); try cut.read(into: &b); _ = try cut.next() }()) { e in
      XCTAssertTrue("\(e)".contains("truncated"), "\(e)")
    }
  }

  func testShards() throws {
    let set = try ShardSet(images + "/shards/train-{000..001}.tar", classes: 10)
    XCTAssertEqual(set.shards.count, 2)
    XCTAssertEqual(set.count, 9)
    XCTAssertEqual(set.maxLabel, 2)
    XCTAssertThrowsError(try ShardSet(images + "/shards/train-{000..001}.tar", classes: 2)) { e in
      XCTAssertTrue("\(e)".hasSuffix("has label 2, outside the head's 2 classes"), "\(e)")
    }
    XCTAssertEqual(try ShardSet.expand("s-{08..11}.tar"), ["s-08.tar", "s-09.tar", "s-10.tar", "s-11.tar"])
    XCTAssertEqual(try ShardSet.expand("{a,b}-{0..1}.tar"), ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"])
    XCTAssertThrowsError(try ShardSet(images + "/shards/train-{000..002}.tar", classes: nil)) { e in
      XCTAssertEqual("\(e)", images + "/shards/train-002.tar: no such shard")
    }
    let dir = try scratch("shards")
    try Data(repeating: 65, count: 3000).write(to: URL(fileURLWithPath: dir + "/bad.tar"))
    XCTAssertThrowsError(try ShardSet(dir + "/bad.tar", classes: nil)) { e in
      XCTAssertEqual("\(e)", dir + "/bad.tar: not a tar file (no valid header at byte 0)")
    }
    try Data(tar([("k.jpg", [1])])).write(to: URL(fileURLWithPath: dir + "/nolabel.tar"))
    XCTAssertThrowsError(try ShardSet(dir + "/nolabel.tar", classes: nil)) { e in XCTAssertTrue("\(e)".hasSuffix("sample k has no .cls label")) }
  }

  /// Every batch of a loader run, images and labels.
  func batches(_ set: ImageSet, workers: Int, steps: Int, from: Int = 0, batch: Int = 4) throws -> [[Float]] {
    var o = LoaderOptions()
    (o.batch, o.workers, o.seed, o.shuffleBuffer) = (batch, workers, 3, 4)
    var c = TransformConfig()
    (c.height, c.width) = (16, 16)
    let loader = try ImageLoader(set, transform: c, options: o)
    defer { loader.shutdown() }
    let images = Buffer(TensorType(.f32, [batch, 3, 16, 16])), labels = Buffer(TensorType(.i64, [batch]))
    try loader.seek(epoch: from / loader.batchesPerEpoch, batch: from % loader.batchesPerEpoch)
    return try (from..<steps).map { _ in
      _ = try loader.next(images: images, labels: labels)
      return Array(images.floats) + (0..<batch).map { Float(labels.i64[$0]) }
    }
  }

  func testLoaderIsTheSameWithAnyWorkersAndResumes() throws {
    for set in [try ImageSet.open(images + "/jpeg/train", classes: nil), try ImageSet.open(images + "/shards/train-{000..001}.tar", classes: nil)] {
      // 2 batches per epoch: 5 steps cross two epoch boundaries.
      let one = try batches(set, workers: 1, steps: 5)
      XCTAssertEqual(try batches(set, workers: 3, steps: 5), one)
      XCTAssertEqual(try batches(set, workers: 2, steps: 5, from: 3), Array(one[3...]))
      XCTAssertNotEqual(one[0], one[2], "each epoch draws its own order and augmentation")
    }
  }

  func testBadImagesAreSkippedAndNamed() throws {
    let dir = try scratch("bad")
    for c in ["a", "b"] {
      try FileManager.default.createDirectory(atPath: dir + "/\(c)", withIntermediateDirectories: true)
      for i in 0..<2 { try FileManager.default.copyItem(atPath: images + "/jpeg/train/0/0000.jpg", toPath: dir + "/\(c)/\(i).jpg") }
    }
    let jpeg = try Data(contentsOf: URL(fileURLWithPath: dir + "/a/0.jpg"))
    try jpeg.prefix(jpeg.count / 2).write(to: URL(fileURLWithPath: dir + "/a/1.jpg"))  // truncated
    try Data("not an image".utf8).write(to: URL(fileURLWithPath: dir + "/b/1.jpg"))
    var o = LoaderOptions()
    (o.batch, o.workers) = (4, 1)
    let loader = try ImageLoader(try ImageSet.open(dir, classes: nil), transform: TransformConfig(), options: o)
    let images = Buffer(TensorType(.f32, [4, 3, 224, 224])), labels = Buffer(TensorType(.i64, [4]))
    let fill = try loader.next(images: images, labels: labels)
    XCTAssertEqual(fill.skipped.count, 2)
    let report = loader.takeEpochReport() ?? ""
    XCTAssertTrue(report.hasPrefix("skipped 2 unreadable images: "), report)
    XCTAssertTrue(report.contains(dir + "/a/1.jpg (") && report.contains(dir + "/b/1.jpg (neither a JPEG nor a PNG)"), report)
    loader.shutdown()

    o.onBadImage = .fail
    let strict = try ImageLoader(try ImageSet.open(dir, classes: nil), transform: TransformConfig(), options: o)
    XCTAssertThrowsError(try strict.next(images: images, labels: labels)) { e in XCTAssertTrue("\(e)".contains("/1.jpg: "), "\(e)") }
    strict.shutdown()
  }

  func testFolderRefusals() throws {
    let dir = try scratch("refuse")
    try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: true)
    XCTAssertThrowsError(try ImageFolder(dir)) { e in XCTAssertEqual("\(e)", dir + "/empty: an empty class folder (no .jpg, .jpeg or .png in it)") }
    try FileManager.default.removeItem(atPath: dir + "/empty")
    XCTAssertThrowsError(try ImageFolder(dir)) { e in XCTAssertTrue("\(e)".hasSuffix("no class folders with images (expected \(dir)/<class>/*.jpg)")) }
    try FileManager.default.createDirectory(atPath: dir + "/c", withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(atPath: dir + "/c/x.jpg", withDestinationPath: images + "/photo/c0/00000.jpg")
    XCTAssertThrowsError(try ImageFolder(dir)) { e in XCTAssertTrue("\(e)".contains("a symbolic link to") && "\(e)".contains("outside the data folder"), "\(e)") }
  }

  /// One batch of the fixture folder with soft targets, mixed as `configure` says.
  func softBatch(_ configure: (inout LoaderOptions) -> Void) throws -> (images: [Float], targets: [Float]) {
    var o = LoaderOptions()
    (o.batch, o.workers, o.seed) = (4, 1, 5)
    configure(&o)
    var c = TransformConfig()
    (c.height, c.width) = (16, 16)
    let loader = try ImageLoader(try ImageSet.open(images + "/jpeg/train", classes: nil), transform: c, options: o)
    defer { loader.shutdown() }
    let x = Buffer(TensorType(.f32, [4, 3, 16, 16])), t = Buffer(TensorType(.f32, [4, 3]))
    _ = try loader.next(images: x, labels: t)
    return (Array(x.floats), Array(t.floats))
  }

  func testMixupAndCutMixMixTheBatchWithItsReverse() throws {
    let plain = try softBatch { _ in }
    let n = 3 * 16 * 16
    func row(_ v: [Float], _ r: Int) -> ArraySlice<Float> { v[(r * n)..<((r + 1) * n)] }
    let a0 = row(plain.images, 0), a3 = row(plain.images, 3)
    let y0 = plain.targets[0..<3].firstIndex(of: 1)!, y3 = plain.targets[9..<12].firstIndex(of: 1)! - 9

    // Mixup: row 0 is λ·x0 + (1 − λ)·x3, and its target λ·onehot(y0) + (1 − λ)·onehot(y3).
    let mixed = try softBatch { $0.mixup = 0.8 }
    let b0 = row(mixed.images, 0)
    let d = zip(a0, a3).map { $0 - $1 }, e = zip(b0, a3).map { $0 - $1 }
    let lambda = zip(d, e).reduce(0) { $0 + $1.0 * $1.1 } / d.reduce(0) { $0 + $1 * $1 }
    XCTAssertTrue(lambda > 0 && lambda < 1, "λ \(lambda)")
    for (u, v) in zip(d, e) { XCTAssertEqual(v, lambda * u, accuracy: 1e-4) }
    var want: [Float] = [0, 0, 0]
    want[y0] += lambda
    want[y3] += 1 - lambda
    for k in 0..<3 { XCTAssertEqual(mixed.targets[k], want[k], accuracy: 1e-4) }

    // CutMix: row 0 takes row 3's pixels in one box, and λ is the share it keeps.
    let cut = try softBatch { $0.cutmix = 1 }
    let c0 = row(cut.images, 0)
    let fromOther = zip(zip(c0, a0), a3).filter { $0.0.0 != $0.0.1 }
    XCTAssertTrue(fromOther.allSatisfy { $0.0.0 == $0.1 }, "CutMix pixels come from the reversed batch")
    XCTAssertFalse(fromOther.isEmpty)
    XCTAssertEqual(cut.targets[0..<3].reduce(0, +), 1, accuracy: 1e-6)
    // The changed pixels lie in the box, whose area is the 1 − λ the target gives row 3.
    if y0 != y3 { XCTAssertLessThanOrEqual(Float(fromOther.count) / Float(n), cut.targets[y3] + 1e-6) }
  }

  /// An evaluation set smaller than half the batch: its one batch wraps round it more than
  /// once, and only its own rows count.
  func testATinyEvaluationSetPadsItsOnlyBatch() throws {
    let dir = try scratch("tiny")
    try FileManager.default.createDirectory(atPath: dir + "/a", withIntermediateDirectories: true)
    for (i, name) in ["0078", "0202", "0252"].enumerated() {
      try FileManager.default.copyItem(atPath: images + "/jpeg/val/0/\(name).jpg", toPath: dir + "/a/\(i).jpg")
    }
    var o = LoaderOptions()
    (o.batch, o.shuffle, o.last, o.oneEpochAtATime) = (8, false, .pad, true)
    var c = TransformConfig()
    (c.mode, c.height, c.width) = (.eval, 16, 16)
    let loader = try ImageLoader(try ImageSet.open(dir, classes: nil), transform: c, options: o)
    defer { loader.shutdown() }
    XCTAssertEqual(loader.batchesPerEpoch, 1)
    let fill = try loader.next(images: Buffer(TensorType(.f32, [8, 3, 16, 16])), labels: Buffer(TensorType(.i64, [8])))
    XCTAssertEqual(fill.samples, 3)
  }
}
