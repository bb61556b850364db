//! Rust client library and command-line clients of a Fides cluster; not built yet.
