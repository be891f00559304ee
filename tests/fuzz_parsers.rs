//! Property-based fuzzing of every parser of user files: the state npz
//! (`State::from_arrays` over `read_npz_from`), the batch npz (`read_batch_npz_from`), the
//! search checkpoint (`checkpoint::read_from`), the CIFAR-10 binary reader
//! (`parse_cifar_bytes`) and the genotype text parser (`Genotype::from_str`).
//!
//! Inputs: arbitrary bytes, and structured mutations of valid files: truncation, bit flips,
//! overwritten, inserted and deleted runs, extreme 32-bit fields (the zip lengths); for npz
//! files also mutations that keep the archive valid and reach the npy parser and the key
//! checks: mutated npy headers (version, header length, descr, shape, fortran order),
//! truncated or extended data, wrong shapes, wrong dtypes, NaN and Inf values, removed,
//! unknown, renamed and duplicate keys, deflated members. Each case must return `Ok` or `Err`
//! (a panic fails the property; an abort, e.g. a huge allocation, fails the whole test binary)
//! within [`CASE_LIMIT`].
//!
//! `cargo test --test fuzz_parsers` runs [`CASES`] cases per parser. The `#[ignore]`d
//! `fuzz_parsers_long` runs `DARTS_FUZZ_CASES` cases per parser (default 1,000,000):
//! `DARTS_FUZZ_CASES=1000000 cargo test --release --test fuzz_parsers -- --ignored`.

mod common;

use darts::darts::batch_file::read_batch_npz_from;
use darts::darts::genotype::{named, Genotype};
use darts::darts::params::{read_npz_from, write_npz, Layout, State};
use darts::data::cifar::{parse_cifar_bytes, RECORD_BYTES};
use darts::search::checkpoint;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{Cursor, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Cases per parser in `cargo test`.
const CASES: u32 = 10_000;
/// The longest one case may take.
const CASE_LIMIT: Duration = Duration::from_secs(1);

struct Fixtures {
    layout: Layout,
    k: usize,
    /// The valid state file's members (key, array).
    state: Vec<(String, ArrayD<f64>)>,
    state_npz: Vec<u8>,
    batch: Vec<(String, ArrayD<f64>)>,
    batch_npz: Vec<u8>,
    checkpoint_npz: Vec<u8>,
    cifar: Vec<u8>,
    genotype: String,
}

fn npz_bytes_via_file(name: &str, write: impl FnOnce(&Path)) -> Vec<u8> {
    let d = std::env::temp_dir().join(format!("darts-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    write(&p);
    std::fs::read(&p).unwrap()
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        // A one-cell, one-step network: every kind of key (stem, preprocess, mixed ops, BN
        // buffers, classifier, alphas) in a file small enough for thousands of cases a second.
        let cfg = darts::darts::network::SearchConfig {
            layers: 1,
            steps: 1,
            multiplier: 1,
            ..common::tiny(false)
        };
        let layout = cfg.layout().unwrap();
        let st = common::state(&cfg, 7);
        let mut state: Vec<(String, ArrayD<f64>)> = st
            .tensors
            .iter()
            .map(|(k, v)| (format!("sd/{k}"), v.clone()))
            .collect();
        state.push(("alpha/normal".into(), st.alpha_normal.clone()));
        state.push(("alpha/reduce".into(), st.alpha_reduce.clone()));
        let state_npz = npz_bytes_via_file("state.npz", |p| st.to_npz(p).unwrap());
        let b = common::batch(2, 8, 10, 3);
        let y: ArrayD<f64> = ArrayD::from_shape_fn(IxDyn(&[2]), |i| {
            (0..10).position(|c| b.onehot[[i[0], c]] == 1.0).unwrap() as f64
        });
        let batch = vec![
            ("x_train".to_string(), b.x.clone()),
            ("y_train".to_string(), y.clone()),
            ("x_valid".to_string(), b.x.clone()),
            ("y_valid".to_string(), y),
        ];
        let batch_npz = npz_bytes_via_file("batch.npz", |p| {
            write_npz(p, batch.iter().map(|(k, v)| (k.as_str(), v))).unwrap()
        });
        let checkpoint_npz = npz_bytes_via_file("checkpoint.npz", |p| {
            let arrays = state.iter().take(6).cloned().collect();
            let meta = serde_json::json!({"epoch": 1, "step": 2, "seed": 3, "rng": [1, 2]});
            checkpoint::write(p, &arrays, &meta).unwrap()
        });
        let mut cifar = Vec::new();
        for r in 0..2u8 {
            cifar.push(r * 7 % 10);
            cifar.extend((0..RECORD_BYTES - 1).map(|i| (i as u8).wrapping_mul(r + 3)));
        }
        Fixtures {
            layout,
            k: cfg.k(),
            state,
            state_npz,
            batch,
            batch_npz,
            checkpoint_npz,
            cifar,
            genotype: named("DARTS_V2").unwrap().to_string(),
        }
    })
}

// ---------------------------------------------------------------------------------------
// Mutations.

/// A byte-level mutation of `base`: truncation, bit flips, an overwritten, inserted or
/// deleted run, a duplicated chunk, or an extreme 32-bit little-endian field.
fn mutate_bytes(base: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = base.to_vec();
    let rounds = rng.random_range(1..=3);
    for _ in 0..rounds {
        let n = v.len();
        let pos = if n == 0 { 0 } else { rng.random_range(0..n) };
        match rng.random_range(0..8) {
            0 => v.truncate(pos),
            1 => {
                for _ in 0..rng.random_range(1..=8) {
                    if !v.is_empty() {
                        let p = rng.random_range(0..v.len());
                        v[p] ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            2 => {
                let len = rng.random_range(1..=32).min(n - pos.min(n));
                for b in &mut v[pos..pos + len] {
                    *b = rng.random();
                }
            }
            3 => {
                let len = rng.random_range(1..=64);
                let ins: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                v.splice(pos..pos, ins);
            }
            4 => {
                let len = rng.random_range(1..=64).min(n - pos);
                v.drain(pos..pos + len);
            }
            5 => {
                let len = rng.random_range(1..=256).min(n - pos);
                let chunk = v[pos..pos + len].to_vec();
                let at = rng.random_range(0..=v.len());
                v.splice(at..at, chunk);
            }
            6 if n >= 4 => {
                let p = rng.random_range(0..=n - 4);
                let x: u32 = match rng.random_range(0..5) {
                    0 => 0,
                    1 => u32::MAX,
                    2 => 0x7fff_ffff,
                    3 => 0x8000_0000,
                    _ => rng.random(),
                };
                v[p..p + 4].copy_from_slice(&x.to_le_bytes());
            }
            _ => {
                if n >= 2 {
                    let p = rng.random_range(0..n - 1);
                    v[p..p + 2].copy_from_slice(&u16::MAX.to_le_bytes());
                }
            }
        }
    }
    v
}

/// The npy bytes of `a` (f64, C order).
fn npy_of(a: &ArrayD<f64>) -> Vec<u8> {
    let mut v = Vec::new();
    a.write_npy(&mut v).unwrap();
    v
}

/// npy bytes of a random array of a random dtype (including ones we do not read).
fn npy_other_dtype(a: &ArrayD<f64>, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut v = Vec::new();
    match rng.random_range(0..7) {
        0 => a.mapv(|x| x as f32).write_npy(&mut v).unwrap(),
        1 => a.mapv(|x| x as i64).write_npy(&mut v).unwrap(),
        2 => a.mapv(|x| x as i32).write_npy(&mut v).unwrap(),
        3 => a.mapv(|x| x as u8).write_npy(&mut v).unwrap(),
        4 => a.mapv(|x| x > 0.0).write_npy(&mut v).unwrap(),
        5 => a.mapv(|x| x as i8).write_npy(&mut v).unwrap(),
        _ => a.t().to_owned().write_npy(&mut v).unwrap(), // Fortran order
    }
    v
}

/// A mutation of one npy member that keeps it inside a valid zip: its header text (descr,
/// shape, fortran order, garbage), version, header length, or data length.
fn mutate_npy(npy: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    if npy.len() < 10 {
        return mutate_bytes(npy, rng);
    }
    let hlen = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let (head, data) = npy.split_at((10 + hlen).min(npy.len()));
    let descrs = [
        "<f8", ">f8", "<f4", ">f4", "<i8", ">i8", "|u1", "<i4", "|b1", "<c16", "O", "", "<f8'",
        "\\x00",
    ];
    let shapes = [
        "()",
        "(0,)",
        "(1,)",
        "(3,)",
        "(2, 2)",
        "(18446744073709551615,)",
        "(4294967296, 4294967296)",
        "(1000000000000,)",
        "(-1,)",
        "(1, 2, 3, 4, 5, 6, 7, 8, 9)",
        "(2,,)",
        "((2,),)",
        "[2]",
    ];
    match rng.random_range(0..6) {
        0 | 1 => {
            let descr = descrs[rng.random_range(0..descrs.len())];
            let shape = shapes[rng.random_range(0..shapes.len())];
            let fortran = ["True", "False", "1", "None"][rng.random_range(0..4)];
            let mut text = match rng.random_range(0..4) {
                0 => format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"),
                1 => format!("{{'shape': {shape}, 'descr': '{descr}', 'descr': '{descr}', 'fortran_order': {fortran}}}"),
                2 => format!("{{\"descr\": \"{descr}\", \"fortran_order\": {fortran}, \"shape\": {shape}, 'extra': 1}}"),
                _ => format!("{{'descr': '{descr}', 'shape': {shape}}}"),
            };
            text.push('\n');
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend_from_slice(&(text.len() as u16).to_le_bytes());
            v.extend_from_slice(text.as_bytes());
            let keep = rng.random_range(0..=data.len());
            v.extend_from_slice(&data[..keep]);
            v
        }
        2 => {
            let mut v = npy.to_vec();
            v[6] = [0u8, 1, 2, 3, 4, 255][rng.random_range(0..6)];
            v
        }
        3 => {
            let mut v = npy.to_vec();
            let l: u16 = rng.random();
            v[8..10].copy_from_slice(&l.to_le_bytes());
            v
        }
        4 => {
            let mut v = head.to_vec();
            let keep = rng.random_range(0..=data.len());
            v.extend_from_slice(&data[..keep]);
            if rng.random_bool(0.5) {
                v.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>()));
            }
            v
        }
        _ => mutate_bytes(npy, rng),
    }
}

/// A zip archive of `members` (names as given), stored or deflated; with `dup`, the name of
/// member 1 is overwritten with that of member 0 in the raw bytes (same length), which makes
/// a real duplicate with valid CRCs.
fn zip_of(members: &[(String, Vec<u8>)], deflate: bool, dup: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    });
    for (name, bytes) in members {
        if w.start_file(name.as_str(), opts).is_err() {
            continue;
        }
        w.write_all(bytes).unwrap();
    }
    let mut out = w.finish().unwrap().into_inner();
    if dup && members.len() >= 2 && members[0].0.len() == members[1].0.len() {
        let (a, b) = (members[0].0.as_bytes(), members[1].0.as_bytes());
        let mut i = 0;
        while i + b.len() <= out.len() {
            if &out[i..i + b.len()] == b {
                out[i..i + b.len()].copy_from_slice(a);
                i += b.len();
            } else {
                i += 1;
            }
        }
    }
    out
}

/// A structurally valid npz from `base` members with one or more semantic mutations: a wrong
/// shape, a wrong dtype, NaN/Inf values, a mutated npy member, a removed, unknown, renamed or
/// duplicate key, a `.npy` suffix dropped, deflated members.
fn mutate_npz(base: &[(String, ArrayD<f64>)], rng: &mut ChaCha8Rng) -> Vec<u8> {
    // The npy bytes of the base members, computed once per base.
    type Members = Vec<(String, Vec<u8>)>;
    static CACHE: OnceLock<std::sync::Mutex<Vec<(usize, Members)>>> = OnceLock::new();
    let id = base.as_ptr() as usize ^ base.len();
    let cache = CACHE.get_or_init(Default::default);
    let cached = cache
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, m)| m.clone());
    let mut members = cached.unwrap_or_else(|| {
        let m: Members = base
            .iter()
            .map(|(k, a)| (format!("{k}.npy"), npy_of(a)))
            .collect();
        cache.lock().unwrap().push((id, m.clone()));
        m
    });
    let mut dup = false;
    for _ in 0..rng.random_range(1..=3) {
        if members.is_empty() {
            break;
        }
        let i = rng.random_range(0..members.len());
        let a = &base[i.min(base.len() - 1)].1;
        match rng.random_range(0..10) {
            0 => {
                let shape: Vec<usize> = (0..rng.random_range(0..5))
                    .map(|_| rng.random_range(0..5))
                    .collect();
                let n: usize = shape.iter().product();
                members[i].1 =
                    npy_of(&ArrayD::from_shape_vec(IxDyn(&shape), vec![0.5; n]).unwrap());
            }
            1 => members[i].1 = npy_other_dtype(a, rng),
            2 => {
                let mut b = a.clone();
                if let Some(x) = b.iter_mut().next() {
                    *x = [
                        f64::NAN,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                        -0.0,
                        1e308,
                        5e-324,
                    ][rng.random_range(0..6)];
                }
                members[i].1 = npy_of(&b);
            }
            3 => members[i].1 = mutate_npy(&members[i].1, rng),
            4 => {
                members.remove(i);
            }
            5 => {
                let name = [
                    "extra",
                    "sd/bogus",
                    "momentum_buffer/bogus",
                    "alpha/extra",
                    "meta.json",
                    "x_test",
                    "sd/",
                ][rng.random_range(0..7)];
                members.push((format!("{name}.npy"), npy_of(a)));
            }
            6 => {
                // Drop the prefix before the first '/', or the '.npy' suffix.
                let n = &members[i].0;
                members[i].0 = match n.split_once('/') {
                    Some((_, rest)) if rng.random_bool(0.5) => rest.to_string(),
                    _ => n.trim_end_matches(".npy").to_string(),
                };
            }
            7 => {
                // A duplicate: the same array under the name with and without '.npy'.
                let n = members[i].0.trim_end_matches(".npy").to_string();
                let bytes = members[i].1.clone();
                members.push((n, bytes));
            }
            8 => {
                // A real duplicate name (member 1 renamed to member 0 in the raw bytes).
                if members.len() >= 2 {
                    let j = rng.random_range(1..members.len());
                    members.swap(1, j);
                    dup = true;
                }
            }
            _ => {
                let j = rng.random_range(0..members.len());
                members.swap(i, j);
            }
        }
    }
    if dup && members.len() >= 2 && members[0].0.len() != members[1].0.len() {
        // Same-length names are needed for the raw rename: pad member 1's name.
        let (a, b) = (members[0].0.clone(), members[1].0.clone());
        if b.len() < a.len() {
            members[1].0 = format!("{}{}", &a[..a.len() - b.len()], b);
        }
        members[1].0.truncate(a.len());
    }
    zip_of(&members, rng.random_bool(0.2), dup)
}

// ---------------------------------------------------------------------------------------
// The harness.

/// Runs `cases` cases of `parse` on inputs from `gen` (a seeded generator of bytes); each
/// must return (Ok or Err) within [`CASE_LIMIT`]. Returns (Ok count, Err count, total time,
/// slowest case).
fn fuzz(
    name: &str,
    cases: u32,
    generate: impl Fn(u64) -> Vec<u8>,
    parse: impl Fn(&[u8]) -> bool,
) -> (u64, u64) {
    let start = Instant::now();
    let (ok, err, slowest) = (
        std::cell::Cell::new(0u64),
        std::cell::Cell::new(0u64),
        std::cell::Cell::new(Duration::ZERO),
    );
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    let strategy = (
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
        0u8..4,
    );
    runner
        .run(&strategy, |(seed, raw, pick)| {
            // One case in four is arbitrary bytes, the rest structured mutations.
            let input = if pick == 0 { raw } else { generate(seed) };
            let t = Instant::now();
            let parsed = parse(&input);
            let dt = t.elapsed();
            slowest.set(slowest.get().max(dt));
            if parsed {
                ok.set(ok.get() + 1);
            } else {
                err.set(err.get() + 1);
            }
            if dt > CASE_LIMIT {
                return Err(TestCaseError::fail(format!(
                    "{name}: one case took {dt:?} (seed {seed}, {} bytes)",
                    input.len()
                )));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    println!(
        "fuzz {name}: {cases} cases in {:.1} s ({} Ok, {} Err), slowest case {:?}",
        start.elapsed().as_secs_f64(),
        ok.get(),
        err.get(),
        slowest.get()
    );
    (ok.get(), err.get())
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn run_state(cases: u32) {
    let f = fixtures();
    fuzz(
        "state npz",
        cases,
        |seed| {
            let mut r = rng(seed);
            if r.random_bool(0.4) {
                mutate_bytes(&f.state_npz, &mut r)
            } else {
                mutate_npz(&f.state, &mut r)
            }
        },
        |bytes| {
            read_npz_from(Cursor::new(bytes), "fuzz.npz")
                .and_then(|all| State::from_arrays(all, "fuzz.npz", &f.layout, f.k))
                .is_ok()
        },
    );
}

fn run_batch(cases: u32) {
    let f = fixtures();
    fuzz(
        "batch npz",
        cases,
        |seed| {
            let mut r = rng(seed);
            if r.random_bool(0.4) {
                mutate_bytes(&f.batch_npz, &mut r)
            } else {
                mutate_npz(&f.batch, &mut r)
            }
        },
        |bytes| read_batch_npz_from(Cursor::new(bytes), "fuzz.npz", 10).is_ok(),
    );
}

fn run_checkpoint(cases: u32) {
    let f = fixtures();
    let metas: [&[u8]; 6] = [
        br#"{"epoch": 1}"#,
        b"[1, 2]",
        b"{",
        b"",
        b"\xff\xfe",
        br#"{"a": 1e999999}"#,
    ];
    fuzz(
        "checkpoint",
        cases,
        |seed| {
            let mut r = rng(seed);
            match r.random_range(0..5) {
                0 | 1 => mutate_bytes(&f.checkpoint_npz, &mut r),
                2 => {
                    let mut members: Vec<(String, Vec<u8>)> = f.state[..4]
                        .iter()
                        .map(|(k, a)| (format!("{k}.npy"), npy_of(a)))
                        .collect();
                    let meta = metas[r.random_range(0..metas.len())];
                    let mut v = Vec::new();
                    ndarray::Array1::from(meta.to_vec())
                        .write_npy(&mut v)
                        .unwrap();
                    if r.random_bool(0.3) {
                        v = mutate_npy(&v, &mut r);
                    }
                    members.push(("meta.json.npy".into(), v));
                    let n = members.len();
                    members.swap(n - 1, r.random_range(0..n));
                    zip_of(&members, r.random_bool(0.2), false)
                }
                _ => mutate_npz(&f.state[..5], &mut r),
            }
        },
        |bytes| checkpoint::read_from(Cursor::new(bytes), "fuzz.npz").is_ok(),
    );
}

fn run_cifar(cases: u32) {
    let f = fixtures();
    fuzz(
        "cifar",
        cases,
        |seed| {
            let mut r = rng(seed);
            let mut v = mutate_bytes(&f.cifar, &mut r);
            if r.random_bool(0.3) {
                // Keep whole records, so the label check is reached.
                v.resize((v.len() / RECORD_BYTES).max(1) * RECORD_BYTES, 0);
                let rec = r.random_range(0..v.len() / RECORD_BYTES);
                v[rec * RECORD_BYTES] = r.random();
            }
            v
        },
        |bytes| parse_cifar_bytes(bytes, Path::new("fuzz.bin")).is_ok(),
    );
}

fn run_genotype(cases: u32) {
    let f = fixtures();
    let tokens = [
        "(",
        ")",
        "[",
        "]",
        ",",
        "'",
        "\"",
        "=",
        " ",
        "normal",
        "reduce",
        "normal_concat",
        "reduce_concat",
        "range",
        "Genotype",
        "sep_conv_3x3",
        "none",
        "0",
        "1",
        "7",
        "99999999999999999999999",
        "-1",
        "é",
        "\u{0}",
        "range(2, 6)",
        "normal=[]",
    ];
    fuzz(
        "genotype",
        cases,
        |seed| {
            let mut r = rng(seed);
            let mut s: Vec<String> = f.genotype.chars().map(String::from).collect();
            for _ in 0..r.random_range(1..=4) {
                let p = r.random_range(0..=s.len());
                match r.random_range(0..4) {
                    0 if p < s.len() => {
                        s.remove(p);
                    }
                    1 => s.insert(p, tokens[r.random_range(0..tokens.len())].to_string()),
                    2 => s.truncate(p),
                    _ if !s.is_empty() => {
                        // Repeat a slice (a field given twice, nested lists).
                        let a = r.random_range(0..s.len());
                        let b = r.random_range(a..=s.len().min(a + 120));
                        let chunk: Vec<String> = s[a..b].to_vec();
                        let at = r.random_range(0..=s.len());
                        s.splice(at..at, chunk);
                    }
                    _ => {}
                }
            }
            s.concat().into_bytes()
        },
        |bytes| String::from_utf8_lossy(bytes).parse::<Genotype>().is_ok(),
    );
}

/// The mutations reach the parsers' insides: a valid file parses, and mutated ones are
/// mostly errors (an all-Err or all-Ok run would mean the generator is broken).
#[test]
fn fixtures_parse_and_mutations_mostly_fail() {
    let f = fixtures();
    let all = read_npz_from(Cursor::new(&f.state_npz), "state.npz").unwrap();
    State::from_arrays(all, "state.npz", &f.layout, f.k).unwrap();
    read_batch_npz_from(Cursor::new(&f.batch_npz), "batch.npz", 10).unwrap();
    checkpoint::read_from(Cursor::new(&f.checkpoint_npz), "checkpoint.npz").unwrap();
    parse_cifar_bytes(&f.cifar, Path::new("c.bin")).unwrap();
    f.genotype.parse::<Genotype>().unwrap();
    // An unmutated rebuild through the fuzzer's own zip writer parses too.
    let members: Vec<(String, Vec<u8>)> = f
        .state
        .iter()
        .map(|(k, a)| (format!("{k}.npy"), npy_of(a)))
        .collect();
    for deflate in [false, true] {
        let z = zip_of(&members, deflate, false);
        let all = read_npz_from(Cursor::new(&z), "z.npz").unwrap();
        State::from_arrays(all, "z.npz", &f.layout, f.k).unwrap();
    }
    // A real duplicate name is an error naming it.
    let z = zip_of(
        &[
            ("alpha/normal.npy".into(), npy_of(&f.state[0].1)),
            ("alpha/reduce.npy".into(), npy_of(&f.state[0].1)),
        ],
        false,
        true,
    );
    let e = read_npz_from(Cursor::new(&z), "dup.npz")
        .unwrap_err()
        .to_string();
    assert!(e.contains("alpha/normal") && e.contains("dup.npz"), "{e}");
}

#[test]
fn fuzz_state_npz() {
    run_state(CASES);
}

#[test]
fn fuzz_batch_npz() {
    run_batch(CASES);
}

#[test]
fn fuzz_checkpoint() {
    run_checkpoint(CASES);
}

#[test]
fn fuzz_cifar() {
    run_cifar(CASES);
}

#[test]
fn fuzz_genotype() {
    run_genotype(CASES);
}

/// `DARTS_FUZZ_CASES` cases per parser (default 1,000,000); run it in release mode:
/// `DARTS_FUZZ_CASES=1000000 cargo test --release --test fuzz_parsers -- --ignored`.
#[test]
#[ignore]
fn fuzz_parsers_long() {
    let cases: u32 = std::env::var("DARTS_FUZZ_CASES")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("DARTS_FUZZ_CASES={v:?} is not a case count"))
        })
        .unwrap_or(1_000_000);
    run_state(cases);
    run_batch(cases);
    run_checkpoint(cases);
    run_cifar(cases);
    run_genotype(cases);
}
