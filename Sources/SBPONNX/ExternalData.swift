// ExternalData.swift: resolves ONNX external-data references, confined to the model's folder.
import Glibc
import SBPIR

/// Maps external-data files read-only, once each, and hands out tensors that point into them.
/// A location must be relative, must not use `..`, and must resolve (symbolic links included)
/// to a file inside the model's folder.
final class ExternalStore {
  let modelPath: String
  let folder: String
  private var files: [String: MappedFile] = [:]

  init(modelPath: String) {
    self.modelPath = modelPath
    let dir = modelPath.contains("/") ? String(modelPath[..<modelPath.lastIndex(of: "/")!]) : "."
    self.folder = dir.isEmpty ? "/" : dir
  }

  /// The bytes of tensor `tensor` stored at `location`/`offset`/`length`, which must be exactly `expected` bytes.
  func bytes(tensor: String, location: String, offset: Int, length: Int?, expected: Int) throws -> TensorBytes {
    let what = "\(modelPath): tensor '\(tensor)': external data '\(location)'"
    guard !location.hasPrefix("/") else { throw ImportError("\(what) is an absolute path; it must be relative to the model's folder") }
    let parts = location.split(separator: "/", omittingEmptySubsequences: true)
    guard !parts.contains("..") else { throw ImportError("\(what) uses '..' to leave the model's folder") }
    let file = try mapped(location, what: what)
    let len = length ?? (file.count - offset)
    let (end, overflow) = offset.addingReportingOverflow(len)
    guard !overflow, offset >= 0, len >= 0, end <= file.count else {
      throw ImportError("\(what): offset \(offset) + length \(len) is past the end of the file (\(file.count) bytes)")
    }
    guard len == expected else {
      throw ImportError("\(what): length \(len) bytes does not match its shape, which needs \(expected) bytes")
    }
    guard let base = file.base else { return TensorBytes(copying: UnsafeRawBufferPointer(start: nil, count: 0)) }
    return TensorBytes(borrowing: base + offset, count: len, owner: file, fileBacked: true)
  }

  private func mapped(_ location: String, what: String) throws -> MappedFile {
    if let f = files[location] { return f }
    let path = folder + "/" + location
    guard let realFolder = realPath(folder) else { throw ImportError("\(modelPath): cannot resolve the model's folder") }
    guard access(path, F_OK) == 0 || isSymlink(path) else { throw ImportError("\(what): file not found at \(path)") }
    guard let real = realPath(path) else { throw ImportError("\(what): cannot resolve \(path) (dangling link?)") }
    let inside = realFolder == "/" ? real.hasPrefix("/") : real.hasPrefix(realFolder + "/")
    guard inside else { throw ImportError("\(what) resolves to \(real), outside the model's folder \(realFolder)") }
    let f = try MappedFile(path: real)
    files[location] = f
    return f
  }

  private func realPath(_ p: String) -> String? {
    guard let r = realpath(p, nil) else { return nil }
    defer { free(r) }
    return String(cString: r)
  }

  private func isSymlink(_ p: String) -> Bool {
    var st = stat()
    return lstat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
  }
}
