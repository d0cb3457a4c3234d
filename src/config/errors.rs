//! Located config errors (`FILE:LINE: FIELD: message`) and the [`Checker`]
//! that collects them, for config's own checks and for plugin factories.

use super::locate::LineIndex;
use serde::de::DeserializeOwned;
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found in a config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects located errors while a parsed config is checked or built.
pub struct Checker<'a> {
    file: &'a Path,
    index: &'a LineIndex,
    pub errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path, index: &'a LineIndex) -> Self {
        Checker {
            file,
            index,
            errors: Vec::new(),
        }
    }

    /// Record an error at `field` (a path such as `routes[0].plugins[1]`).
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: self.index.line_of(&field),
            field,
            message: message.into(),
        });
    }

    /// Resolve a path named in the config relative to the config's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_relative(self.file, p)
    }

    /// Deserialize the value found at `at` (a plugin's opaque settings) into
    /// its type; an error is recorded at the failing field's full path.
    pub fn parse_at<T: DeserializeOwned>(&mut self, at: &str, value: serde_yaml_ng::Value) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = path_string(e.path());
                let field = match (at.is_empty(), inner.is_empty()) {
                    (true, _) => inner,
                    (false, true) => at.to_string(),
                    (false, false) => format!("{at}.{inner}"),
                };
                let message = serde_message(&e.into_inner(), &field);
                self.error(field, message);
                None
            }
        }
    }
}

/// A path named in a config, relative to the working directory if it exists
/// there, else to the config file's folder.
pub fn resolve_relative(config_file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    match config_file.parent() {
        Some(dir) => dir.join(p),
        None => p.to_path_buf(),
    }
}

/// Format a serde path the way the line index spells it.
pub(super) fn path_string(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut s = String::new();
    for seg in p.iter() {
        match seg {
            Segment::Seq { index } => s.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(key)
            }
            Segment::Unknown => {}
        }
    }
    s
}

/// serde_yaml's message without the path and location it repeats.
pub(super) fn serde_message(e: &serde_yaml_ng::Error, field: &str) -> String {
    let mut message = e.to_string();
    if let Some(cut) = message.find(" at line ") {
        message.truncate(cut);
    }
    if let Some((prefix, rest)) = message.split_once(": ") {
        if field.ends_with(prefix) || field.starts_with(prefix) {
            message = rest.to_string();
        }
    }
    message
}
