//! `/system/artefacts`: receives a handler folder (as a tar archive) and builds it into an
//! immutable, content-addressed artefact registered under an image name.

use axum::extract::State;

use crate::extract::Query;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use skyfri_core::Template;
use skyfri_store::Image;

use crate::error::GatewayError;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct BuildQuery {
    image: String,
    template: String,
}

pub async fn build(
    State(state): State<AppState>,
    Query(q): Query<BuildQuery>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, GatewayError> {
    let template = Template::from_lang(&q.template).ok_or_else(|| {
        GatewayError::bad_request(format!(
            "template: {:?} is not a known template ({})",
            q.template,
            Template::ALL.map(Template::name).join(", ")
        ))
    })?;
    if q.image.trim().is_empty() || q.image.len() > 512 {
        return Err(GatewayError::bad_request(
            "image: must be 1 to 512 characters",
        ));
    }
    let artefacts = state.artefacts.clone();
    let tmp_root = state.tmp_dir.clone();
    let started = std::time::Instant::now();
    let built = tokio::task::spawn_blocking(move || -> Result<String, GatewayError> {
        std::fs::create_dir_all(&tmp_root).map_err(GatewayError::internal)?;
        let dir = tempfile::tempdir_in(&tmp_root).map_err(GatewayError::internal)?;
        unpack(&body, dir.path())?;
        artefacts
            .build(template, dir.path())
            .map_err(|e| GatewayError::bad_request(format!("build failed: {e}")))
    })
    .await
    .map_err(GatewayError::internal)
    .and_then(|b| b);
    let outcome = if built.is_ok() { "ok" } else { "error" };
    state
        .metrics
        .build(template.name(), outcome, started.elapsed());
    let artefact = built?;
    let image = Image {
        name: q.image.clone(),
        artefact: artefact.clone(),
        template,
    };
    state
        .blocking(move |s| Ok(s.store.put_image(&image)?))
        .await?;
    tracing::info!(image = %q.image, %artefact, "built");
    Ok(Json(serde_json::json!({
        "image": q.image,
        "artefact": artefact,
        "template": template.name(),
    })))
}

/// Unpacks a handler archive: regular files and folders only. A link, device or fifo could
/// reach outside the handler (the gateway's own files), so it is refused, naming the entry.
fn unpack(body: &[u8], dir: &std::path::Path) -> Result<(), GatewayError> {
    let invalid =
        |e: std::io::Error| GatewayError::bad_request(format!("invalid handler archive: {e}"));
    let mut archive = tar::Archive::new(body);
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            let path = entry.path().map_err(invalid)?.display().to_string();
            return Err(GatewayError::bad_request(format!(
                "handler archive entry {path:?} is not a file or folder ({kind:?}): links are not allowed"
            )));
        }
        // `unpack_in` refuses entries that would land outside `dir` (absolute or `..` paths).
        entry.unpack_in(dir).map_err(invalid)?;
    }
    Ok(())
}
