//! vCard validation and conversion: whatever a PUT body holds, validation never panics, and a card that
//! validates can be indexed, rendered in both versions, subset, turned into JSContact and projected.
#![no_main]

use kartei::vcard::{self, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(valid) = vcard::validate(data) else { return };
    let stored = valid.new_card.version.as_str();
    for want in [Some(Version::V3), Some(Version::V4), None] {
        let (bytes, converted) = vcard::render(data, stored, want, None);
        // What a client is served (and may PUT back) is itself a valid card.
        if converted && let Err(e) = vcard::validate(&bytes) {
            panic!("a converted card does not validate ({e:?}):\n{}", String::from_utf8_lossy(&bytes));
        }
        let _ = vcard::render(data, stored, want, Some(&["FN".to_string(), "EMAIL".to_string()]));
    }
    if let Some(card) = vcard::parse_stored(data) {
        let _ = vcard::to_jscontact(&card);
        let _ = vcard::contact::project(&card);
        for entry in &card.entries {
            let _ = vcard::property_text(entry);
            let _ = vcard::parameter_values(entry, "TYPE");
        }
    }
});
