// Cost.swift: floating-point operation counts per node, shared by the static cost model and the runtime's counter.

extension Graph {
  /// Floating-point operations node `n` performs. `gemm` is what its matrix multiplies cost
  /// (2·M·N·K, the runtime's sgemm calls); `other` is the runtime's own kernels: one per
  /// result element for elementwise ops, a few per element for normalizations (constants
  /// below), and none for data movement.
  public func flops(_ n: Node) -> (gemm: Int, other: Int) {
    let out = n.outputs.first.map { type(of: $0).elementCount } ?? 0
    func count(_ i: Int) -> Int { type(of: n.inputs[i]).elementCount }
    func shape(_ i: Int) -> [Int] { type(of: n.inputs[i]).shape }
    func convCost(_ g: ConvGeometry, out y: Int, weight w: [Int], input x: [Int]) -> (Int, Int) {
      let perOutput = 2 * w.dropFirst().reduce(1, *)
      // Depthwise convolutions run in a direct kernel, everything else as im2col + sgemm.
      let depthwise = g.group > 1 && w.count > 1 && w[1] == 1
      return depthwise ? (0, y * perOutput) : (y * perOutput, 0)
    }
    switch n.op {
    case .linear(let axis, _):
      let rows = count(0) / max(shape(0)[axis], 1)
      return (2 * count(0) * (out / max(rows, 1)), n.inputs.count > 2 ? out : 0)
    case .linearGradWeight(let axis, _, let ws):
      let fin = shape(0)[axis]
      let fout = ws.reduce(1, *) / max(fin, 1)
      return (2 * count(0) * fout, 0)
    case .matMul:
      return (2 * out * (shape(0).last ?? 1), 0)
    case .gemm(let ta, _, _, _):
      let a = shape(0)
      return (2 * out * (ta ? a[0] : a[1]), n.inputs.count > 2 ? out : 0)
    case .conv(let g):
      let (m, o) = convCost(g, out: out, weight: shape(1), input: shape(0))
      return (m, o + (n.inputs.count > 2 ? out : 0))
    case .convGradInput(let g, _):
      return convCost(g, out: count(0), weight: shape(1), input: [])
    case .convGradWeight(let g, let ws):
      return convCost(g, out: count(1), weight: ws, input: shape(0))
    case .add, .sub, .mul, .div, .pow, .equal, .select, .sqrt, .erf, .tanh, .exp, .neg, .relu, .sigmoid, .reciprocal, .gelu,
      .reluGrad, .geluGrad:
      return (0, out)
    case .layerNorm: return (0, 5 * out)
    case .layerNormGrad: return (0, 8 * count(0))
    case .softmax: return (0, 3 * out)
    case .softmaxGrad: return (0, 3 * out)
    case .softmaxCrossEntropy, .softmaxCrossEntropyGrad: return (0, 3 * count(0))
    case .reduceMean, .reduceSum, .globalAveragePool: return (0, count(0))
    case .gatherGrad: return (0, count(1))
    case .sgd: return (0, 4 * count(0))
    case .adamw: return (0, 10 * count(0))
    case .constant, .cast, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
      .expand, .stopGradient, .sliceGrad:
      return (0, 0)
    }
  }
}
