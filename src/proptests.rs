//! Property tests of the parsers that read what the network sends (SPEC §16:
//! MQTT command payloads, Docker event lines and log streams, registry
//! `WWW-Authenticate` and `Link` headers, image references and tags): on any
//! input they return an answer — never panic, never exceed their bounds. A
//! fixed number of cases each, so the run is bounded (a few seconds).

use proptest::prelude::*;

use crate::command::{self, Scope};

fn cases() -> ProptestConfig {
    ProptestConfig {
        cases: 3000,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like what each parser expects, mixed with noise.
fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\"action\"",
        "\"request_id\"",
        "\"stop\"",
        "\"logs\"",
        "\"lines\"",
        "\"since\"",
        "\"what\"",
        "\"label\"",
        "\"version\"",
        "\"all_volumes\"",
        "true",
        "null",
        "1e999",
        "-1",
        "\"\\u0000\"",
        "\"10m\"",
        "\"1.2.3\"",
        "\"volumes\"",
        "\u{1b}",
        "\u{fffd}",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        prop::collection::vec(pieces, 0..64).prop_map(|v| v.concat().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn command_payloads_never_panic(payload in json_ish()) {
        for scope in [Scope::Container, Scope::Endpoint, Scope::Bridge, Scope::Stack] {
            if let Ok(r) = command::parse(&payload, scope) {
                prop_assert!(!r.action.is_empty());
                prop_assert!(r.lines.is_none_or(|l| (1..=1000).contains(&l)));
            }
        }
    }

    #[test]
    fn event_lines_never_panic(line in json_ish(), action in any::<String>(), code in any::<String>()) {
        let _ = serde_json::from_slice::<crate::docker::models::Event>(&line);
        let attrs = std::collections::BTreeMap::from([("exitCode".to_string(), code)]);
        let _ = crate::endpoint::transitions::transition_of(&action, &attrs, i64::MAX);
        let _ = crate::endpoint::transitions::transition_of(&action, &attrs, i64::MIN);
    }

    #[test]
    fn log_streams_stay_bounded(body in prop::collection::vec(any::<u8>(), 0..20_000), tty in any::<bool>()) {
        let l = crate::docker::logs::decode(&body, tty);
        let total: usize = l.lines.iter().map(|x| x.text.len()).sum();
        prop_assert!(total <= crate::docker::logs::MAX_TEXT);
        prop_assert!(l.lines.iter().all(|x| x.text.len() <= crate::docker::logs::MAX_LINE + '…'.len_utf8()));
    }

    #[test]
    fn registry_headers_never_panic(h in any::<String>()) {
        let _ = crate::registry::client::parse_challenge(&h);
        if let Some(url) = crate::registry::client::next_link(&h) {
            prop_assert!(!url.starts_with('<'));
        }
    }

    #[test]
    fn image_references_and_tags_never_panic(s in any::<String>()) {
        if let Some(r) = crate::registry::reference::Reference::parse(&s) {
            prop_assert!(!s.trim().is_empty());
            let _ = r;
        }
        let _ = crate::registry::tags::parse(&s);
    }
}
