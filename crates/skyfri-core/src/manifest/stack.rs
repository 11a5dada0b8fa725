//! OpenFaaS `stack.yml` (version 1.0): `provider`, `functions` and `configuration`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::yaml::{strings, yaml_error, Ctx, Doc, Ordered, Scalar};
use super::{place_field, Manifest, ManifestError, ManifestFunction};
use crate::function::{validate_name, validate_secret_name, FunctionSpec, Template};
use crate::retry;
use crate::scaling::ScalePolicy;

/// The label or annotation that caps in-flight requests per replica.
const MAX_INFLIGHT: &str = "com.openfaas.max_inflight";

/// Environment variables that set the exec timeout, strongest first.
const TIMEOUT_VARS: [&str; 3] = ["exec_timeout", "write_timeout", "read_timeout"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    version: Option<Scalar>,
    provider: Option<Provider>,
    functions: Option<Ordered<StackFunction>>,
    #[allow(dead_code)]
    configuration: Option<Configuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Provider {
    #[allow(dead_code)]
    name: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Configuration {
    templates: Option<Value>,
    copy: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct StackFunction {
    lang: Option<String>,
    handler: Option<String>,
    image: Option<String>,
    fprocess: Option<String>,
    environment: Option<Ordered<Scalar>>,
    environment_file: Option<Vec<String>>,
    secrets: Option<Vec<String>>,
    labels: Option<Ordered<Scalar>>,
    annotations: Option<Ordered<Scalar>>,
    limits: Option<Quantities>,
    requests: Option<Quantities>,
    readonly_root_filesystem: Option<bool>,
    constraints: Option<Vec<String>>,
    build_args: Option<Value>,
    build_options: Option<Value>,
    skip_build: Option<Value>,
    platforms: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Quantities {
    memory: Option<Scalar>,
    cpu: Option<Scalar>,
}

/// An `environment_file`: a YAML file with a top-level `environment:` map.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentFile {
    environment: Option<Ordered<Scalar>>,
}

pub(super) fn parse(
    file: &str,
    text: &str,
    docs: &[Doc],
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Manifest, ManifestError> {
    let non_empty: Vec<&Doc> = docs.iter().filter(|d| !d.value.is_null()).collect();
    if non_empty.len() > 1 {
        let mut err = ManifestError::new(
            file,
            "a stack.yml holds a single YAML document; remove the extra `---` documents",
        );
        err.line = non_empty.get(1).map(|d| d.lines.0 + 1);
        return Err(err);
    }
    let lines = non_empty.first().map_or((0, 0), |d| d.lines);
    let ctx = Ctx { file, text, lines };
    let stack: StackFile = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;

    if let Some(version) = &stack.version {
        if version.0 != "1.0" && version.0 != "1" {
            return Err(ctx.err(
                &["version"],
                format!("unsupported stack.yml version {:?}: use 1.0", version.0),
            ));
        }
    }
    let functions = stack.functions.unwrap_or_default();
    if functions.0.is_empty() {
        return Err(ctx.err(&["functions"], "the file declares no functions"));
    }
    let functions = functions
        .0
        .into_iter()
        .map(|(name, f)| function(&ctx, &name, f, read_file))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Manifest {
        gateway: stack.provider.and_then(|p| p.gateway),
        functions,
    })
}

fn function(
    ctx: &Ctx<'_>,
    name: &str,
    f: StackFunction,
    read_file: &dyn Fn(&str) -> Result<String, String>,
) -> Result<ManifestFunction, ManifestError> {
    let at = |keys: &[&'static str]| -> Vec<&str> {
        let mut p = vec!["functions", name];
        p.extend_from_slice(keys);
        p
    };
    validate_name(name).map_err(|e| ctx.err(&at(&[]), e))?;

    let template = match &f.lang {
        Some(lang) => Some(Template::from_lang(lang).ok_or_else(|| {
            let known: Vec<&str> = Template::ALL.iter().map(|t| t.name()).collect();
            ctx.err(
                &at(&["lang"]),
                format!(
                    "unknown lang {lang:?}: known languages are {}",
                    known.join(", ")
                ),
            )
        })?),
        None => None,
    };
    if f.lang.is_none() && f.image.is_none() {
        return Err(ctx.err(
            &at(&[]),
            "a function needs `lang` (to build from a template) or `image`",
        ));
    }

    // Without `image`, the built artefact is registered under the function's own name.
    let image = f
        .image
        .filter(|i| !i.trim().is_empty())
        .unwrap_or_else(|| format!("{name}:latest"));
    let mut spec = FunctionSpec::new(name, image);
    spec.env_process = f.fprocess.filter(|p| !p.is_empty());

    // Environment: files in order, then the inline map wins.
    let mut from_files: BTreeMap<String, String> = BTreeMap::new();
    for path in f.environment_file.unwrap_or_default() {
        let content = read_file(&path).map_err(|e| {
            ctx.err(
                &at(&["environment_file"]),
                format!("cannot read environment file {path:?}: {e}"),
            )
        })?;
        let env_file: EnvironmentFile =
            serde_yaml_ng::from_str(&content).map_err(|e| yaml_error(&path, &e))?;
        from_files.extend(strings(env_file.environment.unwrap_or_default()));
    }
    let inline: BTreeMap<String, String> = strings(f.environment.unwrap_or_default())
        .into_iter()
        .collect();
    spec.env_vars = from_files;
    spec.env_vars.extend(inline.clone());

    let mut timeout = None;
    for var in TIMEOUT_VARS {
        if let Some(value) = spec.env_vars.get(var) {
            let path = if inline.contains_key(var) {
                at(&["environment", var])
            } else {
                at(&["environment_file"])
            };
            let secs = parse_duration_secs(value).map_err(|e| ctx.err(&path, e))?;
            timeout = timeout.or(Some(secs));
        }
    }
    if let Some(secs) = timeout {
        spec.timeout_secs = secs;
    }

    spec.labels = strings(f.labels.unwrap_or_default()).into_iter().collect();
    spec.annotations = strings(f.annotations.unwrap_or_default())
        .into_iter()
        .collect();
    for (kind, map) in [("labels", &spec.labels), ("annotations", &spec.annotations)] {
        if let Some(value) = map.get(MAX_INFLIGHT) {
            spec.concurrency = value.trim().parse().map_err(|_| {
                let mut path = at(&[]);
                path.push(kind);
                path.push(MAX_INFLIGHT);
                ctx.err(
                    &path,
                    format!("{value:?} is not a number of requests (0 = unlimited)"),
                )
            })?;
        }
    }

    ScalePolicy::parse(&spec, template.unwrap_or(Template::Http))
        .map(|_| ())
        .and_then(|()| retry::validate(&spec))
        .and_then(|()| crate::triggers::validate(&spec))
        .and_then(|()| crate::auth::validate(&spec))
        .and_then(|()| crate::limits::validate(&spec))
        .map_err(|e| {
            let mut path = at(&[]);
            path.push(place_field(e.place));
            path.push(&e.key);
            ctx.err(&path, e.message)
        })?;

    spec.secrets = f.secrets.unwrap_or_default();
    for secret in &spec.secrets {
        validate_secret_name(secret).map_err(|e| ctx.err(&at(&["secrets"]), e))?;
    }
    spec.constraints = f.constraints.unwrap_or_default();
    spec.read_only_root_filesystem = f.readonly_root_filesystem.unwrap_or(false);
    if let Some(q) = &f.limits {
        spec.limits = ctx.resources(&at(&["limits"]), q.memory.as_ref(), q.cpu.as_ref())?;
    }
    if let Some(q) = &f.requests {
        spec.requests = ctx.resources(&at(&["requests"]), q.memory.as_ref(), q.cpu.as_ref())?;
    }

    Ok(ManifestFunction {
        spec,
        template,
        handler: f.handler,
    })
}

/// Parses a watchdog timeout: seconds (`30`) or a Go duration (`30s`, `1m`, `1m30s`,
/// `500ms`), rounded up to whole seconds; zero is refused.
pub(crate) fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let secs = crate::quantity::parse_duration(s)?.as_secs_f64().ceil() as u64;
    if secs == 0 {
        return Err(format!(
            "{:?}: a timeout must be at least one second",
            s.trim()
        ));
    }
    Ok(secs)
}
