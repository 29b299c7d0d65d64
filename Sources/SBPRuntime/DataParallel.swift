// DataParallel.swift: the executor's side of data-parallel training: bucketed gradient allreduce and synchronized BatchNorm.
import Foundation
import SBPIR

/// One allreduce bucket at run time: its gradients' buffers, the contiguous copy MPI reduces,
/// and the request in flight.
final class BucketRun {
  let bucket: GradientBucket
  let gradients: [Buffer]
  let packed: UnsafeMutablePointer<Float>
  let request = Communicator.Request()
  init(_ b: GradientBucket, _ gradients: [Buffer]) {
    bucket = b
    self.gradients = gradients
    packed = .allocate(capacity: max(b.elements, 1))
    packed.initialize(repeating: 0, count: max(b.elements, 1))
  }
  deinit { packed.deallocate() }
}

/// What the executor needs to run its step as one rank of several.
final class DataParallelState {
  let comm: Communicator
  let syncBatchNorm: Bool
  let buckets: [BucketRun]
  /// Bucket indices to start after step i, and to finish before step i.
  let startAfter: [Int: [Int]]
  let waitBefore: [Int: [Int]]
  /// Per-channel sums of synchronized BatchNorm (two per channel), allocated once.
  let channelSums: UnsafeMutablePointer<Double>
  var inFlight: [Int] = []
  /// Retained values and their copies, refreshed when a bucket holding one is averaged.
  var retained: [(made: Buffer, copy: Buffer)] = []
  init(comm: Communicator, syncBatchNorm: Bool, buckets: [BucketRun], channels: Int) {
    self.comm = comm
    self.syncBatchNorm = syncBatchNorm
    self.buckets = buckets
    var s: [Int: [Int]] = [:], w: [Int: [Int]] = [:]
    for (k, b) in buckets.enumerated() {
      s[b.bucket.start, default: []].append(k)
      w[b.bucket.wait, default: []].append(k)
    }
    (startAfter, waitBefore) = (s, w)
    inFlight.reserveCapacity(buckets.count)
    channelSums = .allocate(capacity: max(2 * channels, 1))
  }
  deinit { channelSums.deallocate() }
}

extension Executor {
  /// Makes this executor one rank of `comm`: each bucket's gradients are packed and summed
  /// across the ranks once the backward has made them, and averaged back in place before
  /// the first update that reads one. Fails for a plan whose updates were not scheduled
  /// into buckets (`compile --distributed`).
  public func distribute(over comm: Communicator, syncBatchNorm: Bool) throws {
    let buckets = graph.gradientBuckets
    let updates = graph.nodes.filter(\.op.isUpdate).count
    guard updates == 0 || buckets.reduce(0, { $0 + $1.updates.count }) == updates else {
      throw RuntimeError(
        "the plan was compiled for one process (its updates run as each gradient is done, before an allreduce could finish); compile it with --distributed for a data-parallel run"
      )
    }
    // Each reduction must start after its gradients are made and end before an update reads
    // them; otherwise an update would read a rank's own, or a half-reduced, gradient.
    for b in buckets where b.start >= b.wait {
      throw RuntimeError("allreduce bucket \(b.index) starts at op \(b.start), after an update that reads it (op \(b.wait)): the plan's schedule is broken")
    }
    let channels = graph.nodes.reduce(0) { m, n in
      if case .batchNormTraining = n.op { return max(m, graph.type(of: n.inputs[0]).shape[1]) }
      return m
    }
    parallel = DataParallelState(
      // The gradients as the updates read them: a retained value's `buffer` is its copy.
      comm: comm, syncBatchNorm: syncBatchNorm,
      buckets: buckets.map { b in
        BucketRun(b, b.gradients.map { v in steps[b.updates.first { graph.nodes[$0].inputs[1] == v }!].ins[1] })
      },
      channels: channels)
    parallel?.retained = snapshots.values.flatMap { $0.map { ($0.from, $0.to) } }
  }

  /// Bytes of the packed bucket copies (beside `totalBytes`).
  public var bucketBytes: Int { parallel?.buckets.reduce(0) { $0 + $1.bucket.bytes } ?? 0 }

  /// Before step i: finish the buckets its update needs, averaging them into the gradients.
  func finishBuckets(before i: Int) {
    guard let dp = parallel, let ks = dp.waitBefore[i] else { return }
    for k in ks { finish(k, dp) }
  }

  /// Before clipping or at the end of the step: every bucket still in flight.
  func finishAllBuckets() {
    guard let dp = parallel else { return }
    for k in dp.inFlight { finish(k, dp) }
  }

  private func finish(_ k: Int, _ dp: DataParallelState) {
    guard let at = dp.inFlight.firstIndex(of: k) else { return }
    dp.inFlight.remove(at: at)
    let b = dp.buckets[k]
    let t0 = DispatchTime.now().uptimeNanoseconds
    dp.comm.wait(b.request)
    communicationWaitNanos &+= DispatchTime.now().uptimeNanoseconds - t0
    let scale = 1 / Float(dp.comm.size)
    var off = 0
    for g in b.gradients {
      let src = b.packed + off, dst = g.f32
      for j in 0..<g.count { dst[j] = src[j] * scale }
      off += g.count
    }
    // A retained gradient (--dump-grads) is the averaged one, not this rank's own.
    for (made, copy) in dp.retained where b.gradients.contains(where: { $0 === made }) {
      copy.raw.copyMemory(from: made.raw, byteCount: made.byteCount)
    }
  }

  /// After step i: start the buckets whose last gradient it made; otherwise let the
  /// reductions in flight progress.
  func startBuckets(after i: Int) {
    guard let dp = parallel else { return }
    guard let ks = dp.startAfter[i] else {
      if let k = dp.inFlight.first { dp.comm.test(dp.buckets[k].request) }
      return
    }
    for k in ks {
      let b = dp.buckets[k]
      var off = 0
      for g in b.gradients {
        (b.packed + off).update(from: g.f32, count: g.count)
        off += g.count
      }
      if b.bucket.wait == b.bucket.start + 1 {
        // Nothing runs between the start and the wait (the last bucket): the blocking
        // allreduce, which Open MPI tunes far better than its non-blocking one, costs less.
        let t0 = DispatchTime.now().uptimeNanoseconds
        dp.comm.sum(b.packed, b.bucket.elements)
        communicationWaitNanos &+= DispatchTime.now().uptimeNanoseconds - t0
        dp.inFlight.append(k)
        continue
      }
      dp.comm.startSum(b.packed, b.bucket.elements, b.request)
      dp.inFlight.append(k)
    }
  }
}

extension BatchNorm {
  /// `training` over the batch of every rank (`--sync-bn`): the per-channel sums are reduced
  /// across the ranks before the mean, and again before the variance.
  static func trainingSynced(
    epsilon: Float, _ x: Buffer, _ scale: Buffer, _ bias: Buffer, _ y: Buffer, _ mean: Buffer, _ variance: Buffer,
    _ comm: Communicator, _ sums: UnsafeMutablePointer<Double>
  ) {
    let (n, c, s) = dims(x.type)
    let m = Double(n * s * comm.size)
    forEachChannel(x.type) { ch, runs in sums[ch] = sum(x, runs, s) }
    comm.sum(sums, c)
    forEachChannel(x.type) { ch, runs in sums[c + ch] = squares(x, runs, s, around: sums[ch] / m) }
    comm.sum(sums + c, c)
    forEachChannel(x.type) { ch, runs in
      normalize(epsilon, x, scale, bias, y, mean, variance, ch, runs, s, mu: sums[ch] / m, variance: sums[c + ch] / m)
    }
  }

  /// `gradient` of `trainingSynced`: Σdy and Σdy·x̂ over every rank's batch give dx; the
  /// scale's and bias's gradients stay this rank's own sums, which the gradient allreduce
  /// then averages (PyTorch's SyncBatchNorm does the same).
  static func gradientSynced(
    epsilon: Float, _ x: Buffer, _ scale: Buffer, _ mean: Buffer, _ variance: Buffer, _ dy: Buffer, _ dx: Buffer, _ dscale: Buffer,
    _ dbias: Buffer, _ comm: Communicator, _ sums: UnsafeMutablePointer<Double>
  ) {
    let (n, c, s) = dims(x.type)
    let m = Double(n * s * comm.size)
    forEachChannel(x.type) { ch, runs in
      (sums[ch], sums[c + ch]) = gradientSums(epsilon, x, mean, variance, dy, dscale, dbias, ch, runs, s)
    }
    comm.sum(sums, 2 * c)
    forEachChannel(x.type) { ch, runs in
      inputGradient(epsilon, x, scale, mean, variance, dy, dx, ch, runs, s, sd: sums[ch], sdx: sums[c + ch], count: m)
    }
  }
}
