//! The test binary's global allocator: [`System`], plus a per-thread record of the largest
//! single allocation made while this thread asked for it ([`largest_allocation`]). The
//! decoder tests use it to prove that a decoder fed N bytes never allocates more than a bound
//! derived from N, whatever sizes those bytes claim.
//!
//! When no thread is measuring, every allocation costs one read of a thread-local `bool` more
//! than `System` (a `const`-initialised `Cell` without a destructor: no lazy initialisation,
//! no registration, never an allocation of its own).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// [`System`], recording allocation sizes for threads inside [`largest_allocation`].
pub struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    /// Whether this thread is inside [`largest_allocation`].
    static MEASURING: Cell<bool> = const { Cell::new(false) };
    /// The largest single allocation (or reallocation's new size) seen while measuring.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

#[inline]
fn note(size: usize) {
    // `try_with`: an allocation during thread teardown must not panic inside the allocator.
    let _ = MEASURING.try_with(|measuring| {
        if measuring.get() {
            LARGEST.with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; `note` only touches thread-locals
// that never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Stops measuring when dropped, even if `f` panics.
struct Measuring;

impl Drop for Measuring {
    fn drop(&mut self) {
        MEASURING.with(|m| m.set(false));
    }
}

/// Runs `f` and returns its result with the size of the largest single allocation it made on
/// this thread (0 if none). Allocations made by other threads, or by this thread outside `f`,
/// are not counted; the result `f` returns is counted (it is allocated inside `f`).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    MEASURING.with(|m| m.set(true));
    let guard = Measuring;
    let value = f();
    drop(guard);
    (value, LARGEST.with(Cell::get))
}

#[test]
fn counting_allocator_sees_only_the_measured_thread_and_closure() {
    let (v, largest) = largest_allocation(|| vec![0u8; 12_345]);
    assert_eq!(v.len(), 12_345);
    assert_eq!(largest, 12_345);
    let (_, none) = largest_allocation(|| 1 + 1);
    assert_eq!(none, 0);
    // Outside the closure nothing is recorded, and another thread's allocations never are.
    let _outside = vec![0u8; 1 << 20];
    let ((), largest) = largest_allocation(|| {
        std::thread::scope(|s| {
            s.spawn(|| drop(vec![0u8; 1 << 20]));
        })
    });
    assert!(
        largest < 1 << 20,
        "another thread's allocation was counted: {largest}"
    );
}
