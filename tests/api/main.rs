//! Integration tests: each test starts the real server (core and gateway on
//! loopback ports, fresh database) and talks to it with real HTTP, WebSocket
//! and gRPC clients. This binary runs the suite on SQLite; `postgres.rs`
//! runs the same modules on PostgreSQL.

const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

include!("suite.rs");

// Browser flows run once, on this binary's backend (see the module).
mod dashboard_browser;
