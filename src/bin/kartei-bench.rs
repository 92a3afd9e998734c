//! Placeholder: the CardDAV benchmark client is being written.
fn main() {}
