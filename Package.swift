// swift-tools-version:6.0
// Package.swift: sbpc, an ONNX-to-SBP-training-step compiler and its CPU runtime.
import Foundation
import PackageDescription

// The runtime's kernels are compiled for the building machine's CPU (AVX2 and FMA where it has
// them), as -march=native would: sbpc builds where it runs. SBPC_PORTABLE=1 builds them for
// the baseline instead, for a binary that must run on other machines.
// SBPC_FMA: the host has fused multiply-add, so the kernels' polynomials use it (one
// instruction per term instead of two; without the hardware each would be a libm call).
let native = ProcessInfo.processInfo.environment["SBPC_PORTABLE"] == nil
let hostFMA = ((try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "").contains(" fma ")
let kernelFlags: [SwiftSetting] =
  native ? [.unsafeFlags(["-target-cpu", "native"])] + (hostFMA ? [.define("SBPC_FMA")] : []) : []

let package = Package(
  name: "sbpc",
  products: [
    .executable(name: "sbpc", targets: ["sbpc"]),
    .executable(name: "sbpc-fuzz", targets: ["sbpc-fuzz"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
  ],
  targets: [
    // System libraries, found through pkg-config.
    .systemLibrary(
      name: "CProtobufC", pkgConfig: "libprotobuf-c",
      providers: [.apt(["libprotobuf-c-dev"])]),
    .systemLibrary(
      name: "COpenBLAS", pkgConfig: "openblas",
      providers: [.apt(["libopenblas-dev"])]),
    .systemLibrary(
      name: "CTurboJPEG", pkgConfig: "libturbojpeg",
      providers: [.apt(["libturbojpeg0-dev"])]),
    .systemLibrary(
      name: "CPNG", pkgConfig: "libpng",
      providers: [.apt(["libpng-dev"])]),
    // Open MPI, for data-parallel training under mpirun; linked always, initialized only when
    // mpirun started the process.
    .systemLibrary(
      name: "CMPI", pkgConfig: "ompi-c",
      providers: [.apt(["libopenmpi-dev"])]),
    // bf16 GEMM kernels and casts in C (AVX-512 and AVX512-BF16 per function, chosen at run time).
    .target(name: "CBF16", cSettings: [.unsafeFlags(["-O3"])]),
    // JPEG and PNG decoding in C, so that libpng's longjmp error handling never crosses Swift frames.
    .target(name: "CImageCodec", dependencies: ["CTurboJPEG", "CPNG"]),
    // protoc-c output for Sources/CONNXProto/schema/onnx.proto, committed.
    .target(
      name: "CONNXProto", dependencies: ["CProtobufC"],
      exclude: ["schema"]),
    // Stages, each depending only on the ones before it.
    .target(name: "SBPIR"),
    .target(name: "SBPONNX", dependencies: ["SBPIR", "CONNXProto", "CProtobufC"]),
    .target(name: "SBPPasses", dependencies: ["SBPIR"]),
    .target(name: "SBPPlan", dependencies: ["SBPIR", "SBPONNX", "SBPPasses"]),
    // The runtime reads plans; it never runs a pass. MemberImportVisibility makes that a
    // compile error: no member of a passes type is visible here, even through a plan.
    .target(
      name: "SBPRuntime", dependencies: ["SBPIR", "SBPPlan", "COpenBLAS", "CMPI", "CBF16"],
      swiftSettings: kernelFlags + [.enableUpcomingFeature("MemberImportVisibility")]),
    // Image data sets, decoding and transforms: a BatchSource for the runtime's loops.
    .target(name: "SBPData", dependencies: ["SBPIR", "SBPRuntime", "CImageCodec"], swiftSettings: kernelFlags),
    .executableTarget(
      name: "sbpc",
      dependencies: [
        "SBPIR", "SBPONNX", "SBPPasses", "SBPPlan", "SBPRuntime", "SBPData",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]),
    // Fuzz targets (make fuzz); a plain build replays inputs.
    .target(name: "CFuzzerDriver"),
    .executableTarget(name: "sbpc-fuzz", dependencies: ["CFuzzerDriver", "SBPIR", "SBPONNX", "SBPPasses", "SBPPlan", "SBPData"]),
    .testTarget(name: "SBPIRTests", dependencies: ["SBPIR"]),
    .testTarget(name: "SBPONNXTests", dependencies: ["SBPIR", "SBPONNX", "SBPPasses"]),
    .testTarget(name: "SBPPassesTests", dependencies: ["SBPIR", "SBPPasses"]),
    .testTarget(name: "SBPRuntimeTests", dependencies: ["SBPIR", "SBPONNX", "SBPPasses", "SBPPlan", "SBPRuntime"]),
    .testTarget(name: "SBPDataTests", dependencies: ["SBPIR", "SBPRuntime", "SBPData"]),
    .testTarget(name: "sbpcTests", dependencies: ["sbpc"]),
  ],
  swiftLanguageModes: [.v6]
)
