//! Knative Services (`apiVersion: serving.knative.dev/v1`, `kind: Service`), one per YAML
//! document.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::yaml::{strings, yaml_error, Ctx, Doc, Ordered, Scalar};
use super::{place_field, Manifest, ManifestError, ManifestFunction};
use crate::function::{validate_name, FunctionSpec, Template};
use crate::retry;
use crate::scaling::{Place, ScalePolicy};

const API_VERSION: &str = "serving.knative.dev/v1";
const KIND: &str = "Service";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Service {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<Metadata>,
    spec: Option<ServiceSpec>,
    /// Present in `kubectl get -o yaml` output; ignored.
    status: Option<Value>,
}

/// Object metadata; server-set fields are accepted and ignored.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<Ordered<Scalar>>,
    annotations: Option<Ordered<Scalar>>,
    creation_timestamp: Option<Value>,
    uid: Option<Value>,
    generation: Option<Value>,
    resource_version: Option<Value>,
    self_link: Option<Value>,
    managed_fields: Option<Value>,
    finalizers: Option<Value>,
    owner_references: Option<Value>,
    generate_name: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    template: Option<RevisionTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionTemplate {
    metadata: Option<Metadata>,
    spec: Option<RevisionSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RevisionSpec {
    container_concurrency: Option<u32>,
    timeout_seconds: Option<u64>,
    containers: Option<Vec<Container>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Container {
    name: Option<String>,
    image: Option<String>,
    env: Option<Vec<EnvVar>>,
    resources: Option<ContainerResources>,
    ports: Option<Value>,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvVar {
    name: String,
    value: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerResources {
    limits: Option<Quantities>,
    requests: Option<Quantities>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Quantities {
    memory: Option<Scalar>,
    cpu: Option<Scalar>,
}

pub(super) fn parse(file: &str, text: &str, docs: &[Doc]) -> Result<Manifest, ManifestError> {
    let mut functions: Vec<ManifestFunction> = Vec::new();
    let deserializers = serde_yaml_ng::Deserializer::from_str(text);
    for (doc, de) in docs.iter().zip(deserializers) {
        if doc.value.is_null() {
            continue;
        }
        let service = Service::deserialize(de).map_err(|e| yaml_error(file, &e))?;
        let ctx = Ctx {
            file,
            text,
            lines: doc.lines,
        };
        let f = service_function(&ctx, service)?;
        if functions.iter().any(|g| g.spec.name == f.spec.name) {
            return Err(ctx.err(
                &["metadata", "name"],
                format!("function {:?} is declared twice", f.spec.name),
            ));
        }
        functions.push(f);
    }
    Ok(Manifest {
        gateway: None,
        functions,
    })
}

fn service_function(ctx: &Ctx<'_>, s: Service) -> Result<ManifestFunction, ManifestError> {
    let api_version = s.api_version.unwrap_or_default();
    let kind = s.kind.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        let path: &[&str] = if api_version != API_VERSION {
            &["apiVersion"]
        } else {
            &["kind"]
        };
        return Err(ctx.err(
            path,
            format!(
                "only Knative Services (apiVersion: {API_VERSION}, kind: {KIND}) are supported, \
                 not apiVersion {api_version:?} kind {kind:?}"
            ),
        ));
    }
    let metadata = s.metadata.unwrap_or_default();
    let name = metadata
        .name
        .ok_or_else(|| ctx.err(&["metadata"], "missing `metadata.name`"))?;
    validate_name(&name).map_err(|e| ctx.err(&["metadata", "name"], e))?;

    let template = s
        .spec
        .and_then(|spec| spec.template)
        .ok_or_else(|| ctx.err(&["spec"], "missing `spec.template`"))?;
    let revision = template
        .spec
        .ok_or_else(|| ctx.err(&["spec", "template"], "missing `spec.template.spec`"))?;
    let containers_path = ["spec", "template", "spec", "containers"];
    let mut containers = revision.containers.unwrap_or_default();
    if containers.len() != 1 {
        return Err(ctx.err(
            &containers_path,
            format!(
                "exactly one container is supported, found {}",
                containers.len()
            ),
        ));
    }
    let container = containers.remove(0);
    let image = container
        .image
        .filter(|i| !i.is_empty())
        .ok_or_else(|| ctx.err(&containers_path, "the container needs an `image`"))?;

    let mut spec = FunctionSpec::new(name, image);
    spec.labels = strings(metadata.labels.unwrap_or_default())
        .into_iter()
        .collect();
    spec.annotations = strings(metadata.annotations.unwrap_or_default())
        .into_iter()
        .collect();
    // The revision template's keys win over the Service's; errors point at the one used.
    let mut in_template: BTreeSet<(Place, String)> = BTreeSet::new();
    if let Some(meta) = template.metadata {
        for (k, v) in strings(meta.labels.unwrap_or_default()) {
            in_template.insert((Place::Labels, k.clone()));
            spec.labels.insert(k, v);
        }
        for (k, v) in strings(meta.annotations.unwrap_or_default()) {
            in_template.insert((Place::Annotations, k.clone()));
            spec.annotations.insert(k, v);
        }
    }
    if let Some(c) = revision.container_concurrency {
        spec.concurrency = c;
    }
    // Knative Services run images, not templates: the template does not change validity.
    ScalePolicy::parse(&spec, Template::Http)
        .map(|_| ())
        .and_then(|()| retry::validate(&spec))
        .and_then(|()| crate::triggers::validate(&spec))
        .and_then(|()| crate::auth::validate(&spec))
        .and_then(|()| crate::limits::validate(&spec))
        .map_err(|e| {
            let mut path: Vec<&str> = Vec::new();
            if in_template.contains(&(e.place, e.key.clone())) {
                path.extend(["spec", "template"]);
            }
            path.extend(["metadata", place_field(e.place), &e.key]);
            ctx.err(&path, e.message)
        })?;
    if let Some(t) = revision.timeout_seconds {
        if t == 0 {
            return Err(ctx.err(
                &["spec", "template", "spec", "timeoutSeconds"],
                "a timeout must be at least one second",
            ));
        }
        spec.timeout_secs = t;
    }
    for var in container.env.unwrap_or_default() {
        spec.env_vars
            .insert(var.name, var.value.unwrap_or_default().0);
    }
    let command: Vec<String> = container
        .command
        .unwrap_or_default()
        .into_iter()
        .chain(container.args.unwrap_or_default())
        .collect();
    if !command.is_empty() {
        spec.env_process = Some(command.join(" "));
    }
    if let Some(r) = &container.resources {
        let base = ["spec", "template", "spec", "containers", "resources"];
        if let Some(q) = &r.limits {
            let path = [&base[..], &["limits"]].concat();
            spec.limits = ctx.resources(&path, q.memory.as_ref(), q.cpu.as_ref())?;
        }
        if let Some(q) = &r.requests {
            let path = [&base[..], &["requests"]].concat();
            spec.requests = ctx.resources(&path, q.memory.as_ref(), q.cpu.as_ref())?;
        }
    }
    Ok(ManifestFunction {
        spec,
        template: None,
        handler: None,
    })
}
