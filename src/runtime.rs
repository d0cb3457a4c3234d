//! One immutable, fully built value per config generation: routes, providers
//! and plugin instances. Building one does all the I/O a config implies
//! (keys files, CA files, wasm modules, name resolution), reports what fails
//! as located config errors, and carries unchanged providers and plugins
//! (with their state) over from the previous generation. The [`Gateway`]
//! holds the current generation behind an atomic pointer; a request keeps
//! the generation it started with.

use crate::access_log::AccessLog;
use crate::config::locate::LineIndex;
use crate::config::{self, Checker, Config, ConfigErrors, PluginConf};
use crate::pipeline::{PluginInstance, Route, Settings};
use crate::plugins;
use crate::provider::{self, Provider, Providers};
use crate::trace::Tracing;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use pingora_http::RequestHeader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Everything a config generation serves with.
pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub routes: Vec<Arc<Route>>,
    pub providers: Arc<Providers>,
    pub plugins: indexmap::IndexMap<String, Arc<PluginInstance>>,
    pub max_request_body: usize,
    pub client_timeouts: config::ClientTimeouts,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `access_log:`, kept across reloads while its settings are unchanged.
    pub access_log: Option<Arc<AccessLog>>,
    /// `tracing:`, kept across reloads while its settings are unchanged.
    pub tracing: Option<Arc<Tracing>>,
}

/// A section that opens something (a file and its writer, an exporter):
/// the previous generation's, kept while its settings are unchanged, or a
/// new one (a failure is a config error at `field`).
fn kept_or_opened<C, T>(
    conf: Option<&C>,
    previous: Option<Arc<T>>,
    is_for: impl Fn(&T, &C) -> bool,
    open: impl Fn(&C) -> Result<T, String>,
    (field, ck): (&str, &mut Checker),
) -> Option<Arc<T>> {
    let c = conf?;
    if let Some(kept) = previous.filter(|t| is_for(t, c)) {
        return Some(kept);
    }
    match open(c) {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            ck.error(field, e);
            None
        }
    }
}

/// HTTP methods as config names them (checked already).
fn methods(names: &[String]) -> Vec<http::Method> {
    names
        .iter()
        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .collect()
}

/// SHA-256 of each file (`None`: unreadable).
fn digests(files: Vec<PathBuf>) -> Vec<(PathBuf, Option<[u8; 32]>)> {
    use sha2::{Digest, Sha256};
    files
        .into_iter()
        .map(|f| {
            let d = std::fs::read(&f).ok().map(|b| Sha256::digest(&b).into());
            (f, d)
        })
        .collect()
}

/// Parse and build one plugin through its type's factory. An instance of
/// the previous generation with the same entry, built from the same file
/// contents, is reused whole, so its state carries over.
fn build_plugin(
    name: &str,
    conf: &PluginConf,
    source: &Path,
    previous: Option<&Arc<PluginInstance>>,
    ck: &mut Checker,
) -> Option<Arc<PluginInstance>> {
    let at = format!("plugins.{name}");
    let Some(kind) = plugins::find(&conf.type_name) else {
        let known: Vec<String> = plugins::registry().iter().map(|t| format!("`{}`", t.name())).collect();
        ck.error(
            format!("{at}.type"),
            format!(
                "unknown variant `{}`, expected one of {}",
                conf.type_name,
                known.join(", ")
            ),
        );
        return None;
    };
    let value = serde_yaml_ng::Value::Mapping(conf.settings.clone());
    let settings = Settings {
        name,
        at: &at,
        value: &value,
        bulkhead: conf.bulkhead(),
        source,
    };
    let spec = kind.parse(&settings, ck)?;
    let files = digests(spec.files());
    if let Some(p) = previous {
        if &p.conf == conf && p.files == files && files.iter().all(|(_, d)| d.is_some()) {
            return Some(p.clone());
        }
    }
    let plugin = spec.build(&at, ck)?;
    let bulkhead = provider::bulkhead(
        format!("plugin:{name}"),
        &conf.bulkhead(),
        previous.map(|p| &p.bulkhead),
    );
    Some(Arc::new(PluginInstance {
        name: name.to_string(),
        conf: conf.clone(),
        capabilities: plugin.capabilities(),
        phases: plugin.phases(),
        plugin,
        bulkhead,
        files,
    }))
}

impl Runtime {
    /// Build a checked config. Unchanged providers and plugins of
    /// `previous` are carried over by name and definition.
    pub fn build(
        config: Config,
        index: &LineIndex,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, ConfigErrors> {
        let mut ck = Checker::new(&config.source, index);
        let mut providers = Providers::new();
        for (name, conf) in &config.providers {
            let ca = match &conf.tls.ca_file {
                Some(f) => match provider::load_ca(&ck.resolve(f)) {
                    Ok(ca) => Some(ca),
                    Err(e) => {
                        ck.error(format!("providers.{name}.tls.ca_file"), e);
                        continue;
                    }
                },
                None => None,
            };
            let prev = previous.and_then(|p| p.providers.get(name)).map(|p| p.as_ref());
            match Provider::build(name, conf, ca, prev) {
                Ok(p) => {
                    providers.insert(name.clone(), Arc::new(p));
                }
                Err(e) => ck.error(format!("providers.{name}.url"), e),
            }
        }
        let mut plugins = indexmap::IndexMap::new();
        for (name, conf) in &config.plugins {
            let prev = previous.and_then(|p| p.plugins.get(name));
            if let Some(p) = build_plugin(name, conf, &config.source, prev, &mut ck) {
                plugins.insert(name.clone(), p);
            }
        }
        let access_log = kept_or_opened(
            config.access_log.as_ref(),
            previous.and_then(|p| p.access_log.clone()),
            AccessLog::is_for,
            AccessLog::open,
            ("access_log.to", &mut ck),
        );
        let tracing = kept_or_opened(
            config.tracing.as_ref(),
            previous.and_then(|p| p.tracing.clone()),
            Tracing::is_for,
            crate::trace::export::start,
            ("tracing.endpoint", &mut ck),
        );
        if !ck.errors.is_empty() {
            return Err(ConfigErrors(ck.errors));
        }
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let providers: Vec<Arc<Provider>> = r.providers.iter().map(|p| providers[p].clone()).collect();
                let mut models: Vec<(String, String)> = Vec::new();
                for p in &providers {
                    for (public, _) in p.conf.models.pairs() {
                        if !models.iter().any(|(m, _)| *m == public) {
                            models.push((public, p.name.clone()));
                        }
                    }
                }
                let chain: Vec<Arc<PluginInstance>> = r.plugins.iter().map(|p| plugins[p].clone()).collect();
                Arc::new(Route {
                    name: r.name.clone(),
                    methods: methods(&r.matcher.methods),
                    matcher: r.matcher.clone(),
                    stream_usage: chain.iter().any(|p| p.capabilities.stream_usage),
                    plugins: chain,
                    served: providers.iter().map(|_| Default::default()).collect(),
                    providers,
                    retry: r.retry_policy(),
                    context_fallbacks: r.context_fallbacks.clone(),
                    models,
                    passthrough: r
                        .passthrough
                        .iter()
                        .map(|p| (p.path_prefix.clone(), methods(&p.methods)))
                        .collect(),
                })
            })
            .collect();
        let providers = Arc::new(providers);
        for p in plugins.values() {
            p.plugin.providers_ready(generation, &providers);
        }
        Ok(Runtime {
            generation,
            max_request_body: config.server.max_request_body.0 as usize,
            client_timeouts: config.server.timeouts,
            max_connections: config.server.max_connections,
            access_log,
            tracing,
            config: Arc::new(config),
            routes,
            providers,
            plugins,
        })
    }

    /// The first route whose match holds.
    pub fn route_for(&self, req: &RequestHeader) -> Option<Arc<Route>> {
        self.routes.iter().find(|r| r.matches(req)).cloned()
    }
}

/// The outcome of the last reload, for `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    pub generation: u64,
    pub errors: Vec<String>,
    /// Changes that only a binary upgrade (`weir serve --upgrade`) can apply.
    pub needs_upgrade: Vec<String>,
}

/// Process-wide state that outlives config generations.
pub struct Gateway {
    pub config_path: PathBuf,
    current: ArcSwap<Runtime>,
    generation: AtomicU64,
    /// One reload at a time (file watch, SIGHUP and the admin API may race).
    reloading: Mutex<()>,
    last_reload: Mutex<Option<ReloadStatus>>,
    /// What the watched files looked like when last loaded, so a watcher
    /// does not reload again for a change a reload already picked up.
    loaded: Mutex<FileStamps>,
    /// The config the process started with: listeners and threads stay as it
    /// set them until a binary upgrade.
    started_with: Arc<Config>,
}

/// Modification time and length of files (`None` = missing).
pub type FileStamps = std::collections::HashMap<PathBuf, Option<(std::time::SystemTime, u64)>>;

/// Stamp `files` now.
pub fn file_stamps(files: &[PathBuf]) -> FileStamps {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            (f.clone(), m)
        })
        .collect()
}

impl Gateway {
    /// Load, check and build the config at `path` as generation 1.
    pub fn start(path: &Path) -> Result<Arc<Gateway>, ConfigErrors> {
        let (config, index) = config::load(path)?;
        let rt = Runtime::build(config, &index, 1, None)?;
        let stamps = file_stamps(&rt.watched_files());
        let started_with = rt.config.clone();
        crate::metrics::CONFIG_GENERATION.set(1);
        Ok(Arc::new(Gateway {
            config_path: path.to_path_buf(),
            current: ArcSwap::from_pointee(rt),
            generation: AtomicU64::new(1),
            reloading: Mutex::new(()),
            last_reload: Mutex::new(None),
            loaded: Mutex::new(stamps),
            started_with,
        }))
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Re-read the config, build the new generation beside the old one and
    /// swap it in whole, or change nothing. Blocking: call it off the async
    /// runtime (a reload compiles wasm and resolves names).
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.reloading.lock();
        let old = self.current.load_full();
        *self.loaded.lock() = file_stamps(&old.watched_files());
        let result = config::load(&self.config_path).and_then(|(config, index)| {
            let next = self.generation.load(Ordering::SeqCst) + 1;
            Runtime::build(config, &index, next, Some(&old))
        });
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match result {
            Ok(rt) => {
                let g = rt.generation;
                let needs_upgrade = upgrade_only_changes(&self.started_with, &rt.config);
                for change in &needs_upgrade {
                    log::warn!("config change not applied until a binary upgrade (weir serve --upgrade): {change}");
                }
                self.generation.store(g, Ordering::SeqCst);
                *self.loaded.lock() = file_stamps(&rt.watched_files());
                self.current.store(Arc::new(rt));
                crate::metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
                crate::metrics::CONFIG_GENERATION.set(g as i64);
                log::info!("config reloaded: generation {g}");
                *self.last_reload.lock() = Some(ReloadStatus {
                    at,
                    ok: true,
                    generation: g,
                    errors: Vec::new(),
                    needs_upgrade,
                });
                Ok(g)
            }
            Err(e) => {
                crate::metrics::CONFIG_RELOADS.with_label_values(&["error"]).inc();
                log::error!(
                    "config reload failed, still serving generation {}:\n{e}",
                    old.generation
                );
                *self.last_reload.lock() = Some(ReloadStatus {
                    at,
                    ok: false,
                    generation: old.generation,
                    errors: e.0.iter().map(|e| e.to_string()).collect(),
                    needs_upgrade: Vec::new(),
                });
                Err(e)
            }
        }
    }

    /// The watched files as the last reload (or start) saw them.
    pub fn loaded_stamps(&self) -> FileStamps {
        self.loaded.lock().clone()
    }

    /// The last reload's outcome, if there was one.
    pub fn last_reload(&self) -> Option<ReloadStatus> {
        self.last_reload.lock().clone()
    }
}

/// Settings Pingora cannot change in a running process.
fn upgrade_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push(format!(
            "server.listen {:?} -> {:?}",
            old.server.listen, new.server.listen
        ));
    }
    if old.server.threads != new.server.threads {
        out.push(format!(
            "server.threads {} -> {}",
            old.server.threads, new.server.threads
        ));
    }
    let admin = |c: &Config| c.admin.as_ref().map(|a| a.listen.clone());
    if admin(old) != admin(new) {
        out.push(format!("admin.listen {:?} -> {:?}", admin(old), admin(new)));
    }
    out
}

impl Runtime {
    /// Files whose change should trigger a reload: the config and every file it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let src = &self.config.source;
        let mut files = vec![src.clone()];
        for p in self.plugins.values() {
            files.extend(p.files.iter().map(|(f, _)| f.clone()));
        }
        for p in self.config.providers.values() {
            if let Some(ca) = &p.tls.ca_file {
                files.push(config::resolve_relative(src, ca));
            }
        }
        files
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "server:\n  listen: [\"127.0.0.1:8080\"]\nproviders:\n  a:\n    url: http://127.0.0.1:9000/v1\n    models: { pub: up }\nplugins:\n  p: { type: rate_limit, key: header:x-t, requests: { per_second: 1, burst: 1 } }\n  b: { type: circuit_breaker, failure_rate: 0.5 }\n  c: { type: cache, ttl: 1m }\nroutes:\n  - name: chat\n    plugins: [p, b, c]\n    providers: [a]\n";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000.max(ProptestConfig::default().cases)))]

        /// The whole load, plugin settings through their factories included:
        /// a good config with one character replaced builds, or gives located
        /// errors; never a panic.
        #[test]
        fn a_damaged_config_loads_or_names_its_errors(at in 0..GOOD.len(), c in any::<char>()) {
            let mut text: Vec<char> = GOOD.chars().collect();
            let i = at % text.len();
            text[i] = c;
            let text: String = text.into_iter().collect();
            let file = Path::new("t.yaml");
            let built = config::parse(&text, file).and_then(|(cfg, index)| Runtime::build(cfg, &index, 1, None));
            if let Err(e) = built {
                prop_assert!(!e.0.is_empty());
                prop_assert!(e.0.iter().all(|e| e.file == file));
            }
        }
    }
}
