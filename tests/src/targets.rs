//! The target programs, built by build.rs with tests/targets/Makefile.

pub const CHAT_SERVER: &str = env!("LEAKBPF_TARGET_CHAT_SERVER");
pub const LEAKER: &str = env!("LEAKBPF_TARGET_LEAKER");
/// leaker.c's leaking functions.
pub const LEAKER_FUNCTIONS: [&str; 10] = [
    "leak_malloc",
    "leak_calloc",
    "leak_realloc_grow",
    "leak_realloc_shrink",
    "leak_reallocarray",
    "leak_posix_memalign",
    "leak_aligned_alloc",
    "leak_memalign",
    "leak_valloc",
    "leak_pvalloc",
];
pub const THREADS: &str = env!("LEAKBPF_TARGET_THREADS");
pub const EARLY: &str = env!("LEAKBPF_TARGET_EARLY");
/// A steady leak, a stepped one, a cache and a churn at once; or RSS grown through mmap
/// (tests/targets/patterns.c).
pub const PATTERNS: &str = env!("LEAKBPF_TARGET_PATTERNS");
/// Leaks through a wrapper of its own, `app_xalloc`, from two callers
/// (tests/targets/wrappers.c).
pub const WRAPPERS: &str = env!("LEAKBPF_TARGET_WRAPPERS");
/// Leaks through std::vector and std::map growth (tests/targets/containers_growth.cpp).
pub const CONTAINERS_GROWTH: &str = env!("LEAKBPF_TARGET_CONTAINERS_GROWTH");
/// src/bin/rust_leaker.rs, built with frame pointers.
pub const RUST_LEAKER: &str = env!("LEAKBPF_TARGET_RUST_LEAKER");
/// rust_leaker.rs on tikv-jemallocator (`_rjem_` jemalloc in the executable), and on the
/// mimalloc crate (its `mi_*` interface in the executable): tests/targets/rust_allocators.
pub const RUST_JEMALLOC: &str = env!("LEAKBPF_TARGET_RUST_JEMALLOC");
pub const RUST_MIMALLOC: &str = env!("LEAKBPF_TARGET_RUST_MIMALLOC");
/// A process tree: children, a grandchild and an exec'd child that each leak their own
/// amount (tests/targets/forker.c).
pub const FORKER: &str = env!("LEAKBPF_TARGET_FORKER");
/// Leaks, execs (itself, or its static build), leaks again (tests/targets/exec_target.c).
pub const EXEC_TARGET: &str = env!("LEAKBPF_TARGET_EXEC_TARGET");
/// Leaks gigabytes of address space at leak_big (tests/targets/big_leaker.c).
pub const BIG_LEAKER: &str = env!("LEAKBPF_TARGET_BIG_LEAKER");
/// The allocator targets (tests/targets/alloc_target.h): linked with jemalloc, tcmalloc
/// (C++), mimalloc; leaking through a `je_`-prefixed allocator library; fully static.
pub const JEMALLOC_LINKED: &str = env!("LEAKBPF_TARGET_JEMALLOC_LINKED");
pub const TCMALLOC_NEW: &str = env!("LEAKBPF_TARGET_TCMALLOC_NEW");
pub const MIMALLOC_LINKED: &str = env!("LEAKBPF_TARGET_MIMALLOC_LINKED");
pub const PREFIXED: &str = env!("LEAKBPF_TARGET_PREFIXED");
pub const STATIC_GLIBC: &str = env!("LEAKBPF_TARGET_STATIC_GLIBC");
/// static_glibc.c's leaking functions.
pub const STATIC_GLIBC_FUNCTIONS: [&str; 5] = [
    "leak_malloc",
    "leak_calloc",
    "leak_realloc",
    "leak_posix_memalign",
    "leak_aligned_alloc",
];
pub const HOSTILE_STACK: &str = env!("LEAKBPF_TARGET_HOSTILE_STACK");
/// Leaks from functions with hostile names: thousands of characters long, with control
/// characters, not UTF-8 (tests/targets/hostile_names.c).
pub const HOSTILE_NAMES: &str = env!("LEAKBPF_TARGET_HOSTILE_NAMES");
/// Leaks through libbroken_elf.so, which it finds next to itself, intact; broken copies
/// are in `broken_elf.libs/HOW/` beside it (tests/targets/break_elf.py).
pub const BROKEN_ELF: &str = env!("LEAKBPF_TARGET_BROKEN_ELF");
/// tests/targets/stripped.c stripped of every symbol: alone; with a `.gnu_debuglink` to
/// `STRIPPED_DEBUGLINK.debug`; with a debug link only build-id lookup resolves, to
/// `STRIPPED_BUILDID.build-id/XX/YYYY.debug` once installed under /usr/lib/debug. And
/// the unstripped build the first two are stripped from.
pub const STRIPPED: &str = env!("LEAKBPF_TARGET_STRIPPED");
pub const STRIPPED_DEBUGLINK: &str = env!("LEAKBPF_TARGET_STRIPPED_DEBUGLINK");
pub const STRIPPED_BUILDID: &str = env!("LEAKBPF_TARGET_STRIPPED_BUILDID");
pub const STRIPPED_FULL: &str = env!("LEAKBPF_TARGET_STRIPPED_FULL");
/// src/bin/rust_leaker.rs built for x86_64-unknown-linux-musl, statically; empty when
/// rustc has no standard library for that target (see build.rs).
pub const RUST_LEAKER_MUSL: &str = env!("LEAKBPF_TARGET_RUST_LEAKER_MUSL");

/// The same programs as distributions build them, without frame pointers (-O2
/// -fomit-frame-pointer, sibling calls optimised; Rust without force-frame-pointers):
/// leakbpf walks their stacks with the unwind tables it builds.
pub const LEAKER_NOFP: &str = env!("LEAKBPF_TARGET_LEAKER_NOFP");
pub const THREADS_NOFP: &str = env!("LEAKBPF_TARGET_THREADS_NOFP");
pub const FORKER_NOFP: &str = env!("LEAKBPF_TARGET_FORKER_NOFP");
pub const BIG_LEAKER_NOFP: &str = env!("LEAKBPF_TARGET_BIG_LEAKER_NOFP");
pub const CHAT_SERVER_NOFP: &str = env!("LEAKBPF_TARGET_CHAT_SERVER_NOFP");
pub const RUST_LEAKER_NOFP: &str = env!("LEAKBPF_TARGET_RUST_LEAKER_NOFP");
pub const STATIC_GLIBC_NOFP: &str = env!("LEAKBPF_TARGET_STATIC_GLIBC_NOFP");
pub const JEMALLOC_LINKED_NOFP: &str = env!("LEAKBPF_TARGET_JEMALLOC_LINKED_NOFP");
pub const TCMALLOC_NEW_NOFP: &str = env!("LEAKBPF_TARGET_TCMALLOC_NEW_NOFP");
/// Leaks one record per request at make_record, called through store_record,
/// handle_request (its frame addressed from rbp) and serve by main; built only without
/// frame pointers (tests/targets/call_chain.c).
pub const CALL_CHAIN: &str = env!("LEAKBPF_TARGET_CALL_CHAIN");
/// Leaks through Debian's libglib2.0 (g_strdup, g_malloc0), built without frame pointers
/// (tests/targets/glib_strings.c).
pub const GLIB_STRINGS: &str = env!("LEAKBPF_TARGET_GLIB_STRINGS");
/// Leaks small, mixed and large blocks among a churn, for `--sample-bytes` to estimate;
/// built only without frame pointers (tests/targets/sampling.c).
pub const SAMPLING: &str = env!("LEAKBPF_TARGET_SAMPLING");
/// rust_leaker_musl without frame pointers; empty as [`RUST_LEAKER_MUSL`] is.
pub const RUST_LEAKER_MUSL_NOFP: &str = env!("LEAKBPF_TARGET_RUST_LEAKER_MUSL_NOFP");
/// Loads libdlopened.so (next to it) with dlopen once told to go, leaks through it at
/// once (`leak_at_once`), then again 1.5 s later (`leak_later`)
/// (tests/targets/dlopen_leaker.c).
pub const DLOPEN_LEAKER: &str = env!("LEAKBPF_TARGET_DLOPEN_LEAKER");
