//! A global allocator that keeps hostile length fields from aborting the
//! server.
//!
//! `kafka-protocol` reserves `Vec::with_capacity(n)` for an array before
//! reading its elements, with `n` taken from the wire (up to 2^32). A 4-byte
//! body claiming two billion topics asks for ~150 GB; the system allocator
//! refuses, and Rust aborts the process — no panic to catch. This allocator
//! serves very large requests with `mmap(MAP_NORESERVE)`: address space
//! only, no memory until a page is touched. The decoder then fails on the
//! first missing byte, the vector is dropped, and the mapping is released.
//! Legitimate large buffers work as before (pages arrive as they are used).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Requests of this size or more get a lazy mapping.
const HUGE: usize = 1 << 30;

pub struct GuardedAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= 4096
}

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: an anonymous private mapping with no address hint; the
            // result is checked against MAP_FAILED.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    layout.size(),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return std::ptr::null_mut();
            }
            return p.cast();
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled.
            return unsafe { self.alloc(layout) };
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from our mmap of exactly this size.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return std::ptr::null_mut(),
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: copy the overlapping prefix into a fresh block, then free
        // the old one through the path that allocated it.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}
