// BLASCoreTests.swift: when sbpc overrides OpenBLAS's kernel choice, and to what.
import XCTest

@testable import SBPRuntime

final class BLASCoreTests: XCTestCase {
  /// A /proc/cpuinfo with one processor and these flags.
  func cpuinfo(_ flags: String) -> String {
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 207\nflags\t\t: fpu sse sse2 \(flags)\nbugs\t\t:\n"
  }
  let avx512 = "avx fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16"

  func testAFallbackToSSEKernelsOnAnAVX512CPUGetsSkylakeX() {
    XCTAssertEqual(BLASCore.coreOverride(cpuinfo: cpuinfo(avx512), current: "Prescott"), "SkylakeX")
    XCTAssertEqual(BLASCore.coreOverride(cpuinfo: cpuinfo(avx512), current: "Nehalem"), "SkylakeX")
  }

  func testAFallbackOnAnAVX2CPUGetsHaswell() {
    XCTAssertEqual(BLASCore.coreOverride(cpuinfo: cpuinfo("avx fma avx2"), current: "Core2"), "Haswell")
    // AVX-512F alone is not enough for the SkylakeX kernels (Knights Landing has no BW/VL).
    XCTAssertEqual(BLASCore.coreOverride(cpuinfo: cpuinfo("avx fma avx2 avx512f avx512cd"), current: "Prescott"), "Haswell")
  }

  func testAChoiceOpenBLASMadeForTheCPUIsKept() {
    // A core at AVX2 or above means OpenBLAS recognised the CPU; an unknown (newer) name too.
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: cpuinfo(avx512), current: "Zen"))
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: cpuinfo(avx512), current: "SkylakeX"))
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: cpuinfo(avx512), current: "Haswell"))
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: cpuinfo(avx512), current: "GraniteRapids"))
  }

  func testACPUWithoutAVX2OrWithoutFlagsIsLeftAlone() {
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: cpuinfo("sse3 ssse3 avx"), current: "Prescott"))
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: "processor\t: 0\n", current: "Prescott"))
    XCTAssertNil(BLASCore.coreOverride(cpuinfo: "", current: "Prescott"))
  }
}
