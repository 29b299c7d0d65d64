// Unary.swift: the elementwise functions of one operand: names, reference math, FLOPs and traits, one case each.
import Glibc

/// An elementwise function of one operand. `Op.unary(f)` applies it and `Op.unaryGrad(f)`
/// computes dy·f′(x) from x and dy; every trait, name and reference formula of a function is
/// here, so adding one (see docs/adding-an-op.md) is a case here, a kernel, a gradient rule
/// and, when exporters spell it as a chain, a canonicalization.
public enum Unary: Sendable, Hashable {
  case sqrt, erf, tanh, exp, neg, relu, sigmoid, reciprocal
  /// x·sigmoid(x) (PyTorch's SiLU, also called swish).
  case silu
  case gelu(GeluApproximation)
  /// max(0, min(1, α·x + β)) (ONNX HardSigmoid; PyTorch's hardsigmoid is α = 1/6, β = 1/2).
  case hardSigmoid(alpha: Double, beta: Double)
  /// x·max(0, min(1, x/6 + 1/2)) (ONNX HardSwish, PyTorch's hardswish).
  case hardSwish
  /// min(max(x, lo), hi) with constant bounds (ONNX Clip; ReLU6 is clip(0, 6)). A missing
  /// bound is ±Float.greatestFiniteMagnitude.
  case clip(min: Double, max: Double)

  /// The op's name in the text form; its gradient op is this name + `_grad`.
  public var name: String {
    switch self {
    case .sqrt: return "sqrt"
    case .erf: return "erf"
    case .tanh: return "tanh"
    case .exp: return "exp"
    case .neg: return "neg"
    case .relu: return "relu"
    case .sigmoid: return "sigmoid"
    case .reciprocal: return "reciprocal"
    case .silu: return "silu"
    case .gelu: return "gelu"
    case .hardSigmoid: return "hard_sigmoid"
    case .hardSwish: return "hard_swish"
    case .clip: return "clip"
    }
  }

  /// Payload attributes in the text form.
  public var attributes: [String: AttrValue] {
    switch self {
    case .sqrt, .erf, .tanh, .exp, .neg, .relu, .sigmoid, .reciprocal, .silu, .hardSwish: return [:]
    case .gelu(let a): return ["approximate": .string(a.rawValue)]
    case .hardSigmoid(let alpha, let beta): return ["alpha": .float(alpha), "beta": .float(beta)]
    case .clip(let lo, let hi): return ["min": .float(lo), "max": .float(hi)]
    }
  }

  /// Every function, each payload variant once: the parser looks names up here, and the
  /// tests check every entry against its reference derivative.
  public static let all: [Unary] = [
    .sqrt, .erf, .tanh, .exp, .neg, .relu, .sigmoid, .reciprocal, .silu, .gelu(.none), .gelu(.tanh),
    .hardSigmoid(alpha: 1.0 / 6, beta: 0.5), .hardSwish, .clip(min: 0, max: 6),
  ]

  /// Rebuilds a function from its text name and attributes; nil for another name.
  public init?(name: String, attributes a: AttrDict) throws {
    guard let base = Unary.all.first(where: { $0.name == name }) else { return nil }
    switch base {
    case .gelu:
      let s = try a.string("approximate")
      guard let g = GeluApproximation(rawValue: s) else {
        throw IRError.attribute("\(name): approximate must be \"none\" or \"tanh\", got '\(s)'")
      }
      self = .gelu(g)
    case .hardSigmoid: self = .hardSigmoid(alpha: try a.float("alpha"), beta: try a.float("beta"))
    case .clip:
      let lo = try a.float("min"), hi = try a.float("max")
      guard lo <= hi else { throw IRError.attribute("clip: min \(lo) is above max \(hi)") }
      self = .clip(min: lo, max: hi)
    case .sqrt, .erf, .tanh, .exp, .neg, .relu, .sigmoid, .reciprocal, .silu, .hardSwish: self = base
    }
  }

  /// f(x) in double precision: the reference the kernels and the gradient checks are held
  /// to, and what constant folding computes.
  public func apply(_ x: Double) -> Double {
    switch self {
    case .sqrt: return x.squareRoot()
    case .erf: return Glibc.erf(x)
    case .tanh: return Glibc.tanh(x)
    case .exp: return Glibc.exp(x)
    case .neg: return -x
    case .relu: return x > 0 ? x : 0
    case .sigmoid: return 1 / (1 + Glibc.exp(-x))
    case .reciprocal: return 1 / x
    case .silu: return x / (1 + Glibc.exp(-x))
    case .gelu(.none): return 0.5 * x * (1 + Glibc.erf(x / 2.0.squareRoot()))
    case .gelu(.tanh):
      return 0.5 * x * (1 + Glibc.tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
    case .hardSigmoid(let alpha, let beta): return Swift.max(0, Swift.min(1, alpha * x + beta))
    case .hardSwish: return x * Swift.max(0, Swift.min(1, x / 6 + 0.5))
    case .clip(let lo, let hi): return Swift.min(Swift.max(x, lo), hi)
    }
  }

  /// f′(x) in double precision, what `unary_grad` multiplies dy by.
  public func derivative(_ x: Double) -> Double {
    switch self {
    case .sqrt: return 0.5 / x.squareRoot()
    case .erf: return 2 / Double.pi.squareRoot() * Glibc.exp(-x * x)
    case .tanh:
      let t = Glibc.tanh(x)
      return 1 - t * t
    case .exp: return Glibc.exp(x)
    case .neg: return -1
    case .relu: return x > 0 ? 1 : 0
    case .sigmoid:
      let s = 1 / (1 + Glibc.exp(-x))
      return s * (1 - s)
    case .reciprocal: return -1 / (x * x)
    case .silu:
      let s = 1 / (1 + Glibc.exp(-x))
      return s * (1 + x * (1 - s))
    case .gelu(.none): return 0.5 * (1 + Glibc.erf(x / 2.0.squareRoot())) + x * Glibc.exp(-0.5 * x * x) / (2 * Double.pi).squareRoot()
    case .gelu(.tanh):
      let c = (2 / Double.pi).squareRoot()
      let t = Glibc.tanh(c * (x + 0.044715 * x * x * x))
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    // At the kinks, PyTorch's choices: hardsigmoid's slope only strictly inside, hardswish's
    // middle piece on [−3, 3], clamp's gradient on the closed interval.
    case .hardSigmoid(let alpha, let beta):
      let z = alpha * x + beta
      return z > 0 && z < 1 ? alpha : 0
    case .hardSwish: return x < -3 ? 0 : (x <= 3 ? x / 3 + 0.5 : 1)
    case .clip(let lo, let hi): return x >= lo && x <= hi ? 1 : 0
    }
  }

  /// An activation: a nonlinearity an MLP or PW-Conv branch may hold between its layers.
  /// The others (sqrt, exp, neg, reciprocal, erf) are arithmetic that exporters decompose
  /// norms and activations into.
  public var isActivation: Bool {
    switch self {
    case .relu, .sigmoid, .tanh, .silu, .gelu, .hardSigmoid, .hardSwish, .clip: return true
    case .sqrt, .erf, .exp, .neg, .reciprocal: return false
    }
  }

  /// Cheap enough to recompute in the backward instead of saving its result.
  public var isCheapToRecompute: Bool {
    switch self {
    case .relu, .sigmoid, .tanh, .silu, .gelu, .hardSigmoid, .hardSwish, .clip: return true
    case .sqrt, .erf, .exp, .neg, .reciprocal: return false
    }
  }
}
