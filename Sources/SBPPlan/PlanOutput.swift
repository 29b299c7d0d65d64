// PlanOutput.swift: where `sbpc compile` writes its plan when no -o is given, and what it refuses to overwrite.
import Foundation

/// The plan file's path. Without `-o` it is `NAME.plan` beside `NAME.onnx`, as `cc` writes
/// `a.out` and `swiftc` a binary named after its input; when that folder is not writable it
/// is `NAME.plan` in the current folder. The default never replaces the model or a file that
/// is not an sbpc plan, and no output, given or default, may be the model itself.
public enum PlanOutput {
  /// The path to write, and a note for the user when the default had to move.
  public static func resolve(model: String, output: String?) throws -> (path: String, note: String?) {
    if let output {
      guard !sameFile(output, model) else { throw PlanError("\(output): is the model itself; give -o another path") }
      return (output, nil)
    }
    // Paths stay as the user wrote them (relative stays relative), so the message names the
    // file where they will look for it.
    let name = (model as NSString).lastPathComponent
    let base = (name as NSString).pathExtension.lowercased() == "onnx" ? (name as NSString).deletingPathExtension : name
    let given = (model as NSString).deletingLastPathComponent
    let folder = given.isEmpty ? "." : given
    var path = given.isEmpty ? base + ".plan" : given + "/" + base + ".plan"
    var note: String?
    if access(folder, W_OK) != 0 {
      path = base + ".plan"
      note = "\(folder) is not writable; writing the plan to the current folder"
    }
    guard !sameFile(path, model) else { throw PlanError("\(path): is the model itself; give -o another path") }
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
      guard !isDirectory.boolValue, isPlanFile(path) else {
        throw PlanError("\(path): exists and is not an sbpc plan; not overwriting it (give -o PATH)")
      }
    }
    return (path, note)
  }

  /// True when the file starts with a plan header (any format version: an old plan may be replaced).
  static func isPlanFile(_ path: String) -> Bool {
    guard let h = FileHandle(forReadingAtPath: path) else { return false }
    defer { try? h.close() }
    let head = (try? h.read(upToCount: 10)) ?? Data()
    return head == Data("sbpc-plan ".utf8)
  }

  /// Both paths name one existing file (through links and `..`).
  static func sameFile(_ a: String, _ b: String) -> Bool {
    var sa = stat(), sb = stat()
    guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
  }
}
