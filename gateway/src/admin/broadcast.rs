//! Broadcasts: one message from the system account to every registered
//! user (`POST /v1/broadcasts`), paced at `backend.broadcast_per_second`,
//! with its progress visible (`GET /v1/broadcasts/{id}`).
//!
//! A broadcast walks the registered users in id order, a page at a time
//! (`backend.broadcast_page`), and posts each page through the clients'
//! durable path in one store call, each copy with a key derived from the
//! broadcast's id and the recipient. That makes it resumable: started again
//! with the same id (after a restart, or from `resume_after`, the cursor
//! its progress shows), it stores nothing twice and nobody receives it
//! twice. Progress lives in this node's memory (the last
//! `KEPT` broadcasts); the messages themselves are durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::AdminState;
use super::error::{ApiError, ErrorBody};
use super::input::{Body, Id};
use super::send::{DEVICE, frame, outcome, recipient_key};
use crate::ctx::Ctx;
use crate::mutex::lock;
use crate::post::{Sender, Trust, post_sends_as};

/// Broadcasts whose progress this node remembers.
const KEPT: usize = 256;

/// Failed reads of the user list in a row before a broadcast gives up.
const READ_ATTEMPTS: u32 = 10;

/// `POST /v1/broadcasts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BroadcastRequest {
    /// The broadcast's id (1-64 of `[A-Za-z0-9._@-]`): the same id again
    /// answers its progress, and after a restart resumes it without
    /// sending twice.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    id: String,
    /// Application content type (default `"text"`).
    #[serde(default)]
    kind: Option<String>,
    /// The message body (UTF-8).
    text: String,
    /// Start after this user id (a progress's `cursor`); absent: from the
    /// first registered user.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    #[serde(default)]
    resume_after: Option<String>,
}

/// How far a broadcast got.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Progress {
    id: String,
    /// `running`, `done` or `failed` (the user list could not be read;
    /// start it again with `resume_after` = `cursor`).
    state: &'static str,
    /// Registered users walked so far.
    reached: u64,
    /// Recipients stored (or stored before, by an earlier run).
    sent: u64,
    /// Recipients refused.
    failed: u64,
    /// The last user walked: resume after it.
    cursor: String,
    /// When this run started (ms since the epoch).
    started_ms: i64,
}

/// This node's broadcasts, by id.
#[derive(Default)]
pub(crate) struct Broadcasts {
    jobs: Mutex<HashMap<String, Arc<Mutex<Progress>>>>,
}

/// Starts a broadcast to every registered user, or answers the progress
/// of the one with this id.
#[utoipa::path(post, path = "/v1/broadcasts", tag = "messages",
    request_body = BroadcastRequest,
    security(("admin_key" = [])),
    responses(
        (status = 202, description = "Started, or under way: its progress", body = Progress),
        (status = 200, description = "Finished before: its progress", body = Progress),
        (status = 400, description = "Malformed request, id or cursor", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope messages", body = ErrorBody),
        (status = 413, description = "The body is above limits.max_body_bytes", body = ErrorBody),
        (status = 429, description = "backend.max_broadcasts are under way, or too many failed attempts", body = ErrorBody),
    ))]
pub(super) async fn start(
    State(state): State<AdminState>,
    Body(r): Body<BroadcastRequest>,
) -> Result<(StatusCode, Json<Progress>), ApiError> {
    let ctx = &state.ctx;
    if !qim_proto::ids::is_valid_id(&r.id) {
        return Err(super::input::INVALID_ID);
    }
    if r.resume_after
        .as_deref()
        .is_some_and(|c| !qim_proto::ids::is_valid_id(c))
    {
        return Err(ApiError::BadRequest("resume_after must be a user id"));
    }
    let kind = r.kind.unwrap_or_else(|| "text".into());
    crate::post::check_content(ctx, r.text.as_bytes(), &kind)?;
    let progress = {
        let mut jobs = lock(&state.broadcasts.jobs);
        if let Some(job) = jobs.get(&r.id) {
            let p = lock(job).clone();
            let status = if p.state == "running" {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            };
            if p.state != "failed" || r.resume_after.is_none() {
                return Ok((status, Json(p)));
            }
        }
        let running = jobs.values().filter(|j| lock(j).state == "running").count();
        if running >= ctx.config.backend.max_broadcasts as usize {
            return Err(ApiError::RateLimited(Duration::from_secs(1)));
        }
        if jobs.len() >= KEPT {
            jobs.retain(|_, j| lock(j).state == "running");
        }
        let progress = Arc::new(Mutex::new(Progress {
            id: r.id.clone(),
            state: "running",
            reached: 0,
            sent: 0,
            failed: 0,
            cursor: r.resume_after.clone().unwrap_or_default(),
            started_ms: qim_proto::now_ms(),
        }));
        jobs.insert(r.id.clone(), Arc::clone(&progress));
        progress
    };
    let snapshot = lock(&progress).clone();
    info!(id = %r.id, "admin API: broadcast started");
    tokio::spawn(run(
        Arc::clone(&state.ctx),
        r.id,
        kind,
        r.text.into_bytes(),
        progress,
    ));
    Ok((StatusCode::ACCEPTED, Json(snapshot)))
}

/// Walks the registered users and posts the broadcast to each, paced.
async fn run(
    ctx: Arc<Ctx>,
    id: String,
    kind: String,
    body: Vec<u8>,
    progress: Arc<Mutex<Progress>>,
) {
    let backend = &ctx.config.backend;
    let page = backend.broadcast_page as usize;
    let per_second = f64::from(backend.broadcast_per_second);
    let key = format!("broadcast:{id}");
    let system = backend.system_user.clone();
    let sender = Sender {
        user: &system,
        device: DEVICE,
        first_attempts: None,
    };
    let started = Instant::now();
    let mut cursor = lock(&progress).cursor.clone();
    let mut walked = 0u64;
    let mut failed_reads = 0;
    loop {
        let users = match ctx.stores.accounts.accounts_after(&cursor, page).await {
            Ok(users) => users,
            Err(e) => {
                failed_reads += 1;
                warn!(id, error = %e, attempt = failed_reads, "broadcast: reading the users failed");
                if failed_reads >= READ_ATTEMPTS {
                    lock(&progress).state = "failed";
                    return;
                }
                // Why a sleep: a backoff before reading the store again.
                tokio::time::sleep(Duration::from_millis(200 << failed_reads.min(4))).await;
                continue;
            }
        };
        failed_reads = 0;
        let Some(last) = users.last().cloned() else {
            break;
        };
        let sends = users
            .iter()
            .map(|user| {
                frame(
                    qim_proto::v1::peer::Target::User(user.clone()),
                    Some(kind.clone()),
                    body.clone(),
                    recipient_key(&key, user),
                )
            })
            .collect();
        let acks = post_sends_as(&ctx, &sender, sends, Trust::System, None).await;
        let sent = acks
            .into_iter()
            .filter(|a| outcome(a.clone()).is_ok())
            .count() as u64;
        walked += users.len() as u64;
        {
            let mut p = lock(&progress);
            p.reached += users.len() as u64;
            p.sent += sent;
            p.failed += users.len() as u64 - sent;
            p.cursor.clone_from(&last);
        }
        cursor = last;
        // Pacing: no faster than broadcast_per_second on average.
        let due = started + Duration::from_secs_f64(walked as f64 / per_second);
        tokio::time::sleep_until(due).await;
    }
    let mut p = lock(&progress);
    p.state = "done";
    info!(
        id,
        reached = p.reached,
        sent = p.sent,
        failed = p.failed,
        "broadcast done"
    );
}

/// A broadcast's progress.
#[utoipa::path(get, path = "/v1/broadcasts/{id}", tag = "messages",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The broadcast's id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Its progress", body = Progress),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope messages", body = ErrorBody),
        (status = 404, description = "This node has no broadcast by that id", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
    ))]
pub(super) async fn progress(
    State(state): State<AdminState>,
    Id(id): Id,
) -> Result<Json<Progress>, ApiError> {
    let job = lock(&state.broadcasts.jobs).get(&id).cloned();
    match job {
        Some(job) => Ok(Json(lock(&job).clone())),
        None => Err(ApiError::NotFound),
    }
}
