//! Identifiers: ULIDs, monotonic within a process so that jobs created in the
//! same millisecond keep their creation order (poll is first in, first out).

use std::sync::Mutex;

static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);

pub fn new_id() -> String {
    let mut guard = GENERATOR
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let generator = guard.get_or_insert_with(ulid::Generator::new);
    // Overflow needs 2^80 ids in one millisecond; fall back to a fresh ULID.
    generator
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

pub fn is_well_formed(id: &str) -> bool {
    ulid::Ulid::from_string(id).is_ok()
}
