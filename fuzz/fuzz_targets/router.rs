//! The URL path router: any path (percent-encoding, `..`, `//`, NUL, overlong UTF-8) routes or is refused
//! without panicking; routed segments are never dot segments or hold `/`, `\` or NUL; and the hrefs we
//! write for a route parse back to the same route.
#![no_main]

use kartei::router::{self, Route};
use libfuzzer_sys::fuzz_target;

fn clean(segment: &str) {
    assert!(segment != "." && segment != "..", "dot segment routed");
    assert!(!segment.contains(['/', '\\', '\0']), "dangerous segment routed: {segment:?}");
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let _ = router::href_segments(&path);
    let _ = router::card_name_in_book(&path, "u", "contacts");
    let Ok(route) = router::parse(&path) else { return };
    match &route {
        Route::Principal { user } => {
            clean(user);
            assert_eq!(router::parse(&router::principal_href(user)), Ok(route.clone()));
        }
        Route::Home { user } => {
            clean(user);
            assert_eq!(router::parse(&router::home_href(user)), Ok(route.clone()));
        }
        Route::AddressBook { user, book } => {
            clean(user);
            clean(book);
            assert_eq!(router::parse(&router::book_href(user, book)), Ok(route.clone()));
        }
        Route::Card { user, book, name } => {
            clean(user);
            clean(book);
            clean(name);
            let href = router::card_href(user, book, name);
            assert_eq!(router::parse(&href), Ok(route.clone()));
            assert_eq!(router::card_name_in_book(&href, user, book).as_deref(), Some(name.as_str()));
        }
        Route::Files { user, path } => {
            clean(user);
            path.iter().for_each(|s| clean(s));
        }
        Route::Api(s) | Route::Admin(s) | Route::Account(s) => s.iter().for_each(|x| clean(x)),
        Route::WellKnown | Route::Root | Route::PrincipalCollection | Route::HomeCollection => {}
    }
});
