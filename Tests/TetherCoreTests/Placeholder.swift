import Testing

@Test func placeholderTetherCoreTests() { #expect(Bool(true)) }
