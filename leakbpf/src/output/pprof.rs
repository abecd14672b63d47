//! A heap profile in pprof's format: `profile.proto` (compiled by build.rs), gzipped, as
//! `go tool pprof`, Pyroscope and Parca read it.
//!
//! A stack starts at the frame its call site is shown at, past allocation plumbing
//! (`operator new`, Rust's `alloc::`), as Go's own heap profiles start past its
//! allocator, unless all frames are asked for (`--show-alloc-frames`). Each call site is
//! one sample of two values, `inuse_objects` (count) and `inuse_space`
//! (bytes, the default), labelled with its process, its average block size (`bytes`, as
//! Go's heap profiles have it) and its verdict. Each return address is one location, its
//! functions as lines, innermost first: a function inlined at that address comes before
//! the one it was inlined into, as pprof expresses inlining. Functions carry leakbpf's
//! names, already demangled (no system name is known). Each object file is a mapping
//! with its build id, marked as symbolized so pprof keeps leakbpf's names.

use std::{
    collections::HashMap,
    io::{self, Write},
    sync::Arc,
    time::UNIX_EPOCH,
};

use flate2::{Compression, write::GzEncoder};
use indexmap::IndexSet;
use prost::Message;

use super::{
    Render,
    folded::{process_name, shown_frames},
};
use crate::{
    snapshot::{Snapshot, Verdict},
    symbolize::Frame,
};

/// The types generated from pprof's `profile.proto`.
#[allow(clippy::all, clippy::pedantic)]
mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

pub struct Pprof {
    pub all_frames: bool,
}

impl Render for Pprof {
    fn snapshot(&mut self, snapshot: &Snapshot, out: &mut dyn Write) -> io::Result<()> {
        self.document(&[snapshot], out)
    }

    fn document(&mut self, snapshots: &[&Snapshot], out: &mut dyn Write) -> io::Result<()> {
        let encoded = profile(snapshots, self.all_frames).encode_to_vec();
        let mut gzip = GzEncoder::new(out, Compression::default());
        gzip.write_all(&encoded)?;
        gzip.finish()?;
        Ok(())
    }
}

/// The string table: index 0 is the empty string, as the format requires.
struct Strings(IndexSet<String>);

impl Strings {
    fn new() -> Self {
        Self(IndexSet::from([String::new()]))
    }

    fn index(&mut self, text: &str) -> i64 {
        let index = match self.0.get_index_of(text) {
            Some(index) => index,
            None => self.0.insert_full(text.to_owned()).0,
        };
        i64::try_from(index).unwrap_or(i64::MAX)
    }
}

/// A location's key: the process (addresses are per process), the address, and how many
/// of the functions there are shown (a stack cut past plumbing may start inside an
/// inlined chain).
type LocationKey = (u32, u64, usize);

/// A mapping's key: the process, the file, and where the file's offset 0 would be.
type MappingKey = (u32, Arc<str>, u64);

struct Builder {
    strings: Strings,
    functions: HashMap<(String, Option<String>), u64>,
    locations: HashMap<LocationKey, u64>,
    mappings: HashMap<MappingKey, usize>,
    profile: proto::Profile,
}

fn profile(snapshots: &[&Snapshot], all_frames: bool) -> proto::Profile {
    let mut builder = Builder {
        strings: Strings::new(),
        functions: HashMap::new(),
        locations: HashMap::new(),
        mappings: HashMap::new(),
        profile: proto::Profile::default(),
    };
    builder.build(snapshots, all_frames);
    let mut profile = builder.profile;
    profile.string_table = builder.strings.0.into_iter().collect();
    profile
}

impl Builder {
    fn string(&mut self, text: &str) -> i64 {
        self.strings.index(text)
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    fn build(&mut self, snapshots: &[&Snapshot], all_frames: bool) {
        self.profile.sample_type = vec![
            self.value_type("inuse_objects", "count"),
            self.value_type("inuse_space", "bytes"),
        ];
        self.profile.default_sample_type = self.string("inuse_space");
        // Every allocation is recorded: nothing is sampled.
        self.profile.period_type = Some(self.value_type("space", "bytes"));
        self.profile.period = 1;
        self.profile.time_nanos = snapshots
            .iter()
            .filter_map(|s| time_nanos(&s.timestamp))
            .max()
            .unwrap_or_default();
        for snapshot in snapshots {
            let comment = format!(
                "leakbpf report #{}{} on {} at {}: {} B outstanding in {} allocations at {} call sites",
                snapshot.report,
                if snapshot.is_final { " (final)" } else { "" },
                process_name(snapshot),
                snapshot.timestamp,
                snapshot.totals.outstanding_bytes,
                snapshot.totals.outstanding_allocations,
                snapshot.totals.callsites
            );
            let comment = self.string(&comment);
            self.profile.comment.push(comment);
            self.samples(snapshot, all_frames);
        }
    }

    fn samples(&mut self, snapshot: &Snapshot, all_frames: bool) {
        let pid = snapshot.pid;
        let command = snapshot.process.command.clone().unwrap_or_default();
        for site in &snapshot.callsites {
            let frames = shown_frames(site, all_frames);
            let mut location_id = Vec::new();
            if frames.is_empty() {
                location_id.push(self.no_stack(pid));
            }
            // Frames sharing an address (inlined ones, then the one they are inlined
            // into) are one location.
            let mut start = 0;
            for (index, frame) in frames.iter().enumerate() {
                if !frame.inlined || index + 1 == frames.len() {
                    location_id.push(self.location(pid, &frames[start..=index]));
                    start = index + 1;
                }
            }
            let verdict = match site.trend.verdict {
                Verdict::Leak => "leak",
                Verdict::Suspect => "suspect",
                Verdict::NoLeak => "no_leak",
            };
            let label = vec![
                proto::Label {
                    key: self.string("pid"),
                    num: i64::from(pid),
                    ..proto::Label::default()
                },
                proto::Label {
                    key: self.string("command"),
                    str: self.string(&command),
                    ..proto::Label::default()
                },
                proto::Label {
                    key: self.string("bytes"),
                    num: signed(site.average_size),
                    num_unit: self.string("bytes"),
                    ..proto::Label::default()
                },
                proto::Label {
                    key: self.string("verdict"),
                    str: self.string(verdict),
                    ..proto::Label::default()
                },
            ];
            self.profile.sample.push(proto::Sample {
                location_id,
                value: vec![signed(site.allocations), signed(site.bytes)],
                label,
            });
        }
    }

    /// The location of `frames`, which share one return address: its functions
    /// innermost first, the last one the function the others are inlined into.
    fn location(&mut self, pid: u32, frames: &[Frame]) -> u64 {
        let Some(frame) = frames.last() else {
            return 0;
        };
        // The call instruction, where the offset points (one byte into it).
        let address = frame.address.saturating_sub(1);
        let key = (pid, address, frames.len());
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let mapping_id = self.mapping(pid, frame, address);
        let line = frames
            .iter()
            .filter_map(|frame| {
                let name = frame.function.as_deref()?;
                Some(proto::Line {
                    function_id: self.function(name, frame.file.as_deref()),
                    line: frame.line.map_or(0, i64::from),
                    column: 0,
                })
            })
            .collect();
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            mapping_id,
            address,
            line,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// The location of a call site whose stack could not be read: named so, at no
    /// address (address 0 is no call's).
    fn no_stack(&mut self, pid: u32) -> u64 {
        let key = (pid, 0, 0);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let line = vec![proto::Line {
            function_id: self.function("[stack not available]", None),
            line: 0,
            column: 0,
        }];
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            line,
            ..proto::Location::default()
        });
        self.locations.insert(key, id);
        id
    }

    /// The mapping of the file `frame` is in, grown to take in `address`; 0 when the
    /// file is not known.
    fn mapping(&mut self, pid: u32, frame: &Frame, address: u64) -> u64 {
        let (Some(module), Some(offset)) = (&frame.module, frame.offset) else {
            return 0;
        };
        let start = address.saturating_sub(offset);
        let key = (pid, module.clone(), start);
        let index = match self.mappings.get(&key) {
            Some(&index) => index,
            None => {
                let index = self.profile.mapping.len();
                let mapping = proto::Mapping {
                    id: index as u64 + 1,
                    memory_start: start,
                    memory_limit: address + 1,
                    file_offset: 0,
                    filename: self.string(module),
                    build_id: self.string(frame.build_id.as_deref().unwrap_or_default()),
                    // leakbpf symbolized every address it could: pprof must not try
                    // again with the files on the machine that reads the profile.
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                    has_inline_frames: true,
                };
                self.profile.mapping.push(mapping);
                self.mappings.insert(key, index);
                index
            }
        };
        let mapping = &mut self.profile.mapping[index];
        mapping.memory_limit = mapping.memory_limit.max(address + 1);
        mapping.id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let key = (name.to_owned(), file.map(str::to_owned));
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let function = proto::Function {
            id,
            name: self.string(name),
            system_name: 0,
            filename: self.string(file.unwrap_or_default()),
            start_line: 0,
        };
        self.profile.function.push(function);
        self.functions.insert(key, id);
        id
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An RFC 3339 timestamp as nanoseconds since the epoch.
fn time_nanos(timestamp: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339(timestamp).ok()?;
    let since = time.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use std::{io::Read, sync::Arc};

    use flate2::read::GzDecoder;

    use super::*;
    use crate::snapshot::example;

    fn decode(bytes: &[u8]) -> proto::Profile {
        let mut raw = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut raw).unwrap();
        proto::Profile::decode(&raw[..]).unwrap()
    }

    #[test]
    fn one_sample_per_call_site_with_inlined_frames_as_lines_of_one_location() {
        let mut snapshot = example();
        let frame = |address, function: &str, inlined| Frame {
            address,
            function: Some(function.into()),
            module: Some("/srv/chat_server".into()),
            offset: Some(address - 0x5000 - 1),
            build_id: Some("2f6c1e0a".into()),
            file: Some("chat_server.cpp".into()),
            line: Some(address as u32 - 0x5000),
            inlined,
            allocator: false,
        };
        snapshot.callsites[0].frames = Arc::from([
            frame(0x5100, "EventManager::subscribe", false),
            frame(0x5200, "simulate", true),
            frame(0x5200, "main", false),
        ]);
        let mut other = snapshot.callsites[0].clone();
        other.bytes = 1000;
        other.allocations = 10;
        other.frames = Arc::from([frame(0x5300, "cache_put", false)]);
        snapshot.callsites.push(other);
        let mut out = Vec::new();
        Pprof { all_frames: false }
            .snapshot(&snapshot, &mut out)
            .unwrap();
        let profile = decode(&out);
        let text = |index: i64| profile.string_table[index as usize].as_str();
        assert_eq!(text(0), "");
        let types: Vec<(&str, &str)> = profile
            .sample_type
            .iter()
            .map(|t| (text(t.r#type), text(t.unit)))
            .collect();
        assert_eq!(
            types,
            [("inuse_objects", "count"), ("inuse_space", "bytes")]
        );
        assert_eq!(text(profile.default_sample_type), "inuse_space");
        assert_eq!(profile.time_nanos, 1_795_600_800_000_000_000);
        assert_eq!(profile.sample.len(), 2);
        assert_eq!(profile.sample[0].value, [2, 368]);
        assert_eq!(profile.sample[1].value, [10, 1000]);
        // Two locations for three frames: simulate is inlined into main at one address.
        assert_eq!(profile.sample[0].location_id, [1, 2]);
        let location = &profile.location[1];
        assert_eq!(location.address, 0x51ff);
        let lines: Vec<(&str, i64)> = location
            .line
            .iter()
            .map(|line| {
                let function = &profile.function[line.function_id as usize - 1];
                (text(function.name), line.line)
            })
            .collect();
        assert_eq!(lines, [("simulate", 0x200), ("main", 0x200)]);
        // One mapping for the file, its build id, covering every address in it.
        assert_eq!(profile.mapping.len(), 1);
        let mapping = &profile.mapping[0];
        assert_eq!(text(mapping.filename), "/srv/chat_server");
        assert_eq!(text(mapping.build_id), "2f6c1e0a");
        assert_eq!(mapping.memory_start, 0x5000);
        assert_eq!(mapping.memory_limit, 0x5300);
        assert!(mapping.has_functions && mapping.has_inline_frames);
        let labels: Vec<(&str, &str, i64)> = profile.sample[0]
            .label
            .iter()
            .map(|l| (text(l.key), text(l.str), l.num))
            .collect();
        assert_eq!(
            labels,
            [
                ("pid", "", 42),
                ("command", "chat_server", 0),
                ("bytes", "", 184),
                ("verdict", "leak", 0)
            ]
        );
    }

    #[test]
    fn addresses_of_two_processes_are_two_locations() {
        let mut other = example();
        other.pid = 43;
        let mut out = Vec::new();
        Pprof { all_frames: false }
            .document(&[&example(), &other], &mut out)
            .unwrap();
        let profile = decode(&out);
        assert_eq!(profile.sample.len(), 2);
        assert_eq!(profile.location.len(), 2);
        assert_eq!(profile.mapping.len(), 2);
        assert_eq!(profile.function.len(), 1, "one function, in both");
        assert_eq!(profile.comment.len(), 2);
    }
}
