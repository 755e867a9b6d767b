//! Blob bytes ([`BlobBytes`]) on files and on a real S3-compatible server
//! (`QIM_TEST_S3`, started by `cargo xtask services up`): the same checks
//! for both, plus what only S3 has (a refused credential).

use qim_storage::StoreError;
use qim_storage::conformance_blobs::{self as check, s3_test_options};
use qim_storage::media::BlobBytes;
use qim_storage::media::files::FileBlobs;
use qim_storage::media::s3::S3Blobs;

fn files() -> (tempfile::TempDir, FileBlobs, FileBlobs) {
    let dir = tempfile::tempdir().expect("temp dir");
    let one = FileBlobs::open(dir.path()).expect("open");
    let other = FileBlobs::open(dir.path()).expect("open");
    (dir, one, other)
}

/// Two clients of the same bucket and prefix: two nodes.
fn s3() -> (S3Blobs, S3Blobs) {
    let options = s3_test_options();
    let one = S3Blobs::new(&options).expect("client");
    let other = S3Blobs::new(&options).expect("client");
    (one, other)
}

#[tokio::test]
async fn files_staging_cuts_and_resumes() {
    let (_dir, one, other) = files();
    check::staging_cuts_and_resumes_on_another_node(&one, &other).await;
}

#[tokio::test]
async fn files_large_blob_publishes() {
    let (_dir, one, other) = files();
    check::large_blob_publishes_and_existing_stays(&one, &other).await;
}

#[tokio::test]
async fn files_discard_is_per_user() {
    let (_dir, one, _) = files();
    check::discard_is_per_user(&one).await;
}

#[tokio::test]
async fn s3_staging_cuts_and_resumes_on_another_node() {
    let (one, other) = s3();
    one.check()
        .await
        .expect("the test server takes our credentials");
    check::staging_cuts_and_resumes_on_another_node(&one, &other).await;
}

#[tokio::test]
async fn s3_large_blob_publishes_in_parts() {
    let (one, other) = s3();
    check::large_blob_publishes_and_existing_stays(&one, &other).await;
}

#[tokio::test]
async fn s3_discard_is_per_user() {
    let (one, _) = s3();
    check::discard_is_per_user(&one).await;
}

#[tokio::test]
async fn s3_wrong_secret_is_denied() {
    let mut options = s3_test_options();
    options.secret_access_key.push_str("-wrong");
    let blobs = S3Blobs::new(&options).expect("client");
    let denied = |r: Result<(), StoreError>| match r {
        Err(e @ StoreError::Denied(_)) => {
            assert!(!e.is_retryable(), "a refused credential is not retried");
            let text = e.to_string();
            assert!(
                !text.contains(&options.secret_access_key) && !text.contains(&options.bucket),
                "no secret or bucket in the error: {text}"
            );
        }
        other => panic!("expected StoreError::Denied, got {other:?}"),
    };
    denied(blobs.check().await);
    let id = qim_storage::media::BlobId::of(b"x");
    denied(
        blobs
            .stage("alice", &id, 0, vec![bytes::Bytes::from_static(b"x")])
            .await,
    );
    denied(blobs.has(&id).await.map(|_| ()));
}

#[test]
fn s3_options_are_checked_and_debug_hides_the_secret() {
    let mut options = s3_test_options();
    assert!(!format!("{options:?}").contains(&options.secret_access_key));
    options.endpoint = "ftp://127.0.0.1:1".into();
    assert!(matches!(
        S3Blobs::new(&options),
        Err(StoreError::Invalid(_))
    ));
    let mut options = s3_test_options();
    options.key_prefix = "a/../b".into();
    assert!(matches!(
        S3Blobs::new(&options),
        Err(StoreError::Invalid(_))
    ));
}
