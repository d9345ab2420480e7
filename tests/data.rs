//! Data sets, augmentation and loaders, on small files written in the real formats.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use darts::data::{
    Batch, BatchLoader, CifarDataset, DatasetKind, IdxDataset, ImageDataset, LoaderState, Split,
    Transform, open, split_indices,
};
use darts::{Error, Rng};
use flate2::Compression;
use flate2::write::GzEncoder;

// ---------------------------------------------------------------------------------------------
// helpers

/// A fresh, empty folder for one test, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A fresh, empty folder for the test `name`.
fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("darts-data-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// The path an I/O or format error names.
fn error_path(e: &Error) -> &str {
    match e {
        Error::Io { path, .. } | Error::Format { path, .. } => path,
        other => panic!("expected a file error, got {other:?}"),
    }
}

/// Asserts that `result` failed naming a path ending in `file`, with a message containing `text`.
fn assert_file_error<T>(result: darts::Result<T>, file: &str, text: &str) {
    let e = match result {
        Ok(_) => panic!("expected an error naming {file}"),
        Err(e) => e,
    };
    assert!(
        error_path(&e).ends_with(file),
        "error should name {file}: {e}"
    );
    assert!(
        e.to_string().contains(text),
        "error should say '{text}': {e}"
    );
}

/// Pixel bytes of image `r` of CIFAR file `f`: distinct per file, record and byte.
fn cifar_pixels(f: usize, r: usize) -> Vec<u8> {
    (0..3072)
        .map(|k| ((f * 71 + r * 13 + k * 7) % 256) as u8)
        .collect()
}

/// Label of image `r` of CIFAR file `f`.
fn cifar_label(f: usize, r: usize) -> u8 {
    ((f * 3 + r) % 10) as u8
}

/// The bytes of a CIFAR binary file holding `records` images of file number `f`.
fn cifar_file(f: usize, records: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for r in 0..records {
        bytes.push(cifar_label(f, r));
        bytes.extend(cifar_pixels(f, r));
    }
    bytes
}

/// Writes the five training batches and the test batch, 3 records each (2 for the test batch).
fn write_cifar(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in 0..5 {
        fs::write(
            dir.join(format!("data_batch_{}.bin", f + 1)),
            cifar_file(f, 3),
        )
        .unwrap();
    }
    fs::write(dir.join("test_batch.bin"), cifar_file(5, 2)).unwrap();
}

/// Checks `data` against what [`write_cifar`] wrote for `split`.
fn check_cifar(data: &dyn ImageDataset, split: Split) {
    let (files, records) = match split {
        Split::Train => (0..5, 3),
        Split::Test => (5..6, 2),
    };
    assert_eq!(data.len(), files.len() * records);
    assert_eq!(
        (data.channels(), data.height(), data.width(), data.classes()),
        (3, 32, 32, 10)
    );
    let mut i = 0;
    for f in files {
        for r in 0..records {
            assert_eq!(data.label(i), cifar_label(f, r) as usize, "label {i}");
            assert_eq!(data.pixels(i), &cifar_pixels(f, r)[..], "pixels {i}");
            i += 1;
        }
    }
}

/// Gzips `bytes`.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// An IDX file: big-endian `magic`, the dimensions, then `body`.
fn idx_file(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(body);
    bytes
}

/// Pixels of IDX image `i` of size `h x w`.
fn idx_pixels(i: usize, h: usize, w: usize) -> Vec<u8> {
    (0..h * w).map(|k| ((i * 37 + k * 3) % 256) as u8).collect()
}

/// Writes an IDX image file and label file with `n` images of `h x w` under the given names.
fn write_idx(dir: &Path, images: &str, labels: &str, n: usize, h: usize, w: usize, gz: bool) {
    let body: Vec<u8> = (0..n).flat_map(|i| idx_pixels(i, h, w)).collect();
    let image_bytes = idx_file(0x803, &[n as u32, h as u32, w as u32], &body);
    let labels_body: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let label_bytes = idx_file(0x801, &[n as u32], &labels_body);
    let encode = |b: Vec<u8>| if gz { gzip(&b) } else { b };
    fs::write(dir.join(images), encode(image_bytes)).unwrap();
    fs::write(dir.join(labels), encode(label_bytes)).unwrap();
}

/// Checks `data` against what [`write_idx`] wrote.
fn check_idx(data: &dyn ImageDataset, n: usize, h: usize, w: usize) {
    assert_eq!(data.len(), n);
    assert_eq!(
        (data.channels(), data.height(), data.width(), data.classes()),
        (1, h, w, 10)
    );
    for i in 0..n {
        assert_eq!(data.label(i), i % 10);
        assert_eq!(data.pixels(i), &idx_pixels(i, h, w)[..]);
    }
}

/// A small in-memory data set whose pixels and labels are functions of the index.
struct Synthetic {
    n: usize,
    dims: [usize; 3],
    pixels: Vec<u8>,
}

impl Synthetic {
    fn new(n: usize, dims: [usize; 3]) -> Synthetic {
        let numel: usize = dims.iter().product();
        let pixels = (0..n * numel)
            .map(|k| ((k * 29 + k / numel * 101) % 256) as u8)
            .collect();
        Synthetic { n, dims, pixels }
    }

    /// `n` all-white images.
    fn white(n: usize, dims: [usize; 3]) -> Synthetic {
        let numel: usize = dims.iter().product();
        Synthetic {
            n,
            dims,
            pixels: vec![255; n * numel],
        }
    }
}

impl ImageDataset for Synthetic {
    fn len(&self) -> usize {
        self.n
    }
    fn channels(&self) -> usize {
        self.dims[0]
    }
    fn height(&self) -> usize {
        self.dims[1]
    }
    fn width(&self) -> usize {
        self.dims[2]
    }
    fn classes(&self) -> usize {
        10
    }
    fn label(&self, i: usize) -> usize {
        (i * 7) % 10
    }
    fn pixels(&self, i: usize) -> &[u8] {
        let numel: usize = self.dims.iter().product();
        &self.pixels[i * numel..(i + 1) * numel]
    }
}

/// Asserts that two batches are identical, bit for bit.
fn assert_same_batch(a: &Batch, b: &Batch, what: &str) {
    assert_eq!(a.indices, b.indices, "{what}: indices");
    assert_eq!(a.labels, b.labels, "{what}: labels");
    assert_eq!(a.images.shape(), b.images.shape(), "{what}: shape");
    let same = a
        .images
        .data()
        .iter()
        .zip(b.images.data())
        .all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "{what}: images differ");
}

/// A training-style loader over `indices` of a synthetic 3x9x11 set.
fn train_loader(data: &Arc<dyn ImageDataset>, indices: Vec<usize>, seed: u64) -> BatchLoader {
    let transform = Transform::train(DatasetKind::Cifar10).with_cutout(4);
    BatchLoader::new(Arc::clone(data), indices, 4, transform, seed).unwrap()
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10

#[test]
fn cifar_round_trip() {
    let dir = temp_dir("cifar_round_trip");
    write_cifar(&dir);
    check_cifar(
        &CifarDataset::open(&dir, Split::Train).unwrap(),
        Split::Train,
    );
    check_cifar(
        &*open(DatasetKind::Cifar10, &dir, Split::Test).unwrap(),
        Split::Test,
    );

    // The same files inside the archive's folder name.
    let parent = temp_dir("cifar_round_trip_nested");
    write_cifar(&parent.join("cifar-10-batches-bin"));
    check_cifar(
        &*open(DatasetKind::Cifar10, &parent, Split::Train).unwrap(),
        Split::Train,
    );
}

#[test]
fn cifar_archive_is_unpacked_once() {
    let staging = temp_dir("cifar_archive_staging");
    write_cifar(&staging);
    let dir = temp_dir("cifar_archive");
    let archive = dir.join("cifar-10-binary.tar.gz");
    let mut tar = tar::Builder::new(GzEncoder::new(
        fs::File::create(&archive).unwrap(),
        Compression::fast(),
    ));
    tar.append_dir_all("cifar-10-batches-bin", &staging)
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();

    check_cifar(
        &CifarDataset::open(&dir, Split::Train).unwrap(),
        Split::Train,
    );
    let mut entries: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"],
        "the archive unpacks into its folder and leaves no temporary folder"
    );

    // A second open uses the unpacked folder: a now-broken archive is not read again.
    fs::write(&archive, b"not an archive").unwrap();
    check_cifar(&CifarDataset::open(&dir, Split::Test).unwrap(), Split::Test);

    // A broken archive with nothing unpacked is an error naming it, and leaves nothing behind.
    let broken = temp_dir("cifar_archive_broken");
    fs::write(broken.join("cifar-10-binary.tar.gz"), b"not an archive").unwrap();
    assert_file_error(
        CifarDataset::open(&broken, Split::Train),
        "cifar-10-binary.tar.gz",
        "unpack",
    );
    assert_eq!(fs::read_dir(&broken).unwrap().count(), 1);
}

#[test]
fn cifar_bad_files_are_errors_naming_the_file() {
    // Nothing there at all.
    let empty = temp_dir("cifar_nothing");
    assert_file_error(
        CifarDataset::open(&empty, Split::Train),
        "cifar_nothing",
        "data_batch_1.bin",
    );

    // One training batch missing.
    let dir = temp_dir("cifar_missing");
    write_cifar(&dir);
    fs::remove_file(dir.join("data_batch_5.bin")).unwrap();
    assert_file_error(
        CifarDataset::open(&dir, Split::Train),
        "data_batch_5.bin",
        "cannot open",
    );

    // Truncated in the middle of a record.
    let dir = temp_dir("cifar_truncated");
    write_cifar(&dir);
    let full = cifar_file(1, 3);
    fs::write(dir.join("data_batch_2.bin"), &full[..full.len() - 100]).unwrap();
    assert_file_error(
        CifarDataset::open(&dir, Split::Train),
        "data_batch_2.bin",
        "3073",
    );

    // Empty.
    fs::write(dir.join("data_batch_2.bin"), b"").unwrap();
    assert_file_error(
        CifarDataset::open(&dir, Split::Train),
        "data_batch_2.bin",
        "empty",
    );

    // A label outside 0..9.
    let mut bad = cifar_file(1, 3);
    bad[3073] = 10;
    fs::write(dir.join("data_batch_2.bin"), &bad).unwrap();
    assert_file_error(
        CifarDataset::open(&dir, Split::Train),
        "data_batch_2.bin",
        "record 1 has label 10",
    );
}

// ---------------------------------------------------------------------------------------------
// IDX

#[test]
fn idx_plain_and_gzipped_round_trip() {
    // Odd sizes: nothing may assume 28x28.
    let (n, h, w) = (7, 5, 3);
    for gz in [false, true] {
        let dir = temp_dir(&format!("idx_round_trip_{gz}"));
        let ext = if gz { ".gz" } else { "" };
        write_idx(
            &dir,
            &format!("train-images-idx3-ubyte{ext}"),
            &format!("train-labels-idx1-ubyte{ext}"),
            n,
            h,
            w,
            gz,
        );
        write_idx(
            &dir,
            &format!("t10k-images-idx3-ubyte{ext}"),
            &format!("t10k-labels-idx1-ubyte{ext}"),
            4,
            h,
            w,
            gz,
        );
        check_idx(
            &*open(DatasetKind::FashionMnist, &dir, Split::Train).unwrap(),
            n,
            h,
            w,
        );
        check_idx(
            &*open(DatasetKind::Mnist, &dir, Split::Test).unwrap(),
            4,
            h,
            w,
        );
    }

    // Compression is told by the content: a gzipped file without `.gz`, and the `.idx` spelling.
    let dir = temp_dir("idx_gz_without_extension");
    write_idx(
        &dir,
        "train-images.idx3-ubyte",
        "train-labels.idx1-ubyte",
        n,
        h,
        w,
        true,
    );
    check_idx(
        &*open(DatasetKind::Mnist, &dir, Split::Train).unwrap(),
        n,
        h,
        w,
    );

    // torchvision's layout.
    let root = temp_dir("idx_torchvision");
    let raw = root.join("FashionMNIST").join("raw");
    fs::create_dir_all(&raw).unwrap();
    write_idx(
        &raw,
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        n,
        h,
        w,
        false,
    );
    check_idx(
        &*open(DatasetKind::FashionMnist, &root, Split::Test).unwrap(),
        n,
        h,
        w,
    );
}

#[test]
fn idx_bad_files_are_errors_naming_the_file() {
    let dir = temp_dir("idx_errors");
    let images = dir.join("images");
    let labels = dir.join("labels");
    let body = vec![0u8; 4 * 2 * 3];
    let good_labels = idx_file(0x801, &[4], &[0, 1, 2, 3]);
    fs::write(&labels, &good_labels).unwrap();

    // Swapped magic numbers.
    fs::write(&images, idx_file(0x801, &[4, 2, 3], &body)).unwrap();
    assert_file_error(
        IdxDataset::open(&images, &labels, 10),
        "images",
        "bad magic",
    );

    // Body one byte longer than the header says, plain and gzipped.
    let mut long = idx_file(0x803, &[4, 2, 3], &body);
    long.push(0);
    fs::write(&images, &long).unwrap();
    assert_file_error(
        IdxDataset::open(&images, &labels, 10),
        "images",
        "24 body bytes",
    );
    fs::write(&images, gzip(&long)).unwrap();
    assert_file_error(
        IdxDataset::open(&images, &labels, 10),
        "images",
        "24 body bytes",
    );

    // Shorter than its header.
    fs::write(&images, &idx_file(0x803, &[4, 2, 3], &body)[..10]).unwrap();
    assert_file_error(
        IdxDataset::open(&images, &labels, 10),
        "images",
        "too short",
    );

    // A corrupt gzip stream.
    let mut corrupt = gzip(&idx_file(0x803, &[4, 2, 3], &body));
    corrupt.truncate(corrupt.len() / 2);
    fs::write(&images, corrupt).unwrap();
    assert_file_error(IdxDataset::open(&images, &labels, 10), "images", "gzip");

    // Image and label counts disagree.
    fs::write(&images, idx_file(0x803, &[4, 2, 3], &body)).unwrap();
    fs::write(&labels, idx_file(0x801, &[3], &[0, 1, 2])).unwrap();
    assert_file_error(IdxDataset::open(&images, &labels, 10), "labels", "3 labels");

    // A label out of range.
    fs::write(&labels, idx_file(0x801, &[4], &[0, 1, 10, 3])).unwrap();
    assert_file_error(IdxDataset::open(&images, &labels, 10), "labels", "label 10");

    // A missing label file, found by folder.
    let dir = temp_dir("idx_missing_labels");
    write_idx(&dir, "train-images-idx3-ubyte", "unused", 2, 2, 2, false);
    assert_file_error(
        open(DatasetKind::FashionMnist, &dir, Split::Train),
        "train-labels-idx1-ubyte",
        "missing",
    );
    assert_file_error(
        open(DatasetKind::FashionMnist, &dir, Split::Test),
        "idx_missing_labels",
        "t10k-images-idx3-ubyte",
    );

    // Finally the good pair opens.
    fs::write(&labels, good_labels).unwrap();
    let data = IdxDataset::open(&images, &labels, 10).unwrap();
    assert_eq!(data.len(), 4);
}

#[test]
fn real_fashion_mnist_when_installed() {
    let Some(dir) = DatasetKind::FashionMnist
        .system_dir()
        .filter(|d| d.is_dir())
    else {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
        return;
    };
    let train = open(DatasetKind::FashionMnist, dir, Split::Train).unwrap();
    let test = open(DatasetKind::FashionMnist, dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(
        (train.channels(), train.height(), train.width()),
        (1, 28, 28)
    );
    // Every class has 6,000 training and 1,000 test images.
    for (data, per_class) in [(&train, 6_000), (&test, 1_000)] {
        let mut counts = [0usize; 10];
        for i in 0..data.len() {
            counts[data.label(i)] += 1;
        }
        assert_eq!(counts, [per_class; 10]);
    }
    // The normalisation constants are the training set's statistics.
    let (mut sum, mut sum_sq, mut count) = (0f64, 0f64, 0f64);
    for i in 0..train.len() {
        for &v in train.pixels(i) {
            let x = v as f64 / 255.0;
            sum += x;
            sum_sq += x * x;
            count += 1.0;
        }
    }
    let mean = sum / count;
    let std = (sum_sq / count - mean * mean).sqrt();
    assert!(
        (mean - DatasetKind::FashionMnist.mean()[0] as f64).abs() < 1e-3,
        "{mean}"
    );
    assert!(
        (std - DatasetKind::FashionMnist.std()[0] as f64).abs() < 1e-3,
        "{std}"
    );
}

// ---------------------------------------------------------------------------------------------
// kinds

#[test]
fn dataset_kinds_parse_and_carry_their_constants() {
    for kind in DatasetKind::ALL {
        assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
        assert_eq!(kind.mean().len(), kind.std().len());
        assert_eq!(kind.classes(), 10);
    }
    assert_eq!(
        "fashion-mnist".parse::<DatasetKind>().unwrap(),
        DatasetKind::FashionMnist
    );
    assert_eq!(
        DatasetKind::Cifar10.mean(),
        [0.491_399_68, 0.482_158_27, 0.446_531_24]
    );
    assert_eq!(
        DatasetKind::Cifar10.std(),
        [0.247_032_33, 0.243_485_05, 0.261_587_68]
    );
    assert_eq!(
        (DatasetKind::Mnist.mean(), DatasetKind::Mnist.std()),
        (&[0.1307f32][..], &[0.3081f32][..])
    );
    let e = "imagenet".parse::<DatasetKind>().unwrap_err();
    assert!(
        e.to_string().contains("cifar10, fashion-mnist, mnist"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// split

#[test]
fn search_split_is_the_original_one() {
    let (train, valid) = split_indices(50_000, 0.5).unwrap();
    assert_eq!((train.len(), valid.len()), (25_000, 25_000));
    assert_eq!(
        (train[0], train[24_999], valid[0], valid[24_999]),
        (0, 24_999, 25_000, 49_999)
    );

    // floor(0.5 * 7) = 3: the odd image goes to the validation half.
    let (train, valid) = split_indices(7, 0.5).unwrap();
    assert_eq!((train, valid), (vec![0, 1, 2], vec![3, 4, 5, 6]));

    // floor(0.3 * 10) = floor(3.0000000000000004) = 3, as numpy computes it.
    let (train, _) = split_indices(10, 0.3).unwrap();
    assert_eq!(train.len(), 3);
    let (train, valid) = split_indices(5, 1.0).unwrap();
    assert_eq!((train.len(), valid.len()), (5, 0));

    assert!(split_indices(10, 1.5).is_err());
    assert!(split_indices(10, -0.1).is_err());
    assert!(split_indices(10, f64::NAN).is_err());
}

// ---------------------------------------------------------------------------------------------
// loader

#[test]
fn loader_covers_every_index_once_per_epoch() {
    let data: Arc<dyn ImageDataset> = Arc::new(Synthetic::new(40, [3, 9, 11]));
    let indices: Vec<usize> = (5..28).collect(); // 23 images: batches 5, 5, 5, 5, 3
    let transform = Transform::normalize(&[0.0; 3], &[1.0; 3]).unwrap();
    let mut loader = BatchLoader::new(Arc::clone(&data), indices.clone(), 5, transform, 9).unwrap();
    assert_eq!((loader.len(), loader.batches_per_epoch()), (23, 5));

    let mut orders = Vec::new();
    for epoch in 0..3 {
        assert_eq!(loader.state().epoch, epoch);
        let batches: Vec<Batch> = loader.epoch().collect();
        let sizes: Vec<usize> = batches.iter().map(|b| b.labels.len()).collect();
        assert_eq!(sizes, [5, 5, 5, 5, 3]);
        let mut order: Vec<usize> = Vec::new();
        for b in &batches {
            assert_eq!(b.images.shape(), [b.labels.len(), 3, 9, 11]);
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(b.labels[k], data.label(i));
                // Without augmentation, x = v / 255 exactly.
                let image = &b.images.data()[k * 297..(k + 1) * 297];
                let expected: Vec<f32> = data.pixels(i).iter().map(|&v| v as f32 / 255.0).collect();
                assert_eq!(image, &expected[..], "image of index {i}");
            }
            order.extend(&b.indices);
        }
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, indices, "epoch {epoch} must hold every index once");
        orders.push(order);
    }
    assert_ne!(orders[0], orders[1], "reshuffled every epoch");
    assert_ne!(orders[1], orders[2], "reshuffled every epoch");
    assert_ne!(orders[0], indices, "shuffled");

    // In order: the indices as given, every epoch.
    let transform = Transform::eval(DatasetKind::Cifar10);
    let mut loader = BatchLoader::new(data, indices.clone(), 5, transform, 9)
        .unwrap()
        .in_order();
    for _ in 0..2 {
        let order: Vec<usize> = loader.epoch().flat_map(|b| b.indices).collect();
        assert_eq!(order, indices);
    }
}

#[test]
fn loader_is_reproducible_and_runs_across_epochs() {
    let data: Arc<dyn ImageDataset> = Arc::new(Synthetic::new(30, [3, 9, 11]));
    let indices: Vec<usize> = (0..30).step_by(3).collect(); // 10 images: 3 batches of 4, 4, 2
    let mut a = train_loader(&data, indices.clone(), 17);
    let mut b = train_loader(&data, indices.clone(), 17);
    let mut c = train_loader(&data, indices, 18);
    let mut differs = false;
    for step in 0..8 {
        let (x, y, z) = (a.next_batch(), b.next_batch(), c.next_batch());
        assert_same_batch(&x, &y, &format!("step {step}"));
        assert_eq!(x.labels.len(), [4, 4, 2][step % 3], "step {step}");
        differs |= x.images.data() != z.images.data();
    }
    assert!(differs, "another seed gives other batches");
    // 8 batches of 3 per epoch: epoch 2, batch 2 comes next.
    assert_eq!(
        a.state(),
        LoaderState {
            seed: 17,
            epoch: 2,
            batch: 2
        }
    );
    // An epoch iterator started mid-epoch yields only what is left of it.
    let rest = a.epoch();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest.count(), 1);
    assert_eq!(a.state().epoch, 3);
}

#[test]
fn resumed_loader_continues_like_an_uninterrupted_one() {
    let data: Arc<dyn ImageDataset> = Arc::new(Synthetic::new(23, [3, 9, 11]));
    let indices: Vec<usize> = (0..23).collect(); // 6 batches: 5 of 4, then 3
    let mut straight = train_loader(&data, indices.clone(), 5);
    let reference: Vec<Batch> = (0..15).map(|_| straight.next_batch()).collect();

    // Stop after 8 batches (mid-epoch 1), with the worker already ahead; save as JSON.
    let mut first = train_loader(&data, indices.clone(), 5);
    for expected in &reference[..8] {
        assert_same_batch(&first.next_batch(), expected, "before the checkpoint");
    }
    let saved = serde_json::to_string(&first.state()).unwrap();
    drop(first);

    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    assert_eq!((state.epoch, state.batch), (1, 2));
    let mut resumed = train_loader(&data, indices.clone(), 999);
    resumed.resume(state).unwrap();
    for (k, expected) in reference[8..].iter().enumerate() {
        assert_same_batch(
            &resumed.next_batch(),
            expected,
            &format!("resumed batch {k}"),
        );
    }

    // Resuming a running loader rewinds it too.
    resumed.resume(state).unwrap();
    assert_same_batch(&resumed.next_batch(), &reference[8], "rewound");

    let past_end = LoaderState {
        seed: 5,
        epoch: 0,
        batch: 6,
    };
    assert!(resumed.resume(past_end).is_err());
}

#[test]
fn every_image_of_an_epoch_gets_its_own_augmentation() {
    // White images: the crop shows as a pattern of negative (padded) values; flips and holes add
    // more. Images must not share their random draws with the same slot of other batches.
    let data: Arc<dyn ImageDataset> = Arc::new(Synthetic::white(64, [3, 9, 11]));
    let mut loader = train_loader(&data, (0..64).collect(), 3);
    let mut patterns = std::collections::HashSet::new();
    for batch in loader.epoch() {
        for image in batch.images.data().chunks(297) {
            let pattern: Vec<bool> = image.iter().map(|&v| v < 0.0).collect();
            patterns.insert(pattern);
        }
    }
    assert!(patterns.len() > 30, "only {} patterns", patterns.len());
}

#[test]
fn loader_rejects_bad_arguments() {
    let data: Arc<dyn ImageDataset> = Arc::new(Synthetic::new(10, [3, 4, 4]));
    let t = || Transform::eval(DatasetKind::Cifar10);
    let new = |indices: Vec<usize>, batch, transform| {
        BatchLoader::new(Arc::clone(&data), indices, batch, transform, 0)
    };
    assert!(new(vec![0, 1], 0, t()).is_err(), "batch size 0");
    assert!(new(vec![], 4, t()).is_err(), "no indices");
    assert!(new(vec![0, 10], 4, t()).is_err(), "index out of range");
    let gray = Transform::eval(DatasetKind::FashionMnist);
    assert!(new(vec![0, 1], 4, gray).is_err(), "channel count");
    assert!(new(vec![0, 1], 4, t()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// augmentation

/// Reference: pad with zeros by `p`, crop at (top, left), optionally mirror, normalise, optionally
/// cut a hole centred at `hole` of side `length`; written the plain way.
fn reference_transform(
    pixels: &[u8],
    [c, h, w]: [usize; 3],
    (mean, std): (&[f32], &[f32]),
    p: usize,
    (top, left): (usize, usize),
    flip: bool,
    hole: Option<(usize, usize, usize)>,
) -> Vec<f32> {
    let (ph, pw) = (h + 2 * p, w + 2 * p);
    let mut padded = vec![0u8; c * ph * pw];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                padded[(ch * ph + y + p) * pw + x + p] = pixels[(ch * h + y) * w + x];
            }
        }
    }
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x };
                let v = padded[(ch * ph + top + y) * pw + left + sx];
                out[(ch * h + y) * w + x] = (v as f32 / 255.0 - mean[ch]) / std[ch];
            }
        }
    }
    if let Some((cy, cx, length)) = hole {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let inside = |v: usize, centre: usize| {
                        v + length / 2 >= centre && v < centre + length / 2
                    };
                    if inside(y, cy) && inside(x, cx) {
                        out[(ch * h + y) * w + x] = 0.0;
                    }
                }
            }
        }
    }
    out
}

#[test]
fn normalisation_matches_torchvision_numerically() {
    let t = Transform::normalize(&[0.5, 0.25], &[0.5, 2.0]).unwrap();
    let pixels = [0u8, 255, 51, 102, 0, 255, 51, 102];
    let mut out = [0f32; 8];
    t.apply(&pixels, [2, 2, 2], &mut Rng::new(0), &mut out)
        .unwrap();
    let expected = [-1.0, 1.0, -0.6, -0.2, -0.125, 0.375, -0.025, 0.075];
    for (o, e) in out.iter().zip(expected) {
        assert!((o - e).abs() < 1e-6, "{out:?} vs {expected:?}");
    }

    // CIFAR-10: black is -mean/std, white (1 - mean)/std, per channel.
    let cifar = Transform::eval(DatasetKind::Cifar10);
    let pixels = [0u8, 255, 0, 255, 0, 255];
    let mut out = [0f32; 6];
    cifar
        .apply(&pixels, [3, 1, 2], &mut Rng::new(0), &mut out)
        .unwrap();
    let (m, s) = (DatasetKind::Cifar10.mean(), DatasetKind::Cifar10.std());
    for c in 0..3 {
        assert!((out[2 * c] - (-m[c] / s[c])).abs() < 1e-6);
        assert!((out[2 * c + 1] - (1.0 - m[c]) / s[c]).abs() < 1e-6);
    }
    // Worked out independently in double precision.
    let known = [
        -1.989_212,
        2.058_841,
        -1.980_237_7,
        2.126_790_7,
        -1.707_004_1,
        2.115_805_9,
    ];
    for (o, k) in out.iter().zip(known) {
        assert!((o - k).abs() < 1e-5, "{out:?} vs {known:?}");
    }

    // Bad arguments.
    assert!(Transform::normalize(&[0.5], &[0.0]).is_err());
    assert!(Transform::normalize(&[0.5, 0.5], &[1.0]).is_err());
    assert!(
        cifar
            .apply(&pixels, [1, 2, 3], &mut Rng::new(0), &mut out)
            .is_err(),
        "channel count"
    );
    assert!(
        cifar
            .apply(&pixels[..5], [3, 1, 2], &mut Rng::new(0), &mut out)
            .is_err(),
        "pixel count"
    );
}

#[test]
fn crop_flip_and_cutout_match_the_reference() {
    let dims = [3, 10, 13];
    let (mean, std) = ([0.1, 0.5, 0.9], [0.3, 0.7, 1.3]);
    let data = Synthetic::new(1, dims);
    let pixels = data.pixels(0);
    let p = 4;
    let t = Transform::normalize(&mean, &std)
        .unwrap()
        .with_random_crop(p)
        .with_flip()
        .with_cutout(5);
    let mut offsets = std::collections::HashSet::new();
    let mut flips = [0; 2];
    for seed in 0..800 {
        let mut out = vec![0f32; 390];
        t.apply(pixels, dims, &mut Rng::new(seed), &mut out)
            .unwrap();
        // The documented draw order: top, left, flip, hole row, hole column.
        let mut r = Rng::new(seed);
        let (top, left) = (r.below(2 * p + 1), r.below(2 * p + 1));
        let flip = r.next_f32() < 0.5;
        let hole = (r.below(10), r.below(13), 5);
        let expected = reference_transform(
            pixels,
            dims,
            (&mean, &std),
            p,
            (top, left),
            flip,
            Some(hole),
        );
        assert_eq!(out, expected, "seed {seed}");
        offsets.insert((top, left));
        flips[flip as usize] += 1;
    }
    assert_eq!(offsets.len(), 81, "every crop offset occurs");
    assert!(
        flips[0] > 300 && flips[1] > 300,
        "flip about half the time: {flips:?}"
    );
}

#[test]
fn padding_is_black_before_normalisation_and_flip_mirrors() {
    // An all-white image: any padding shows as -mean/std, the image as (1 - mean)/std.
    let kind = DatasetKind::Cifar10;
    let (m, s) = (kind.mean(), kind.std());
    let pixels = vec![255u8; 3 * 32 * 32];
    let t = Transform::eval(kind).with_random_crop(4);
    let mut saw_border = false;
    for seed in 0..20 {
        let mut out = vec![0f32; 3 * 32 * 32];
        t.apply(&pixels, [3, 32, 32], &mut Rng::new(seed), &mut out)
            .unwrap();
        let mut r = Rng::new(seed);
        let (top, left) = (r.below(9) as isize - 4, r.below(9) as isize - 4);
        for c in 0..3 {
            for y in 0..32isize {
                for x in 0..32isize {
                    let inside = (0..32).contains(&(y + top)) && (0..32).contains(&(x + left));
                    let v = out[(c * 32 + y as usize) * 32 + x as usize];
                    let expected = (if inside { 1.0 - m[c] } else { -m[c] }) / s[c];
                    assert!((v - expected).abs() < 1e-6, "seed {seed} ({c}, {y}, {x})");
                    saw_border |= !inside;
                }
            }
        }
    }
    assert!(saw_border);

    // Flip alone: the output is the image or its mirror, and both happen.
    let data = Synthetic::new(1, [1, 3, 5]);
    let t = Transform::normalize(&[0.0], &[1.0]).unwrap().with_flip();
    let plain: Vec<f32> = data.pixels(0).iter().map(|&v| v as f32 / 255.0).collect();
    let mirror: Vec<f32> = plain
        .chunks(5)
        .flat_map(|row| row.iter().rev().copied())
        .collect();
    let mut seen = [false; 2];
    for seed in 0..20 {
        let mut out = vec![0f32; 15];
        t.apply(data.pixels(0), [1, 3, 5], &mut Rng::new(seed), &mut out)
            .unwrap();
        let flipped = Rng::new(seed).next_f32() < 0.5;
        assert_eq!(&out, if flipped { &mirror } else { &plain }, "seed {seed}");
        seen[flipped as usize] = true;
    }
    assert_eq!(seen, [true, true]);
}

#[test]
fn cutout_hole_is_zero_and_clipped() {
    // Side 16 on 32x32 with a white image: exactly the clipped square is 0, the rest (1-m)/s.
    let t = Transform::eval(DatasetKind::Cifar10).with_cutout(16);
    let pixels = vec![255u8; 3 * 32 * 32];
    let mut clipped = false;
    for seed in 0..30 {
        let mut out = vec![0f32; 3 * 32 * 32];
        t.apply(&pixels, [3, 32, 32], &mut Rng::new(seed), &mut out)
            .unwrap();
        let mut r = Rng::new(seed);
        let (cy, cx) = (r.below(32), r.below(32));
        let rows = cy.saturating_sub(8)..(cy + 8).min(32);
        let cols = cx.saturating_sub(8)..(cx + 8).min(32);
        let zeros = out.iter().filter(|&&v| v == 0.0).count();
        assert_eq!(zeros, 3 * rows.len() * cols.len(), "seed {seed}");
        for c in 0..3 {
            for y in rows.clone() {
                for x in cols.clone() {
                    assert_eq!(out[(c * 32 + y) * 32 + x], 0.0);
                }
            }
        }
        clipped |= rows.len() < 16 || cols.len() < 16;
    }
    assert!(clipped, "some holes reach past the border");
}
