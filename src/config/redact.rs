//! The config as the admin API shows it (`GET /config`): every credential
//! replaced by [`REDACTED`]. Plugin settings are opaque YAML, so secrets are
//! found by rule, not by schema:
//!
//! - a field whose name looks secret ([`secret_name`]) has its value
//!   replaced, whatever it holds (booleans and nulls are kept: they cannot
//!   carry a credential);
//! - in every string, a URL's user-info (`redis://user:pass@host`) and the
//!   values of query parameters with secret-looking names are replaced;
//! - a wasm plugin's `config` is replaced whole: it is the filter's own data,
//!   and weir cannot tell which part of it is a credential.

use super::schema::Config;
use serde_json::Value;
use std::borrow::Cow;

/// What a credential is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Words that, as the last word of a field name, mark its value secret.
/// `tokens` (plural) is deliberately absent: in an LLM gateway it counts
/// LLM tokens (`rate_limit`'s `tokens`, `default_max_tokens`).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwords",
    "passwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "key",
    "keys",
    "apikey",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "cookie",
];

/// The config as JSON with every credential redacted.
pub fn redacted(c: &Config) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if let Some(plugins) = v.get_mut("plugins").and_then(Value::as_object_mut) {
        for p in plugins.values_mut() {
            if p.get("type").and_then(Value::as_str) == Some("wasm") {
                if let Some(cfg) = p.get_mut("config") {
                    *cfg = Value::String(REDACTED.into());
                }
            }
        }
    }
    redact_value(&mut v);
    v
}

/// Redact a JSON value in place by the rules of this module.
pub fn redact_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(r) = redact_urls(s) {
                *s = r;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact_value),
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if secret_name(k) && !matches!(v, Value::Bool(_) | Value::Null) {
                    *v = Value::String(REDACTED.into());
                } else {
                    redact_value(v);
                }
            }
        }
        _ => {}
    }
}

/// Whether a field (or query parameter) name looks like it holds a secret:
/// split into words at `_`, `-`, `.`, spaces and lower→upper case changes,
/// its last word, lowercased, is one of [`SECRET_WORDS`]. So `api_key`,
/// `x-api-key`, `secretKey`, `auth_token`, `client_secret`, `password`,
/// `key` match; `keys_file`, `key_by`, `tokens`, `max_tokens` do not.
pub fn secret_name(name: &str) -> bool {
    let mut last = String::new();
    let mut prev_lower = false;
    for ch in name.chars() {
        if !ch.is_alphanumeric() {
            last.clear();
            prev_lower = false;
            continue;
        }
        if ch.is_uppercase() && prev_lower {
            last.clear();
        }
        prev_lower = ch.is_lowercase() || ch.is_ascii_digit();
        last.extend(ch.to_lowercase());
    }
    SECRET_WORDS.contains(&last.as_str())
}

/// Replace the user-info of every URL in `s` (`scheme://USER:PASS@host` →
/// `scheme://<redacted>@host`) and the values of its secret-looking query
/// parameters. Borrowed when there was nothing to redact.
pub fn redact_urls(s: &str) -> Cow<'_, str> {
    if !s.contains("://") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        // The URL runs to the next whitespace (or quote) or to the end.
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(rest.len());
        let (url, after) = rest.split_at(end);
        let auth_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(auth_end);
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        match redact_query(path) {
            Cow::Borrowed(p) => out.push_str(p),
            Cow::Owned(p) => {
                out.push_str(&p);
                changed = true;
            }
        }
        rest = after;
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// `path?a=1&password=x#f` → `path?a=1&password=<redacted>#f`.
fn redact_query(path: &str) -> Cow<'_, str> {
    let Some(q) = path.find('?') else {
        return Cow::Borrowed(path);
    };
    let frag = path[q..].find('#').map_or(path.len(), |f| q + f);
    let query = &path[q + 1..frag];
    if !query
        .split('&')
        .any(|kv| kv.split_once('=').is_some_and(|(k, _)| secret_name(k)))
    {
        return Cow::Borrowed(path);
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret_name(k) => format!("{k}={REDACTED}"),
            _ => kv.to_string(),
        })
        .collect();
    Cow::Owned(format!("{}?{}{}", &path[..q], pairs.join("&"), &path[frag..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_names() {
        for n in [
            "api_key",
            "x-api-key",
            "apiKey",
            "ApiKey",
            "secretKey",
            "auth_token",
            "client_secret",
            "password",
            "PASSWORD",
            "key",
            "token",
            "authorization",
            "basic_auth",
            "db.passwd",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in [
            "keys_file",
            "key_by",
            "tokens",
            "max_tokens",
            "default_max_tokens",
            "store",
            "url",
            "keyboard",
            "monkey",
            "token_limit",
            "",
        ] {
            assert!(!secret_name(n), "{n}");
        }
    }

    #[test]
    fn urls_lose_user_info_and_secret_query_values() {
        assert_eq!(
            redact_urls("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            redact_urls("https://user:p%40ss@a.example/v1?x=1&api_key=sk-1#f"),
            "https://<redacted>@a.example/v1?x=1&api_key=<redacted>#f"
        );
        assert_eq!(
            redact_urls("a redis://u@h/0 and amqp://x:y@q:5672"),
            "a redis://<redacted>@h/0 and amqp://<redacted>@q:5672"
        );
        // Nothing to hide: the same string, not a copy.
        assert!(matches!(redact_urls("http://127.0.0.1:9000/v1?a=b"), Cow::Borrowed(_)));
        assert!(matches!(redact_urls("memory"), Cow::Borrowed(_)));
        // An '@' in the path is not user-info.
        assert_eq!(redact_urls("http://h/p@x"), "http://h/p@x");
    }

    #[test]
    fn values_redacted_by_name_in_any_depth() {
        let mut v = json!({
            "a": { "password": 1234, "list": [{ "token": "t" }, "redis://u:p@h"] },
            "forward_client_auth": false,
            "tokens": { "per_minute": 10 },
            "key": { "nested": "x" },
        });
        redact_value(&mut v);
        assert_eq!(
            v,
            json!({
                "a": { "password": REDACTED, "list": [{ "token": REDACTED }, "redis://<redacted>@h"] },
                "forward_client_auth": false,
                "tokens": { "per_minute": 10 },
                "key": REDACTED,
            })
        );
    }
}
