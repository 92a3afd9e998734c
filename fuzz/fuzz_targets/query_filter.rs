//! addressbook-query filters: parse any XML as a `CARD:filter` (or a whole REPORT body), evaluate it against
//! fixed cards, and check the store pre-filter never skips a card the filter matches.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::query_filter(data));
