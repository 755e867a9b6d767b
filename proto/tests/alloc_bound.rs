//! Decoding arbitrary bytes never allocates beyond the frame limit: a
//! counting allocator measures the peak while garbage is decoded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::BytesMut;
use proptest::prelude::*;
use prost::Message;
use qim_proto::frame::{FrameDecoder, put_len};
use qim_proto::v1;

struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

std::thread_local! {
    /// Whether this thread's allocations count: only the measuring thread's
    /// do, so the test harness and the other test's thread cannot raise the
    /// peak of a measurement.
    static MEASURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn measuring() -> bool {
    MEASURING.try_with(std::cell::Cell::get).unwrap_or(false)
}

// SAFETY: forwards to the system allocator and only counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measuring() {
            let size = layout.size() as isize;
            let now = CURRENT.fetch_add(size, Ordering::SeqCst) + size;
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measuring() {
            CURRENT.fetch_sub(layout.size() as isize, Ordering::SeqCst);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns the peak bytes it allocated on this thread above
/// the level at entry (freeing older blocks counts as negative).
fn peak_during(f: impl FnOnce()) -> usize {
    // The counters are process-wide: measure one test at a time.
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    CURRENT.store(0, Ordering::SeqCst);
    PEAK.store(0, Ordering::SeqCst);
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    PEAK.load(Ordering::SeqCst).max(0) as usize
}

const MAX: usize = 4096;

fn decode_all(buf: &mut BytesMut) {
    let dec = FrameDecoder::new(MAX);
    while let Ok(Some(frame)) = dec.decode(buf) {
        let _ = v1::ClientControl::decode(frame.clone());
        let _ = v1::Send::decode(frame.clone());
        let _ = v1::Deliver::decode(frame.clone());
        let _ = v1::RpcResponse::decode(frame);
    }
}

#[test]
fn a_huge_declared_length_allocates_nothing_for_its_body() {
    let mut buf = BytesMut::with_capacity(16);
    put_len(u64::from(u32::MAX), &mut buf);
    buf.extend_from_slice(b"tail");
    let peak = peak_during(|| decode_all(&mut buf));
    assert!(peak < 1024, "peak {peak} bytes for a 4 GiB declared frame");
}

proptest! {
    // Single-threaded accounting: proptest runs cases on this thread.
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn garbage_decoding_allocates_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let peak = peak_during(|| decode_all(&mut buf));
        // A decoded message can hold at most a few copies of one frame's bytes
        // (strings and nested messages), never more than the limit allows.
        prop_assert!(peak <= 8 * MAX + 4096, "peak {} for {} input bytes", peak, bytes.len());
    }
}
