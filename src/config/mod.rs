//! The config file, as plain data: the YAML schema (`schema`), `${VAR}`
//! expansion on parsed values (`env`), checks that need no I/O (`check`),
//! and errors that name file, line and field (`errors`, `locate`).
//!
//! Config is a leaf: it imports nothing else of weir. It knows a plugin's
//! type name and its raw settings, nothing more; the plugin registry parses
//! those, and the runtime build does every bit of I/O (keys files, CA files,
//! wasm modules).

mod check;
mod env;
mod errors;
mod load;
pub mod locate;
pub mod redact;
mod schema;
pub mod units;

pub use errors::{resolve_relative, Checker, ConfigError, ConfigErrors};
pub use load::{load, parse};
pub use schema::*;
pub use units::{Dur, Priority, Share, Size};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GOOD: &str = r#"
server:
  listen: ["127.0.0.1:8080"]
providers:
  a:
    url: http://127.0.0.1:9000/v1
    models: { pub: up }
routes:
  - name: chat
    match: { path_prefix: /v1/ }
    providers: [a]
"#;

    fn err(text: &str) -> ConfigError {
        match parse(text, Path::new("t.yaml")) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.0[0].clone(),
        }
    }

    #[test]
    fn good_config_parses() {
        let (c, _) = parse(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.server.max_request_body, Size(8 * 1024 * 1024));
        assert_eq!(c.server.timeouts.request_headers.0, std::time::Duration::from_secs(10));
        assert_eq!(c.providers["a"].models.pairs(), vec![("pub".into(), "up".into())]);
    }

    #[test]
    fn zero_header_timeout_refused() {
        let e = err(&GOOD.replace("  listen: [", "  timeouts: { request_headers: 0s }\n  listen: ["));
        assert!(
            e.to_string()
                .contains("server.timeouts.request_headers: must be above zero"),
            "{e}"
        );
    }

    #[test]
    fn tracing_is_checked_where_it_is_written() {
        let with = |t: &str| GOOD.replacen("\nproviders:", &format!("\ntracing: {t}\nproviders:"), 1);
        let e = err(&with("{ endpoint: \"https://otlp.example\" }"));
        assert_eq!((e.field.as_str(), e.line), ("tracing.endpoint", Some(4)), "{e}");
        assert!(e.message.contains("plain HTTP only"), "{e}");
        let e = err(&with("{ endpoint: \"http://127.0.0.1:4318\", sample: 1.5 }"));
        assert!(e.to_string().contains("tracing.sample: 1.5 is not a share"), "{e}");
        let e = err(&with("{ endpoint: \"127.0.0.1:4318\" }"));
        assert!(e.message.contains("is not an OTLP/HTTP endpoint"), "{e}");
        let (c, _) = parse(&with("{ endpoint: \"http://c:4318\" }"), Path::new("t.yaml")).unwrap();
        let t = c.tracing.unwrap();
        assert_eq!((t.sample, t.service_name.as_str(), t.queue), (1.0, "weir", 4096));
    }

    #[test]
    fn unknown_field_named_with_line() {
        let e = err(&GOOD.replace("    models:", "    colour: red\n    models:"));
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert_eq!(e.field, "providers.a.colour");
    }

    #[test]
    fn unknown_provider_reference() {
        let e = err(&GOOD.replace("providers: [a]", "providers: [a, b]"));
        assert_eq!(e.field, "routes[0].providers[1]");
        assert_eq!(e.line, Some(11));
        assert!(e
            .to_string()
            .starts_with("t.yaml:11: routes[0].providers[1]: unknown provider 'b'"));
    }

    #[test]
    fn missing_env_var() {
        let e = err(&GOOD.replace("models:", "api_key: ${WEIR_SURELY_UNSET_VAR}\n    models:"));
        assert_eq!(e.line, Some(7));
        assert_eq!(e.field, "providers.a.api_key");
        assert!(e.message.contains("WEIR_SURELY_UNSET_VAR"));
    }

    #[test]
    fn env_var_expands_and_comments_are_skipped() {
        std::env::set_var("WEIR_TEST_KEY_X", "sk-123");
        let t = GOOD.replace(
            "models:",
            "api_key: ${WEIR_TEST_KEY_X} # not ${UNSET_IN_COMMENT}\n    models:",
        );
        let (c, _) = parse(&t, Path::new("t.yaml")).unwrap();
        assert_eq!(c.providers["a"].api_key.as_deref(), Some("sk-123"));
    }

    #[test]
    fn bad_duration() {
        let t = GOOD.replace(
            "models:",
            "bulkhead: { max_concurrent: 1, queue: 1, queue_timeout: 2 fortnights }\n    models:",
        );
        let e = err(&t);
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.field.starts_with("providers.a.bulkhead"), "{e}");
        assert!(e.message.contains("invalid duration"), "{e}");
    }

    #[test]
    fn priority_classes_are_checked_where_they_are_written() {
        let with = |b: &str| GOOD.replace("models:", &format!("bulkhead: {b}\n    models:"));
        let e = err(&with(
            "{ max_concurrent: 4, queue: 1, classes: { urgent: { reserved: 1 } } }",
        ));
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.field.starts_with("providers.a.bulkhead"), "{e}");
        assert!(e.message.contains("critical, standard, batch"), "{e}");
        let e = err(&with(
            "{ max_concurrent: 4, queue: 1, classes: { critical: { reserved: 75% }, 150: { reserved: 2 } } }",
        ));
        assert_eq!(e.field, "providers.a.bulkhead.classes", "{e}");
        assert!(
            e.message
                .contains("reserve 5 slots in all, more than max_concurrent (4)"),
            "{e}"
        );
        let e = err(&with("{ max_concurrent: 4, queue: 1, shed: { target: 0s } }"));
        assert_eq!(e.field, "providers.a.bulkhead.shed.target", "{e}");
        let (c, _) = parse(
            &with(
                "{ max_concurrent: 4, queue: 1, classes: { critical: { reserved: 50% }, 150: { queue_timeout: 1s } } }",
            ),
            Path::new("t.yaml"),
        )
        .unwrap();
        let b = c.providers["a"].bulkhead.as_ref().unwrap();
        assert_eq!(b.classes[&Priority::CRITICAL].reserved.unwrap().of(4), 2);
        assert!(b.classes.contains_key(&Priority(150)));
    }

    #[test]
    fn duplicate_provider_name() {
        let t = GOOD.replace(
            "routes:",
            "  a:\n    url: http://127.0.0.1:1/v1\n    models: [x]\nroutes:",
        );
        let e = err(&t);
        assert_eq!(e.field, "providers.a");
        assert_eq!(e.line, Some(8));
        assert!(e.message.contains("duplicate"));
    }

    #[test]
    fn env_value_reaches_the_field_verbatim() {
        // YAML syntax inside a variable is data, never document structure.
        std::env::set_var("WEIR_TEST_KEY_YAMLISH", "a: b # c");
        std::env::set_var("WEIR_TEST_KEY_LINES", "x\ny: [1]");
        let t = GOOD.replace(
            "models:",
            "api_key: ${WEIR_TEST_KEY_YAMLISH}\n    forward_client_auth: false\n    models:",
        );
        let (c, _) = parse(&t, Path::new("t.yaml")).unwrap();
        assert_eq!(c.providers["a"].api_key.as_deref(), Some("a: b # c"));
        let t = GOOD.replace("models:", "api_key: \"k-${WEIR_TEST_KEY_LINES}\"\n    models:");
        let (c, _) = parse(&t, Path::new("t.yaml")).unwrap();
        assert_eq!(c.providers["a"].api_key.as_deref(), Some("k-x\ny: [1]"));
    }

    #[test]
    fn plugin_settings_stay_opaque_with_their_location() {
        let t = GOOD.replace(
            "routes:",
            "plugins:\n  p:\n    type: anything\n    colour: 3\n    bulkhead: { max_concurrent: 0, queue: 1 }\nroutes:",
        );
        let e = err(&t);
        assert_eq!(e.field, "plugins.p.bulkhead.max_concurrent", "{e}");
        let t = t.replace("max_concurrent: 0", "max_concurrent: 1");
        let (c, index) = parse(&t, Path::new("t.yaml")).unwrap();
        let p = &c.plugins["p"];
        assert_eq!(p.type_name, "anything");
        assert_eq!(p.settings.get("colour").and_then(|v| v.as_u64()), Some(3));
        assert!(
            p.settings.get("bulkhead").is_none(),
            "bulkhead is config's, not the plugin's"
        );
        let mut ck = Checker::new(Path::new("t.yaml"), &index);
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct S {
            colour: String,
        }
        assert!(ck
            .parse_at::<S>("plugins.p", serde_yaml_ng::Value::Mapping(p.settings.clone()))
            .is_none());
        assert_eq!(ck.errors[0].field, "plugins.p.colour");
        assert_eq!(ck.errors[0].line, Some(11), "{}", ck.errors[0]);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    const GOOD: &str = "server:\n  listen: [\"127.0.0.1:8080\"]\nproviders:\n  a:\n    url: http://127.0.0.1:9000/v1\n    models: { pub: up }\nplugins:\n  p: { type: rate_limit, requests: { per_second: 1, burst: 1 } }\nroutes:\n  - name: chat\n    plugins: [p]\n    providers: [a]\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000.max(ProptestConfig::default().cases)))]

        /// Any text: a config or located errors, never a panic.
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = parse(&text, Path::new("t.yaml"));
        }

        /// A good config with one character replaced: every error it gives
        /// names the file.
        #[test]
        fn a_damaged_config_gives_located_errors(at in 0..GOOD.len(), c in any::<char>()) {
            let mut text: Vec<char> = GOOD.chars().collect();
            let i = at % text.len();
            text[i] = c;
            let text: String = text.into_iter().collect();
            if let Err(e) = parse(&text, Path::new("t.yaml")) {
                prop_assert!(e.0.iter().all(|e| e.file == Path::new("t.yaml")));
                prop_assert!(!e.0.is_empty());
            }
        }
    }
}
