//! The committed eBPF object defines exactly the programs and maps leakbpf-common names:
//! a program or map renamed, added or removed on one side only fails here, not at load
//! time on a user's machine.

use std::collections::BTreeSet;

use leakbpf_common::{map_names, program_names};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

/// The object the agent embeds.
static OBJECT: &[u8] = include_bytes!("../bpf/leakbpf.bpf.o");

/// The symbols of `kind` defined in a section for which `section` gives a name, with it.
fn symbols(
    kind: SymbolKind,
    section: impl Fn(&str) -> Option<String>,
) -> Result<BTreeSet<(String, String)>, object::Error> {
    let file = object::File::parse(OBJECT)?;
    let mut found = BTreeSet::new();
    for symbol in file.symbols() {
        let Some(index) = symbol.section_index() else {
            continue;
        };
        if symbol.kind() != kind || !symbol.is_definition() {
            continue;
        }
        if let Some(section) = section(file.section_by_index(index)?.name()?) {
            found.insert((section, symbol.name()?.to_owned()));
        }
    }
    Ok(found)
}

/// `names` as a set, checking that none is listed twice.
fn set<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeSet<(String, String)> {
    let names: Vec<(String, String)> = names
        .into_iter()
        .map(|(kind, name)| (kind.to_owned(), name.to_owned()))
        .collect();
    let set: BTreeSet<_> = names.iter().cloned().collect();
    assert_eq!(set.len(), names.len(), "a name listed twice: {names:?}");
    set
}

#[test]
fn defines_exactly_the_named_programs() {
    // Every function outside `.text` (the compiler's memcpy and the like) is a program;
    // its section says which kind (aya names it `uprobe`, or `uprobe/...`).
    let found = symbols(SymbolKind::Text, |section| {
        (section != ".text").then(|| section.split('/').next().unwrap_or(section).to_owned())
    })
    .expect("the eBPF object's symbols");
    let expected = set(program_names::UPROBES
        .iter()
        .map(|name| ("uprobe", *name))
        .chain(
            program_names::URETPROBES
                .iter()
                .map(|name| ("uretprobe", *name)),
        )
        .chain(
            program_names::TRACEPOINTS
                .iter()
                .map(|name| ("tracepoint", *name)),
        ));
    assert_eq!(
        found.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "programs (section kind, name) in the object that leakbpf-common does not name"
    );
    assert_eq!(
        expected.difference(&found).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "programs (section kind, name) that leakbpf-common names and the object lacks"
    );
}

#[test]
fn defines_exactly_the_named_maps() {
    // Legacy map definitions (`maps`, as aya-ebpf writes them) or BTF ones (`.maps`).
    let found = symbols(SymbolKind::Data, |section| {
        matches!(section, "maps" | ".maps").then(|| "map".to_owned())
    })
    .expect("the eBPF object's symbols");
    let expected = set(map_names::ALL.iter().map(|name| ("map", *name)));
    assert_eq!(
        found.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "maps in the object that leakbpf-common does not name"
    );
    assert_eq!(
        expected.difference(&found).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "maps that leakbpf-common names and the object lacks"
    );
}
