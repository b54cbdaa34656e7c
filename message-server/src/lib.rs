//! Message server.
