// Mark.swift: finds residual blocks and lone PW-Conv nodes by structure and annotates their MHSA, MLP and PW-Conv nodes.
import SBPIR

/// Finds residual units `x + f(x)` whose branch `f` is an MHSA or an MLP (or PW-Conv)
/// sub-block, groups them into blocks, finds each block's token layout and stage, and
/// annotates nodes with `sbp.role`, `sbp.block` and `sbp.stage`. Block-level facts (kind,
/// layout, token axes, grid, leading non-spatial tokens) go on the block's residual adds.
/// A PW-Conv node that no residual unit holds (a block without a shortcut, Swin's patch
/// merging) is a block of its own, kind `pwconv(plain)`, whose facts sit on its linear.
/// Matching looks only at structure, never at names. A residual unit that matches nothing
/// gets `sbp.unmatched` with the reason, and stays as it is.
public struct Mark: Pass {
  public init() {}
  public let name = "mark"
  public let summary = "find residual blocks; annotate MHSA/MLP/PW-Conv roles, blocks, stages and token grids"

  public func run(_ graph: inout Graph) throws {
    for i in graph.nodes.indices {
      for k in graph.nodes[i].attrs.keys where k.hasPrefix("sbp.") { graph.annotate(node: i, k, nil) }
    }
    for a in BlockMatcher(graph).annotations() { graph.annotate(node: a.node, a.key, a.value) }
  }
}

/// One annotation the matcher wants applied.
struct PendingAnnotation {
  var node: Int
  var key: String
  var value: AttrValue
}

/// A residual unit whose branch matched a sub-block.
struct Unit {
  enum Kind: String {
    case mhsa, mlp, pwconv
  }
  var kind: Kind
  var add: Int
  var x: ValueID
  var branch: [Int]
  var roles: [Int: String]
  var hasDepthwise: Bool
  /// The row-wise regions split one by one, for a branch that is not one MLP or PW-Conv chain.
  var segments: [Segment] = []
  /// Keys and values on another grid: the attention core splits its queries only.
  var queryOnly = false
  /// Windowed attention: the windows and tokens per window of its partition (`WindowTrace`).
  var windows: [Int]?
}

/// Token layout of a block's input.
struct Layout: Equatable {
  var name: String  // "tokens" ([B,N,C]), "nchw" or "nhwc"
  var tokenAxes: [Int]
  var grid: [Int]
  var prefix: Int
}

struct BlockMatcher {
  let g: Graph
  let ud: UseDef
  var producerIndex: [ValueID: Int] = [:]

  /// Values computed from parameters and literals alone (a qkv bias concatenated from q and v
  /// biases and zeros, a reshaped layer scale): constants for matching, whatever their ops.
  var constantValues = Set<ValueID>()

  init(_ g: Graph) {
    self.g = g
    self.ud = g.index()
    for (i, n) in g.nodes.enumerated() { for o in n.outputs { producerIndex[o] = i } }
    let inputs = Set(g.inputs.map(\.value))
    for n in g.nodes where n.inputs.allSatisfy({ !inputs.contains($0) && (ud.param($0) != nil || ud.literal($0) != nil || constantValues.contains($0)) }) {
      constantValues.formUnion(n.outputs)
    }
  }

  func isActivation(_ v: ValueID) -> Bool { ud.param(v) == nil && ud.literal(v) == nil && !constantValues.contains(v) }

  // MARK: Residual units

  /// Node indices on some path from `x` to `y` (the node defining `y` included), or nil when
  /// `y` does not depend on `x`.
  func path(from x: ValueID, to y: ValueID) -> [Int]? {
    guard let yi = producerIndex[y] else { return nil }
    let floor = producerIndex[x] ?? -1
    var ancestors = Set<Int>()
    var stack = [yi]
    while let i = stack.popLast() {
      guard ancestors.insert(i).inserted else { continue }
      for v in g.nodes[i].inputs { if let p = producerIndex[v], p > floor { stack.append(p) } }
    }
    var onPath = Set<ValueID>([x])
    var out: [Int] = []
    for i in ancestors.sorted() where g.nodes[i].inputs.contains(where: onPath.contains) {
      out.append(i)
      onPath.formUnion(g.nodes[i].outputs)
    }
    return out.last == yi ? out : nil
  }

  /// Residual adds `x + f(x)`, in graph order, with their x, f(x) and branch.
  func residuals() -> [(add: Int, x: ValueID, fx: ValueID, branch: [Int])] {
    var out: [(Int, ValueID, ValueID, [Int])] = []
    for (i, n) in g.nodes.enumerated() where n.op == .add {
      let (a, b) = (n.inputs[0], n.inputs[1])
      let t = g.type(of: n.outputs[0])
      // x may be a learned token computed from parameters alone (CaiT's class token entering
      // its first class-attention unit); f(x) always depends on the data.
      func operand(_ v: ValueID) -> Bool { isActivation(v) || (constantValues.contains(v) && producerIndex[v] != nil) }
      guard g.type(of: a) == t, g.type(of: b) == t, operand(a), operand(b), isActivation(a) || isActivation(b) else { continue }
      if let br = path(from: a, to: b) {
        out.append((i, a, b, br))
      } else if let br = path(from: b, to: a) {
        out.append((i, b, a, br))
      }
    }
    return out
  }

  /// Sums of two branches of one input that are not `x + f(x)`: a projection shortcut
  /// (ResNet's downsample, `proj(x) + f(x)`) or a scaled one (`s·x + f(x)`), with the latest
  /// value both sides are computed from. `inspect` lists them, so that every residual unit is
  /// either matched or accounted for.
  func twoBranchSums(excluding found: Set<Int>) -> [(add: Int, common: ValueID)] {
    func ancestors(_ v: ValueID) -> Set<Int> {
      var seen = Set<Int>(), stack = [producerIndex[v]].compactMap { $0 }
      while let i = stack.popLast(), seen.count < 4096 {
        guard seen.insert(i).inserted else { continue }
        for u in g.nodes[i].inputs where isActivation(u) { if let p = producerIndex[u] { stack.append(p) } }
      }
      return seen
    }
    var out: [(Int, ValueID)] = []
    for (i, n) in g.nodes.enumerated() where n.op == .add && !found.contains(i) {
      let (a, b) = (n.inputs[0], n.inputs[1])
      let t = g.type(of: n.outputs[0])
      guard g.type(of: a) == t, g.type(of: b) == t, isActivation(a), isActivation(b) else { continue }
      // Nodes only one side depends on are the two branches; the latest node both sides
      // depend on ends the common trunk.
      // Both sides keep a grid or sequence of the common value's rank: a sum of two heads
      // (DeiT's distillation logits) is not a residual unit.
      guard t.rank >= 3, let c = ancestors(a).intersection(ancestors(b)).max(), g.nodes[c].outputs.count == 1,
        g.type(of: g.nodes[c].outputs[0]).rank == t.rank, g.type(of: g.nodes[c].outputs[0]).shape.first == t.shape.first
      else { continue }
      out.append((i, g.nodes[c].outputs[0]))
    }
    return out
  }

  /// Data movement, or a product with a constant: what a scaled shortcut does to x.
  func isScaling(_ n: Node) -> Bool {
    n.op.isDataMovement || (n.op == .mul && n.inputs.filter(isActivation).count == 1)
  }

  /// Follows data movement backward from `v`; returns the first value a compute node defines (or v).
  func throughMovement(_ v: ValueID, within: Set<Int>) -> ValueID {
    var v = v
    while let p = producerIndex[v], within.contains(p), g.nodes[p].op.isDataMovement { v = g.nodes[p].inputs[0] }
    return v
  }

  /// The value a constant operand is a view of: a parameter or literal reshaped outside the
  /// branch (PoolFormer's `scale.view(1, C, 1, 1)` depends on no activation).
  func operandSource(_ v: ValueID) -> ValueID {
    var v = v
    while let p = producerIndex[v], g.nodes[p].op.isDataMovement, g.nodes[p].inputs.count == 1 { v = g.nodes[p].inputs[0] }
    return v
  }

  // MARK: Classification

  /// Classifies a residual branch; returns the unit or the reason it matches nothing.
  func classify(add: Int, x: ValueID, fx: ValueID, branch: [Int]) -> Result<Unit, MatchFailure> {
    let inBranch = Set(branch)
    // CaiT's class attention and its MLP update the class token alone.
    if g.type(of: x).rank == 3, g.type(of: x).shape[1] == 1 {
      return .failure(MatchFailure("the unit updates one token (class attention): no rows to split"))
    }
    // Every value the branch computes, except f(x), must stay inside it.
    for i in branch {
      for o in g.nodes[i].outputs where o != fx {
        if ud.users(o).contains(where: { !inBranch.contains($0) }) || g.outputs.contains(where: { $0.value == o }) {
          return .failure(MatchFailure("a value inside the branch (\(describe(g.nodes[i]))) is also used outside it"))
        }
      }
    }
    let softmaxes = branch.filter { if case .softmax = g.nodes[$0].op { return true } else { return false } }
    if softmaxes.count == 1 { return matchAttention(add: add, x: x, fx: fx, branch: branch, softmax: softmaxes[0]) }
    if softmaxes.count > 1 { return .failure(MatchFailure("branch has \(softmaxes.count) softmaxes; an MHSA sub-block has one")) }
    let direct = matchTokenwise(add: add, x: x, fx: fx, branch: branch)
    // A norm that mixes rows (GroupNorm, a train-mode BatchNorm) or any other prefix before the
    // first linear: the split starts at that linear and goes around the prefix, as it goes
    // around ConvNeXt's depthwise conv. Dropped rows then give the prefix's backward a zero
    // gradient, as Algorithm 1 does at the branch output.
    if case .failure = direct, let first = branch.first(where: { if case .linear = g.nodes[$0].op { return true } else { return false } }) {
      let r = matchTokenwise(add: add, x: x, fx: fx, branch: branch, from: first)
      if case .success(let unit) = r { return .success(unit) }
    }
    // Not one chain: split each PW-Conv node's row-wise region on its own.
    if case .failure = direct, let unit = matchSegments(add: add, x: x, branch: branch) { return .success(unit) }
    // At the end of a hierarchy the grid can be one position: there are no rows to drop.
    let grid = g.type(of: x).shape
    if case .failure = direct, grid.count == 4, grid[2] * grid[3] == 1 || grid[1] * grid[2] == 1 {
      return .failure(MatchFailure("the unit's grid is \(grid[1] * grid[2] == 1 ? "\(grid[1])x\(grid[2])" : "\(grid[2])x\(grid[3])") and a 1x1 grid has one position: no rows to split"))
    }
    if case .failure = direct, !branch.contains(where: { if case .linear = g.nodes[$0].op { return true } else { return false } }) {
      let mixers = Set(branch.compactMap { i -> String? in
        switch g.nodes[i].op {
        case .conv: return "k×k convs"
        case .averagePool, .maxPool, .globalAveragePool: return "pooling"
        case .batchNorm, .batchNormTraining: return "BatchNorm"
        default: return nil
        }
      }).sorted()
      let what = mixers.isEmpty ? "" : "; its \(mixers.joined(separator: ", ")) mix rows"
      return .failure(MatchFailure("no PW-Conv node (a 1×1 conv or channel linear) and no attention in the branch\(what): nothing splits by rows"))
    }
    return direct
  }

  func matchAttention(add: Int, x: ValueID, fx: ValueID, branch: [Int], softmax: Int) -> Result<Unit, MatchFailure> {
    let inBranch = Set(branch)
    var roles: [Int: String] = [softmax: "mhsa.softmax"]
    // Scores: a matmul of two activations, possibly scaled or masked on the way to the softmax.
    var v = g.nodes[softmax].inputs[0]
    var scores: Int?
    // Talking heads (CaiT): transposes and a linear over the heads axis between the scores
    // and the softmax, and again between the softmax and the context; checked below.
    var mixes: [Int] = []
    while let p = producerIndex[v], inBranch.contains(p) {
      let n = g.nodes[p]
      if n.op == .matMul, n.inputs.allSatisfy(isActivation) {
        scores = p
        break
      }
      if headMix(n) || isTranspose(n) || foldsLeading(n) {
        if headMix(n) { mixes.append(p) }
        v = n.inputs[0]
        continue
      }
      guard [.mul, .div, .add].contains(n.op), n.inputs.count == 2 else { break }
      let act = n.inputs.filter(isActivation)
      if act.count == 2, n.op == .add {
        // A bias computed from the activations themselves (SAM's decomposed relative
        // positions, read off q): its rows and key columns are not a table to gather.
        return .failure(
          MatchFailure(
            "the attention scores add a term computed from the activations (\(describe(n))), as decomposed relative positions (SAM, MViTv2) are computed from q; the core is not split"
          ))
      }
      guard act.count == 1 else { break }
      v = act[0]
    }
    guard let scores else {
      // Say what stands between the softmax and its scores (talking heads' linear over heads,
      // LeViT's BatchNorm-folded bias), so the reason names the op to support.
      let blocker = producerIndex[v].flatMap { inBranch.contains($0) ? describe(g.nodes[$0]) : nil }
      return .failure(
        MatchFailure(
          "the softmax is not fed by a matmul of two activations (attention scores)" + (blocker.map { "; it reads \($0)" } ?? "")))
    }
    roles[scores] = "mhsa.scores"
    // From the softmax to the context matmul: the probabilities, possibly mixed over heads.
    var probs = g.nodes[softmax].outputs[0]
    var context: Int?
    while context == nil {
      let users = ud.users(probs)
      guard users.count == 1, let u = users.first, inBranch.contains(u) else { break }
      let n = g.nodes[u]
      if n.op == .matMul, n.inputs[0] == probs {
        context = u
      } else if headMix(n) || isTranspose(n) {
        if !isTranspose(n) { mixes.append(u) }
        probs = n.outputs[0]
      } else {
        break
      }
    }
    guard let context else {
      return .failure(MatchFailure("the softmax output does not feed a matmul with the values (attention context)"))
    }
    roles[context] = "mhsa.context"
    if let bad = headMixLayout(scores: scores, softmax: softmax, context: context, inBranch: inBranch) {
      return .failure(MatchFailure(bad))
    }
    for i in mixes { roles[i] = "mhsa.heads" }
    // Norm: a layer_norm reading x; without one (LeViT normalizes after each linear), the
    // projections read x itself.
    let norm = branch.first(where: {
      if case .layerNorm = g.nodes[$0].op { return throughMovement(g.nodes[$0].inputs[0], within: inBranch) == x } else { return false }
    })
    if let norm { roles[norm] = "mhsa.norm" }
    let normOut = norm.map { g.nodes[$0].outputs[0] } ?? x
    var projections = branch.filter { if case .linear = g.nodes[$0].op { return g.nodes[$0].inputs[0] == normOut } else { return false } }
    // Keys and values computed from another grid (PVT's spatial reduction: a stride = kernel
    // conv, a norm and a kv linear on the reduced tokens): whatever computes them runs whole,
    // and only the queries split (`query` semantics, whatever --attention says).
    func ancestors(_ v: ValueID) -> Set<Int> {
      var seen = Set<Int>(), stack = [producerIndex[v]].compactMap { $0 }
      while let i = stack.popLast() {
        guard inBranch.contains(i), seen.insert(i).inserted else { continue }
        stack += g.nodes[i].inputs.compactMap { producerIndex[$0] }
      }
      return seen
    }
    let qSide = ancestors(g.nodes[scores].inputs[0])
    let kvSide = ancestors(g.nodes[scores].inputs[1]).union(ancestors(g.nodes[context].inputs[1])).subtracting(qSide)
    let qTokens = g.type(of: g.nodes[scores].inputs[0]).shape.dropLast().last
    let kTokens = g.type(of: g.nodes[scores].outputs[0]).shape.last
    // The queries must be the unit's tokens. Cross-covariance attention (XCiT, EdgeNeXt)
    // attends over channels: its scores are d×d, and rows of them are not tokens.
    let xs = g.type(of: x).shape
    let tokenCounts: Set<Int> = xs.count == 3 ? [xs[1]] : xs.count == 4 ? [xs[2] * xs[3], xs[1] * xs[2]] : []
    if qTokens == 1 {
      return .failure(MatchFailure("the attention has one query (class attention, as in CaiT and XCiT): no rows to split"))
    }
    guard let qTokens else { return .failure(MatchFailure("the attention scores have no query axis")) }
    let reducedKeys = qTokens != kTokens
    // A head with as many channels as there are tokens (XCiT-nano's d = N = 16) makes token
    // attention and channel attention the same shapes: trace which axis of q holds the rows
    // of the projections' input, and refuse channel attention (its rows are not tokens).
    let qType = g.type(of: g.nodes[scores].inputs[0])
    if qType.shape.last == qTokens, qType.rank >= 3, projections.contains(where: { qSide.contains($0) }) {
      let q = g.nodes[scores].inputs[0], b = xs.first ?? 1
      func fits(_ axis: Int) -> Bool {
        WindowTrace.axes(g, producer: producerIndex, sink: normOut, value: q, tokenAxis: axis, batch: b, windows: 1, size: qTokens) != nil
      }
      if !fits(qType.rank - 2) && fits(qType.rank - 1) {
        return .failure(
          MatchFailure(
            "the attention's \(qTokens) queries are not the unit's tokens: it attends over another axis, as cross-covariance attention (XCiT) does over channels, so its rows are not tokens to split"
          ))
      }
    }
    var window: WindowTable?
    // Windows, or one window the size of the grid whose tokens the projections read through
    // data movement (SwinV2-CR's last stage): the partition decides which rows are tokens.
    if !tokenCounts.contains(qTokens) || (projections.isEmpty && !reducedKeys) {
      // Channel attention contracts the tokens in its scores (its q is d×N); windowed
      // attention contracts the head's channels, and its windows may hold more rows than the
      // grid has tokens when they are padded (DaViT's 7×7 windows on a 4×4 grid).
      let contracted = g.type(of: g.nodes[scores].inputs[0]).shape.last ?? 0
      let channels = "the attention's \(qTokens) queries are not the unit's tokens: it attends over another axis, as cross-covariance attention (XCiT) does over channels, so its rows are not tokens to split"
      // The trace decides: a partition whose rows q holds on its query axis is windowed
      // attention, whatever the sizes say; otherwise a token-sized contraction is channels.
      switch windowPartition(x: x, normOut: normOut, qSide: qSide, inBranch: inBranch, size: qTokens) {
      case .success(let (table, sink)):
        // The split gathers q's rows window by window: they must be the windows' rows.
        let q = g.nodes[scores].inputs[0], qr = g.type(of: q).rank
        guard qr >= 3,
          WindowTrace.axes(
            g, producer: producerIndex, sink: sink, value: q, tokenAxis: qr - 2, batch: xs.first ?? 1, windows: table.windows, size: table.size)
            != nil
        else {
          if tokenCounts.contains(contracted) { return .failure(MatchFailure(channels)) }
          return .failure(MatchFailure("the attention runs within windows of \(qTokens) tokens, but its queries do not hold the windows' rows on one axis"))
        }
        window = table
        projections = branch.filter { if case .linear = g.nodes[$0].op { return g.nodes[$0].inputs[0] == sink } else { return false } }
      case .failure(let why):
        if tokenCounts.contains(contracted) { return .failure(MatchFailure(channels)) }
        return .failure(MatchFailure("the attention runs within windows of \(qTokens) tokens, but \(why.description)"))
      }
    }
    if reducedKeys {
      for i in kvSide { if case .linear = g.nodes[i].op { roles[i] = "mhsa.kv" } }
      projections = projections.filter { qSide.contains($0) }
      guard projections.count == 1 else {
        return .failure(MatchFailure("keys and values come from another grid, but \(projections.count) linears make the queries"))
      }
      roles[projections[0]] = "mhsa.q"
    }
    switch projections.count {
    case _ where reducedKeys: break
    case 1: roles[projections[0]] = "mhsa.qkv"
    // q, and kv in one linear (PVT's last stage, where the reduction ratio is 1).
    case 2 where projections.filter({ qSide.contains($0) }).count == 1 && projections.filter({ kvSide.contains($0) }).count == 1:
      for p in projections { roles[p] = qSide.contains(p) ? "mhsa.q" : "mhsa.kv" }
    case 3:
      let q = g.nodes[scores].inputs[0], k = g.nodes[scores].inputs[1], val = g.nodes[context].inputs[1]
      for p in projections {
        let o = g.nodes[p].outputs[0]
        if o == q || path(from: o, to: q) != nil {
          roles[p] = "mhsa.q"
        } else if o == k || path(from: o, to: k) != nil {
          roles[p] = "mhsa.k"
        } else if o == val || path(from: o, to: val) != nil {
          roles[p] = "mhsa.v"
        }
      }
      guard Set(projections.compactMap { roles[$0] }) == ["mhsa.q", "mhsa.k", "mhsa.v"] else {
        return .failure(MatchFailure("three projections read the norm but do not map onto q, k and v"))
      }
    default:
      return .failure(MatchFailure("\(projections.count) linear projections read the attention norm; expected qkv (1), q and kv (2) or q, k, v (3)"))
    }
    // After the context: element-wise ops (LeViT's HardSwish), one linear (proj), then an
    // optional layer-scale mul or a BatchNorm (LeViT's linear + BatchNorm). They run on
    // every row: the split is the core's.
    let ctxOut = g.nodes[context].outputs[0]
    // A window partition's reverse (and its shift back) is data movement too.
    let after = branch.filter { $0 > context && !g.nodes[$0].op.isDataMovement && !(window != nil && rearranges(g.nodes[$0])) }
    let lead = after.prefix { g.nodes[$0].op.isElementwise && !(g.nodes[$0].op == .mul && g.nodes[$0].inputs.contains(where: { ud.trainableParam($0) != nil })) }
    var fromCtx = ctxOut
    for i in lead {
      guard throughMovement(g.nodes[i].inputs[0], within: inBranch) == fromCtx || g.nodes[i].inputs.contains(where: { throughMovement($0, within: inBranch) == fromCtx })
      else { break }
      fromCtx = g.nodes[i].outputs[0]
    }
    let rest = after.dropFirst(lead.count)
    guard let proj = rest.first, case .linear = g.nodes[proj].op, throughMovement(g.nodes[proj].inputs[0], within: inBranch) == fromCtx
    else {
      return .failure(MatchFailure("no output projection (linear) follows the attention context"))
    }
    roles[proj] = "mhsa.proj"
    for i in lead { roles[i] = "mhsa.proj.act" }
    for i in rest.dropFirst() {
      let n = g.nodes[i]
      switch n.op {
      case .mul where n.inputs.contains(where: { ud.trainableParam($0) != nil }) && i == rest.last: roles[i] = "mhsa.scale"
      // A norm after the projection (LeViT's BatchNorm, SwinV2's res-post-norm) runs on
      // every row, as the projection does.
      case .batchNorm, .batchNormTraining, .layerNorm: roles[i] = "mhsa.proj.norm"
      default: return .failure(MatchFailure("unexpected \(describe(n)) after the attention output projection"))
      }
    }
    // Anything else in the branch must be data movement or constant scaling around the scores.
    for i in branch where roles[i] == nil && !(reducedKeys && kvSide.contains(i)) {
      let n = g.nodes[i]
      let scaling = [.mul, .div, .add].contains(n.op) && n.inputs.filter(isActivation).count == 1 && i > scores && i < softmax
      // Before the scores, q and k may be scaled, biased or rotated (RoPE's per-token sin and
      // cos): element-wise ops on full rows, ahead of the gathers that split the core.
      // Without a norm on x (LeViT), q, k and v may be normalized after their projection.
      let qkvNorm: Bool = {
        if norm == nil, i < scores, case .batchNorm = n.op { return true }
        if norm == nil, i < scores, case .batchNormTraining = n.op { return true }
        return false
      }()
      // Cosine attention (SwinV2) L2-normalizes q and k over their channels: a reduction over
      // the last axis is row-wise too.
      let channelReduction: Bool = {
        switch n.op {
        case .reduceSum(let axes, true), .reduceMean(let axes, true): return axes == [g.type(of: n.inputs[0]).rank - 1]
        default: return false
        }
      }()
      let qkScaling = qkvNorm || (i < scores && (n.op.isElementwise || channelReduction || { if case .concat = n.op { return true } else { return false } }()))
      // q, k and v picked out of the qkv tensor by a constant index (CaiT's qkv[0]): a slice
      // of a leading axis, never of the tokens.
      let pick: Bool = {
        guard case .gather(let axis) = n.op, !isActivation(n.inputs[1]), g.type(of: n.inputs[1]).elementCount == 1 else { return false }
        return axis < g.type(of: n.inputs[0]).rank - 2
      }()
      guard n.op.isDataMovement || scaling || qkScaling || pick || isConstantNode(n) || (window != nil && rearranges(n)) else {
        return .failure(MatchFailure("unexpected \(describe(n)) in the attention branch"))
      }
    }
    var unit = Unit(kind: .mhsa, add: add, x: x, branch: branch, roles: roles, hasDepthwise: false)
    unit.queryOnly = reducedKeys
    unit.windows = window.map { [$0.windows, $0.size] }
    return .success(unit)
  }

  /// Ops that only rearrange, select or pad one activation's elements: a window partition's
  /// cyclic shift (slices and a concat, or a gather) and its padding.
  func rearranges(_ n: Node) -> Bool {
    switch n.op {
    case .concat: return true
    case .pad(_, .constant, _): return true
    case .gather: return !isActivation(n.inputs[1])
    default: return n.op.isDataMovement
    }
  }

  /// The window partition between the attention's norm and its projections: the windows'
  /// table (traced on token ids) and the value the projections read; or why there is none.
  func windowPartition(x: ValueID, normOut: ValueID, qSide: Set<Int>, inBranch: Set<Int>, size: Int) -> Result<(WindowTable, ValueID), PassError> {
    let xs = g.type(of: x).shape
    var reasons: [String] = []
    var tried = Set<ValueID>()
    for i in qSide.sorted() {
      guard case .linear = g.nodes[i].op, tried.insert(g.nodes[i].inputs[0]).inserted else { continue }
      let sink = g.nodes[i].inputs[0], c = g.type(of: sink).shape.last ?? 0
      let axes: [Int]
      switch xs.count {
      case 3: axes = [1]
      case 4 where xs[3] == c: axes = [1, 2]
      case 4 where xs[1] == c: axes = [2, 3]
      default: return .failure(PassError("the token grid's layout is not known"))
      }
      switch WindowTrace.table(g, producer: producerIndex, source: normOut, tokenAxes: axes, sink: sink, size: size) {
      case .success(let t): return .success((t, sink))
      case .failure(let why): reasons.append(why.description)
      }
    }
    return .failure(PassError(reasons.first ?? "no projection reads the windows"))
  }

  /// A reshape that keeps the (queries, keys) axes and regroups the leading ones: windowed
  /// attention folds its windows into the batch and back around the shift mask.
  func foldsLeading(_ n: Node) -> Bool {
    guard case .reshape = n.op else { return false }
    let a = g.type(of: n.inputs[0]).shape, b = g.type(of: n.outputs[0]).shape
    return a.count >= 2 && b.count >= 2 && a.suffix(2) == b.suffix(2)
  }

  func isTranspose(_ n: Node) -> Bool {
    if case .transpose = n.op { return true }
    return false
  }

  /// A linear with parameter weights over an axis that is not a token axis of the attention
  /// scores, keeping its size: talking heads' mix of the heads, which is row-wise in both
  /// the queries and the keys.
  func headMix(_ n: Node) -> Bool {
    guard case .linear(let axis, _) = n.op, n.inputs.count >= 2, isActivation(n.inputs[0]), !n.inputs.dropFirst().contains(where: isActivation)
    else { return false }
    let t = g.type(of: n.inputs[0]), o = g.type(of: n.outputs[0])
    return axis == t.rank - 1 && t.shape == o.shape
  }

  /// Follows the axes of the scores (batch…, queries, keys) through the transposes and head
  /// mixes to the softmax and on to the context matmul: the mixes must contract a batch axis
  /// (the heads), the softmax must run over the keys, and the context must read the queries
  /// and keys where the scores had them. nil when they do; otherwise the reason.
  func headMixLayout(scores: Int, softmax: Int, context: Int, inBranch: Set<Int>) -> String? {
    let r = g.type(of: g.nodes[scores].outputs[0]).rank
    var labels: [ValueID: [Int]] = [g.nodes[scores].outputs[0]: Array(0..<r)]
    for i in inBranch.sorted() where i > scores && i <= context {
      let n = g.nodes[i]
      guard let l = n.inputs.lazy.compactMap({ labels[$0] }).first else { continue }
      switch n.op {
      case .transpose(let perm): labels[n.outputs[0]] = perm.map { l[$0] }
      case .reshape:
        guard foldsLeading(n), l.count >= 2 else { return "a reshape (\(describe(n))) between the scores and the context regroups query or key tokens" }
        labels[n.outputs[0]] = [Int](repeating: -1, count: g.type(of: n.outputs[0]).rank - 2) + l.suffix(2)
      case .linear(let axis, _):
        guard headMix(n) else { continue }
        if l[axis] >= r - 2 { return "a linear (\(describe(n))) between the scores and the context mixes query or key tokens" }
        labels[n.outputs[0]] = l
      case .softmax(let axis):
        if l[axis] != r - 1 { return "the attention softmax (\(describe(n))) does not run over the keys" }
        labels[n.outputs[0]] = l
      case .matMul where i == context:
        if l.suffix(2) != [r - 2, r - 1] { return "the context matmul (\(describe(n))) does not read the probabilities as (queries, keys)" }
      default: labels[n.outputs[0]] = l
      }
    }
    return nil
  }

  /// "relu 'name'" for messages, or just the op when the node has no name.
  func describe(_ n: Node) -> String { n.name.isEmpty ? n.op.name : "\(n.op.name) '\(n.name)'" }

  func isConstantNode(_ n: Node) -> Bool {
    if case .constant = n.op { return true }
    return false
  }

  /// Token-wise branches: [dwconv] [layer_norm] linear act linear [scale] is an MLP (a PW-Conv
  /// MLP after a depthwise conv); [layer_norm] linear [act] [scale] is a lone PW-Conv. "act"
  /// is any chain of element-wise ops on the chain's value and per-channel or scalar
  /// operands: GELU, SiLU, HardSwish, StarReLU's s·relu(x)² + b. Each is row-wise, so the
  /// chain splits by rows as one activation does.
  /// With `start`, the chain begins at that linear and what the branch computes before it
  /// stays outside the split.
  func matchTokenwise(add: Int, x: ValueID, fx: ValueID, branch: [Int], from start: Int? = nil) -> Result<Unit, MatchFailure> {
    let inBranch = Set(branch)
    var compute = branch.filter { !g.nodes[$0].op.isDataMovement && !isConstantNode(g.nodes[$0]) }
    var roles: [Int: String] = [:]
    var prev = x
    var stage = 0  // 0: dwconv? 1: norm? 2: fc1 3: act 4: fc2 5: scale 6: done
    if let start {
      compute = compute.filter { $0 >= start }
      prev = throughMovement(g.nodes[start].inputs[0], within: inBranch)
      stage = 2
    }
    var linears: [Int] = []
    var hasDW = false
    var channelAxis = 0
    for i in compute {
      let n = g.nodes[i]
      let input = throughMovement(n.inputs[0], within: inBranch)
      guard input == prev || (n.op.isElementwise && n.inputs.contains { throughMovement($0, within: inBranch) == prev }) else {
        return .failure(MatchFailure("\(describe(n)) does not continue the chain of the branch (it reads something else)"))
      }
      if case .linear(let a, _) = n.op { channelAxis = a }
      switch n.op {
      case .conv(let geo)
      where stage == 0 && geo.group > 1 && geo.group == g.type(of: n.inputs[0]).shape[1] && g.type(of: n.outputs[0]).shape[1] == geo.group:
        roles[i] = "dwconv"
        hasDW = true
        stage = 1
      case .layerNorm where stage <= 1:
        roles[i] = "mlp.norm"
        stage = 2
      case .linear where stage <= 2:
        linears.append(i)
        stage = 3
      case _ where n.op.isActivation && stage == 3:
        roles[i] = "mlp.act"
        stage = 4
      case .linear where stage == 4:
        linears.append(i)
        stage = 5
      // A layer scale's parameter may be reshaped first (PoolFormer's scale.view(1, C, 1, 1)).
      case .mul where (stage == 3 || stage == 5) && n.inputs.contains(where: { ud.trainableParam(operandSource($0)) != nil }):
        roles[i] = "mlp.scale"
        stage = 6
      case _ where (stage == 3 || stage == 4) && isRowwiseStep(n, on: prev, channelAxis: channelAxis, within: inBranch):
        roles[i] = "mlp.act"
        stage = 4
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .linear, .gemm, .conv, .layerNorm,
        .softmax, .reshape, .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze,
        .expand, .reduceMean, .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
        .maxPool, .averagePool, .maxPoolGrad, .averagePoolGrad,
        .stopGradient, .softmaxCrossEntropy, .softmaxCrossEntropyGrad,
        .unaryGrad, .softmaxGrad, .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad,
        .sgd, .adamw:
        let want = [
          "a depthwise conv, layer_norm or linear", "a layer_norm or linear", "a layer_norm or linear", "an activation or layer-scale mul",
          "the second linear", "a layer-scale mul", "nothing more",
        ][min(stage, 6)]
        return .failure(MatchFailure("unexpected \(describe(n)) where the MLP expects \(want)"))
      }
      prev = n.outputs[0]
    }
    guard throughMovement(fx, within: inBranch) == prev else {
      return .failure(MatchFailure("the branch output is not the end of its token-wise chain"))
    }
    // Every linear and the norm must act on one axis of x, its channels. MLP-Mixer's token
    // MLP transposes first and mixes tokens: it cannot be split by rows.
    let chainInput = start.map { throughMovement(g.nodes[$0].inputs[0], within: inBranch) } ?? x
    if let axes = originalAxes(of: linears + roles.filter { $0.value == "mlp.norm" }.map(\.key), from: chainInput, branch: branch),
      Set(axes.values).count > 1
    {
      return .failure(MatchFailure("its linears and norm act on different axes of the input (a token-mixing MLP): it mixes tokens, so it cannot be split by rows"))
    }
    // A linear over the tokens themselves (ResMLP's and Mixer's token mixing, after a
    // transpose) mixes rows whatever else the branch does: channels are the last axis of
    // [B, N, C], and axis 1 or 3 of a 4-D grid.
    if let axes = originalAxes(of: linears, from: chainInput, branch: branch) {
      let rank = g.type(of: chainInput).rank
      if axes.values.contains(where: { rank == 3 ? $0 != 2 : (rank == 4 ? ![1, 3].contains($0) : false) }) {
        return .failure(MatchFailure("a linear acts on a token axis (token mixing): it mixes tokens, so it cannot be split by rows"))
      }
    }
    switch linears.count {
    case 2:
      roles[linears[0]] = "mlp.fc1"
      roles[linears[1]] = "mlp.fc2"
      return .success(Unit(kind: .mlp, add: add, x: x, branch: branch, roles: roles, hasDepthwise: hasDW))
    case 1 where roles.values.allSatisfy({ $0 != "dwconv" }):
      roles[linears[0]] = "pwconv"
      if let act = roles.first(where: { $0.value == "mlp.act" })?.key { roles[act] = "pwconv.act" }
      for (k, r) in roles where r == "mlp.norm" || r == "mlp.scale" { roles[k] = "pwconv." + r.dropFirst("mlp.".count) }
      return .success(Unit(kind: .pwconv, add: add, x: x, branch: branch, roles: roles, hasDepthwise: false))
    default:
      return .failure(MatchFailure("the branch has neither an MHSA softmax nor an MLP's two linears (found \(linears.count) linear)"))
    }
  }

  /// Whether `n` is an element-wise step of an activation chain: it reads the chain's value
  /// `prev` and otherwise only constants and parameters that are scalars or vary along the
  /// channel axis alone (so every row is computed from its own row).
  func isRowwiseStep(_ n: Node, on prev: ValueID, channelAxis: Int, within branch: Set<Int>) -> Bool {
    guard n.op.isElementwise, n.outputs.count == 1 else { return false }
    let rank = g.type(of: n.outputs[0]).rank
    return n.inputs.allSatisfy { throughMovement($0, within: branch) == prev || isChannelConstant($0, rank: rank, channelAxis: channelAxis) }
  }

  /// The axis of `x` each of `nodes` (linears and layer norms) acts on, following the
  /// branch's transposes; nil when a reshape or anything else reshuffles the axes on the way.
  func originalAxes(of nodes: [Int], from x: ValueID, branch: [Int]) -> [Int: Int]? {
    var perm: [ValueID: [Int]] = [x: Array(0..<g.type(of: x).rank)]
    var out: [Int: Int] = [:]
    for i in branch {
      let n = g.nodes[i]
      guard let p = n.inputs.lazy.compactMap({ perm[$0] }).first else { continue }
      switch n.op {
      case .transpose(let t): perm[n.outputs[0]] = t.map { p[$0] }
      case .linear(let a, _) where nodes.contains(i):
        out[i] = p[a]
        perm[n.outputs[0]] = p
      case .layerNorm(let a, _) where nodes.contains(i):
        out[i] = p[a]
        perm[n.outputs[0]] = p
      case .reshape, .squeeze, .unsqueeze, .expand, .slice, .concat, .split, .gather:
        if g.type(of: n.outputs[0]).rank != p.count || n.op != .reshape(g.type(of: n.outputs[0]).shape) { return nil }
        perm[n.outputs[0]] = p
      default:
        if g.type(of: n.outputs[0]).rank == p.count { perm[n.outputs[0]] = p }
      }
    }
    return out.count == nodes.count ? out : nil
  }

  // MARK: Layout

  /// Token layout of a block input `x`.
  /// Whether the branch's first linear contracts axis 1 of a value shaped like the block
  /// input and reached without a transpose (a branch that starts with a norm of its own,
  /// such as PoolFormer's GroupNorm, then a 1×1 conv); nil when that cannot be told.
  func channelsFirst(_ unit: Unit, shape: [Int]) -> Bool? {
    guard let lin = unit.branch.first(where: { if case .linear = g.nodes[$0].op { return true } else { return false } }),
      case .linear(let axis, _) = g.nodes[lin].op, g.type(of: g.nodes[lin].inputs[0]).shape == shape
    else { return nil }
    var v = g.nodes[lin].inputs[0]
    while let p = producerIndex[v], g.nodes[p].op.isDataMovement {
      if case .transpose = g.nodes[p].op { return nil }
      v = g.nodes[p].inputs[0]
    }
    return axis == 1
  }

  /// [B, N, C]: the grid comes from the patchifying conv upstream; N − H·W leading tokens
  /// (class, distillation) are non-spatial.
  func sequenceLayout(of x: ValueID) -> Layout? {
    let s = g.type(of: x).shape
    guard s.count == 3 else { return nil }
    // Breadth-first up the graph, so the nearest conv is found first; deep in a network that
    // can be thousands of nodes up (EVA-02's twelfth block).
    var seen = Set<Int>()
    var queue = [x]
    var head = 0
    while head < queue.count {
      let v = queue[head]
      head += 1
      guard let p = producerIndex[v], seen.insert(p).inserted else { continue }
      let n = g.nodes[p]
      if case .conv = n.op {
        let o = g.type(of: n.outputs[0]).shape
        if o.count == 4, o[2] * o[3] <= s[1], s[1] - o[2] * o[3] <= 16 {
          return Layout(name: "tokens", tokenAxes: [1], grid: [o[2], o[3]], prefix: s[1] - o[2] * o[3])
        }
      }
      queue += n.inputs.filter(isActivation)
    }
    // No patchifying conv makes this many tokens (LeViT's later stages subsample the
    // sequence itself): a square count is read as a row-major square grid, which any
    // row-wise split is exact on whatever the true arrangement.
    let r = Int(Double(s[1]).squareRoot().rounded())
    return r >= 2 && r * r == s[1] ? Layout(name: "tokens", tokenAxes: [1], grid: [r, r], prefix: 0) : nil
  }

  func layout(of x: ValueID, unit: Unit, known: [ValueID: Layout]) -> Layout? {
    if let l = known[x] { return l }
    let s = g.type(of: x).shape
    switch s.count {
    case 3:
      return sequenceLayout(of: x)
    case 4:
      // NCHW when the branch starts with a conv or contracts channels on axis 1; NHWC otherwise.
      let first = unit.branch.first.map { g.nodes[$0] }
      let nchw: Bool
      switch first?.op {
      case .conv?: nchw = true
      case .linear(let axis, _)?: nchw = axis == 1
      case .layerNorm(let axis, _)?: nchw = axis == 1
      case nil, .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .matMul, .gemm, .softmax, .reshape,
        .transpose, .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean,
        .reduceSum, .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats,
        .maxPool, .averagePool,
        .maxPoolGrad, .averagePoolGrad, .stopGradient,
        .softmaxCrossEntropy, .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad,
        .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw:
        nchw = channelsFirst(unit, shape: s) ?? (g.nodes[unit.branch[0]].op == .transpose([0, 2, 3, 1]))
      }
      return nchw
        ? Layout(name: "nchw", tokenAxes: [2, 3], grid: [s[2], s[3]], prefix: 0)
        : Layout(name: "nhwc", tokenAxes: [1, 2], grid: [s[1], s[2]], prefix: 0)
    default:
      return nil
    }
  }

  /// The layout of a unit split by segments: its output's grid (a downsampling unit reads one
  /// grid and writes the next), in the layout its PW-Conv nodes read.
  func segmentLayout(_ u: Unit) -> Layout? {
    let y = g.nodes[u.add].outputs[0]
    let s = g.type(of: y).shape
    switch (s.count, u.segments.last?.layout.name) {
    case (3, _): return sequenceLayout(of: y)
    case (4, "nchw"?): return Layout(name: "nchw", tokenAxes: [2, 3], grid: [s[2], s[3]], prefix: 0)
    case (4, "nhwc"?): return Layout(name: "nhwc", tokenAxes: [1, 2], grid: [s[1], s[2]], prefix: 0)
    default: return nil
    }
  }

  // MARK: Annotations

  func annotations() -> [PendingAnnotation] {
    var out: [PendingAnnotation] = []
    var units: [Unit] = []
    let found = residuals()
    var failures: [(add: Int, reason: String)] = []
    // Unmatched units with an attention core: their linears feed a softmax that mixes rows in
    // ways mark could not read (class attention, XCiT's channel attention), so none of them
    // is split on its own either.
    var opaque = Set<Int>()
    func hasSoftmax(_ branch: [Int]) -> Bool { branch.contains { if case .softmax = g.nodes[$0].op { return true } else { return false } } }
    for r in found {
      switch classify(add: r.add, x: r.x, fx: r.fx, branch: r.branch) {
      case .success(let u): units.append(u)
      case .failure(let f):
        failures.append((r.add, f.reason))
        if hasSoftmax(r.branch) { opaque.formUnion(r.branch) }
      }
    }
    for s in twoBranchSums(excluding: Set(found.map(\.add))) {
      // Both sides are branches of the common value: the PW-Conv nodes of either split.
      let paths = g.nodes[s.add].inputs.map { path(from: s.common, to: $0) ?? [] }
      let branch = Array(Set(paths.flatMap { $0 })).sorted()
      // A scaled shortcut s·x + f(x) (ConvFormer's and CAFormer's res_scale): f is a
      // branch like any other, MHSA included.
      if let k = paths.firstIndex(where: { side in side.allSatisfy { isScaling(g.nodes[$0]) } }), paths.count == 2 {
        let f = paths[1 - k], fx = g.nodes[s.add].inputs[1 - k]
        if !f.isEmpty, case .success(var u) = classify(add: s.add, x: s.common, fx: fx, branch: f) {
          u.branch = (f + paths[k]).sorted()
          units.append(u)
          continue
        }
      }
      if !branch.isEmpty, escaping(branch).subtracting(g.nodes[s.add].inputs).isEmpty,
        let u = matchSegments(add: s.add, x: s.common, branch: branch)
      {
        units.append(u)
        continue
      }
      if hasSoftmax(branch) { opaque.formUnion(branch) }
      let c = producerIndex[s.common].map { "the output of " + describe(g.nodes[$0]) } ?? "the input"
      // What the shortcut side does to the common value: only moves it, scales it, or computes.
      let sides = g.nodes[s.add].inputs.map { v -> String in
        var v = v, scaled = false
        while let p = producerIndex[v], v != s.common {
          let n = g.nodes[p]
          if n.op.isDataMovement {
            v = n.inputs[0]
          } else if n.op == .mul, let a = n.inputs.first(where: isActivation), n.inputs.count == 2 {
            scaled = true
            v = a
          } else {
            return "computed"
          }
        }
        return v == s.common ? (scaled ? "scaled" : "moved") : "computed"
      }
      let kind =
        sides.contains("moved")
        ? "a shortcut that only moves x (a transpose or reshape), which mark does not follow yet"
        : sides.contains("scaled") ? "a scaled shortcut s·x + f(x)" : "a projection shortcut proj(x) + f(x)"
      failures.append(
        (
          s.add,
          "both sides of the sum are computed from \(c): \(kind), and neither side has a PW-Conv node "
            + "(a 1×1 conv or channel linear) on a token grid larger than 1×1 to split"
        ))
    }
    // A sum inside a matched branch (RoPE's x·cos + rot(x)·sin, GRN's x + γ·x·N(x)) is part of
    // that unit, not a residual unit of its own.
    let matched = Set(units.flatMap(\.branch))
    for f in failures where !matched.contains(f.add) {
      out.append(PendingAnnotation(node: f.add, key: Annotation.unmatched, value: .string(f.reason)))
    }
    // Group: an MHSA unit and the MLP unit reading its sum form one block; other units stand alone.
    var groups: [[Unit]] = []
    for u in units.sorted(by: { $0.add < $1.add }) {
      if var last = groups.last, last.count == 1, last[0].kind == .mhsa, u.kind != .mhsa, u.x == g.nodes[last[0].add].outputs[0] {
        last.append(u)
        groups[groups.count - 1] = last
      } else {
        groups.append([u])
      }
    }
    // Each group's layout, when it has one with rows to split. A unit left out here (a 1×1
    // grid, no token grid) still offers its PW-Conv nodes on larger grids to the scan below.
    var known: [ValueID: Layout] = [:]
    var layouts: [Result<Layout, MatchFailure>] = []
    for group in groups {
      guard let lay = group[0].segments.isEmpty ? layout(of: group[0].x, unit: group[0], known: known) : segmentLayout(group[0]) else {
        // One token (CaiT's class attention updates the class token alone) has no rows to drop.
        let single = g.type(of: group[0].x).rank == 3 && g.type(of: group[0].x).shape[1] == 1
        layouts.append(.failure(MatchFailure(single ? "the unit updates one token (class attention): no rows to split" : "no token grid found for the block input")))
        continue
      }
      // One position has no rows to drop (the last stage of a small input).
      guard lay.grid.reduce(1, *) > 1 else {
        layouts.append(.failure(MatchFailure("the unit's grid is 1x1 and a 1x1 grid has one position: no rows to split")))
        continue
      }
      for u in group { known[g.nodes[u.add].outputs[0]] = lay }
      layouts.append(.success(lay))
    }
    // Stages are token layouts (a grid and its prefix tokens), numbered in the order the
    // network first reaches them: ConViT's class token, joined after its local blocks, starts
    // a stage on the same grid, since a stage's row indices count its prefix.
    var stageOfLayout: [[Int]: Int] = [:]
    func stageIndex(of l: Layout) -> Int {
      let key = l.grid + [l.prefix]
      if let s = stageOfLayout[key] { return s }
      stageOfLayout[key] = stageOfLayout.count
      return stageOfLayout.count - 1
    }
    var blockNodes = Set<Int>()
    var firstInput: ValueID?
    var lastOutput: ValueID?
    var blockIndex = 0
    var stageStarts: [(grid: [Int], stage: Int, firstAdd: Int)] = []
    // PW-Conv nodes no residual unit holds are blocks of their own, numbered in graph order
    // among the units.
    let inUnits = Set(zip(groups, layouts).filter { (try? $0.1.get()) != nil }.flatMap { $0.0.flatMap { $0.branch + [$0.add] } })
    let alone = standaloneSegments(outside: g.nodes.indices.filter { !inUnits.contains($0) && !opaque.contains($0) })
    var pending = alone[...]
    for (group, found) in zip(groups.map(Optional.some) + [nil], layouts.map(Optional.some) + [nil]) {
      while let seg = pending.first, group.map({ seg.nodes[0] < $0.map(\.add).min()! }) ?? true {
        pending = pending.dropFirst()
        let stage = stageIndex(of: seg.layout)
        stageStarts.append((seg.layout.grid, stage, seg.nodes[0]))
        for i in seg.nodes {
          blockNodes.insert(i)
          out.append(PendingAnnotation(node: i, key: Annotation.block, value: .int(blockIndex)))
          out.append(PendingAnnotation(node: i, key: Annotation.stage, value: .int(stage)))
          out.append(PendingAnnotation(node: i, key: Annotation.segment, value: .int(0)))
          let linear: Bool
          if case .linear = g.nodes[i].op { linear = true } else { linear = false }
          out.append(PendingAnnotation(node: i, key: Annotation.role, value: .string(linear ? "pwconv" : "pwconv.act")))
        }
        // The block's facts go on its PW-Conv node, since it has no residual add.
        let head = seg.nodes[0]
        out.append(PendingAnnotation(node: head, key: Annotation.kind, value: .string("pwconv(plain)")))
        out.append(PendingAnnotation(node: head, key: Annotation.layout, value: .string(seg.layout.name)))
        out.append(PendingAnnotation(node: head, key: Annotation.tokenAxes, value: .ints(seg.layout.tokenAxes)))
        out.append(PendingAnnotation(node: head, key: Annotation.grid, value: .ints(seg.layout.grid)))
        out.append(PendingAnnotation(node: head, key: Annotation.prefix, value: .int(seg.layout.prefix)))
        if firstInput == nil { firstInput = seg.input }
        lastOutput = g.nodes[seg.nodes.last!].outputs[0]
        blockIndex += 1
      }
      guard let group, let found else { break }
      let lay: Layout
      switch found {
      case .success(let l): lay = l
      case .failure(let f):
        for u in group { out.append(PendingAnnotation(node: u.add, key: Annotation.unmatched, value: .string(f.reason))) }
        continue
      }
      for u in group { for seg in u.segments { _ = stageIndex(of: seg.layout) } }
      let stage = stageIndex(of: lay)
      stageStarts.append((lay.grid, stage, group[0].add))
      var segmentIndex = 0
      let kind = group.map { ($0.hasDepthwise ? "dwconv+" : "") + $0.kind.rawValue + ($0.queryOnly ? "(query)" : "") + ($0.windows != nil ? "(windows)" : "") }.joined(separator: "+")
      for u in group {
        for i in u.branch + [u.add] {
          blockNodes.insert(i)
          out.append(PendingAnnotation(node: i, key: Annotation.block, value: .int(blockIndex)))
          out.append(PendingAnnotation(node: i, key: Annotation.stage, value: .int(stage)))
        }
        for (i, r) in u.roles { out.append(PendingAnnotation(node: i, key: Annotation.role, value: .string(r))) }
        if u.queryOnly, let sm = u.roles.first(where: { $0.value == "mhsa.softmax" })?.key {
          out.append(PendingAnnotation(node: sm, key: Annotation.attention, value: .string("query")))
        }
        if let w = u.windows, let sm = u.roles.first(where: { $0.value == "mhsa.softmax" })?.key {
          out.append(PendingAnnotation(node: sm, key: Annotation.windows, value: .ints(w)))
        }
        for seg in u.segments {
          for i in seg.nodes {
            out.append(PendingAnnotation(node: i, key: Annotation.segment, value: .int(segmentIndex)))
            out.append(PendingAnnotation(node: i, key: Annotation.stage, value: .int(stageIndex(of: seg.layout))))
          }
          out.append(PendingAnnotation(node: seg.nodes[0], key: Annotation.tokenAxes, value: .ints(seg.layout.tokenAxes)))
          out.append(PendingAnnotation(node: seg.nodes[0], key: Annotation.grid, value: .ints(seg.layout.grid)))
          out.append(PendingAnnotation(node: seg.nodes[0], key: Annotation.prefix, value: .int(seg.layout.prefix)))
          segmentIndex += 1
        }
        out.append(PendingAnnotation(node: u.add, key: Annotation.role, value: .string("residual")))
        out.append(PendingAnnotation(node: u.add, key: Annotation.kind, value: .string(kind)))
        out.append(PendingAnnotation(node: u.add, key: Annotation.layout, value: .string(lay.name)))
        out.append(PendingAnnotation(node: u.add, key: Annotation.tokenAxes, value: .ints(lay.tokenAxes)))
        out.append(PendingAnnotation(node: u.add, key: Annotation.grid, value: .ints(lay.grid)))
        out.append(PendingAnnotation(node: u.add, key: Annotation.prefix, value: .int(lay.prefix)))
      }
      if firstInput == nil { firstInput = group[0].x }
      lastOutput = g.nodes[group.last!.add].outputs[0]
      blockIndex += 1
    }
    out += outsideBlocks(blockNodes: blockNodes, firstInput: firstInput, lastOutput: lastOutput, stages: stageStarts)
    return densely(out)
  }

  /// A sum whose branch holds whole residual units (HRNet's fuse layers around its
  /// bottlenecks) takes their nodes over, since annotations apply in order: the blocks that
  /// keep their facts are renumbered 0, 1, … in order, so `--blocks` indices have no holes.
  func densely(_ out: [PendingAnnotation]) -> [PendingAnnotation] {
    var final: [Int: Int] = [:]
    var anchors = Set<Int>()
    for a in out {
      if a.key == Annotation.block, case .int(let b) = a.value { final[a.node] = b }
      if a.key == Annotation.kind { anchors.insert(a.node) }
    }
    let live = Set(anchors.compactMap { final[$0] }).sorted()
    guard live != Array(0..<live.count) else { return out }
    let dense = Dictionary(uniqueKeysWithValues: live.enumerated().map { ($0.element, $0.offset) })
    return out.compactMap { a in
      guard a.key == Annotation.block, case .int(let b) = a.value else { return a }
      guard let d = dense[b] else { return nil }
      return PendingAnnotation(node: a.node, key: a.key, value: .int(d))
    }
  }

  /// Stem (upstream of the first block), downsamplers (between stages) and head (downstream of the last block).
  func outsideBlocks(blockNodes: Set<Int>, firstInput: ValueID?, lastOutput: ValueID?, stages: [(grid: [Int], stage: Int, firstAdd: Int)])
    -> [PendingAnnotation]
  {
    guard let firstInput, let lastOutput, let lastProducer = producerIndex[lastOutput] else { return [] }
    var out: [PendingAnnotation] = []
    let firstProducer = producerIndex[firstInput] ?? -1
    for (i, n) in g.nodes.enumerated() where !blockNodes.contains(i) {
      let compute: Bool
      switch n.op {
      case .conv, .layerNorm, .linear, .matMul, .gemm: compute = true
      case .constant, .add, .sub, .mul, .div, .pow, .equal, .select, .unary, .cast, .softmax, .reshape, .transpose, .slice,
        .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum,
        .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .maxPool, .averagePool,
        .maxPoolGrad, .averagePoolGrad, .stopGradient, .softmaxCrossEntropy,
        .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad,
        .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw: compute = false
      }
      if i <= firstProducer {
        if compute { out.append(PendingAnnotation(node: i, key: Annotation.role, value: .string("stem"))) }
      } else if i > lastProducer {
        out.append(PendingAnnotation(node: i, key: Annotation.role, value: .string("head")))
      } else if case .conv(let geo) = n.op, geo.group == 1,
        zip(geo.strides, g.type(of: n.inputs[1]).shape.dropFirst(2)).allSatisfy({ $0 == $1 && $0 > 1 }), geo.pads.allSatisfy({ $0 == 0 }),
        // It makes the grid of the stage it feeds: PVT's spatial reduction of keys and values,
        // which has the same form inside an attention branch, does not.
        stages.first(where: { $0.firstAdd > i }).map({ Array(g.type(of: n.outputs[0]).shape.suffix(2)) == $0.grid }) ?? true
      {
        // A conv whose stride equals its kernel is a linear map over non-overlapping patches.
        let next = stages.first { $0.firstAdd > i }
        out.append(PendingAnnotation(node: i, key: Annotation.role, value: .string("downsample")))
        if let next { out.append(PendingAnnotation(node: i, key: Annotation.stage, value: .int(next.stage))) }
      } else if case .layerNorm = n.op {
        out.append(PendingAnnotation(node: i, key: Annotation.role, value: .string("downsample.norm")))
      }
    }
    return out
  }
}

/// Why a residual branch matched no sub-block.
struct MatchFailure: Error {
  let reason: String
  init(_ r: String) { reason = r }
}
