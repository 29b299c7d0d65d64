// DataSets.swift: image data sets on disk: an ImageFolder (PATH/<class>/*.jpg|png) and WebDataset tar shards.
import Foundation

/// A data set that cannot be used, in one line naming the path.
public struct DataError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// The image files of an ImageFolder: class folders sorted by name, as torchvision's
/// `ImageFolder` sorts them (so class indices agree with a model trained there), and within
/// each, every .jpg, .jpeg and .png below it, sorted by folder then name.
public struct ImageFolder: Sendable {
  public let root: String
  public let classes: [String]
  public let files: [String]
  public let labels: [Int]

  public static let extensions: Set<String> = ["jpg", "jpeg", "png"]

  /// Lists `root`. A symbolic link that leaves `root` is refused, as external data is.
  public init(_ root: String) throws {
    let fm = FileManager.default
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: root, isDirectory: &isDir) else { throw DataError("\(root): no such file or folder") }
    guard isDir.boolValue else { throw DataError("\(root): not a folder of class folders (an image data set is a folder or .tar shards)") }
    guard let real = realpathString(root) else { throw DataError("\(root): cannot resolve the path") }
    self.root = root
    let names = try ImageFolder.sortedEntries(root)
    var classes: [String] = [], files: [String] = [], labels: [Int] = []
    for name in names {
      let path = root + "/" + name
      guard try ImageFolder.isFolder(path, inside: real) else { continue }
      let found = try ImageFolder.images(below: path, inside: real)
      guard !found.isEmpty else { throw DataError("\(path): an empty class folder (no .jpg, .jpeg or .png in it)") }
      labels += repeatElement(classes.count, count: found.count)
      classes.append(name)
      files += found
    }
    guard !classes.isEmpty else { throw DataError("\(root): no class folders with images (expected \(root)/<class>/*.jpg)") }
    (self.classes, self.files, self.labels) = (classes, files, labels)
  }

  /// Entries of a folder in byte order of their names, as Python's sorted() orders them.
  static func sortedEntries(_ path: String) throws -> [String] {
    do {
      return try FileManager.default.contentsOfDirectory(atPath: path).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    } catch {
      throw DataError("\(path): cannot list the folder")
    }
  }

  /// Whether `path` is a folder (through a link, checked to stay inside `real`).
  static func isFolder(_ path: String, inside real: String) throws -> Bool {
    var st = stat()
    guard lstat(path, &st) == 0 else { return false }
    if st.st_mode & S_IFMT == S_IFLNK {
      guard let target = realpathString(path) else { throw DataError("\(path): a broken symbolic link") }
      guard target.hasPrefix(real + "/") else { throw DataError("\(path): a symbolic link to \(target), outside the data folder \(real)") }
      guard stat(path, &st) == 0 else { return false }
    }
    return st.st_mode & S_IFMT == S_IFDIR
  }

  /// Image files below a class folder, sorted by folder then name (torchvision walks with
  /// os.walk and sorts the same way).
  static func images(below dir: String, inside real: String) throws -> [String] {
    var out: [String] = [], subfolders: [String] = []
    for name in try sortedEntries(dir) {
      let path = dir + "/" + name
      if try isFolder(path, inside: real) {
        subfolders.append(path)
        continue
      }
      guard extensions.contains((name as NSString).pathExtension.lowercased()) else { continue }
      var st = stat()
      guard lstat(path, &st) == 0 else { continue }
      if st.st_mode & S_IFMT == S_IFLNK {
        guard let target = realpathString(path) else { throw DataError("\(path): a broken symbolic link") }
        guard target.hasPrefix(real + "/") else { throw DataError("\(path): a symbolic link to \(target), outside the data folder \(real)") }
      }
      out.append(path)
    }
    for sub in subfolders { out += try images(below: sub, inside: real) }
    return out
  }

  /// PATH/train and PATH/val when both are there; PATH alone otherwise.
  public static func splits(_ path: String) -> (train: String, val: String?) {
    var a: ObjCBool = false, b: ObjCBool = false
    let fm = FileManager.default
    if fm.fileExists(atPath: path + "/train", isDirectory: &a), a.boolValue, fm.fileExists(atPath: path + "/val", isDirectory: &b), b.boolValue
    {
      return (path + "/train", path + "/val")
    }
    return (path, nil)
  }
}

func realpathString(_ path: String) -> String? {
  guard let p = realpath(path, nil) else { return nil }
  defer { free(p) }
  return String(cString: p)
}

/// One sample of a WebDataset shard: its key, label and where its image is.
public struct ShardSample: Sendable {
  public let key: String
  public let label: Int
}

/// WebDataset shards: tar files whose members are grouped into samples by key (the path up
/// to the first dot of the file name), each with one image (.jpg, .jpeg or .png) and a
/// .cls label. Opening scans every header (data is skipped, not read) to count the samples
/// and check the labels, so a bad shard fails before the first step.
public struct ShardSet: Sendable {
  public let shards: [String]
  /// Samples per shard, and the largest label seen.
  public let counts: [Int]
  public let maxLabel: Int
  public var count: Int { counts.reduce(0, +) }

  /// - Parameter classes: labels must be below it.
  public init(_ spec: String, classes: Int?) throws {
    let shards = try ShardSet.expand(spec)
    guard !shards.isEmpty else { throw DataError("\(spec): no shards") }
    for shard in shards where !FileManager.default.fileExists(atPath: shard) { throw DataError("\(shard): no such shard") }
    var counts: [Int] = [], maxLabel = -1
    for shard in shards {
      let stream = try FileByteStream(path: shard)
      let reader = SampleReader(TarReader(stream, name: shard), name: shard)
      var n = 0
      while let s = try reader.next(into: nil) {
        if let classes, s.label >= classes {
          throw DataError("\(shard): sample \(s.key) has label \(s.label), outside the head's \(classes) classes")
        }
        maxLabel = max(maxLabel, s.label)
        n += 1
      }
      counts.append(n)
    }
    guard counts.reduce(0, +) > 0 else { throw DataError("\(spec): the shards hold no samples") }
    (self.shards, self.counts, self.maxLabel) = (shards, counts, maxLabel)
  }

  /// Whether a --data value names shards rather than a folder.
  public static func isShardSpec(_ spec: String) -> Bool { spec.hasSuffix(".tar") || spec.contains("{") }

  /// `shards-{000..099}.tar` (zero-padded as written), `{a,b}` lists, several braces.
  public static func expand(_ spec: String) throws -> [String] {
    guard let open = spec.firstIndex(of: "{") else { return [spec] }
    guard let close = spec[open...].firstIndex(of: "}") else { throw DataError("\(spec): a '{' without its '}'") }
    let head = String(spec[..<open]), body = String(spec[spec.index(after: open)..<close]), tail = String(spec[spec.index(after: close)...])
    var items: [String] = []
    if let range = body.range(of: "..") {
      let a = String(body[..<range.lowerBound]), b = String(body[range.upperBound...])
      guard let lo = Int(a), let hi = Int(b), lo <= hi, hi - lo < 1_000_000 else {
        throw DataError("\(spec): '{\(body)}' is not a range such as {000..099}")
      }
      let width = a.count
      items = (lo...hi).map { String(repeating: "0", count: max(0, width - String($0).count)) + String($0) }
    } else {
      items = body.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    }
    return try items.flatMap { try expand(head + $0 + tail) }
  }
}

/// Samples out of one tar stream: consecutive members with the same key.
public final class SampleReader {
  let tar: TarReader
  let name: String
  var ahead: (path: String, size: Int)?
  var started = false
  var text: [UInt8] = []

  public init(_ tar: TarReader, name: String) {
    self.tar = tar
    self.name = name
  }

  /// Whether `ext` is `lower`, ignoring ASCII case.
  static func extensionIs(_ ext: Substring, _ lower: StaticString) -> Bool {
    let want = UnsafeBufferPointer(start: lower.utf8Start, count: lower.utf8CodeUnitCount)
    return ext.utf8.count == want.count && zip(ext.utf8, want).allSatisfy { ($0 | 0x20) == $1 }
  }

  /// A decimal class number, surrounded by optional ASCII whitespace.
  static func classNumber(_ bytes: [UInt8]) -> Int? {
    var v = 0, digits = 0, done = false
    for b in bytes {
      if b == 32 || (9...13).contains(b) {
        if digits > 0 { done = true }
        continue
      }
      guard !done, (48...57).contains(b), digits < 9 else { return nil }
      v = v * 10 + Int(b - 48)
      digits += 1
    }
    return digits > 0 ? v : nil
  }

  /// WebDataset's split of a member path into key and extension: the key runs to the first
  /// dot of the file name.
  static func split(_ path: String) -> (key: Substring, ext: Substring)? {
    let slash = path.lastIndex(of: "/").map { path.index(after: $0) } ?? path.startIndex
    guard let dot = path[slash...].firstIndex(of: ".") else { return nil }
    return (path[..<dot], path[path.index(after: dot)...])
  }

  /// The next sample. With `image`, its image bytes land there (empty when the sample has
  /// no .jpg, .jpeg or .png: it is then skipped as unreadable).
  public func next(into image: UnsafeMutablePointer<[UInt8]>?) throws -> ShardSample? {
    if !started {
      ahead = try tar.next()
      started = true
    }
    var key: Substring?, label: Int?
    image?.pointee.removeAll(keepingCapacity: true)
    while let m = ahead {
      guard let (k, ext) = SampleReader.split(m.path) else {
        ahead = try tar.next()
        continue
      }
      if let key, k != key { break }
      key = k
      // Compared byte by byte: lowercasing and Foundation's trimming would allocate per sample.
      if SampleReader.extensionIs(ext, "cls") {
        guard m.size <= 64 else { throw DataError("\(name): \(m.path) is not a class number") }
        try tar.read(into: &text)
        guard let v = SampleReader.classNumber(text) else {
          throw DataError("\(name): \(m.path) holds '\(String(decoding: text, as: UTF8.self))', not a class number")
        }
        label = v
      } else if SampleReader.extensionIs(ext, "jpg") || SampleReader.extensionIs(ext, "jpeg") || SampleReader.extensionIs(ext, "png") {
        if let image { try tar.read(into: &image.pointee) }
      }
      ahead = try tar.next()
    }
    guard let key else { return nil }
    guard let label else { throw DataError("\(name): sample \(key) has no .cls label") }
    return ShardSample(key: String(key), label: label)
  }
}
