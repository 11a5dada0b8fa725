//! Parsing of user manifests: OpenFaaS `stack.yml` (version 1.0) and Knative Service
//! (`serving.knative.dev/v1`) files, into [`FunctionSpec`]s. No I/O: the caller passes the
//! text, an environment lookup for `${VAR}` substitution and a reader for
//! `environment_file` entries.

mod knative;
mod stack;
mod yaml;

use serde_yaml_ng::Value;

use crate::function::{FunctionSpec, Template};
use crate::scaling::Place;

/// The functions a manifest declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// `provider.gateway` of a stack.yml; always `None` for Knative.
    pub gateway: Option<String>,
    /// In file order.
    pub functions: Vec<ManifestFunction>,
}

/// One function of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFunction {
    /// The spec. For a stack.yml function with `lang` but no `image`, `spec.image` is empty.
    pub spec: FunctionSpec,
    /// Some for stack.yml functions with `lang`; None for Knative (image only) and stack.yml
    /// entries with only `image`.
    pub template: Option<Template>,
    /// The `handler` folder as written in the file (relative to the file's folder), if any.
    pub handler: Option<String>,
}

/// A manifest error, pointing at the file, line, column and field when known.
///
/// Displays as `stack.yml:12:7: functions.vipps-processor.limits.memory: message`, leaving
/// out the parts that are unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    /// The file the error is in (the manifest, or an `environment_file` as written).
    pub file: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// Dotted path of the offending field, such as `functions.f1.limits.memory`.
    pub field: Option<String>,
    pub message: String,
}

impl ManifestError {
    /// An error with no position.
    pub fn new(file: &str, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: file.to_string(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
        }
    }

    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
            if let Some(column) = self.column {
                out.push_str(&format!(":{column}"));
            }
        }
        out.push_str(": ");
        if let Some(field) = &self.field {
            out.push_str(field);
            out.push_str(": ");
        }
        out.push_str(&self.message);
        out
    }
}

/// Parses a manifest.
///
/// Detects the format: a YAML document with `apiVersion: serving.knative.dev/v1` and
/// `kind: Service` is Knative (several Services may be separated by `---`), anything else is
/// an OpenFaaS stack.yml. `env` resolves `${VAR}`, `${VAR:-default}` and `${VAR-default}`
/// (applied to the raw text before parsing, like `faas-cli` envsubst; an unset variable
/// without default becomes empty). `read_file` reads an `environment_file` (path as written,
/// relative to the manifest folder) and returns its text or an error message.
pub fn parse(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Manifest, ManifestError> {
    let text = envsubst(text, env);
    let docs = yaml::documents(file, &text)?;
    let first = docs.iter().find(|d| !d.value.is_null());
    let Some(first) = first else {
        return Err(ManifestError::new(
            file,
            "the file is empty: expected an OpenFaaS stack.yml or a Knative Service",
        ));
    };
    let is_kubernetes = match &first.value {
        Value::Mapping(m) => m.contains_key("apiVersion") || m.contains_key("kind"),
        _ => false,
    };
    if is_kubernetes {
        knative::parse(file, &text, &docs)
    } else {
        stack::parse(file, &text, &docs, read_file)
    }
}

/// The manifest field a scaling key's [`Place`] is written under.
fn place_field(place: Place) -> &'static str {
    match place {
        Place::Labels => "labels",
        Place::Annotations => "annotations",
    }
}

/// Substitutes `${VAR}`, `${VAR:-default}` (default when unset or empty) and
/// `${VAR-default}` (default when unset). Anything else, including a lone `$` or an
/// unterminated `${`, is kept as written.
pub fn envsubst(text: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = &after[..end];
        let (name, default, use_default_if_empty) = if let Some((n, d)) = expr.split_once(":-") {
            (n, Some(d), true)
        } else if let Some((n, d)) = expr.split_once('-') {
            (n, Some(d), false)
        } else {
            (expr, None, false)
        };
        let valid_name = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid_name {
            out.push_str("${");
            rest = after;
            continue;
        }
        let value = match (env(name), default) {
            (Some(v), Some(d)) if v.is_empty() && use_default_if_empty => d.to_string(),
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => String::new(),
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests;
