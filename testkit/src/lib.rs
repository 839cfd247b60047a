//! What emit's test trees share: the API suite, the binary's tests, the
//! benchmarks and the core's unit tests.
//!
//! - `process`: the real `emit` binary as a child process;
//! - `in_process`: a core and gateway in the calling process;
//! - `http`: REST and metrics calls as tests make them;
//! - `postgres`: throwaway PostgreSQL databases;
//! - `ack_worker`, `worker`: stream workers that complete every job, the
//!   second keeping a ledger of leases.

pub mod ack_worker;
pub mod http;
pub mod in_process;
pub mod postgres;
pub mod process;
pub mod worker;

pub use http::*;
pub use postgres::PostgresDatabase;
pub use process::*;

/// The admin key every server a test or benchmark starts is given.
pub const ADMIN_KEY: &str = "emit_test_admin_key_0123456789abcdef";

pub type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The runtime a benchmark's load generator runs its clients on: one
/// thread, apart from the server's runtime. On a 2-core machine every cycle
/// the clients spend is one the server does not get, and a multi-threaded
/// client spends more of them on wake-ups and work stealing (README,
/// Benchmarks, gives the measured difference).
pub fn load_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
