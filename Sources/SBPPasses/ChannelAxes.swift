// ChannelAxes.swift: which axis of each value holds channels, traced forward from the image through the graph.
import SBPIR

/// The channel axis of every value whose layout can be told: the image input and every conv
/// or pool output are NCHW, a linear's result has its features where it contracted them,
/// transposes move the axis, row-wise ops keep it, and a reshape keeps it only when it
/// leaves the channels whole at the same end (a flatten of H×W, Swin's 2×2 patch merge).
/// Anything else (attention heads split out of the features, a batch folded with windows,
/// a reduction) has no known channel axis. `mark` uses it to tell a PW-Conv node outside
/// any residual unit from a linear over tokens.
struct ChannelAxes {
  var axis: [ValueID: Int] = [:]

  init(_ m: BlockMatcher) {
    let g = m.g
    for i in g.inputs where g.type(of: i.value).rank == 4 { axis[i.value] = 1 }
    for n in g.nodes {
      guard let out = n.outputs.first else { continue }
      let rank = g.type(of: out).rank
      let shape = g.type(of: out).shape
      // The activation operand laid out like the result (a broadcast scale or bias is not).
      let same = n.inputs.first { m.isActivation($0) && axis[$0] != nil && g.type(of: $0).shape == shape }.flatMap { axis[$0] }
      let first = n.inputs.first.flatMap { axis[$0] }
      var c: Int?
      switch n.op {
      case .conv, .maxPool, .averagePool, .globalAveragePool: c = rank == 4 ? 1 : nil
      // A linear over the channels puts its features there; one over a token axis (MLP-Mixer's
      // token mixing) leaves the channels where they were.
      case .linear(let a, _): c = first.map { $0 == a ? a : $0 }
      case .transpose(let p): c = first.flatMap { p.firstIndex(of: $0) }
      case .reshape:
        let s = g.type(of: n.inputs[0]).shape
        if let f = first, f == s.count - 1, let l = shape.last, l % s[f] == 0, shape.first == s.first, rank >= 3 {
          c = rank - 1
        } else if first == 1, rank >= 3, shape[0] == s[0], shape[1] == s[1] {
          c = 1
        }
      case .concat where first != nil:
        // A class token joined to the patch rows (along the token axis), or channel groups
        // joined (FasterNet's partial conv, GhostNet's cheap features): the channels stay put.
        let agree = n.inputs.compactMap { axis[$0] }.allSatisfy { $0 == first }
        c = agree && g.type(of: n.inputs[0]).rank == rank ? first : nil
      case .slice where first != nil:
        c = g.type(of: n.inputs[0]).rank == rank ? first : nil
      case .split where first != nil:
        // Every part of a split keeps the layout, channel groups included.
        for o in n.outputs.dropFirst() where g.type(of: o).rank == rank { axis[o] = first }
        c = first
      case .batchNorm, .batchNormTraining, .layerNorm, .layerNormSaving, .pad, .stopGradient, .cast:
        c = g.type(of: n.inputs[0]).shape == shape ? first : nil
      case .add, .sub, .mul, .div, .pow, .unary, .select:
        c = same
      case .constant, .equal, .matMul, .gemm, .softmax, .slice, .concat, .gather, .split, .gatherRows, .scatterRows, .squeeze,
        .unsqueeze, .expand, .reduceMean, .reduceSum, .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad,
        .layerNormGrad, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .padGrad,
        .batchNormGrad, .runningStats, .maxPoolGrad, .averagePoolGrad, .sgd, .adamw:
        c = nil
      }
      if let c { axis[out] = c }
    }
  }
}
