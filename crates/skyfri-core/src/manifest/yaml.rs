//! YAML helpers shared by the stack.yml and Knative parsers: documents with their line
//! ranges, serde error conversion, locating a key path in the source text, lenient scalars
//! and order-preserving maps.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_yaml_ng::Value;

use super::ManifestError;

/// One YAML document of a file and the 0-based line range `[start, end)` it spans.
pub(crate) struct Doc {
    pub value: Value,
    pub lines: (usize, usize),
}

/// Splits `text` into YAML documents, reporting syntax errors with their position.
pub(crate) fn documents(file: &str, text: &str) -> Result<Vec<Doc>, ManifestError> {
    let mut values = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        values.push(Value::deserialize(doc).map_err(|e| yaml_error(file, &e))?);
    }
    let regions = regions(text);
    let whole = (0, text.lines().count());
    let same_count = regions.len() == values.len();
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| Doc {
            value,
            lines: if same_count { regions[i] } else { whole },
        })
        .collect())
}

/// Line ranges between `---` separators that hold some content.
fn regions(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_content = false;
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        count = i + 1;
        if let Some(after) = line.strip_prefix("---") {
            if has_content {
                out.push((start, i));
            }
            // `--- key: value` holds content on the separator line itself.
            let after = after.trim();
            has_content = !after.is_empty() && !after.starts_with('#');
            start = if has_content { i } else { i + 1 };
            continue;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && t != "..." {
            has_content = true;
        }
    }
    if has_content {
        out.push((start, count));
    }
    out
}

/// Converts a serde_yaml_ng error into a [`ManifestError`], splitting off its position,
/// its field path and, for unknown fields, the unknown key.
pub(crate) fn yaml_error(file: &str, err: &serde_yaml_ng::Error) -> ManifestError {
    let location = err.location();
    let mut message = err.to_string();
    if let Some(loc) = &location {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(pos) = message.find(&suffix) {
            message.replace_range(pos..pos + suffix.len(), "");
        }
    }
    let mut field = None;
    if let Some((head, rest)) = message.split_once(": ") {
        let looks_like_path =
            !head.is_empty() && !head.contains(char::is_whitespace) && !head.contains('`');
        if looks_like_path {
            field = Some(head.to_string());
            message = rest.to_string();
        }
    }
    if let Some(name) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        field = Some(match field {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_string(),
        });
    }
    ManifestError {
        file: file.to_string(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        field,
        message,
    }
}

/// Finds the 1-based line and column of the key at `path` (mapping keys, nested by
/// indentation; list items `- ` count as indentation) within the 0-based line range
/// `lines`. When the full path is not written in block style, returns the deepest key found.
pub(crate) fn locate(text: &str, lines: (usize, usize), path: &[&str]) -> Option<(usize, usize)> {
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for (i, line) in text
        .lines()
        .enumerate()
        .skip(lines.0)
        .take(lines.1.saturating_sub(lines.0))
    {
        if depth == path.len() {
            break;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - trimmed.len();
        let mut content = trimmed;
        while let Some(rest) = content.strip_prefix('-') {
            if !(rest.is_empty() || rest.starts_with(' ')) {
                break;
            }
            let r = rest.trim_start();
            indent += content.len() - r.len();
            content = r;
        }
        if let Some(p) = parent_indent {
            if indent <= p {
                // Left the block of the last key found.
                break;
            }
        }
        if key_of(content) == Some(path[depth]) {
            found = Some((i + 1, indent + 1));
            parent_indent = Some(indent);
            depth += 1;
        }
    }
    found
}

/// The mapping key a line starts with (`key: value` or `key:`), unquoted.
fn key_of(content: &str) -> Option<&str> {
    let bytes = content.as_bytes();
    let end = (0..bytes.len()).find(|&i| {
        bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ' || bytes[i + 1] == b'\t')
    })?;
    let key = content[..end].trim();
    let key = key
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .or_else(|| key.strip_prefix('\'').and_then(|k| k.strip_suffix('\'')))
        .unwrap_or(key);
    Some(key)
}

/// Builds an error for `path`, with the position of its deepest key found in the text.
pub(crate) fn error_at(
    file: &str,
    text: &str,
    lines: (usize, usize),
    path: &[&str],
    message: impl Into<String>,
) -> ManifestError {
    let pos = locate(text, lines, path);
    ManifestError {
        file: file.to_string(),
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
        field: (!path.is_empty()).then(|| path.join(".")),
        message: message.into(),
    }
}

/// A scalar (string, number, bool or null) read as a string; null is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// A mapping kept in file order; duplicate keys are an error.
#[derive(Debug)]
pub(crate) struct Ordered<T>(pub Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered<T>, E> {
                Ok(Ordered::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("duplicate key {key:?}")));
                    }
                    let value = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// Turns a map of scalars into string pairs.
pub(crate) fn strings(map: Ordered<Scalar>) -> Vec<(String, String)> {
    map.0.into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// Where errors about one document point: the file, its text and the document's lines.
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub text: &'a str,
    pub lines: (usize, usize),
}

impl Ctx<'_> {
    /// An error about the key at `path`.
    pub fn err(&self, path: &[&str], message: impl Into<String>) -> ManifestError {
        error_at(self.file, self.text, self.lines, path, message)
    }

    /// Parses memory and CPU quantities at `path` (which ends before `memory` / `cpu`).
    pub fn resources(
        &self,
        path: &[&str],
        memory: Option<&Scalar>,
        cpu: Option<&Scalar>,
    ) -> Result<crate::function::Resources, ManifestError> {
        let at = |key: &'static str| -> Vec<&str> {
            let mut p = path.to_vec();
            p.push(key);
            p
        };
        let memory = match memory {
            Some(m) if !m.0.is_empty() => {
                Some(crate::quantity::parse_memory(&m.0).map_err(|e| self.err(&at("memory"), e))?)
            }
            _ => None,
        };
        let cpu_millis = match cpu {
            Some(c) if !c.0.is_empty() => {
                Some(crate::quantity::parse_cpu(&c.0).map_err(|e| self.err(&at("cpu"), e))?)
            }
            _ => None,
        };
        Ok(crate::function::Resources { memory, cpu_millis })
    }
}
