//! Data: the CIFAR-10 binary reader, the embedded subset, augmentation, normalisation,
//! splits and batching (the bottom layer: nothing here imports from above).

use ndarray::ArrayD;

/// A labelled batch: normalised images [N, 3, H, W] and one-hot targets [N, classes].
#[derive(Clone, Debug)]
pub struct Batch {
    pub x: ArrayD<f64>,
    pub onehot: ArrayD<f64>,
}
