// Codec.swift: decodes JPEG (TurboJPEG, scaled when the target allows) and PNG (libpng) into reusable RGB memory.
import CImageCodec

/// An image file that could not be used: the reason, for the skip list or the error line.
public struct ImageError: Error, CustomStringConvertible, Sendable {
  public let reason: String
  public var description: String { reason }
}

/// 8-bit RGB pixels, row-major, in a decoder's buffer (valid until its next decode).
public struct RGBImage {
  public let pixels: UnsafePointer<UInt8>
  public let width: Int, height: Int
}

/// One worker's decoder: a TurboJPEG handle and a pixel buffer that grows to the largest
/// image seen, so that decoding allocates nothing once the buffer is big enough.
public final class ImageDecoder {
  let jpeg: UnsafeMutableRawPointer
  var buffer: UnsafeMutablePointer<UInt8>
  var capacity: Int
  var message = [CChar](repeating: 0, count: 200)

  public init() throws {
    guard let h = sbp_jpeg_create() else { throw ImageError(reason: "cannot create a TurboJPEG decompressor") }
    jpeg = h
    capacity = 1 << 20
    buffer = .allocate(capacity: capacity)
  }

  deinit {
    sbp_jpeg_destroy(jpeg)
    buffer.deallocate()
  }

  var lastMessage: String { message.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } }

  /// Width and height from the header alone.
  public func size(of data: UnsafeRawBufferPointer) throws -> (width: Int, height: Int) {
    var w: Int32 = 0, h: Int32 = 0
    let status = message.withUnsafeMutableBufferPointer { m in
      sbp_image_size(jpeg, data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count, &w, &h, m.baseAddress, m.count)
    }
    guard status == 0 else { throw ImageError(reason: lastMessage) }
    return (Int(w), Int(h))
  }

  /// Decodes the image; a JPEG at `eighths`/8 of its size (1, 2, 4 or 8), a PNG always whole.
  /// `fast`: TurboJPEG's fast IDCT and upsampling (for training crops; PIL decodes accurately).
  /// `size`: the header's width and height when the caller has read them already.
  public func decode(_ data: UnsafeRawBufferPointer, eighths: Int = 8, fast: Bool = false, size known: (Int, Int)? = nil) throws
    -> RGBImage
  {
    let bytes = data.baseAddress?.assumingMemoryBound(to: UInt8.self)
    let format = sbp_image_format(bytes, data.count)
    let (w, h) = try known ?? size(of: data)
    let scale = format == Int32(SBP_IMAGE_JPEG) ? eighths : 8
    let need = ((w * scale + 7) / 8) * ((h * scale + 7) / 8) * 3
    if need > capacity {
      buffer.deallocate()
      capacity = need
      buffer = .allocate(capacity: capacity)
    }
    var ow: Int32 = 0, oh: Int32 = 0
    let status = message.withUnsafeMutableBufferPointer { m in
      format == Int32(SBP_IMAGE_JPEG)
        ? sbp_jpeg_decode(jpeg, bytes, data.count, Int32(scale), fast ? 1 : 0, buffer, capacity, &ow, &oh, m.baseAddress, m.count)
        : sbp_png_decode(bytes, data.count, buffer, capacity, &ow, &oh, m.baseAddress, m.count)
    }
    guard status == 0 else { throw ImageError(reason: lastMessage) }
    return RGBImage(pixels: UnsafePointer(buffer), width: Int(ow), height: Int(oh))
  }
}
