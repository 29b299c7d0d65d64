// Data.swift: `sbpc data`, and the image-data flags `train` and `eval` share: where the images are, the transform, the loader.
import ArgumentParser
import Foundation
import SBPData
import SBPIR
import SBPRuntime

/// The transform and loader flags, with timm's names and defaults.
struct TransformOptions: ParsableArguments {
  @Option(name: .customLong("crop-pct"), help: "Eval: resize the short side to size / crop-pct, then center-crop (default 0.875).")
  var cropPct: Double = 0.875
  @Option(
    help: "Resampling: bicubic, bilinear or nearest (default: bicubic for eval; for train, bilinear or bicubic at random per image, timm's 'random').")
  var interpolation: String?
  @Option(name: .customLong("color-jitter"), help: "Train: brightness, contrast and saturation jitter (default 0.4; 0 turns it off).")
  var colorJitter: Double = 0.4
  @Option(help: "Train: probability of a horizontal flip (default 0.5).") var hflip: Double = 0.5
  @Option(parsing: .upToNextOption, help: ArgumentHelp("Train: RandomResizedCrop's area range (default 0.08 1).", valueName: "LO HI"))
  var scale: [Double] = [0.08, 1]
  @Option(parsing: .upToNextOption, help: ArgumentHelp("Train: RandomResizedCrop's aspect range (default 0.75 1.3333).", valueName: "LO HI"))
  var ratio: [Double] = [3.0 / 4, 4.0 / 3]
  @Option(parsing: .upToNextOption, help: ArgumentHelp("Per-channel mean (default ImageNet's: 0.485 0.456 0.406).", valueName: "R G B"))
  var mean: [Float] = []
  @Option(parsing: .upToNextOption, help: ArgumentHelp("Per-channel std (default ImageNet's: 0.229 0.224 0.225).", valueName: "R G B"))
  var std: [Float] = []

  func validate() throws {
    guard cropPct > 0, cropPct <= 1 else { throw ValidationError("--crop-pct must be in (0, 1], got \(cropPct)") }
    if let interpolation, interpolation != "random", Interpolation(rawValue: interpolation) == nil {
      throw ValidationError("--interpolation must be bicubic, bilinear, nearest or random, got '\(interpolation)'")
    }
    guard colorJitter >= 0, colorJitter <= 1 else { throw ValidationError("--color-jitter must be in [0, 1], got \(colorJitter)") }
    guard hflip >= 0, hflip <= 1 else { throw ValidationError("--hflip must be in [0, 1], got \(hflip)") }
    guard scale.count == 2, scale[0] > 0, scale[0] <= scale[1], scale[1] <= 1 else {
      throw ValidationError("--scale takes LO HI with 0 < LO <= HI <= 1, got \(scale)")
    }
    guard ratio.count == 2, ratio[0] > 0, ratio[0] <= ratio[1] else { throw ValidationError("--ratio takes LO HI with 0 < LO <= HI, got \(ratio)") }
    for (name, v) in [("--mean", mean), ("--std", std)] where !v.isEmpty && v.count != 1 && v.count != 3 {
      throw ValidationError("\(name) takes 1 or 3 values, got \(v.count)")
    }
    guard std.allSatisfy({ $0 > 0 }) else { throw ValidationError("--std values must be positive, got \(std)") }
  }

  /// The transform for a plan image of [C, H, W].
  func config(_ mode: TransformConfig.Mode, shape: [Int]) throws -> TransformConfig {
    var c = TransformConfig()
    c.mode = mode
    guard shape.count == 3, shape[0] == 1 || shape[0] == 3, shape[1] >= 1, shape[2] >= 1 else {
      throw DataError("the plan's image input is \(shape); image data needs [1 or 3, H, W]")
    }
    (c.channels, c.height, c.width) = (shape[0], shape[1], shape[2])
    c.cropPct = cropPct
    c.interpolation = interpolation.flatMap(Interpolation.init(rawValue:))
    c.colorJitter = colorJitter
    c.hflip = hflip
    c.scale = scale[0]...scale[1]
    c.ratio = ratio[0]...ratio[1]
    // One channel: the grey mean and std of ImageNet's, as timm uses for in_chans=1.
    let m = mean.isEmpty ? c.mean : mean, s = std.isEmpty ? c.std : std
    c.mean = c.channels == 1 ? [m.count == 1 ? m[0] : m.reduce(0, +) / 3] : (m.count == 1 ? [m[0], m[0], m[0]] : m)
    c.std = c.channels == 1 ? [s.count == 1 ? s[0] : s.reduce(0, +) / 3] : (s.count == 1 ? [s[0], s[0], s[0]] : s)
    return c
  }
}

/// Where image data is, and how the loader runs.
struct LoaderFlags: ParsableArguments {
  @Option(
    help: ArgumentHelp(
      "Image data: a folder PATH/<class>/*.jpg|png (with PATH/train and PATH/val, train reads the first and --val defaults to the second), or WebDataset shards 'shards-{000..099}.tar'.",
      valueName: "PATH"))
  var data: String?
  @Option(help: "Loader threads decoding and transforming images (default: 1 per 4 cores, at least 1).")
  var workers: Int = max(1, ProcessInfo.processInfo.activeProcessorCount / 4)
  @Option(help: "Ready batches kept ahead of the step (default: workers + 1).") var prefetch: Int?
  @Option(name: .customLong("on-bad-image"), help: "An image that cannot be decoded: skip (count it, name it at the epoch's end) or fail.")
  var onBadImage: String = "skip"
  @Option(name: .customLong("shuffle-buffer"), help: "Shards: samples held for the within-buffer shuffle (default 500).")
  var shuffleBuffer: Int = 500

  func validate() throws {
    guard workers >= 1, workers <= 64 else { throw ValidationError("--workers must be between 1 and 64, got \(workers)") }
    if let prefetch { guard prefetch >= 1, prefetch <= 64 else { throw ValidationError("--prefetch must be between 1 and 64, got \(prefetch)") } }
    guard BadImagePolicy(rawValue: onBadImage) != nil else { throw ValidationError("--on-bad-image must be skip or fail, got '\(onBadImage)'") }
    guard shuffleBuffer >= 1 else { throw ValidationError("--shuffle-buffer must be >= 1, got \(shuffleBuffer)") }
  }

  func options(batch: Int, seed: UInt64) -> LoaderOptions {
    var o = LoaderOptions()
    o.batch = batch
    o.seed = seed
    o.workers = workers
    o.prefetch = prefetch
    o.onBadImage = BadImagePolicy(rawValue: onBadImage)!
    o.shuffleBuffer = shuffleBuffer
    return o
  }

  /// A loader reading one epoch at a time in order, padding the last batch: for evaluation.
  func evaluationLoader(
    _ set: ImageSet, transform: TransformOptions, shape: [Int], batch: Int, rank: Int = 0, ranks: Int = 1
  ) throws -> ImageLoader {
    var o = options(batch: batch, seed: 0)
    (o.rank, o.ranks) = (rank, ranks)
    (o.shuffle, o.last, o.oneEpochAtATime) = (false, .pad, true)
    return try ImageLoader(set, transform: try transform.config(.eval, shape: shape), options: o)
  }
}

struct DataCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "data",
    abstract: "List an image data set, write its first images as the loader makes them, or measure the loader.",
    discussion: prose("""
      PATH is a folder of class folders or WebDataset shards ('shards-{000..099}.tar'). Without
      other flags, prints the classes and their image counts. --dump N OUT.npy writes the
      first N images, in the data set's order and through --transform, as f32 [N, C, S, S]
      (and their labels as i64 [N] beside it, OUT.labels.npy). --bench decodes and transforms
      for --seconds and reports images/s on one worker and on --workers.
      """))

  @Argument(help: "The data set.") var path: String
  @Option(help: "train (RandomResizedCrop, flip, color jitter) or eval (resize, center crop); default eval.")
  var transform: String = "eval"
  @Option(help: "Output side in pixels (default 224).") var size: Int = 224
  @Option(help: "Output channels: 3, or 1 for grey models (default 3).") var channels: Int = 3
  @Option(parsing: .upToNextOption, help: ArgumentHelp("Write the first N transformed images to OUT.npy.", valueName: "N OUT"))
  var dump: [String] = []
  @Flag(help: "Measure decode + transform throughput.") var bench = false
  @Option(help: "For --bench: seconds per measurement (default 5).") var seconds: Double = 5
  @Option(help: "For --bench: loader threads of the second measurement (default 2).") var workers: Int = 2
  @Option(help: "Seed of the train transform's randomness.") var seed: UInt64 = 0
  @Flag(help: "Print the listing or the measurement as JSON.") var json = false
  @OptionGroup var transformOptions: TransformOptions

  func validate() throws {
    guard TransformConfig.Mode(rawValue: transform) != nil else { throw ValidationError("--transform must be train or eval, got '\(transform)'") }
    guard size >= 1, size <= 8192 else { throw ValidationError("--size must be between 1 and 8192, got \(size)") }
    guard channels == 1 || channels == 3 else { throw ValidationError("--channels must be 1 or 3, got \(channels)") }
    if !dump.isEmpty {
      guard dump.count == 2, let n = Int(dump[0]), n >= 1 else { throw ValidationError("--dump takes N OUT.npy, got \(dump)") }
    }
    guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be in (0, 3600], got \(seconds)") }
    guard workers >= 1, workers <= 64 else { throw ValidationError("--workers must be between 1 and 64, got \(workers)") }
  }

  func run() throws {
    try reportingErrors {
      let set = try ImageSet.open(path, classes: nil)
      let config = try transformOptions.config(TransformConfig.Mode(rawValue: transform)!, shape: [channels, size, size])
      if dump.isEmpty && !bench { try list(set) }
      if dump.count == 2 { try write(set, config, count: Int(dump[0])!, to: dump[1]) }
      if bench { try measure(set, config) }
    }
  }

  func list(_ set: ImageSet) throws {
    var counts: [Int: Int] = [:]
    var kind = "ImageFolder"
    switch set {
    case .folder(let f): for l in f.labels { counts[l, default: 0] += 1 }
    case .shards(let s):
      kind = "\(s.shards.count) WebDataset shard\(s.shards.count == 1 ? "" : "s")"
      try set.forEach(limit: Int.max) { _, label, _, _ in counts[label, default: 0] += 1 }
    }
    let names = set.classNames
    if json {
      let classes = names.enumerated().map { ["name": $1, "label": $0, "images": counts[$0] ?? 0] as [String: Any] }
      let record: [String: Any] = ["path": path, "kind": kind, "images": set.count, "classes": classes]
      if let data = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) { print(String(decoding: data, as: UTF8.self)) }
      return
    }
    print("\(path): \(kind), \(names.count) classes, \(set.count) images")
    for (label, name) in names.enumerated() { print(String(format: "%6d  %8d  ", label, counts[label] ?? 0) + name) }
  }

  func write(_ set: ImageSet, _ config: TransformConfig, count n: Int, to out: String) throws {
    let t = try ImageTransform(config)
    let size = config.channels * config.height * config.width
    var images = [Float](repeating: 0, count: n * size), labels: [Int64] = []
    try set.forEach(limit: n) { i, label, name, bytes in
      let rng = ImageTransform.generator(seed: seed, epoch: 0, index: i)
      do { try images.withUnsafeMutableBufferPointer { try t.apply(bytes, rng: rng, into: $0.baseAddress! + i * size) } } catch let e
        as ImageError
      { throw DataError("\(name): \(e.reason)") }
      labels.append(Int64(label))
    }
    let got = labels.count
    try NPYArray(f32: Array(images.prefix(got * size)), shape: [got, config.channels, config.height, config.width]).write(out)
    let labelPath = (out.hasSuffix(".npy") ? String(out.dropLast(4)) : out) + ".labels.npy"
    try NPYArray(i64: labels, shape: [got]).write(labelPath)
    print("wrote \(got) images to \(out) (f32 [\(got),\(config.channels),\(config.height),\(config.width)]) and their labels to \(labelPath)")
  }

  func measure(_ set: ImageSet, _ config: TransformConfig) throws {
    // One worker: the transform in this thread, files read as the loader reads them.
    let t = try ImageTransform(config)
    var out = [Float](repeating: 0, count: config.channels * config.height * config.width)
    var done = 0
    let start = Date()
    while Date().timeIntervalSince(start) < seconds {
      try set.forEach(limit: Int.max) { i, _, _, bytes in
        guard Date().timeIntervalSince(start) < seconds else { return }
        let rng = ImageTransform.generator(seed: seed, epoch: done / max(set.count, 1), index: i)
        try? out.withUnsafeMutableBufferPointer { try t.apply(bytes, rng: rng, into: $0.baseAddress!) }
        done += 1
      }
    }
    let one = Double(done) / Date().timeIntervalSince(start)
    // The loader itself with `workers` threads, batches of 16, the transform asked for.
    var o = LoaderOptions()
    (o.batch, o.workers, o.seed, o.shuffle, o.workerNice) = (min(16, set.count), workers, seed, config.mode == .train, 0)
    let loader = try ImageLoader(set, transform: config, options: o)
    let images = Buffer(TensorType(.f32, [o.batch, config.channels, config.height, config.width]))
    let labels = Buffer(TensorType(.i64, [o.batch]))
    var batches = 0
    let t0 = Date()
    while Date().timeIntervalSince(t0) < seconds {
      _ = try loader.next(images: images, labels: labels)
      batches += 1
    }
    let many = Double(batches * o.batch) / Date().timeIntervalSince(t0)
    loader.shutdown()
    if json {
      print("{\"images_per_s_one_worker\": \(one), \"images_per_s\": \(many), \"workers\": \(workers), \"transform\": \"\(config.mode.rawValue)\", \"size\": \(config.height)}")
    } else {
      print(String(format: "%@ transform to %d: %.1f images/s on 1 worker; %.1f images/s with the loader's %d workers", config.mode.rawValue, config.height, one, many, workers))
    }
  }
}
