//! Group administration on the business's behalf: create a group for an
//! owner, add and remove members, mute, dissolve, read its info.
//!
//! Each call is the group request a client would make, made as the group's
//! owner (read from the store) through the same code ([`crate::groups`]):
//! one atomic store operation, the members' pushes moved on every node,
//! the events delivered. The owner's powers are the limit: the users'
//! own rules still hold (a user whose `GroupAdds` setting refuses the owner
//! is invited instead of added, and the answer says so).

use axum::Json;
use axum::extract::State;
use qim_proto::v1::{self, group_request, rpc_response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AdminState;
use super::error::{ApiError, ErrorBody};
use super::input::{Body, Id};
use crate::groups::{GroupRpc, rpc};

/// `POST /v1/groups`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateGroup {
    /// The new group's id (1-64 of `[A-Za-z0-9._@-]`); 409 if taken.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    group: String,
    /// The user who owns it.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    owner: String,
    /// Display name, at most 256 bytes.
    #[serde(default)]
    name: String,
    /// Members besides the owner.
    #[serde(default)]
    members: Vec<String>,
    /// `invite_only` (default), `open` or `approval`.
    #[serde(default)]
    join_policy: Option<String>,
    /// Member limit; 0 or absent: the server's.
    #[serde(default)]
    max_members: u32,
    /// Non-members may read its info.
    #[serde(default)]
    public: bool,
}

/// `POST /v1/groups/{group}/members` and `.../members/remove`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Users {
    /// The users (1-5000).
    users: Vec<String>,
}

/// `POST /v1/groups/{group}/mute`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Mute {
    /// The member to mute or unmute; absent: everyone but admins.
    #[serde(default)]
    user: Option<String>,
    /// Mute (true) or unmute (false).
    muted: bool,
}

/// A group as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct GroupView {
    id: String,
    name: String,
    owner: String,
    member_count: u32,
    /// Only admins and the owner may send.
    muted_all: bool,
    dissolved: bool,
    /// Messages go to one group log (large groups).
    read_diffusion: bool,
    /// Users of a create or an add who were sent an invitation instead of
    /// being added (their own rules asked for it).
    invited: Vec<String>,
}

fn view(kind: rpc_response::Kind) -> Result<Json<GroupView>, ApiError> {
    let rpc_response::Kind::Group(v1::GroupResponse {
        group: Some(info),
        invited,
        ..
    }) = kind
    else {
        return Err(ApiError::Unavailable("the group answer was not understood"));
    };
    Ok(Json(GroupView {
        id: info.id,
        name: info.name,
        owner: info.owner,
        member_count: info.member_count,
        muted_all: info.muted_all,
        dissolved: info.dissolved,
        read_diffusion: info.read_diffusion,
        invited,
    }))
}

/// The owner of `group`, who the business acts as.
async fn owner(state: &AdminState, group: &str) -> Result<String, ApiError> {
    match state.ctx.stores.groups.group(group).await {
        Ok(Some(info)) if !info.dissolved => Ok(info.owner),
        Ok(_) => Err(ApiError::NotFound),
        Err(e) => {
            tracing::warn!(group, error = %e, "admin API: reading a group failed");
            Err(ApiError::Unavailable("the store is unavailable; retry"))
        }
    }
}

/// Applies `op` to `group` as its owner.
async fn change(
    state: &AdminState,
    group: String,
    op: group_request::Op,
) -> Result<Json<GroupView>, ApiError> {
    let by = owner(state, &group).await?;
    let request = v1::GroupRequest {
        group: group.clone(),
        op: Some(op),
    };
    let kind = rpc(&state.ctx, &by, GroupRpc::Change(request)).await?;
    tracing::info!(group, "admin API: group changed");
    view(kind)
}

/// Creates a group owned by a user.
#[utoipa::path(post, path = "/v1/groups", tag = "groups",
    request_body = CreateGroup,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Created", body = GroupView),
        (status = 400, description = "Malformed request, id, name or policy", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope groups", body = ErrorBody),
        (status = 409, description = "The group id is taken, or the group would be over its limit", body = ErrorBody),
        (status = 410, description = "The owner's or a member's account is deleted (user_deleted)", body = ErrorBody),
        (status = 429, description = "The owner's group quota, or too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn create(
    State(state): State<AdminState>,
    Body(r): Body<CreateGroup>,
) -> Result<Json<GroupView>, ApiError> {
    if !qim_proto::ids::is_valid_id(&r.owner) {
        return Err(ApiError::BadRequest(
            "owner must be 1-64 of [A-Za-z0-9._@-]",
        ));
    }
    crate::policy::check_not_deleted(&state.ctx, &r.owner).await?;
    let join_policy = match r.join_policy.as_deref() {
        None | Some("invite_only") => v1::JoinPolicy::InviteOnly,
        Some("open") => v1::JoinPolicy::Open,
        Some("approval") => v1::JoinPolicy::Approval,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "join_policy must be invite_only, open or approval",
            ));
        }
    };
    let request = v1::CreateGroupRequest {
        group: r.group,
        name: r.name,
        members: r.members,
        join_policy: join_policy as i32,
        max_members: r.max_members,
        public: r.public,
    };
    let kind = rpc(&state.ctx, &r.owner, GroupRpc::Create(request)).await?;
    tracing::info!(owner = %r.owner, "admin API: group created");
    view(kind)
}

/// The group's info.
#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The group id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope groups", body = ErrorBody),
        (status = 404, description = "No such group (or dissolved)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn info(
    State(state): State<AdminState>,
    Id(group): Id,
) -> Result<Json<GroupView>, ApiError> {
    change(&state, group, group_request::Op::Info(true)).await
}

/// Adds members (as the owner; a user whose rules refuse is invited).
#[utoipa::path(post, path = "/v1/groups/{group}/members", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The group id")),
    request_body = Users,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Added (or invited: see invited)", body = GroupView),
        (status = 400, description = "Malformed id or users", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope groups, or a user is banned or blocked the owner", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 409, description = "The group is full", body = ErrorBody),
        (status = 410, description = "A user's account is deleted (user_deleted)", body = ErrorBody),
        (status = 429, description = "A user's invitation quota, or too many failed attempts", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn add(
    State(state): State<AdminState>,
    Id(group): Id,
    Body(r): Body<Users>,
) -> Result<Json<GroupView>, ApiError> {
    let users = group_request::Users { users: r.users };
    change(&state, group, group_request::Op::Invite(users)).await
}

/// Removes members.
#[utoipa::path(post, path = "/v1/groups/{group}/members/remove", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The group id")),
    request_body = Users,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Removed", body = GroupView),
        (status = 400, description = "Malformed id or users", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope groups, or the owner cannot remove that user", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn remove(
    State(state): State<AdminState>,
    Id(group): Id,
    Body(r): Body<Users>,
) -> Result<Json<GroupView>, ApiError> {
    let users = group_request::Users { users: r.users };
    change(&state, group, group_request::Op::Remove(users)).await
}

/// Mutes or unmutes a member, or everyone but admins.
#[utoipa::path(post, path = "/v1/groups/{group}/mute", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The group id")),
    request_body = Mute,
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Changed", body = GroupView),
        (status = 400, description = "Malformed id or user", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope groups, or the user is not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn mute(
    State(state): State<AdminState>,
    Id(group): Id,
    Body(r): Body<Mute>,
) -> Result<Json<GroupView>, ApiError> {
    let op = match (r.user, r.muted) {
        (Some(user), muted) => {
            group_request::Op::MuteMember(group_request::SetMute { user, muted })
        }
        (None, true) => group_request::Op::MuteAll(true),
        (None, false) => group_request::Op::UnmuteAll(true),
    };
    change(&state, group, op).await
}

/// Dissolves the group: members stop receiving, sends are refused.
#[utoipa::path(post, path = "/v1/groups/{group}/dissolve", tag = "groups",
    params(("group" = String, Path, pattern = "^[A-Za-z0-9._@-]{1,64}$", description = "The group id")),
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Dissolved", body = GroupView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No key, or a wrong one", body = ErrorBody),
        (status = 403, description = "The key lacks scope groups", body = ErrorBody),
        (status = 404, description = "No such group (or dissolved already)", body = ErrorBody),
        (status = 429, description = "Too many failed attempts from this address", body = ErrorBody),
        (status = 503, description = "The store is unavailable; retry", body = ErrorBody),
    ))]
pub(super) async fn dissolve(
    State(state): State<AdminState>,
    Id(group): Id,
) -> Result<Json<GroupView>, ApiError> {
    change(&state, group, group_request::Op::Dissolve(true)).await
}
