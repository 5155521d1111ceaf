//! A format-independent tree of a document with the position of every key and value, so
//! that every error can say where it is. YAML (and JSON, which is YAML 1.2's flow style,
//! after serde_json has checked its syntax) through serde-saphyr's `Spanned`; TOML through
//! `toml::Spanned`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Where something is in a file: 1-based line and column (0 when unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// The line, from 1.
    pub line: u32,
    /// The column, from 1.
    pub column: u32,
}

/// One value of the document.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order: key, the key's position, value.
    Map(Vec<(String, Pos, Node)>),
}

impl Node {
    /// A canonical rendering of the value (positions left out), so that two documents can
    /// be compared for what they say rather than how they are laid out.
    pub fn render(&self) -> String {
        match &self.kind {
            Kind::Null => "null".into(),
            Kind::Bool(b) => b.to_string(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => format!("{f:?}"),
            Kind::Str(s) => format!("{s:?}"),
            Kind::Seq(v) => format!(
                "[{}]",
                v.iter().map(Node::render).collect::<Vec<_>>().join(",")
            ),
            Kind::Map(m) => format!(
                "{{{}}}",
                m.iter()
                    .map(|(k, _, v)| format!("{k:?}:{}", v.render()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

impl Kind {
    /// What the value is, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "a whole number",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a map",
        }
    }
}

/// The shape of a value as any serde deserializer gives it, with children `N` (a format's
/// positioned node) and keys `K` (a format's positioned string).
enum Raw<N, K> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<N>),
    Map(Vec<(K, N)>),
}

struct RawVisitor<N, K>(std::marker::PhantomData<(N, K)>);

impl<'de, N: Deserialize<'de>, K: Deserialize<'de>> Visitor<'de> for RawVisitor<N, K> {
    type Value = Raw<N, K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a configuration value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Raw::Int(i128::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Raw::Int(i128::from(v)))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Self::Value, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
        i128::try_from(v)
            .map(Raw::Int)
            .map_err(|_| E::custom("number too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Raw::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(n) = seq.next_element::<N>()? {
            out.push(n);
        }
        Ok(Raw::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(entry) = map.next_entry::<K, N>()? {
            out.push(entry);
        }
        Ok(Raw::Map(out))
    }
}

/// Line and column of byte `offset` in `source`.
fn pos_of(source: &str, offset: usize) -> Pos {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() as u32 + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
    Pos { line, column }
}

// ===== YAML and JSON =====

#[cfg(feature = "yaml-parser")]
mod yaml {
    use super::*;
    use serde_saphyr::Spanned;

    pub(super) struct YNode(Spanned<YRaw>);
    /// Keys are nodes too: YAML allows any scalar (or worse) as a key.
    pub(super) struct YRaw(Raw<YNode, YNode>);

    impl<'de> Deserialize<'de> for YRaw {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(RawVisitor(std::marker::PhantomData))
                .map(YRaw)
        }
    }

    impl<'de> Deserialize<'de> for YNode {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Spanned::<YRaw>::deserialize(d).map(YNode)
        }
    }

    fn pos(l: &serde_saphyr::Location) -> Pos {
        Pos {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        }
    }

    impl YNode {
        pub(super) fn into_node(self) -> Node {
            let at = pos(&self.0.referenced);
            let kind = match self.0.value.0 {
                Raw::Null => Kind::Null,
                Raw::Bool(b) => Kind::Bool(b),
                Raw::Int(i) => Kind::Int(i),
                Raw::Float(f) => Kind::Float(f),
                Raw::Str(s) => Kind::Str(s),
                Raw::Seq(v) => Kind::Seq(v.into_iter().map(YNode::into_node).collect()),
                Raw::Map(m) => Kind::Map(
                    m.into_iter()
                        .map(|(k, v)| {
                            let k = k.into_node();
                            (key_text(&k), k.pos, v.into_node())
                        })
                        .collect(),
                ),
            };
            Node { kind, pos: at }
        }
    }

    /// A key as text: scalars as written; an empty (null) key or a list or map used as a
    /// key reads as a name no schema has, so it is reported as an unknown key.
    fn key_text(k: &Node) -> String {
        match &k.kind {
            Kind::Str(s) => s.clone(),
            Kind::Int(i) => i.to_string(),
            Kind::Float(f) => f.to_string(),
            Kind::Bool(b) => b.to_string(),
            Kind::Null => "<an empty key>".into(),
            Kind::Seq(_) | Kind::Map(_) => "<a list or map used as a key>".into(),
        }
    }

    /// The parser's message without what this crate says itself: its `error: line L column
    /// C:` prefix (the position is given separately), its source snippet, and advice about
    /// its own options.
    fn clean_yaml_error(raw: &str) -> String {
        let first = raw.lines().next().unwrap_or("invalid YAML");
        let msg = first.strip_prefix("error: ").unwrap_or(first);
        let msg = match msg.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
            Some((at, rest)) if at.contains("column") => rest,
            _ => msg,
        };
        let msg = msg.split(", set ").next().unwrap_or(msg);
        // "... at line L, column C": the position is given separately.
        let msg = match msg.rfind(" at line ") {
            Some(i) if msg[i..].contains(", column ") => &msg[..i],
            _ => msg,
        };
        msg.to_owned()
    }

    /// Parses YAML (or JSON) text into a positioned tree; the error gives its position.
    pub(crate) fn parse(text: &str) -> Result<Node, (String, Pos)> {
        if text.trim().is_empty() {
            return Ok(Node {
                kind: Kind::Map(Vec::new()),
                pos: Pos { line: 1, column: 1 },
            });
        }
        match serde_saphyr::from_str::<YNode>(text) {
            Ok(n) => Ok(n.into_node()),
            Err(e) => {
                let at = e.location().map(|l| pos(&l)).unwrap_or_default();
                Err((clean_yaml_error(&e.to_string()), at))
            }
        }
    }
}

#[cfg(feature = "yaml-parser")]
pub(crate) use yaml::parse as parse_yaml;

/// Parses JSON: serde_json checks the syntax (strict JSON, its own positions), then the YAML
/// parser builds the positioned tree.
#[cfg(feature = "json")]
pub(crate) fn parse_json(text: &str) -> Result<Node, (String, Pos)> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let at = Pos {
            line: e.line() as u32,
            column: e.column() as u32,
        };
        return Err((format!("invalid JSON: {e}"), at));
    }
    parse_yaml(text)
}

// ===== TOML =====

#[cfg(feature = "toml")]
mod toml_tree {
    use super::*;
    use toml::Spanned;

    pub(super) struct TNode(Spanned<TRaw>);
    pub(super) struct TRaw(Raw<TNode, Spanned<String>>);

    impl<'de> Deserialize<'de> for TRaw {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(RawVisitor(std::marker::PhantomData))
                .map(TRaw)
        }
    }

    impl<'de> Deserialize<'de> for TNode {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Spanned::<TRaw>::deserialize(d).map(TNode)
        }
    }

    impl TNode {
        fn into_node(self, source: &str) -> Node {
            let at = pos_of(source, self.0.span().start);
            let kind = match self.0.into_inner().0 {
                Raw::Null => Kind::Null,
                Raw::Bool(b) => Kind::Bool(b),
                Raw::Int(i) => Kind::Int(i),
                Raw::Float(f) => Kind::Float(f),
                Raw::Str(s) => Kind::Str(s),
                Raw::Seq(v) => Kind::Seq(v.into_iter().map(|n| n.into_node(source)).collect()),
                Raw::Map(m) => Kind::Map(
                    m.into_iter()
                        .map(|(k, v)| {
                            let kp = pos_of(source, k.span().start);
                            (k.into_inner(), kp, v.into_node(source))
                        })
                        .collect(),
                ),
            };
            Node { kind, pos: at }
        }
    }

    /// Parses TOML text into a positioned tree.
    pub(crate) fn parse(text: &str) -> Result<Node, (String, Pos)> {
        match toml::from_str::<TNode>(text) {
            Ok(n) => Ok(n.into_node(text)),
            Err(e) => {
                let at = e.span().map(|s| pos_of(text, s.start)).unwrap_or_default();
                Err((e.message().to_owned(), at))
            }
        }
    }
}

#[cfg(feature = "toml")]
pub(crate) use toml_tree::parse as parse_toml;

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: &Node) -> Vec<(String, Pos)> {
        match &n.kind {
            Kind::Map(m) => m.iter().map(|(k, p, _)| (k.clone(), *p)).collect(),
            _ => Vec::new(),
        }
    }

    #[cfg(feature = "yaml")]
    #[test]
    fn yaml_keys_and_values_have_positions() {
        let n = parse_yaml("a: 1\nb:\n  c: [x, 2.5]\n").unwrap();
        let k = keys(&n);
        assert_eq!(k[0], ("a".into(), Pos { line: 1, column: 1 }));
        assert_eq!(k[1], ("b".into(), Pos { line: 2, column: 1 }));
        let Kind::Map(m) = &n.kind else { panic!() };
        let Kind::Map(b) = &m[1].2.kind else { panic!() };
        assert_eq!(b[0].1, Pos { line: 3, column: 3 });
        let Kind::Seq(list) = &b[0].2.kind else {
            panic!()
        };
        assert!(matches!(list[1].kind, Kind::Float(f) if f == 2.5));
        let e = parse_yaml("a: [1, 2\n").unwrap_err();
        assert!(e.1.line >= 1, "{e:?}");
    }

    #[cfg(feature = "toml")]
    #[test]
    fn toml_keys_have_positions() {
        let n = parse_toml("a = 1\n[b]\nc = \"x\"\n").unwrap();
        let k = keys(&n);
        assert_eq!(k[0].1, Pos { line: 1, column: 1 });
        assert_eq!(k[1].1.line, 2);
        let e = parse_toml("a = = 1").unwrap_err();
        assert_eq!(e.1.line, 1, "{e:?}");
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_is_checked_strictly_then_positioned() {
        let n = parse_json("{\n  \"a\": 1,\n  \"b\": {\"c\": true}\n}").unwrap();
        let k = keys(&n);
        assert_eq!(k[1].1.line, 3);
        let e = parse_json("{\"a\": 1,}").unwrap_err();
        assert!(e.0.contains("invalid JSON"), "{e:?}");
        assert_eq!(e.1.line, 1);
    }
}
