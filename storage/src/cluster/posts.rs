//! Posts on the cluster store: claims, seqs from the allocator, and the
//! copies with their indexes in logged batches (see `conversations.rs` for
//! the design, idempotency included).

use std::collections::HashMap;

use qim_proto::v1;

use super::{ClusterStore, Pending, bounded};
use crate::OpError;
use crate::conversations::{Post, Posted, conversation_of, counts_as_unread, group_log, peer_key};
use crate::cql::Claim;
use crate::cql::writes::Writes;
use crate::groups::check_post;
use crate::model::new_msg_id;
use crate::{StoreError, StoredMessage};

/// Retries of a post's claim and writes after its seqs were taken.
const RETRIES: usize = 2;

/// Rounds a group post retries when the group changed under it.
const GROUP_ROUNDS: usize = 16;

/// A post of a batch (by index) and how it ended.
type Outcome = (usize, Result<Posted, OpError>);

/// What happens to one post of a batch.
enum Plan {
    SameAs(usize),
    Resend(Claim),
    Refused(OpError),
    New,
}

/// The conversation a post goes to, as seen by its sender.
fn conversation_key(post: &Post) -> Vec<u8> {
    let mut key = post.sender.as_bytes().to_vec();
    key.push(0);
    prost::Message::encode(&post.to, &mut key).unwrap_or_default();
    key
}

impl ClusterStore {
    /// [`ConversationStore::post`](crate::ConversationStore::post) of the
    /// cluster store.
    pub(super) async fn post_batch(
        &self,
        batch: Vec<Post>,
    ) -> Result<Vec<Result<Posted, OpError>>, StoreError> {
        // Copies inside the batch, then earlier claims.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        let mut plans: Vec<Option<Plan>> = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            match first.get(&(p.sender.as_str(), p.client_msg_id.as_str())) {
                Some(&j) if batch[j].digest() != p.digest() => {
                    plans.push(Some(Plan::Refused(OpError::Conflict)));
                }
                Some(&j) => plans.push(Some(Plan::SameAs(j))),
                None => {
                    first.insert((&p.sender, &p.client_msg_id), i);
                    plans.push(None);
                }
            }
        }
        let mut unique = Vec::new();
        let mut lookups: Vec<Pending<'_, Option<Claim>>> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            if plans[i].is_none() && p.first_attempt {
                // No earlier attempt to find: the claim alone decides.
                plans[i] = Some(Plan::New);
            } else if plans[i].is_none() {
                unique.push(i);
                lookups.push(Box::pin(self.cql.read_claim(
                    &p.sender,
                    &p.client_msg_id,
                    false,
                )));
            }
        }
        for (i, claim) in unique.into_iter().zip(bounded(lookups).await?) {
            plans[i] = Some(match claim {
                Some(c) if c.digest.as_ref().is_some_and(|d| *d != batch[i].digest()) => {
                    Plan::Refused(OpError::Conflict)
                }
                Some(c) => Plan::Resend(c),
                None => Plan::New,
            });
        }
        // Group posts are resolved (and ordered with group changes) in
        // batch order.
        let mut posts = batch;
        for (i, post) in posts.iter_mut().enumerate() {
            if !matches!(plans[i], Some(Plan::New)) {
                continue;
            }
            if post.inboxes.is_empty() {
                match self.group_inboxes(post).await? {
                    Ok(inboxes) => post.inboxes = inboxes,
                    Err(refused) => plans[i] = Some(Plan::Refused(refused)),
                }
            }
        }
        // Seqs in batch order: the new posts before a resend get theirs
        // before the resend is resolved (it may take a new seq), the ones
        // after it after, so a resend never lands after a later post.
        let mut seqs: Vec<Vec<u64>> = posts.iter().map(|p| vec![0; p.inboxes.len()]).collect();
        let mut resent: Vec<Option<Result<Posted, OpError>>> = posts.iter().map(|_| None).collect();
        let mut run: Vec<usize> = Vec::new();
        for i in 0..posts.len() {
            match &plans[i] {
                Some(Plan::New) => run.push(i),
                Some(Plan::Resend(_)) => {
                    self.allocate_run(&posts, &std::mem::take(&mut run), &mut seqs)
                        .await?;
                    let Some(Plan::Resend(claim)) = plans[i].take() else {
                        continue;
                    };
                    resent[i] = Some(self.resend_post(&posts[i], claim).await?);
                }
                _ => {}
            }
        }
        self.allocate_run(&posts, &run, &mut seqs).await?;
        // Claim and write: the new posts of one conversation one after
        // the other (a later one is not written until the earlier one is,
        // and not at all once one failed), conversations side by side.
        // Written side by side, a later post could land while an earlier
        // one failed; the earlier one's resend would then find the
        // sender's later message stored.
        let mut results: Vec<Option<Result<Posted, OpError>>> =
            posts.iter().map(|_| None).collect();
        let mut runs: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        for (i, post) in posts.iter().enumerate() {
            match plans[i].take() {
                Some(Plan::New) => {
                    let key = conversation_key(post);
                    match runs.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, run)) => run.push(i),
                        None => runs.push((key, vec![i])),
                    }
                }
                Some(Plan::Refused(e)) => results[i] = Some(Err(e)),
                Some(Plan::SameAs(j)) => plans[i] = Some(Plan::SameAs(j)),
                Some(Plan::Resend(_)) | None => results[i] = resent[i].take(),
            }
        }
        let work: Vec<Pending<'_, Vec<Outcome>>> = runs
            .iter()
            .map(|(_, run)| {
                let (posts, seqs) = (&posts, &seqs);
                Box::pin(async move {
                    let mut done = Vec::with_capacity(run.len());
                    for &i in run {
                        if posts[i].inboxes.is_empty() {
                            return Err(StoreError::Invalid(
                                "a post needs at least one inbox".into(),
                            ));
                        }
                        done.push((i, self.store_post(&posts[i], &seqs[i]).await?));
                    }
                    Ok(done)
                }) as Pending<'_, _>
            })
            .collect();
        for (i, result) in bounded(work).await?.into_iter().flatten() {
            results[i] = Some(result);
        }
        let mut out: Vec<Result<Posted, OpError>> = Vec::with_capacity(posts.len());
        for (i, result) in results.into_iter().enumerate() {
            let result = match (result, &plans[i]) {
                (Some(r), _) => r,
                (None, Some(Plan::SameAs(j))) => match &out[*j] {
                    Ok(posted) => Ok(Posted {
                        copies: posted.copies.clone(),
                        duplicate: true,
                    }),
                    Err(e) => Err(e.clone()),
                },
                (None, _) => return Err(StoreError::Invalid("post planning failed".into())),
            };
            out.push(result);
        }
        Ok(out)
    }

    /// Hands out the seqs of the new posts `run` (in order) into `seqs`.
    async fn allocate_run(
        &self,
        posts: &[Post],
        run: &[usize],
        seqs: &mut [Vec<u64>],
    ) -> Result<(), StoreError> {
        let mut per_inbox: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for &i in run {
            for (k, inbox) in posts[i].inboxes.iter().enumerate() {
                per_inbox.entry(inbox.as_str()).or_default().push((i, k));
            }
        }
        let inboxes: Vec<(&str, Vec<(usize, usize)>)> = per_inbox.into_iter().collect();
        let allocations: Vec<Pending<'_, u64>> = inboxes
            .iter()
            .map(|(inbox, idx)| {
                Box::pin(self.seqs.allocate(inbox, idx.len() as u64)) as Pending<'_, _>
            })
            .collect();
        for ((_, idx), first_seq) in inboxes.iter().zip(bounded(allocations).await?) {
            for (n, &(i, k)) in idx.iter().enumerate() {
                seqs[i][k] = first_seq + n as u64;
            }
        }
        Ok(())
    }

    /// Where a group post goes: every member's inbox (the sender's first)
    /// or the group's log, decided at a group version that a lightweight
    /// transaction confirms, so the post is ordered with group changes.
    async fn group_inboxes(&self, post: &Post) -> Result<Result<Vec<String>, OpError>, StoreError> {
        let Some(v1::peer::Target::Group(g)) = post.to.target.as_ref() else {
            return Err(StoreError::Invalid(
                "a post needs at least one inbox".into(),
            ));
        };
        for _ in 0..GROUP_ROUNDS {
            let Some((info, version)) = self.cql.group(g, false).await? else {
                return Ok(Err(OpError::NotFound));
            };
            let member = self.cql.member(g, &post.sender).await?;
            if let Err(refused) = check_post(&info, member.as_ref(), post.mention_all) {
                return Ok(Err(refused));
            }
            let inboxes = if info.read_diffusion {
                vec![group_log(g)]
            } else {
                // Members who blocked the sender get no copy (one read of
                // the reverse block index).
                let (members, blockers) = tokio::try_join!(
                    self.cql.members(g, "", usize::MAX >> 2),
                    self.names(&self.social.blockers_of, &post.sender),
                )?;
                let blockers: std::collections::HashSet<String> = blockers.into_iter().collect();
                let mut inboxes = vec![post.sender.clone()];
                for m in members {
                    if m.user != post.sender && !blockers.contains(&m.user) {
                        inboxes.push(m.user);
                    }
                }
                inboxes
            };
            if self.cql.group_check(g, version).await? {
                return Ok(Ok(inboxes));
            }
            tracing::debug!(group = %g, "group changed under a post; resolving again");
        }
        Err(StoreError::Unavailable(format!(
            "group {g} changes too fast to post"
        )))
    }

    /// The rows of one new copy.
    fn write_copy(&self, w: &mut Writes, copy: &StoredMessage) -> Result<(), StoreError> {
        w.unit();
        self.cql.w_message(w, copy)?;
        if copy.inbox.starts_with('#') {
            // A group log has no conversations of its own.
            return Ok(());
        }
        let peer = conversation_of(&copy.inbox, &copy.message);
        let key = peer_key(&peer).ok_or_else(|| StoreError::Invalid("empty peer".into()))?;
        self.cql.w_copy(
            w,
            &copy.inbox,
            &key,
            copy.seq,
            counts_as_unread(&copy.inbox, &copy.message),
            copy.message.server_time_ms,
        )
    }

    /// Stores a new post at `seqs` (one per inbox), after claiming its key.
    /// A claim that another post with the same key won is a conflict when
    /// its digest differs.
    async fn store_post(
        &self,
        post: &Post,
        seqs: &[u64],
    ) -> Result<Result<Posted, OpError>, StoreError> {
        let msg_id = new_msg_id(post.server_time_ms);
        let message = post.to_message(msg_id.clone());
        let copies: Vec<StoredMessage> = post
            .inboxes
            .iter()
            .zip(seqs)
            .map(|(inbox, &seq)| StoredMessage {
                inbox: inbox.clone(),
                seq,
                message: message.clone(),
            })
            .collect();
        let claim = Claim {
            inbox: copies[0].inbox.clone(),
            seq: copies[0].seq,
            msg_id: msg_id.clone(),
            written_us: 0,
            digest: Some(post.digest().to_vec()),
        };
        // Seqs are taken: a failure now would leave them as gaps, so
        // transient failures are retried here (both steps are idempotent).
        let mut tries = 0;
        let theirs = loop {
            match self
                .cql
                .claim(&post.sender, &post.client_msg_id, &claim)
                .await
            {
                Ok(theirs) => break theirs,
                Err(e) if e.is_retryable() && tries < RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, "retrying an idempotency claim");
                }
                Err(e) => return Err(e),
            }
        };
        match theirs {
            // Our own claim, applied by an attempt whose answer was lost.
            Some(theirs) if theirs.msg_id == msg_id => {}
            Some(theirs) if theirs.digest.as_ref().is_some_and(|d| *d != post.digest()) => {
                return Ok(Err(OpError::Conflict));
            }
            Some(theirs) => {
                tracing::debug!(sender = %post.sender, "lost a resend race; seqs unused");
                return self.resend_post(post, theirs).await;
            }
            None => {}
        }
        let mut tries = 0;
        loop {
            match self.write_post(&msg_id, &copies).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() && tries < RETRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, "retrying a post's writes");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Ok(Posted {
            copies,
            duplicate: false,
        }))
    }

    async fn write_post(&self, msg_id: &str, copies: &[StoredMessage]) -> Result<(), StoreError> {
        let mut w = Writes::default();
        let index: Vec<(String, u64)> = copies.iter().map(|c| (c.inbox.clone(), c.seq)).collect();
        self.cql.w_copies(&mut w, msg_id, &index)?;
        for copy in copies {
            self.write_copy(&mut w, copy)?;
        }
        self.cql.commit(w).await
    }

    /// A resend of a claimed post: the stored copies, completed if the
    /// first attempt failed part way (within the fill window, at the
    /// claimed seqs; later, a post never written is stored at new seqs,
    /// unless the sender's later messages to the conversation are stored
    /// since: then it is refused as [`OpError::Superseded`], since a new seq
    /// would put it after them).
    async fn resend_post(
        &self,
        post: &Post,
        claim: Claim,
    ) -> Result<Result<Posted, OpError>, StoreError> {
        let index = self.cql.copies(&claim.msg_id).await?;
        let index = if index.is_empty() {
            vec![(claim.inbox.clone(), claim.seq)]
        } else {
            index
        };
        let reads: Vec<Pending<'_, Option<StoredMessage>>> = index
            .iter()
            .map(|(inbox, seq)| Box::pin(self.cql.read_one(inbox, *seq)) as Pending<'_, _>)
            .collect();
        let found = bounded(reads).await?;
        if found.iter().all(Option::is_some) {
            return Ok(Ok(Posted {
                copies: found.into_iter().flatten().collect(),
                duplicate: true,
            }));
        }
        if claim.inbox != post.inboxes.first().cloned().unwrap_or_default() {
            return Err(StoreError::Unavailable(format!(
                "post {}/{} claimed for another inbox is not stored yet",
                post.sender, post.client_msg_id
            )));
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        let window_us = i64::try_from(self.fill_window.as_micros()).unwrap_or(i64::MAX);
        let message = post.to_message(claim.msg_id.clone());
        let young = now_us.saturating_sub(claim.written_us) < window_us;
        let copies: Vec<StoredMessage> = if young || found.iter().any(Option::is_some) {
            // Complete in place: the missing copies at their claimed seqs
            // (only the primary is known when the index never landed).
            let mut index = index;
            if index.len() < post.inboxes.len() && found.iter().all(Option::is_none) {
                for inbox in &post.inboxes[index.len()..] {
                    index.push((inbox.clone(), self.seqs.allocate(inbox, 1).await?));
                }
            }
            index
                .into_iter()
                .map(|(inbox, seq)| StoredMessage {
                    inbox,
                    seq,
                    message: message.clone(),
                })
                .collect()
        } else {
            if self.later_from_sender(post, &claim).await? {
                tracing::info!(sender = %post.sender, "a resend whose first write never landed is superseded by later messages");
                return Ok(Err(OpError::Superseded));
            }
            let mut copies = Vec::with_capacity(post.inboxes.len());
            for inbox in &post.inboxes {
                copies.push(StoredMessage {
                    inbox: inbox.clone(),
                    seq: self.seqs.allocate(inbox, 1).await?,
                    message: message.clone(),
                });
            }
            if !self
                .cql
                .move_claim(&post.sender, &post.client_msg_id, claim.seq, copies[0].seq)
                .await?
            {
                return Err(StoreError::Unavailable(format!(
                    "post {}/{} is being stored by another node",
                    post.sender, post.client_msg_id
                )));
            }
            copies
        };
        tracing::info!(sender = %post.sender, "storing a resend whose first write failed");
        self.write_post(&claim.msg_id, &copies).await?;
        Ok(Ok(Posted {
            copies,
            duplicate: true,
        }))
    }

    /// Whether a message of `post`'s sender to the same conversation is
    /// stored in the claim's inbox after the claimed seq. Reads at most
    /// [`LATER_SCAN`] messages; beyond that it answers yes (the resend is
    /// refused rather than risk the order).
    async fn later_from_sender(&self, post: &Post, claim: &Claim) -> Result<bool, StoreError> {
        let wanted = conversation_of(&claim.inbox, &post.to_message(String::new()));
        let mut after = claim.seq;
        let mut scanned = 0;
        while scanned < LATER_SCAN {
            let page = self.cql.read_inbox(&claim.inbox, after, LATER_PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(false);
            };
            after = last.seq;
            scanned += page.len();
            if page.iter().any(|m| {
                m.message.from_user == post.sender
                    && conversation_of(&m.inbox, &m.message) == wanted
            }) {
                return Ok(true);
            }
        }
        Ok(true)
    }
}

/// Messages [`ClusterStore::later_from_sender`] reads at most, and per page.
const LATER_SCAN: usize = 5_000;
const LATER_PAGE: usize = 500;
