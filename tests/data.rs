//! The data layer against the reference (cnn/utils.py, cnn/train_search.py): the CIFAR-10
//! binary reader and its errors, the embedded real subset, normalisation, crop / flip /
//! cutout, the search split, the samplers and exact RNG restore.

use std::path::{Path, PathBuf};

use darts::data::{
    cutout_box, embedded_subset, fresh_batch, make_batch, normalise, parse_cifar_bytes,
    permutation, read_cifar_bin, read_cifar_dir, search_split, test_transform, Augment, DataError,
    Draws, EpochSampler, Images, RngState, SamplerState, CIFAR10_MEAN, CIFAR10_STD, IMAGE_BYTES,
    RECORD_BYTES,
};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A fresh, empty temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("darts-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `n` records with the given labels and pixel bytes (record r, byte k) = (r + k) mod 256.
fn records(labels: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for (r, &l) in labels.iter().enumerate() {
        v.push(l);
        v.extend((0..IMAGE_BYTES).map(|k| ((r + k) % 256) as u8));
    }
    v
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------- reader and subset

#[test]
fn embedded_subset_label_heads_and_histograms() {
    let (train, test) = embedded_subset();
    assert_eq!((train.n, test.n), (4000, 1000));
    train.validate().unwrap();
    test.validate().unwrap();
    // Heads and histograms as listed in data/cifar10-subset/README.md.
    assert_eq!(train.labels[..10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(test.labels[..10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    assert_eq!(
        train.histogram(10),
        [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    );
    assert_eq!(
        test.histogram(10),
        [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    );
}

#[test]
fn reader_round_trips_the_subset_file_and_concatenates_batches_in_order() {
    let (train, _) = embedded_subset();
    let d = temp_dir("roundtrip");
    // Write the first 3 embedded records back in the official layout and read them.
    let mut bytes = Vec::new();
    for i in 0..3 {
        bytes.push(train.labels[i]);
        bytes.extend_from_slice(train.image(i).unwrap());
    }
    let p = d.join("three.bin");
    write(&p, &bytes);
    let back = read_cifar_bin(&p).unwrap();
    assert_eq!(back.n, 3);
    assert_eq!(back.labels, train.labels[..3]);
    assert_eq!(back.pixels, train.pixels[..3 * IMAGE_BYTES]);

    // A cifar-10-batches-bin folder: batch b holds labels [b, b] (b = 1..5), test [9].
    let dir = d.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for b in 1..=5u8 {
        write(&dir.join(format!("data_batch_{b}.bin")), &records(&[b, b]));
    }
    write(&dir.join("test_batch.bin"), &records(&[9]));
    let (tr, te) = read_cifar_dir(&dir).unwrap();
    assert_eq!(tr.labels, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    assert_eq!(tr.n, 10);
    tr.validate().unwrap();
    assert_eq!(te.labels, [9]);
    // Pixel bytes of the second record of data_batch_3 (record r = 1 of its file).
    assert_eq!(tr.image(5).unwrap()[..3], [1, 2, 3]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn truncated_file_names_file_and_incomplete_record() {
    let d = temp_dir("truncated");
    let p = d.join("short.bin");
    let mut bytes = records(&[1, 2, 3]);
    bytes.truncate(2 * RECORD_BYTES + 100);
    write(&p, &bytes);
    let e = read_cifar_bin(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                record: 2,
                bytes: 100,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("short.bin") && msg.contains("record 2"),
        "{msg}"
    );
    assert!(msg.contains("100 of 3073 bytes"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn wrong_record_size_is_reported_as_the_incomplete_record() {
    // Ten 3072-byte records (label byte missing): 30720 = 9 * 3073 + 3063.
    let d = temp_dir("recsize");
    let p = d.join("nolabel.bin");
    write(&p, &vec![0u8; 10 * 3072]);
    let e = read_cifar_bin(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                record: 9,
                bytes: 3063,
                file_bytes: 30720,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("nolabel.bin") && msg.contains("record 9"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn label_out_of_range_names_record_and_value() {
    let d = temp_dir("label");
    let p = d.join("badlabel.bin");
    write(&p, &records(&[0, 9, 10, 3]));
    let e = read_cifar_bin(&p).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                record: 2,
                label: 10,
                offset: 6146,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("badlabel.bin") && msg.contains("record 2") && msg.contains("label 10"),
        "{msg}"
    );
    // Label 255 in record 0.
    let e = parse_cifar_bytes(&records(&[255]), Path::new("x.bin")).unwrap_err();
    assert!(e.to_string().contains("record 0") && e.to_string().contains("label 255"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn empty_and_unreadable_files_are_errors_naming_the_file() {
    let d = temp_dir("empty");
    let p = d.join("empty.bin");
    write(&p, &[]);
    let e = read_cifar_bin(&p).unwrap_err();
    assert!(matches!(e, DataError::Empty { .. }), "{e:?}");
    assert!(e.to_string().contains("empty.bin"));
    let missing = d.join("nothere.bin");
    let e = read_cifar_bin(&missing).unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nothere.bin"));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn missing_folder_and_missing_batch_file_name_the_path() {
    let d = temp_dir("dir");
    let e = read_cifar_dir(&d.join("no-such-folder")).unwrap_err();
    assert!(matches!(e, DataError::MissingDir { .. }), "{e:?}");
    assert!(e.to_string().contains("no-such-folder"));

    for b in [1, 2, 4, 5] {
        write(&d.join(format!("data_batch_{b}.bin")), &records(&[0]));
    }
    write(&d.join("test_batch.bin"), &records(&[0]));
    let e = read_cifar_dir(&d).unwrap_err();
    assert!(matches!(e, DataError::MissingBatch { .. }), "{e:?}");
    assert!(e.to_string().contains("data_batch_3.bin"), "{e}");

    write(&d.join("data_batch_3.bin"), &records(&[0]));
    std::fs::remove_file(d.join("test_batch.bin")).unwrap();
    let e = read_cifar_dir(&d).unwrap_err();
    assert!(e.to_string().contains("test_batch.bin"), "{e}");

    // A bad batch inside the folder is reported with its own file name.
    write(&d.join("test_batch.bin"), &records(&[0]));
    write(&d.join("data_batch_4.bin"), &records(&[11]));
    let e = read_cifar_dir(&d).unwrap_err();
    assert!(
        e.to_string().contains("data_batch_4.bin") && e.to_string().contains("record 0"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

// ---------------------------------------------------------------- normalisation

/// Error bound of `normalise` against exact arithmetic on the decimal constants: p/255,
/// mean and std each carry one rounding (relative u), and the subtraction and division one
/// each, so |err| <= gamma_5 * ((p/255 + mean) / std + |result|), gamma_5 = 5u/(1-5u).
fn normalise_tolerance(p: u8, c: usize, result: f64) -> f64 {
    let u = f64::EPSILON / 2.0;
    let gamma5 = 5.0 * u / (1.0 - 5.0 * u);
    gamma5 * ((p as f64 / 255.0 + CIFAR10_MEAN[c]) / CIFAR10_STD[c] + result.abs())
}

#[test]
fn normalisation_of_known_pixels() {
    // Expected values: exact rational arithmetic on the reference's decimal constants
    // (Python fractions), rounded once to f64.
    let cases: [(u8, usize, f64); 5] = [
        (59, 0, -1.052603644957695),
        (62, 1, -0.9816660821600308),
        (63, 2, -0.7625451491851154),
        (255, 0, 2.0588411241556925),
        (0, 2, -1.7070040913241786),
    ];
    for (p, c, want) in cases {
        let got = normalise(p, c);
        assert!(
            (got - want).abs() <= normalise_tolerance(p, c, want),
            "p {p} c {c}: {got} vs {want}"
        );
    }
    // The first training image's pixel (0, 0) is (59, 62, 63); the test transform of the
    // embedded subset gives the values above.
    let (train, _) = embedded_subset();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let b = make_batch(&train, &[0, 1], None, &mut rng, 10).unwrap();
    assert_eq!(b.x.shape(), [2, 3, 32, 32]);
    for (c, (p, want)) in [(59u8, cases[0].2), (62, cases[1].2), (63, cases[2].2)]
        .into_iter()
        .enumerate()
    {
        let got = b.x[[0, c, 0, 0]];
        assert!((got - want).abs() <= normalise_tolerance(p, c, want));
    }
    // The test transform draws nothing and is normalise everywhere; one-hot rows.
    assert_eq!(rng.get_word_pos(), 0);
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                let p = train.image(1).unwrap()[c * 1024 + y * 32 + x];
                assert_eq!(b.x[[1, c, y, x]], normalise(p, c));
            }
        }
    }
    assert_eq!(b.onehot.shape(), [2, 10]);
    for (i, &l) in [6usize, 9].iter().enumerate() {
        for k in 0..10 {
            assert_eq!(b.onehot[[i, k]], if k == l { 1.0 } else { 0.0 });
        }
    }
}

// ---------------------------------------------------------------- augmentation

fn first_image() -> [u8; IMAGE_BYTES] {
    let (train, _) = embedded_subset();
    train.image(0).unwrap().try_into().unwrap()
}

fn transformed(a: &Augment, d: &Draws, img: &[u8; IMAGE_BYTES]) -> Vec<f64> {
    let mut out = [0.0; IMAGE_BYTES];
    a.apply(img, d, &mut out);
    out.to_vec()
}

fn plain(img: &[u8; IMAGE_BYTES]) -> Vec<f64> {
    let mut out = [0.0; IMAGE_BYTES];
    test_transform(img, &mut out);
    out.to_vec()
}

const NO_FLIP: Draws = Draws {
    top: 4,
    left: 4,
    flip: false,
    cutout_centre: None,
};

#[test]
fn crop_zero_padding_border_is_minus_mean_over_std() {
    let img = first_image();
    let a = Augment::reference_train();
    let base = plain(&img);
    // Centre crop (offset = padding): the identity.
    assert_eq!(transformed(&a, &NO_FLIP, &img), base);
    // Every offset pair: pixel (c, y, x) is the original at (y + top - 4, x + left - 4),
    // or exactly -mean_c/std_c where that falls in the zero padding.
    for top in 0..=8 {
        for left in 0..=8 {
            let d = Draws {
                top,
                left,
                ..NO_FLIP
            };
            let out = transformed(&a, &d, &img);
            let mut border = 0;
            for c in 0..3 {
                let pad = -CIFAR10_MEAN[c] / CIFAR10_STD[c];
                for y in 0..32 {
                    for x in 0..32 {
                        let (sy, sx) = (y as i64 + top as i64 - 4, x as i64 + left as i64 - 4);
                        let v = out[c * 1024 + y * 32 + x];
                        if (0..32).contains(&sy) && (0..32).contains(&sx) {
                            assert_eq!(v, base[c * 1024 + sy as usize * 32 + sx as usize]);
                        } else {
                            assert_eq!(v, pad, "top {top} left {left} c {c} y {y} x {x}");
                            border += 1;
                        }
                    }
                }
            }
            let (dy, dx) = ((top as i64 - 4).abs(), (left as i64 - 4).abs());
            assert_eq!(border, 3 * (1024 - (32 - dy) * (32 - dx)));
        }
    }
}

#[test]
fn flip_is_an_exact_mirror() {
    let img = first_image();
    let a = Augment::reference_train();
    for (top, left) in [(4, 4), (0, 8), (7, 1)] {
        let d = Draws {
            top,
            left,
            ..NO_FLIP
        };
        let un = transformed(&a, &d, &img);
        let fl = transformed(&a, &Draws { flip: true, ..d }, &img);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    assert_eq!(fl[c * 1024 + y * 32 + x], un[c * 1024 + y * 32 + 31 - x]);
                }
            }
        }
        assert_ne!(fl, un);
    }
}

#[test]
fn cutout_zeroes_a_square_clipped_at_the_borders() {
    let img = first_image();
    for len in [16usize, 5, 1] {
        let a = Augment {
            cutout: Some(len),
            ..Augment::reference_train()
        };
        let half = len / 2;
        let base = transformed(&a, &NO_FLIP, &img);
        for cy in 0..32 {
            for cx in 0..32 {
                let d = Draws {
                    cutout_centre: Some((cy, cx)),
                    ..NO_FLIP
                };
                let out = transformed(&a, &d, &img);
                let (rows, cols) = cutout_box(len, cy, cx);
                // The box: clip(c - L/2, 0, 32) .. clip(c + L/2, 0, 32), at most L/2*2.
                assert_eq!(rows, cy.saturating_sub(half)..(cy + half).min(32));
                assert_eq!(cols, cx.saturating_sub(half)..(cx + half).min(32));
                assert!(rows.len() <= 2 * half && cols.len() <= 2 * half);
                let full = (half..=32 - half).contains(&cy) && (half..=32 - half).contains(&cx);
                assert_eq!(rows.len() * cols.len() == 4 * half * half, full);
                for c in 0..3 {
                    for y in 0..32 {
                        for x in 0..32 {
                            let i = c * 1024 + y * 32 + x;
                            if rows.contains(&y) && cols.contains(&x) {
                                assert_eq!(out[i], 0.0);
                            } else {
                                assert_eq!(out[i], base[i]);
                            }
                        }
                    }
                }
            }
        }
    }
    // Largest box is 16x16 for the reference length.
    assert_eq!(cutout_box(16, 16, 16), (8..24, 8..24));
    assert_eq!(cutout_box(16, 0, 31), (0..8, 23..32));
}

/// Independent re-implementation of the documented draw order and of the transform.
fn naive_train(img: &[u8; IMAGE_BYTES], rng: &mut ChaCha8Rng, cutout: Option<usize>) -> Vec<f64> {
    let top = rng.random_range(0..=8u32) as i64;
    let left = rng.random_range(0..=8u32) as i64;
    let flip = rng.random::<f64>() < 0.5;
    let centre = cutout.map(|_| {
        let y = rng.random_range(0..32u32) as i64;
        let x = rng.random_range(0..32u32) as i64;
        (y, x)
    });
    // Pad the uint8 image with zeros (40x40), crop, flip, then normalise, then cutout.
    let mut out = vec![0.0; IMAGE_BYTES];
    for c in 0..3 {
        let mut padded = vec![0u8; 40 * 40];
        for y in 0..32 {
            for x in 0..32 {
                padded[(y + 4) * 40 + x + 4] = img[c * 1024 + y * 32 + x];
            }
        }
        let mut crop = [[0u8; 32]; 32];
        for y in 0..32 {
            for x in 0..32 {
                crop[y][x] = padded[(y + top as usize) * 40 + x + left as usize];
            }
        }
        if flip {
            for row in crop.iter_mut() {
                row.reverse();
            }
        }
        for y in 0..32 {
            for x in 0..32 {
                out[c * 1024 + y * 32 + x] =
                    (crop[y][x] as f64 / 255.0 - CIFAR10_MEAN[c]) / CIFAR10_STD[c];
            }
        }
    }
    if let (Some(l), Some((cy, cx))) = (cutout, centre) {
        let h = (l / 2) as i64;
        for c in 0..3 {
            for y in (cy - h).clamp(0, 32)..(cy + h).clamp(0, 32) {
                for x in (cx - h).clamp(0, 32)..(cx + h).clamp(0, 32) {
                    out[c * 1024 + y as usize * 32 + x as usize] = 0.0;
                }
            }
        }
    }
    out
}

#[test]
fn make_batch_follows_the_documented_draw_order() {
    let (train, _) = embedded_subset();
    let idx = [17usize, 3, 3999, 0, 17, 250];
    for a in [
        Augment::reference_train(),
        Augment::reference_train_cutout(),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut rng2 = rng.clone();
        let b = make_batch(&train, &idx, Some(&a), &mut rng, 10).unwrap();
        for (k, &i) in idx.iter().enumerate() {
            let img: [u8; IMAGE_BYTES] = train.image(i).unwrap().try_into().unwrap();
            let want = naive_train(&img, &mut rng2, a.cutout);
            let got: Vec<f64> =
                b.x.index_axis(ndarray::Axis(0), k)
                    .iter()
                    .copied()
                    .collect();
            assert_eq!(got, want, "image {i} (batch position {k})");
        }
        // Both consumed exactly the same stream.
        assert_eq!(rng.get_word_pos(), rng2.get_word_pos());
        assert_eq!(rng.next_u64(), rng2.next_u64());
    }
}

#[test]
fn draws_cover_their_ranges_and_flip_half_the_time() {
    let a = Augment::reference_train_cutout();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut tops, mut lefts, mut ys, mut xs) = ([0; 9], [0; 9], [0; 32], [0; 32]);
    let mut flips = 0;
    let n = 4000;
    for _ in 0..n {
        let d = a.draw(&mut rng);
        tops[d.top] += 1;
        lefts[d.left] += 1;
        let (y, x) = d.cutout_centre.unwrap();
        ys[y] += 1;
        xs[x] += 1;
        flips += d.flip as usize;
    }
    assert!(tops
        .iter()
        .chain(&lefts)
        .chain(&ys)
        .chain(&xs)
        .all(|&c| c > 0));
    // Binomial(4000, 1/2): mean 2000, sd 31.6; +-250 is 7.9 sd (probability < 1e-14).
    assert!((1750..=2250).contains(&flips), "{flips}");
    // Crop padding 0 and no flip and no cutout: nothing is drawn (as torchvision).
    let none = Augment {
        crop_padding: 0,
        flip: false,
        cutout: None,
    };
    let before = rng.get_word_pos();
    assert_eq!(
        none.draw(&mut rng),
        Draws {
            top: 0,
            left: 0,
            flip: false,
            cutout_centre: None
        }
    );
    assert_eq!(rng.get_word_pos(), before);
}

#[test]
fn make_batch_errors_consume_no_random_numbers() {
    let (train, _) = embedded_subset();
    let a = Augment::reference_train();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let e = make_batch(&train, &[0, 4000], Some(&a), &mut rng, 10).unwrap_err();
    assert!(matches!(
        e,
        DataError::IndexOutOfRange {
            index: 4000,
            position: 1,
            n: 4000
        }
    ));
    // Image 0 has label 6: out of range for 5 classes.
    let e = make_batch(&train, &[0], Some(&a), &mut rng, 5).unwrap_err();
    assert!(matches!(
        e,
        DataError::ClassOutOfRange {
            index: 0,
            label: 6,
            classes: 5
        }
    ));
    assert!(matches!(
        make_batch(&train, &[], Some(&a), &mut rng, 10),
        Err(DataError::EmptyBatch)
    ));
    let bad = Images {
        n: 2,
        pixels: vec![0; IMAGE_BYTES],
        labels: vec![0, 0],
    };
    let e = make_batch(&bad, &[0], None, &mut rng, 10).unwrap_err();
    assert!(matches!(e, DataError::Inconsistent { n: 2, .. }), "{e:?}");
    assert_eq!(rng.get_word_pos(), 0);
}

// ---------------------------------------------------------------- split and samplers

#[test]
fn search_split_sizes() {
    for (n, portion, split) in [
        (50000, 0.5, 25000),
        (4000, 0.5, 2000),
        (5, 0.5, 2),
        (10, 0.0, 0),
        (10, 1.0, 10),
        (10, 1.5, 10),
        (10, -0.5, 0),
        (10, f64::NAN, 0),
        (7, 0.3, 2),
    ] {
        let (t, v) = search_split(n, portion);
        assert_eq!(t, (0..split).collect::<Vec<_>>(), "n {n} portion {portion}");
        assert_eq!(v, (split..n).collect::<Vec<_>>(), "n {n} portion {portion}");
    }
}

fn run_epochs(seed: u64, epochs: usize, subset: &[usize], bs: usize) -> Vec<Vec<Vec<usize>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut s = EpochSampler::new(subset.to_vec(), bs).unwrap();
    (0..epochs)
        .map(|_| {
            s.start_epoch(&mut rng);
            std::iter::from_fn(|| s.next_batch()).collect()
        })
        .collect()
}

#[test]
fn sampler_covers_each_index_once_per_epoch() {
    let (_, valid) = search_split(1003 * 2, 0.5);
    let run = run_epochs(2, 3, &valid, 64);
    for epoch in &run {
        // ceil(1003 / 64) = 16 batches: 15 full, the last 1003 - 960 = 43 (drop_last=False).
        assert_eq!(epoch.len(), 16);
        assert!(epoch[..15].iter().all(|b| b.len() == 64));
        assert_eq!(epoch[15].len(), 43);
        let mut all: Vec<usize> = epoch.concat();
        all.sort_unstable();
        assert_eq!(all, valid);
    }
    assert_ne!(run[0], run[1]);
    assert_ne!(run[1], run[2]);
    let s = EpochSampler::new(valid.clone(), 64).unwrap();
    assert_eq!(s.batches_per_epoch(), 16);
    // An exact multiple has no partial batch.
    assert_eq!(
        EpochSampler::new(vec![0; 128], 64)
            .unwrap()
            .batches_per_epoch(),
        2
    );
}

#[test]
fn sampler_is_bit_identical_for_the_same_seed() {
    let subset: Vec<usize> = (100..400).collect();
    assert_eq!(run_epochs(5, 4, &subset, 32), run_epochs(5, 4, &subset, 32));
    assert_ne!(run_epochs(5, 1, &subset, 32), run_epochs(6, 1, &subset, 32));
}

#[test]
fn sampler_resumes_mid_epoch_identically() {
    let (train, _) = embedded_subset();
    let (tr, va) = search_split(train.n, 0.5);
    let a = Augment::reference_train();
    // One "search step": a train batch from the sampler, a fresh valid batch, augmenting
    // both (the draws interleave on one generator, as a search loop would).
    let step = |s: &mut EpochSampler, rng: &mut ChaCha8Rng| -> Option<Vec<f64>> {
        let ti = s.next_batch()?;
        let vi = fresh_batch(&va, 8, rng);
        let bt = make_batch(&train, &ti, Some(&a), rng, 10).unwrap();
        let bv = make_batch(&train, &vi, Some(&a), rng, 10).unwrap();
        Some(
            bt.x.iter()
                .chain(bv.x.iter())
                .copied()
                .step_by(97)
                .collect(),
        )
    };
    let run = |stop_at: Option<usize>| -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut s = EpochSampler::new(tr.clone(), 300).unwrap();
        let mut out = Vec::new();
        let mut steps = 0;
        for _ in 0..2 {
            s.start_epoch(&mut rng);
            loop {
                if Some(steps) == stop_at {
                    // Checkpoint through JSON, then continue from the restored copies.
                    let js = serde_json::to_string(&(RngState::capture(&rng), s.state())).unwrap();
                    let (r, st): (RngState, SamplerState) = serde_json::from_str(&js).unwrap();
                    rng = r.restore();
                    s = EpochSampler::from_state(tr.clone(), 300, st).unwrap();
                }
                steps += 1;
                match step(&mut s, &mut rng) {
                    Some(v) => out.push(v),
                    None => break,
                }
            }
        }
        out
    };
    let straight = run(None);
    assert_eq!(straight.len(), 2 * 7); // ceil(2000 / 300) = 7 per epoch
    for stop in [3, 7, 8, 11] {
        assert_eq!(run(Some(stop)), straight, "resumed at step {stop}");
    }
}

#[test]
fn sampler_rejects_bad_states_and_arguments() {
    assert!(matches!(
        EpochSampler::new(vec![1, 2], 0),
        Err(DataError::ZeroBatchSize)
    ));
    assert!(matches!(
        EpochSampler::new(vec![], 4),
        Err(DataError::EmptySubset)
    ));
    let st = |order: Vec<usize>, pos| SamplerState {
        epoch: 1,
        order,
        pos,
    };
    for bad in [
        st(vec![0, 1, 2], 4),
        st(vec![0, 1, 1], 0),
        st(vec![0, 1], 0),
        st(vec![], 1),
    ] {
        let e = EpochSampler::from_state(vec![0, 1, 2], 2, bad).unwrap_err();
        assert!(matches!(e, DataError::BadSamplerState { .. }), "{e:?}");
    }
    let mut s = EpochSampler::from_state(vec![0, 1, 2], 2, st(vec![2, 0, 1], 2)).unwrap();
    assert_eq!(s.next_batch(), Some(vec![1]));
    assert_eq!(s.next_batch(), None);
    // No epoch started: nothing to yield.
    assert_eq!(EpochSampler::new(vec![0], 1).unwrap().next_batch(), None);
}

#[test]
fn fresh_batch_is_the_prefix_of_a_new_permutation() {
    let subset: Vec<usize> = (2000..4000).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let mut r2 = rng.clone();
        let b = fresh_batch(&subset, 64, &mut rng);
        let p = permutation(&subset, &mut r2);
        assert_eq!(b, p[..64]);
        assert_eq!(b.len(), 64);
        let mut u = b.clone();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 64); // without replacement within a batch
        assert!(b.iter().all(|i| subset.contains(i)));
        seen.push(b);
    }
    // With replacement across steps: each step is a new draw.
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
    // A subset smaller than the batch: the whole subset, permuted.
    let mut small = fresh_batch(&[5, 6, 7], 64, &mut rng);
    small.sort_unstable();
    assert_eq!(small, [5, 6, 7]);
}

#[test]
fn permutation_golden_values_for_rand_0_9() {
    // Pins the stream (rand 0.9 random_range on ChaCha8Rng, seed 2): if a dependency
    // upgrade changes the sampling algorithm, runs are no longer reproducible across
    // versions, and this test says so.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let p = permutation(&(0..10).collect::<Vec<_>>(), &mut rng);
    let d = Augment::reference_train_cutout().draw(&mut rng);
    let golden = (p, (d.top, d.left, d.flip, d.cutout_centre));
    assert_eq!(format!("{golden:?}"), GOLDEN);
}
const GOLDEN: &str = "([1, 8, 6, 2, 4, 0, 3, 9, 5, 7], (1, 7, true, Some((29, 10))))";

#[test]
fn rng_state_round_trip() {
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    rng.set_stream(3);
    // Stop at an odd word inside a 16-word block, then mix u32, u64 and ranges.
    for _ in 0..37 {
        rng.next_u32();
    }
    let st = RngState::capture(&rng);
    let js = serde_json::to_string(&st).unwrap();
    assert!(js.contains("\"word_pos\":\"37\""), "{js}");
    let back: RngState = serde_json::from_str(&js).unwrap();
    assert_eq!(back, st);
    let mut r2 = back.restore();
    for k in 0..1000 {
        match k % 3 {
            0 => assert_eq!(rng.next_u32(), r2.next_u32()),
            1 => assert_eq!(rng.next_u64(), r2.next_u64()),
            _ => assert_eq!(rng.random_range(0..1000u32), r2.random_range(0..1000u32)),
        }
    }
    // A word position beyond 2^64 (valid up to 2^68: a u64 block counter of 16-word
    // blocks) survives the string encoding.
    let big = RngState {
        word_pos: (1u128 << 66) + 5,
        ..st.clone()
    };
    let again: RngState = serde_json::from_str(&serde_json::to_string(&big).unwrap()).unwrap();
    assert_eq!(again.word_pos, (1u128 << 66) + 5);
    assert_eq!(again.restore().get_word_pos(), (1u128 << 66) + 5);
    // A malformed word_pos is an error, not a panic.
    let bad = js.replace("\"37\"", "\"x37\"");
    assert!(serde_json::from_str::<RngState>(&bad).is_err());
}
