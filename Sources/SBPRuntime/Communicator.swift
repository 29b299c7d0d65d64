// Communicator.swift: the processes of a data-parallel run, over Open MPI when mpirun started sbpc.
import CMPI
import Foundation

/// The processes training together: MPI's world when `mpirun` launched this process, or this
/// process alone. Every collective here is called by every rank in the same order; the
/// training loop is the same program on each, so that holds by construction.
public final class Communicator: @unchecked Sendable {
  /// This process's rank, and how many there are.
  public let rank: Int
  public let size: Int
  let mpi: Bool

  /// One process, no MPI.
  public static let single = Communicator(rank: 0, size: 1, mpi: false)

  init(rank: Int, size: Int, mpi: Bool) { (self.rank, self.size, self.mpi) = (rank, size, mpi) }

  /// True when a launcher (Open MPI's mpirun, or a PMI/PMIx launcher) started this process
  /// as one rank of several.
  public static var launched: Bool {
    let env = ProcessInfo.processInfo.environment
    for key in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"] { if let n = env[key].flatMap(Int.init), n > 1 { return true } }
    return false
  }

  /// Joins the MPI world. Only the calling thread talks to MPI (FUNNELED): the kernels'
  /// threads never do.
  public static func start() throws -> Communicator {
    var provided: Int32 = 0
    guard MPI_Init_thread(nil, nil, Int32(sbp_mpi_thread_funneled()), &provided) == sbp_mpi_success() else {
      throw RuntimeError("MPI_Init failed: this process could not join the job mpirun started")
    }
    var r: Int32 = 0, n: Int32 = 0
    MPI_Comm_rank(sbp_mpi_world(), &r)
    MPI_Comm_size(sbp_mpi_world(), &n)
    _ = sbp_mpi_errors_return()
    return Communicator(rank: Int(r), size: Int(n), mpi: true)
  }

  /// What a rank does when a collective fails (another rank died, the network broke): by
  /// default one line and exit 1; `sbpc train` replaces it with its stop note. It must not
  /// return: the ranks can no longer agree on anything.
  nonisolated(unsafe) public static var onFailure: (String) -> Never = { what in
    FileHandle.standardError.write(Data("sbpc: error: \(what)\n".utf8))
    exit(1)
  }

  /// Checks an MPI call's result.
  @inline(__always) func check(_ code: Int32, _ what: @autoclosure () -> String) {
    guard code != sbp_mpi_success() else { return }
    var text = [CChar](repeating: 0, count: 512), length: Int32 = 0
    MPI_Error_string(code, &text, &length)
    let reason = String(decoding: text.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    Communicator.onFailure("rank \(rank) of \(size): \(what()) failed: \(reason)")
  }

  /// Leaves the MPI world (every rank, at the end of a run that went well).
  public func finish() { if mpi { MPI_Finalize() } }

  /// Ends every rank at once: what a rank does when it fails alone, so the others do not
  /// wait for it forever.
  public func abort(_ code: Int32) -> Never {
    if mpi { MPI_Abort(sbp_mpi_world(), code) }
    exit(code)
  }

  /// Σ over the ranks, in place.
  public func sum(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
    guard mpi, count > 0 else { return }
    check(MPI_Allreduce(sbp_mpi_in_place(), p, Int32(count), sbp_mpi_float(), sbp_mpi_sum(), sbp_mpi_world()), "an allreduce")
  }

  public func sum(_ p: UnsafeMutablePointer<Double>, _ count: Int) {
    guard mpi, count > 0 else { return }
    check(MPI_Allreduce(sbp_mpi_in_place(), p, Int32(count), sbp_mpi_double(), sbp_mpi_sum(), sbp_mpi_world()), "an allreduce")
  }

  public func sum(_ values: inout [Double]) {
    guard mpi, !values.isEmpty else { return }
    let code = values.withUnsafeMutableBufferPointer {
      MPI_Allreduce(sbp_mpi_in_place(), $0.baseAddress, Int32($0.count), sbp_mpi_double(), sbp_mpi_sum(), sbp_mpi_world())
    }
    check(code, "an allreduce")
  }

  /// The smallest and largest of each value over the ranks (equal on every rank only when
  /// the ranks agree).
  public func range(_ values: [UInt64]) -> (min: [UInt64], max: [UInt64]) {
    guard mpi, !values.isEmpty else { return (values, values) }
    var lo = values, hi = values
    check(
      lo.withUnsafeMutableBufferPointer {
        MPI_Allreduce(sbp_mpi_in_place(), $0.baseAddress, Int32($0.count), sbp_mpi_uint64(), sbp_mpi_min(), sbp_mpi_world())
      }, "an allreduce")
    check(
      hi.withUnsafeMutableBufferPointer {
        MPI_Allreduce(sbp_mpi_in_place(), $0.baseAddress, Int32($0.count), sbp_mpi_uint64(), sbp_mpi_max(), sbp_mpi_world())
      }, "an allreduce")
    return (lo, hi)
  }

  /// Every rank's string (cut to `width` bytes), in rank order.
  public func gather(_ s: String, width: Int = 200) -> [String] {
    guard mpi else { return [s] }
    var mine = [CChar](repeating: 0, count: width)
    for (i, b) in s.utf8.prefix(width - 1).enumerated() { mine[i] = CChar(bitPattern: b) }
    var all = [CChar](repeating: 0, count: width * size)
    let code = mine.withUnsafeMutableBufferPointer { m in
      all.withUnsafeMutableBufferPointer { a in
        MPI_Allgather(m.baseAddress, Int32(width), sbp_mpi_char(), a.baseAddress, Int32(width), sbp_mpi_char(), sbp_mpi_world())
      }
    }
    check(code, "an allgather")
    return (0..<size).map { r in
      let bytes = all[(r * width)..<((r + 1) * width)].prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
      return String(decoding: bytes, as: UTF8.self)
    }
  }

  /// Rank 0's bytes, on every rank.
  public func broadcast(_ p: UnsafeMutableRawPointer, bytes: Int) {
    guard mpi, bytes > 0 else { return }
    check(MPI_Bcast(p, Int32(bytes), sbp_mpi_char(), 0, sbp_mpi_world()), "a broadcast")
  }

  /// A reduction in flight: `startSum` begins it, `test` lets it progress (Open MPI moves a
  /// non-blocking collective forward only inside MPI calls), `wait` finishes it.
  public final class Request {
    var handle: MPI_Request? = sbp_mpi_request_null()
    public internal(set) var active = false
  }

  /// Starts Σ over the ranks of `count` floats at `p`, in place; `p` must not be touched
  /// until `wait`.
  public func startSum(_ p: UnsafeMutablePointer<Float>, _ count: Int, _ r: Request) {
    guard mpi else { return }
    check(MPI_Iallreduce(sbp_mpi_in_place(), p, Int32(count), sbp_mpi_float(), sbp_mpi_sum(), sbp_mpi_world(), &r.handle), "an allreduce")
    r.active = true
  }

  /// Lets `r` progress; true when it is done.
  @discardableResult
  public func test(_ r: Request) -> Bool {
    guard r.active else { return true }
    var flag: Int32 = 0
    check(MPI_Test(&r.handle, &flag, sbp_mpi_status_ignore()), "an allreduce")
    if flag != 0 { r.active = false }
    return flag != 0
  }

  public func wait(_ r: Request) {
    guard r.active else { return }
    check(MPI_Wait(&r.handle, sbp_mpi_status_ignore()), "an allreduce")
    r.active = false
  }
}
