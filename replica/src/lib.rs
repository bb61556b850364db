//! The Fides replica process (transport, client API, durable storage, service state machines); not built yet.
