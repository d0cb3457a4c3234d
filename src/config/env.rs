//! `${VAR}` expansion. It runs on the parsed document, one string value at a
//! time, so whatever a variable holds (`#`, `: `, a newline) becomes part of
//! that one value verbatim and can never change the document's shape.
//! `$${` is a literal `${`. Comments are gone by then, so never expanded.
//! Only string values are expanded (a `${VAR}` is always read as a string):
//! keys, numbers and booleans are left as they are.

use super::errors::ConfigError;
use super::locate::LineIndex;
use serde_yaml_ng::Value;
use std::path::Path;

/// Expand every string value under `v`; `path` is `v`'s field path. Unset
/// variables are reported at their field's line.
pub(super) fn expand(v: &mut Value, path: &mut String, file: &Path, index: &LineIndex, errors: &mut Vec<ConfigError>) {
    match v {
        Value::String(s) if s.contains("${") => match expand_str(s) {
            Ok(out) => *s = out,
            Err(unset) => errors.extend(unset.into_iter().map(|name| ConfigError {
                file: file.to_path_buf(),
                line: index.line_of(path),
                field: path.clone(),
                message: format!("environment variable {name} is not set"),
            })),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand(item, path, file, index, errors);
                path.truncate(len);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let len = path.len();
                if let Some(k) = k.as_str() {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                expand(item, path, file, index, errors);
                path.truncate(len);
            }
        }
        Value::Tagged(t) => expand(&mut t.value, path, file, index, errors),
        _ => {}
    }
}

/// Expand one string; `Err` lists the variables that are not set.
fn expand_str(s: &str) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut unset = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &rest[start + 2..start + len];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => unset.push(name.to_string()),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    if unset.is_empty() {
        Ok(out)
    } else {
        Err(unset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_escapes_and_reports_unset() {
        std::env::set_var("WEIR_ENV_TEST_A", "x");
        assert_eq!(expand_str("a-${WEIR_ENV_TEST_A}-b").unwrap(), "a-x-b");
        assert_eq!(expand_str("$${WEIR_ENV_TEST_A}").unwrap(), "${WEIR_ENV_TEST_A}");
        assert_eq!(expand_str("${oops").unwrap(), "${oops");
        assert_eq!(
            expand_str("${WEIR_ENV_TEST_UNSET_1}${WEIR_ENV_TEST_UNSET_2}").unwrap_err(),
            vec!["WEIR_ENV_TEST_UNSET_1", "WEIR_ENV_TEST_UNSET_2"]
        );
    }
}
