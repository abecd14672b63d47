//! A Rust target program (on the system allocator, so every allocation is a `malloc`):
//! `leak_boxes` leaks boxes, `leak_vec` leaks one vector's buffer, and `churn` makes about
//! a million allocations that are all freed.
//!
//! `rust_leaker [--rounds N] [--wait]` (N churn rounds, 250,000 by default). Protocol:
//! with `--wait`, print `ready` and wait for a line on stdin; work; print one truth line
//! per leaking function and `done`; with `--wait`, wait for EOF on stdin. The truth is counted from what the functions allocated.

use std::{
    hint::black_box,
    io::{self, BufRead, Write},
    mem,
    process::ExitCode,
};

/// Boxes `leak_boxes` leaks.
const BOXES: usize = 7;

struct Truth {
    function: &'static str,
    bytes: usize,
    count: usize,
}

#[inline(never)]
fn leak_boxes(count: usize) -> Truth {
    let mut bytes = 0;
    for i in 0..count {
        let leaked: &'static mut [u8; 333] = Box::leak(Box::new([i as u8; 333]));
        bytes += mem::size_of_val(black_box(leaked));
    }
    Truth {
        function: "rust_leaker::leak_boxes",
        bytes,
        count,
    }
}

#[inline(never)]
fn leak_vec() -> Truth {
    let buffer: Vec<u8> = Vec::with_capacity(4444);
    let bytes = buffer.capacity() * mem::size_of::<u8>();
    mem::forget(black_box(buffer));
    Truth {
        function: "rust_leaker::leak_vec",
        bytes,
        count: 1,
    }
}

/// Allocations that are all freed: boxes, growing vectors, strings. Returns how many
/// blocks it dropped (each one `free`).
#[inline(never)]
fn churn(rounds: usize) -> usize {
    let mut dropped = 0;
    for i in 0..rounds {
        drop(black_box(Box::new([i as u8; 48])));
        let mut grown: Vec<u64> = Vec::new();
        for j in 0..5 {
            grown.push(black_box(j as u64)); // malloc for 4 elements, realloc for 8
        }
        drop(black_box(grown));
        drop(black_box(format!("churn {i}")));
        dropped += 3;
    }
    dropped
}

pub fn main() -> ExitCode {
    let mut wait = false;
    let mut rounds = 250_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--wait" => wait = true,
            "--rounds" if let Some(Ok(n)) = args.next().map(|n| n.parse()) => rounds = n,
            _ => {
                eprintln!("usage: rust_leaker [--rounds N] [--wait]");
                return ExitCode::from(2);
            }
        }
    }
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    if wait {
        writeln!(stdout, "ready")
            .and_then(|()| stdout.flush())
            .expect("stdout");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line).expect("stdin") == 0 {
            eprintln!("rust_leaker: stdin closed before go");
            return ExitCode::FAILURE;
        }
    }

    let truths = [leak_boxes(BOXES), leak_vec()];
    let dropped = churn(rounds);

    for truth in truths {
        writeln!(
            stdout,
            r#"{{"truth":{{"function":"{}","bytes":{},"count":{}}}}}"#,
            truth.function, truth.bytes, truth.count
        )
        .expect("stdout");
    }
    writeln!(
        stdout,
        r#"{{"churn":{{"function":"rust_leaker::churn","frees":{dropped}}}}}"#
    )
    .expect("stdout");
    writeln!(stdout, "done")
        .and_then(|()| stdout.flush())
        .expect("stdout");

    if wait {
        for line in stdin.lock().lines() {
            if line.is_err() {
                break;
            }
        }
    }
    ExitCode::SUCCESS
}
