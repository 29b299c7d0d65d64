// Bench.swift: `sbpc bench`, the no-SBP and SBP training steps timed in alternating child processes.
import ArgumentParser
import Foundation
import SBPIR
import SBPONNX
import SBPPasses
import SBPPlan
import SBPRuntime

struct Bench: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Time a model's training step without and with SBP, and compare.",
    discussion: prose("""
      Compiles the plain plan (--keep 1) and the SBP plan (the SBP flags, default keep 0.5 on
      the paper's blocks) and runs each in its own child process, so peak memory is per plan.
      Each child builds its executor and runs the warm-up steps; then the counted steps
      alternate between the two children, one step at a time, so a slow spell on a shared
      machine hits both plans alike. Data are one seeded synthetic batch; SBP masks are drawn
      each step as in `sbpc train`.

      Reported per plan: median and min/max step time; FLOPs per step as the runtime counts
      them; achieved GFLOP/s and its share of the sgemm peak (a 4096³ cblas_sgemm timed before
      and after the rounds, same threads, the higher of the two); the rate inside GEMM calls alone; and the child's peak resident
      memory (weights, optimizer state, the arena, and the process itself). Then the SBP
      speed-up, no-SBP median over SBP median. `models/bench_torch.py` measures PyTorch the
      same way; `make bench` runs both.
      """))

  @Argument(help: "The ONNX model.") var model: String
  @OptionGroup var sbp: SBPFlags
  @OptionGroup var shape: ShapeOptions
  @Option(help: "Counted steps per plan (default 5).") var runs: Int = 5
  @Option(help: "Uncounted steps per plan before counting (default 1).") var warmup: Int = 1
  @Option(help: "Threads for both plans (default: the machine's cores).") var threads: Int = ProcessInfo.processInfo.activeProcessorCount
  @Option(help: "Seed for the synthetic data and the SBP masks.") var seed: UInt64 = 0
  @Option(help: "Which plans to run: no-sbp, sbp or both (default both).") var plans: String = "both"
  @Flag(help: "Print the results as JSON instead of a table.") var json = false
  @Option(help: ArgumentHelp("The products' precision in both plans, as compile's --precision (default fp32).", valueName: "fp32|bf16"))
  var precision: String = "fp32"

  func validate() throws {
    guard Precision(rawValue: precision) != nil else { throw ValidationError("--precision must be fp32 or bf16, got '\(precision)'") }
    guard runs >= 1, runs <= 10_000 else { throw ValidationError("--runs must be between 1 and 10000, got \(runs)") }
    guard warmup >= 0, warmup <= 10_000 else { throw ValidationError("--warmup must be between 0 and 10000, got \(warmup)") }
    guard threads >= 1, threads <= 256 else { throw ValidationError("--threads must be between 1 and 256, got \(threads)") }
    guard ["no-sbp", "sbp", "both"].contains(plans) else { throw ValidationError("--plans must be no-sbp, sbp or both, got '\(plans)'") }
  }

  /// One plan's measurements.
  struct Result: Codable {
    var name: String
    var median_s: Double
    var min_s: Double
    var max_s: Double
    var times_s: [Double]
    var flops: Int
    var gflops: Double
    var peak_fraction: Double
    var gemm_gflops: Double
    var gemm_peak_fraction: Double
    var gemm_share: Double
    var peak_rss_bytes: Int
  }

  /// The JSON document (the schema models/bench_torch.py also writes).
  struct Report: Codable {
    var framework = "sbpc"
    var model: String
    var batch: Int
    var threads: Int
    var runs: Int
    var warmup: Int
    var keep: Double
    var attention: String
    var sgemm_peak_gflops: Double
    /// OpenBLAS's kernel set, and the one it had picked itself when sbpc overrode it.
    var blas_core: String
    var blas_core_detected: String?
    var plans: [Result]
    var speedup: Double?
    /// The products' precision; for bf16, the kernel they ran on and the rate of a large
    /// product on the vdpbf16ps kernel (0 without AVX512-BF16), same threads.
    var precision = "fp32"
    var bf16_kernel: String?
    var bf16_dot_peak_gflops: Double?
  }

  func run() throws {
    try reportingErrors {
      let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sbpc-bench-\(getpid())").path
      try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
      defer { try? FileManager.default.removeItem(atPath: dir) }
      var names = ["no-sbp", "sbp"]
      if plans != "both" { names = [plans] }
      var paths: [String] = []
      var sbpOptions = sbp.options
      for name in names {
        progress("compiling \(name)")
        var o = sbp.options
        if name == "no-sbp" { o.keep = 1 }
        let (plan, notes) = try Plan.compile(
          model: model,
          options: Plan.Options(
            batch: shape.batch, dims: shape.importOptions.dims, optimizer: .defaultSGD, sbp: o, precision: Precision(rawValue: precision)!))
        if name == "sbp" {
          printNotes(notes)
          sbpOptions = plan.sbp
        }
        let path = "\(dir)/\(name).plan"
        guard FileManager.default.createFile(atPath: path, contents: Data(plan.serialized().utf8)) else {
          throw PlanError("\(path): cannot write")
        }
        paths.append(path)
      }
      progress("measuring the sgemm peak (4096³, \(threads) threads)")
      var peak = GEMM.peakGFLOPs(threads: threads)
      var children: [BenchChildProcess] = []
      for (name, path) in zip(names, paths) {
        progress("starting \(name): building the executor, \(warmup) warm-up step\(warmup == 1 ? "" : "s")")
        children.append(try BenchChildProcess(plan: path, name: name, threads: threads, warmup: warmup, seed: seed))
      }
      var samples = [[BenchChildProcess.Sample]](repeating: [], count: names.count)
      for r in 0..<runs {
        for (i, child) in children.enumerated() {
          let s = try child.step()
          samples[i].append(s)
          progress("run \(r + 1)/\(runs) \(names[i]): \(String(format: "%.3f", s.seconds)) s")
        }
      }
      // Again after the rounds, keeping the higher: a peak measured in a slow spell of a
      // shared machine would inflate every fraction of it.
      progress("measuring the sgemm peak again")
      peak = max(peak, GEMM.peakGFLOPs(threads: threads))
      var results: [Result] = []
      for (i, child) in children.enumerated() {
        let rss = try child.finish()
        let times = samples[i].map(\.seconds)
        let sorted = times.sorted()
        let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        let flops = samples[i].last!.flops
        let gemmSeconds = samples[i].map(\.gemmSeconds).reduce(0, +), gemmFlops = samples[i].map(\.gemmFlops).reduce(0, +)
        let gemmRate = gemmSeconds > 0 ? Double(gemmFlops) / gemmSeconds / 1e9 : 0
        results.append(
          Result(
            name: names[i], median_s: median, min_s: sorted.first!, max_s: sorted.last!, times_s: times, flops: flops,
            gflops: Double(flops) / median / 1e9, peak_fraction: Double(flops) / median / 1e9 / peak, gemm_gflops: gemmRate,
            gemm_peak_fraction: gemmRate / peak, gemm_share: gemmSeconds / times.reduce(0, +), peak_rss_bytes: rss))
      }
      clearProgress()
      let speedup = results.count == 2 ? results[0].median_s / results[1].median_s : nil
      var report = Report(
        model: model, batch: shape.batch ?? ImportOptions.defaultBatch, threads: threads, runs: runs, warmup: warmup,
        keep: sbpOptions.keep, attention: sbpOptions.attention.rawValue, sgemm_peak_gflops: peak,
        blas_core: BLASCore.name, blas_core_detected: ProcessInfo.processInfo.environment["SBPC_OPENBLAS_DETECTED"],
        plans: results, speedup: speedup)
      if precision == "bf16" {
        report.precision = precision
        report.bf16_kernel = "\(BF16GEMM.kernel)"
        report.bf16_dot_peak_gflops = BF16GEMM.Kernel.dot.available ? BF16GEMM.productGFLOPs(.dot, threads: threads) : 0
      }
      if json {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try enc.encode(report), as: UTF8.self))
      } else {
        print(table(report))
      }
    }
  }

  func table(_ r: Report) -> String {
    var lines = [
      "sbpc bench: \(r.model), batch \(r.batch), \(r.threads) thread\(r.threads == 1 ? "" : "s"), median of \(r.runs) step\(r.runs == 1 ? "" : "s") after \(r.warmup) warm-up",
      String(format: "sgemm peak (4096³): %.1f GFLOP/s", r.sgemm_peak_gflops) + ", OpenBLAS core \(r.blas_core)"
        + (r.blas_core_detected.map { " (chosen by sbpc; OpenBLAS detected \($0))" } ?? ""),
      "plan     median    min–max          GFLOP/step  GFLOP/s  of peak   GEMM: GFLOP/s  of peak  of time   peak memory",
    ]
    for p in r.plans {
      let range = String(format: "%.3f–%.3f s", p.min_s, p.max_s).padding(toLength: 15, withPad: " ", startingAt: 0)
      lines.append(
        p.name.padding(toLength: 9, withPad: " ", startingAt: 0)
          + String(
            format: "%6.3f s  %@  %10.2f  %7.1f  %6.1f%%  %13.1f  %6.1f%%  %6.1f%%   %@", p.median_s, range, Double(p.flops) / 1e9,
            p.gflops,
            100 * p.peak_fraction, p.gemm_gflops, 100 * p.gemm_peak_fraction, 100 * p.gemm_share, byteText(p.peak_rss_bytes)))
    }
    if let s = r.speedup { lines.append(String(format: "SBP speed-up (no-SBP median / SBP median): %.2f×", s)) }
    if let kernel = r.bf16_kernel, let dot = r.bf16_dot_peak_gflops {
      lines.append(
        "bf16 products on the \(kernel) kernel; "
          + (dot > 0
            ? String(format: "a 2048³ product on vdpbf16ps (the dot kernel) runs at %.1f GFLOP/s; the plans' GEMM rates are ", dot)
              + r.plans.map { String(format: "%@ %.0f%%", $0.name, 100 * $0.gemm_gflops / dot) }.joined(separator: ", ") + " of it"
            : "this CPU has no AVX512-BF16"))
    }
    return lines.joined(separator: "\n")
  }

  /// The progress line: rewritten in place on a terminal, silent otherwise.
  func progress(_ text: String) {
    guard isatty(2) != 0 else { return }
    FileHandle.standardError.write(Data("\r\u{1B}[Ksbpc bench: \(text)".utf8))
  }

  func clearProgress() {
    guard isatty(2) != 0 else { return }
    FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
  }
}

/// One plan's child process (`sbpc bench-child`), driven one step at a time over pipes.
final class BenchChildProcess {
  struct Sample {
    var seconds: Double
    var flops: Int
    var gemmSeconds: Double
    var gemmFlops: Int
  }

  let name: String
  private let process = Process()
  private let toChild = Pipe(), fromChild = Pipe(), errors = Pipe()
  private var pending = Data()

  init(plan: String, name: String, threads: Int, warmup: Int, seed: UInt64) throws {
    self.name = name
    process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    process.arguments = ["bench-child", plan, "--threads", "\(threads)", "--warmup", "\(warmup)", "--seed", "\(seed)"]
    process.standardInput = toChild
    process.standardOutput = fromChild
    process.standardError = errors
    try process.run()
    let ready = try line()
    guard ready == "ready" else { throw RuntimeError("bench: the \(name) child did not start: \(ready)") }
  }

  /// The next line the child prints; its last error line if it exits instead.
  private func line() throws -> String {
    while true {
      if let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
        let l = String(decoding: pending[pending.startIndex..<nl], as: UTF8.self)
        pending = Data(pending[(nl + 1)...])
        return l
      }
      let chunk = fromChild.fileHandleForReading.availableData
      if chunk.isEmpty {
        process.waitUntilExit()
        let err = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let last = err.split(separator: "\n").last.map(String.init) ?? "exit status \(process.terminationStatus)"
        throw RuntimeError("bench: the \(name) child stopped: \(last.replacingOccurrences(of: "sbpc: error: ", with: ""))")
      }
      pending.append(chunk)
    }
  }

  private func send(_ command: String) { toChild.fileHandleForWriting.write(Data("\(command)\n".utf8)) }

  func step() throws -> Sample {
    send("step")
    let f = try line().split(separator: " ")
    guard f.count == 4, let s = Double(f[0]), let fl = Int(f[1]), let gs = Double(f[2]), let gf = Int(f[3]) else {
      throw RuntimeError("bench: the \(name) child sent a malformed sample")
    }
    return Sample(seconds: s, flops: fl, gemmSeconds: gs, gemmFlops: gf)
  }

  /// Ends the child; returns its peak resident memory in bytes.
  func finish() throws -> Int {
    send("done")
    let l = try line()
    process.waitUntilExit()
    guard l.hasPrefix("rss "), let rss = Int(l.dropFirst(4)) else { throw RuntimeError("bench: the \(name) child sent no peak memory") }
    return rss
  }
}

/// The child side of `sbpc bench`: one plan, stepped on request (not for direct use).
struct BenchChild: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench-child", abstract: "Runs one plan for `sbpc bench` (internal).", shouldDisplay: false)

  @Argument var plan: String?
  @Option var threads: Int = 1
  /// Print the sgemm peak (GFLOP/s, `GEMM.peakGFLOPs`), OpenBLAS's core and the core it had
  /// detected itself if sbpc overrode it, and exit: for drivers that compare frameworks
  /// (models/bench_torch.py --sbpc).
  @Flag var peak = false

  /// One unbuffered line to the parent.
  func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
  @Option var warmup: Int = 1
  @Option var seed: UInt64 = 0

  func run() throws {
    try reportingErrors {
      if peak {
        let detected = ProcessInfo.processInfo.environment["SBPC_OPENBLAS_DETECTED"].map { " \($0)" } ?? ""
        say("\(GEMM.peakGFLOPs(threads: threads)) \(BLASCore.name)\(detected)")
        return
      }
      guard let plan else { throw ValidationError("bench-child needs a plan or --peak") }
      let p = try Plan.load(plan)
      let ex = try Executor(graph: p.train, threads: threads)
      let feed = try Feeder(plan: p, executor: ex, path: plan)
      var masks = try p.mask.map { try MaskFeed(layout: $0, source: .sampled(seed: seed), executor: ex) }
      // One fixed synthetic batch, as the PyTorch script uses: the timed step is the mask
      // draw and the plan, not the data generator.
      feed.synthetic(seed: seed, step: 0)
      var stepCount = 0
      func step() throws {
        _ = masks?.step()
        stepCount += 1
        ex.input("step")?.f32[0] = Float(stepCount)
        try ex.run()
      }
      for _ in 0..<warmup { try step() }
      say("ready")
      while let command = readLine() {
        if command == "done" { break }
        let g0 = GEMM.flops, n0 = GEMM.nanos
        let t0 = DispatchTime.now().uptimeNanoseconds
        try step()
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        say("\(dt) \(ex.lastRunFlops) \(Double(GEMM.nanos - n0) / 1e9) \(GEMM.flops - g0)")
      }
      var usage = rusage()
      getrusage(RUSAGE_SELF.rawValue, &usage)
      say("rss \(usage.ru_maxrss * 1024)")
    }
  }
}
