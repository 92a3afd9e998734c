//! The URL path router: any path (percent-encoding, `..`, `//`, NUL, overlong UTF-8) routes or is refused
//! without panicking; routed segments are never dot segments or hold `/`, `\` or NUL; and the hrefs we
//! write for a route parse back to the same route.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::router(data));
