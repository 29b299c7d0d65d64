// Segments.swift: row-wise regions that start at a PW-Conv node, the general form of the token-wise split inside any residual branch.
import SBPIR

/// A row-wise region of a residual branch (DESIGN.md, "PW-Conv node"): it starts at the
/// channel linears (1×1 convs) that read one value on a token grid and takes in every later
/// node of the branch that computes each row from that row alone: activations, gates such as
/// SwiGLU's silu(g)·x, per-channel scales, a norm over the channels, further channel linears.
/// It ends where an op mixes rows (a train-mode BatchNorm, a depthwise or k×k conv, GRN, a
/// pooling mixer) or reads something from outside; the split goes around that op. Algorithm 1
/// applies to the region as a whole: kept rows with gradient, dropped rows without.
struct Segment {
  var nodes: [Int]
  /// The value the region's first linears read, and its token layout.
  var input: ValueID
  var layout: Layout
}

extension BlockMatcher {
  /// Whether `v` is a parameter or literal, or a view of one made outside any branch.
  func isConstantOperand(_ v: ValueID) -> Bool {
    let source = operandSource(v)
    // Or computed from parameters alone: NF-ResNet's weights, standardized in the forward.
    return ud.param(source) != nil || ud.literal(source) != nil || constantValues.contains(v)
  }

  /// Whether `v` is a parameter or literal (possibly reshaped) that is a scalar or varies
  /// along `channelAxis` alone for a result of rank `rank`: it then treats every row alike.
  func isChannelConstant(_ v: ValueID, rank: Int, channelAxis: Int) -> Bool {
    guard isConstantOperand(v) else { return false }
    let s = g.type(of: v).shape
    guard s.count <= rank else { return false }
    let aligned = [Int](repeating: 1, count: rank - s.count) + s
    return aligned.enumerated().allSatisfy { $0.element == 1 || $0.offset == channelAxis }
  }

  /// The token layout of `v` when a linear over `channelAxis` reads it as rows on a token
  /// grid of more than one position; nil otherwise (SE's pooled 1×1 map, attention heads
  /// reshaped into a 4-D value).
  func tokenGrid(of v: ValueID, channelAxis a: Int) -> Layout? {
    let s = g.type(of: v).shape
    // What moved the value here: a 4-D value made by a reshape is not an image grid (attention
    // heads). A transposed sequence (MLP-Mixer's token mixing) is caught by the caller, which
    // follows the branch's transposes from the unit's input.
    var moves: [Op] = []
    var u = v
    while let p = producerIndex[u], g.nodes[p].op.isDataMovement {
      moves.append(g.nodes[p].op)
      u = g.nodes[p].inputs[0]
    }
    switch (s.count, a) {
    case (4, 1) where s[2] * s[3] > 1 && !moves.contains(where: { if case .reshape = $0 { return true } else { return false } }):
      return Layout(name: "nchw", tokenAxes: [2, 3], grid: [s[2], s[3]], prefix: 0)
    case (4, 3) where s[1] * s[2] > 1 && !moves.contains(where: { if case .reshape = $0 { return true } else { return false } }):
      return Layout(name: "nhwc", tokenAxes: [1, 2], grid: [s[1], s[2]], prefix: 0)
    case (3, 2):
      return sequenceLayout(of: v)
    default:
      return nil
    }
  }

  /// The row-wise regions of `branch`, in graph order. Each has one input and one result
  /// used outside it; a region that would leave two results (q, k and v read one norm) is
  /// cut back to its longest prefix that leaves one, and the rest starts regions of its own.
  func segments(in branch: [Int], from x: ValueID) -> [Segment] {
    // Which axis of x each axis of a branch value is, through transposes: a linear is a
    // PW-Conv node only if it contracts x's channel axis (a transposed token-mixing linear
    // contracts x's tokens, whatever its operand's shape suggests).
    var perm: [ValueID: [Int]] = [x: Array(0..<g.type(of: x).rank)]
    for i in branch {
      let n = g.nodes[i]
      guard let p = n.inputs.lazy.compactMap({ perm[$0] }).first else { continue }
      if case .transpose(let t) = n.op {
        perm[n.outputs[0]] = t.map { p[$0] }
      } else if !{ if case .reshape = n.op { return true } else { return false } }() {
        // Every output of the operand's rank keeps its axes: a split's parts too (FasterNet's
        // partial conv splits off channels and joins them back).
        for o in n.outputs where g.type(of: o).rank == p.count { perm[o] = p }
      }
    }
    let channelAxes: Set<Int> = g.type(of: x).rank == 3 ? [2] : g.type(of: x).rank == 4 ? [1, 3] : []
    return seededRegions(in: branch) { xs, axis in perm[xs].map { channelAxes.contains($0[axis]) } ?? false }
  }

  /// The regions seeded, in order, by each linear among `nodes` that contracts the channel
  /// axis of its input (`isChannel(input, axis)`) on a token grid and is in no earlier region.
  func seededRegions(in nodes: [Int], isChannel: (ValueID, Int) -> Bool) -> [Segment] {
    var taken = Set<Int>()
    var out: [Segment] = []
    for i in nodes where !taken.contains(i) {
      guard case .linear(let axis, _) = g.nodes[i].op else { continue }
      let xs = g.nodes[i].inputs[0]
      guard !isConstantOperand(xs), isChannel(xs, axis), let layout = tokenGrid(of: xs, channelAxis: axis),
        let region = region(seed: i, axis: axis, in: nodes, taken: taken)
      else { continue }
      taken.formUnion(region)
      out.append(Segment(nodes: region, input: xs, layout: layout))
    }
    return out
  }

  /// The row-wise region a PW-Conv node `seed` (a linear over `axis`) starts among `nodes`:
  /// the linears, layer norms and element-wise steps that read only it and channel constants,
  /// cut back to its longest prefix whose results other nodes read come to exactly one value,
  /// made by its last node (the split replaces that value and nothing else). Nil when the
  /// seed reads an operand computed from the data besides its input.
  func region(seed i: Int, axis: Int, in nodes: [Int], taken: Set<Int>) -> [Int]? {
    let xs = g.nodes[i].inputs[0]
    let rank = g.type(of: xs).rank
    func rows(_ v: ValueID) -> [Int] {
      var s = g.type(of: v).shape
      guard s.count == rank else { return [] }
      s.remove(at: axis)
      return s
    }
    let rowShape = rows(xs)
    var region: [Int] = []
    var values = Set<ValueID>()
    for j in nodes where j >= i && !taken.contains(j) {
      let n = g.nodes[j]
      guard n.outputs.count == 1, rows(n.outputs[0]) == rowShape else { continue }
      let acts = n.inputs.filter { !isConstantOperand($0) }
      guard acts.allSatisfy({ values.contains($0) || $0 == xs }) else { continue }
      let fits: Bool
      switch n.op {
      // A channel linear reading xs seeds the region (q, k and v all do); one reading the
      // region continues it.
      case .linear(let a, _): fits = a == axis
      case .layerNorm(let a, _): fits = a == axis && a == rank - 1 && values.contains(n.inputs[0])
      default:
        fits =
          n.op.isElementwise && acts.contains(where: values.contains) && acts.allSatisfy({ rows($0) == rowShape })
          && n.inputs.filter(isConstantOperand).allSatisfy({ isChannelConstant($0, rank: rank, channelAxis: axis) })
      }
      guard fits else { continue }
      region.append(j)
      values.insert(n.outputs[0])
    }
    guard !region.isEmpty else { return nil }
    var cut = 1
    for k in stride(from: region.count, through: 1, by: -1)
    where escaping(Array(region.prefix(k))) == Set(g.nodes[region[k - 1]].outputs) {
      cut = k
      break
    }
    return Array(region.prefix(cut))
  }

  /// PW-Conv nodes that no residual unit holds, each with its row-wise region: the first
  /// block of an EfficientNet or MobileNet stage (no shortcut, since it changes the width),
  /// Swin's patch-merging reduction, a 1×1 conv head on a grid, a network with no shortcuts
  /// at all. `outside` lists the candidate nodes; a linear is a PW-Conv node when it
  /// contracts the channel axis `ChannelAxes` traces for its input, on a grid of more than
  /// one position.
  func standaloneSegments(outside: [Int]) -> [Segment] {
    let channel = ChannelAxes(self).axis
    return seededRegions(in: outside) { xs, axis in channel[xs] == axis }
  }

  /// Values `nodes` compute that a node outside them, or the graph's result, reads.
  func escaping(_ nodes: [Int]) -> Set<ValueID> {
    let inside = Set(nodes)
    var out = Set<ValueID>()
    for i in nodes {
      for o in g.nodes[i].outputs
      where ud.users(o).contains(where: { !inside.contains($0) }) || g.outputs.contains(where: { $0.value == o }) {
        out.insert(o)
      }
    }
    return out
  }

  /// A residual branch whose every PW-Conv node is split on its own row-wise region: the
  /// bottlenecks and inverted residuals of CNNs (1×1 conv, BatchNorm, …, 1×1 conv), an MLP
  /// whose middle mixes rows (ConvNeXt-V2's GRN, PVT's depthwise MixFFN), a gated MLP.
  func matchSegments(add: Int, x: ValueID, branch: [Int]) -> Unit? {
    let segs = segments(in: branch, from: x)
    guard !segs.isEmpty else { return nil }
    var roles: [Int: String] = [:]
    for s in segs {
      for i in s.nodes {
        if case .linear = g.nodes[i].op { roles[i] = "pwconv" } else { roles[i] = "pwconv.act" }
      }
    }
    return Unit(kind: .pwconv, add: add, x: x, branch: branch, roles: roles, hasDepthwise: false, segments: segs)
  }
}
