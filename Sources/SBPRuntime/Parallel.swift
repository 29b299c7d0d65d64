// Parallel.swift: splits a kernel's rows over the runtime's threads, on a pool of workers that spin between kernels.
import Dispatch
import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Splits the kernels' work over the executor's threads (a GEMM's parts too: OpenBLAS runs
/// single-threaded inside a step). Chunks are contiguous and disjoint, so a kernel writing only its own rows needs no
/// locks; below `grain` items per thread the work runs inline, where a thread hand-off would
/// cost more than it saves.
enum Parallel {
  /// Threads the kernels may use; the executor sets it from its `threads` option.
  nonisolated(unsafe) static var threads = 1

  /// The number of chunks `chunks(count, grain:)` splits `count` items into.
  @inline(__always) static func chunkCount(_ count: Int, grain: Int) -> Int {
    Swift.max(1, Swift.min(threads, count / Swift.max(grain, 1)))
  }

  /// Calls `body(chunk, range)` for disjoint ranges covering 0..<count, concurrently when
  /// there is enough work; `chunk` < `chunkCount(count, grain:)` names the caller's share.
  @inline(__always) static func chunks(_ count: Int, grain: Int, _ body: (_ chunk: Int, _ range: Range<Int>) -> Void) {
    let t = chunkCount(count, grain: grain)
    if t == 1 {
      body(0, 0..<count)
      return
    }
    WorkerPool.shared.run(parts: t) { i in body(i, (count * i / t)..<(count * (i + 1) / t)) }
  }
}

/// The threads behind `Parallel.chunks`: the caller runs chunk 0 and workers 1..<parts run
/// the others. A step hands out hundreds of small kernels back to back; waking a sleeping
/// thread for each (DispatchQueue.concurrentPerform) cost 30-60 µs per kernel on a 2-vCPU VM,
/// about 5% of a ViT-Tiny step, so a worker spins for a while after each job and only then
/// sleeps on a condition variable.
final class WorkerPool: @unchecked Sendable {
  static let shared = WorkerPool()

  /// How long a worker spins for the next job before it sleeps. Longer than the gap between
  /// two parallel kernels of a step (serial kernels, the optimizer), short enough that an idle
  /// process stops burning a core at once.
  static let spinNanoseconds = 200_000

  /// The spin in force: `spinNanoseconds`, or 0 once the pool has more threads than the
  /// process has cores, where a spinning thread would hold a core another one needs (a
  /// ViT-Tiny step with 8 threads on 2 cores went from 0.95 to 1.37 s with spinning).
  private let spin = Atomic<Int>(WorkerPool.spinNanoseconds)
  private let cores = Swift.max(1, ProcessInfo.processInfo.activeProcessorCount)

  /// The job's generation times 65536 plus its part count: one load tells a worker both that
  /// there is a new job and whether it has a part in it, so it never reads `job` otherwise.
  private let state = Atomic<Int>(0)
  /// Workers that finished their part of the current job.
  private let done = Atomic<Int>(0)
  /// Workers waiting on `wake`; posting a job signals only when there are some.
  private let sleepers = Atomic<Int>(0)
  /// Held by the caller whose job the workers run: a kernel calling `chunks` from inside a
  /// chunk, or a second thread, runs its chunks inline instead.
  private let busy = Atomic<Bool>(false)
  private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
  /// Written only while no worker runs a part, read by workers after they load `state`.
  private var job: ((Int) -> Void)?
  /// Workers started so far (they index parts 1...workers); grows to the largest job.
  private var workers = 0

  private init() {
    pthread_mutex_init(lock, nil)
    pthread_cond_init(wake, nil)
  }

  /// Runs `part(i)` for i in 0..<parts, part 0 on the calling thread, and returns when all have.
  func run(parts: Int, _ part: (Int) -> Void) {
    guard parts > 1, parts < 1 << 16, busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
    else {
      for i in 0..<parts { part(i) }
      return
    }
    while workers < parts - 1 { start(worker: workers + 1) }
    withoutActuallyEscaping(part) { part in
      job = part
      done.store(0, ordering: .relaxed)
      let generation = state.load(ordering: .relaxed) >> 16 + 1
      state.store(generation << 16 | parts, ordering: .sequentiallyConsistent)
      if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
        pthread_mutex_lock(lock)
        pthread_cond_broadcast(wake)
        pthread_mutex_unlock(lock)
      }
      part(0)
      // A worker whose core was taken (more threads than cores, a busy machine) needs this
      // thread's core to finish: after a spin's worth of waiting, give the core up each check.
      var spins = 0
      var since = 0
      while done.load(ordering: .acquiring) < parts - 1 {
        spins &+= 1
        if spins & 255 == 0 {
          let now = Int(DispatchTime.now().uptimeNanoseconds)
          if since == 0 { since = now } else if now - since > spin.load(ordering: .relaxed) { sched_yield() }
        }
      }
      job = nil
    }
    busy.store(false, ordering: .releasing)
  }

  private func start(worker index: Int) {
    workers = index
    if index + 1 > cores { spin.store(0, ordering: .relaxed) }
    // The state before this job is posted: the new worker must see the post as a change.
    let first = state.load(ordering: .acquiring)
    let context = Unmanaged.passRetained(WorkerContext(pool: self, index: index, seen: first)).toOpaque()
    var thread = pthread_t()
    let status = pthread_create(
      &thread, nil,
      { raw in
        let context = Unmanaged<WorkerContext>.fromOpaque(raw!).takeRetainedValue()
        context.pool.loop(index: context.index, seen: context.seen)
      }, context)
    precondition(status == 0, "sbpc: cannot start a worker thread (pthread_create: \(status))")
    pthread_detach(thread)
  }

  private func loop(index: Int, seen first: Int) -> Never {
    var seen = first
    while true {
      var current = state.load(ordering: .acquiring)
      var spins = 0
      var since = 0
      while current == seen {
        spins &+= 1
        if spins & 255 == 0 {
          let now = Int(DispatchTime.now().uptimeNanoseconds)
          if since == 0 {
            since = now
          } else if now - since > spin.load(ordering: .relaxed) {
            park(while: seen)
            since = 0
          }
        }
        current = state.load(ordering: .acquiring)
      }
      seen = current
      // The job a worker has no part in may already be over; it does not touch `job` then.
      if index < current & 0xFFFF {
        job!(index)
        done.add(1, ordering: .releasing)
      }
    }
  }

  /// Sleeps until `state` moves past `seen`. The caller stores `state` before it loads
  /// `sleepers`, and this increments `sleepers` before it loads `state` (both sequentially
  /// consistent), so one of the two sees the other: no wake-up is lost.
  private func park(while seen: Int) {
    pthread_mutex_lock(lock)
    sleepers.add(1, ordering: .sequentiallyConsistent)
    while state.load(ordering: .sequentiallyConsistent) == seen { pthread_cond_wait(wake, lock) }
    sleepers.subtract(1, ordering: .sequentiallyConsistent)
    pthread_mutex_unlock(lock)
  }
}

/// What a new worker thread needs, passed through pthread_create's one pointer.
private final class WorkerContext {
  let pool: WorkerPool
  let index: Int
  let seen: Int
  init(pool: WorkerPool, index: Int, seen: Int) {
    self.pool = pool
    self.index = index
    self.seen = seen
  }
}

/// Scratch memory for kernels that need per-thread space (partial sums, padded planes). It
/// grows on the first step that needs more and is reused after, so steady-state steps
/// allocate nothing. Callers size it before splitting work, from the calling thread.
enum Scratch {
  nonisolated(unsafe) private static var bases: [UnsafeMutablePointer<Float>] = [
    .allocate(capacity: 0), .allocate(capacity: 0), .allocate(capacity: 0),
  ]
  nonisolated(unsafe) private static var capacities = [0, 0, 0]

  /// At least `count` floats in `slot`, valid until the next call for that slot: 0 and 1
  /// for kernels needing one or two regions, 2 for GEMM's partial products (a GEMM may run
  /// inside a kernel that holds the others).
  static func floats(_ count: Int, slot: Int = 0) -> UnsafeMutablePointer<Float> {
    if count > capacities[slot] {
      bases[slot].deallocate()
      bases[slot] = .allocate(capacity: count)
      capacities[slot] = count
    }
    return bases[slot]
  }
}
