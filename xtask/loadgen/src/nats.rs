//! The chat scenario against NATS JetStream, a durable peer: one file-backed
//! stream per run (the server is started with `sync_interval: always`, so a
//! publish is acknowledged after its fsync), each sender publishes to its
//! pair's subject and waits for JetStream's publish acks (at most
//! `in_flight` outstanding), each receiver pulls from a durable consumer on
//! that subject and acknowledges cumulatively (`AckPolicy::All`, the last
//! message of every burst it has taken, like qim's `up_to_seq`). Two client
//! connections per pair, as for qim and MQTT.
//!
//! Exactly once and in order are checked as for qim: a gap fails the run,
//! a redelivery is counted as a duplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::future::FutureExt as _;
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use crate::chat::{ChatArgs, Received, summarize};
use crate::soak::Windows;
use crate::stats;

/// The system name in results.
pub(crate) const SYSTEM: &str = "nats-jetstream";

async fn connect(url: &str, name: String) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Runs the chat scenario on the JetStream server at `url`.
pub(crate) async fn chat(url: &str, args: ChatArgs, run_id: &str) -> Result<Value> {
    let admin = connect(url, format!("{run_id}-admin")).await?;
    let js = jetstream::new(admin);
    let stream_name = format!("CHAT_{run_id}");
    let stream = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{run_id}.chat.>")],
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {stream_name}: {e}"))?;
    let (go_tx, go_rx) = watch::channel(None::<Instant>);
    let ready = Arc::new(Semaphore::new(0));
    let connects = Arc::new(Semaphore::new(64));
    let mut pairs = tokio::task::JoinSet::new();
    for p in 0..args.pairs {
        let (args, run_id, url) = (args.clone(), run_id.to_owned(), url.to_owned());
        let stream_name = stream_name.clone();
        let (go, ready, connects, stream) = (
            go_rx.clone(),
            Arc::clone(&ready),
            Arc::clone(&connects),
            stream.clone(),
        );
        pairs.spawn(async move {
            let pair =
                Pair::connect(&url, &run_id, p, &args, &stream, &stream_name, &connects).await;
            ready.add_permits(1);
            pair?.run(args, p, go).await
        });
    }
    let all = u32::try_from(args.pairs).unwrap_or(u32::MAX);
    tokio::time::timeout(Duration::from_secs(120), ready.acquire_many(all))
        .await
        .context("NATS clients not ready in time")??
        .forget();
    eprintln!("nats chat: {} pairs connected", args.pairs);
    let start = Instant::now() + Duration::from_millis(200);
    go_tx.send_replace(Some(start));
    let (mut sent, mut acked, mut received, mut errors) = (0, 0, Vec::new(), Vec::new());
    while let Some(done) = pairs.join_next().await {
        match done? {
            Ok((s, a, r)) => {
                sent += s;
                acked += a;
                received.push(r);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if let Err(e) = js.delete_stream(&stream_name).await {
        eprintln!("nats chat: deleting stream {stream_name}: {e}");
    }
    Ok(summarize(
        SYSTEM,
        &args,
        start,
        (sent, acked),
        received,
        errors,
        true,
    ))
}

/// A connected sender and a receiver with its consumer.
struct Pair {
    subject: String,
    sender: jetstream::Context,
    messages: consumer::pull::Stream,
}

impl Pair {
    async fn connect(
        url: &str,
        run_id: &str,
        p: usize,
        args: &ChatArgs,
        stream: &stream::Stream,
        stream_name: &str,
        connects: &Semaphore,
    ) -> Result<Self> {
        let _permit = connects.acquire().await?;
        let subject = format!("{run_id}.chat.{p}");
        let receiver = jetstream::new(connect(url, format!("{run_id}-r{p}")).await?);
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("r{p}")),
                filter_subject: subject.clone(),
                ack_policy: consumer::AckPolicy::All,
                max_ack_pending: i64::try_from(args.in_flight.max(1) * 8).unwrap_or(1024),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating consumer r{p}: {e}"))?;
        // The consumer is bound to the receiver's own connection.
        let consumer: consumer::PullConsumer = receiver
            .get_consumer_from_stream(&format!("r{p}"), stream_name)
            .await
            .map_err(|e| anyhow::anyhow!("binding consumer r{p}: {e}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(args.in_flight.max(1))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("pulling for r{p}: {e}"))?;
        let sender = jetstream::new(connect(url, format!("{run_id}-s{p}")).await?);
        Ok(Self {
            subject,
            sender,
            messages,
        })
    }

    async fn run(
        self,
        args: ChatArgs,
        p: usize,
        mut go: watch::Receiver<Option<Instant>>,
    ) -> Result<(u64, u64, Received)> {
        let start = *go.wait_for(|s| s.is_some()).await?;
        let start = start.context("start time")?;
        let windows = Windows::new(start, args.window_seconds, args.seconds);
        let (expect_tx, expect_rx) = watch::channel(None::<u64>);
        let receiving = tokio::spawn(receive(self.messages, expect_rx, windows, p));
        let start = args.phased(start, p);
        tokio::time::sleep_until(start.into()).await;
        let mut pending = FuturesOrdered::new();
        let (mut n, mut acked) = (0u64, 0u64);
        let sending: Result<()> = async {
            while args.more(start, n) {
                let sent_ns = match args.due(start, n) {
                    Some(due) => {
                        tokio::time::sleep_until(due.into()).await;
                        stats::ns_of(due)
                    }
                    None => stats::now_ns(),
                };
                while pending.len() >= args.in_flight.max(1) {
                    if let Some(ack) = pending.next().await {
                        published(ack)?;
                        acked += 1;
                    }
                }
                // Take the acks that are already in without waiting.
                while let Some(Some(ack)) = pending.next().now_or_never() {
                    published(ack)?;
                    acked += 1;
                }
                let body = stats::body(n, sent_ns, args.body_bytes);
                let ack = self
                    .sender
                    .publish(self.subject.clone(), body.into())
                    .await
                    .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
                pending.push_back(ack.into_future());
                n += 1;
            }
            while let Some(ack) = pending.next().await {
                published(ack)?;
                acked += 1;
            }
            Ok(())
        }
        .await;
        expect_tx.send_replace(Some(acked));
        let settle = Duration::from_secs_f64(args.settle_seconds);
        let mut r = match tokio::time::timeout(settle, receiving).await {
            Ok(r) => r?,
            Err(_) => Received {
                errors: vec![format!("pair {p}: deliveries missing after {settle:?}")],
                ..Received::default()
            },
        };
        if let Err(e) = sending {
            r.errors.push(format!("pair {p} sender: {e:#}"));
        }
        Ok((n, acked, r))
    }
}

fn published(
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<()> {
    ack.map(drop)
        .map_err(|e| anyhow::anyhow!("publish ack: {e}"))
}

/// Takes messages in order until `expect` says how many were published and
/// that many arrived; acknowledges the last of each burst.
async fn receive(
    mut messages: consumer::pull::Stream,
    mut expect: watch::Receiver<Option<u64>>,
    windows: Option<Windows>,
    p: usize,
) -> Received {
    let mut r = Received {
        latency: Some(stats::histogram()),
        windows,
        ..Received::default()
    };
    let mut next = 0u64;
    let result: Result<()> = async {
        loop {
            if expect.borrow().is_some_and(|t| next >= t) {
                return Ok(());
            }
            let first = tokio::select! {
                m = messages.next() => m.context("consumer stream ended")?,
                changed = expect.changed() => { changed?; continue; }
            };
            let mut m = Some(first);
            let mut last = None;
            while let Some(message) = m {
                let message = message.map_err(|e| anyhow::anyhow!("pull: {e}"))?;
                let (index, sent_ns) =
                    stats::parse_body(&message.payload).context("short payload")?;
                if index < next {
                    r.duplicates += 1;
                } else if index > next {
                    bail!("pair {p}: gap, {index} where {next} was due");
                } else {
                    if let Some(h) = &mut r.latency {
                        stats::record(h, sent_ns);
                    }
                    if let Some(w) = &mut r.windows {
                        w.record(sent_ns);
                    }
                    r.delivered += 1;
                    next += 1;
                }
                last = Some(message);
                m = messages.next().now_or_never().flatten();
            }
            r.last = Some(Instant::now());
            if let Some(message) = last {
                message
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            }
        }
    }
    .await;
    if let Err(e) = result {
        r.errors.push(format!("{e:#}"));
    }
    r
}
