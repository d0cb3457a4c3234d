//! One immutable, fully built value per config generation: routes, providers
//! and plugin instances. The [`Gateway`] holds the current one behind an
//! atomic pointer; a request keeps the generation it started with.

use crate::config::locate::LineIndex;
use crate::config::{self, Config, ConfigErrors, MatchConf};
use crate::plugins::{self, PluginInstance};
use crate::provider::{self, Provider};
use arc_swap::ArcSwap;
use indexmap::IndexMap;
use pingora_http::RequestHeader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A route as it serves requests.
pub struct Route {
    pub name: String,
    pub matcher: MatchConf,
    methods: Vec<http::Method>,
    pub plugins: Vec<Arc<PluginInstance>>,
    pub providers: Vec<Arc<Provider>>,
    pub retries: u32,
    /// Public model names this route serves, in config order, unique.
    pub models: Vec<(String, String)>,
}

impl Route {
    /// Does this route take the request?
    pub fn matches(&self, req: &RequestHeader) -> bool {
        let path = req.uri.path();
        if let Some(p) = &self.matcher.path {
            if path != p {
                return false;
            }
        }
        if let Some(p) = &self.matcher.path_prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        if !self.methods.is_empty() && !self.methods.contains(&req.method) {
            return false;
        }
        self.matcher.headers.iter().all(|(k, v)| {
            req.headers
                .get(k.as_str())
                .is_some_and(|h| h.as_bytes() == v.as_bytes())
        })
    }

    /// Providers that serve `model`, in route order.
    pub fn candidates(&self, model: &str) -> Vec<Arc<Provider>> {
        self.providers
            .iter()
            .filter(|p| p.upstream_model(model).is_some())
            .cloned()
            .collect()
    }
}

/// Everything a config generation serves with.
pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub routes: Vec<Route>,
    pub providers: IndexMap<String, Arc<Provider>>,
    pub plugins: IndexMap<String, Arc<PluginInstance>>,
    pub max_request_body: usize,
}

impl Runtime {
    /// Compile a checked config. Unchanged providers and plugins of
    /// `previous` are carried over by name and definition.
    pub fn build(
        config: Config,
        index: &LineIndex,
        generation: u64,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, ConfigErrors> {
        let mut ck = config::Checker::new(&config.source, index);
        let mut providers = IndexMap::new();
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
        let mut plugins = IndexMap::new();
        for (name, conf) in &config.plugins {
            let prev = previous.and_then(|p| p.plugins.get(name));
            match plugins::build(name, conf, &config, prev) {
                Ok(p) => {
                    plugins.insert(name.clone(), p);
                }
                Err(e) => ck.error(format!("plugins.{name}"), e),
            }
        }
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
                Route {
                    name: r.name.clone(),
                    methods: r
                        .matcher
                        .methods
                        .iter()
                        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                        .collect(),
                    matcher: r.matcher.clone(),
                    plugins: r.plugins.iter().map(|p| plugins[p].clone()).collect(),
                    providers,
                    retries: r.retries,
                    models,
                }
            })
            .collect();
        Ok(Runtime {
            generation,
            max_request_body: config.server.max_request_body.0 as usize,
            config: Arc::new(config),
            routes,
            providers,
            plugins,
        })
    }

    /// The first route whose match holds.
    pub fn route_for(&self, req: &RequestHeader) -> Option<usize> {
        self.routes.iter().position(|r| r.matches(req))
    }
}

/// Process-wide state that outlives config generations.
pub struct Gateway {
    pub config_path: PathBuf,
    current: ArcSwap<Runtime>,
    generation: AtomicU64,
}

impl Gateway {
    /// Load, check and build the config at `path` as generation 1.
    pub fn start(path: &Path) -> Result<Arc<Gateway>, ConfigErrors> {
        let (config, index) = config::load(path)?;
        let rt = Runtime::build(config, &index, 1, None)?;
        crate::metrics::CONFIG_GENERATION.set(1);
        Ok(Arc::new(Gateway {
            config_path: path.to_path_buf(),
            current: ArcSwap::from_pointee(rt),
            generation: AtomicU64::new(1),
        }))
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Re-read the config and swap it in whole, or change nothing.
    pub fn reload(&self) -> Result<u64, ConfigErrors> {
        let result = config::load(&self.config_path).and_then(|(config, index)| {
            let old = self.current.load_full();
            let next = self.generation.load(Ordering::SeqCst) + 1;
            Runtime::build(config, &index, next, Some(&old))
        });
        match result {
            Ok(rt) => {
                let g = rt.generation;
                self.generation.store(g, Ordering::SeqCst);
                self.current.store(Arc::new(rt));
                crate::metrics::CONFIG_RELOADS.with_label_values(&["ok"]).inc();
                crate::metrics::CONFIG_GENERATION.set(g as i64);
                log::info!("config reloaded: generation {g}");
                Ok(g)
            }
            Err(e) => {
                crate::metrics::CONFIG_RELOADS.with_label_values(&["error"]).inc();
                log::error!("config reload failed, still serving the old config:\n{e}");
                Err(e)
            }
        }
    }
}
