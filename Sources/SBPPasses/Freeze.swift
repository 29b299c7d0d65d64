// Freeze.swift: which parameters a structural --freeze spec (stem, head, norm, or a --blocks selection) names, from mark's annotations.
import SBPIR

/// Structural `--freeze` specs. A spec is structural when it is `stem`, `head`, `norm` or
/// in the `--blocks` grammar; anything else is an initializer-name pattern (`ImportOptions`).
public enum FreezeSpec {
  public static func isStructural(_ spec: String) -> Bool {
    if ["stem", "head", "norm", "all"].contains(spec) { return true }
    if spec.hasPrefix("last:") || spec.hasPrefix("first:") || spec.hasPrefix("stage:") { return true }
    return spec.first?.isNumber == true
  }

  /// The trainable parameters `spec` names in a marked graph:
  /// - `stem`: those only nodes before the first block read (patch embedding, class token,
  ///   position embedding, a CNN's stem);
  /// - `head`: those only nodes after the last block read (final norm, classifier);
  /// - `norm`: the scale and shift of every LayerNorm and BatchNorm;
  /// - a `--blocks` selection: those the selected blocks' nodes read.
  /// Throws one line when the spec names none.
  public static func parameters(_ g: Graph, spec: String, notes: inout [String]) throws -> Set<String> {
    let ud = g.index()
    let blockOf = g.nodeBlocks
    let trainable = g.params.filter(\.trainable)
    var names: Set<String> = []
    switch spec {
    case "stem", "head":
      guard let first = blockOf.keys.min(), let last = blockOf.keys.max() else {
        throw PassError("--freeze \(spec): the model has no blocks, so no \(spec) before or after them")
      }
      for p in trainable {
        let r = ud.users(p.value)
        if !r.isEmpty && r.allSatisfy({ spec == "stem" ? $0 < first : $0 > last }) { names.insert(p.name) }
      }
    case "norm":
      for n in g.nodes {
        switch n.op {
        case .layerNorm, .batchNorm, .batchNormTraining:
          for v in n.inputs.dropFirst().prefix(2) { if let p = trainable.first(where: { $0.value == v }) { names.insert(p.name) } }
        default: continue
        }
      }
    default:
      let selected: Set<Int>
      do { selected = Set(try BlockSelector.parse(spec, table: BlockTable(g), notes: &notes)) } catch {
        throw PassError("--freeze \(spec): \(error)")
      }
      for p in trainable where ud.users(p.value).contains(where: { blockOf[$0].map(selected.contains) ?? false }) {
        names.insert(p.name)
      }
    }
    guard !names.isEmpty else { throw PassError("--freeze \(spec): names no trainable parameter") }
    return names
  }
}
