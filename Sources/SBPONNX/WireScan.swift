// WireScan.swift: lifts initializer raw_data out of an ONNX file so weights are read in place, not copied.

/// protobuf-c copies every bytes field it decodes, which would hold a single-file model's
/// weights twice (the mapping and the copy). This pass walks the protobuf wire format of
/// ModelProto.graph.initializer[*].raw_data, records where each tensor's bytes lie in the
/// file, and returns the model without them for protobuf-c to decode. Everything is bounds
/// checked: a malformed file yields nil, never a read outside `buf`.
struct StrippedModel {
  /// The model with initializer raw_data fields removed.
  var skeleton: [UInt8]
  /// For each initializer, in order, the byte range of its raw_data in the file, if it had one.
  var rawData: [Range<Int>?]
  /// GraphProto.metadata_props (field 16, newer than the schema protobuf-c was built from):
  /// dynamo writes its graph signature there, which says which initializers are buffers.
  var graphMetadata: [String: String] = [:]
  /// BatchNormalization nodes whose dynamo metadata (`pkg.torch.onnx.fx_node`, NodeProto
  /// field 9) shows PyTorch ran them in training mode: dynamo writes such a node without
  /// `training_mode`, which ONNX reads as inference.
  var trainingBatchNorms: Set<String> = []
}

private struct Reader {
  let buf: UnsafeRawBufferPointer
  var pos: Int
  let end: Int

  mutating func varint() -> UInt64? {
    var v: UInt64 = 0
    var shift: UInt64 = 0
    while pos < end, shift < 64 {
      let b = buf[pos]
      pos += 1
      v |= UInt64(b & 0x7f) << shift
      if b & 0x80 == 0 { return v }
      shift += 7
    }
    return nil
  }

  /// Skips a field's payload; returns the payload range (for length-delimited fields, the contents).
  mutating func payload(wireType: UInt64) -> Range<Int>? {
    let start = pos
    switch wireType {
    case 0: return varint() != nil ? start..<pos : nil
    case 1: guard end - pos >= 8 else { return nil }; pos += 8; return start..<pos
    case 5: guard end - pos >= 4 else { return nil }; pos += 4; return start..<pos
    case 2:
      guard let n = varint(), n <= UInt64(end - pos) else { return nil }
      let s = pos
      pos += Int(n)
      return s..<pos
    default: return nil
    }
  }
}

private func appendVarint(_ v: UInt64, to out: inout [UInt8]) {
  var v = v
  while v >= 0x80 {
    out.append(UInt8(v & 0x7f) | 0x80)
    v >>= 7
  }
  out.append(UInt8(v))
}

/// Copies the fields of the message in `range`, letting `rewrite` replace length-delimited
/// fields it handles (it returns false for fields to copy unchanged).
private func copyMessage(
  _ buf: UnsafeRawBufferPointer, _ range: Range<Int>, into out: inout [UInt8],
  rewrite: (UInt64, Range<Int>, inout [UInt8]) -> Bool?
) -> Bool {
  var r = Reader(buf: buf, pos: range.lowerBound, end: range.upperBound)
  while r.pos < r.end {
    let keyStart = r.pos
    guard let key = r.varint() else { return false }
    let field = key >> 3, wire = key & 7
    guard field > 0, let body = r.payload(wireType: wire) else { return false }
    if wire == 2 {
      switch rewrite(field, body, &out) {
      case nil: return false
      case true?: continue
      case false?: break
      }
    }
    out.append(contentsOf: buf[keyStart..<r.pos])
  }
  return true
}

/// Writes a length-delimited field whose contents `fill` produces.
private func nested(_ field: UInt64, into out: inout [UInt8], _ fill: (inout [UInt8]) -> Bool) -> Bool {
  var inner: [UInt8] = []
  guard fill(&inner) else { return false }
  appendVarint(field << 3 | 2, to: &out)
  appendVarint(UInt64(inner.count), to: &out)
  out.append(contentsOf: inner)
  return true
}

/// Strips initializer raw_data from the ModelProto in `buf`; nil when the wire format is malformed.
func stripInitializerData(_ buf: UnsafeRawBufferPointer) -> StrippedModel? {
  var raw: [Range<Int>?] = []
  var metadata: [String: String] = [:]
  var trainingBatchNorms: Set<String> = []
  var out: [UInt8] = []
  out.reserveCapacity(min(buf.count, 1 << 20))
  let ok = copyMessage(buf, 0..<buf.count, into: &out) { field, body, out in
    guard field == 7 else { return false }  // ModelProto.graph
    return nested(7, into: &out) { graph in
      copyMessage(buf, body, into: &graph) { gField, gBody, graph in
        if gField == 1, let name = trainingBatchNorm(buf, gBody) { trainingBatchNorms.insert(name) }  // GraphProto.node
        if gField == 16 {  // GraphProto.metadata_props: StringStringEntryProto {key = 1, value = 2}
          guard let (k, v) = stringPair(buf, gBody) else { return nil }
          metadata[k] = v
          return true
        }
        guard gField == 5 else { return false }  // GraphProto.initializer
        var found: Range<Int>?
        let ok = nested(5, into: &graph) { tensor in
          copyMessage(buf, gBody, into: &tensor) { tField, tBody, _ in
            guard tField == 9 else { return false }  // TensorProto.raw_data
            found = tBody
            return true
          }
        }
        raw.append(found)
        return ok
      }
    }
  }
  return ok ? StrippedModel(skeleton: out, rawData: raw, graphMetadata: metadata, trainingBatchNorms: trainingBatchNorms) : nil
}

/// The name of the NodeProto in `range` when it is a BatchNormalization whose fx node is aten's
/// `_native_batch_norm_legit_functional` with training = True (its sixth argument).
private func trainingBatchNorm(_ buf: UnsafeRawBufferPointer, _ range: Range<Int>) -> String? {
  var name = "", op = "", fx = ""
  var r = Reader(buf: buf, pos: range.lowerBound, end: range.upperBound)
  while r.pos < r.end {
    guard let k = r.varint(), let body = r.payload(wireType: k & 7) else { return nil }
    guard k & 7 == 2 else { continue }
    switch k >> 3 {
    case 3: name = String(decoding: UnsafeRawBufferPointer(rebasing: buf[body]), as: UTF8.self)
    case 4: op = String(decoding: UnsafeRawBufferPointer(rebasing: buf[body]), as: UTF8.self)
    case 9:
      if let (key, value) = stringPair(buf, body), key == "pkg.torch.onnx.fx_node" { fx = value }
    default: continue
    }
  }
  guard op == "BatchNormalization", fx.contains("_native_batch_norm_legit_functional"),
    let args = fx.range(of: "args = (")
  else { return nil }
  let list = fx[args.upperBound...].prefix { $0 != ")" }.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
  return list.count > 5 && list[5] == "True" ? name : nil
}

/// The key and value of a StringStringEntryProto; nil when malformed.
private func stringPair(_ buf: UnsafeRawBufferPointer, _ range: Range<Int>) -> (String, String)? {
  var key = "", value = ""
  var r = Reader(buf: buf, pos: range.lowerBound, end: range.upperBound)
  while r.pos < r.end {
    guard let k = r.varint(), let body = r.payload(wireType: k & 7) else { return nil }
    guard k & 7 == 2, k >> 3 == 1 || k >> 3 == 2 else { continue }
    let text = String(decoding: UnsafeRawBufferPointer(rebasing: buf[body]), as: UTF8.self)
    if k >> 3 == 1 { key = text } else { value = text }
  }
  return (key, value)
}
