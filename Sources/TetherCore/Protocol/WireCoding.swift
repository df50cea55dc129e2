/// Little-endian binary encoding for the wire protocol. Decoding never traps: every read checks
/// the bytes left and throws `malformedMessage`, so a hostile or truncated message costs its
/// sender an error reply and nothing else.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    public mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Wire.maxStringBytes))
        u32(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
    public mutating func u64s(_ a: [UInt64]) {
        u32(UInt32(a.count))
        for v in a { u64(v) }
    }
    public mutating func u32s(_ a: [UInt32]) {
        u32(UInt32(a.count))
        for v in a { u32(v) }
    }
}

public struct WireReader {
    let bytes: [UInt8]
    public private(set) var offset: Int

    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
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
    public mutating func i64() throws(TetherError) -> Int64 { Int64(bitPattern: try u64()) }
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
    public mutating func u64s(max: Int) throws(TetherError) -> [UInt64] {
        let n = Int(try u32())
        guard n <= max, n * 8 <= remaining else { throw TetherError(.malformedMessage, "array of \(n) values exceeds \(max) or the message") }
        var a: [UInt64] = []
        a.reserveCapacity(n)
        for _ in 0..<n { a.append(try u64()) }
        return a
    }
    public mutating func u32s(max: Int) throws(TetherError) -> [UInt32] {
        let n = Int(try u32())
        guard n <= max, n * 4 <= remaining else { throw TetherError(.malformedMessage, "array of \(n) values exceeds \(max) or the message") }
        var a: [UInt32] = []
        a.reserveCapacity(n)
        for _ in 0..<n { a.append(try u32()) }
        return a
    }
    public func expectEnd() throws(TetherError) {
        guard remaining == 0 else { throw TetherError(.malformedMessage, "\(remaining) unexpected trailing bytes") }
    }
}
