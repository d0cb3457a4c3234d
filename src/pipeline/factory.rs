//! How config becomes plugin instances, as in Envoy's filter factories: a
//! [`PluginType`] is registered by name (`plugins::registry`), parses its own
//! settings into a [`PluginSpec`] (errors located by field path), and the
//! spec builds the instance, doing whatever I/O that takes. `weir check`,
//! start and reload all go through the same two steps.

use super::plugin::Plugin;
use crate::config::{resolve_relative, BulkheadConf, Checker};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin type, registered by name.
pub trait PluginType: Send + Sync {
    /// The `type:` a config entry names.
    fn name(&self) -> &'static str;

    /// Parse and check this type's own settings. Errors go to `ck`, named by
    /// full field path (`plugins.NAME.FIELD`); `None` when there was any.
    fn parse(&self, settings: &Settings<'_>, ck: &mut Checker) -> Option<Box<dyn PluginSpec>>;
}

/// A plugin entry as its type sees it.
pub struct Settings<'a> {
    /// The plugin's name in config.
    pub name: &'a str,
    /// Its field path: `plugins.NAME`.
    pub at: &'a str,
    /// Its own settings: every field of its entry but `type` and `bulkhead`.
    pub value: &'a serde_yaml_ng::Value,
    pub bulkhead: BulkheadConf,
    /// The config file, for paths relative to it.
    pub source: &'a Path,
}

/// Parsed settings, ready to build an instance.
pub trait PluginSpec: Send {
    /// Files the instance is made from (keys, a wasm module): the build reads
    /// them, the reloader watches them, and an unchanged instance is kept
    /// across a reload only if their contents are unchanged too.
    fn files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Build the instance; all I/O happens here (read files, compile
    /// modules). Errors go to `ck` under `at`.
    fn build(self: Box<Self>, at: &str, ck: &mut Checker) -> Option<Arc<dyn Plugin>>;
}

/// What a build may use besides the plugin's own settings.
#[derive(Debug, Clone)]
pub struct BuildCtx {
    pub name: String,
    pub bulkhead: BulkheadConf,
    /// The config file.
    pub source: PathBuf,
}

impl BuildCtx {
    /// A path named in config, resolved as config paths are.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_relative(&self.source, p)
    }
}

/// An error building an instance: the field it is about (within the
/// plugin's entry; `""` for the entry itself) and what went wrong.
pub type BuildError = (&'static str, String);

/// Builds an instance of a [`Typed`] plugin type.
pub type BuildFn<C> = fn(&C, &BuildCtx) -> Result<Arc<dyn Plugin>, BuildError>;

/// A plugin type whose settings are one serde type `C` (every built-in one).
pub struct Typed<C> {
    pub name: &'static str,
    /// Checks of values beyond their types; no I/O.
    pub check: fn(&C, &str, &mut Checker),
    /// Files the instance is built from.
    pub files: fn(&C, &BuildCtx) -> Vec<PathBuf>,
    pub build: BuildFn<C>,
}

/// No checks beyond the types.
pub fn no_check<C>(_: &C, _: &str, _: &mut Checker) {}

/// No files.
pub fn no_files<C>(_: &C, _: &BuildCtx) -> Vec<PathBuf> {
    Vec::new()
}

impl<C: DeserializeOwned + Send + 'static> PluginType for Typed<C> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn parse(&self, s: &Settings<'_>, ck: &mut Checker) -> Option<Box<dyn PluginSpec>> {
        let conf: C = ck.parse_at(s.at, s.value.clone())?;
        let before = ck.errors.len();
        (self.check)(&conf, s.at, ck);
        if ck.errors.len() > before {
            return None;
        }
        Some(Box::new(TypedSpec {
            conf,
            ctx: BuildCtx {
                name: s.name.to_string(),
                bulkhead: s.bulkhead.clone(),
                source: s.source.to_path_buf(),
            },
            files: self.files,
            build: self.build,
        }))
    }
}

struct TypedSpec<C> {
    conf: C,
    ctx: BuildCtx,
    files: fn(&C, &BuildCtx) -> Vec<PathBuf>,
    build: BuildFn<C>,
}

impl<C: Send> PluginSpec for TypedSpec<C> {
    fn files(&self) -> Vec<PathBuf> {
        (self.files)(&self.conf, &self.ctx)
    }

    fn build(self: Box<Self>, at: &str, ck: &mut Checker) -> Option<Arc<dyn Plugin>> {
        match (self.build)(&self.conf, &self.ctx) {
            Ok(p) => Some(p),
            Err(("", e)) => {
                ck.error(at, e);
                None
            }
            Err((field, e)) => {
                ck.error(format!("{at}.{field}"), e);
                None
            }
        }
    }
}
