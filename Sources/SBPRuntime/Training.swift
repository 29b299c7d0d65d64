// Training.swift: what a training run needs around the step: data sets, batch order, learning-rate schedules, evaluation.
import Foundation
import SBPIR

/// Images and labels for training or evaluation: f32 [N, C, H, W] and i64 [N], checked
/// against a plan before anything runs. N need not be a multiple of the batch.
public struct DataSet: Sendable {
  public let images: NPYArray
  public let labels: [Int64]
  /// Elements of one image.
  public let imageSize: Int
  public var count: Int { labels.count }

  /// Reads one `.npy` pair, or a folder of pairs (`NAME.x.npy` with `NAME.y.npy`, taken in
  /// name order and joined), and checks them against the plan's image shape and classes.
  public init(images: String, labels: String?, imageShape: [Int], classes: Int) throws {
    var isDir: ObjCBool = false
    let folder = FileManager.default.fileExists(atPath: images, isDirectory: &isDir) && isDir.boolValue
    var pairs: [(String, String)] = []
    if folder {
      guard labels == nil else { throw RuntimeError("\(images) is a folder of .x.npy/.y.npy pairs; give no --labels with it") }
      let names = (try? FileManager.default.contentsOfDirectory(atPath: images)) ?? []
      for x in names.sorted() where x.hasSuffix(".x.npy") {
        let y = String(x.dropLast(".x.npy".count)) + ".y.npy"
        guard names.contains(y) else { throw RuntimeError("\(images)/\(x): no labels file \(y) beside it") }
        pairs.append((images + "/" + x, images + "/" + y))
      }
      guard !pairs.isEmpty else { throw RuntimeError("\(images): no NAME.x.npy / NAME.y.npy pairs in the folder") }
    } else {
      guard let labels else { throw RuntimeError("\(images): labels are missing (--labels, or a folder of pairs)") }
      pairs = [(images, labels)]
    }
    var data: [UInt8] = []
    var ys: [Int64] = []
    var shape: [Int] = []
    for (xp, yp) in pairs {
      let x = try NPYArray.read(xp), y = try NPYArray.read(yp)
      guard x.dtype == .f32, x.shape.count == imageShape.count + 1, Array(x.shape.dropFirst()) == imageShape else {
        throw RuntimeError(
          "\(xp): expected f32[N,\(imageShape.map(String.init).joined(separator: ","))], got \(TensorType(x.dtype, x.shape))")
      }
      guard y.dtype == .i64, y.shape == [x.shape[0]] else {
        throw RuntimeError("\(yp): expected i64[\(x.shape[0])] (one label per image of \(xp)), got \(TensorType(y.dtype, y.shape))")
      }
      let labels = y.int64s
      if let bad = labels.enumerated().first(where: { $0.element < 0 || $0.element >= Int64(classes) }) {
        throw RuntimeError("\(yp): label \(bad.element) at index \(bad.offset) is out of range for \(classes) classes")
      }
      data += x.data
      ys += labels
      shape = x.shape
    }
    guard !ys.isEmpty else { throw RuntimeError("\(images): the data set is empty") }
    shape[0] = ys.count
    self.images = NPYArray(dtype: .f32, shape: shape, data: data)
    self.labels = ys
    imageSize = imageShape.reduce(1, *)
  }

  /// Copies the samples `indices` into the batch buffers, row by row.
  public func load(_ indices: ArraySlice<Int>, images input: Buffer, labels out: Buffer) {
    images.data.withUnsafeBytes { raw in
      for (row, i) in indices.enumerated() {
        (input.raw + row * imageSize * 4).copyMemory(from: raw.baseAddress! + i * imageSize * 4, byteCount: imageSize * 4)
        Targets.set(row: row, label: labels[i], in: out)
      }
    }
  }
}

/// A batch's targets in the plan's labels input: class indices (i64 [B]), or, for a plan
/// compiled with `--soft-targets`, a distribution per row (f32 [B, C]).
public enum Targets {
  /// Row `row` targets class `label`: the index, or its one-hot.
  public static func set(row: Int, label: Int64, in out: Buffer) {
    if out.type.dtype == .i64 {
      out.i64[row] = label
      return
    }
    let c = out.type.shape[1], p = out.f32 + row * c
    p.update(repeating: 0, count: c)
    if label >= 0, label < Int64(c) { p[Int(label)] = 1 }
  }

  /// Mixup's and CutMix's targets (timm's batch mode, the batch mixed with its reverse):
  /// row r is λ·one-hot(y_r) + (1 − λ)·one-hot(y_{B−1−r}). Class indices cannot carry it.
  public static func mixed(_ labels: UnsafePointer<Int64>, rows b: Int, lambda: Float, in out: Buffer) throws {
    guard out.type.dtype == .f32 else {
      throw RuntimeError("mixed targets need a plan compiled with --soft-targets (its loss reads labels i64)")
    }
    let c = out.type.shape[1]
    out.f32.update(repeating: 0, count: b * c)
    for r in 0..<b {
      let p = out.f32 + r * c, y1 = Int(labels[r]), y2 = Int(labels[b - 1 - r])
      if (0..<c).contains(y1) { p[y1] += lambda }
      if (0..<c).contains(y2) { p[y2] += 1 - lambda }
    }
  }
}

/// One batch a source filled: which rows count.
public struct BatchFill: Sendable {
  /// Rows holding this epoch's own samples; the rows after them pad a partial last batch.
  public var samples: Int
  /// Rows whose image could not be read and hold a copy of another row of the batch
  /// (evaluation leaves them out).
  public var skipped: [Int] = []

  public init(samples: Int, skipped: [Int] = []) {
    self.samples = samples
    self.skipped = skipped
  }
}

/// Where a run's batches come from: `.npy` tensors (`TensorBatches`) or decoded images
/// (SBPData's loader). A source owns its order: the batches of an epoch depend only on the
/// seed and the epoch, so a resumed run sees the batches an uninterrupted one would.
public protocol BatchSource: AnyObject {
  /// Samples in the data set, and batches in an epoch.
  var count: Int { get }
  var batchesPerEpoch: Int { get }
  /// Makes the next `next` fill batch `batch` of epoch `epoch`; later calls go on in order,
  /// into the following epochs.
  func seek(epoch: Int, batch: Int) throws
  /// Fills the next batch into the plan's image and label buffers.
  func next(images: Buffer, labels: Buffer) throws -> BatchFill
  /// Seconds `next` has waited for data to be ready (the loader's side of `--profile`).
  var waitSeconds: Double { get }
  /// What an epoch that ended left to say (images skipped as unreadable), then forgotten.
  func takeEpochReport() -> String?
}

/// Batches of a `.npy` data set in a `BatchOrder`.
public final class TensorBatches: BatchSource {
  public let data: DataSet
  public let order: BatchOrder
  var epoch = 0, batch = 0, permutationEpoch = -1
  var permutation: [Int] = []

  public init(_ data: DataSet, order: BatchOrder) {
    self.data = data
    self.order = order
  }

  public var count: Int { data.count }
  public var batchesPerEpoch: Int { order.batchesPerEpoch }
  public var waitSeconds: Double { 0 }
  public func takeEpochReport() -> String? { nil }

  public func seek(epoch: Int, batch: Int) {
    (self.epoch, self.batch) = (epoch, batch)
  }

  public func next(images: Buffer, labels: Buffer) -> BatchFill {
    if epoch != permutationEpoch {
      permutation = order.permutation(epoch: epoch)
      permutationEpoch = epoch
    }
    data.load(order.batch(batch, of: permutation), images: images, labels: labels)
    let fill = BatchFill(samples: order.samples(in: batch))
    batch += 1
    if batch == order.batchesPerEpoch { (epoch, batch) = (epoch + 1, 0) }
    return fill
  }
}

/// What to do with the samples left over after the last whole batch of an epoch.
public enum LastBatch: String, Sendable, CaseIterable {
  /// Skip them (they come round in another order next epoch).
  case drop
  /// Fill the batch up with samples from the start of the epoch's order.
  case pad
}

/// The order samples are visited in: a permutation per epoch, drawn from the seed and the
/// epoch alone, so a resumed run sees exactly the batches an uninterrupted one would.
///
/// In a data-parallel run every rank draws the same permutation and cuts it into global
/// batches of `batch × ranks` samples; rank r takes the r-th `batch` of each, so P ranks
/// visit the samples one process at batch P·B would.
public struct BatchOrder: Sendable {
  public let count: Int, batch: Int
  public let shuffle: Bool, last: LastBatch, seed: UInt64
  public let rank: Int, ranks: Int

  public init(count: Int, batch: Int, shuffle: Bool, last: LastBatch, seed: UInt64, rank: Int = 0, ranks: Int = 1) {
    (self.count, self.batch, self.shuffle, self.last, self.seed) = (count, batch, shuffle, last, seed)
    (self.rank, self.ranks) = (rank, max(ranks, 1))
  }

  /// Samples in a global batch: every rank's batch together.
  public var globalBatch: Int { batch * ranks }

  /// Batches per epoch.
  public var batchesPerEpoch: Int { last == .drop ? count / globalBatch : (count + globalBatch - 1) / globalBatch }

  public func permutation(epoch: Int) -> [Int] {
    var order = Array(0..<count)
    guard shuffle else { return order }
    var rng = SplitMix64(seed: seed ^ 0xD1B5_4A32_D192_ED03 &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
    order.shuffle(using: &rng)
    return order
  }

  /// The sample indices of this rank's part of batch `b` of an epoch whose order is `order`.
  public func batch(_ b: Int, of order: [Int]) -> ArraySlice<Int> {
    let start = b * globalBatch + rank * batch, end = start + batch
    if end <= count { return order[start..<end] }
    // Cyclically: a set smaller than half a batch wraps more than once.
    return ArraySlice((start..<end).map { order[$0 % count] })
  }

  /// How many rows of this rank's part of batch `b` are samples of the epoch, not padding.
  public func samples(in b: Int) -> Int { min(batch, max(0, count - (b * globalBatch + rank * batch))) }
}

/// A learning-rate schedule: the factor on the plan's learning rate at each step, after a
/// linear warm-up.
public enum LRSchedule: Sendable, Equatable {
  case constant
  /// Half a cosine from 1 down to 0 over the steps after the warm-up.
  case cosine
  /// ×gamma every `every` steps after the warm-up.
  case step(every: Int, gamma: Double)

  /// The factor at 0-based step `s` of `total`, with `warmup` steps rising linearly to 1.
  public func factor(step s: Int, total: Int, warmup: Int) -> Double {
    if s < warmup { return Double(s + 1) / Double(warmup) }
    let t = s - warmup, span = max(total - warmup, 1)
    switch self {
    case .constant: return 1
    case .cosine: return 0.5 * (1 + cos(Double.pi * Double(t) / Double(span)))
    case .step(let every, let gamma): return pow(gamma, Double(t / max(every, 1)))
    }
  }
}

/// Evaluates a plan's plain forward on a data set: mean cross-entropy and top-1, over every
/// sample (a partial last batch is padded and its padding ignored).
public final class Evaluator {
  let executor: Executor
  let input: Buffer, logits: Buffer
  let batch: Int, classes: Int
  let labels: Buffer

  /// The ranks sharing an evaluation: each evaluates its part of every batch, and the sums
  /// are reduced before the means.
  let comm: Communicator

  public init(eval g: Graph, threads: Int, maxMemory: Int? = nil, communicator: Communicator = .single) throws {
    comm = communicator
    executor = try Executor(graph: g, threads: threads, maxMemory: maxMemory)
    guard let x = g.inputs.first else { throw RuntimeError("the evaluation graph has no input") }
    input = executor.buffer(x.value)
    logits = executor.buffer(g.outputs[0].value)
    batch = g.type(of: x.value).shape[0]
    classes = g.type(of: g.outputs[0].value).shape[1]
    labels = Buffer(TensorType(.i64, [batch]))
  }

  /// Evaluates with the weights a training executor holds now.
  public func evaluate(_ data: BatchSource, weights trainer: Executor) throws -> (loss: Double, top1: Double) {
    executor.copyParameters(from: trainer)
    return try evaluate(data)
  }

  /// The logits of every sample of the last `evaluate`, [N, classes] row-major, when
  /// `keepLogits` is set.
  public var keepLogits = false
  public private(set) var lastLogits: [Float] = []

  /// Top-5 accuracy (top-k with k = min(5, classes)) and the confusion matrix of the last
  /// `evaluate`: `confusion[label][predicted]` counts.
  public private(set) var lastTop5: Double = 0
  public private(set) var lastConfusion: [[Int]] = []

  /// Each class's top-1 accuracy in the last `evaluate` (nil for a class with no samples).
  public var lastPerClass: [Double?] {
    lastConfusion.enumerated().map { c, row in
      let n = row.reduce(0, +)
      return n == 0 ? nil : Double(row[c]) / Double(n)
    }
  }

  /// The samples the last `evaluate` counted (a source's unreadable images are left out).
  public private(set) var lastCount = 0

  /// Evaluates every sample of `data` once, in its order (pass a source that does not
  /// shuffle and pads its last batch).
  public func evaluate(_ data: BatchSource) throws -> (loss: Double, top1: Double) {
    lastLogits = []
    lastConfusion = Array(repeating: Array(repeating: 0, count: classes), count: classes)
    var total: Double = 0
    var correct = 0, inTop5 = 0, counted = 0
    let k = min(5, classes)
    try data.seek(epoch: 0, batch: 0)
    for _ in 0..<data.batchesPerEpoch {
      let fill = try data.next(images: input, labels: labels)
      try executor.run()
      for r in 0..<fill.samples where !fill.skipped.contains(r) {
        let row = UnsafeBufferPointer(start: logits.f32 + r * classes, count: classes)
        if keepLogits { lastLogits += row }
        let t = Int(labels.i64[r])
        let m = row.max()!
        let lse = Double(m) + log(row.reduce(0.0) { $0 + exp(Double($1 - m)) })
        total += lse - Double(row[t])
        let predicted = row.indices.max(by: { row[$0] < row[$1] })!
        if predicted == t { correct += 1 }
        lastConfusion[t][predicted] += 1
        // In the top k when fewer than k logits beat the label's (ties count for the label).
        if row.reduce(0, { $0 + ($1 > row[t] ? 1 : 0) }) < k { inTop5 += 1 }
        counted += 1
      }
    }
    if comm.size > 1 {
      var sums = [total, Double(correct), Double(inTop5), Double(counted)] + lastConfusion.joined().map(Double.init)
      comm.sum(&sums)
      (total, correct, inTop5, counted) = (sums[0], Int(sums[1]), Int(sums[2]), Int(sums[3]))
      lastConfusion = (0..<classes).map { r in (0..<classes).map { c in Int(sums[4 + r * classes + c]) } }
    }
    guard counted > 0 else { throw RuntimeError("no sample of the evaluation set could be read") }
    lastCount = counted
    lastTop5 = Double(inTop5) / Double(counted)
    return (total / Double(counted), Double(correct) / Double(counted))
  }
}
