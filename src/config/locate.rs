//! Maps a field path (`routes[0].plugins[2]`) to the line it stands on, so
//! config errors found after parsing can still name file, line and field.
//! Also finds duplicate mapping keys, which YAML parsers accept silently.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path -> 1-based line.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    /// (path, line, first line) of each duplicate key.
    pub duplicates: Vec<(String, usize, usize)>,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: HashMap<String, usize>,
    },
    Seq {
        path: String,
        idx: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    index: LineIndex,
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

impl Builder {
    /// The path of the node that starts now, and record its line.
    fn enter_value(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, idx }) => {
                let p = format!("{path}[{idx}]");
                *idx += 1;
                self.index.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
            Some(Frame::Map { path, key, .. }) => {
                let k = key.take()?;
                Some(join(path, &k))
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line().max(1);
        match ev {
            Event::Scalar(value, ..) => {
                // A scalar in key position is a key; anything else is a value.
                if let Some(Frame::Map { path, key, seen }) = self.stack.last_mut() {
                    if key.is_none() {
                        let p = join(path, &value);
                        if let Some(first) = seen.get(&value) {
                            self.index.duplicates.push((p, line, *first));
                        } else {
                            seen.insert(value.clone(), line);
                            self.index.lines.insert(p, line);
                        }
                        *key = Some(value);
                        return;
                    }
                }
                self.enter_value(line);
            }
            Event::Alias(_) => {
                self.enter_value(line);
            }
            Event::MappingStart(..) => {
                let path = self.enter_value(line).unwrap_or_default();
                self.stack.push(Frame::Map {
                    path,
                    key: None,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.enter_value(line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, idx: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Index a YAML document; a syntax error yields an empty index (the
    /// YAML parser proper reports it).
    pub fn build(text: &str) -> LineIndex {
        let mut b = Builder {
            stack: Vec::new(),
            index: LineIndex::default(),
        };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut b, false);
        b.index
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The deepest field path that starts on `line`.
    pub fn path_at(&self, line: usize) -> Option<&str> {
        self.lines
            .iter()
            .filter(|(_, l)| **l == line)
            .map(|(p, _)| p.as_str())
            .max_by_key(|p| p.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_lines() {
        let text = "a:\n  b: 1\n  c: [x, y]\nroutes:\n  - name: r\n    plugins:\n      - k\n      - z\n";
        let idx = LineIndex::build(text);
        assert_eq!(idx.line_of("a.b"), Some(2));
        assert_eq!(idx.line_of("a.c"), Some(3));
        assert_eq!(idx.line_of("routes[0].name"), Some(5));
        assert_eq!(idx.line_of("routes[0].plugins[1]"), Some(8));
        assert_eq!(idx.line_of("routes[0].nope"), Some(5));
        assert_eq!(idx.path_at(2), Some("a.b"));
    }

    #[test]
    fn duplicates_found() {
        let idx = LineIndex::build("p:\n  x: 1\n  x: 2\n");
        assert_eq!(idx.duplicates, vec![("p.x".to_string(), 3, 2)]);
    }
}
