//! The canonical encoding hashed into the chain: JSON with object keys sorted
//! by their UTF-16 code units (as RFC 8785 does), no insignificant whitespace,
//! and serde_json's string escapes and shortest number forms.
//!
//! Keys of free-form values (`serde_json::Value`) are sorted here explicitly,
//! because a dependency may switch serde_json's maps to insertion order. The
//! event structs declare their fields in sorted order instead, so a record is
//! encoded in one pass straight from its typed form (`encode`), with no
//! intermediate `Value`; a test holds the two paths to the same bytes.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// The canonical text of any JSON value.
pub fn canonical_json(v: &Value) -> String {
    serde_json::to_string(&Sorted(v)).unwrap_or_default()
}

/// The canonical text of a typed value whose structs declare their fields in
/// sorted order and whose free-form parts serialize through [`Sorted`].
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(768);
    serde_json::to_writer(&mut out, v)?;
    // serde_json writes UTF-8 only.
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// Write the canonical text of `v` into `w` without building it first (for
/// digests).
pub(crate) fn write_canonical<W: std::io::Write>(w: W, v: &Value) -> Result<(), serde_json::Error> {
    serde_json::to_writer(w, &Sorted(v))
}

/// A value serialized with its object keys in canonical order.
pub(crate) struct Sorted<'a>(pub &'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, &Sorted(v))?;
                }
                m.end()
            }
            Value::Array(items) => s.collect_seq(items.iter().map(Sorted)),
            other => other.serialize(s),
        }
    }
}

/// Byte order equals UTF-16 order except where a key holds characters above
/// U+FFFF next to ones in U+E000..=U+FFFF; only then is the slow path taken.
fn utf16_order(a: &str, b: &str) -> std::cmp::Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.cmp(b)
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

/// `serialize_with` for an optional free-form field.
pub(crate) fn sorted_opt<S: Serializer>(v: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => Sorted(v).serialize(s),
        None => s.serialize_none(),
    }
}
