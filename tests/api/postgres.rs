//! The integration suite (see main.rs) on PostgreSQL: a database per test
//! on the server at `EMIT_TEST_POSTGRES` (default 127.0.0.1:5432, user
//! postgres).

const BACKEND: helpers::Backend = helpers::Backend::Postgres;

include!("suite.rs");

// Tests that need several cores on one database.
mod replicas;
