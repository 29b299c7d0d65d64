// SliceGroups.swift: runs the memory plan's slice runs (attention's products, softmax, scaling) slice by slice instead of node by node.
import Dispatch
import SBPIR

/// The runtime side of a `SliceRun`: consecutive steps that each work on the slices of the
/// same leading axes independently (batch × heads): small batched matmuls, softmax and its
/// gradient along the last axis, a transpose of the last two axes, and elementwise ops
/// against a scalar. Run op by op, every
/// head's 197×197 scores go out to memory after the product that makes them and come back
/// for the softmax and again for the next product. Run slice by slice, one head's scores stay
/// in L2 across all three, and values made and read only inside the group live in per-thread
/// scratch instead of the arena. Each slice runs the same kernels on the same data, so the
/// results are bit-identical to running the steps one after the other.
final class SliceGroup {
  enum Kernel {
    case matMul(transA: Bool, transB: Bool, m: Int, n: Int, k: Int)
    case softmax(rows: Int, cols: Int)
    case softmaxGrad(rows: Int, cols: Int)
    /// [rows, cols] → [cols, rows].
    case transpose(rows: Int, cols: Int)
    /// An elementwise add, sub, mul or div (`BinaryKernel.apply`) over `count` elements.
    case binary((V8, V8) -> V8, count: Int)
  }

  /// Where a member reads or writes slice i: `base + i·stride` in a buffer (stride 0 for a
  /// broadcast operand), or an offset into the calling thread's scratch.
  enum Place {
    case memory(UnsafeMutablePointer<Float>, stride: Int)
    case scratch(Int)
  }

  struct Member {
    var kernel: Kernel
    var ins: [Place]
    var out: Place
  }

  /// Schedule positions of the grouped steps, the first of which runs the whole group.
  let steps: [Int]
  /// Steps among them that the executor runs itself, before the members (constants).
  let hoisted: [Int]
  let members: [Member]
  let slices: Int
  /// Floats of scratch per thread.
  let scratchFloats: Int
  let gemmFlops: Int
  /// The grouped kernels for the profile: "per-slice matmul+softmax+matmul".
  let label: String
  /// Per thread, nanoseconds inside sgemm during the last run (the slowest counts).
  private let gemmNanos: UnsafeMutablePointer<UInt64>
  private let threads: Int

  init(steps: [Int], hoisted: [Int], members: [Member], slices: Int, scratchFloats: Int, threads: Int, label: String) {
    self.steps = steps
    self.hoisted = hoisted
    self.label = label
    self.members = members
    self.slices = slices
    self.scratchFloats = scratchFloats
    self.threads = max(threads, 1)
    gemmNanos = .allocate(capacity: self.threads)
    var f = 0
    for m in members { if case .matMul(_, _, let m, let n, let k) = m.kernel { f += 2 * m * n * k * slices } }
    gemmFlops = f
  }

  deinit { gemmNanos.deallocate() }

  /// Runs every member on every slice; slices are split over the threads, each with
  /// single-threaded sgemm (as `GEMM.batched` runs products this small).
  func run() {
    let scratch = Scratch.floats(scratchFloats * threads)
    let chunks = Parallel.chunkCount(slices, grain: 1)
    Parallel.chunks(slices, grain: 1) { chunk, range in
      let base = scratch + chunk * self.scratchFloats
      var nanos: UInt64 = 0
      for s in range {
        for m in self.members { nanos &+= SliceGroup.execute(m, slice: s, scratch: base) }
      }
      self.gemmNanos[chunk] = nanos
    }
    // The slowest thread's time in sgemm stands for the group's: the threads run at once.
    var most: UInt64 = 0
    for c in 0..<chunks { most = max(most, gemmNanos[c]) }
    GEMM.nanos &+= most
    GEMM.flops &+= gemmFlops
  }

  @inline(__always) static func pointer(_ p: Place, _ s: Int, _ scratch: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
    switch p {
    case .memory(let base, let stride): return base + s * stride
    case .scratch(let offset): return scratch + offset
    }
  }

  /// One member on slice `s`; returns the nanoseconds spent in sgemm.
  static func execute(_ m: Member, slice s: Int, scratch: UnsafeMutablePointer<Float>) -> UInt64 {
    let y = pointer(m.out, s, scratch)
    let x = pointer(m.ins[0], s, scratch)
    switch m.kernel {
    case .matMul(let ta, let tb, let rows, let cols, let depth):
      let t0 = DispatchTime.now().uptimeNanoseconds
      GEMM.call(ta, tb, rows, cols, depth, 1, x, ta ? rows : depth, pointer(m.ins[1], s, scratch), tb ? depth : cols, 0, y, cols)
      return DispatchTime.now().uptimeNanoseconds - t0
    case .softmax(let rows, let cols): Norm.softmaxRows(rows, cols, x, y)
    case .softmaxGrad(let rows, let cols): Norm.softmaxGradRows(rows, cols, x, pointer(m.ins[1], s, scratch), y)
    case .transpose(let rows, let cols): transpose(rows, cols, x, y)
    case .binary(let f, let count):
      let b = pointer(m.ins[1], s, scratch)
      // A scalar operand is a splat (stride 0), as `Elementwise.binary` reads it.
      let sa = m.ins[0].isScalar ? 0 : 1, sb = m.ins[1].isScalar ? 0 : 1
      Elementwise.row(count, x, sa, b, sb, y, f)
    }
    return 0
  }

  /// y[c, r] = x[r, c] for one slice, in 16×16 tiles.
  static func transpose(_ rows: Int, _ cols: Int, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
    let tile = 16
    var r0 = 0
    while r0 < rows {
      let r1 = min(rows, r0 + tile)
      var c0 = 0
      while c0 < cols {
        let c1 = min(cols, c0 + tile)
        for r in r0..<r1 {
          var src = x + (r &* cols &+ c0), dst = y + (c0 &* rows &+ r)
          for _ in c0..<c1 {
            dst.pointee = src.pointee
            src += 1
            dst += rows
          }
        }
        c0 = c1
      }
      r0 = r1
    }
  }
}

extension SliceGroup {
  /// What a step needs to join a group: its slice count, kernel, and the elements per slice
  /// of each operand (0: the same memory for every slice) and of its result.
  struct Candidate {
    var slices: Int
    var kernel: Kernel
    var ins: [Int]
    var out: Int
  }

  static func candidate(_ s: Executor.Step) -> Candidate? {
    guard !s.pre.skip, s.pre.geluPair == nil, s.pre.movement == nil, s.outs.count == 1, s.outs[0].type.dtype == .f32,
      s.ins.allSatisfy({ $0.type.dtype == .f32 })
    else { return nil }
    let out = s.outs[0].type.shape, r = out.count
    guard r >= 3 else { return nil }
    let slices = out[..<(r - 2)].reduce(1, *), per = out[r - 2] * out[r - 1]
    guard slices > 1, per > 0 else { return nil }
    /// An elementwise member: each operand whole (one slice each) or a scalar splat.
    func binary(_ f: @escaping (V8, V8) -> V8) -> Candidate? {
      var ins: [Int] = []
      for x in s.ins {
        if x.type.shape == out {
          ins.append(per)
        } else if x.count == 1 {
          ins.append(0)
        } else {
          return nil
        }
      }
      guard ins.contains(per) else { return nil }
      return Candidate(slices: slices, kernel: .binary(f, count: per), ins: ins, out: per)
    }
    switch s.node.op {
    case .matMul:
      let sa = s.ins[0].type.shape, sb = s.ins[1].type.shape
      let m = sa[sa.count - 2], k = sa[sa.count - 1], n = sb[sb.count - 1]
      guard 2 * m * n * k <= SliceRun.productLimit, s.pre.strides.count == 4 else { return nil }
      let p = s.pre.strides
      // Each operand either has every slice of its own or one matrix for all of them.
      func stride(_ st: [Int], _ size: Int) -> Int? { st == p[3] ? size : st.allSatisfy { $0 == 0 } ? 0 : nil }
      guard let a = stride(p[1], m * k), let b = stride(p[2], k * n) else { return nil }
      return Candidate(
        slices: slices, kernel: .matMul(transA: s.pre.transA, transB: s.pre.transB, m: m, n: n, k: k), ins: [a, b], out: per)
    case .softmax(let axis) where axis == r - 1:
      return Candidate(slices: slices, kernel: .softmax(rows: out[r - 2], cols: out[r - 1]), ins: [per], out: per)
    case .softmaxGrad(let axis) where axis == r - 1:
      return Candidate(slices: slices, kernel: .softmaxGrad(rows: out[r - 2], cols: out[r - 1]), ins: [per, per], out: per)
    case .transpose(let perm) where perm == Array(0..<(r - 2)) + [r - 1, r - 2]:
      return Candidate(slices: slices, kernel: .transpose(rows: out[r - 1], cols: out[r - 2]), ins: [per], out: per)
    case .add: return binary(Add.apply)
    case .sub: return binary(Sub.apply)
    case .mul: return binary(Mul.apply)
    case .div: return binary(Div.apply)
    case .constant, .pow, .equal, .select, .unary, .cast, .linear, .gemm, .conv, .layerNorm, .softmax, .reshape, .transpose,
      .slice, .gather, .concat, .split, .gatherRows, .scatterRows, .squeeze, .unsqueeze, .expand, .reduceMean, .reduceSum,
      .globalAveragePool, .pad, .padGrad, .batchNorm, .batchNormTraining, .batchNormGrad, .runningStats, .maxPool,
      .averagePool, .maxPoolGrad,
      .averagePoolGrad, .stopGradient, .softmaxCrossEntropy,
      .softmaxCrossEntropyGrad, .unaryGrad, .softmaxGrad,
      .layerNormGrad, .layerNormSaving, .layerNormAffine, .convGradInput, .convGradWeight, .linearGradWeight, .sliceGrad, .gatherGrad, .sgd, .adamw: return nil
    }
  }

  /// The slice groups of the memory plan's slice runs: each run whose members the runtime
  /// can all run by slice, with its scratch laid out, when the memory is as the plan
  /// promises (checked again here: a run that could differ from step by step runs step by step).
  static func groups(_ steps: [Executor.Step], runs: [SliceRun], graph: Graph, threads: Int) -> [SliceGroup] {
    runs.compactMap { build($0, steps, graph, threads) }
  }

  static func build(_ run: SliceRun, _ steps: [Executor.Step], _ g: Graph, _ threads: Int) -> SliceGroup? {
    var cands: [Int: Candidate] = [:]
    for p in run.members {
      guard let c = candidate(steps[p]), c.slices == run.slices else { return nil }
      cands[p] = c
    }
    // Scratch: first fit over [made, last read]; a region is reused only after its value's
    // last reader, never by that reader's own result.
    var lastRead: [ValueID: Int] = [:]
    for p in run.members {
      for v in steps[p].node.inputs where run.scratch.contains(run.root(v, g)) { lastRead[run.root(v, g)] = p }
    }
    var offset: [ValueID: Int] = [:], sliceOf: [ValueID: Int] = [:]
    var live: [(lo: Int, hi: Int, end: Int)] = []
    var scratchFloats = 0
    for p in run.members {
      let v = steps[p].node.outputs[0]
      guard run.scratch.contains(v), let end = lastRead[v] else { continue }
      let padded = (cands[p]!.out + 15) / 16 * 16
      var at = 0
      for l in live.filter({ $0.end >= p }).sorted(by: { $0.lo < $1.lo }) {
        if at + padded <= l.lo { break }
        at = max(at, l.hi)
      }
      live.append((at, at + padded, end))
      offset[v] = at
      sliceOf[v] = cands[p]!.out
      scratchFloats = max(scratchFloats, at + padded)
    }
    var members: [Member] = []
    // Memory each member touches: (member, byte range, written, base, stride).
    var touches: [(m: Int, range: Range<Int>, write: Bool, base: Int, stride: Int)] = []
    func touch(_ m: Int, _ b: Buffer, _ stride: Int, write: Bool) {
      let lo = b.byteRange.lowerBound
      let bytes = stride == 0 ? b.byteCount : stride * run.slices * 4
      touches.append((m, lo..<(lo + bytes), write, lo, stride))
    }
    for (mi, p) in run.members.enumerated() {
      let s = steps[p], c = cands[p]!
      var ins: [Place] = []
      for (k, v) in s.node.inputs.enumerated() {
        let r = run.root(v, g)
        if let o = offset[r] {
          // A view of a scratch value must cut it into the same slices.
          guard c.ins[k] == sliceOf[r] else { return nil }
          ins.append(.scratch(o))
        } else {
          ins.append(.memory(s.ins[k].f32, stride: c.ins[k]))
          touch(mi, s.ins[k], c.ins[k], write: false)
        }
      }
      let out: Place
      if let o = offset[s.node.outputs[0]] {
        out = .scratch(o)
      } else {
        out = .memory(s.outs[0].f32, stride: c.out)
        touch(mi, s.outs[0], c.out, write: true)
      }
      members.append(Member(kernel: c.kernel, ins: ins, out: out))
    }
    // Two accesses to overlapping memory, one a write, are safe slice by slice only when both
    // cut the same buffer into the same slices; within one member, only for the row and
    // elementwise kernels, which read each element before writing it.
    for (x, a) in touches.enumerated() {
      for b in touches[(x + 1)...] where (a.write || b.write) && a.range.overlaps(b.range) {
        guard a.base == b.base && a.stride == b.stride && a.stride > 0 else { return nil }
        if a.m == b.m {
          switch members[a.m].kernel {
          case .matMul, .transpose: return nil
          default: break
          }
        }
      }
    }
    // A hoisted constant runs before every member: it must not write memory a member touches.
    for h in run.hoisted {
      let range = steps[h].outs[0].byteRange
      for t in touches where run.members[t.m] < h && t.range.overlaps(range) { return nil }
    }
    let names = run.members.map { steps[$0].node.op.name }
    return SliceGroup(
      steps: run.nodes, hoisted: run.hoisted, members: members, slices: run.slices, scratchFloats: scratchFloats,
      threads: threads, label: "per-slice " + names.joined(separator: "+"))
  }
}

extension SliceGroup.Place {
  /// A broadcast single element (a scalar operand of an elementwise member).
  var isScalar: Bool {
    if case .memory(_, let stride) = self { return stride == 0 }
    return false
  }
}
