//! Heap accounting, for telling a leak from an allocator that holds on to freed memory (the
//! soak's question, docs/reliability.md).
//!
//! - **Rust side:** [`Counting`] wraps the global allocator and keeps the bytes live. It costs
//!   an atomic add per allocation, so the binary installs it only when built with the
//!   `heap-stats` feature (`cargo build --release -p infergate-server --features heap-stats`).
//! - **C side:** ONNX Runtime allocates through glibc's malloc, whose own totals
//!   (`mallinfo2`) say what it has handed out and what it holds. Always available on glibc.
//!
//! Both appear in `/metrics` as `infergate_heap_bytes{kind}`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

static LIVE: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Counts `bytes` more live. The flag is written once, not per allocation: a store on every
/// call would bounce its cache line between cores.
fn grew(bytes: isize) {
    LIVE.fetch_add(bytes, Ordering::Relaxed);
    if !COUNTING.load(Ordering::Relaxed) {
        COUNTING.store(true, Ordering::Relaxed);
    }
}

/// A global allocator that counts the bytes live in `A`.
pub struct Counting<A>(pub A);

// SAFETY: every call goes to `A` unchanged; the counter only observes sizes. (A global
// allocator is an unsafe trait: there is no way to count without one.)
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `A`'s.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { self.0.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            grew(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes live on the Rust side; none unless [`Counting`] is the global allocator.
pub fn rust_live_bytes() -> Option<i64> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| LIVE.load(Ordering::Relaxed) as i64)
}

/// glibc malloc's bytes handed out and bytes held from the system (heap arenas plus mmapped
/// blocks), as `mallinfo2` reports them.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn c_heap_bytes() -> Option<(i64, i64)> {
    #[allow(unsafe_code)]
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    let allocated = info.uordblks + info.hblkhd;
    let held = info.arena + info.hblkhd;
    Some((allocated as i64, held as i64))
}

/// Not available without glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn c_heap_bytes() -> Option<(i64, i64)> {
    None
}

/// What glibc may hold unused before the server's periodic trim gives it back
/// (`runtime.heap_trim_ms`).
pub const TRIM_SLACK_BYTES: u64 = 4 << 20;

/// Gives the memory glibc's malloc holds unused back to the system (`malloc_trim`) when
/// there is more than `threshold` bytes of it. glibc keeps freed chunks inside its arenas and
/// returns only the top of each; ONNX Runtime's allocations and frees on many threads leave
/// free memory in the middle, which stays resident (docs/reliability.md). Returns whether it
/// trimmed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_c_heap(threshold: u64) -> bool {
    let Some((allocated, held)) = c_heap_bytes() else {
        return false;
    };
    if held.saturating_sub(allocated) <= threshold as i64 {
        return false;
    }
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only releases free memory inside the allocator; it takes the
    // arenas' locks like any malloc call.
    unsafe {
        libc::malloc_trim(0);
    }
    true
}

/// Fixes glibc malloc's arena count and mmap threshold (`runtime.malloc_arena_max`,
/// `runtime.malloc_mmap_threshold_bytes`; 0 leaves glibc's own). Process-wide: the server calls
/// it once, before any model loads. Says which setting glibc refused, if any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_c_heap(arena_max: usize, mmap_threshold: u64) -> Result<(), String> {
    let set = |param: libc::c_int, name: &str, value: u64| {
        let value =
            libc::c_int::try_from(value).map_err(|_| format!("{name} {value} is too large"))?;
        #[allow(unsafe_code)]
        // SAFETY: mallopt only changes the allocator's parameters (under its own lock).
        let ok = unsafe { libc::mallopt(param, value) } == 1;
        ok.then_some(())
            .ok_or_else(|| format!("glibc refused {name} = {value}"))
    };
    if arena_max > 0 {
        set(
            libc::M_ARENA_MAX,
            "runtime.malloc_arena_max",
            arena_max as u64,
        )?;
    }
    if mmap_threshold > 0 {
        set(
            libc::M_MMAP_THRESHOLD,
            "runtime.malloc_mmap_threshold_bytes",
            mmap_threshold,
        )?;
    }
    Ok(())
}

/// Nothing to tune without glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_c_heap(_arena_max: usize, _mmap_threshold: u64) -> Result<(), String> {
    Ok(())
}

/// Nothing to trim without glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_c_heap(_threshold: u64) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc as _, Layout, System};

    use super::{Counting, LIVE};

    #[test]
    #[allow(unsafe_code)]
    fn counting_follows_allocations_frees_and_reallocations() {
        let counting = Counting(System);
        let layout = Layout::from_size_align(4096, 8).unwrap();
        let before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
        // SAFETY: a plain allocate, grow, free sequence with matching layouts.
        unsafe {
            let p = counting.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(super::rust_live_bytes(), Some(before as i64 + 4096));
            let q = counting.realloc(p, layout, 10_000);
            assert!(!q.is_null());
            assert_eq!(super::rust_live_bytes(), Some(before as i64 + 10_000));
            counting.dealloc(q, Layout::from_size_align(10_000, 8).unwrap());
        }
        assert_eq!(super::rust_live_bytes(), Some(before as i64));
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_c_heap_reports_a_large_allocation() {
        let Some((before, _)) = super::c_heap_bytes() else {
            return; // not glibc
        };
        // SAFETY: malloc and free of one block.
        unsafe {
            // 256 MiB, mmapped and never touched: no real memory, and far more than other
            // tests running beside this one allocate or free meanwhile.
            let p = libc::malloc(256 << 20);
            assert!(!p.is_null());
            let (during, held) = super::c_heap_bytes().unwrap();
            assert!(during - before >= 200 << 20, "{before} -> {during}");
            assert!(held >= during);
            libc::free(p);
        }
        let (after, _) = super::c_heap_bytes().unwrap();
        assert!(after < before + (100 << 20), "{before} -> {after}");
    }

    #[test]
    #[allow(unsafe_code)]
    fn free_memory_in_the_middle_of_the_c_heap_is_trimmed() {
        if super::c_heap_bytes().is_none() {
            return; // not glibc
        }
        // 32 MiB in 16 KiB blocks (below the mmap threshold: inside an arena), then every
        // other block freed: 16 MiB of holes that glibc keeps.
        // SAFETY: each block is freed exactly once.
        let blocks: Vec<*mut libc::c_void> = (0..2048)
            .map(|_| unsafe { libc::malloc(16 << 10) })
            .collect();
        assert!(blocks.iter().all(|p| !p.is_null()));
        for p in blocks.iter().step_by(2) {
            unsafe { libc::free(*p) };
        }
        assert!(!super::trim_c_heap(1 << 40), "under the threshold: no trim");
        assert!(super::trim_c_heap(4 << 20), "16 MiB held unused: trimmed");
        for p in blocks.iter().skip(1).step_by(2) {
            unsafe { libc::free(*p) };
        }
    }

    #[test]
    #[allow(unsafe_code)]
    fn a_fixed_mmap_threshold_keeps_large_blocks_out_of_the_arenas() {
        if super::c_heap_bytes().is_none() {
            return; // not glibc
        }
        super::tune_c_heap(2, 128 << 10).expect("glibc takes both settings");
        // glibc's sliding threshold would rise to 8 MiB when the first block is freed and serve
        // the second from an arena; fixed, each is a mapping of its own, counted in `hblkhd`.
        const BLOCK: usize = 8 << 20;
        // SAFETY: malloc and free of one block, twice; `mallinfo2` only reads statistics.
        unsafe {
            let first = libc::malloc(BLOCK);
            assert!(!first.is_null());
            libc::free(first);
            let before = libc::mallinfo2().hblkhd;
            let second = libc::malloc(BLOCK);
            assert!(!second.is_null());
            let during = libc::mallinfo2().hblkhd;
            libc::free(second);
            assert!(
                during >= before + BLOCK,
                "an 8 MiB block after a freed one is mapped on its own: {before} -> {during}"
            );
        }
        assert!(
            super::tune_c_heap(0, u64::MAX).is_err(),
            "too large for mallopt"
        );
    }
}
