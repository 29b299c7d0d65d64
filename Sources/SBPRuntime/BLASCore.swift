// BLASCore.swift: which OpenBLAS kernel set (its "core") runs sbpc's GEMMs, and the fix for a CPU the library does not know.
import COpenBLAS
import Foundation

/// OpenBLAS picks its GEMM kernels at load time from the CPU's model number. A release older
/// than the CPU (Debian 12's 0.3.21 on Sapphire or Emerald Rapids) does not know the model
/// and falls back to its SSE3 kernels, Prescott's, which run sgemm 5–8× slower than the AVX2
/// or AVX-512 ones the CPU can run (37 against 300 GFLOP/s on 2 Emerald Rapids cores). The
/// choice is overridden only by OPENBLAS_CORETYPE, read when the library loads, so the CLI
/// asks `coreOverride()` before anything else and re-executes itself with it set.
public enum BLASCore {
  /// The kernel set OpenBLAS is using, e.g. "Haswell", "SkylakeX", "Zen", "Prescott".
  public static var name: String {
    guard let p = openblas_get_corename() else { return "unknown" }
    return String(cString: p)
  }

  /// Vector ISA levels, in the order their kernels get faster.
  enum Level: Int, Comparable {
    case sse = 0, avx, avx2, avx512
    static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
  }

  /// The ISA a named core's kernels use. Names OpenBLAS 0.3.x reports; an unknown name counts
  /// as AVX2, so a core newer than this list is never overridden.
  static func level(ofCore core: String) -> Level {
    switch core.lowercased() {
    case "skylakex", "cooperlake", "sapphirerapids", "zen4", "zen5": return .avx512
    case "haswell", "zen", "excavator", "steamroller", "skylake": return .avx2
    case "sandybridge", "bulldozer", "piledriver": return .avx
    case "katmai", "coppermine", "northwood", "prescott", "banias", "core2", "penryn", "dunnington", "nehalem",
      "atom", "opteron", "opteron_sse3", "barcelona", "bobcat", "nano", "athlon":
      return .sse
    default: return .avx2
    }
  }

  /// The ISA the CPU offers, from the flags line of /proc/cpuinfo. AVX-512 counts only with
  /// the subsets OpenBLAS's SkylakeX kernels use.
  static func level(ofFlags flags: Set<Substring>) -> Level {
    if ["avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"].allSatisfy(flags.contains) { return .avx512 }
    if flags.contains("avx2") && flags.contains("fma") { return .avx2 }
    if flags.contains("avx") { return .avx }
    return .sse
  }

  /// The OPENBLAS_CORETYPE to load with, or nil to keep OpenBLAS's own choice. Overrides only
  /// a fallback to pre-AVX2 kernels on a CPU that has AVX2 or AVX-512: a core at AVX2 or above
  /// means OpenBLAS recognised the CPU, and its choice stands even on an AVX-512 CPU (its
  /// tables map some of those to AVX2 kernels).
  public static func coreOverride(cpuinfo: String, current: String) -> String? {
    guard let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
      let colon = line.firstIndex(of: ":")
    else { return nil }
    let cpu = level(ofFlags: Set(line[line.index(after: colon)...].split(separator: " ")))
    guard level(ofCore: current) < .avx2, cpu >= .avx2 else { return nil }
    return cpu == .avx512 ? "SkylakeX" : "Haswell"
  }

  /// `coreOverride` for this machine and the loaded library.
  public static func coreOverride() -> String? {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return nil }
    return coreOverride(cpuinfo: info, current: name)
  }
}
