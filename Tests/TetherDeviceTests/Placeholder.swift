import Testing

@Test func placeholderTetherDeviceTests() { #expect(Bool(true)) }
