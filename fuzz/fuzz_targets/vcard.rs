//! vCard validation and conversion: whatever a PUT body holds, validation never panics, and a card that
//! validates can be indexed, rendered in both versions, subset, turned into JSContact and projected.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::vcard(data));
