//! Asynchronous atomic broadcast (reliable broadcast, common subset, threshold-encrypted epochs, agreed time); not built yet.
