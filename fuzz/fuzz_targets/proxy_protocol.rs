//! The PROXY protocol v1/v2 parser on arbitrary bytes. Besides never
//! panicking, it must be incremental: the gateway reads a header in pieces, so
//! every proper prefix of an accepted header has to mean "need more bytes",
//! and bytes after the header never change what it says.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wakegate::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((header, n))) = parse(data) else { return };
    assert!(n > 0 && n <= data.len(), "consumed {n} of {} bytes", data.len());
    assert_eq!(parse(&data[..n]), Ok(Some((header, n))), "the header alone parses the same");
    for k in 0..n {
        assert_eq!(parse(&data[..k]), Ok(None), "a {k}-byte prefix of a {n}-byte header must ask for more");
    }
});
