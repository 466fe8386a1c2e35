//! The properties config parser: arbitrary text through `parse_properties`
//! and `resolve`, as `keel node --config FILE` reads it. A configuration that
//! parses must print (`keel config check`, [`config::effective`]) as text
//! that parses back to the same configuration.
//!
//! `tls.*` keys are dropped before `resolve`: it reads the files they name,
//! and arbitrary paths (`/dev/zero`) would test the file system, not keel.

#![no_main]

use keel_node::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(settings) = config::parse_properties(text, "fuzz.properties") else { return };
    for s in &settings {
        assert!(!s.key.is_empty(), "an empty key parsed: {s:?}");
        assert_eq!(s.key.trim(), s.key, "a key kept its blanks");
        assert_eq!(s.value.trim(), s.value, "a value kept its blanks");
    }
    let settings: Vec<_> = settings.into_iter().filter(|s| !s.key.starts_with("tls.")).collect();
    let Ok(c) = config::resolve(settings, Vec::new(), Vec::new()) else { return };
    let printed = config::effective(&c);
    // The token is never printed; everything else reads back.
    let text: String = printed
        .iter()
        .filter(|(k, _)| **k != "admin.token" && !k.starts_with("tls."))
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    let back = config::parse_properties(&text, "printed.properties")
        .and_then(|s| config::resolve(s, Vec::new(), Vec::new()))
        .unwrap_or_else(|e| panic!("printed config does not read back: {e:#}\n{text}"));
    let again = config::effective(&back);
    for (key, value) in &printed {
        if *key != "admin.token" {
            assert_eq!(&again[key], value, "{key} changed when the printed config was read back\n{text}");
        }
    }
});
