//! Whatever the bytes, parsing returns a value or errors and never panics.
//! (The cargo-fuzz target `fuzz/fuzz_targets/yaml_policy.rs` explores the
//! same property far longer; this keeps a quick version in every test run.)

use std::path::Path;

use meshgate_config::policy::parse_policies;
use meshgate_config::settings::Settings;
use meshgate_core::time::UnixTime;
use proptest::prelude::*;

const SEEDS: &[&str] = &[
    include_str!("data/istio-examples.yaml"),
    include_str!("../examples/meshgate.yaml"),
];

/// Valid documents with a few bytes replaced, inserted or removed: these
/// reach deep into the schema code, unlike uniformly random bytes.
fn mutated() -> impl Strategy<Value = String> {
    (
        0..SEEDS.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(|(seed, edits)| {
            let mut bytes = SEEDS[seed].as_bytes().to_vec();
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    break;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

fn exercise(text: &str) {
    if let Err(e) = parse_policies("fuzz.yaml", text, UnixTime::EPOCH) {
        assert!(!e.is_empty());
        let _ = e.to_string();
    }
    // Settings with a base directory that does not exist: referenced files
    // fail to load instead of reading the real filesystem.
    if let Err(e) = Settings::parse("fuzz.yaml", text, Path::new("/nonexistent/meshgate-fuzz")) {
        assert!(!e.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        exercise(&text);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[-:{}\\[\\]&*!|>'\"#%@` \n\ta-z0-9.]{0,200}") {
        exercise(&text);
    }

    #[test]
    fn mutated_documents_never_panic(text in mutated()) {
        exercise(&text);
    }
}
