// FileIO.swift: reads a whole file with POSIX calls, for the loaders (plans, text IR, .npy).
import Glibc

/// Error reading a file; the message names the path and the reason.
public struct FileReadError: Error, CustomStringConvertible {
  public let description: String
}

/// Reads the file at `path`. Uses open/read rather than Foundation's FileManager, which
/// leaks a buffer on empty files (found by the plan fuzz target).
public func readFileBytes(_ path: String, limit: Int = 1 << 32) throws -> [UInt8] {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { throw FileReadError(description: "\(path): cannot read (\(String(cString: strerror(errno))))") }
  defer { close(fd) }
  var st = stat()
  guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw FileReadError(description: "\(path): not a regular file") }
  let size = Int(st.st_size)
  guard size <= limit else { throw FileReadError(description: "\(path): \(size) bytes is more than the \(limit)-byte limit") }
  var out = [UInt8](repeating: 0, count: size)
  var done = 0
  while done < size {
    let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, size - done) }
    if n < 0 && errno == EINTR { continue }
    guard n > 0 else { break }
    done += n
  }
  return done == size ? out : Array(out[..<done])
}
