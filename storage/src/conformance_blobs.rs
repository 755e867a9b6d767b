//! Checks every [`BlobBytes`] backend must pass (files, S3): staging cut
//! at the offset and resumed from another instance (another node), the
//! hash of the staged prefix, publication of a multi-part blob that keeps
//! an existing one, discard, ranged reads, `has` and `delete`.
//!
//! Also [`s3_test_options`]: the S3-compatible server of the local
//! services (`QIM_TEST_S3`), for the tests of the S3 backend and of a
//! gateway cluster.

use bytes::Bytes;

use crate::media::s3::S3Options;
use crate::media::{BlobBytes, BlobId};

/// The options of the local S3-compatible server named by `QIM_TEST_S3`
/// (`http://<access key id>:<secret key>@<host:port>/<bucket>`, as `cargo
/// xtask test` sets it), with a key prefix of its own so tests never meet
/// each other's objects.
///
/// # Panics
/// When `QIM_TEST_S3` is unset or malformed: these tests need the
/// services of `cargo xtask services up`.
pub fn s3_test_options() -> S3Options {
    let url = std::env::var("QIM_TEST_S3").unwrap_or_else(|_| {
        panic!(
            "QIM_TEST_S3 is not set: these tests need the local services \
             (`cargo xtask services up`, then \
             QIM_TEST_S3=http://qim-dev:qim-dev-secret@127.0.0.1:9390/qim-test; \
             `cargo xtask test` sets it)"
        )
    });
    parse_test_url(&url).unwrap_or_else(|| {
        panic!("QIM_TEST_S3 is http://<key id>:<secret>@<host:port>/<bucket>, not {url}")
    })
}

fn parse_test_url(url: &str) -> Option<S3Options> {
    let (scheme, rest) = url.split_once("://")?;
    let (creds, rest) = rest.split_once('@')?;
    let (key, secret) = creds.split_once(':')?;
    let (host, bucket) = rest.split_once('/')?;
    Some(S3Options {
        endpoint: format!("{scheme}://{host}"),
        bucket: bucket.trim_end_matches('/').to_owned(),
        region: "us-east-1".to_owned(),
        access_key_id: key.to_owned(),
        secret_access_key: secret.to_owned(),
        path_style: true,
        key_prefix: format!("test-{:016x}/", rand::random::<u64>()),
    })
}

/// `n` bytes that differ from every other call's.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let seed: u64 = rand::random();
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            // xorshift64: fast, and enough to make each blob unique.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn chunks(data: &[u8], size: usize) -> Vec<Bytes> {
    data.chunks(size).map(Bytes::copy_from_slice).collect()
}

/// Staging: a write at an offset cuts what follows (bytes staged past the
/// committed offset are replaced), a write past the end is refused, and
/// `other` (another node on the same bytes) resumes the upload, hashes
/// and publishes it; the blob reads back in ranges, an empty range past
/// the end reads nothing, and the staged bytes are gone.
pub async fn staging_cuts_and_resumes_on_another_node(one: &dyn BlobBytes, other: &dyn BlobBytes) {
    let user = "alice";
    let data = random_bytes(300_000);
    let id = BlobId::of(&data);
    assert!(!one.has(&id).await.expect("has"));

    one.stage(user, &id, 0, chunks(&data[..100_000], 30_000))
        .await
        .expect("first range");
    // A second range that was staged but whose offset was never committed:
    // the next write at 100_000 replaces it.
    one.stage(user, &id, 100_000, vec![Bytes::from(vec![0xEE; 80_000])])
        .await
        .expect("uncommitted range");
    let refused = one
        .stage(user, &id, 250_000, vec![Bytes::from_static(b"gap")])
        .await;
    assert!(refused.is_err(), "a write past the staged end is refused");

    // Cut in the middle of a staged range, too (a straddling piece).
    other
        .stage(user, &id, 90_000, chunks(&data[90_000..200_000], 50_000))
        .await
        .expect("resume on another node");
    assert!(
        other.staged_hash(user, &id, 300_000).await.is_err(),
        "only 200,000 bytes are staged"
    );
    assert_eq!(
        other.staged_hash(user, &id, 200_000).await.expect("hash"),
        BlobId::of(&data[..200_000])
    );
    one.stage(user, &id, 200_000, chunks(&data[200_000..], 64_000))
        .await
        .expect("last range");
    assert_eq!(
        other.staged_hash(user, &id, 300_000).await.expect("hash"),
        id
    );
    assert!(!one.has(&id).await.expect("has"), "staged is not published");
    other.publish(user, &id, 300_000).await.expect("publish");

    assert!(one.has(&id).await.expect("has"));
    let all = one.read(&id, 0, 300_000).await.expect("read");
    assert!(all == data[..], "the blob reads back whole");
    let mid = one.read(&id, 123_456, 1_000).await.expect("ranged read");
    assert!(mid == data[123_456..124_456], "a range reads back");
    let tail = other.read(&id, 299_000, 5_000).await.expect("tail read");
    assert!(tail == data[299_000..], "a range past the end is cut");
    let past = other.read(&id, 300_000, 10).await.expect("read at end");
    assert!(past.is_empty(), "nothing past the end");
    assert!(
        one.staged_hash(user, &id, 1).await.is_err(),
        "the staged bytes went with the publish"
    );

    one.delete(&id).await.expect("delete");
    assert!(!other.has(&id).await.expect("has"));
    one.delete(&id).await.expect("deleting again is nothing");
}

/// A blob larger than one part (S3's multipart rule: 5 MiB minimum parts)
/// publishes whole; publishing the same blob again keeps the first and
/// removes the second's staged bytes.
pub async fn large_blob_publishes_and_existing_stays(one: &dyn BlobBytes, other: &dyn BlobBytes) {
    let size = 21 * 1024 * 1024 + 12_345;
    let data = random_bytes(size);
    let id = BlobId::of(&data);
    let step = 1 << 20;
    for (i, range) in data.chunks(step).enumerate() {
        let node = if i % 2 == 0 { one } else { other };
        node.stage("bob", &id, (i * step) as u64, chunks(range, 60 * 1024))
            .await
            .expect("stage");
    }
    assert_eq!(
        one.staged_hash("bob", &id, size as u64)
            .await
            .expect("hash"),
        id
    );
    one.publish("bob", &id, size as u64).await.expect("publish");
    let far = other
        .read(&id, (size - 100_000) as u64, 60_000)
        .await
        .expect("read");
    assert!(far == data[size - 100_000..size - 40_000]);
    let all = read_all(other, &id, size).await;
    assert!(all == data, "the multi-part blob reads back whole");

    // Carol uploads the same bytes; the blob stays, her staging goes.
    other
        .stage("carol", &id, 0, chunks(&data[..1000], 1000))
        .await
        .expect("stage");
    other.publish("carol", &id, 1000).await.expect("publish");
    assert_eq!(read_all(one, &id, size).await.len(), size, "first stays");
    assert!(other.staged_hash("carol", &id, 1000).await.is_err());
    one.delete(&id).await.expect("delete");
}

async fn read_all(blobs: &dyn BlobBytes, id: &BlobId, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let got = blobs
            .read(id, out.len() as u64, 4 << 20)
            .await
            .expect("read");
        assert!(!got.is_empty(), "short blob");
        out.extend_from_slice(&got);
    }
    out
}

/// Discard removes a staged upload (and is nothing without one); other
/// users' staging of the same blob is theirs.
pub async fn discard_is_per_user(blobs: &dyn BlobBytes) {
    let data = random_bytes(10_000);
    let id = BlobId::of(&data);
    blobs
        .stage("dave", &id, 0, chunks(&data, 4096))
        .await
        .expect("stage");
    blobs
        .stage("erin", &id, 0, chunks(&data[..5000], 4096))
        .await
        .expect("stage");
    blobs.discard("dave", &id).await.expect("discard");
    blobs.discard("dave", &id).await.expect("discard again");
    assert!(blobs.staged_hash("dave", &id, 10_000).await.is_err());
    assert_eq!(
        blobs.staged_hash("erin", &id, 5000).await.expect("hash"),
        BlobId::of(&data[..5000])
    );
    blobs.discard("erin", &id).await.expect("discard");
    assert!(!blobs.has(&id).await.expect("has"));
}
