//! Arbitrary bytes → meshgate-config's Istio policy and settings parsers.
//! Property: a result or a list of errors, never a panic, and every error
//! list that comes back is non-empty and printable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_config::policy::parse_policies;
use meshgate_config::settings::Settings;
use meshgate_core::time::UnixTime;

fuzz_target!(|data: &[u8]| {
    // Files are read as UTF-8; anything else is refused before parsing.
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    match parse_policies("fuzz.yaml", text, UnixTime::EPOCH) {
        Ok(policies) => {
            // Whatever parses must serialize and parse back unchanged.
            let yaml = meshgate_config::emit::policies_to_yaml(&policies);
            let again = parse_policies("again.yaml", &yaml, UnixTime::EPOCH);
            assert_eq!(again.as_ref().ok(), Some(&policies), "{yaml}");
        }
        Err(e) => {
            assert!(!e.is_empty());
            let _ = e.to_string();
        }
    }
    // A base directory that does not exist keeps referenced files off the
    // real filesystem.
    if let Err(e) = Settings::parse("fuzz.yaml", text, std::path::Path::new("/nonexistent/fuzz")) {
        assert!(!e.is_empty());
    }
});
