// Export.swift: writes an ONNX model back out with new initializer values (trained weights), external data included.
import CONNXProto
import CProtobufC
import Glibc
import SBPIR

/// Writes `model` to `output` with the initializers named in `weights` replaced by those
/// bytes (little-endian f32, the initializer's own shape); every other byte of the graph is
/// the original's. A model whose initializers live in external files gets one new data file
/// beside the output, `<output name>.data`, holding all of them; the original's files are
/// only read. Both files are written under temporary names and renamed at the end.
/// Returns the number of initializers replaced.
///
/// With `numClasses`, the model's classifier was replaced (`--num-classes`): its initializers
/// take their new shapes, the output its new class count, and the intermediate `value_info`
/// (which holds the old count) is left out.
public func exportONNX(model: String, weights: [String: [UInt8]], to output: String, numClasses: Int? = nil) throws -> Int {
  var head: ReplacedHead?
  if let n = numClasses {
    var file = try readONNX(path: model)
    head = try replaceHead(&file, classes: n, seed: 0, path: model)
  }
  let bytes = try readFileBytes(model)
  guard let m = bytes.withUnsafeBufferPointer({ onnx__model_proto__unpack(nil, $0.count, $0.baseAddress) }) else {
    throw ImportError("\(model): not a valid ONNX protobuf (truncated or corrupt)")
  }
  // The decoded message is not freed: some of its fields now point at Swift-owned bytes,
  // and the process ends soon after an export.
  guard let g = m.pointee.graph else { throw ImportError("\(model): ONNX model has no graph") }
  let store = ExternalStore(modelPath: model)
  let dataName = String(output.split(separator: "/").last ?? "model.onnx") + ".data"
  var blob: [UInt8] = []
  var replaced = 0
  var copies: [UnsafeMutablePointer<UInt8>] = []  // the replacement bytes the message points at
  defer { for c in copies { c.deallocate() } }
  var copiesAlive: [UnsafeMutablePointer<UInt8>] = []  // the bytes of initializers added for untied copies
  defer { for c in copiesAlive { c.deallocate() } }
  for i in 0..<Int(g.pointee.n_initializer) {
    guard let t = g.pointee.initializer[i] else { continue }
    let name = t.pointee.name.map { String(cString: $0) } ?? ""
    var dims = (0..<Int(t.pointee.n_dims)).map { Int(t.pointee.dims[$0]) }
    if let resized = head?.shapes[name] {
      let d = UnsafeMutablePointer<Int64>.allocate(capacity: max(resized.count, 1))
      for (k, v) in resized.enumerated() { d[k] = Int64(v) }
      t.pointee.dims = d
      t.pointee.n_dims = resized.count
      dims = resized
    }
    let external = t.pointee.has_data_location != 0 && t.pointee.data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL
    var new = weights[name]
    if let w = new {
      guard t.pointee.data_type == 1 else { throw ImportError("\(model): initializer '\(name)' is not f32; only f32 weights are exported") }
      guard w.count == dims.reduce(4, *) else {
        throw ImportError("\(model): initializer '\(name)' holds \(dims.reduce(4, *)) bytes, the trained weight \(w.count)")
      }
      replaced += 1
    }
    guard external else {
      if let w = new {
        let copy = UnsafeMutablePointer<UInt8>.allocate(capacity: max(w.count, 1))
        copy.initialize(from: w, count: w.count)
        copies.append(copy)
        t.pointee.raw_data = ProtobufCBinaryData(len: w.count, data: copy)
        t.pointee.has_raw_data = 1
        t.pointee.n_float_data = 0
      }
      continue
    }
    // External: the tensor's bytes, old or new, go into the new data file.
    if new == nil {
      var loc = "", off = 0, len: Int?
      for e in 0..<Int(t.pointee.n_external_data) {
        guard let entry = t.pointee.external_data[e] else { continue }
        let k = entry.pointee.key.map { String(cString: $0) } ?? "", v = entry.pointee.value.map { String(cString: $0) } ?? ""
        if k == "location" { loc = v } else if k == "offset" { off = Int(v) ?? 0 } else if k == "length" { len = Int(v) }
      }
      let elem = [1: 4, 7: 8, 6: 4, 11: 8, 10: 2, 16: 2, 5: 2, 4: 2, 3: 1, 2: 1, 9: 1][Int(t.pointee.data_type)] ?? 1
      let src = try store.bytes(tensor: name, location: loc, offset: off, length: len, expected: dims.reduce(elem, *))
      new = Array(src.buffer)
    }
    while blob.count % 64 != 0 { blob.append(0) }
    let offset = blob.count
    blob += new!
    // Rewrite the entries in place: location, offset and length, whichever exist, and drop
    // any others (a checksum of the old bytes would be wrong now).
    var kept = 0
    var have = Set<String>()
    for e in 0..<Int(t.pointee.n_external_data) {
      guard let entry = t.pointee.external_data[e], let key = entry.pointee.key.map({ String(cString: $0) }) else { continue }
      let value: String
      switch key {
      case "location": value = dataName
      case "offset": value = String(offset)
      case "length": value = String(new!.count)
      default: continue
      }
      have.insert(key)
      entry.pointee.value = strdup(value)
      t.pointee.external_data[kept] = entry
      kept += 1
    }
    guard have.contains("location") else { throw ImportError("\(model): initializer '\(name)' is external but has no location") }
    // Without offset/length entries the tensor would be read from 0 to the end of the file.
    guard have.contains("offset"), have.contains("length") else {
      throw ImportError("\(model): initializer '\(name)': external data without offset and length entries is not supported for export")
    }
    t.pointee.n_external_data = kept
  }
  let inFile = Set((0..<Int(g.pointee.n_initializer)).compactMap { g.pointee.initializer[$0]?.pointee.name.map { String(cString: $0) } })
  // Copies the importer made of a tied weight (`<weight>.copy<k>`) become initializers of their
  // own, and their readers read them: the exported model is the one that was trained.
  if weights.keys.contains(where: { !inFile.contains($0) }) {
    let file = try readONNX(path: model)
    for t in findTiedWeights(file) {
      guard let dims = file.initializers.first(where: { $0.name == t.name })?.dims else { continue }
      for name in Set(t.copies.map(\.copy)).sorted() {
        guard let w = weights[name] else { continue }
        guard w.count == dims.reduce(4, *) else {
          throw ImportError("\(model): the trained copy '\(name)' holds \(w.count) bytes, '\(t.name)' \(dims.reduce(4, *))")
        }
        try appendInitializer(g, name: name, dims: dims, bytes: w, keepAlive: &copiesAlive)
        for r in t.copies where r.copy == name {
          guard r.node < Int(g.pointee.n_node), let n = g.pointee.node[r.node], r.input < Int(n.pointee.n_input) else {
            throw ImportError("\(model): the graph changed since it was read")
          }
          n.pointee.input[r.input] = strdup(name)
        }
        replaced += 1
      }
    }
  }
  if let head, weights[head.weight] == nil {
    throw ImportError("\(model): the new classifier @\(head.weight) has no trained weights to export (was it frozen?)")
  }
  if let head, g.pointee.n_output > 0, let o = g.pointee.output[0], let type = o.pointee.type,
    type.pointee.value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, let shape = type.pointee.tensor_type?.pointee.shape,
    shape.pointee.n_dim > 0, let last = shape.pointee.dim[shape.pointee.n_dim - 1],
    last.pointee.value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE, last.pointee.dim_value == Int64(head.oldClasses)
  {
    last.pointee.dim_value = Int64(head.classes)
  }
  if head != nil { g.pointee.n_value_info = 0 }
  let unknown = weights.keys.filter { n in
    !(0..<Int(g.pointee.n_initializer)).contains { g.pointee.initializer[$0]?.pointee.name.map { String(cString: $0) } == n }
  }
  guard unknown.isEmpty else { throw ImportError("\(model): no initializer named '\(unknown.sorted()[0])' to put the trained weight into") }
  var out = [UInt8](repeating: 0, count: onnx__model_proto__get_packed_size(m))
  _ = out.withUnsafeMutableBufferPointer { onnx__model_proto__pack(m, $0.baseAddress) }
  let folder = output.contains("/") ? String(output[..<output.lastIndex(of: "/")!]) : "."
  if !blob.isEmpty { try writeAtomically(blob, to: (folder.isEmpty ? "" : folder + "/") + dataName) }
  try writeAtomically(out, to: output)
  return replaced
}

/// Appends an f32 initializer with inline bytes to the decoded graph `g` (protobuf-c's arrays
/// are malloc'ed, so they grow with realloc; the message is never freed, see above).
private func appendInitializer(
  _ g: UnsafeMutablePointer<Onnx__GraphProto>, name: String, dims: [Int], bytes: [UInt8], keepAlive: inout [UnsafeMutablePointer<UInt8>]
) throws {
  let n = Int(g.pointee.n_initializer)
  guard let grown = realloc(g.pointee.initializer, (n + 1) * MemoryLayout<UnsafeMutablePointer<Onnx__TensorProto>?>.stride) else {
    throw ImportError("out of memory adding initializer '\(name)'")
  }
  g.pointee.initializer = grown.assumingMemoryBound(to: UnsafeMutablePointer<Onnx__TensorProto>?.self)
  let t = UnsafeMutablePointer<Onnx__TensorProto>.allocate(capacity: 1)
  onnx__tensor_proto__init(t)
  t.pointee.name = strdup(name)
  let d = UnsafeMutablePointer<Int64>.allocate(capacity: max(dims.count, 1))
  for (i, v) in dims.enumerated() { d[i] = Int64(v) }
  t.pointee.dims = d
  t.pointee.n_dims = dims.count
  t.pointee.has_data_type = 1
  t.pointee.data_type = 1
  let b = UnsafeMutablePointer<UInt8>.allocate(capacity: max(bytes.count, 1))
  b.initialize(from: bytes, count: bytes.count)
  keepAlive.append(b)
  t.pointee.raw_data = ProtobufCBinaryData(len: bytes.count, data: b)
  t.pointee.has_raw_data = 1
  g.pointee.initializer[n] = t
  g.pointee.n_initializer = n + 1
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
func writeAtomically(_ bytes: [UInt8], to path: String) throws {
  let temp = path + ".tmp-\(getpid())"
  let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
  guard fd >= 0 else { throw ImportError("\(path): cannot write (\(String(cString: strerror(errno))))") }
  var off = 0
  while off < bytes.count {
    let r = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, bytes.count - off) }
    guard r > 0 else {
      close(fd)
      unlink(temp)
      throw ImportError("\(path): write failed (\(String(cString: strerror(errno))))")
    }
    off += r
  }
  guard fsync(fd) == 0, close(fd) == 0, rename(temp, path) == 0 else {
    unlink(temp)
    throw ImportError("\(path): cannot write (\(String(cString: strerror(errno))))")
  }
}
