//! `sqlx::migrate!` embeds the migrations at compile time, but cargo does not
//! know that it reads them: without this, a new migration file alone would
//! not rebuild the core, and the binary would run without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
