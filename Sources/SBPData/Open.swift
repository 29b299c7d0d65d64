// Open.swift: from a --data value to a checked image set, and a plain sequential walk over one (for `sbpc data`).
import Foundation

extension ImageSet {
  /// Opens a folder or a shard spec and checks its labels against a head of `classes`
  /// (nil: no head to check against).
  public static func open(_ path: String, classes: Int?) throws -> ImageSet {
    if ShardSet.isShardSpec(path) { return .shards(try ShardSet(path, classes: classes)) }
    let folder = try ImageFolder(path)
    if let classes, folder.classes.count > classes {
      throw DataError(
        "\(path): \(folder.classes.count) class folders, more than the head's \(classes) classes (compile with --num-classes \(folder.classes.count))"
      )
    }
    return .folder(folder)
  }

  /// Class names (folders), or the label numbers the shards hold.
  public var classNames: [String] {
    switch self {
    case .folder(let f): return f.classes
    case .shards(let s): return (0...max(s.maxLabel, 0)).map(String.init)
    }
  }

  /// Checks that a validation set names the same classes, in the same order, as this one.
  public func checkSameClasses(as val: ImageSet, name: String) throws {
    guard case .folder(let a) = self, case .folder(let b) = val else { return }
    guard a.classes == b.classes else {
      let missing = Set(a.classes).symmetricDifference(b.classes).sorted().prefix(3).joined(separator: ", ")
      throw DataError("\(name): its class folders differ from the training set's (\(missing)); the labels would not agree")
    }
  }

  /// Visits the first `limit` samples in the set's order (no shuffle): index, label, name and
  /// the encoded bytes.
  public func forEach(limit: Int, _ body: (Int, Int, String, UnsafeRawBufferPointer) throws -> Void) throws {
    var bytes: [UInt8] = []
    switch self {
    case .folder(let f):
      for i in 0..<min(limit, f.files.count) {
        do { try readFile(f.files[i], into: &bytes) } catch let e as ImageError { throw DataError("\(f.files[i]): \(e.reason)") }
        try bytes.withUnsafeBytes { try body(i, f.labels[i], f.files[i], $0) }
      }
    case .shards(let s):
      var i = 0
      for path in s.shards where i < limit {
        let reader = SampleReader(TarReader(try FileByteStream(path: path), name: path), name: path)
        while i < limit, let sample = try reader.next(into: &bytes) {
          try bytes.withUnsafeBytes { try body(i, sample.label, path + ":" + sample.key, $0) }
          i += 1
        }
      }
    }
  }
}
