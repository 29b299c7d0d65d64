// Loader.swift: the image loader: worker threads decode and transform whole batches into a bounded ring of ready batches, ahead of the step.
import Foundation
import SBPIR
import SBPRuntime

/// What to do with an image that cannot be decoded.
public enum BadImagePolicy: String, Sendable, CaseIterable {
  /// Count it, name it in the epoch's report, and fill its row with another of the batch.
  case skip
  /// Stop the run with the file's name and the reason.
  case fail
}

/// How a loader runs: batch, order, workers.
public struct LoaderOptions: Sendable {
  public var batch = 16
  public var shuffle = true
  public var last: LastBatch = .drop
  public var seed: UInt64 = 0
  public var workers = 1
  /// Ready batches kept ahead of the step (default: workers + 1).
  public var prefetch: Int?
  public var onBadImage: BadImagePolicy = .skip
  /// Shards: samples held for the within-buffer shuffle.
  public var shuffleBuffer = 500
  /// Stop prefetching at the end of each epoch (an evaluation set read one epoch at a time).
  public var oneEpochAtATime = false
  /// Mixup and CutMix as timm's batch mode: with probability `mixProb` a batch is mixed with
  /// its reverse, by λ ~ Beta(mixup, mixup) (Mixup) or a box of area 1 − λ, λ ~ Beta(cutmix,
  /// cutmix) (CutMix); with both on, CutMix with probability `switchProb`. 0 turns one off.
  public var mixup = 0.0, cutmix = 0.0, mixProb = 1.0, switchProb = 0.5
  /// Worker threads' nice value: above the step's, so that the step's threads keep their
  /// cores and the loader takes what they leave.
  public var workerNice: Int32 = 19
  /// A data-parallel run's rank and number of ranks: each global batch of `batch × ranks`
  /// samples is cut in rank order, and this loader fills its rank's part (`BatchOrder`).
  public var rank = 0, ranks = 1
  public init() {}
}

/// The data a loader reads.
public enum ImageSet: Sendable {
  case folder(ImageFolder)
  case shards(ShardSet)

  public var count: Int {
    switch self {
    case .folder(let f): return f.files.count
    case .shards(let s): return s.count
    }
  }
}

/// A `BatchSource` of decoded, transformed images.
///
/// Workers take whole batches in order, so batch g + 1 is being decoded while the step runs
/// on batch g; every image's randomness comes from (seed, epoch, index) and never from a
/// worker, so a run is the same with any number of workers. Shards are read as streams, one
/// batch's samples at a time under the loader's lock (tar files are sequential), and decoded
/// outside it.
public final class ImageLoader: BatchSource, @unchecked Sendable {
  public let data: ImageSet
  public let transform: TransformConfig
  public let options: LoaderOptions
  public let batchesPerEpoch: Int
  let order: BatchOrder
  let imageSize: Int

  final class Slot {
    let images: UnsafeMutablePointer<Float>
    var labels: [Int64]
    /// Shards: each row's image bytes, shard and key, read under the lock.
    var bytes: [[UInt8]]
    var shard: [Int]
    var key: [String]
    var global = -1
    var ready = false
    var filling = false
    var fill = BatchFill(samples: 0)
    /// The batch's Mixup/CutMix λ (1: not mixed).
    var lambda: Float = 1
    /// Rows whose image could not be used: row, file, reason.
    var bad: [(row: Int, name: String, reason: String)] = []
    init(batch: Int, imageSize: Int) {
      images = .allocate(capacity: batch * imageSize)
      images.initialize(repeating: 0, count: batch * imageSize)
      labels = Array(repeating: 0, count: batch)
      bytes = Array(repeating: [], count: batch)
      shard = Array(repeating: 0, count: batch)
      key = Array(repeating: "", count: batch)
    }
    deinit { images.deallocate() }
  }

  let slots: [Slot]
  let lock = NSCondition()
  var nextClaim = 0, nextConsume = 0, limit: Int
  var stopping = false
  var failure: Error?
  var threads: [Thread] = []
  var running = 0
  var permutations: [Int: [Int]] = [:]
  var stream: ShardStream?
  var wait: Double = 0
  var epochBad: [(String, String)] = []
  var epochBadCount = 0
  var reportEpoch = 0

  public init(_ set: ImageSet, transform: TransformConfig, options: LoaderOptions) throws {
    self.data = set
    self.transform = transform
    self.options = options
    imageSize = transform.channels * transform.height * transform.width
    order = BatchOrder(
      count: set.count, batch: options.batch, shuffle: options.shuffle, last: options.last, seed: options.seed, rank: options.rank,
      ranks: options.ranks)
    if case .shards = set, options.last == .pad, !options.oneEpochAtATime {
      throw DataError("--last-batch pad needs random access to the data; shards are streams (use drop)")
    }
    guard set.count >= order.globalBatch || options.oneEpochAtATime else {
      let what = options.ranks > 1 ? "the global batch of \(order.globalBatch) (\(options.ranks) ranks × \(options.batch))" : "the plan's batch of \(options.batch)"
      throw DataError("the data set has \(set.count) images, fewer than \(what)")
    }
    batchesPerEpoch = order.batchesPerEpoch
    limit = options.oneEpochAtATime ? batchesPerEpoch : Int.max
    let depth = max(options.prefetch ?? options.workers + 1, 1)
    slots = (0..<depth).map { [imageSize] _ in Slot(batch: options.batch, imageSize: imageSize) }
    if case .shards(let s) = set { stream = ShardStream(s, options: options) }
    // Every worker's decoder is made here, so a library that cannot start fails at once.
    let transforms = try (0..<max(options.workers, 1)).map { _ in try ImageTransform(transform) }
    running = transforms.count
    for t in transforms {
      let thread = Thread { [unowned self] in self.work(t) }
      thread.stackSize = 1 << 20
      threads.append(thread)
      thread.start()
    }
  }

  deinit { shutdown() }

  /// Stops the workers (waiting for each to finish its batch).
  public func shutdown() {
    lock.lock()
    stopping = true
    lock.broadcast()
    while running > 0 { lock.wait() }
    lock.unlock()
  }

  public var count: Int { data.count }
  public var waitSeconds: Double {
    lock.lock()
    defer { lock.unlock() }
    return wait
  }

  public func seek(epoch: Int, batch: Int) throws {
    lock.lock()
    defer { lock.unlock() }
    let g = epoch * batchesPerEpoch + batch
    if g == nextConsume, failure == nil { return }
    // Let batches being filled finish, then forget everything prefetched.
    nextClaim = Int.max
    while slots.contains(where: \.filling) { lock.wait() }
    for s in slots { (s.ready, s.global) = (false, -1) }
    try stream?.seek(global: g, batchesPerEpoch: batchesPerEpoch)
    (nextClaim, nextConsume, failure) = (g, g, nil)
    limit = options.oneEpochAtATime ? (epoch + 1) * batchesPerEpoch : Int.max
    reportEpoch = epoch
    lock.broadcast()
  }

  public func next(images: Buffer, labels: Buffer) throws -> BatchFill {
    lock.lock()
    defer { lock.unlock() }
    let g = nextConsume
    let slot = slots[g % slots.count]
    let t0 = DispatchTime.now().uptimeNanoseconds
    while !(slot.ready && slot.global == g) && failure == nil {
      if limit <= g { limit = (g / batchesPerEpoch + 1) * batchesPerEpoch }
      lock.broadcast()
      lock.wait()
    }
    wait += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    if let failure { throw failure }
    images.raw.copyMemory(from: slot.images, byteCount: options.batch * imageSize * 4)
    if slot.lambda < 1 {
      try slot.labels.withUnsafeBufferPointer { try Targets.mixed($0.baseAddress!, rows: options.batch, lambda: slot.lambda, in: labels) }
    } else {
      for r in 0..<options.batch { Targets.set(row: r, label: slot.labels[r], in: labels) }
    }
    let epoch = g / batchesPerEpoch
    if epoch != reportEpoch { (epochBad, epochBadCount, reportEpoch) = ([], 0, epoch) }
    epochBadCount += slot.bad.count
    for b in slot.bad where epochBad.count < 10 { epochBad.append((b.name, b.reason)) }
    let fill = slot.fill
    slot.ready = false
    nextConsume = g + 1
    lock.broadcast()
    return fill
  }

  public func takeEpochReport() -> String? {
    lock.lock()
    defer { lock.unlock() }
    guard epochBadCount > 0 else { return nil }
    let names = epochBad.map { "\($0.0) (\($0.1))" }.joined(separator: ", ")
    let more = epochBadCount > epochBad.count ? ", …" : ""
    defer { (epochBad, epochBadCount) = ([], 0) }
    return "skipped \(epochBadCount) unreadable image\(epochBadCount == 1 ? "" : "s"): \(names)\(more)"
  }

  /// A worker: claim the next batch, gather what it needs under the lock, transform it
  /// outside, publish it.
  func work(_ t: ImageTransform) {
    // Linux applies a nice value to the calling thread alone.
    setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, options.workerNice)
    var file: [UInt8] = []
    var indices: [Int] = []
    indices.reserveCapacity(options.batch)
    lock.lock()
    while true {
      while !stopping && (nextClaim >= limit || nextClaim >= nextConsume + slots.count || failure != nil) { lock.wait() }
      if stopping { break }
      let g = nextClaim
      nextClaim += 1
      let slot = slots[g % slots.count]
      (slot.filling, slot.ready, slot.global) = (true, false, g)
      slot.bad.removeAll(keepingCapacity: true)
      let epoch = g / batchesPerEpoch, b = g % batchesPerEpoch
      var samples = options.batch
      indices.removeAll(keepingCapacity: true)
      do {
        switch data {
        case .folder:
          if permutations[epoch] == nil {
            permutations = permutations.filter { $0.key >= epoch - 1 }
            permutations[epoch] = order.permutation(epoch: epoch)
          }
          let rows = order.batch(b, of: permutations[epoch]!)
          indices.append(contentsOf: rows)
          samples = order.samples(in: b)
        case .shards:
          samples = try stream!.take(into: slot, epoch: epoch, batch: options.batch)
          for r in 0..<options.batch { indices.append(b * order.globalBatch + options.rank * options.batch + min(r, max(samples - 1, 0))) }
        }
      } catch {
        failure = failure ?? error
        slot.filling = false
        lock.broadcast()
        continue
      }
      lock.unlock()
      var failed: Error?
      for r in 0..<options.batch {
        let i = indices[r]
        let rng = ImageTransform.generator(seed: options.seed, epoch: epoch, index: i)
        let out = slot.images + r * imageSize
        do {
          switch data {
          case .folder(let f):
            slot.labels[r] = Int64(f.labels[i])
            try readFile(f.files[i], into: &file)
            try file.withUnsafeBytes { try t.apply($0, rng: rng, into: out) }
          case .shards:
            // An evaluation's partial last batch repeats its last sample (rows not counted).
            let row = min(r, max(samples - 1, 0))
            if row != r { slot.labels[r] = slot.labels[row] }
            if slot.bytes[row].isEmpty { throw ImageError(reason: "no .jpg, .jpeg or .png member") }
            try slot.bytes[row].withUnsafeBytes { try t.apply($0, rng: rng, into: out) }
          }
        } catch let e as ImageError {
          let name = sampleName(slot, row: r, index: i, samples: samples)
          if options.onBadImage == .fail {
            failed = DataError("\(name): \(e.reason) (--on-bad-image skip would skip it)")
            break
          }
          slot.bad.append((r, name, e.reason))
        } catch {
          failed = error
          break
        }
      }
      if failed == nil { failed = patchBadRows(slot) }
      slot.lambda = failed == nil ? mix(slot, global: g) : 1
      slot.fill = BatchFill(samples: samples, skipped: slot.bad.isEmpty ? [] : slot.bad.map(\.row))
      lock.lock()
      slot.filling = false
      if let failed { failure = failure ?? failed } else { slot.ready = true }
      lock.broadcast()
    }
    running -= 1
    lock.broadcast()
    lock.unlock()
  }

  /// Mixes the batch with its reverse (timm's Mixup and CutMix in batch mode, with CutMix's
  /// λ corrected to the box's clipped area); the draws come from (seed, batch), not a worker.
  func mix(_ slot: Slot, global g: Int) -> Float {
    let o = options
    guard o.mixup > 0 || o.cutmix > 0 else { return 1 }
    var rng = SplitMix64(seed: o.seed ^ 0x3C6E_F372_FE94_F82B &+ UInt64(g) &* 0x9E37_79B9_7F4A_7C15)
    _ = rng.next()
    guard rng.uniform() < o.mixProb else { return 1 }
    let cut = o.cutmix > 0 && (o.mixup == 0 || rng.uniform() < o.switchProb)
    var lambda = Float(rng.beta(cut ? o.cutmix : o.mixup))
    let b = o.batch, n = imageSize, c = transform.channels, h = transform.height, w = transform.width
    if cut {
      let ratio = (1 - Double(lambda)).squareRoot()
      let ch = Int(Double(h) * ratio), cw = Int(Double(w) * ratio)
      let cy = Int(rng.next() % UInt64(h)), cx = Int(rng.next() % UInt64(w))
      let y0 = min(max(cy - ch / 2, 0), h), y1 = min(max(cy + ch / 2, 0), h)
      let x0 = min(max(cx - cw / 2, 0), w), x1 = min(max(cx + cw / 2, 0), w)
      lambda = 1 - Float((y1 - y0) * (x1 - x0)) / Float(h * w)
      for r in 0..<(b / 2) {
        let p = slot.images + r * n, q = slot.images + (b - 1 - r) * n
        for k in 0..<c {
          for y in y0..<y1 {
            for x in x0..<x1 {
              let i = (k * h + y) * w + x
              (p[i], q[i]) = (q[i], p[i])
            }
          }
        }
      }
    } else {
      for r in 0..<(b / 2) {
        let p = slot.images + r * n, q = slot.images + (b - 1 - r) * n
        for i in 0..<n { (p[i], q[i]) = (lambda * p[i] + (1 - lambda) * q[i], lambda * q[i] + (1 - lambda) * p[i]) }
      }
    }
    return lambda
  }

  /// A sample's name for messages: its file, or its shard and key.
  func sampleName(_ slot: Slot, row r: Int, index i: Int, samples: Int) -> String {
    switch data {
    case .folder(let f): return f.files[i]
    case .shards(let s):
      let row = min(r, max(samples - 1, 0))
      return s.shards[slot.shard[row]] + ":" + slot.key[row]
    }
  }

  /// Each unreadable row takes a copy of the next readable row of the batch (image and
  /// label), so the batch stays whole and the choice depends on the batch alone.
  func patchBadRows(_ slot: Slot) -> Error? {
    guard !slot.bad.isEmpty else { return nil }
    let bad = Set(slot.bad.map(\.row))
    guard bad.count < options.batch else {
      return DataError("no image of a whole batch could be read (\(slot.bad[0].name): \(slot.bad[0].reason))")
    }
    for r in bad.sorted() {
      var s = (r + 1) % options.batch
      while bad.contains(s) { s = (s + 1) % options.batch }
      (slot.images + r * imageSize).update(from: slot.images + s * imageSize, count: imageSize)
      slot.labels[r] = slot.labels[s]
    }
    return nil
  }
}

/// Reads a whole file into `bytes`, reusing its memory.
func readFile(_ path: String, into bytes: inout [UInt8]) throws {
  // withCString reads a native string in place; passing the String would copy it to a C array.
  let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
  guard fd >= 0 else { throw ImageError(reason: "cannot open (\(String(cString: strerror(errno))))") }
  defer { close(fd) }
  var st = stat()
  guard fstat(fd, &st) == 0 else { throw ImageError(reason: "cannot stat") }
  let n = Int(st.st_size)
  guard n <= 1 << 30 else { throw ImageError(reason: "larger than 1 GiB") }
  if bytes.count < n { bytes.append(contentsOf: repeatElement(0, count: n - bytes.count)) } else { bytes.removeLast(bytes.count - n) }
  var done = 0
  try bytes.withUnsafeMutableBytes { b in
    while done < n {
      let r = read(fd, b.baseAddress! + done, n - done)
      guard r > 0 else { throw ImageError(reason: "read error") }
      done += r
    }
  }
}

/// The sample stream of shards for the loader: per epoch, the shards in an order drawn from
/// (seed, epoch), their samples through a shuffle buffer drawn from the same. Image bytes
/// move between the buffer, the batch slots and a pool of spare arrays, never copied or
/// freed, so a warmed-up stream allocates nothing.
final class ShardStream {
  struct Sample {
    var bytes: [UInt8]
    var label: Int
    var shard: Int
    var key: String
  }
  let set: ShardSet
  let options: LoaderOptions
  var epoch = -1
  var shardOrder: [Int] = []
  var shardAt = 0
  var reader: SampleReader?
  var buffer: [Sample] = []
  var spares: [[UInt8]] = []
  var rng = SplitMix64(seed: 0)

  init(_ shards: ShardSet, options: LoaderOptions) {
    self.set = shards
    self.options = options
  }

  /// Positions the stream at the start of global batch `g`: the epoch's stream from its
  /// beginning, with the batches before it read and dropped.
  func seek(global g: Int, batchesPerEpoch: Int) throws {
    start(epoch: g / batchesPerEpoch)
    var sink: [UInt8] = []
    for _ in 0..<(g % batchesPerEpoch * options.batch * options.ranks) { _ = try pull(into: &sink) }
  }

  func start(epoch e: Int) {
    epoch = e
    rng = SplitMix64(seed: options.seed ^ 0x7A5D_0E11 &+ UInt64(e) &* 0x9E37_79B9_7F4A_7C15)
    shardOrder = Array(0..<set.shards.count)
    if options.shuffle { shardOrder.shuffle(using: &rng) }
    (shardAt, reader) = (0, nil)
    while let s = buffer.popLast() { spares.append(s.bytes) }
  }

  /// The next sample of the epoch's stream, its bytes swapped into `row` (whose old array
  /// becomes a spare); nil when the epoch is out of samples.
  func pull(into row: inout [UInt8]) throws -> (label: Int, shard: Int, key: String)? {
    let size = options.shuffle ? max(options.shuffleBuffer, 1) : 1
    while buffer.count < size {
      var bytes = spares.popLast() ?? []
      guard let s = try readOne(into: &bytes) else {
        spares.append(bytes)
        break
      }
      buffer.append(Sample(bytes: bytes, label: s.label, shard: s.shard, key: s.key))
    }
    guard !buffer.isEmpty else { return nil }
    let i = options.shuffle ? Int(rng.next() % UInt64(buffer.count)) : 0
    buffer.swapAt(i, buffer.count - 1)
    var s = buffer.removeLast()
    swap(&row, &s.bytes)
    spares.append(s.bytes)
    return (s.label, s.shard, s.key)
  }

  func readOne(into bytes: inout [UInt8]) throws -> (label: Int, shard: Int, key: String)? {
    while shardAt < shardOrder.count {
      let index = shardOrder[shardAt], path = set.shards[index]
      if reader == nil { reader = SampleReader(TarReader(try FileByteStream(path: path), name: path), name: path) }
      if let s = try reader!.next(into: &bytes) { return (s.label, index, s.key) }
      (reader, shardAt) = (nil, shardAt + 1)
    }
    return nil
  }

  /// Moves batch samples of epoch `e` into the slot; returns how many the epoch had left (the
  /// rest of the rows repeat the last one, for an evaluation's partial batch).
  func take(into slot: ImageLoader.Slot, epoch e: Int, batch: Int) throws -> Int {
    if e != epoch { start(epoch: e) }
    // A data-parallel rank keeps its part of the global batch and drops the others'.
    var sink: [UInt8] = []
    for _ in 0..<(options.rank * batch) { _ = try pull(into: &sink) }
    var n = 0
    while n < batch, let s = try pull(into: &slot.bytes[n]) {
      slot.labels[n] = Int64(s.label)
      (slot.shard[n], slot.key[n]) = (s.shard, s.key)
      n += 1
    }
    for _ in 0..<((options.ranks - 1 - options.rank) * batch) { _ = try pull(into: &sink) }
    return n
  }
}
