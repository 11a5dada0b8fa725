//! Durable enqueues per second of the embedded queue: TASKS concurrent tasks enqueue CALLS
//! calls with 1 KiB bodies into a fresh queue in a temporary directory, as the gateway does
//! for `POST /async-function/NAME`.
//!
//! ```text
//! cargo run --release -p skyfri-queue --example enqueue_rate [-- TASKS CALLS [full] [ordered]]
//! ```
//!
//! Defaults: 64 tasks, 200,000 calls, random (v4) UUIDs as ids, `Durability::ProcessCrash`.
//! `full` measures `Durability::PowerLoss` (an fsync per commit); `ordered` uses time-ordered
//! (v7) UUIDs, which land at the end of the id index instead of on a random page of it.

use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use skyfri_queue::{AsyncCall, Durability, EmbeddedOptions, EmbeddedQueue, Enqueued, Queue};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tasks: usize = args.first().map_or(Ok(64), |a| a.parse())?;
    let calls: usize = args.get(1).map_or(Ok(200_000), |a| a.parse())?;
    let flag = |name: &str| args.iter().skip(2).any(|a| a == name);
    let durability = if flag("full") {
        Durability::PowerLoss
    } else {
        Durability::ProcessCrash
    };
    let ordered = flag("ordered");
    let per_task = calls / tasks;

    let dir = tempfile::tempdir()?;
    let queue = EmbeddedQueue::open_with(
        &dir.path().join("queue.db"),
        EmbeddedOptions {
            durability,
            ..EmbeddedOptions::default()
        },
    )?;
    let body = Bytes::from(vec![b'x'; 1024]);
    let headers = vec![
        ("Content-Type".to_owned(), "application/json".to_owned()),
        ("User-Agent".to_owned(), "enqueue_rate".to_owned()),
    ];

    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let queue = queue.clone();
            let body = body.clone();
            let headers = headers.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let id = if ordered {
                        uuid::Uuid::now_v7()
                    } else {
                        uuid::Uuid::new_v4()
                    };
                    let call = AsyncCall {
                        id: id.to_string(),
                        function: format!("fn{}", task % 8),
                        method: "POST".into(),
                        path: "/".into(),
                        query: String::new(),
                        headers: headers.clone(),
                        body: body.clone(),
                        callback_url: None,
                        enqueued_at: Utc::now(),
                    };
                    anyhow::ensure!(queue.enqueue(call).await? == Enqueued::New);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();

    let total = per_task * tasks;
    let ids = if ordered { "v7" } else { "v4" };
    println!(
        "{total} durable enqueues (1 KiB bodies, {tasks} tasks, {ids} ids, {durability:?}) \
         in {:.2} s: {:.0} calls/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
    );
    Ok(())
}
