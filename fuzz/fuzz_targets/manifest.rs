//! Suite manifests, TOML and JSON, as the producer and `isotest run` read them: parsing and
//! validating must never panic.

#![no_main]

use isotest_protocol::manifest::{Format, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for format in [Format::Toml, Format::Json] {
            let _ = Manifest::load(text, format, Some("fuzz"));
        }
    }
});
