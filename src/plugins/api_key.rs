//! `api_key`: clients present a key (`Authorization: Bearer …`, `api-key` or
//! `x-api-key`); the keys file holds only SHA-256 digests, each with a name
//! and optional allowed models, routes and group (a team, for budgets), and
//! how bulkheads queue its requests: its priority class, whether a request
//! may pick its own class with `x-weir-priority`, and its weight for fair
//! shares. Comparison is constant-time.

use crate::bulkhead::Ticket;
use crate::config::Priority;
use crate::error::{ErrorKind, WeirError};
use crate::pipeline::{BuildCtx, BuildError, Flow, Identity, Phase, Phases, Plugin, RequestCtx, Typed};
use async_trait::async_trait;
use pingora_http::RequestHeader;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Plugin settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConf {
    pub keys_file: PathBuf,
}

/// The `api_key` plugin type.
pub static TYPE: Typed<ApiKeyConf> = Typed {
    name: "api_key",
    check: crate::pipeline::no_check,
    files: |c, b| vec![b.resolve(&c.keys_file)],
    build: |c, b| Ok(Arc::new(ApiKeys::load(c, b)?)),
};

/// The keys file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    /// Hex SHA-256 of the key.
    sha256: String,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    routes: Option<Vec<String>>,
    /// A group of keys (a team) that shares `per: group` budgets.
    #[serde(default)]
    group: Option<String>,
    /// Priority class in bulkhead queues: critical, standard, batch or 0-255.
    #[serde(default)]
    priority: Priority,
    /// A request may choose its class with the `x-weir-priority` header.
    #[serde(default)]
    priority_header: bool,
    /// Weight for fair shares of a bulkhead's slots and queue (at least 1).
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// The header a request picks its priority class with, when its key allows.
pub const PRIORITY_HEADER: &str = "x-weir-priority";

struct Key {
    digest: [u8; 32],
    identity: Identity,
    routes: Option<Vec<String>>,
    priority_header: bool,
}

/// The loaded keys, bucketed by a digest prefix so a lookup compares only a
/// few full digests, each in constant time.
pub struct ApiKeys {
    buckets: HashMap<u64, Vec<Key>>,
}

fn parse_keys_file(path: &Path) -> Result<KeysFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read keys file {}: {e}", path.display()))?;
    let file: KeysFile = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    // A name is the key's identity: rate-limit buckets, cache entries and
    // logs are per name, so two keys under one name would share them.
    let mut names = std::collections::HashSet::new();
    for (i, k) in file.keys.iter().enumerate() {
        if !names.insert(k.name.as_str()) {
            return Err(format!(
                "{}: keys[{i}]: the name '{}' is used by more than one key; names must be unique",
                path.display(),
                k.name
            ));
        }
        if k.weight == 0 {
            return Err(format!(
                "{}: keys[{i}] ({}): weight must be at least 1",
                path.display(),
                k.name
            ));
        }
        let ok = k.sha256.len() == 64 && k.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(format!(
                "{}: keys[{i}] ({}): sha256 must be 64 hex digits",
                path.display(),
                k.name
            ));
        }
    }
    Ok(file)
}

/// SHA-256 hex of a key, as the keys file stores it.
pub fn digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    /// Read the keys file (errors are about `keys_file`).
    pub fn load(c: &ApiKeyConf, b: &BuildCtx) -> Result<ApiKeys, BuildError> {
        let file = parse_keys_file(&b.resolve(&c.keys_file)).map_err(|e| ("keys_file", e))?;
        let mut buckets: HashMap<u64, Vec<Key>> = HashMap::new();
        for k in file.keys {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&k.sha256, &mut digest).map_err(|e| ("keys_file", format!("{}: {e}", k.name)))?;
            let key = Key {
                digest,
                identity: Identity {
                    name: k.name.into(),
                    models: k.models.map(Arc::from),
                    group: k.group.map(Arc::from),
                    priority: k.priority,
                    weight: k.weight,
                },
                routes: k.routes,
                priority_header: k.priority_header,
            };
            buckets.entry(prefix(&digest)).or_default().push(key);
        }
        Ok(ApiKeys { buckets })
    }

    fn find(&self, presented: &str) -> Option<&Key> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let bucket = self.buckets.get(&prefix(&digest))?;
        bucket.iter().find(|k| bool::from(k.digest.ct_eq(&digest)))
    }
}

fn prefix(d: &[u8; 32]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The key a client presented, from the usual headers.
fn presented_key(req: &RequestHeader) -> Option<&str> {
    if let Some(v) = req.headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if let Some(k) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")) {
            return Some(k.trim());
        }
    }
    for h in ["api-key", "x-api-key"] {
        if let Some(v) = req.headers.get(h).and_then(|v| v.to_str().ok()) {
            return Some(v.trim());
        }
    }
    None
}

#[async_trait]
impl Plugin for ApiKeys {
    /// A lookup in memory: never waits. The body phase only checks a key's
    /// allowed models, so it runs only if some key has them.
    fn phases(&self) -> Phases {
        let models = self.buckets.values().flatten().any(|k| k.identity.models.is_some());
        Phases {
            request_headers: Phase::Run,
            request_body: if models { Phase::Run } else { Phase::Skip },
            response_headers: Phase::Skip,
        }
    }

    async fn request_headers(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        let Some(presented) = presented_key(req) else {
            return Err(WeirError::new(
                ErrorKind::Authentication,
                "missing API key: send 'Authorization: Bearer <key>'",
            ));
        };
        let Some(key) = self.find(presented) else {
            return Err(WeirError::new(ErrorKind::Authentication, "unknown API key"));
        };
        if let Some(routes) = &key.routes {
            let route = ctx.route_name();
            if !routes.iter().any(|r| r == route) {
                return Err(WeirError::new(
                    ErrorKind::Permission,
                    format!("key '{}' may not use route '{route}'", key.identity.name),
                ));
            }
        }
        let mut class = key.identity.priority;
        if key.priority_header {
            if let Some(v) = req.headers.get(PRIORITY_HEADER) {
                class = v
                    .to_str()
                    .map_err(|_| "not text".to_string())
                    .and_then(Priority::parse)
                    .map_err(|e| WeirError::invalid(format!("header {PRIORITY_HEADER}: {e}")))?;
            }
        }
        ctx.ticket = Ticket {
            class,
            tenant: Some(key.identity.name.clone()),
            weight: key.identity.weight,
        };
        ctx.identity = Some(key.identity.clone());
        Ok(Flow::Continue)
    }

    async fn request_body(&self, ctx: &mut RequestCtx) -> Result<Flow, WeirError> {
        if let (Some(id), Some(head)) = (&ctx.identity, &ctx.head) {
            if let Some(models) = &id.models {
                if !models.iter().any(|m| m == &head.model) {
                    return Err(WeirError::new(
                        ErrorKind::Permission,
                        format!("key '{}' may not use model '{}'", id.name, head.model),
                    )
                    .with_param("model"));
                }
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin built from a keys file with this text.
    fn load_keys(file: String) -> ApiKeys {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.yaml"), file).unwrap();
        let conf = ApiKeyConf {
            keys_file: "keys.yaml".into(),
        };
        let b = BuildCtx {
            name: "keys".into(),
            bulkhead: crate::config::BulkheadConf::PLUGIN_DEFAULT,
            source: dir.path().join("weir.yaml"),
        };
        ApiKeys::load(&conf, &b).map_err(|e| e.1).unwrap()
    }

    #[test]
    fn finds_key_by_digest_only() {
        let keys = load_keys(format!(
            "keys:\n  - name: alice\n    sha256: {}\n    models: [m1]\n    group: team-a\n  - name: bob\n    sha256: {}\n",
            digest_hex("sk-alice"),
            digest_hex("sk-bob")
        ));
        let alice = &keys.find("sk-alice").unwrap().identity;
        assert_eq!((&*alice.name, alice.group.as_deref()), ("alice", Some("team-a")));
        assert_eq!(keys.find("sk-bob").unwrap().identity.group, None);
        assert!(keys.find("sk-carol").is_none());
        assert!(keys.find("").is_none());
    }

    #[test]
    fn the_body_phase_runs_only_if_a_key_has_models() {
        let load = |file: String| load_keys(file).phases();
        let open = load(format!("keys:\n  - name: a\n    sha256: {}\n", digest_hex("a")));
        assert!(
            open.request_headers != Phase::Skip
                && open.request_body == Phase::Skip
                && open.response_headers == Phase::Skip
        );
        let limited = load(format!(
            "keys:\n  - name: a\n    sha256: {}\n  - name: b\n    sha256: {}\n    models: [m1]\n",
            digest_hex("a"),
            digest_hex("b")
        ));
        assert!(limited.request_headers != Phase::Skip && limited.request_body != Phase::Skip);
        // A lookup in memory never waits: no slot in either phase.
        assert!(limited.request_headers != Phase::Wait && limited.request_body != Phase::Wait);
    }

    #[test]
    fn duplicate_names_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(
            &path,
            format!(
                "keys:\n  - name: alice\n    sha256: {}\n  - name: bob\n    sha256: {}\n  - name: alice\n    sha256: {}\n",
                digest_hex("a"),
                digest_hex("b"),
                digest_hex("c")
            ),
        )
        .unwrap();
        let e = parse_keys_file(&path).unwrap_err();
        assert!(
            e.contains("keys.yaml") && e.contains("keys[2]") && e.contains("'alice'"),
            "{e}"
        );
    }

    #[test]
    fn bad_digest_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, "keys:\n  - name: a\n    sha256: xyz\n").unwrap();
        assert!(parse_keys_file(&path).unwrap_err().contains("64 hex digits"));
    }

    #[test]
    fn presented_key_headers() {
        let mut r = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        assert_eq!(presented_key(&r), None);
        r.insert_header("x-api-key", "k1").unwrap();
        assert_eq!(presented_key(&r), Some("k1"));
        r.insert_header("authorization", "Bearer k2").unwrap();
        assert_eq!(presented_key(&r), Some("k2"));
    }
}
