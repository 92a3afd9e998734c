//! The `Authorization: Basic` parser and the `login+book` split, on any header value.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::basic_auth(data));
