//! Integration tests: each test starts the real server (core and gateway on
//! loopback ports, fresh SQLite database) and talks to it with real HTTP and
//! gRPC clients. All modules build into this one test binary.

mod admin;
mod auth;
mod callbacks;
mod create;
mod dispatch;
mod grpc;
mod helpers;
mod lifecycle;
mod list;
mod logs;
mod polyglot;
mod realtime;
mod restart;
mod timers;
mod worker_sessions;
