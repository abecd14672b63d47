//! Finds functions defined by an ELF object: where they are in the file, and their first
//! bytes, which the probe placement decodes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use object::{
    Object, ObjectSegment, ObjectSymbol, SymbolKind,
    elf::{DT_NEEDED, DT_SONAME},
    read::elf::{ElfFile64, ProgramHeader},
};

/// Bytes of a function read for placement: a prologue is a handful of instructions.
pub const PROLOGUE_BYTES: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an ELF object leakbpf can read")]
    Parse {
        path: PathBuf,
        source: object::read::Error,
    },
}

/// A function defined in an object file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address in the object (the ELF virtual address).
    pub address: u64,
    /// Where its first byte is in the file: what a uprobe is attached to.
    pub file_offset: u64,
    /// Its size in bytes, as its symbol says (0 when unknown).
    pub size: u64,
    /// Its first bytes, at most [`PROLOGUE_BYTES`], never past its end.
    pub prologue: Vec<u8>,
}

/// An object file read into memory.
pub struct ElfObject {
    path: PathBuf,
    data: Vec<u8>,
}

impl ElfObject {
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let data = std::fs::read(path).map_err(|source| ElfError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_bytes(path.to_owned(), data))
    }

    /// An object already read: `data` is its contents, `path` names it in errors.
    pub fn from_bytes(path: PathBuf, data: Vec<u8>) -> Self {
        Self { path, data }
    }

    /// The whole file.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// `length` bytes of the file from `offset`, if it has them all.
    pub fn bytes(&self, offset: u64, length: u64) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(length).ok()?)?;
        self.data.get(start..end)
    }

    /// The functions among `names` that this object defines, by name. A name versioned
    /// in the dynamic symbol table (`malloc@@GLIBC_2.2.5`) is found by its plain name.
    pub fn functions(&self, names: &[&str]) -> Result<HashMap<String, Function>, ElfError> {
        let file = object::File::parse(&*self.data).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })?;
        let mut found = HashMap::new();
        // The dynamic table names what other objects bind to; the full table of a
        // static executable is the only one it has.
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            if !symbol.is_definition() || symbol.kind() != SymbolKind::Text {
                continue;
            }
            let Ok(name) = symbol.name() else { continue };
            let name = name.split('@').next().unwrap_or(name);
            if found.contains_key(name) || !names.contains(&name) {
                continue;
            }
            let Some(file_offset) = file_offset(&file, symbol.address()) else {
                continue;
            };
            let length = match symbol.size() {
                0 => PROLOGUE_BYTES,
                size => size.min(PROLOGUE_BYTES),
            };
            let prologue = usize::try_from(file_offset)
                .ok()
                .and_then(|start| {
                    let end = start.checked_add(usize::try_from(length).ok()?)?;
                    self.data.get(start..end.min(self.data.len()))
                })
                .unwrap_or_default()
                .to_vec();
            found.insert(
                name.to_owned(),
                Function {
                    address: symbol.address(),
                    file_offset,
                    size: symbol.size(),
                    prologue,
                },
            );
        }
        Ok(found)
    }

    fn parse_elf64(&self) -> Result<ElfFile64<'_, object::Endianness>, ElfError> {
        ElfFile64::parse(&*self.data).map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// The program interpreter (`PT_INTERP`), absent in a static executable.
    pub fn interpreter(&self) -> Result<Option<PathBuf>, ElfError> {
        let file = self.parse_elf64()?;
        let endian = file.endian();
        for header in file.elf_program_headers() {
            if let Ok(Some(interp)) = header.interpreter(endian, &*self.data) {
                let interp = interp.strip_suffix(b"\0").unwrap_or(interp);
                return Ok(Some(PathBuf::from(
                    String::from_utf8_lossy(interp).into_owned(),
                )));
            }
        }
        Ok(None)
    }

    /// Its own name (`DT_SONAME`) and the libraries it needs (`DT_NEEDED`), in order.
    pub fn dependencies(&self) -> Result<Dependencies, ElfError> {
        let file = self.parse_elf64()?;
        let table = file.elf_dynamic_table().map_err(|source| ElfError::Parse {
            path: self.path.clone(),
            source,
        })?;
        let mut dependencies = Dependencies::default();
        for entry in &table {
            let name = || {
                table
                    .string(entry)
                    .ok()
                    .map(|name| String::from_utf8_lossy(name).into_owned())
            };
            match entry.tag {
                DT_SONAME => dependencies.soname = name(),
                DT_NEEDED => dependencies.needed.extend(name()),
                _ => {}
            }
        }
        Ok(dependencies)
    }
}

/// The dynamic linking names of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    pub soname: Option<String>,
    pub needed: Vec<String>,
}

/// The file offset of the byte at virtual `address`, through the segment that maps it.
fn file_offset(file: &object::File<'_>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (start, size) = segment.file_range();
        let delta = address.checked_sub(segment.address())?;
        // The file's own numbers: an offset near 2^64 must not overflow.
        (delta < size).then(|| start.checked_add(delta)).flatten()
    })
}

/// The libc this test binary maps: it links glibc dynamically, so a real one is at hand
/// for the tests of everything that reads objects.
#[cfg(test)]
pub(crate) fn own_libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains("/libc.so"))
        .map(PathBuf::from)
        .expect("this test process maps libc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_malloc_and_free_in_libc_with_their_first_bytes() {
        let libc = ElfObject::open(&own_libc()).unwrap();
        let found = libc.functions(&["malloc", "free", "no_such_fn"]).unwrap();
        assert!(!found.contains_key("no_such_fn"));
        for name in ["malloc", "free"] {
            let function = &found[name];
            assert!(function.address > 0);
            assert!(!function.prologue.is_empty());
            // The bytes at the file offset are the bytes the loader maps at the address.
            let data = std::fs::read(own_libc()).unwrap();
            let at = usize::try_from(function.file_offset).unwrap();
            assert_eq!(
                &data[at..at + function.prologue.len()],
                &function.prologue[..]
            );
        }
    }

    #[test]
    fn aliases_resolve_to_one_address() {
        // glibc exports aligned_alloc and memalign as one function; probing both would
        // count every call twice, so the caller dedupes by address.
        let libc = ElfObject::open(&own_libc()).unwrap();
        let found = libc.functions(&["aligned_alloc", "memalign"]).unwrap();
        assert_eq!(found["aligned_alloc"].address, found["memalign"].address);
    }

    #[test]
    fn libc_names_itself_and_the_loader() {
        let libc = ElfObject::open(&own_libc())
            .unwrap()
            .dependencies()
            .unwrap();
        assert_eq!(libc.soname.as_deref(), Some("libc.so.6"));
        assert!(
            libc.needed.iter().any(|n| n.starts_with("ld-linux")),
            "{libc:?}"
        );
    }

    /// An ELF64 header and one `PT_LOAD` program header mapping `size` bytes at file
    /// `offset` to `address`, nothing else.
    fn elf_with_segment(address: u64, offset: u64, size: u64) -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(); // ELF64, LSB
        elf.extend_from_slice(&3u16.to_le_bytes()); // ET_DYN
        elf.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
        for word in [0u64, 64, 0] {
            elf.extend_from_slice(&word.to_le_bytes()); // e_entry, e_phoff, e_shoff
        }
        elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, 1, 64, 0, 0] {
            elf.extend_from_slice(&half.to_le_bytes()); // sizes, 1 program header
        }
        elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
        for word in [offset, address, address, size, size, 0x1000] {
            elf.extend_from_slice(&word.to_le_bytes());
        }
        elf
    }

    #[test]
    fn a_segment_at_an_absurd_file_offset_gives_no_offset() {
        // Found by the `elf` fuzz target: the file offset overflowed.
        let absurd = elf_with_segment(0x1000, u64::MAX - 8, 0x100);
        let file = object::File::parse(&*absurd).unwrap();
        assert_eq!(file_offset(&file, 0x1010), None);
        let sane = elf_with_segment(0x1000, 0x200, 0x100);
        let file = object::File::parse(&*sane).unwrap();
        assert_eq!(file_offset(&file, 0x1010), Some(0x210));
        assert_eq!(file_offset(&file, 0x1100), None);
    }

    #[test]
    fn own_executable_has_an_interpreter() {
        let exe = ElfObject::open(Path::new("/proc/self/exe")).unwrap();
        let interp = exe.interpreter().unwrap().expect("dynamically linked");
        assert!(interp.to_string_lossy().contains("ld-linux"));
    }
}
