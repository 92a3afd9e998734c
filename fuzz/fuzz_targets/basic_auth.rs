//! The `Authorization: Basic` parser and the `login+book` split, on any header value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    if let Some((user, password)) = kartei::auth::parse_basic(&header) {
        assert!(!user.is_empty());
        assert!(!user.contains(':'), "the user name ends at the first colon");
        let _ = password;
        let (username, scope) = kartei::app::split_scoped_login(&user);
        assert!(!username.is_empty());
        if let Some(book) = scope {
            assert!(!book.is_empty());
        }
    }
    let _ = kartei::auth::parse_bearer(&header);
});
