// `import Tether` is all a client needs: the public API speaks TetherCore's types (errors, ids,
// kernels, reports), so they come along. Nothing here reaches TetherDevice: a client process must
// never load Vulkan.
@_exported import TetherCore
