// OpTableTests.swift: the importer's op list is its op table, and the README's list of supported ops is generated from it.
import Foundation
import XCTest

@testable import SBPONNX

final class OpTableTests: XCTestCase {
  /// The ops `lower()` has a case for, read from its source: top-level `case "Op":` labels.
  func opsInSource() throws -> [String] {
    let src = try String(contentsOfFile: repoRoot + "/Sources/SBPONNX/Importer.swift", encoding: .utf8)
    guard let start = src.range(of: "mutating func lower() throws"),
      let end = src.range(of: "\n    }\n", range: start.upperBound..<src.endIndex)
    else { throw XCTSkip("lower() not found") }
    var ops: Set<String> = []
    for line in src[start.upperBound..<end.lowerBound].split(separator: "\n") where line.hasPrefix("      case \"") {
      let label = line.dropFirst("      case ".count).prefix { $0 != ":" }
      for part in label.split(separator: ",") { ops.insert(part.trimmingCharacters(in: CharacterSet(charactersIn: "\" "))) }
    }
    return ops.sorted()
  }

  func testTheListIsTheImportersCases() throws {
    XCTAssertEqual(supportedONNXOps, try opsInSource())
    XCTAssertEqual(supportedONNXOps, supportedONNXOps.sorted())
  }

  /// The README's list between its ops markers is `supportedONNXOps`; UPDATE_GOLDEN=1 rewrites it.
  func testTheReadmeListsTheSupportedOps() throws {
    let path = repoRoot + "/README.md"
    let readme = try String(contentsOfFile: path, encoding: .utf8)
    let begin = "<!-- ops:begin -->\n", end = "<!-- ops:end -->"
    guard let b = readme.range(of: begin), let e = readme.range(of: end, range: b.upperBound..<readme.endIndex) else {
      return XCTFail("README.md has no \(begin) … \(end) section")
    }
    let list =
      "\(supportedONNXOps.count) ops, opsets \(supportedOpsets.lowerBound) to \(supportedOpsets.upperBound): "
      + supportedONNXOps.map { "`\($0)`" }.joined(separator: ", ") + ".\n"
    if ProcessInfo.processInfo.environment["UPDATE_GOLDEN"] == "1" {
      try (readme[..<b.upperBound] + list + readme[e.lowerBound...]).write(toFile: path, atomically: true, encoding: .utf8)
      return
    }
    XCTAssertEqual(String(readme[b.upperBound..<e.lowerBound]), list, "run UPDATE_GOLDEN=1 swift test --filter OpTableTests")
  }
}
