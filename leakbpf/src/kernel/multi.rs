//! The uprobe programs loaded for uprobe_multi links (kernel 6.6+). A link holds every
//! probe of one program on one object, and its release waits for the kernel's grace
//! periods once; a perf-event link per probe waits for them per probe, one after the
//! other (the kernel holds a lock across them): 2 s at exit for glibc's 17 probes.
//!
//! aya 0.14 loads uprobe programs for perf-event links only, so these are loaded from
//! the same object: its instructions, relocated to the maps aya created (with the values
//! it gave the globals), loaded with the uprobe_multi attach type.

use std::{
    collections::{HashMap, HashSet},
    ffi::CStr,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use aya::{Ebpf, maps::Map};

use aya_obj::btf::BtfFeatures;

use super::bpf::{self, BPF_TRACE_UPROBE_MULTI, ProgramBtf};

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("cannot parse the eBPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("the eBPF object has BTF relocations, which only aya applies")]
    Btf,
    #[error("the eBPF object has no BTF")]
    NoBtf,
    #[error("cannot fix up the eBPF object's BTF")]
    FixBtf(#[source] aya_obj::btf::BtfError),
    #[error("cannot load the eBPF object's BTF")]
    LoadBtf(#[source] io::Error),
    #[error("the eBPF object's map {0} is not one aya created")]
    Map(String),
    #[error("cannot relocate the eBPF object")]
    Relocate(#[source] aya_obj::relocation::EbpfRelocationError),
    #[error("the eBPF object lacks program {0}")]
    Missing(&'static str),
    #[error("cannot load program {name} for uprobe_multi links")]
    Load {
        name: &'static str,
        source: io::Error,
    },
}

/// The programs, by name.
pub struct MultiPrograms {
    programs: HashMap<&'static str, OwnedFd>,
}

impl MultiPrograms {
    /// `names` of `object`, loaded for uprobe_multi links against the maps of `ebpf`,
    /// which loaded `object` before. Fails on a kernel without uprobe_multi links.
    pub fn load(
        ebpf: &Ebpf,
        object: &[u8],
        names: impl IntoIterator<Item = &'static str>,
    ) -> Result<Self, MultiError> {
        let mut obj = aya_obj::Object::parse(object).map_err(MultiError::Parse)?;
        if obj.has_btf_relocations() {
            return Err(MultiError::Btf);
        }
        // Every BTF feature is older than uprobe_multi links (6.6): nothing to strip.
        let features = BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf = match obj.fixup_and_sanitize_btf(&features) {
            Ok(Some(btf)) => bpf::load_btf(&btf.to_bytes()).map_err(MultiError::LoadBtf)?,
            Ok(None) => return Err(MultiError::NoBtf),
            Err(err) => return Err(MultiError::FixBtf(err)),
        };
        let fds: HashMap<&str, RawFd> = ebpf
            .maps()
            .filter_map(|(name, map)| Some((name, map_fd(map)?)))
            .collect();
        let maps: Vec<(String, aya_obj::Map)> = obj.maps.drain().collect();
        let with_fds = maps
            .iter()
            .map(|(name, map)| match fds.get(name.as_str()) {
                Some(&fd) => Ok((name.as_str(), fd, map)),
                None => Err(MultiError::Map(name.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let text_sections: HashSet<usize> = obj
            .functions
            .keys()
            .map(|&(section_index, _)| section_index)
            .collect();
        obj.relocate_maps(with_fds.into_iter(), &text_sections)
            .map_err(MultiError::Relocate)?;
        obj.relocate_calls(&text_sections)
            .map_err(MultiError::Relocate)?;
        let mut programs = HashMap::new();
        for name in names {
            let program = obj.programs.get(name).ok_or(MultiError::Missing(name))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or(MultiError::Missing(name))?;
            let func_info = function.func_info.func_info_bytes();
            let line_info = function.line_info.line_info_bytes();
            let records = ProgramBtf {
                fd: btf.as_fd(),
                func_info: &func_info,
                func_info_rec_size: function.func_info_rec_size,
                func_info_cnt: function.func_info.len(),
                line_info: &line_info,
                line_info_rec_size: function.line_info_rec_size,
                line_info_cnt: function.line_info.len(),
            };
            let fd = bpf::load_kprobe(
                &function.instructions,
                BPF_TRACE_UPROBE_MULTI,
                Some(name),
                Some(&records),
            )
            .map_err(|source| MultiError::Load { name, source })?;
            programs.insert(name, fd);
        }
        Ok(Self { programs })
    }

    /// A link of program `name` on the object at `path`, at each of `offsets` with the
    /// matching `cookies`; at the returns with `at_return`; in process `pid`, or in
    /// every process for 0.
    pub fn link(
        &self,
        name: &'static str,
        path: &CStr,
        offsets: &[u64],
        cookies: &[u64],
        at_return: bool,
        pid: u32,
    ) -> io::Result<OwnedFd> {
        let program = self
            .programs
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name))?;
        bpf::link_uprobe_multi(
            program,
            BPF_TRACE_UPROBE_MULTI,
            path,
            offsets,
            cookies,
            at_return,
            pid,
        )
    }
}

/// The descriptor of `map`, of the kinds the object declares.
fn map_fd(map: &Map) -> Option<RawFd> {
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::RingBuf(data) => Some(data.fd().as_fd().as_raw_fd()),
        _ => None,
    }
}
