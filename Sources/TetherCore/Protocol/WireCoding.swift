/// Little-endian binary encoding for the wire protocol. Decoding never traps: every read checks
/// the bytes left and throws `malformedMessage`, so a hostile or truncated message costs its
/// sender an error reply and nothing else.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() { bytes.reserveCapacity(64) }

    mutating func integer<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { integer(v) }
    public mutating func u32(_ v: UInt32) { integer(v) }
    public mutating func u64(_ v: UInt64) { integer(v) }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Wire.maxStringBytes))
        u32(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
    /// A count, then the values.
    mutating func integers<T: FixedWidthInteger>(_ a: [T]) {
        u32(UInt32(a.count))
        for v in a { integer(v) }
    }
    public mutating func u64s(_ a: [UInt64]) { integers(a) }
    public mutating func u32s(_ a: [UInt32]) { integers(a) }
}

public struct WireReader {
    let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8]) {
        self.bytes = bytes
        offset = 0
    }

    public var remaining: Int { bytes.count - offset }

    mutating func take(_ n: Int) throws(TetherError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else {
            throw TetherError(.malformedMessage, "message truncated: needed \(n) more bytes at offset \(offset), \(remaining) left")
        }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(TetherError) -> T {
        let slice = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, b) in slice.enumerated() { v |= T(b) << (8 * i) }
        return v
    }

    public mutating func u8() throws(TetherError) -> UInt8 { try integer(UInt8.self) }
    public mutating func u16() throws(TetherError) -> UInt16 { try integer(UInt16.self) }
    public mutating func u32() throws(TetherError) -> UInt32 { try integer(UInt32.self) }
    public mutating func u64() throws(TetherError) -> UInt64 { try integer(UInt64.self) }
    public mutating func bool() throws(TetherError) -> Bool {
        switch try u8() {
        case 0: return false
        case 1: return true
        case let v: throw TetherError(.malformedMessage, "bad boolean \(v)")
        }
    }
    public mutating func string() throws(TetherError) -> String {
        let n = Int(try u32())
        guard n <= Wire.maxStringBytes else { throw TetherError(.malformedMessage, "string of \(n) bytes is too long") }
        return String(decoding: try take(n), as: UTF8.self)
    }
    /// A count of at most `max`, then the values.
    mutating func integers<T: FixedWidthInteger>(_: T.Type, max: Int) throws(TetherError) -> [T] {
        let n = Int(try u32())
        guard n <= max, n * MemoryLayout<T>.size <= remaining else {
            throw TetherError(.malformedMessage, "array of \(n) values exceeds \(max) or the message")
        }
        var a: [T] = []
        a.reserveCapacity(n)
        for _ in 0..<n { a.append(try integer(T.self)) }
        return a
    }
    public mutating func u64s(max: Int) throws(TetherError) -> [UInt64] { try integers(UInt64.self, max: max) }
    public mutating func u32s(max: Int) throws(TetherError) -> [UInt32] { try integers(UInt32.self, max: max) }
    public func expectEnd() throws(TetherError) {
        guard remaining == 0 else { throw TetherError(.malformedMessage, "\(remaining) unexpected trailing bytes") }
    }
}
