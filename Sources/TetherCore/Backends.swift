/// Which implementation runs device threads.
public enum BackendKind: String, Sendable, Codable, CaseIterable {
    case vulkan, software
}

/// What `--backend` and `TETHER_BACKEND` accept.
public enum BackendChoice: String, Sendable, Codable, CaseIterable {
    /// GPU > CPU Vulkan (lavapipe) > software.
    case auto, vulkan, software
}

