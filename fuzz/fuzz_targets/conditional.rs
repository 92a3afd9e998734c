//! The conditional headers (If, If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since): reading
//! and evaluating them never panics, and a write never gets a 304.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::conditional(data));
