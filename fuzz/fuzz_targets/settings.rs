//! The embedded config file parser on arbitrary UTF-8: it may refuse, never
//! panic, and a refusal always says which key is wrong and why.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = proto::Config::parse(text, std::path::Path::new("/srv/wakegate")) {
        assert!(!errors.0.is_empty(), "a refusal with no reason");
        for e in &errors.0 {
            assert!(!e.reason.is_empty(), "an error without a reason for key {:?}", e.key);
        }
    }
});
