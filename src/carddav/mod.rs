//! CardDAV-specific logic (RFC 6352) that is not plain WebDAV: query filters.

pub mod filter;
