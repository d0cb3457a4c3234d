//! Read, parse, expand and check a config file.

use super::check;
use super::env;
use super::errors::{path_string, serde_message, Checker, ConfigError, ConfigErrors};
use super::locate::LineIndex;
use super::schema::Config;
use std::path::Path;

/// Parse config text (already read from `file`) and check it. The line
/// index is kept so that later stages (plugin factories, the build) can
/// still name the line of a field.
pub fn parse(text: &str, file: &Path) -> Result<(Config, LineIndex), ConfigErrors> {
    let located = |line: Option<usize>, field: String, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        field,
        message,
    };
    let index = LineIndex::build(text);
    if !index.duplicates.is_empty() {
        return Err(ConfigErrors(
            index
                .duplicates
                .iter()
                .map(|(path, line, first)| {
                    located(
                        Some(*line),
                        path.clone(),
                        format!("duplicate name (first defined at line {first})"),
                    )
                })
                .collect(),
        ));
    }
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        ConfigErrors(vec![located(line, String::new(), serde_message(&e, ""))])
    })?;
    let mut errors = Vec::new();
    env::expand(&mut doc, &mut String::new(), file, &index, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut config: Config = serde_path_to_error::deserialize(doc).map_err(|e| {
        let field = path_string(e.path());
        let message = serde_message(e.inner(), &field);
        ConfigErrors(vec![located(index.line_of(&field), field, message)])
    })?;
    config.source = file.to_path_buf();
    let mut ck = Checker::new(file, &index);
    check::check(&config, &mut ck);
    if ck.errors.is_empty() {
        Ok((config, index))
    } else {
        Err(ConfigErrors(ck.errors))
    }
}

/// Read, parse and check a config file.
pub fn load(file: &Path) -> Result<(Config, LineIndex), ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read config: {e}"),
        }])
    })?;
    parse(&text, file)
}
