//! The rpc dispatch: one request of a session, answered by the feature it
//! names. Each handler returns a [`Reply`](crate::reply::Reply); a refusal
//! becomes the wire answer in [`reply`](crate::reply), the one place.
//!
//! A new rpc feature adds its request to the schema, a handler in its
//! feature file, and one arm here.

use qim_proto::v1::{self, rpc_request, rpc_response};

use crate::conversations::Change;
use crate::ctx::Ctx;
use crate::groups::GroupRpc;
use crate::reply::{Refusal, Reply, answer};
use crate::{contacts, conversations, delivery, groups, notify, presence, schedule, usage};

/// Who asks: the session's user, device and id.
pub(crate) struct Caller<'a> {
    pub(crate) user: &'a str,
    pub(crate) device: &'a str,
    pub(crate) session_id: u64,
}

/// Answers one rpc request of `caller`.
pub(crate) async fn dispatch(
    ctx: &Ctx,
    caller: &Caller<'_>,
    request: v1::RpcRequest,
) -> rpc_response::Kind {
    let Some(kind) = request.kind else {
        return Refusal::invalid("unknown or empty request").into_rpc();
    };
    let reply = route(ctx, caller, kind).await;
    if let Err(Refusal {
        quota: Some(quota), ..
    }) = &reply
    {
        ctx.metrics.quota_refused(quota);
    }
    answer(reply)
}

async fn route(ctx: &Ctx, caller: &Caller<'_>, kind: rpc_request::Kind) -> Reply {
    use rpc_request::Kind as K;
    let user = caller.user;
    match kind {
        K::Sync(r) => delivery::sync(ctx, user, r).await,
        K::Conversations(r) => conversations::list(ctx, user, r).await,
        K::MarkRead(r) => conversations::change(ctx, user, Change::MarkRead(r)).await,
        K::SetFlags(r) => conversations::change(ctx, user, Change::SetFlags(r)).await,
        K::Recall(r) => conversations::change(ctx, user, Change::Recall(r)).await,
        K::Edit(r) => conversations::change(ctx, user, Change::Edit(r)).await,
        K::Delete(r) => conversations::change(ctx, user, Change::Delete(r)).await,
        K::History(r) => conversations::history(ctx, user, r).await,
        K::ReadCount(r) => conversations::read_count(ctx, user, r).await,
        K::CreateGroup(r) => groups::rpc(ctx, user, GroupRpc::Create(r)).await,
        K::Group(r) => groups::rpc(ctx, user, GroupRpc::Change(r)).await,
        K::Members(r) => groups::rpc(ctx, user, GroupRpc::Members(r)).await,
        K::GroupSync(r) => groups::rpc(ctx, user, GroupRpc::Sync(r)).await,
        K::Contacts(r) => contacts::rpc(ctx, user, r).await,
        K::Schedule(r) => schedule::schedule(ctx, user, caller.device, r).await,
        K::CancelSchedule(r) => schedule::cancel(ctx, user, r).await,
        K::Typing(r) => presence::typing(ctx, user, r).await,
        K::Presence(r) => presence::presence(ctx, user, caller.session_id, r).await,
        K::OnlineTime(r) => presence::online_time(ctx, user, r).await,
        K::Settings(r) => groups::settings(ctx, user, r).await,
        K::Invitations(_) => groups::invitations(ctx, user).await,
        K::Quota(r) => usage::quota(ctx, user, r).await,
        K::PushToken(r) => notify::push_token(ctx, caller, r).await,
        K::PushSettings(r) => notify::push_settings(ctx, user, r).await,
        K::BlobInfo(r) => crate::media::blob_info(ctx, user, r)
            .await
            .map(rpc_response::Kind::BlobInfo),
    }
}
