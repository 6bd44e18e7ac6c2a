use super::*;

fn logs_result(lines: Vec<crate::docker::logs::LogLine>, truncated: bool) -> CommandResult {
    let req = parse(br#"{"action":"logs","request_id":"r"}"#, Scope::Container).expect("req");
    let mut r = CommandResult::ok(&req, None, Instant::now());
    r.logs = Some(lines);
    r.truncated = Some(truncated);
    r
}

fn line(text: String) -> crate::docker::logs::LogLine {
    crate::docker::logs::LogLine {
        stream: "stdout",
        time: Some("2026-12-01T10:00:00.123456789Z".into()),
        text,
    }
}

#[test]
fn a_logs_result_fits_64_kib_as_sent_keeping_the_newest_whole_lines() {
    // What users saw: 1,000 lines → 73.6 KB; escapes weigh more than text.
    for (n, text) in [
        (1000, "x".repeat(60)),
        (3000, "\u{1b}[31m\"quoted\"\t".repeat(20)),
        (10, "short".to_string()),
    ] {
        let lines: Vec<_> = (0..n).map(|i| line(format!("{i} {text}"))).collect();
        let mut r = logs_result(lines, false);
        let whole = serde_json::to_vec(&r).expect("json").len();
        r.fit_logs(MAX_RESULT_BYTES);
        let sent = serde_json::to_vec(&r).expect("json");
        assert!(sent.len() <= MAX_RESULT_BYTES, "{n}: {}", sent.len());
        let kept = r.logs.as_ref().expect("logs");
        assert_eq!(r.truncated, Some(whole > MAX_RESULT_BYTES), "{n}");
        assert!(
            kept.last()
                .is_some_and(|l| l.text.starts_with(&format!("{} ", n - 1)))
        );
        assert!(
            kept.iter().all(|l| l.text.ends_with(&text)),
            "whole lines only"
        );
        if whole > MAX_RESULT_BYTES {
            assert!(
                sent.len() > MAX_RESULT_BYTES - 2_000,
                "as much as fits: {}",
                sent.len()
            );
        }
    }
    // Truncated by the decoder stays truncated.
    let mut r = logs_result(vec![line("a".into())], true);
    r.fit_logs(MAX_RESULT_BYTES);
    assert_eq!(r.truncated, Some(true));
}

#[test]
fn dedup_is_bounded_and_forgets_the_oldest_first() {
    let mut d = Dedup::default();
    let now = Instant::now();
    for i in 0..(DEDUP_CAP * 25) {
        assert!(!d.is_duplicate("t", &format!("r{i}"), now));
    }
    assert!(d.len() <= DEDUP_CAP, "{}", d.len());
    assert!(d.order.len() <= DEDUP_CAP);
    let last = format!("r{}", DEDUP_CAP * 25 - 1);
    assert!(
        d.is_duplicate("t", &last, now),
        "recent ids are still known"
    );
    assert!(!d.is_duplicate("t", "r0", now), "the oldest was forgotten");
    // Expired ones go too, and an id seen again after expiry counts anew.
    let later = now + DEDUP_WINDOW + Duration::from_secs(1);
    assert!(!d.is_duplicate("t", &last, later));
    assert!(d.is_duplicate("t", &last, later));
}

#[test]
fn heavy_scope_commands_are_rate_limited_per_scope_and_word() {
    let mut l = ScopeLimiter::default();
    let t0 = Instant::now();
    assert_eq!(l.check("b/set", "resync", t0), None);
    assert!(
        l.check("b/set", "resync", t0 + Duration::from_secs(1))
            .is_some()
    );
    assert_eq!(l.check("b/set", "check_updates", t0), None);
    assert_eq!(l.check("b/local/set", "resync", t0), None);
    assert_eq!(l.check("b/set", "resync", t0 + SCOPE_MIN_INTERVAL), None);
}

#[test]
fn prune_and_logs_follow_the_same_policy() {
    let allow: Vec<String> = vec!["prune".into(), "logs".into()];
    let plain = Subject::default();
    assert_eq!(
        Policy {
            enabled: true,
            allow: &allow
        }
        .refusal("prune", Some(&plain)),
        None
    );
    assert_eq!(
        Policy {
            enabled: true,
            allow: &allow
        }
        .refusal("logs", Some(&plain)),
        None
    );
    for who in [
        Subject { own: true, ..plain },
        Subject {
            protected: true,
            ..plain
        },
        Subject {
            label_off: true,
            ..plain
        },
    ] {
        assert!(
            Policy {
                enabled: true,
                allow: &allow
            }
            .refusal("prune", Some(&who))
            .is_some(),
            "{who:?}"
        );
    }
    let busy = Subject {
        in_operation: true,
        ..plain
    };
    assert_eq!(
        Policy {
            enabled: true,
            allow: &allow
        }
        .refusal("prune", Some(&busy))
        .map(|r| r.0),
        Some(Code::Busy)
    );
    for who in [
        Subject {
            protected: true,
            ..plain
        },
        Subject {
            logs_off: true,
            ..plain
        },
    ] {
        assert_eq!(
            Policy {
                enabled: true,
                allow: &allow
            }
            .refusal("logs", Some(&who))
            .map(|r| r.0),
            Some(Code::Forbidden),
            "{who:?}"
        );
    }
    // Reading its own logs harms nothing.
    assert_eq!(
        Policy {
            enabled: true,
            allow: &allow
        }
        .refusal("logs", Some(&Subject { own: true, ..plain })),
        None
    );
}

#[test]
fn one_policy_for_every_word_and_container() {
    let allow: Vec<String> = vec!["start".into(), "stop".into(), "check".into()];
    let mut enabled = true;
    let plain = Subject::default();
    assert_eq!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("stop", Some(&plain)),
        None
    );
    assert_eq!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("stop", None),
        None
    );
    assert!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("kill", None)
        .is_some_and(|(c, m)| c == Code::Forbidden && m.contains("commands.allow"))
    );
    let label = Subject {
        label_off: true,
        ..plain
    };
    // The label turns off every word, `check` included.
    for w in ["start", "stop", "check"] {
        assert!(
            Policy {
                enabled,
                allow: &allow
            }
            .refusal(w, Some(&label))
            .is_some(),
            "{w}"
        );
    }
    let own = Subject { own: true, ..plain };
    assert!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("stop", Some(&own))
        .is_some_and(|(_, m)| m.contains("its own"))
    );
    assert_eq!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("start", Some(&own)),
        None
    );
    let protected = Subject {
        protected: true,
        ..plain
    };
    assert!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("stop", Some(&protected))
        .is_some()
    );
    assert_eq!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("check", Some(&protected)),
        None
    );
    enabled = false;
    assert!(
        Policy {
            enabled,
            allow: &allow
        }
        .refusal("start", None)
        .is_some_and(|(_, m)| m.contains("commands.enabled"))
    );
}

#[test]
fn overflow_reply_is_busy_with_the_request_id() {
    let topics = Topics::new("b");
    let (t, r) = overflow_reply(
        &topics,
        "b/local/web/set",
        br#"{"action":"stop","request_id":"x1"}"#,
    )
    .expect("reply");
    assert_eq!(t, "b/local/web/result");
    let v: serde_json::Value = serde_json::from_slice(&r).expect("json");
    assert_eq!(
        (
            v["code"].as_str(),
            v["request_id"].as_str(),
            v["ok"].as_bool()
        ),
        (Some("busy"), Some("x1"), Some(false))
    );
    assert!(overflow_reply(&topics, "b/local/web/set", b"").is_none());
    assert!(overflow_reply(&topics, "b/local/web/state", b"stop").is_none());
    assert!(overflow_reply(&topics, "b/set", b"\xff\xfe").is_some());
}

#[test]
fn words_and_json() {
    let r = parse(b"restart", Scope::Container).expect("word");
    assert_eq!((r.action.as_str(), r.request_id), ("restart", None));
    let r = parse(b"  STOP\n", Scope::Container).expect("case and spaces");
    assert_eq!(r.action, "stop");
    let r = parse(
        br#"{"action":"pause","request_id":"abc"}"#,
        Scope::Container,
    )
    .expect("json");
    assert_eq!(
        (r.action.as_str(), r.request_id.as_deref()),
        ("pause", Some("abc"))
    );
    let r = parse(br#"{"action":"resync","request_id":42}"#, Scope::Bridge).expect("num id");
    assert_eq!(r.request_id.as_deref(), Some("42"));
    assert_eq!(
        parse(b"resync", Scope::Endpoint).expect("ep").action,
        "resync"
    );
}

#[test]
fn refusals() {
    let cases: &[(&[u8], Scope, &str)] = &[
        (b"", Scope::Container, "empty"),
        (b"reboot", Scope::Container, "unknown command"),
        (b"resync", Scope::Container, "unknown command"),
        (b"restart", Scope::Bridge, "unknown command"),
        (b"\xff\xfe", Scope::Container, "UTF-8"),
        (b"{", Scope::Container, "bad JSON"),
        (b"[1,2]", Scope::Container, "unknown command"),
        (br#"["start"]"#, Scope::Container, "unknown command"),
        (br#"{"action":5}"#, Scope::Container, "must be a string"),
        (br#"{"request_id":"x"}"#, Scope::Container, "missing"),
        (
            br#"{"action":"start","request_id":{}}"#,
            Scope::Container,
            "request_id",
        ),
        (
            br#"{"action":"start","extra":1}"#,
            Scope::Container,
            "unknown key",
        ),
    ];
    for (payload, scope, want) in cases {
        let e = parse(payload, *scope).expect_err("must fail");
        assert!(e.message.contains(want), "{payload:?}: {}", e.message);
    }
    let big = vec![b'a'; MAX_PAYLOAD + 1];
    assert!(
        parse(&big, Scope::Container)
            .expect_err("big")
            .message
            .contains("limit")
    );
    let deep = format!("{}{}", "[".repeat(400), "]".repeat(400));
    assert!(parse(deep.as_bytes(), Scope::Container).is_err());
    // The request id is echoed even when the action is bad.
    let e = parse(br#"{"action":"nope","request_id":"r1"}"#, Scope::Container).expect_err("x");
    assert_eq!(e.request_id.as_deref(), Some("r1"));
}

/// Property: any byte string is classified (Ok or Err), never panics, and an
/// Ok always names a word of its scope. Bounded: 200k random inputs plus
/// mutations of valid payloads.
#[test]
fn parser_never_panics_and_classifies_everything() {
    let seeds: &[&[u8]] = &[
        b"start",
        br#"{"action":"restart","request_id":"abc"}"#,
        br#"{"action":"resync"}"#,
        b"{\"action\":\"\xc3\xa9\"}",
    ];
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for i in 0..200_000 {
        let mut input: Vec<u8> = if i % 2 == 0 {
            let len = rng.usize(0..64);
            (0..len).map(|_| rng.u8(..)).collect()
        } else {
            seeds[rng.usize(0..seeds.len())].to_vec()
        };
        for _ in 0..rng.usize(0..4) {
            if input.is_empty() {
                break;
            }
            let at = rng.usize(0..input.len());
            match rng.u8(0..3) {
                0 => input[at] = rng.u8(..),
                1 => {
                    input.remove(at);
                }
                _ => input.insert(at, rng.u8(..)),
            }
        }
        for scope in [
            Scope::Container,
            Scope::Endpoint,
            Scope::Bridge,
            Scope::Stack,
        ] {
            if let Ok(r) = parse(&input, scope) {
                let words = match scope {
                    Scope::Container => CONTAINER_WORDS,
                    Scope::Endpoint => ENDPOINT_WORDS,
                    Scope::Bridge => BRIDGE_WORDS,
                    Scope::Stack => crate::stacks::WORDS,
                };
                assert!(words.contains(&r.action.as_str()), "{input:?}");
            }
        }
    }
}

#[test]
fn prune_arguments() {
    let r = parse(
        br#"{"action":"prune","what":["images","volumes","images"],"label":"a=b"}"#,
        Scope::Endpoint,
    )
    .expect("ok");
    assert_eq!(
        r.what,
        Some(vec!["images".to_string(), "volumes".to_string()])
    );
    assert_eq!(r.label.as_deref(), Some("a=b"));
    assert_eq!(parse(b"prune", Scope::Endpoint).expect("word").what, None);
    assert!(
        parse(b"prune", Scope::Container).is_err(),
        "an endpoint word"
    );
    for bad in [
        &br#"{"action":"prune","what":"images"}"#[..],
        br#"{"action":"prune","what":["networks"]}"#,
        br#"{"action":"prune","label":"=x"}"#,
        br#"{"action":"resync","what":["images"]}"#,
    ] {
        assert!(
            parse(bad, Scope::Endpoint).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let allow = vec!["start".to_string()];
    assert!(
        Policy {
            enabled: true,
            allow: &allow
        }
        .refusal("prune", None)
        .is_some(),
        "opt-in"
    );
    assert!(
        Policy {
            enabled: true,
            allow: &["prune".to_string()]
        }
        .refusal("prune", None)
        .is_none()
    );
}

#[test]
fn logs_arguments() {
    let r = parse(
        br#"{"action":"logs","lines":20,"since":"10m"}"#,
        Scope::Container,
    )
    .expect("ok");
    assert_eq!(r.lines, Some(20));
    let now = crate::clock::unix_now() as i64;
    assert!(r.since.is_some_and(|s| (now - 600 - s).abs() <= 2), "{r:?}");
    let r = parse(br#"{"action":"logs","lines":99999}"#, Scope::Container).expect("clamped");
    assert_eq!(r.lines, Some(MAX_LOG_LINES));
    assert_eq!(parse(b"logs", Scope::Container).expect("word").lines, None);
    assert_eq!(
        parse_since(&serde_json::json!(1_700_000_000), 0),
        Ok(1_700_000_000)
    );
    assert_eq!(
        parse_since(&serde_json::json!("2026-12-01T00:00:00Z"), 0),
        Ok(1_796_083_200)
    );
    for bad in [
        &br#"{"action":"logs","lines":0}"#[..],
        br#"{"action":"logs","lines":-1}"#,
        br#"{"action":"logs","lines":1.5}"#,
        br#"{"action":"logs","since":"soon"}"#,
        br#"{"action":"logs","since":-5}"#,
        br#"{"action":"restart","lines":5}"#,
    ] {
        assert!(
            parse(bad, Scope::Container).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    // Opt-in like `pause`: refused unless commands.allow names it.
    let allow = vec![
        "start".to_string(),
        "stop".to_string(),
        "restart".to_string(),
    ];
    assert!(matches!(
        Policy {
            enabled: true,
            allow: &allow
        }
        .refusal("logs", None),
        Some((Code::Forbidden, _))
    ));
}

#[test]
fn update_to_a_version() {
    let r = parse(
        br#"{"action":"update","version":"1.27.3","request_id":"v"}"#,
        Scope::Container,
    )
    .expect("ok");
    assert_eq!(r.version.as_deref(), Some("1.27.3"));
    let junk = format!(r#"{{"action":"update","version":"{}"}}"#, "x".repeat(900));
    let bad: &[(&[u8], &str)] = &[
        (br#"{"action":"update","version":"sha256:abcd"}"#, "digest"),
        (br#"{"action":"update","version":"1@sha256:ab"}"#, "digest"),
        (
            br#"{"action":"update","version":"other/repo:1"}"#,
            "reference",
        ),
        (br#"{"action":"update","version":"1 2"}"#, "valid tag"),
        (br#"{"action":"update","version":""}"#, "valid tag"),
        (br#"{"action":"update","version":".x"}"#, "valid tag"),
        (br#"{"action":"update","version":7}"#, "string"),
        (
            br#"{"action":"restart","version":"1"}"#,
            "only with `update`",
        ),
        (junk.as_bytes(), "valid tag"),
    ];
    for (p, want) in bad {
        let e = parse(p, Scope::Container).expect_err("refused");
        assert!(
            e.message.contains(want),
            "{}: {}",
            String::from_utf8_lossy(p),
            e.message
        );
    }
    assert!(parse(b"update_all", Scope::Endpoint).is_ok());
    assert!(parse(b"update_all", Scope::Bridge).is_err());
    assert!(parse(b"update_all", Scope::Container).is_err());
    assert!(parse(b"rollback", Scope::Container).is_ok());
}

#[test]
fn dedup_window() {
    let mut d = Dedup::default();
    let t0 = Instant::now();
    assert!(!d.is_duplicate("b/e/c/set", "r1", t0));
    assert!(d.is_duplicate("b/e/c/set", "r1", t0 + Duration::from_secs(30)));
    assert!(!d.is_duplicate("b/e/d/set", "r1", t0));
    assert!(!d.is_duplicate("b/e/c/set", "r1", t0 + Duration::from_secs(61)));
}

#[test]
fn own_container_detection() {
    let id = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100";
    let mountinfo = format!(
        "1465 1446 0:52 / / rw,relatime - overlay overlay rw\n\
         1480 1465 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n"
    );
    assert_eq!(
        own_container_ids(&mountinfo, ""),
        HashSet::from([id.to_string()])
    );
    let cgroup = format!("12:memory:/docker/{id}\n0::/system.slice/docker-{id}.scope\n");
    assert_eq!(
        own_container_ids("", &cgroup),
        HashSet::from([id.to_string()])
    );
    assert!(
        own_container_ids("1 2 0:1 / / rw - ext4 /dev/sda1 rw\n", "0::/user.slice\n").is_empty()
    );
}

#[test]
fn results_leave_out_empty_keys() {
    let req = Request {
        action: "restart".into(),
        request_id: Some("abc".into()),
        ..Default::default()
    };
    let ok = serde_json::to_value(CommandResult::ok(
        &req,
        Some("running".into()),
        Instant::now(),
    ))
    .expect("json");
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["request_id"], "abc");
    assert!(ok.get("code").is_none() && ok.get("error").is_none());
    let no = serde_json::to_value(CommandResult::refused(
        &req,
        Code::Forbidden,
        "no",
        Instant::now(),
    ))
    .expect("json");
    assert_eq!(no["code"], "forbidden");
    assert_eq!(no["error"], "no");
}
