//! The CQL schema and its migrations.
//!
//! Migrations are numbered from 1 and only ever appended. [`migrate`] reads
//! the version recorded in `schema_version`, applies every later migration
//! in order and records each one. Every statement is idempotent (`... IF
//! NOT EXISTS`) and `migrate` runs the statements of recorded migrations
//! again too (a no-op for what exists), so a migration interrupted half
//! way, two gateways migrating at once, or a keyspace missing a table its
//! version promises is repaired by running `migrate` again. (CQL has no
//! `ADD ... IF NOT EXISTS` everywhere: an `ALTER TABLE t ADD c type` is run
//! only when `system_schema.columns` lacks the column.) Gateways
//! refuse to start against a keyspace whose version is not
//! [`SCHEMA_VERSION`] ([`check_version`]).

use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::Statement;

use super::codec::{cql_error, valid_identifier};
use super::options::CqlOptions;
use crate::StoreError;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i32 = 4;

/// Migration `n` is `MIGRATIONS[n - 1]`: its CQL statements, run in order.
const MIGRATIONS: &[&[&str]] = &[
    &[
        // Inbox messages: one partition per (inbox, bucket of SEQS_PER_BUCKET
        // seqs), clustered by seq; `message` is the protobuf `v1.Message`.
        "CREATE TABLE IF NOT EXISTS inbox_messages (
        inbox text, bucket bigint, seq bigint, message blob,
        PRIMARY KEY ((inbox, bucket), seq)
    ) WITH CLUSTERING ORDER BY (seq ASC)",
        // The durable high-water mark of each inbox's seqs: no seq above
        // `reserved` was ever handed out. Raised with LWTs only.
        "CREATE TABLE IF NOT EXISTS inbox_heads (inbox text PRIMARY KEY, reserved bigint)",
        // (sender, client_msg_id) → where the message went; claimed with an LWT.
        "CREATE TABLE IF NOT EXISTS idempotency (
        sender text, client_msg_id text, inbox text, seq bigint, msg_id text,
        PRIMARY KEY ((sender, client_msg_id))
    )",
        // Per-device delivery cursors of an inbox.
        "CREATE TABLE IF NOT EXISTS device_cursors (
        inbox text, device text, seq bigint,
        PRIMARY KEY (inbox, device)
    )",
        // A user's conversation list: one row per peer (user or group) with the
        // last message, the unread count and the read cursor. Unread count and
        // read cursor live in one row, so one write changes both atomically.
        "CREATE TABLE IF NOT EXISTS conversations (
        owner text, peer text, peer_kind text,
        last_seq bigint, last_msg_id text, last_message blob, last_time_ms bigint,
        unread int, read_seq bigint,
        PRIMARY KEY (owner, peer)
    )",
        // Group logs (read diffusion): partitioned like inboxes by (group,
        // bucket of SEQS_PER_BUCKET group seqs), clustered by group seq.
        "CREATE TABLE IF NOT EXISTS group_messages (
        group_id text, bucket bigint, seq bigint, message blob,
        PRIMARY KEY ((group_id, bucket), seq)
    ) WITH CLUSTERING ORDER BY (seq ASC)",
        // The durable high-water mark of each group log, as for inboxes.
        "CREATE TABLE IF NOT EXISTS group_heads (group_id text PRIMARY KEY, reserved bigint)",
        // Each member's read cursor in a group log.
        "CREATE TABLE IF NOT EXISTS group_cursors (
        group_id text, user_id text, read_seq bigint,
        PRIMARY KEY (group_id, user_id)
    )",
    ],
    &[
        // Conversations and groups (see `cluster::conversations` and
        // `cluster::groups` for how they are written).
        //
        // A user's conversations: flags, the read cursor (written with the
        // cursor as its write timestamp, so the highest cursor wins whatever
        // the order of writes), the time the conversation was created and the
        // server time of its oldest message (written with a timestamp that
        // falls as the time grows, so the oldest wins): the history's
        // retention boundary once older copies have expired.
        "CREATE TABLE IF NOT EXISTS im_conversations (
        owner text, peer text, created_ms bigint, read_seq bigint,
        pinned boolean, muted boolean, oldest_ms bigint,
        PRIMARY KEY (owner, peer)
    )",
        // Every copy of a conversation in its owner's inbox, newest first.
        "CREATE TABLE IF NOT EXISTS im_conv_messages (
        owner text, peer text, seq bigint,
        PRIMARY KEY ((owner, peer), seq)
    ) WITH CLUSTERING ORDER BY (seq DESC)",
        // The copies that count as unread above the read cursor (from someone
        // else, not recalled, not deleted): unread = the rows above the cursor.
        "CREATE TABLE IF NOT EXISTS im_conv_unread (
        owner text, peer text, seq bigint,
        PRIMARY KEY ((owner, peer), seq)
    ) WITH CLUSTERING ORDER BY (seq DESC)",
        // Where the copies of a posted message are, the primary at pos 0.
        "CREATE TABLE IF NOT EXISTS im_msg_copies (
        msg_id text, pos int, inbox text, seq bigint,
        PRIMARY KEY (msg_id, pos)
    )",
        // A group and its members in one partition: the group record and its
        // version (static, changed by lightweight transactions only) and one
        // row per member.
        "CREATE TABLE IF NOT EXISTS im_groups (
        group_id text, info blob static, version bigint static,
        user_id text, member blob,
        PRIMARY KEY (group_id, user_id)
    )",
        // The groups a user may be in (a superset: checked against im_groups).
        "CREATE TABLE IF NOT EXISTS im_user_groups (
        user_id text, group_id text,
        PRIMARY KEY (user_id, group_id)
    )",
        // Contacts, schedules and presence.
        //
        // `owner`'s side of a relation with `other`: 1 friend, 2 request sent,
        // 3 request received (with when and the requester's message).
        "CREATE TABLE IF NOT EXISTS contacts (
        owner text, other text, state int, at_ms bigint, message text,
        PRIMARY KEY (owner, other)
    )",
        // `owner` blocked `other`.
        "CREATE TABLE IF NOT EXISTS blocks (owner text, other text, PRIMARY KEY (owner, other))",
        // Pending scheduled sends by id: the entry (a `v1.ScheduledSend`), its
        // state (0 pending, 1 being posted since `claimed_ms`). Cancel and fire
        // are LWTs on this row, so exactly one of them wins.
        "CREATE TABLE IF NOT EXISTS schedules (
        id text PRIMARY KEY, owner text, due_ms bigint, entry blob,
        state int, claimed_ms bigint
    )",
        // The same entries by delivery time, spread over a fixed number of
        // shards (partitions) so no partition holds every pending entry;
        // `written_ms` tells an index row left by a crash from one being
        // written.
        "CREATE TABLE IF NOT EXISTS schedules_due (
        shard int, due_ms bigint, id text, written_ms bigint,
        PRIMARY KEY (shard, due_ms, id)
    ) WITH CLUSTERING ORDER BY (due_ms ASC, id ASC)",
        // Session records (online-time statistics): end_ms 0 while open or
        // when the node died.
        "CREATE TABLE IF NOT EXISTS sessions (
        user_id text, start_ms bigint, device text, end_ms bigint,
        PRIMARY KEY (user_id, start_ms, device)
    ) WITH CLUSTERING ORDER BY (start_ms ASC, device ASC)",
        // When each user's last ended session ended; written with the end time
        // as the write timestamp, so the latest end wins whatever the order.
        "CREATE TABLE IF NOT EXISTS last_seen (user_id text PRIMARY KEY, at_ms bigint)",
        // Delivery receipts already appended, per (recipient, msg_id), for
        // 30 days: another device (or node) acknowledging the same message
        // appends no second receipt.
        "CREATE TABLE IF NOT EXISTS im_receipts (
        recipient text, msg_id text,
        PRIMARY KEY ((recipient, msg_id))
    )",
    ],
    &[
        // Group trust: each user's pending group invitations (a superset,
        // checked against the group's `~i:` rows in im_groups, which also
        // hold join requests `~r:` and bans `~b:`), and each user's
        // settings (who may add them to groups).
        "CREATE TABLE IF NOT EXISTS im_user_invitations (
        user_id text, group_id text,
        PRIMARY KEY (user_id, group_id)
    )",
        "CREATE TABLE IF NOT EXISTS user_settings (user_id text PRIMARY KEY, group_adds int)",
        // The rules of friend requests, blocks and schedules (see
        // `cluster::contacts` and `cluster::schedule`).
        //
        // `blocker` blocked `user_id`: the reverse of `blocks`, written in
        // the same logged batch, so a group post reads who must not get it
        // with one query.
        "CREATE TABLE IF NOT EXISTS blocked_by (
        user_id text, blocker text,
        PRIMARY KEY (user_id, blocker)
    )",
        // `owner`'s request to `other` is pending (with the contacts row in
        // state 2): counted for the pending-request quota.
        "CREATE TABLE IF NOT EXISTS contact_outgoing (
        owner text, other text,
        PRIMARY KEY (owner, other)
    )",
        // `other` rejected `owner`'s request at `at_ms`: the cool-down's
        // start (kept until the two become friends).
        "CREATE TABLE IF NOT EXISTS contact_rejections (
        owner text, other text, at_ms bigint,
        PRIMARY KEY (owner, other)
    )",
        // `owner`'s pending scheduled sends, counted for the quota (a row
        // left by a crash is removed when a count reaches the quota).
        "CREATE TABLE IF NOT EXISTS schedules_by_owner (
        owner text, id text,
        PRIMARY KEY (owner, id)
    )",
        // The digest of a post's recipient and body, so a reused
        // client_msg_id with another message is told apart from a resend.
        "ALTER TABLE idempotency ADD digest blob",
    ],
    &[
        // Offline push (see `cluster::notify`): each device's push token (a
        // `v1.PushToken`), who holds each token (keyed by its xxh3-128), and
        // each user's preview settings (a `v1.PushSettingsResponse`).
        "CREATE TABLE IF NOT EXISTS push_tokens (
        user_id text, device text, entry blob,
        PRIMARY KEY (user_id, device)
    )",
        "CREATE TABLE IF NOT EXISTS push_token_owners (
        token_key text PRIMARY KEY, user_id text, device text
    )",
        "CREATE TABLE IF NOT EXISTS push_settings (user_id text PRIMARY KEY, settings blob)",
    ],
];

const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    component text PRIMARY KEY, version int, applied_at timestamp
)";

/// The component name in `schema_version`.
const COMPONENT: &str = "qim";

/// Creates the keyspace (with `options.replication`) if missing and brings
/// its schema to [`SCHEMA_VERSION`]. Idempotent. Returns the version found
/// before.
pub async fn migrate(session: &Session, options: &CqlOptions) -> Result<i32, StoreError> {
    let ks = &options.keyspace;
    valid_identifier(ks)?;
    run(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
            options.replication
        ),
    )
    .await?;
    session
        .use_keyspace(ks, false)
        .await
        .map_err(|e| StoreError::Unavailable(format!("USE {ks}: {e}")))?;
    run(session, VERSION_TABLE).await?;
    let before = current_version(session).await?;
    for (i, statements) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        // Statements of recorded migrations run again too: each is
        // idempotent (and a no-op on what exists), so a keyspace that
        // lacks part of what its version promises is repaired.
        for cql in *statements {
            match added_column(cql) {
                Some((table, column)) => {
                    if !has_column(session, ks, table, column).await? {
                        // Another migrator may add it at the same time.
                        if let Err(e) = run(session, cql).await {
                            if !has_column(session, ks, table, column).await? {
                                return Err(e);
                            }
                        }
                    }
                }
                None => run(session, cql).await?,
            }
        }
        if version <= before {
            continue;
        }
        let mut record = Statement::new(
            "INSERT INTO schema_version (component, version, applied_at) VALUES (?, ?, toTimestamp(now()))",
        );
        record.set_consistency(Consistency::LocalQuorum);
        session
            .query_unpaged(record, (COMPONENT, version))
            .await
            .map_err(cql_error)?;
        tracing::info!(keyspace = %ks, version, "CQL schema migrated");
    }
    Ok(before)
}

/// Fails unless the session's keyspace is at [`SCHEMA_VERSION`].
pub async fn check_version(session: &Session, keyspace: &str) -> Result<(), StoreError> {
    match current_version(session).await {
        Ok(SCHEMA_VERSION) => Ok(()),
        Ok(v) => Err(StoreError::Invalid(format!(
            "keyspace {keyspace} has schema version {v}, this build needs {SCHEMA_VERSION}: run `qim-gateway migrate`"
        ))),
        Err(e) => Err(StoreError::Invalid(format!(
            "keyspace {keyspace} has no qim schema ({e}): run `qim-gateway migrate`"
        ))),
    }
}

async fn current_version(session: &Session) -> Result<i32, StoreError> {
    let mut read = Statement::new("SELECT version FROM schema_version WHERE component = ?");
    read.set_consistency(Consistency::LocalQuorum);
    let rows = session
        .query_unpaged(read, (COMPONENT,))
        .await
        .map_err(cql_error)?
        .into_rows_result()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let row = rows
        .maybe_first_row::<(Option<i32>,)>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(row.and_then(|(v,)| v).unwrap_or(0))
}

/// The table and column of an `ALTER TABLE t ADD c type` statement.
fn added_column(cql: &str) -> Option<(&str, &str)> {
    let mut words = cql.split_whitespace();
    match (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) {
        (Some("ALTER"), Some("TABLE"), Some(table), Some("ADD"), Some(column)) => {
            Some((table, column))
        }
        _ => None,
    }
}

async fn has_column(
    session: &Session,
    keyspace: &str,
    table: &str,
    column: &str,
) -> Result<bool, StoreError> {
    let mut read = Statement::new(
        "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
    );
    read.set_consistency(Consistency::One);
    let rows = session
        .query_unpaged(read, (keyspace, table, column))
        .await
        .map_err(cql_error)?
        .into_rows_result()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(rows.rows_num() > 0)
}

async fn run(session: &Session, cql: &str) -> Result<(), StoreError> {
    session
        .query_unpaged(cql, ())
        .await
        .map_err(|e| StoreError::Unavailable(format!("{e} in: {cql}")))?;
    Ok(())
}
