//! Datasets: the 8×8 digits embedded in smartcore (fast, for tests) and Fashion-MNIST from the
//! Debian package `dataset-fashion-mnist`; stratified splits.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

use crate::rng::Rng;

/// Where `make train` installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Rows of features (scaled to [0, 1]) with class labels.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub features: usize,
    pub classes: usize,
    /// Image height and width when the features are pixels.
    pub image: Option<(usize, usize)>,
    pub class_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.features..(i + 1) * self.features]
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Self {
        let mut x = Vec::with_capacity(idx.len() * self.features);
        for &i in idx {
            x.extend_from_slice(self.row(i));
        }
        Self {
            x,
            y: idx.iter().map(|&i| self.y[i]).collect(),
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Self {
        Self {
            name: self.name.clone(),
            x: Vec::new(),
            y: Vec::new(),
            features: self.features,
            classes: self.classes,
            image: self.image,
            class_names: self.class_names.clone(),
        }
    }

    /// sha256 over features and labels, recorded as lineage.
    pub fn digest(&self) -> String {
        let mut bytes = Vec::with_capacity(self.x.len() * 4 + self.y.len() * 4);
        for v in &self.x {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for v in &self.y {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        infergate_registry::sha256_hex(&bytes)
    }

    /// Splits into parts with the given fractions, each class spread proportionally over
    /// the parts (stratified), shuffled with `seed`.
    pub fn stratified_split(&self, fractions: &[f64], seed: u64) -> Vec<Self> {
        let mut rng = Rng::new(seed);
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); fractions.len()];
        for class in 0..self.classes as u32 {
            let mut idx: Vec<usize> = (0..self.len()).filter(|&i| self.y[i] == class).collect();
            rng.shuffle(&mut idx);
            let mut start = 0;
            let mut cum = 0.0;
            for (p, f) in fractions.iter().enumerate() {
                cum += f;
                let end = if p + 1 == fractions.len() {
                    idx.len()
                } else {
                    ((cum * idx.len() as f64).round() as usize).min(idx.len())
                };
                parts[p].extend_from_slice(&idx[start..end]);
                start = end;
            }
        }
        parts
            .into_iter()
            .map(|mut idx| {
                rng.shuffle(&mut idx);
                self.subset(&idx)
            })
            .collect()
    }
}

/// The 1797 8×8 digits (values 0–16, scaled to [0, 1]).
pub fn digits() -> Dataset {
    let d = smartcore::dataset::digits::load_dataset();
    Dataset {
        name: "digits-8x8".to_owned(),
        x: d.data.iter().map(|v| v / 16.0).collect(),
        y: d.target.iter().map(|&v| v as u32).collect(),
        features: d.num_features,
        classes: 10,
        image: Some((8, 8)),
        class_names: (0..10).map(|d| d.to_string()).collect(),
    }
}

const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Fashion-MNIST: `(train 60000, test 10000)` from the idx files in `dir`.
pub fn fashion_mnist(dir: &Path) -> anyhow::Result<(Dataset, Dataset)> {
    let load = |images: &str, labels: &str| -> anyhow::Result<Dataset> {
        let img = read_gz(&dir.join(images))?;
        let lab = read_gz(&dir.join(labels))?;
        if img.len() < 16 || be32(&img[0..4]) != 2051 || lab.len() < 8 || be32(&lab[0..4]) != 2049 {
            bail!("{images}/{labels}: not idx image/label files");
        }
        let (n, rows, cols) = (be32(&img[4..8]), be32(&img[8..12]), be32(&img[12..16]));
        if be32(&lab[4..8]) != n || img.len() != 16 + n * rows * cols || lab.len() != 8 + n {
            bail!("{images}/{labels}: sizes disagree");
        }
        Ok(Dataset {
            name: "fashion-mnist".to_owned(),
            x: img[16..].iter().map(|&p| f32::from(p) / 255.0).collect(),
            y: lab[8..].iter().map(|&l| u32::from(l)).collect(),
            features: rows * cols,
            classes: 10,
            image: Some((rows, cols)),
            class_names: FASHION_CLASSES.iter().map(|s| (*s).to_owned()).collect(),
        })
    };
    Ok((
        load("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")?,
        load("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")?,
    ))
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn read_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open {} (install Fashion-MNIST with `make dataset`)",
            path.display()
        )
    })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .with_context(|| format!("cannot decompress {}", path.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_split_is_stratified_and_disjoint() {
        let d = digits();
        assert_eq!((d.len(), d.features), (1797, 64));
        let parts = d.stratified_split(&[0.7, 0.15, 0.15], 3);
        assert_eq!(parts.iter().map(Dataset::len).sum::<usize>(), 1797);
        for class in 0..10 {
            let total = d.y.iter().filter(|&&y| y == class).count() as f64;
            let train = parts[0].y.iter().filter(|&&y| y == class).count() as f64;
            assert!((train / total - 0.7).abs() < 0.02, "class {class}");
        }
        assert_eq!(
            parts[0].digest(),
            d.stratified_split(&[0.7, 0.15, 0.15], 3)[0].digest()
        );
    }
}
