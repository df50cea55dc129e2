import ArgumentParser
import TetherCore
import TetherDevice
import TetherSys

@main
struct TetherCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tether",
        abstract: "A GPU device-thread runtime whose device work dies with the process that owns it.",
        subcommands: [Devices.self, Run.self, DaemonCommand.self, Ps.self, Kill.self, Scenario.self, Bench.self])
}

extension BackendChoice: ExpressibleByArgument {}

struct BackendOptions: ParsableArguments {
    @Option(help: "Device backend: auto (GPU > CPU Vulkan > software), vulkan or software. Default: $TETHER_BACKEND, else auto.")
    var backend: BackendChoice?
}

/// Prints one clear line and exits non-zero: the way every command reports a user-facing error.
func fail(_ message: String) -> ExitCode {
    printError("tether: \(message)")
    return ExitCode(1)
}
