// The integration suite, built once per storage backend (see main.rs and
// postgres.rs).

mod admin;
mod auth;
mod callbacks;
mod create;
mod dashboard;
mod dispatch;
mod first_run;
mod hardening;
mod idempotency;
mod grpc;
mod helpers;
mod lifecycle;
mod list;
mod logs;
mod metrics;
mod operations;
mod pause;
mod polyglot;
mod priority;
mod realtime;
mod restart;
mod schedules;
mod slack;
mod timers;
mod worker_sessions;
