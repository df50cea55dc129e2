import Testing

@Test func placeholderTetherIntegrationTests() { #expect(Bool(true)) }
