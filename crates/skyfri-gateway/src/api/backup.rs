//! `GET /system/backup`: a backup of the data dir as a tar.gz stream, taken while the
//! platform runs (see [`crate::backup`]).

use std::io::{self, Write};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backup::Snapshot;
use crate::error::GatewayError;
use crate::state::AppState;

/// Bytes handed to the response at a time.
const CHUNK: usize = 64 << 10;
/// Chunks written ahead of a slow reader.
const AHEAD: usize = 8;

pub async fn backup(State(state): State<AppState>) -> Result<Response, GatewayError> {
    let (data_dir, tmp_dir) = (state.locations.data_dir.clone(), state.tmp_dir.clone());
    let queue = state.queue.backend();
    // Snapshots before the answer starts, so a failure there is a proper error status.
    let snapshot = tokio::task::spawn_blocking(move || Snapshot::take(&data_dir, &tmp_dir, queue))
        .await
        .map_err(GatewayError::internal)??;
    let m = snapshot.manifest();
    tracing::info!(
        functions = m.functions,
        secrets = m.secrets,
        queued_calls = m.queued_calls,
        bytes = m.bytes,
        "backup started"
    );
    let filename = format!(
        "skyfri-backup-{}.tar.gz",
        m.created_at.format("%Y%m%dT%H%M%SZ")
    );
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(AHEAD);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        match snapshot.write_to(out).and_then(|mut out| {
            out.flush()
                .map_err(crate::backup::BackupError::io("sending the backup"))
        }) {
            Ok(_) => tracing::info!("backup sent"),
            Err(e) => {
                tracing::error!(error = %e, "backup failed");
                // Ends the body with an error, so the client sees an incomplete download.
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Hands what the archive writer writes to the response body, a chunk at a time; a reader
/// that went away is a broken pipe, which stops the writer.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
