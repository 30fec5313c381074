//! Finds the line and column of a key path (`listeners[0].address`) in YAML text.
//!
//! serde_yaml reports positions for syntax and type errors only; checks that run after parsing
//! (an unknown cluster, a duplicate address) use this index to point at the offending value.

use std::collections::HashMap;
use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// Positions (1-based line and column) of every node in a document, by key path.
#[derive(Debug, Default)]
pub(crate) struct Locations(HashMap<String, (usize, usize)>);

enum Frame {
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// A complex (non-scalar) mapping key; its contents have no path.
    Ignored,
}

#[derive(Default)]
struct Indexer {
    stack: Vec<Frame>,
    found: HashMap<String, (usize, usize)>,
}

// === impl Locations ===

impl Locations {
    /// Indexes `text`; a document that does not parse gives an empty index.
    pub(crate) fn index(text: &str) -> Self {
        let mut indexer = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        // NOTE: a syntax error leaves whatever was indexed before it, which is still right.
        let _ = parser.load(&mut indexer, false);
        Self(indexer.found)
    }

    /// Whether the document gives `path` itself (not only an ancestor of it).
    pub(crate) fn has(&self, path: &str) -> bool {
        self.0.contains_key(path)
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub(crate) fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.0.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

// === impl Indexer ===

impl Indexer {
    /// Where the node starting now sits; `None` when it is a mapping key or has no path.
    fn node_path(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Ignored) => None,
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
                None => {
                    // A key: remember it for the value that follows.
                    *key = Some(scalar.unwrap_or("?").to_string());
                    None
                }
            },
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 lines are 1-based and columns 0-based.
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(ref v, ..) => {
                if let Some(p) = self.node_path(Some(v)) {
                    self.found.entry(p).or_insert(pos);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.node_path(Some("*")) {
                    self.found.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let frame = if self.is_key_position() {
                    self.node_path(None);
                    Frame::Ignored
                } else {
                    match self.node_path(None) {
                        Some(path) => {
                            self.found.entry(path.clone()).or_insert(pos);
                            if matches!(ev, Event::MappingStart(..)) {
                                Frame::Map { path, key: None }
                            } else {
                                Frame::Seq { path, next: 0 }
                            }
                        }
                        None => Frame::Ignored,
                    }
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
admin:
  address: 127.0.0.1:15000
listeners:
  - name: a
    address: 127.0.0.1:1
    routes:
      - cluster: x
  - name: b
    address: [1, 2]
clusters: []
";

    #[test]
    fn finds_keys_and_items() {
        let l = Locations::index(DOC);
        assert_eq!(l.find("admin.address"), Some((2, 12)));
        assert_eq!(l.find("listeners[0]").map(|p| p.0), Some(4));
        assert_eq!(l.find("listeners[0].address"), Some((5, 14)));
        assert_eq!(l.find("listeners[0].routes[0].cluster"), Some((7, 18)));
        assert_eq!(l.find("listeners[1].name"), Some((8, 11)));
        assert_eq!(l.find("listeners[1].address"), Some((9, 14)));
        assert_eq!(l.find("clusters"), Some((10, 11)));
        // Unknown paths fall back to their nearest ancestor.
        assert_eq!(l.find("listeners[1].nope").map(|p| p.0), Some(8));
        assert!(l.has("listeners[0].routes"));
        assert!(!l.has("listeners[1].routes"));
    }

    #[test]
    fn broken_documents_do_not_panic() {
        let l = Locations::index("a: [\n  b: {");
        assert_eq!(l.find("zzz"), None);
    }
}
