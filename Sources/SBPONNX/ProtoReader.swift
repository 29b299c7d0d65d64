// ProtoReader.swift: decodes an ONNX protobuf (via protobuf-c) into plain Swift values.
import CONNXProto
import CProtobufC
import Glibc
import SBPIR

/// Error raised while importing a model; `description` is one line naming the file and the thing at fault.
public struct ImportError: Error, CustomStringConvertible {
  public let description: String
  public init(_ m: String) { description = m }
}

/// A read-only memory mapping of a whole file. Unmapped when released.
final class MappedFile: @unchecked Sendable {
  let base: UnsafeRawPointer?
  let count: Int

  init(path: String) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ImportError("\(path): cannot open (\(String(cString: strerror(errno))))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw ImportError("\(path): cannot stat") }
    guard (st.st_mode & S_IFMT) == S_IFREG else { throw ImportError("\(path): not a regular file") }
    count = Int(st.st_size)
    if count == 0 {
      base = nil
      return
    }
    let p = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
    guard let p, p != MAP_FAILED else { throw ImportError("\(path): cannot map (\(String(cString: strerror(errno))))") }
    base = UnsafeRawPointer(p)
  }

  deinit {
    if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
  }
}

/// Owns a decoded protobuf-c message; tensors borrow their `raw_data` from it.
final class DecodedModel: @unchecked Sendable {
  let message: UnsafeMutablePointer<Onnx__ModelProto>
  init(_ m: UnsafeMutablePointer<Onnx__ModelProto>) { message = m }
  deinit { onnx__model_proto__free_unpacked(message, nil) }
}

/// An ONNX attribute.
enum OAttr {
  case float(Double)
  case int(Int)
  case string(String)
  case tensor(OTensor)
  case floats([Double])
  case ints([Int])
  case other(Int32)
}

/// An ONNX tensor: its data is raw little-endian bytes (in place), typed values, or external.
struct OTensor {
  enum Data {
    case bytes(TensorBytes)
    case external(location: String, offset: Int, length: Int?)
  }
  var name: String
  var onnxType: Int32
  var dims: [Int]
  var data: Data
}

struct ODim {
  var value: Int?
  var param: String?
}

struct OValueInfo {
  var name: String
  var elemType: Int32?
  var dims: [ODim]?
}

struct ONode {
  var name: String
  var opType: String
  var domain: String
  var inputs: [String]
  var outputs: [String]
  var attrs: [String: OAttr]
}

struct OModel {
  var opsets: [String: Int]
  var producer: String
  var graphName: String
  var nodes: [ONode]
  var initializers: [OTensor]
  var inputs: [OValueInfo]
  var outputs: [OValueInfo]
  var valueInfo: [OValueInfo]
  var functionCount: Int
  var graphMetadata: [String: String] = [:]
  /// BatchNormalization nodes dynamo exported from a train-mode forward (see `StrippedModel`).
  var trainingBatchNorms: Set<String> = []
}

private func str(_ p: UnsafeMutablePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }

private func array<T>(_ p: UnsafeMutablePointer<T>?, _ n: Int) -> UnsafeBufferPointer<T> {
  UnsafeBufferPointer(start: p, count: p == nil ? 0 : n)
}

/// Decodes the ONNX file at `path`. The file stays mapped while any initializer that borrows
/// its bytes is alive; everything else is copied out of protobuf-c's decoded message.
func readONNX(path: String) throws -> OModel {
  let file = try MappedFile(path: path)
  guard file.count > 0, let base = file.base else { throw ImportError("\(path): file is empty, not an ONNX model") }
  let corrupt = ImportError("\(path): not a valid ONNX protobuf (truncated or corrupt)")
  // Weights stay in the mapping: protobuf-c decodes the model with initializer bytes lifted out.
  guard let stripped = stripInitializerData(UnsafeRawBufferPointer(start: base, count: file.count)) else { throw corrupt }
  let decoded = stripped.skeleton.withUnsafeBufferPointer { onnx__model_proto__unpack(nil, $0.count, $0.baseAddress) }
  guard let msg = decoded else { throw corrupt }
  let owner = DecodedModel(msg)
  let m = msg.pointee
  guard let g = m.graph?.pointee else { throw ImportError("\(path): ONNX model has no graph (truncated or not a model)") }

  var opsets: [String: Int] = [:]
  for o in array(m.opset_import, m.n_opset_import) {
    guard let o else { continue }
    let d = str(o.pointee.domain)
    opsets[d == "ai.onnx" ? "" : d] = Int(o.pointee.version)
  }

  func tensor(_ t: UnsafeMutablePointer<Onnx__TensorProto>, rawInFile: Range<Int>? = nil) throws -> OTensor {
    let p = t.pointee
    let name = str(p.name)
    let dims = array(p.dims, p.n_dims).map { Int(clamping: $0) }
    let type = p.data_type
    if p.has_data_location != 0 && p.data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL {
      var loc: String?, off = 0, len: Int?
      for e in array(p.external_data, p.n_external_data) {
        guard let e else { continue }
        let k = str(e.pointee.key), v = str(e.pointee.value)
        switch k {
        case "location": loc = v
        case "offset":
          guard let n = Int(v), n >= 0 else { throw ImportError("\(path): tensor '\(name)': bad external offset '\(v)'") }
          off = n
        case "length":
          guard let n = Int(v), n >= 0 else { throw ImportError("\(path): tensor '\(name)': bad external length '\(v)'") }
          len = n
        default: break
        }
      }
      guard let loc, !loc.isEmpty else { throw ImportError("\(path): tensor '\(name)' is external but has no location") }
      return OTensor(name: name, onnxType: type, dims: dims, data: .external(location: loc, offset: off, length: len))
    }
    if let r = rawInFile {
      return OTensor(
        name: name, onnxType: type, dims: dims,
        data: .bytes(TensorBytes(borrowing: base + r.lowerBound, count: r.count, owner: file, fileBacked: true)))
    }
    if p.has_raw_data != 0 {
      let raw = p.raw_data
      let bytes: TensorBytes =
        raw.len > 0 && raw.data != nil
        ? TensorBytes(borrowing: UnsafeRawPointer(raw.data!), count: raw.len, owner: owner)
        : TensorBytes(copying: UnsafeRawBufferPointer(start: nil, count: 0))
      return OTensor(name: name, onnxType: type, dims: dims, data: .bytes(bytes))
    }
    // Typed fields: repack into little-endian element bytes of the tensor's dtype.
    func pack<S, D>(_ src: UnsafeBufferPointer<S>, _ convert: (S) -> D) -> TensorBytes {
      let out = src.map(convert)
      return out.withUnsafeBytes { TensorBytes(copying: $0) }
    }
    let data: TensorBytes
    switch type {
    case 1: data = pack(array(p.float_data, p.n_float_data)) { $0 }
    case 7: data = pack(array(p.int64_data, p.n_int64_data)) { $0 }
    case 11: data = pack(array(p.double_data, p.n_double_data)) { $0 }
    case 6: data = pack(array(p.int32_data, p.n_int32_data)) { $0 }
    case 5, 4: data = pack(array(p.int32_data, p.n_int32_data)) { Int16(truncatingIfNeeded: $0) }
    case 10, 16: data = pack(array(p.int32_data, p.n_int32_data)) { UInt16(truncatingIfNeeded: $0) }
    case 3, 2, 9: data = pack(array(p.int32_data, p.n_int32_data)) { UInt8(truncatingIfNeeded: $0) }
    case 12, 13: data = pack(array(p.uint64_data, p.n_uint64_data)) { $0 }
    default: data = TensorBytes(copying: UnsafeRawBufferPointer(start: nil, count: 0))
    }
    return OTensor(name: name, onnxType: type, dims: dims, data: .bytes(data))
  }

  func valueInfo(_ v: UnsafeMutablePointer<Onnx__ValueInfoProto>) -> OValueInfo {
    var out = OValueInfo(name: str(v.pointee.name), elemType: nil, dims: nil)
    guard let ty = v.pointee.type, ty.pointee.value_case == ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE,
      let tt = ty.pointee.tensor_type
    else { return out }
    if tt.pointee.has_elem_type != 0 { out.elemType = tt.pointee.elem_type }
    if let sh = tt.pointee.shape {
      out.dims = array(sh.pointee.dim, sh.pointee.n_dim).map { d in
        guard let d else { return ODim(value: nil, param: nil) }
        switch d.pointee.value_case {
        case ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE: return ODim(value: Int(clamping: d.pointee.dim_value), param: nil)
        case ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM: return ODim(value: nil, param: str(d.pointee.dim_param))
        default: return ODim(value: nil, param: nil)
        }
      }
    }
    return out
  }

  var nodes: [ONode] = []
  for n in array(g.node, g.n_node) {
    guard let n else { continue }
    let p = n.pointee
    var attrs: [String: OAttr] = [:]
    for a in array(p.attribute, p.n_attribute) {
      guard let a else { continue }
      let ap = a.pointee
      let v: OAttr
      switch ap.type {
      case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT: v = .float(Double(ap.f))
      case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT: v = .int(Int(clamping: ap.i))
      case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING:
        let s = ap.s
        v = .string(s.len > 0 && s.data != nil ? String(decoding: UnsafeBufferPointer(start: s.data, count: s.len), as: UTF8.self) : "")
      case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR:
        guard let t = ap.t else { throw ImportError("\(path): node '\(str(p.name))': attribute '\(str(ap.name))' has no tensor") }
        v = .tensor(try tensor(t))
      case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS: v = .floats(array(ap.floats, ap.n_floats).map(Double.init))
      case ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS: v = .ints(array(ap.ints, ap.n_ints).map { Int(clamping: $0) })
      default: v = .other(Int32(ap.type.rawValue))
      }
      attrs[str(ap.name)] = v
    }
    nodes.append(
      ONode(
        name: str(p.name), opType: str(p.op_type), domain: str(p.domain),
        inputs: array(p.input, p.n_input).map(str), outputs: array(p.output, p.n_output).map(str), attrs: attrs))
  }
  return OModel(
    opsets: opsets, producer: str(m.producer_name), graphName: str(g.name), nodes: nodes,
    initializers: try array(g.initializer, g.n_initializer).enumerated().compactMap { i, t in
      try t.map { try tensor($0, rawInFile: i < stripped.rawData.count ? stripped.rawData[i] : nil) }
    },
    inputs: array(g.input, g.n_input).compactMap { $0.map(valueInfo) },
    outputs: array(g.output, g.n_output).compactMap { $0.map(valueInfo) },
    valueInfo: array(g.value_info, g.n_value_info).compactMap { $0.map(valueInfo) },
    functionCount: Int(m.n_functions), graphMetadata: stripped.graphMetadata, trainingBatchNorms: stripped.trainingBatchNorms)
}

/// Maps an ONNX TensorProto.DataType to the IR dtype.
func dtype(onnx t: Int32) -> DType? {
  switch t {
  case 1: return .f32
  case 2: return .u8
  case 3: return .i8
  case 5: return .i16
  case 6: return .i32
  case 7: return .i64
  case 9: return .bool
  case 10: return .f16
  case 11: return .f64
  case 16: return .bf16
  default: return nil
  }
}
