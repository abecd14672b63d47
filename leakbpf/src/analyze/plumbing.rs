//! Allocation plumbing: the frames between the allocator and the code that asked for
//! the memory (Rust's `alloc::`, libstdc++'s allocator templates, GLib's `g_malloc`,
//! CPython's `PyMem_*`, OpenSSL's `CRYPTO_malloc`, a program's own `xmalloc`). A call
//! site is shown at its first frame outside them, as valgrind's `--alloc-fn` does, and
//! two stacks that differ only inside the plumbing are one call site.

use std::{collections::HashMap, sync::Arc};

use regex::{Regex, RegexSet};

use crate::{kernel::SiteState, symbolize::Frame};

/// Functions of the runtimes' allocation plumbing, as regular expressions over
/// demangled names (a C++ or Rust name with its parameters and generics).
const BUILT_IN: &[&str] = &[
    // Rust's allocation API and the raw vectors, boxes and strings built on it.
    r"^(<.* as )?alloc::",
    r"^<alloc::",
    // The allocator shims, `__rustc::`-qualified since Rust 1.9x's mangling.
    r"^(__rustc::)?__rust_(alloc|alloc_zeroed|realloc)$",
    r"^(__rustc::)?(__rdl_|__rg_)",
    r"^std::alloc::",
    r"GlobalAlloc>::(alloc|alloc_zeroed|realloc)",
    r"^<(tikv_jemallocator|jemallocator|mimalloc)::",
    // C++'s operators and libstdc++'s allocators.
    r"^operator new",
    r"^(__gnu_cxx|std)::(__)?new_allocator<",
    r"^std::allocator<",
    r"^std::allocator_traits<",
    r"^std::_Vector_base<.*>::_M_allocate",
    r"^std::__cxx11::basic_string<.*>::_M_create",
    r"^std::_Rb_tree<.*>::_M_(get|create)_node",
    r"^std::__detail::_Hashtable_alloc<",
    // C libraries' allocation wrappers.
    r"^(__GI_)?(__)?strn?dup$",
    r"^g_(try_)?(malloc|malloc0|realloc)(_n)?$",
    r"^g_(strdup|strndup|memdup|memdup2|slice_alloc|slice_alloc0)$",
    r"^_?Py(Mem|Object)_(Raw)?(Malloc|Calloc|Realloc)$",
    r"^_PyObject_(GC_)?(New|NewVar|Malloc)",
    r"^pymalloc_",
    r"^CRYPTO_(malloc|zalloc|realloc|clear_realloc|strdup|strndup|memdup)$",
    r"^x(malloc|calloc|realloc|zalloc|strdup|strndup|memdup)$",
    r"^z(try)?(malloc|calloc|realloc)(_usable)?$",
    r"^sqlite3(Malloc|MallocZero|Realloc|DbMallocRaw(NN)?|DbMallocZero|_malloc|_malloc64|_realloc|_realloc64)$",
    r"^Perl_safesys(malloc|calloc|realloc)$",
];

#[derive(Debug, thiserror::Error)]
#[error("--alloc-fn {pattern:?}")]
pub struct PatternError {
    pattern: String,
    source: regex::Error,
}

/// The rest of the standard libraries between the allocator and the program, by the
/// function's qualified name: a container's growth (`std::vector<…>::_M_realloc_insert`,
/// `std::map<…>::operator[]`, Rust's `<std::io::BufReader<…>>::with_capacity`) is the
/// program's allocation where it called the container. (A template function's demangled
/// name starts with its return type: `std::string app::render<int>(int)` is the
/// program's.)
const STANDARD_LIBRARIES: &str = r"^<?(std|__gnu_cxx)::";

/// What counts as allocation plumbing in this run.
#[derive(Debug)]
pub struct Plumbing {
    built_in: RegexSet,
    standard_libraries: Regex,
    /// `--alloc-fn` globs, matched against the whole name and the name without its
    /// parameters.
    own: Vec<Regex>,
}

impl Default for Plumbing {
    fn default() -> Self {
        Self::new(&[]).unwrap_or_else(|_| unreachable!("no pattern to refuse"))
    }
}

impl Plumbing {
    /// The built-in plumbing and the program's own wrappers, `--alloc-fn` globs (`*` any
    /// run of characters, `?` one).
    pub fn new(alloc_fns: &[String]) -> Result<Self, PatternError> {
        let built_in = RegexSet::new(BUILT_IN).map_err(|source| PatternError {
            pattern: "built in".to_owned(),
            source,
        })?;
        let own = alloc_fns
            .iter()
            .map(|glob| {
                let body: Vec<String> = glob
                    .split('*')
                    .map(|part| {
                        let parts: Vec<String> = part.split('?').map(regex::escape).collect();
                        parts.join(".")
                    })
                    .collect();
                Regex::new(&format!("^{}$", body.join(".*"))).map_err(|source| PatternError {
                    pattern: glob.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        let standard_libraries = Regex::new(STANDARD_LIBRARIES).map_err(|source| PatternError {
            pattern: "built in".to_owned(),
            source,
        })?;
        Ok(Self {
            built_in,
            standard_libraries,
            own,
        })
    }

    fn is_plumbing(&self, function: &str) -> bool {
        let bare = function.split_once('(').map_or(function, |(name, _)| name);
        self.built_in.is_match(function)
            || self.standard_libraries.is_match(qualified_name(function))
            || self
                .own
                .iter()
                .any(|own| own.is_match(function) || own.is_match(bare))
    }

    /// Marks each of `frames` as plumbing or not: the frames from the allocator's side
    /// up to the first one outside (a frame inlined into plumbing is plumbing too).
    pub fn mark(&self, frames: &mut [Frame]) {
        for frame in frames.iter_mut() {
            let plumbing = frame
                .function
                .as_deref()
                .is_some_and(|function| self.is_plumbing(function));
            if !plumbing {
                break;
            }
            frame.allocator = true;
        }
    }
}

/// A demangled function's qualified name: without its parameters, and without the
/// return type a template function's name starts with (the last space outside brackets
/// before the parameters ends it).
fn qualified_name(function: &str) -> &str {
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in function.char_indices() {
        match character {
            '<' | '[' => depth += 1,
            '>' | ']' => depth = depth.saturating_sub(1),
            '(' if depth == 0 => return &function[start..index],
            ' ' if depth == 0 => start = index + 1,
            _ => {}
        }
    }
    &function[start..]
}

/// The index of the frame a call site is shown at: its first outside the plumbing (the
/// last frame if every one is plumbing).
pub fn site_frame(frames: &[Frame]) -> usize {
    frames
        .iter()
        .position(|frame| !frame.allocator)
        .unwrap_or(frames.len().saturating_sub(1))
}

/// What makes two frames the same place in the program's source.
#[derive(PartialEq, Eq, Hash)]
enum Place<'f> {
    /// A named frame with its line: one line of source, whatever the instruction (an
    /// unrolled loop calls the allocator from as many addresses as it has copies).
    Line(&'f str, Option<&'f str>, u32, bool),
    /// Otherwise its address, and whether it is inlined (an inlined frame shares it).
    Address(u64, bool),
}

impl<'f> Place<'f> {
    fn of(frame: &'f Frame) -> Self {
        match (&frame.function, frame.line) {
            (Some(function), Some(line)) => {
                Place::Line(function, frame.file.as_deref(), line, frame.inlined)
            }
            _ => Place::Address(frame.address, frame.inlined),
        }
    }
}

/// Sites whose stacks are the same from their site frame on, line by line, become one,
/// under the smallest stack id among them.
pub fn fold(sites: Vec<SiteState>, frames: impl Fn(u64) -> Arc<[Frame]>) -> Vec<SiteState> {
    let stacks: Vec<Arc<[Frame]>> = sites.iter().map(|site| frames(site.stack_id)).collect();
    let mut folded: HashMap<Vec<Place<'_>>, SiteState> = HashMap::new();
    let mut alone = Vec::new();
    for (site, stack) in sites.into_iter().zip(&stacks) {
        if stack.is_empty() {
            alone.push(site);
            continue;
        }
        let key: Vec<Place<'_>> = stack[site_frame(stack)..].iter().map(Place::of).collect();
        folded
            .entry(key)
            .and_modify(|into| into.merge(&site))
            .or_insert(site);
    }
    alone.extend(folded.into_values());
    alone
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: u64, function: &str) -> Frame {
        Frame {
            address,
            function: Some(function.into()),
            ..Frame::default()
        }
    }

    #[test]
    fn the_runtimes_plumbing_is_marked_up_to_the_caller() {
        let plumbing = Plumbing::new(&["my_alloc".into()]).unwrap();
        let mut frames = vec![
            frame(1, "alloc::alloc::alloc"),
            frame(
                1,
                "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            ),
            frame(2, "alloc::raw_vec::RawVec<T,A>::grow_one"),
            frame(3, "service::leak_sessions"),
            frame(4, "alloc::vec::Vec<T>::push"),
        ];
        plumbing.mark(&mut frames);
        let marked: Vec<bool> = frames.iter().map(|f| f.allocator).collect();
        assert_eq!(marked, [true, true, true, false, false]);
        assert_eq!(site_frame(&frames), 3);
        for name in [
            "g_strdup",
            "g_malloc0_n",
            "PyMem_Malloc",
            "CRYPTO_zalloc",
            "xmalloc",
            "zmalloc",
            "sqlite3Malloc",
            "Perl_safesysmalloc",
            "operator new(unsigned long)",
            "__gnu_cxx::new_allocator<int>::allocate(unsigned long, void const*)",
            "std::_Vector_base<int, std::allocator<int> >::_M_allocate(unsigned long)",
            "my_alloc(unsigned long)",
            "__GI___strdup",
            "__rust_alloc",
            "__rustc::__rust_alloc_zeroed",
            "__rustc::__rdl_alloc",
            "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc",
            "void std::vector<int, std::allocator<int> >::_M_realloc_insert<int const&>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int const&)",
            "std::map<int, int, std::less<int>, std::allocator<std::pair<int const, int> > >::operator[](int const&)",
            "<std::io::buffered::bufreader::buffer::Buffer>::with_capacity",
        ] {
            assert!(plumbing.is_plumbing(name), "{name}");
        }
        for name in [
            "main",
            "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> > app::render<int>(int)",
            "g_hash_table_insert",
            "my_alloc_table",
            "EventManager::subscribe",
        ] {
            assert!(!plumbing.is_plumbing(name), "{name}");
        }
    }

    #[test]
    fn globs_name_a_program_s_own_wrappers() {
        let plumbing = Plumbing::new(&["app_*alloc".into(), "wrap?".into()]).unwrap();
        assert!(plumbing.is_plumbing("app_xalloc"));
        assert!(plumbing.is_plumbing("app_zalloc(unsigned long)"));
        assert!(plumbing.is_plumbing("wrap1"));
        assert!(!plumbing.is_plumbing("wrap12"));
        assert!(!plumbing.is_plumbing("my_app_xalloc"));
    }

    #[test]
    fn stacks_that_differ_only_inside_the_plumbing_are_one_site() {
        let stacks: HashMap<u64, Arc<[Frame]>> = [
            (
                7,
                vec![
                    frame(0x10, "g_malloc"),
                    frame(0x50, "leak"),
                    frame(0x60, "main"),
                ],
            ),
            (
                3,
                vec![
                    frame(0x20, "g_strdup"),
                    frame(0x50, "leak"),
                    frame(0x60, "main"),
                ],
            ),
            (
                9,
                vec![
                    frame(0x30, "g_malloc"),
                    frame(0x51, "leak"),
                    frame(0x60, "main"),
                ],
            ),
        ]
        .into_iter()
        .map(|(id, mut frames)| {
            Plumbing::default().mark(&mut frames);
            (id, Arc::from(frames))
        })
        .collect();
        let site = |stack_id, bytes, oldest_ns| SiteState {
            stack_id,
            bytes,
            allocations: 1,
            oldest_ns,
            old_allocations: 1,
            estimate: None,
        };
        let mut folded = fold(vec![site(7, 100, 5), site(3, 10, 2), site(9, 1, 1)], |id| {
            stacks[&id].clone()
        });
        folded.sort_by_key(|s| s.stack_id);
        assert_eq!(
            folded,
            [
                SiteState {
                    stack_id: 3,
                    bytes: 110,
                    allocations: 2,
                    oldest_ns: 2,
                    old_allocations: 2,
                    estimate: None,
                },
                site(9, 1, 1)
            ]
        );
    }

    #[test]
    fn the_copies_of_an_unrolled_loop_are_one_site() {
        let at_line = |address, function: &str, line| Frame {
            line: Some(line),
            file: Some("leaker.rs".into()),
            ..frame(address, function)
        };
        let stacks: HashMap<u64, Arc<[Frame]>> = [0x40, 0x48, 0x51]
            .into_iter()
            .enumerate()
            .map(|(id, address)| {
                let frames = vec![
                    at_line(address, "leak_boxes", 29),
                    at_line(0x90, "main", 96),
                ];
                (id as u64, Arc::from(frames))
            })
            .collect();
        let site = |stack_id| SiteState {
            stack_id,
            bytes: 333,
            allocations: 1,
            oldest_ns: 1,
            old_allocations: 0,
            estimate: None,
        };
        let folded = fold(vec![site(2), site(0), site(1)], |id| stacks[&id].clone());
        assert_eq!(folded.len(), 1);
        assert_eq!(
            (folded[0].stack_id, folded[0].bytes, folded[0].allocations),
            (0, 999, 3)
        );
    }
}
