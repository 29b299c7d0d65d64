// Op.swift: the IR's operations as one enum, their text names and their attribute payloads.

/// Layout of a `linear` weight: `[out, in]` as PyTorch stores it, or `[in, out]` as exporters
/// often transpose it for MatMul. The parameter keeps its original layout so gradients stay
/// attached to the tensor the user trains.
public enum WeightLayout: String, Sendable, Hashable {
  case outIn = "oi"
  case inOut = "io"
}

/// GELU variant.
public enum GeluApproximation: String, Sendable, Hashable {
  case none
  case tanh
}

/// Static convolution geometry (NCHW, weights OIHW).
public struct ConvGeometry: Sendable, Hashable {
  public var strides: [Int]
  public var pads: [Int]  // begin..., end...
  public var dilations: [Int]
  public var group: Int

  public init(strides: [Int], pads: [Int], dilations: [Int], group: Int) {
    self.strides = strides
    self.pads = pads
    self.dilations = dilations
    self.group = group
  }
}

/// Static slice parameters, one entry per sliced axis.
public struct SliceSpec: Sendable, Hashable {
  public var starts: [Int]
  public var ends: [Int]
  public var axes: [Int]
  public var steps: [Int]

  public init(starts: [Int], ends: [Int], axes: [Int], steps: [Int]) {
    self.starts = starts
    self.ends = ends
    self.axes = axes
    self.steps = steps
  }
}

/// An IR operation. Payloads hold everything static; tensor operands are node inputs.
/// Every pass switches over this exhaustively, so adding a case forces each pass to decide.
public enum Op: Sendable, Hashable {
  // Sources
  case constant(Literal)
  // Elementwise, numpy broadcasting
  case add, sub, mul, div, pow
  case equal
  case select  // ONNX Where(cond, x, y)
  // Elementwise unary
  case sqrt, erf, tanh, exp, neg, relu, sigmoid, reciprocal
  case cast(DType)
  // Linear algebra
  case matMul
  /// y = x ·contract(axis) W (+ b). Inputs: x, W, optional b.
  case linear(axis: Int, layout: WeightLayout)
  case gemm(transA: Bool, transB: Bool, alpha: Double, beta: Double)
  case conv(ConvGeometry)
  // Normalization and activations
  /// Normalizes over axes [axis, rank). Inputs: x, scale, optional bias.
  case layerNorm(axis: Int, epsilon: Double)
  case gelu(GeluApproximation)
  case softmax(axis: Int)
  // Data movement; shapes are static payloads.
  case reshape([Int])
  case transpose([Int])
  case slice(SliceSpec)
  case gather(axis: Int)
  case concat(axis: Int)
  case split(axis: Int, sizes: [Int])
  case squeeze([Int])
  case unsqueeze([Int])
  case expand([Int])
  // Reductions
  case reduceMean(axes: [Int], keepDims: Bool)
  case reduceSum(axes: [Int], keepDims: Bool)
  case globalAveragePool

  /// The op's name in the text form.
  public var name: String {
    switch self {
    case .constant: return "constant"
    case .add: return "add"
    case .sub: return "sub"
    case .mul: return "mul"
    case .div: return "div"
    case .pow: return "pow"
    case .equal: return "equal"
    case .select: return "select"
    case .sqrt: return "sqrt"
    case .erf: return "erf"
    case .tanh: return "tanh"
    case .exp: return "exp"
    case .neg: return "neg"
    case .relu: return "relu"
    case .sigmoid: return "sigmoid"
    case .reciprocal: return "reciprocal"
    case .cast: return "cast"
    case .matMul: return "matmul"
    case .linear: return "linear"
    case .gemm: return "gemm"
    case .conv: return "conv"
    case .layerNorm: return "layer_norm"
    case .gelu: return "gelu"
    case .softmax: return "softmax"
    case .reshape: return "reshape"
    case .transpose: return "transpose"
    case .slice: return "slice"
    case .gather: return "gather"
    case .concat: return "concat"
    case .split: return "split"
    case .squeeze: return "squeeze"
    case .unsqueeze: return "unsqueeze"
    case .expand: return "expand"
    case .reduceMean: return "reduce_mean"
    case .reduceSum: return "reduce_sum"
    case .globalAveragePool: return "global_average_pool"
    }
  }

  /// The payload as attributes, sorted by key when printed.
  public var attributes: [String: AttrValue] {
    switch self {
    case .constant(let lit):
      switch lit.elements {
      case .floats(let v): return ["value": .floats(v)]
      case .ints(let v): return ["value": .ints(v.map { Int($0) })]
      }
    case .add, .sub, .mul, .div, .pow, .equal, .select, .sqrt, .erf, .tanh, .exp, .neg, .relu,
      .sigmoid, .reciprocal, .matMul, .globalAveragePool:
      return [:]
    case .cast(let t): return ["to": .string(t.rawValue)]
    case .linear(let axis, let layout): return ["axis": .int(axis), "layout": .string(layout.rawValue)]
    case .gemm(let ta, let tb, let alpha, let beta):
      return ["trans_a": .int(ta ? 1 : 0), "trans_b": .int(tb ? 1 : 0), "alpha": .float(alpha), "beta": .float(beta)]
    case .conv(let g):
      return ["strides": .ints(g.strides), "pads": .ints(g.pads), "dilations": .ints(g.dilations), "group": .int(g.group)]
    case .layerNorm(let axis, let eps): return ["axis": .int(axis), "epsilon": .float(eps)]
    case .gelu(let a): return ["approximate": .string(a.rawValue)]
    case .softmax(let axis): return ["axis": .int(axis)]
    case .reshape(let s): return ["shape": .ints(s)]
    case .transpose(let p): return ["perm": .ints(p)]
    case .slice(let s): return ["starts": .ints(s.starts), "ends": .ints(s.ends), "axes": .ints(s.axes), "steps": .ints(s.steps)]
    case .gather(let axis): return ["axis": .int(axis)]
    case .concat(let axis): return ["axis": .int(axis)]
    case .split(let axis, let sizes): return ["axis": .int(axis), "sizes": .ints(sizes)]
    case .squeeze(let a): return ["axes": .ints(a)]
    case .unsqueeze(let a): return ["axes": .ints(a)]
    case .expand(let s): return ["shape": .ints(s)]
    case .reduceMean(let axes, let k): return ["axes": .ints(axes), "keepdims": .int(k ? 1 : 0)]
    case .reduceSum(let axes, let k): return ["axes": .ints(axes), "keepdims": .int(k ? 1 : 0)]
    }
  }

  /// Every op name the text form accepts.
  public static let allNames: [String] = [
    "constant", "add", "sub", "mul", "div", "pow", "equal", "select", "sqrt", "erf", "tanh", "exp", "neg",
    "relu", "sigmoid", "reciprocal", "cast", "matmul", "linear", "gemm", "conv", "layer_norm", "gelu",
    "softmax", "reshape", "transpose", "slice", "gather", "concat", "split", "squeeze", "unsqueeze",
    "expand", "reduce_mean", "reduce_sum", "global_average_pool",
  ]

  /// Rebuilds an op from its text name and payload attributes. `resultType` is needed by
  /// `constant`, whose dtype and shape are given by its type annotation.
  public init(name: String, attributes a: AttrDict, resultType: TensorType?) throws {
    switch name {
    case "constant":
      guard let t = resultType else { throw IRError.attribute("constant needs a result type") }
      let lit: Literal
      if t.dtype.isFloat {
        lit = Literal.make(t.dtype, shape: t.shape, values: try a.floats("value"))
      } else {
        lit = Literal(type: t, elements: .ints(try a.ints("value").map { Int64($0) }))
      }
      guard let n = checkedElementCount(t.shape), n == lit.count else {
        throw IRError.attribute("constant: \(lit.count) values do not fill \(t)")
      }
      self = .constant(lit)
    case "add": self = .add
    case "sub": self = .sub
    case "mul": self = .mul
    case "div": self = .div
    case "pow": self = .pow
    case "equal": self = .equal
    case "select": self = .select
    case "sqrt": self = .sqrt
    case "erf": self = .erf
    case "tanh": self = .tanh
    case "exp": self = .exp
    case "neg": self = .neg
    case "relu": self = .relu
    case "sigmoid": self = .sigmoid
    case "reciprocal": self = .reciprocal
    case "cast":
      let s = try a.string("to")
      guard let t = DType(rawValue: s) else { throw IRError.attribute("cast: unknown dtype '\(s)'") }
      self = .cast(t)
    case "matmul": self = .matMul
    case "linear":
      let s = try a.string("layout")
      guard let l = WeightLayout(rawValue: s) else { throw IRError.attribute("linear: layout must be \"oi\" or \"io\", got '\(s)'") }
      self = .linear(axis: try a.int("axis"), layout: l)
    case "gemm":
      self = .gemm(
        transA: try a.int("trans_a") != 0, transB: try a.int("trans_b") != 0, alpha: try a.float("alpha"), beta: try a.float("beta"))
    case "conv":
      self = .conv(
        ConvGeometry(
          strides: try a.ints("strides"), pads: try a.ints("pads"), dilations: try a.ints("dilations"), group: try a.int("group")))
    case "layer_norm": self = .layerNorm(axis: try a.int("axis"), epsilon: try a.float("epsilon"))
    case "gelu":
      let s = try a.string("approximate")
      guard let g = GeluApproximation(rawValue: s) else {
        throw IRError.attribute("gelu: approximate must be \"none\" or \"tanh\", got '\(s)'")
      }
      self = .gelu(g)
    case "softmax": self = .softmax(axis: try a.int("axis"))
    case "reshape": self = .reshape(try a.ints("shape"))
    case "transpose": self = .transpose(try a.ints("perm"))
    case "slice":
      self = .slice(SliceSpec(starts: try a.ints("starts"), ends: try a.ints("ends"), axes: try a.ints("axes"), steps: try a.ints("steps")))
    case "gather": self = .gather(axis: try a.int("axis"))
    case "concat": self = .concat(axis: try a.int("axis"))
    case "split": self = .split(axis: try a.int("axis"), sizes: try a.ints("sizes"))
    case "squeeze": self = .squeeze(try a.ints("axes"))
    case "unsqueeze": self = .unsqueeze(try a.ints("axes"))
    case "expand": self = .expand(try a.ints("shape"))
    case "reduce_mean": self = .reduceMean(axes: try a.ints("axes"), keepDims: try a.int("keepdims") != 0)
    case "reduce_sum": self = .reduceSum(axes: try a.ints("axes"), keepDims: try a.int("keepdims") != 0)
    case "global_average_pool": self = .globalAveragePool
    default:
      throw IRError.attribute("unknown op '\(name)'")
    }
  }

  /// True for ops that apply one function per element (after broadcasting); the memory
  /// planner may run these in place.
  public var isElementwise: Bool {
    switch self {
    case .add, .sub, .mul, .div, .pow, .equal, .select, .sqrt, .erf, .tanh, .exp, .neg, .relu, .sigmoid,
      .reciprocal, .cast, .gelu:
      return true
    case .constant, .matMul, .linear, .gemm, .conv, .layerNorm, .softmax, .reshape, .transpose, .slice,
      .gather, .concat, .split, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum, .globalAveragePool:
      return false
    }
  }
}
