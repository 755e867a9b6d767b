//! The storage conformance suite against the embedded backend.

use std::sync::Arc;

use async_trait::async_trait;
use qim_storage::MessageStore;
use qim_storage::conformance::Backend;
use qim_storage::embedded::EmbeddedStore;

struct Embedded {
    dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&self) -> Arc<dyn MessageStore> {
        // fjall holds a lock on the directory until the previous instance is
        // dropped; conformance checks drop before reopening.
        Arc::new(EmbeddedStore::open(self.dir.path()).expect("open store"))
    }
}

qim_storage::conformance_tests!(Embedded::new());

#[async_trait]
impl qim_storage::conformance_im::ImBackend for Embedded {
    async fn open_im(&self) -> qim_storage::conformance_im::ImStores {
        let store = Arc::new(EmbeddedStore::open(self.dir.path()).expect("open store"));
        qim_storage::conformance_im::ImStores {
            messages: store.clone(),
            conversations: store.clone(),
            groups: store.clone(),
            contacts: store.clone(),
            schedules: store,
        }
    }
}

mod im {
    use super::Embedded;
    qim_storage::im_conformance_tests!(Embedded::new());
}
